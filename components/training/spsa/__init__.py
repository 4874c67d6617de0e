"""Shared-randomness SPSA fine-tuning: machines exchange one byte per projected gradient.

Zelikman, Huang, Liang, Haber, Goodman, "Just One Byte (per gradient): A Note on Low-Bandwidth
Decentralized Language Model Finetuning Using Shared Randomness", arXiv:2306.10015, 2023 (the
decentralised extension of MeZO's SPSA, Malladi et al., NeurIPS 2023).

Modules, each usable alone (their public names are re-exported here):

* :mod:`~distillery.components.training.spsa.algorithm`: the maths: :class:`ByteQuantiser` (``g`` <->
  one ``uint8``), :func:`sample_seed` / :func:`perturbation` (the shared randomness), :class:`FlatParams`,
  :func:`projected_gradient`, :func:`apply_updates`, :func:`weights_hash`, :class:`SPSAConfig`;
* :mod:`~distillery.components.training.spsa.jobs`: what a worker is handed (:class:`SPSAJob`, its
  model and shard builders);
* :mod:`~distillery.components.training.spsa.workers`: the membership plan (:class:`Epoch`), the
  rendezvous (:class:`FileRendezvous`, :class:`EnvRendezvous` under ``torchrun``) and one worker's
  rounds (:func:`run_worker`);
* :mod:`~distillery.components.training.spsa.launcher`: :func:`launch`, one process per worker;
* :mod:`~distillery.components.training.spsa.tracking`: MLflow logging and the bytes summary.

The training method ``spsa_finetune`` is :func:`distillery.components.training.collaborative.spsa_finetune`;
the MNIST demo and its command line are ``benchmarks/spsa_mnist.py``.
"""
from distillery.components.training.spsa.algorithm import (
    EPS,
    HASH_BYTES,
    ByteQuantiser,
    FlatParams,
    SPSAConfig,
    apply_updates,
    perturbation,
    projected_gradient,
    sample_seed,
    shape_signature,
    weights_hash,
)
from distillery.components.training.spsa.jobs import (
    InMemoryShards,
    MnistModel,
    Shard,
    SPSAJob,
    cross_entropy,
)
from distillery.components.training.spsa.launcher import (
    MetricsCallback,
    SPSARun,
    WorkerFailedError,
    launch,
)
from distillery.components.training.spsa.tracking import (
    log_summary,
    mlflow_callback,
    summarise,
    tracked_run,
)
from distillery.components.training.spsa.workers import (
    ByteCounter,
    CollectiveCounter,
    EnvRendezvous,
    Epoch,
    FileRendezvous,
    ShapeMismatchError,
    WeightMismatchError,
    WorkerReport,
    check_agreement,
    check_shapes,
    run_worker,
    validate_plan,
)

__all__ = [
    "EPS", "HASH_BYTES", "ByteCounter", "ByteQuantiser", "CollectiveCounter", "EnvRendezvous", "Epoch",
    "FileRendezvous", "FlatParams",
    "InMemoryShards", "MetricsCallback", "MnistModel", "SPSAConfig", "SPSAJob", "SPSARun", "ShapeMismatchError",
    "Shard", "WeightMismatchError", "WorkerFailedError", "WorkerReport", "apply_updates", "check_agreement",
    "check_shapes", "cross_entropy", "launch", "log_summary", "mlflow_callback", "perturbation", "projected_gradient",
    "run_worker", "sample_seed", "shape_signature", "summarise", "tracked_run", "validate_plan", "weights_hash",
]
