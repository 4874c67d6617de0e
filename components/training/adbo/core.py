"""The update rules of ADBO as plain functions, free of any transport.

Jiao, Yang, Wu, Song, Jian, "Asynchronous Distributed Bilevel Optimization", ICLR 2023.

The distributed bilevel problem, with N workers holding local copies of both variables::

    min  sum_i G_i(x_i, y_i)                       upper level (G_i: worker i's upper objective)
    s.t. x_i = v                                   consensus of the upper variable
         ({y_i}, z) solves the lower level at v   g_i: worker i's lower objective

The lower-level optimality set is outer-approximated by a list of cutting planes::

    a_l . v + sum_i <b_l,i, y_i> + c_l . z + kappa_l <= 0,   multiplier lambda_l >= 0

each a first-order linearisation of ``h(v, {y_i}, z) <= eps`` with
``h = sum_i ||y_i - w_i^K(v)||^2 + ||z - z^K||^2`` (K unrolled lower-level steps, see
:func:`lower_residual`). ADBO then runs gradient descent-ascent on the regularised Lagrangian::

    L = sum_i G_i(x_i, y_i) + sum_l lambda_l cut_l + sum_i theta_i . (x_i - v)
        - c1/2 ||lambda||^2 - c2/2 sum_i ||theta_i||^2

Two implementation choices the update rules leave open: a cut is stored with a unit normal (the
same half-space; see :func:`make_cut`), and ``v`` may be held for a warm-up (``Hyper.v_warmup``).

Shapes: ``v``, ``x_i``, ``theta_i``, ``a_l`` are ``(n,)`` (upper variable); ``z``, ``y_i``,
``b_l,i``, ``c_l`` are ``(m,)`` (lower variable). Workers are identified by int ids (their rank).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class Hyper:
    """Step sizes and regularisers of ADBO (one step size per variable).

    Attributes:
        eta_x, eta_y: worker step sizes on ``x_i`` and ``y_i``.
        eta_v, eta_z: master step sizes on the consensus variables.
        eta_lam, eta_theta: dual ascent step sizes on the cut and consensus multipliers.
        c1, c2: regularisers of ``lambda`` and ``theta`` (make the dual problem strongly concave).
        eps: tolerance of the lower-level constraint ``h <= eps``.
        prune_tol: cuts whose multiplier is at most this are inactive and dropped.
        max_cuts: at most this many cuts are kept (the smallest multipliers go first).
        cut_every: the master prunes cuts and adds a new one every this many iterations.
        k, beta, mu: the cut's ``h`` unrolls ``k`` lower-level gradient steps of size ``beta``
            on ``g_i + mu/2 ||y_i - z||^2`` (see :func:`lower_residual`).
        v_warmup: ``v`` stays put for this many master iterations (``eta_v = 0``): until the
            cuts have pulled the ``y_i`` near the lower-level solution, ``grad_v h`` reflects the
            start-up transient, not the hypergradient.

    The defaults damp the consensus loop ``x_i -> theta_i -> v`` (``c2 = 0.5``,
    ``eta_x >> N eta_v``): with a tiny ``c2`` it is an undamped oscillator whose swing swamps the
    cuts' pull on ``v``. ``c2`` biases ``x_i - v`` by ``c2 theta_i = -c2 grad_x G_i`` only, which is
    zero when G_i does not depend on ``x`` (hyperparameters, sample weights).
    """

    eta_x: float = 2.0
    eta_y: float = 0.1
    eta_v: float = 0.1
    eta_z: float = 0.1
    eta_lam: float = 0.1
    eta_theta: float = 0.5
    c1: float = 1e-3
    c2: float = 0.5
    eps: float = 1e-3
    prune_tol: float = 1e-8
    max_cuts: int = 20
    cut_every: int = 2
    k: int = 3
    beta: float = 0.5
    mu: float = 0.1
    v_warmup: int = 0


@dataclass
class Cut:
    """One cutting plane ``a . v + sum_i <b_i, y_i> + c . z + kappa <= 0`` and its multiplier.

    ``a``: ``(n,)``; ``b``: worker id -> ``(m,)`` (a worker missing from ``b`` has a zero block);
    ``c``: ``(m,)``; ``kappa``, ``lam``: floats.
    """

    a: Tensor
    b: dict[int, Tensor]
    c: Tensor
    kappa: float
    lam: float = 0.0

    def value(self, v: Tensor, y: dict[int, Tensor], z: Tensor) -> float:
        """Left-hand side of the cut at ``(v, {y_i}, z)``: > 0 means the cut is violated."""
        total = float(self.a @ v + self.c @ z) + self.kappa
        return total + sum(float(b @ y[i]) for i, b in self.b.items() if i in y)


@dataclass
class Linearisation:
    """A first-order model ``h(p) ~ value + grad . (p - point)`` of one term of ``h``.

    ``point``/``grad`` map variable keys (``"v"``, ``"z"``, or a worker id for its ``y_i``) to
    tensors; a term need not depend on every variable.
    """

    value: float
    point: dict[str | int, Tensor]
    grad: dict[str | int, Tensor]


@dataclass
class MasterState:
    """Everything the master knows (what a checkpoint holds).

    Attributes:
        v, z: consensus variables ``(n,)``, ``(m,)``.
        theta: worker id -> dual ``(n,)`` of ``x_i = v``.
        x, y: worker id -> the worker's latest reported ``x_i``/``y_i``.
        cuts: the current cutting planes.
        staleness: worker id -> master iterations since that worker last got an update.
        iteration: master iterations done.
    """

    v: Tensor
    z: Tensor
    theta: dict[int, Tensor]
    x: dict[int, Tensor]
    y: dict[int, Tensor]
    cuts: list[Cut] = field(default_factory=list)
    staleness: dict[int, int] = field(default_factory=dict)
    iteration: int = 0


def init_master(v: Tensor, z: Tensor, x: dict[int, Tensor], y: dict[int, Tensor]) -> MasterState:
    """The master's state before iteration 1: zero duals, no cuts, nobody stale."""
    return MasterState(v=v.clone(), z=z.clone(), theta={i: torch.zeros_like(v) for i in x},
                       x=dict(x), y=dict(y), staleness={i: 0 for i in x})


