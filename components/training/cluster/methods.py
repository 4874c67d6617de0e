"""The training methods that train in the cluster (``ddp_trainjob``, ``adbo_job``), each configured by a
typed spec of its training object.

* ``ddp_trainjob`` (Li et al., "PyTorch Distributed: Experiences on Accelerating Data Parallel
  Training", VLDB 2020): DDP under torchrun in a Kubeflow Trainer TrainJob, :class:`TrainJobSpec`;
* ``adbo_job`` (Jiao et al., "Asynchronous Distributed Bilevel Optimization", ICLR 2023): the ADBO
  master and workers of data hyper-cleaning in the asynchronous Indexed Job, :class:`AsyncJobSpec`.

Both take the training stage's call (``target(features, labels, meta, arch, arch_kwargs, epochs, lr,
batch_size, seed, on_epoch, **method_kwargs)``, see :mod:`distillery.components.training.tasks`). The
method keywords of the registry entry (``components/training/__init__.py``, the one place their
defaults are written) become the spec, built once per call by :meth:`ClusterSpec.from_params`, which
refuses unknown keys and fills the ones a direct call leaves out from that entry. The task adds the
wiring of :class:`Staging`: its MLflow run, through which the data goes to the pods (``cluster-input/``)
and the result comes back (``cluster-output/``, :mod:`distillery.components.training.cluster.pod`), and
its progress hooks.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

from distillery.components.core import devices
from distillery.components.training.cluster.kube import connect, launch
from distillery.components.training.cluster.manifests import (
    DVC_REMOTE,
    ENV_PREFIX,
    SERVICE_ACCOUNT,
    TRAINJOB_TEMPLATE,
    _check_count,
    async_job_manifest,
    load_template,
    trainjob_manifest,
)
from distillery.components.training.cluster.pod import INPUT_DIR, OUTPUT_DIR, stage_command

OnLine = Callable[[str], None]
OnJob = Callable[[dict, str], None]  # (manifest, "Created" | "Complete" | "Failed" | "TimedOut")


# ----------------------------------------------------------------------------------------------
# Specs

@dataclass(frozen=True, kw_only=True)
class ClusterSpec:
    """Where a training object runs and how it is followed: the settings both methods share.

    Attributes:
        namespace: the object's.
        cpu, memory: requests = limits per pod (per node of a TrainJob).
        image: the pods' (None: the template's GPU image with GPUs, the project image without).
        queue: Kueue LocalQueue label (None: unqueued); priority_class: Kueue / pod priority class.
        timeout_s, poll_s: how long the object is followed, and how often it is polled.
        on_timeout: ``"leave"`` a timed-out object in place, or ``"delete"`` it.
        service_account: the pods'; dvc_remote: their ``DISTILLERY_DVC_REMOTE``.
        pod_dir: the pods' staging folder (inputs, outputs).
    """

    method: ClassVar[str]  # the registry entry whose defaults fill what a call leaves out

    namespace: str
    cpu: str
    memory: str
    image: str | None
    queue: str | None
    priority_class: str | None
    timeout_s: float
    poll_s: float
    on_timeout: str
    service_account: str = SERVICE_ACCOUNT
    dvc_remote: str = DVC_REMOTE
    pod_dir: str

    def __post_init__(self) -> None:
        if self.on_timeout not in ("leave", "delete"):
            raise ValueError(f"on_timeout must be 'leave' or 'delete', got {self.on_timeout!r}")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Self:
        """The spec of a method call's keywords ``params``; a field they leave out takes the default of
        the method's registry entry (else the field's own, for settings a config cannot change).

        Raises:
            TypeError: a key that is no field of the spec (naming every field).
        """
        from distillery.components.core import registry

        fields = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(params) - fields):
            raise TypeError(f"{cls.method} got unexpected keyword argument(s) {unknown}; "
                            f"its {cls.__name__} fields are {sorted(fields)}")
        defaults = registry.get("training", cls.method).defaults
        return cls(**{**{k: copy.deepcopy(v) for k, v in defaults.items() if k in fields}, **params})

    def manifest_settings(self) -> dict[str, Any]:
        """The keywords of the manifest builders (:mod:`~distillery.components.training.cluster.manifests`)
        that this spec sets."""
        return {"namespace": self.namespace, "image": self.image, "cpu": self.cpu, "memory": self.memory,
                "queue": self.queue, "priority_class": self.priority_class,
                "service_account": self.service_account, "dvc_remote": self.dvc_remote}


@dataclass(frozen=True, kw_only=True)
class TrainJobSpec(ClusterSpec):
    """The TrainJob of ``ddp_trainjob``: ``nodes`` x ``procs_per_node`` DDP ranks.

    Attributes:
        nodes: ``numNodes``; gpus_per_node: GPUs per node (0: the CPU pool).
        procs_per_node: torchrun processes per node (None: one per GPU, 1 without GPUs).
        checkpoint_every: epochs between rank 0's checkpoints.
        Others: as :class:`ClusterSpec`.
    """

    method: ClassVar[str] = "ddp_trainjob"

    nodes: int
    gpus_per_node: int
    procs_per_node: int | None
    checkpoint_every: int
    pod_dir: str = "/tmp/distillery"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_count("nodes", self.nodes, 1)
        _check_count("procs_per_node", self.procs, 1)

    @property
    def procs(self) -> int:
        """Processes per node, ``procs_per_node`` resolved."""
        return self.procs_per_node if self.procs_per_node is not None else max(1, self.gpus_per_node)

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs

    def manifest_settings(self) -> dict[str, Any]:
        return {**super().manifest_settings(), "nodes": self.nodes, "gpus_per_node": self.gpus_per_node,
                "procs_per_node": self.procs}


@dataclass(frozen=True, kw_only=True)
class AsyncJobSpec(ClusterSpec):
    """The Indexed Job of ``adbo_job`` and the ADBO run in it: ``workers + 1`` pods (master + workers).

    Attributes:
        workers, s, tau, iterations, hyper, problem_kwargs, rpc_timeout: the ADBO run
            (:class:`~distillery.components.training.adbo.config.ADBOConfig`); ``val_fraction``: share of
            each class held out as clean.
        min_workers: the workers the run may go on with (None: all but one, as the Job tolerates one
            lost index).
        Others: as :class:`ClusterSpec` (CPU only: the template asks for no GPU).
    """

    method: ClassVar[str] = "adbo_job"

    workers: int
    min_workers: int | None
    s: int
    tau: int
    iterations: int
    val_fraction: float
    hyper: dict | None
    problem_kwargs: dict | None
    rpc_timeout: float
    pod_dir: str = "/tmp/adbo"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_count("workers", self.workers, 1)

    @property
    def world_size(self) -> int:
        return self.workers + 1

    def manifest_settings(self) -> dict[str, Any]:
        return {**super().manifest_settings(), "world_size": self.world_size}

    def adbo_settings(self) -> dict[str, Any]:
        """The keywords of :func:`distillery.components.training.adbo.hyperclean.adbo_hyperclean`."""
        return {"workers": self.workers, "s": self.s, "tau": self.tau, "iterations": self.iterations,
                "val_fraction": self.val_fraction, "hyper": self.hyper, "rpc_timeout": self.rpc_timeout,
                "problem_kwargs": self.problem_kwargs,
                "min_workers": self.min_workers if self.min_workers is not None else max(1, self.workers - 1)}


@dataclass(frozen=True)
class Staging:
    """The task's side of a cluster run: its MLflow run ``run_id`` (at ``tracking_uri``), which the pods
    fetch their inputs from and upload their outputs to, and the hooks that hear the object's progress
    lines (``on_line``) and states (``on_job(manifest, state)``)."""

    run_id: str
    tracking_uri: str
    on_line: OnLine | None = print
    on_job: OnJob | None = None


def staged_launch(api, spec: ClusterSpec, staging: Staging, manifest: dict, upload: Path, output: str,
                  dst: Path) -> Path:
    """Log ``upload`` to the staging run's ``cluster-input/``, :func:`launch` ``manifest`` (whose pods
    run :func:`~distillery.components.training.cluster.pod.stage`) to completion as ``spec`` says, and
    return the pods' ``output`` (from ``cluster-output/``), downloaded into ``dst``."""
    import mlflow

    mlflow.MlflowClient(staging.tracking_uri).log_artifact(staging.run_id, str(upload), INPUT_DIR)
    on_job = staging.on_job
    launch(api, manifest, timeout_s=spec.timeout_s, poll_s=spec.poll_s, on_line=staging.on_line,
           on_timeout=spec.on_timeout, on_state=(lambda state: on_job(manifest, state)) if on_job else None)
    dst.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(run_id=staging.run_id, artifact_path=f"{OUTPUT_DIR}/{output}",
                                                    dst_path=str(dst), tracking_uri=staging.tracking_uri))


