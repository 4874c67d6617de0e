"""Where torch work runs: ``device: auto | cpu | cuda`` and ``precision: fp32 | bf16`` per stage.

This machine has no GPU, so what runs here is the CPU path and device resolution: ``auto`` picks
the CPU, ``cuda`` is a clear error before any work (in the config check of ``distillery run`` and in
a task), bf16 autocast trains and predicts, and a task's run records its device. On a machine with
CUDA the same tests check the CUDA side of each branch instead (``benchmarks/gpu_stages.py`` times
the stages on both devices).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, make_clone, run_cli, task_context

from distillery.components.core import devices
from distillery.components.core.tracking import RunContext, method_task
from distillery.pipelines.config import ConfigError, validate_config

CUDA = torch.cuda.is_available()
MNIST = ROOT / "data" / "mnist"
TINY = ROOT / "tests" / "configs" / "tiny.yaml"


def tiny(**changes) -> dict:
    raw = yaml.safe_load(TINY.read_text())
    for key, value in changes.items():
        section, _, field = key.partition(".")
        if field:
            raw[section][field] = value
        else:
            raw[section] = value
    return raw


# ---------------------------------------------------------------------------------------------
# Resolution


def test_auto_is_cuda_when_present_else_the_cpu():
    placement = devices.resolve("auto")
    assert placement.device.type == ("cuda" if CUDA else "cpu")
    assert placement.precision == "fp32"
    assert devices.resolve("cpu", "bf16") == devices.Placement(torch.device("cpu"), "bf16")


def test_cuda_without_cuda_is_a_clear_error_and_with_cuda_a_device():
    if CUDA:
        assert devices.resolve("cuda").device == torch.device("cuda", 0)
        assert "distillery.gpu_name" in devices.describe(devices.resolve("cuda"))
        return
    with pytest.raises(devices.DeviceError) as caught:
        devices.resolve("cuda")
    message = str(caught.value)
    assert "device: cuda was asked for" in message and "sees no CUDA device" in message
    assert torch.__version__ in message and "device: auto" in message and "cpu" in message
    with pytest.raises(devices.DeviceError, match="sees no CUDA device"):
        devices.resolve("cuda:1")


@pytest.mark.parametrize("device, precision, message", [
    ("gpu", "fp32", "device must be one of ['auto', 'cpu', 'cuda'] (or cuda:N), got 'gpu'"),
    ("cuda:x", "fp32", "got 'cuda:x'"),
    ("cpu", "fp16", "precision must be one of ['fp32', 'bf16'], got 'fp16'"),
])
def test_bad_values_are_named(device, precision, message):
    with pytest.raises(devices.DeviceError) as caught:
        devices.resolve(device, precision)
    assert message in str(caught.value)


def test_config_gives_every_torch_stage_a_device_and_checks_the_values():
    config = validate_config(tiny(device="cpu", precision="bf16", **{"selection.device": "auto"}), "tiny")
    assert (config["training"]["device"], config["training"]["precision"]) == ("cpu", "bf16")  # the top level's
    assert (config["selection"]["device"], config["selection"]["precision"]) == ("auto", "bf16")  # its own
    assert "device" not in config["split"] and "device" not in config["labelling"]  # no torch there
    assert devices.stage_spec(config, "distillation") == ("cpu", "bf16")
    with pytest.raises(ConfigError, match="tiny: training: device must be one of"):
        validate_config(tiny(**{"training.device": "tpu"}), "tiny")
    with pytest.raises(ConfigError, match="tiny: precision must be one of"):
        validate_config(tiny(precision="half"), "tiny")
    with pytest.raises(ConfigError, match=r"split: unknown key\(s\) \['device'\]"):
        validate_config(tiny(**{"split.device": "cpu"}), "tiny")


def test_run_refuses_cuda_without_cuda_before_any_work(tmp_path):
    if CUDA:
        pytest.skip("this machine has CUDA: device: cuda is valid here")
    repo = make_clone(tmp_path)
    config = tmp_path / "cuda.yaml"
    config.write_text(yaml.safe_dump(tiny(**{"distillation.device": "cuda"})))
    store = tmp_path / "mlflow.db"
    result = run_cli(repo, "run", "--config", str(config), env={"MLFLOW_TRACKING_URI": f"sqlite:///{store}"})
    assert result.returncode == 2
    assert "distillation.device: cuda, but this machine has no CUDA device" in result.stderr
    assert "use device: auto" in result.stderr and "distillery submit" in result.stderr
    assert "Running pipeline" not in result.stdout and not store.exists()  # nothing ran, nothing was written


# ---------------------------------------------------------------------------------------------
# A task's placement


def _context(tmp_path, **config) -> str:
    ctx = RunContext.from_json(task_context(tmp_path, ROOT))
    ctx.config.update(config)
    return ctx.to_json()


def test_a_task_runs_in_its_stages_placement_and_records_it(tmp_path):
    import mlflow

    context = _context(tmp_path, training={"method": "small_cnn", "device": "cpu", "precision": "bf16"})
    with method_task("training", "small_cnn", context, "run-1", "{}", 0) as (ctx, _, _):
        inside = devices.current()
        run_id = mlflow.active_run().info.run_id
    assert inside == devices.Placement(torch.device("cpu"), "bf16")
    assert devices.current().precision == "fp32"  # restored after the task
    tags = mlflow.MlflowClient(ctx.tracking_uri).get_run(run_id).data.tags
    assert (tags["distillery.device"], tags["distillery.precision"]) == ("cpu", "bf16")
    assert "distillery.gpu_name" not in tags  # only on CUDA
    mlflow.set_tracking_uri(None)


def test_a_task_asked_for_cuda_without_cuda_fails_its_run_naming_why(tmp_path):
    import mlflow

    if CUDA:
        pytest.skip("this machine has CUDA")
    context = _context(tmp_path, selection={"method": "margin", "device": "cuda"})
    body_ran = False
    with pytest.raises(devices.DeviceError, match="sees no CUDA device"):
        with method_task("selection", "margin", context, "run-2", "{}", 1):
            body_ran = True
    assert not body_ran  # no data read, no work
    client = mlflow.MlflowClient(RunContext.from_json(context).tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tasks").experiment_id],
                                "tags.`distillery.task` = 'round-1-select-margin'")
    assert run.info.status == "FAILED" and "DeviceError" in run.data.tags["mlflow.note.content"]
    mlflow.set_tracking_uri(None)


# ---------------------------------------------------------------------------------------------
# Mixed precision and data movement


@pytest.fixture(scope="module")
def mnist():
    rows = np.random.default_rng(0).permutation(5000)[:600]
    meta = json.loads((MNIST / "dataset.json").read_text())
    return np.load(MNIST / "features.npy")[rows].astype(np.float32), np.load(MNIST / "labels.npy")[rows], meta


def test_bf16_autocast_trains_and_predicts_with_float32_weights_and_outputs(mnist):
    from distillery.components.core import models
    from distillery.components.core.train import accuracy, train_classifier

    x, y, meta = mnist
    placement = devices.resolve("auto", "bf16") if not CUDA or torch.cuda.is_bf16_supported() \
        else devices.resolve("cpu", "bf16")
    losses: list[float] = []
    with devices.placed(placement):
        model = train_classifier(x[:400], y[:400], meta, "mlp", {"hidden": 32}, 6, 2e-3, 32, 0,
                                 lambda epoch, loss: losses.append(loss))
        probs = models.predict_proba(model, x[400:])
        held_out = accuracy(model, x[400:], y[400:])
    assert losses[-1] < 0.5 * losses[0]  # it learns in bf16
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast keeps the weights float32
    assert devices.model_device(model).type == placement.device.type
    assert probs.dtype == torch.float32 and probs.device.type == "cpu"  # results come back to the CPU
    assert torch.allclose(probs.sum(-1), torch.ones(len(probs)), atol=1e-3)
    assert held_out > 0.6
    with devices.placed(devices.resolve("cpu")):  # fp32: autocast is off, so the bf16 numbers differ
        fp32 = models.predict_proba(model.cpu(), x[400:])
    assert not torch.equal(fp32, probs) and (fp32.argmax(-1) == probs.argmax(-1)).float().mean() > 0.9


def test_a_model_saved_from_any_device_loads_on_the_cpu(tmp_path, mnist):
    from distillery.components.core import models

    x, _, meta = mnist
    model = models.build("mlp", meta, hidden=8).to(devices.resolve("auto").device)
    models.save(model, str(tmp_path / "m.pt"), "mlp", meta, {"hidden": 8})
    blob = torch.load(tmp_path / "m.pt", weights_only=True)
    assert all(t.device.type == "cpu" for t in blob["state_dict"].values())
    loaded = models.load(str(tmp_path / "m.pt"))
    assert devices.model_device(loaded).type == "cpu"
    assert torch.allclose(models.predict_proba(loaded, x[:4]), models.predict_proba(model, x[:4]), atol=1e-5)


def test_ddp_workers_take_the_tasks_placement(mnist):
    from distillery.components.training.distributed import train_data_parallel

    x, y, meta = mnist
    lines: list[str] = []
    with devices.placed(devices.resolve("cpu", "bf16")):
        model = train_data_parallel(x[:120], y[:120], meta, "mlp", {"hidden": 8}, 1, 1e-3, 24, 0, nproc_per_node=2,
                                    on_line=lines.append)
    said = [line for line in lines if "samples, global batch" in line]
    assert len(said) == 2 and all("device cpu (bf16)" in line for line in said), said  # both ranks
    assert devices.model_device(model).type == "cpu"