def gate(reported: set[int], staleness: dict[int, int], alive: set[int], s: int,
         tau: int) -> tuple[bool, set[int]]:
    """May the master run its next iteration? The S-of-N / bounded-staleness rule of ADBO.

    Args:
        reported: workers whose report waits for the master (since their last update).
        staleness: iterations since each worker's last update.
        alive: workers still in the active set.
        s: at least ``min(s, len(alive))`` reports are needed.
        tau: after the iteration no alive worker may be more than ``tau`` iterations stale,
            so a worker already ``tau`` stale must be among the reporters (``tau = 0``:
            everybody, every iteration).

    Returns:
        ``(proceed, overdue)``: ``overdue`` are the alive non-reporters the master must wait for.
    """
    ready = reported & alive
    overdue = {i for i in alive - ready if staleness.get(i, 0) >= tau}
    return len(ready) >= min(s, len(alive)) and not overdue, overdue


def cut_direction(cuts: list[Cut], worker: int, like: Tensor) -> Tensor:
    """``sum_l lambda_l b_l,i``: the cuts' pull on worker ``i``'s ``y_i`` (shape of ``like``)."""
    total = torch.zeros_like(like)
    for cut in cuts:
        if worker in cut.b and cut.lam > 0:
            total += cut.lam * cut.b[worker]
    return total


def worker_step(x: Tensor, y: Tensor, grad_x: Tensor, grad_y: Tensor, theta: Tensor,
                pull_y: Tensor, hp: Hyper) -> tuple[Tensor, Tensor]:
    """One worker update (ADBO, worker side)::

        y_i -= eta_y (grad_y G_i + sum_l lambda_l b_l,i)
        x_i -= eta_x (grad_x G_i + theta_i)

    Args:
        grad_x, grad_y: gradients of the worker's upper objective G_i at ``(x_i, y_i)``.
        theta: the worker's dual from the master; ``pull_y``: :func:`cut_direction`.
    """
    return x - hp.eta_x * (grad_x + theta), y - hp.eta_y * (grad_y + pull_y)