# ----------------------------------------------------------------------------------------------
# Training methods (same call as distillery.components.core.train.train_classifier)

def ddp_trainjob(features, labels, meta: dict, arch: str, arch_kwargs: dict, epochs: int, lr: float,
                 batch_size: int, seed: int, on_epoch: Callable[[int, float], None] | None = None, *,
                 run_id: str, tracking_uri: str, name: str, job_labels: dict[str, str] | None = None, api=None,
                 on_line: OnLine | None = print, on_job: OnJob | None = None, **cluster):
    """Train ``arch`` with DDP in a Kubeflow Trainer TrainJob; same result as
    :func:`distillery.components.training.distributed.train_data_parallel`, on ``nodes`` x ``procs_per_node``
    ranks of the cluster instead of local processes.

    ``(features (N, D), labels (N,), meta)`` go to the pods as ``cluster-input/train.npz`` of the
    MLflow run ``run_id`` (the task's), the model comes back as its ``cluster-output/model.pt``;
    per-epoch metrics (``train_loss``, per rank) are logged to that run by the pods (``on_epoch``
    is not called: the epochs run elsewhere). ``name``: the TrainJob's; ``job_labels``: more labels on
    it. ``on_job(manifest, state)`` hears ``"Created"``, then ``"Complete"``, ``"Failed"`` or
    ``"TimedOut"``. ``cluster``: the fields of :class:`TrainJobSpec`.
    """
    import numpy as np

    from distillery.components.core import models
    from distillery.components.training.distributed import _check_batch

    if len(features) != len(labels):
        raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
    spec = TrainJobSpec.from_params(cluster)
    _check_batch(batch_size, spec.world_size)
    staging = Staging(run_id, tracking_uri, on_line, on_job)
    data, pod_dir = f"{INPUT_DIR}/train.npz", spec.pod_dir
    manifest = trainjob_manifest(
        name, **spec.manifest_settings(), labels=job_labels,
        command=[*stage_command(run_id, pod_dir, [data], ["model.pt"], metrics=True), "torchrun"],
        args=["-m", "distillery.components.training.distributed", "--data", f"{pod_dir}/{data}",
              "--out", f"{pod_dir}/model.pt", "--arch", arch, "--arch-kwargs", json.dumps(arch_kwargs, sort_keys=True),
              "--epochs", str(epochs), "--lr", repr(float(lr)), "--batch-size", str(batch_size), "--seed", str(seed),
              "--checkpoint-dir", f"{pod_dir}/checkpoints", "--checkpoint-every", str(spec.checkpoint_every),
              # the pods' own GPUs decide (CUDA when gpus_per_node > 0); the stage's precision applies
              "--device", "cuda" if spec.gpus_per_node > 0 else "cpu", "--precision", devices.current().precision],
        # The command line says everything; the template's DISTILLERY_TRAIN_* (a DVC dataset, its own
        # MLflow experiment) would contradict it (--dataset and --data exclude each other).
        env={**{e["name"]: None for e in load_template(TRAINJOB_TEMPLATE, "TrainJob")["spec"]["trainer"]["env"]
                if e["name"].startswith(ENV_PREFIX)}, "MLFLOW_TRACKING_URI": tracking_uri})
    api = api or connect()
    with tempfile.TemporaryDirectory(prefix="distillery-trainjob-") as tmp:
        path = Path(tmp) / "train.npz"
        np.savez(path, features=np.asarray(features, dtype=np.float32), labels=np.asarray(labels, dtype=np.int64),
                 meta=np.array(json.dumps(meta, sort_keys=True)))
        return models.load(staged_launch(api, spec, staging, manifest, path, "model.pt", Path(tmp)))


