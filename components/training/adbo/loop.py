"""One ADBO iteration on each side, shared by the rpc processes and the in-process simulator.

A worker receives an :class:`Update` (the master's ``v``, ``z``, its dual ``theta_i`` and the cuts'
pull on ``y_i``), takes one :func:`core.worker_step` and returns a :class:`Report`: its new
``(x_i, y_i)``, its upper loss and its term of ``h`` linearised at the new point. The master folds
the reports of the workers the :func:`core.gate` let through into its state
(:func:`master_iteration`) and every ``cut_every`` iterations refreshes the cuts.
:func:`simulate` runs the whole algorithm in one process on a simulated clock (tests, tuning).
"""
from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass

import torch

from distillery.components.training.adbo import core
from distillery.components.training.adbo.problems import Problem, Shard

Tensor = torch.Tensor


@dataclass
class Update:
    """Master -> worker i: consensus ``v`` ``(n,)``, ``z`` ``(m,)``, dual ``theta`` ``(n,)``,
    ``pull_y`` = sum_l lambda_l b_l,i ``(m,)``, and the master iteration it comes from."""

    v: Tensor
    z: Tensor
    theta: Tensor
    pull_y: Tensor
    iteration: int


@dataclass
class Report:
    """Worker i -> master: new ``x`` ``(n,)``, ``y`` ``(m,)``, ``upper`` = G_i before the step,
    ``part`` = the worker's term of ``h`` linearised at ``(v, y_i, z)``."""

    x: Tensor
    y: Tensor
    upper: float
    part: core.Linearisation


def upper_gradients(shard: Shard, x: Tensor, y: Tensor) -> tuple[float, Tensor, Tensor]:
    """``(G_i, grad_x G_i, grad_y G_i)`` at ``(x, y)``."""
    x, y = x.detach().requires_grad_(True), y.detach().requires_grad_(True)
    loss = shard.upper(x, y)
    gx, gy = torch.autograd.grad(loss, (x, y), allow_unused=True)
    gx = torch.zeros_like(x) if gx is None else gx
    gy = torch.zeros_like(y) if gy is None else gy
    return float(loss.detach()), gx, gy


def first_report(shard: Shard, x: Tensor, y: Tensor, v: Tensor, z: Tensor, hp: core.Hyper) -> Report:
    """What a worker reports before any update (its start point): lets the master check shapes
    and build the first cut."""
    upper, _, _ = upper_gradients(shard, x, y)
    return Report(x, y, upper, core.lower_residual(shard.lower, v, y, z, hp.k, hp.beta, hp.mu))


def worker_iteration(shard: Shard, x: Tensor, y: Tensor, update: Update, hp: core.Hyper) -> Report:
    """Worker i's iteration: one step on ``(x_i, y_i)``, then its term of ``h`` at the new point."""
    upper, gx, gy = upper_gradients(shard, x, y)
    x, y = core.worker_step(x, y, gx, gy, update.theta, update.pull_y, hp)
    x, y = x.detach(), y.detach()
    return Report(x, y, upper, core.lower_residual(shard.lower, update.v, y, update.z, hp.k, hp.beta, hp.mu))


def update_for(state: core.MasterState, worker: int) -> Update:
    """What the master sends worker ``i`` after an iteration that included it."""
    return Update(state.v, state.z, state.theta[worker], core.cut_direction(state.cuts, worker, state.z),
                  state.iteration)


def refresh_cuts(state: core.MasterState, parts: dict[int, core.Linearisation], alive: set[int],
                 hp: core.Hyper) -> tuple[core.MasterState, float]:
    """Drop inactive cuts, then add the linearisation of ``h`` if ``h > eps``. Returns the state and
    ``h`` at the latest reports (a measure of lower-level infeasibility)."""
    live = sorted(i for i in alive if i in parts)
    terms = [core.worker_term(parts[i], i) for i in live]
    terms.append(core.consensus_residual({i: state.y[i] for i in live}, state.z, hp.k, hp.beta))
    h = sum(t.value for t in terms)
    cuts = core.prune_cuts(state.cuts, hp)
    if h > hp.eps:
        cuts.append(core.make_cut(terms, hp.eps, state.v, state.z))
    state.cuts = cuts
    return state, h