def master_step(state: MasterState, reports: dict[int, tuple[Tensor, Tensor]], active: set[int],
                hp: Hyper) -> MasterState:
    """One master iteration on the reports of the workers in ``reports`` (ADBO, master side).

    Primal descent first, then dual ascent at the new primal point (Gauss-Seidel order)::

        v -= eta_v (-sum_i theta_i + sum_l lambda_l a_l)
        z -= eta_z sum_l lambda_l c_l
        lambda_l = max(0, lambda_l + eta_lam (a_l.v + c_l.z + kappa_l + sum_i <b_l,i, y_i> - c1 lambda_l))
        theta_i += eta_theta (x_i - v - c2 theta_i)       only for the reporting workers

    Args:
        reports: worker id -> its new ``(x_i, y_i)``; only these workers' duals move.
        active: workers whose duals still count in the ``v`` update (the dropped ones do not).
    """
    x = {**state.x, **{i: r[0] for i, r in reports.items()}}
    y = {**state.y, **{i: r[1] for i, r in reports.items()}}
    theta_sum = sum((state.theta[i] for i in active), torch.zeros_like(state.v))
    eta_v = hp.eta_v if state.iteration >= hp.v_warmup else 0.0
    v = state.v - eta_v * (-theta_sum + _weighted(state.cuts, "a", state.v))
    z = state.z - hp.eta_z * _weighted(state.cuts, "c", state.z)
    cuts = [replace(cut, lam=max(0.0, cut.lam + hp.eta_lam * (cut.value(v, y, z) - hp.c1 * cut.lam)))
            for cut in state.cuts]
    theta = dict(state.theta)
    for i in reports:
        theta[i] = theta[i] + hp.eta_theta * (x[i] - v - hp.c2 * theta[i])
    staleness = {i: 0 if i in reports else s + 1 for i, s in state.staleness.items()}
    return MasterState(v=v, z=z, theta=theta, x=x, y=y, cuts=cuts, staleness=staleness,
                       iteration=state.iteration + 1)


def _weighted(cuts: list[Cut], name: str, like: Tensor) -> Tensor:
    """``sum_l lambda_l a_l`` (name ``"a"``) or ``sum_l lambda_l c_l`` (name ``"c"``)."""
    total = torch.zeros_like(like)
    for cut in cuts:
        if cut.lam > 0:
            total += cut.lam * getattr(cut, name)
    return total


def make_cut(terms: list[Linearisation], eps: float, v: Tensor, z: Tensor) -> Cut:
    """The cut ``sum_terms [value + grad . (p - point)] <= eps``, written as ``a.v + sum <b_i,y_i> + c.z + kappa <= 0``.

    Each term is linearised at its own point (workers report at different times); for terms convex
    in ``(v, y, z)`` every such cut is a valid outer approximation of ``{h <= eps}``.

    Args:
        terms: one :class:`Linearisation` per term of ``h`` (workers' and the consensus term).
        v, z: the current consensus variables (give shapes and dtypes).
    """
    a, c, b = torch.zeros_like(v), torch.zeros_like(z), {}
    kappa = -eps
    for term in terms:
        kappa += term.value
        for key, grad in term.grad.items():
            kappa -= float(grad @ term.point[key])
            if key == "v":
                a = a + grad
            elif key == "z":
                c = c + grad
            else:
                b[key] = b.get(key, torch.zeros_like(z)) + grad
    # Store the half-space with a unit normal: the same cut, but its value is then the signed
    # distance to the plane, so a multiplier's scale does not depend on how small ||grad h|| gets
    # near the lower-level solution (h is a squared residual: its gradient vanishes there).
    norm = float(torch.sqrt(a @ a + c @ c + sum(t @ t for t in b.values())))
    if norm > 0:
        a, c, b, kappa = a / norm, c / norm, {i: t / norm for i, t in b.items()}, kappa / norm
    return Cut(a=a, b=b, c=c, kappa=kappa)