def adbo_job(features, labels, meta: dict, arch: str, arch_kwargs: dict, epochs: int, lr: float, batch_size: int,
             seed: int, on_epoch: Callable[[int, float], None] | None = None, *, run_id: str, tracking_uri: str,
             name: str, job_labels: dict[str, str] | None = None, api=None, on_line: OnLine | None = print,
             on_job: OnJob | None = None, **cluster):
    """:func:`distillery.components.training.adbo.hyperclean.adbo_hyperclean` with the ADBO run (master +
    ``workers``) in the cluster as the asynchronous Indexed Job of ``k8s/training/async-workers.yaml``
    (``workers + 1`` pods, stable names through Service ``distillery-async``, which must exist).

    The hold-out split goes to the pods as ``cluster-input/split.npz`` of MLflow run ``run_id`` (the
    task's), the master's ``final.pt`` (the learnt sample weights) comes back as
    ``cluster-output/final.pt``; the master logs its own run nested under ``run_id``. The final
    model is then trained here, in the task, on the weighted samples. ``cluster``: the fields of
    :class:`AsyncJobSpec`; the other keywords: as :func:`ddp_trainjob`.
    """
    from distillery.components.training.adbo.hyperclean import adbo_hyperclean

    spec = AsyncJobSpec.from_params(cluster)
    staging = Staging(run_id, tracking_uri, on_line, on_job)
    api = api or connect()
    split_artifact = f"{INPUT_DIR}/split.npz"

    def in_the_cluster(config, split: Path, output_dir: Path) -> Path:
        problem = {**config.problem_kwargs, "data": f"{spec.pod_dir}/{split_artifact}"}
        pod_config = {**json.loads(config.to_json()), "problem_kwargs": problem, "tracking_uri": tracking_uri}
        manifest = async_job_manifest(
            name, **spec.manifest_settings(), labels=job_labels, config=pod_config,
            output_dir=f"{spec.pod_dir}/run",
            command=[*stage_command(run_id, spec.pod_dir, [split_artifact], ["run/final.pt"]),
                     "python", "-m", "distillery.components.training.adbo"],
            env={"MLFLOW_TRACKING_URI": tracking_uri})
        return staged_launch(api, spec, staging, manifest, split, "final.pt", output_dir)

    return adbo_hyperclean(features, labels, meta, arch, arch_kwargs, epochs, lr, batch_size, seed, on_epoch,
                           runner=in_the_cluster, **spec.adbo_settings())