def master_iteration(state: core.MasterState, reports: dict[int, Report], parts: dict[int, core.Linearisation],
                     alive: set[int], hp: core.Hyper) -> tuple[core.MasterState, float | None]:
    """:func:`core.master_step` on ``reports`` (``parts`` is updated with their ``h`` terms), then a
    cut refresh when the iteration number is a multiple of ``cut_every``. Returns ``(state, h)``,
    ``h`` being ``None`` on iterations without a refresh."""
    parts.update({i: r.part for i, r in reports.items()})
    state = core.master_step(state, {i: (r.x, r.y) for i, r in reports.items()}, alive, hp)
    if state.iteration % hp.cut_every:
        return state, None
    return refresh_cuts(state, parts, alive, hp)


def upper_loss(uppers: dict[int, float], alive: set[int]) -> float:
    """``sum_i G_i`` over alive workers at their latest reports."""
    return float(sum(uppers[i] for i in alive if i in uppers))


def simulate(problem: Problem, num_workers: int, s: int, tau: int, iterations: int, hp: core.Hyper,
             durations: dict[int, float] | Callable[[int], float] | None = None,
             master_seconds: float = 0.0) -> tuple[core.MasterState, list[dict]]:
    """ADBO in one process on a simulated clock (no rpc, no sleeping).

    Worker ``i`` takes ``durations[i]`` time units per iteration (default 1), or
    ``durations(i)`` drawn anew each time; each master iteration takes ``master_seconds``. The
    master runs an iteration as soon as :func:`core.gate` allows, on the reports that have
    arrived by then.

    Returns:
        the final master state and one record per iteration (``iteration``, ``time``,
        ``reporters``, ``upper_loss``, ``h``, ``cuts``).
    """
    table = durations or {}
    duration = durations if callable(durations) else (lambda i: table.get(i, 1.0))
    shards = {i: problem.shard(i - 1, num_workers) for i in range(1, num_workers + 1)}  # ids = ranks
    v, z = problem.start()
    firsts = {i: first_report(sh, sh.x0, sh.y0, v, z, hp) for i, sh in shards.items()}
    z = torch.stack([r.y for r in firsts.values()]).mean(0)  # workers may warm-start their y_i
    state = core.init_master(v, z, {i: r.x for i, r in firsts.items()}, {i: r.y for i, r in firsts.items()})
    parts = {i: r.part for i, r in firsts.items()}
    uppers = {i: r.upper for i, r in firsts.items()}
    alive = set(shards)
    state, _ = refresh_cuts(state, parts, alive, hp)
    # every worker starts computing on the master's first update at time 0
    running = [(duration(i), i, worker_iteration(shards[i], state.x[i], state.y[i], update_for(state, i), hp))
               for i in sorted(shards)]
    heapq.heapify(running)
    arrived: dict[int, Report] = {}
    history, now = [], 0.0
    while state.iteration < iterations:
        while not core.gate(set(arrived), state.staleness, alive, s, tau)[0]:
            done, i, report = heapq.heappop(running)
            now, arrived[i] = max(now, done), report  # a report may wait for a busy master
        uppers.update({i: r.upper for i, r in arrived.items()})
        state, h = master_iteration(state, arrived, parts, alive, hp)
        now += master_seconds
        history.append({"iteration": state.iteration, "time": now, "reporters": sorted(arrived),
                        "upper_loss": upper_loss(uppers, alive), "h": h, "cuts": len(state.cuts)})
        for i in arrived:
            report = worker_iteration(shards[i], state.x[i], state.y[i], update_for(state, i), hp)
            heapq.heappush(running, (now + duration(i), i, report))
        arrived = {}
    return state, history