def prune_cuts(cuts: list[Cut], hp: Hyper) -> list[Cut]:
    """Drop inactive cuts (``lambda <= prune_tol``), then keep the ``max_cuts - 1`` largest
    multipliers so a new cut fits. Order is preserved."""
    kept = [c for c in cuts if c.lam > hp.prune_tol]
    room = max(hp.max_cuts - 1, 0)
    if len(kept) > room:
        largest = sorted(range(len(kept)), key=lambda j: kept[j].lam, reverse=True)[:room]
        kept = [kept[j] for j in sorted(largest)]
    return kept


def unrolled_residual(step: Callable[[Tensor], Tensor], start: Tensor, k: int) -> Tensor:
    """``||start - w^K||^2`` with ``w^0 = start``, ``w^{k+1} = step(w^k)``: differentiable in
    ``start`` and in whatever ``step`` closes over (autograd builds the unrolled graph)."""
    w = start
    for _ in range(k):
        w = step(w)
    return ((start - w) ** 2).sum()


def lower_residual(lower: Callable[[Tensor, Tensor], Tensor], v: Tensor, y: Tensor, z: Tensor,
                   k: int, beta: float, mu: float) -> Linearisation:
    """Worker ``i``'s term ``||y_i - w_i^K(v)||^2`` of ``h`` and its gradients (autograd).

    ``w_i^K`` is K gradient steps of size ``beta`` from ``y_i`` on the worker's penalised lower
    objective ``g_i(v, w) + mu/2 ||w - z||^2`` (the consensus ``y_i = z`` as a penalty). The term is
    zero exactly when ``y_i`` is a stationary point of it, i.e. lower-level optimal for ``v``.

    Args:
        lower: ``g_i(x, y) -> scalar`` (shapes ``(n,)``, ``(m,)``).
    Returns:
        the term's value and gradients w.r.t. ``v``, ``y_i`` (key: ``"y"``) and ``z``.
    """
    v, y, z = (t.detach().clone().requires_grad_(True) for t in (v, y, z))

    def step(w: Tensor) -> Tensor:
        (grad,) = torch.autograd.grad(lower(v, w) + 0.5 * mu * ((w - z) ** 2).sum(), w, create_graph=True)
        return w - beta * grad

    h = unrolled_residual(step, y, k)
    gv, gy, gz = torch.autograd.grad(h, (v, y, z), allow_unused=True)
    grads = {key: (g if g is not None else torch.zeros_like(t)).detach()
             for key, g, t in (("v", gv, v), ("y", gy, y), ("z", gz, z))}
    return Linearisation(float(h.detach()), {"v": v.detach(), "y": y.detach(), "z": z.detach()}, grads)


def consensus_residual(y: dict[int, Tensor], z: Tensor, k: int, beta: float) -> Linearisation:
    """The master's term ``||z - z^K||^2`` of ``h``: K gradient steps of size ``beta`` on
    ``1/2 mean_i ||y_i - z||^2`` from ``z`` (zero exactly when ``z`` is the mean of the ``y_i``).
    Keys: ``"z"`` and worker ids.

    The mean (not the sum) keeps the step stable whatever the number of workers; ``mu`` (how
    strongly each ``y_i`` is pulled to ``z`` in the workers' terms) is not applied here, so a weak
    coupling of the ``y_i`` does not also leave ``z`` loose."""
    leaves = {i: t.detach().clone().requires_grad_(True) for i, t in y.items()}
    z = z.detach().clone().requires_grad_(True)
    ys = torch.stack(list(leaves.values()))
    h = unrolled_residual(lambda w: w - beta * (w - ys).mean(0), z, k)
    grads = torch.autograd.grad(h, [z, *leaves.values()])
    keys = ["z", *leaves]
    return Linearisation(float(h.detach()), {"z": z.detach(), **{i: t.detach() for i, t in leaves.items()}},
                         {key: g.detach() for key, g in zip(keys, grads)})


def worker_term(part: Linearisation, worker: int) -> Linearisation:
    """A worker's :func:`lower_residual` with its ``"y"`` key renamed to the worker id."""
    rename = {"y": worker}
    return Linearisation(part.value, {rename.get(k, k): t for k, t in part.point.items()},
                         {rename.get(k, k): t for k, t in part.grad.items()})
