"""Every registered method keeps its stage's contract (``components/<stage>/contract.py``).

(a) The call the stage's task makes, with the method's default parameters, binds to the contract's
    Protocol and to the method's target (selection: a ``Strategy`` subclass built from its defaults;
    labelling: an annotator class built by ``from_task``).
(b) The method runs through its stage's task function on tiny data (300 sklearn digits as 1x8x8
    images, in a plain data folder with ``data.dvc``) against a real SQLite MLflow store, and the task
    writes its output. Parameters are cut down per method in :data:`QUICK`. Only methods whose work
    runs in the cluster are left out of (b): :data:`CLUSTER_ONLY` names them and why.
"""
from __future__ import annotations

import importlib
import inspect
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import ROOT, task_context

from distillery.components.core import registry
from distillery.components.core.datasets import (
    LabelledData,
    load_arrays,
    load_labelled,
    save_arrays,
    save_labelled,
    write_dataset,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

METHODS = registry.methods()
ID = "{0.stage}-{0.name}".format

# Left out of the task runs, with the reason: their task creates a Kubeflow TrainJob / Indexed Job and watches
# it, which needs a Kubernetes API server (tests/components/training/test_k8s_launcher.py runs them on fakes).
CLUSTER_ONLY = {
    ("training", "ddp_trainjob"): "execution='cluster': a Kubeflow Trainer TrainJob needs a Kubernetes API server",
    ("training", "adbo_job"): "execution='cluster': an Indexed Job of ADBO pods needs a Kubernetes API server",
}
RUNNABLE = [m for m in METHODS if (m.stage, m.name) not in CLUSTER_ONLY]

# The parameters each method runs with in (b): its registered defaults overridden by these.
TINY_CNN = {"channels": 4, "hidden": 16}
TEACHER = {"channels": 8, "hidden": 32}  # 3.7k parameters: the students (mlp, hidden 16: 1.2k) are smaller
QUICK: dict[tuple[str, str], dict] = {
    ("curation_step", "quality_filter"): {"fit_passes": [0.5, 1, 2], "repeats": 1},
    ("curation_step", "consensus"): {"iterations": 20},
    ("curation_step", "info_gain"): {"k": 8},
    ("curation_step", "ppp"): {"k_max": 4, "seeds": 2, "components": 8},
    ("split", "stratified"): {"seed_labels": 30},
    ("selection", "bald"): {"mc_passes": 2},
    ("selection", "anchoral"): {"subpool_size": 60, "neighbours": 10, "anchors_per_class": 2},
    ("selection", "neuronal_pool"): {"hidden": 16, "epochs": 3},
    ("selection", "neuronal_stream"): {"hidden": 16, "epochs": 3},
    ("selection", "stream"): {"warmup": 20},
    ("labelling", "label_studio"): {"label_set": "data/labels/digits/all.json"},
    ("training", "small_cnn"): {"epochs": 1, **TINY_CNN},
    ("training", "supervised"): {"arch_kwargs": {"hidden": 16}, "epochs": 1},
    ("training", "ddp"): {"nproc_per_node": 1, "arch_kwargs": TINY_CNN, "epochs": 1, "checkpoint_every": 1},
    ("training", "adbo_hyperclean"): {"arch_kwargs": {"hidden": 16}, "epochs": 1, "workers": 1, "s": 1, "tau": 2,
                                      "iterations": 4, "problem_kwargs": {"pca": 10, "warm_start": 5}},
    ("training", "spsa_finetune"): {"arch_kwargs": {"hidden": 16}, "epochs": 1, "workers": 1, "rounds": 2,
                                    "samples_per_worker": 2},
    ("training", "federated"): {"arch": "mlp", "arch_kwargs": {"hidden": 16}, "epochs": 1, "clients": 2, "rounds": 2,
                                "local_epochs": 1},
    ("training", "fixmatch"): {"arch": "mlp", "arch_kwargs": {"hidden": 16}, "epochs": 1, "mu": 1},
    ("training", "mean_teacher"): {"arch": "mlp", "arch_kwargs": {"hidden": 16}, "epochs": 1, "mu": 1},
    ("training", "fusion"): {"arch": "mlp", "arch_kwargs": {"hidden": 16}, "epochs": 1, "models": 2,
                             "finetune_epochs": 1},
    ("distillation", "hinton_kd"): {"hidden": 16, "epochs": 1},
    ("distillation", "fitnets"): {"hidden": 16, "epochs": 1, "hint_epochs": 1},
    ("distillation", "lead"): {"hidden": 16, "epochs": 1},
    ("distillation", "prod"): {"hidden": 16, "epochs": 3, "chain_epochs": 2, "hard_epochs": 1},  # 1 per stage
    ("distillation", "reliant"): {"hidden": 16, "epochs": 1},
    ("dataset_distillation", "distribution_matching"): {"ipc": 1, "iterations": 2, "batch_real": 8, "width": 8},
    ("evaluation", "classification"): {"model_name": "contract-digits"},
    ("evaluation", "ood_selection"): {"grid_size": 32, "max_per_group": 50},
    ("audit", "backdoor_audit"): {"epochs": 2, "trigger_size": 2, "arch_kwargs": TINY_CNN},
}

# the data: 30 digits of each class as 1x8x8 images (values 0..16), classes interleaved
META = {"name": "digits", "kind": "image", "feature_shape": [1, 8, 8], "classes": [str(c) for c in range(10)],
        "value_range": [0, 16], "sensitive": {"group": "group.npy"}}
N, N_TEST, N_SEED, BATCH = 300, 60, 40, 10
DATA_PATH = "data/digits"


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rows = np.stack([np.flatnonzero(y == c)[:N // 10] for c in range(10)], axis=1).ravel()
    return x[rows].astype(np.uint8), y[rows].astype(np.int64)


def _contract(stage: str):
    return importlib.import_module(f"{registry.stage_package(stage)}.contract")


# -- (a) the call each stage's task makes binds to the contract and to the target ----------------------------

def planned_call(method: registry.Method):
    """``(protocol function, target function, args, kwargs)``: the call the stage's task makes, with the
    method's default parameters (placeholders stand for arrays and models; binding checks names only)."""
    from distillery.components.core.train import method_call
    from distillery.components.distillation.tasks import method_params

    stage, p, target, contract = method.stage, dict(method.defaults), method.load(), _contract(method.stage)
    data, array, model, seed = "data", "array", "model", 0
    if stage == "curation":
        return contract.CurationMethod.__call__, target, ("repo", DATA_PATH, None), {"report_dir": "report", **p}
    if stage == "curation_step":
        return contract.CurationStepMethod.__call__, target, (data,), {"seed": seed, "context": None, **p}
    if stage == "split":
        args = (array, p["test_fraction"], p["seed_labels"], seed, p["label_all"])
        return contract.SplitMethod.__call__, target, args, {}
    if stage == "selection":
        return contract.SelectionMethod.__call__, target, (), {"seed": seed, **p}
    if stage == "labelling":
        return contract.LabellingMethod.from_task, target.from_task, (data, {"repo": "r", "path": DATA_PATH}), p
    if stage == "training":
        arch, arch_kwargs, kwargs = method_call(method.name, p)
        kwargs.update(dict.fromkeys(contract.HOOKS[method.execution]))
        kwargs.update(dict.fromkeys(method.inputs, array))  # e.g. the unlabelled pool
        args = (array, array, META, arch, arch_kwargs, p["epochs"], p["lr"], p["batch_size"], seed, None)
        return contract.TrainingMethod.__call__, target, args, kwargs
    if stage == "distillation":
        kwargs = method_params(p)
        if "sensitive" in method.inputs:
            kwargs.pop("sensitive_attribute")
            kwargs["sensitive"] = array
        args = (model, model, array, array, array)
        return contract.DistillationMethod.__call__, target, args, {"seed": seed, "on_epoch": None, **kwargs}
    if stage == "dataset_distillation":
        kwargs = {"seed": seed, "on_iteration": None, "source": "source", **p}
        return contract.DatasetDistillationMethod.__call__, target, (data,), kwargs
    if stage == "evaluation":
        protocol = contract.CALLS[method.name]
        if protocol is contract.MetricsMethod:
            return protocol.__call__, target, ("probs", array, p["ece_bins"]), {}
        kwargs = {"threshold": p["informative_threshold"], "tolerance": p["tolerance"], "grid_size": p["grid_size"],
                  "max_per_group": p["max_per_group"], "seed": seed}
        return protocol.__call__, target, ({"teacher": model}, {"rot0": (array, array)}), kwargs
    if stage == "audit":
        kwargs = {k: p[k] for k in ("arch", "arch_kwargs", "epochs", "lr", "batch_size", "floor", "factor")}
        args = (data, array, array, "trigger", p["target_class"])
        return contract.AuditMethod.__call__, target, args, {"seed": seed, **kwargs}
    raise AssertionError(f"stage {stage!r} has no planned call in this test")


def test_every_stage_has_a_contract_and_every_method_a_planned_call():
    for stage in registry.STAGES:
        contract = _contract(stage)
        assert contract.__doc__ and "return" in contract.__doc__.lower() and isinstance(contract.INPUTS, tuple), stage
    assert {m.name for m in registry.methods("evaluation")} == set(_contract("evaluation").CALLS)
    # a split method gets exactly these parameters (positionally): any other would be ignored
    assert all(set(m.defaults) == {"test_fraction", "seed_labels", "label_all"} for m in registry.methods("split"))
    assert set(QUICK) <= {(m.stage, m.name) for m in METHODS}  # no stale rows in the parameter table


@pytest.mark.parametrize("method", METHODS, ids=ID)
def test_target_accepts_its_stage_call(method):
    contract = _contract(method.stage)
    assert set(method.inputs) <= set(contract.INPUTS), f"the {method.stage} task cannot supply {method.inputs}"
    protocol, target, args, kwargs = planned_call(method)
    inspect.signature(protocol).bind(None, *args, **kwargs)  # the contract states the task's call ...
    inspect.signature(target).bind(*args, **kwargs)  # ... and the method takes it
    if method.stage == "selection":
        cls = method.load()
        assert isinstance(cls, type) and issubclass(cls, contract.Strategy)
        assert isinstance(cls(**kwargs), contract.Strategy)
    if method.stage == "labelling":
        data = LabelledData(np.zeros((3, 64), np.float32), np.arange(3), np.arange(3) + 10, META)
        annotator = method.load().from_task(data, {"repo": str(ROOT), "path": DATA_PATH, "rev": None},
                                            **method.defaults)
        assert callable(annotator.annotate)


def test_training_hooks_are_the_ones_the_task_passes(store):
    """``contract.HOOKS`` names exactly the keywords the training task adds per execution."""
    import mlflow
    from distillery.components.training import tasks

    hooks = _contract("training").HOOKS
    with mlflow.start_run():
        torchrun = tasks._worker_hooks({"nproc_per_node": 1}, "mlp", "key", "task", {})
        cluster = tasks._cluster_hooks("ddp_trainjob", "key", 0)
    assert set(torchrun) == set(hooks["torchrun"]) and set(cluster) == set(hooks["cluster"])
    assert hooks["in_process"] == () and set(hooks) == set(registry.EXECUTIONS)


# -- (b) every method through its stage's task on tiny data ---------------------------------------------------

def test_only_cluster_methods_are_left_out_of_the_task_runs():
    left_out = {(m.stage, m.name) for m in METHODS if m not in RUNNABLE}
    assert left_out == set(CLUSTER_ONLY)
    assert {(m.stage, m.name) for m in METHODS if m.execution == "cluster"} == set(CLUSTER_ONLY)
    assert all(reason.startswith("execution='cluster'") for reason in CLUSTER_ONLY.values())


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite MLflow store for the module (creating its tables takes seconds); runs are told apart by key."""
    import mlflow

    folder = tmp_path_factory.mktemp("mlflow")
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    try:
        yield folder
    finally:
        mlflow.set_tracking_uri("")


@pytest.fixture(scope="module")
def world(store, tmp_path_factory):
    """The data folder (with a sensitive-attribute file, annotator CSVs and a Label Studio label set),
    the task context, and every artifact a stage reads: dataset, splits, labelled set, teacher, student,
    a selected batch, a held-out test set."""
    from threadpoolctl import threadpool_limits

    from distillery.components.core import models
    from distillery.components.core.train import train_classifier
    from distillery.components.labelling.labelstudio import label_set_json

    tmp = tmp_path_factory.mktemp("world")
    x, y = _digits()
    rng = np.random.default_rng(0)
    repo = tmp / "repo"
    folder = repo / DATA_PATH
    write_dataset(folder, x, y, META)
    shutil.copy(ROOT / "data.dvc", repo / "data.dvc")  # a recorded data version (the context names it)
    np.save(folder / "group.npy", (np.arange(N) % 3 == 0).astype(np.int64))
    (folder / "annotations").mkdir()
    for name, noise in (("ann", 0.05), ("bob", 0.1), ("cy", 0.3)):
        noisy = np.where(rng.random(N) < noise, (y + 1) % 10, y)
        (folder / "annotations" / f"{name}.csv").write_text("id,label\n" + "".join(f"{i},{c}\n" for i, c in
                                                                                  enumerate(noisy)))
    (repo / "data" / "labels" / "digits").mkdir(parents=True)
    (repo / "data" / "labels" / "digits" / "all.json").write_text(
        label_set_json(DATA_PATH, {i: str(c) for i, c in enumerate(y)}, ["test"]))

    data = LabelledData(x.astype(np.float32), y, np.arange(N), META)
    order = rng.permutation(N)
    test, train = np.sort(order[:N_TEST]), order[N_TEST:]
    seed_rows = np.sort(np.concatenate([train[y[train] == c][:N_SEED // 10] for c in range(10)]))
    pool = np.setdiff1d(train, seed_rows)
    art = tmp / "artifacts"
    art.mkdir()
    paths = SimpleNamespace(**{name: str(art / name) for name in (
        "dataset", "tabular", "splits", "labelled", "teacher", "student", "selected", "test", "audited")})
    save_labelled(paths.dataset, data)
    tabular_meta = {"name": "digits-table", "kind": "tabular", "feature_shape": [64], "value_range": None,
                    "classes": META["classes"], "feature_names": [f"px{i}" for i in range(64)]}
    save_labelled(paths.tabular, LabelledData(data.features, y, data.ids, tabular_meta))
    save_arrays(paths.splits, test_rows=test, train_rows=np.sort(train))
    save_arrays(paths.labelled, rows=seed_rows, labels=y[seed_rows])
    save_arrays(paths.selected, rows=pool[:BATCH], scores=np.linspace(1, 0, BATCH))
    save_labelled(paths.test, data.subset(test))
    save_labelled(paths.audited, data.subset(np.sort(train)))
    with threadpool_limits(1):
        teacher = train_classifier(data.features[train], y[train], META, "small_cnn", TEACHER, 3, 3e-3, 32, 0)
        student = train_classifier(data.features[train], y[train], META, "mlp", {"hidden": 8}, 3, 3e-3, 32, 0)
    models.save(teacher, paths.teacher, "small_cnn", META, TEACHER)
    models.save(student, paths.student, "mlp", META, {"hidden": 8})
    return SimpleNamespace(repo=repo, context=task_context(store, repo, DATA_PATH, name="contracts"), paths=paths,
                           out=tmp / "out", labels=y, test=test, seed_rows=seed_rows, pool=pool)


def _task_run(key: str, task: str):
    """The one nested run of the task started under run key ``key``."""
    import mlflow

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("tasks").experiment_id
    (run,) = client.search_runs([experiment], filter_string=f"tags.`distillery.run_key` = '{key}' and "
                                                            f"tags.`distillery.role` = 'task'")
    assert run.info.status == "FINISHED" and run.data.tags["distillery.task"] == task
    return run


def _predicts(path: str, n_classes: int = 10):
    from distillery.components.core import models

    model = models.load(path)
    assert models.predict_proba(model, np.zeros((5, 64), np.float32)).shape == (5, n_classes)
    return model


def run_curation(method, params, world, key, out):
    from distillery.components.curation.tasks import run_curation

    run_curation(method.name, world.context, key, params, out)
    curated = load_labelled(out)
    assert 0.9 * N <= len(curated.labels) <= N and curated.features.shape[1:] == (64,)
    assert curated.meta["provenance"][-1]["method"] == method.name
    return _task_run(key, registry.task_name("curation", method.name))


def run_curation_step(method, params, world, key, out):
    from distillery.components.curation_step.tasks import run_curation_step

    source = world.paths.tabular if method.name == "info_gain" else world.paths.dataset  # IG is for tables
    run_curation_step(method.name, world.context, key, params, source, out)
    curated = load_labelled(out)
    assert 0 < len(curated.labels) <= N and curated.meta["provenance"][-1]["method"] == method.name
    run = _task_run(key, registry.task_name("curation_step", method.name))
    assert run.data.tags["curated_data_version"] == curated.meta["provenance"][-1]["version"]
    return run


def run_split(method, params, world, key, out):
    from distillery.components.split.tasks import run_split

    labelled = f"{out}-labelled"
    run_split(method.name, world.context, key, params, world.paths.dataset, out, labelled)
    splits, seeds = load_arrays(out), load_arrays(labelled)
    assert len(seeds["rows"]) == 30 and np.array_equal(seeds["labels"], world.labels[seeds["rows"]])
    assert np.intersect1d(splits["test_rows"], splits["train_rows"]).size == 0
    assert len(splits["test_rows"]) + len(splits["train_rows"]) == N
    return _task_run(key, registry.task_name("split", method.name))


def run_selection(method, params, world, key, out):
    from distillery.components.selection.tasks import run_selection

    p = world.paths
    run_selection(method.name, world.context, key, params, 1, BATCH, p.dataset, p.splits, p.labelled, p.teacher, out)
    rows = load_arrays(out)["rows"]
    assert len(np.unique(rows)) == len(rows) == BATCH and set(rows.tolist()) <= set(world.pool.tolist())
    return _task_run(key, registry.task_name("selection", method.name, 1))


def run_labelling(method, params, world, key, out):
    from distillery.components.labelling.tasks import LabelsNeeded, run_labelling

    p = world.paths
    if method.name == "label_studio":  # items without a label: the task stops and says how to provide them
        empty = json.dumps({"label_set": "data/labels/digits/none.json"})
        with pytest.raises(LabelsNeeded, match=f"{BATCH} of {BATCH} selected items need a human label"):
            run_labelling(method.name, world.context, f"{key}-unlabelled", empty, 1, p.dataset, p.labelled,
                          p.selected, out)
    run_labelling(method.name, world.context, key, params, 1, p.dataset, p.labelled, p.selected, out)
    labelled = load_arrays(out)
    assert np.array_equal(labelled["rows"], np.concatenate([world.seed_rows, world.pool[:BATCH]]))
    assert np.array_equal(labelled["labels"], world.labels[labelled["rows"]])
    return _task_run(key, registry.task_name("labelling", method.name, 1))


def run_training(method, params, world, key, out):
    from distillery.components.training.tasks import run_training

    p = world.paths
    run_training(method.name, world.context, key, params, 0, p.dataset, p.splits, p.labelled, out)
    _predicts(out)
    run = _task_run(key, registry.task_name("training", method.name, 0))
    assert {"test_accuracy", "labels", "parameters"} <= set(run.data.metrics) and run.data.metrics["labels"] == N_SEED
    return run


def run_distillation(method, params, world, key, out):
    from distillery.components.distillation.tasks import run_distillation

    p = world.paths
    run_distillation(method.name, world.context, key, params, p.dataset, p.splits, p.labelled, p.teacher, out)
    _predicts(out)
    run = _task_run(key, registry.task_name("distillation", method.name))
    assert run.data.metrics["student_parameters"] < run.data.metrics["teacher_parameters"]
    return run


def run_dataset_distillation(method, params, world, key, out):
    from distillery.components.dataset_distillation.tasks import run_dataset_distillation

    run_dataset_distillation(method.name, world.context, key, params, world.paths.dataset, out)
    synthetic = load_labelled(out)
    ipc = json.loads(params)["ipc"]
    assert synthetic.features.shape == (10 * ipc, 64) and sorted(synthetic.labels.tolist()) == sorted(
        list(range(10)) * ipc)
    return _task_run(key, registry.task_name("dataset_distillation", method.name))


def run_evaluation(method, params, world, key, out):
    from distillery.components.evaluation.tasks import run_evaluation

    p = world.paths
    run_evaluation(method.name, world.context, key, params, p.dataset, p.splits, p.teacher, p.student)
    run = _task_run(key, registry.task_name("evaluation", method.name))
    if method.name == "classification":
        assert {"teacher_accuracy", "student_accuracy", "student_ece"} <= set(run.data.metrics)
        assert "promotion" in run.data.tags
    else:
        assert run.data.tags["ood_selected"] in {"teacher", "student"}
    return run


def run_audit(method, params, world, key, out):
    from distillery.components.audit.tasks import run_audit

    run_audit(method.name, world.context, key, params, world.paths.audited, world.paths.test)
    run = _task_run(key, registry.task_name("audit", method.name))
    assert run.data.tags["backdoor_audit"] in {"pass", "backdoor-suspected"}
    assert {"attack_success_rate", "clean_accuracy"} <= set(run.data.metrics)
    return run


RUNNERS = {"curation": run_curation, "curation_step": run_curation_step, "split": run_split,
           "selection": run_selection, "labelling": run_labelling, "training": run_training,
           "distillation": run_distillation, "dataset_distillation": run_dataset_distillation,
           "evaluation": run_evaluation, "audit": run_audit}


@pytest.mark.parametrize("method", RUNNABLE, ids=ID)
def test_method_runs_through_its_stage_task(method, world):
    from threadpoolctl import threadpool_limits

    assert set(RUNNERS) == set(registry.STAGES)
    params = QUICK.get((method.stage, method.name), {})
    method.resolve_params(params)  # every override is a parameter of the method
    world.out.mkdir(exist_ok=True)
    out = str(world.out / f"{method.stage}-{method.name}")
    with threadpool_limits(1):
        run = RUNNERS[method.stage](method, json.dumps(params), world, f"{method.stage}-{method.name}", out)
    assert run.data.params["method"] == method.name
    assert Path(out).exists() or method.stage in ("evaluation", "audit")
