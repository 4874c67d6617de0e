"""What one ADBO run needs, as one JSON-able record shared by the master and every worker."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from distillery.components.training.adbo.core import Hyper


class ADBOConfigError(ValueError):
    """A run configuration that cannot work (caught before any process starts)."""


@dataclass
class ADBOConfig:
    """One ADBO run (Jiao et al., ICLR 2023): problem, asynchrony, faults, checkpoints, tracking.

    Attributes:
        problem, problem_kwargs: the bilevel problem (:mod:`.problems`) every process builds.
        workers: N, the number of worker processes (ranks 1..N; rank 0 is the master).
        s: a master iteration needs at least ``min(s, alive)`` reports (``s = workers``: synchronous).
        tau: no alive worker may fall more than ``tau`` master iterations behind.
        iterations: master iterations to run (a resumed run counts from its checkpoint).
        hyper: :class:`core.Hyper` fields (step sizes, regularisers, cut settings).
        delay_base, delay_median, delay_sigma: a worker sleeps
            ``slowdown * (delay_base + LogNormal(log(delay_median), delay_sigma))`` seconds before
            each report (simulated compute plus message delay; the reference's straggler model).
        slowdown: rank (as a string, JSON keys are strings) -> multiplier, e.g. ``{"1": 3}``: that
            worker's delays and its real compute time take this many times longer.
        min_workers: stop with an error once fewer workers than this are alive.
        rpc_timeout: seconds an rpc to a worker may take before the worker counts as lost.
        init_timeout: seconds to reach the master and form the group before giving up.
        idle_timeout: a worker that hears nothing from the master this long exits.
        checkpoint_dir, checkpoint_every: the master's state every k iterations (0: never).
        resume: start from the newest checkpoint in ``checkpoint_dir`` (if there is one).
        eval_every: the master evaluates the consensus point every k iterations (0: at the end only).
        tracking_uri, experiment, run_name, parent_run_id: MLflow (``tracking_uri=None``: off).
        worker_overrides: rank -> problem_kwargs overrides for that worker only (tests,
            heterogeneous setups); the master validates shapes on each worker's first report.
        seed: seeds the delays (the problem has its own seed in ``problem_kwargs``).
    """

    problem: str = "hyperclean"
    problem_kwargs: dict[str, Any] = field(default_factory=dict)
    workers: int = 4
    s: int = 3
    tau: int = 4
    iterations: int = 300
    hyper: dict[str, Any] = field(default_factory=dict)
    delay_base: float = 0.0
    delay_median: float = 0.0
    delay_sigma: float = 0.5
    slowdown: dict[str, float] = field(default_factory=dict)
    min_workers: int = 1
    rpc_timeout: float = 60.0
    init_timeout: float = 60.0
    idle_timeout: float = 120.0
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    resume: bool = False
    eval_every: int = 0
    tracking_uri: str | None = None
    experiment: str = "distillery-adbo"
    run_name: str | None = None
    parent_run_id: str | None = None
    worker_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        # JSON object keys are strings: accept int ranks from Python callers, store strings
        self.slowdown = {str(k): float(v) for k, v in self.slowdown.items()}
        self.worker_overrides = {str(k): dict(v) for k, v in self.worker_overrides.items()}
        self.validate()

    def hyperparameters(self) -> Hyper:
        """:class:`Hyper` from the problem's recommended values overridden by ``hyper``."""
        from distillery.components.training.adbo.problems import RECOMMENDED_HYPER

        return Hyper(**{**RECOMMENDED_HYPER.get(self.problem, {}), **self.hyper})

    def problem_kwargs_for(self, rank: int) -> dict[str, Any]:
        return {**self.problem_kwargs, **self.worker_overrides.get(str(rank), {})}

    def validate(self) -> None:
        """Raise :class:`ADBOConfigError` naming the first inconsistent setting."""
        if self.workers < 1:
            raise ADBOConfigError(f"ADBO needs at least one worker, got workers={self.workers}")
        if not 1 <= self.s <= self.workers:
            raise ADBOConfigError(
                f"S={self.s} but there are {self.workers} workers: a master iteration waits for S reports, "
                f"so S must be between 1 and the worker count (S = workers is the synchronous baseline)")
        if self.tau < 0 or self.iterations < 1:
            raise ADBOConfigError(f"tau must be >= 0 and iterations >= 1, got tau={self.tau}, "
                                  f"iterations={self.iterations}")
        if not 1 <= self.min_workers <= self.workers:
            raise ADBOConfigError(f"min_workers={self.min_workers} must be between 1 and workers={self.workers}")
        if self.checkpoint_every and not self.checkpoint_dir:
            raise ADBOConfigError("checkpoint_every is set but checkpoint_dir is not")
        if self.resume and not self.checkpoint_dir:
            raise ADBOConfigError("resume needs checkpoint_dir")
        bad = [r for r in (*self.slowdown, *self.worker_overrides) if not str(r).isdigit()
               or not 1 <= int(r) <= self.workers]
        if bad:
            raise ADBOConfigError(f"slowdown/worker_overrides name unknown worker rank(s) {bad}; "
                                  f"workers are ranks 1..{self.workers}")
        known = {f.name for f in fields(Hyper)}
        unknown = sorted(set(self.hyper) - known)
        if unknown:
            raise ADBOConfigError(f"unknown ADBO hyperparameter(s) {unknown}; known: {sorted(known)}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ADBOConfig:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ADBOConfigError(f"unknown ADBO config key(s) {unknown}; known: {sorted(known)}")
        return cls(**data)
