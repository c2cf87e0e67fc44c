"""Matching alignment scores: semi-matching, soft-matching and the permutation score.

All three follow the paper's protocol (``PROTOCOL.md``, "Alignment protocol"): shuffled K folds,
dead units removed once, units matched on train correlations, the match scored on test
correlations; the result reports every fold, the mean and the standard error over folds.

Inputs (``folds.check_pair``): numpy or jax arrays, lists or tuples of real numbers; bool is cast
to 0.0 / 1.0; complex or non-numeric entries, NaN and Inf raise ``ValueError``. Dead units
(``folds.live_units``): a unit that is constant (all zero or any other value) on the train or
test rows of some fold has no correlation there and is removed before matching, so a pair scores
exactly as it would without that unit; its index is reported in ``dead_x`` / ``dead_y``.

Soft-matching solves the optimal transport problem between uniform marginals for the cost
``1 - train correlation``. ``solver="auto"`` (the default) solves it exactly where both sides are
small (scipy's ``linear_sum_assignment`` for equal sizes, POT's network simplex otherwise: a few
milliseconds there) and with ott-jax's Sinkhorn above (:func:`auto_solver`). Correlation spreads
are small (random populations: std about 0.02), so Sinkhorn's regularisation is set relative to
the spread of the cost and reached by a decreasing schedule; the plan is then rounded onto the
transport polytope (Altschuler, Weed & Rigollet 2017) so the score never exceeds what a feasible
plan achieves.
"""

from __future__ import annotations

import functools
import os
import warnings
from functools import partial
from types import SimpleNamespace
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from superalign import checks
from superalign import folds as _folds


class SemiMatchingResult(NamedTuple):
    """Semi-matching scores.

    Attributes:
      folds: [K] test score per fold.
      mean: mean over folds.
      sem: standard error over folds (std with ddof=1 over sqrt(K)).
      matches: [K, n_matched] for every matched unit (the target units for
        ``direction="target"``, the source units for ``"source"``, live units only, in column
        order) the column index of its partner in the other matrix, per fold.
      matched_units: [n_matched] column indices of the matched units.
      dead_x: column indices of X removed as dead.
      dead_y: column indices of Y removed as dead.
    """

    folds: np.ndarray
    mean: float
    sem: float
    matches: np.ndarray
    matched_units: np.ndarray
    dead_x: np.ndarray
    dead_y: np.ndarray


class SoftMatchingResult(NamedTuple):
    """Soft-matching scores.

    Attributes:
      folds: [K] test score ``sum(P * test correlation)`` per fold.
      mean: mean over folds.
      sem: standard error over folds.
      plans: [K, Na, Nb] transport plan per fold over the live units (rows: live columns of X,
        columns: live columns of Y), rounded onto the polytope (rows sum to 1/Na, columns 1/Nb);
        None when called with ``keep_plans=False``.
      converged: [K] whether the solver met its threshold on every fold.
      n_iterations: [K] Sinkhorn iterations per fold (0 for the exact solver).
      marginal_error: [K] L1 error of the marginals of the unrounded plan (0 for exact).
      train_folds: [K] train score ``sum(P * train correlation)`` per fold.
      dead_x: column indices of X removed as dead.
      dead_y: column indices of Y removed as dead.
      solver: the solver that ran, "exact" or "sinkhorn" (what ``solver="auto"`` chose).
    """

    folds: np.ndarray
    mean: float
    sem: float
    plans: np.ndarray | None
    converged: np.ndarray
    n_iterations: np.ndarray
    marginal_error: np.ndarray
    train_folds: np.ndarray
    dead_x: np.ndarray
    dead_y: np.ndarray
    solver: str


class PermutationResult(NamedTuple):
    """Permutation (exact one-to-one assignment) scores.

    Attributes:
      folds: [K] mean test correlation of the assigned pairs per fold.
      mean: mean over folds.
      sem: standard error over folds.
      rows: [K, n_pairs] column indices of X in the assignment of each fold.
      cols: [K, n_pairs] the partner column indices of Y.
      dead_x: column indices of X removed as dead.
      dead_y: column indices of Y removed as dead.
    """

    folds: np.ndarray
    mean: float
    sem: float
    rows: np.ndarray
    cols: np.ndarray
    dead_x: np.ndarray
    dead_y: np.ndarray


@partial(jax.jit, static_argnames=("direction",))
def _semi(moments: _folds.FoldMoments, direction: str, keep_x, keep_y):
    """Per fold the score and every target's best source; padding columns (keep 0) excluded."""
    if direction == "source":
        keep_x, keep_y = keep_y, keep_x

    def fold(k):
        train, test = _folds.fold_correlations(moments, k)
        if direction == "source":
            train, test = train.T, test.T
        # per target unit, its best live source unit
        best = jnp.argmax(jnp.where(keep_x[:, None] > 0, train, -jnp.inf), axis=0)
        matched = jnp.take_along_axis(test, best[None, :], axis=0)[0]
        return (matched * keep_y).sum() / keep_y.sum(), best

    return jax.lax.map(fold, jnp.arange(moments.count.shape[0]))


@_folds.full_precision
def semi_matching(
    X,
    Y,
    *,
    n_folds: int = 5,
    seed: int = 0,
    direction: Literal["target", "source"] = "target",
) -> SemiMatchingResult:
    """Cross-validated semi-matching score of Y from X.

    With ``direction="target"`` (the authors' release) each target unit (column of Y) takes the
    source unit (column of X) with the highest train correlation, and the score is the mean test
    correlation over those pairs. ``direction="source"`` matches every source unit to a target
    unit instead (the appendix's description). Units that are constant on the train or test rows
    of some fold are removed first (``dead_x`` / ``dead_y``).

    Args:
      X: [M, Na] source responses (numpy or jax array, list or tuple; real numbers).
      Y: [M, Nb] target responses.
      n_folds: number of shuffled folds K.
      seed: seed of the shuffle (scikit-learn ``KFold`` ``random_state``).
      direction: which side's units are each matched once: "target" (Y) or "source" (X).

    Returns:
      A :class:`SemiMatchingResult`.
    """
    _check_direction(direction)
    p = _folds.prepare(X, Y, n_folds, seed)
    return _semi_result(p, _folds.moments_of(p), direction)


def _check_direction(direction):
    if not isinstance(direction, str) or direction not in ("target", "source"):
        raise ValueError(f"direction must be 'target' or 'source', got {direction!r}")


def _semi_result(p: _folds.Prepared, moments, direction) -> SemiMatchingResult:
    scores, best = _semi(moments, direction, *_folds.keep_masks(p))
    partners, matched = (
        (p.units_x.live, p.units_y.live)
        if direction == "target"
        else (p.units_y.live, p.units_x.live)
    )
    best = np.asarray(best)[:, : len(matched)]  # the live targets; padding comes last
    folds, mean, sem = _folds.summary(scores)
    return SemiMatchingResult(
        folds, mean, sem, partners[best], matched, p.units_x.dead, p.units_y.dead
    )


def round_to_polytope(plan: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """Round a nearly feasible plan onto the transport polytope with marginals ``a``, ``b``.

    Altschuler, Weed & Rigollet (2017), algorithm 2: scale rows down to at most ``a``, columns
    down to at most ``b``, then add the rank-one correction of the remaining deficits.

    Args:
      plan: [Na, Nb] nonnegative plan.
      a: [Na] row marginal.
      b: [Nb] column marginal (same total mass as ``a``).

    Returns:
      [Na, Nb] nonnegative plan whose rows sum to ``a`` and columns to ``b``.
    """
    rows = plan.sum(1)
    plan = plan * jnp.where(rows > a, a / jnp.where(rows > 0, rows, 1.0), 1.0)[:, None]
    cols = plan.sum(0)
    plan = plan * jnp.where(cols > b, b / jnp.where(cols > 0, cols, 1.0), 1.0)[None, :]
    da = a - plan.sum(1)
    db = b - plan.sum(0)
    total = da.sum()
    return plan + jnp.where(total > 0, 1.0 / jnp.where(total > 0, total, 1.0), 0.0) * jnp.outer(
        jnp.maximum(da, 0.0), jnp.maximum(db, 0.0)
    )


class SinkhornConfig(NamedTuple):
    """Settings of the Sinkhorn solve (hashable, static under jit).

    Epsilon scaling: Sinkhorn runs at ``std(cost) * ratio**s`` for s = 0, 1, ... down to
    ``std(cost) * epsilon``, each stage warm-started from the previous stage's potentials.

    Attributes:
      epsilon: final regularisation, relative to the standard deviation of the cost matrix.
      ratio: factor between successive stages of the epsilon schedule.
      threshold: L1 marginal error at which the final stage stops.
      stage_threshold: the looser threshold of the intermediate stages.
      max_iterations: iteration cap of each stage; hitting it at the final stage is reported as
        non-convergence.
      momentum_start: iteration after which ott's adaptive momentum starts (0: no momentum).
      lse_mode: False (default): multiplicative (kernel) updates, one matrix-vector product per
        half-iteration, with the potentials of the previous stage absorbed into the cost so
        nothing underflows; True: ott's log-domain updates (about 7 times slower per iteration
        on a CPU, same optimum).
    """

    epsilon: float = 3e-3
    ratio: float = 0.3
    threshold: float = 1e-3
    stage_threshold: float = 1e-2
    max_iterations: int = 20_000
    momentum_start: int = 0
    lse_mode: bool = False


@functools.cache
def _ott() -> SimpleNamespace:
    """ott-jax's Sinkhorn pieces, imported on first use: importing ott-jax takes about 2 s, which
    ``import superalign`` (and every run that scores with the exact solver only) would pay."""
    from ott.geometry import geometry
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import acceleration, sinkhorn

    @jax.tree_util.register_pytree_node_class
    class KernelGeometry(geometry.Geometry):
        """A geometry given by its kernel matrix, applied with one matrix-vector product.

        ott-jax 0.6's ``Geometry.apply_kernel`` raises the kernel to the power ``epsilon / eps``
        on every call (an elementwise power over the whole matrix, about 15 times the cost of the
        product itself on a CPU); here the epsilon is fixed, so the kernel is used as it is.
        """

        def apply_kernel(self, vec, eps=None, axis=0):
            del eps  # fixed epsilon: no rescaling of the kernel
            kernel = self._kernel_matrix
            return kernel @ vec if axis == 1 else vec @ kernel

    return SimpleNamespace(
        Geometry=geometry.Geometry,
        KernelGeometry=KernelGeometry,
        LinearProblem=linear_problem.LinearProblem,
        Momentum=acceleration.Momentum,
        Sinkhorn=sinkhorn.Sinkhorn,
    )


# solver="auto": the exact solver up to this many live units per side (python -m
# benchmarks.solver_threshold; the measured numbers are in auto_solver's docstring).
AUTO_EXACT_MAX_UNITS = 1024  # unequal sizes: POT's network simplex
AUTO_EXACT_MAX_UNITS_SQUARE = 512  # equal sizes: scipy's linear_sum_assignment

_ABSORB_EVERY = 200  # kernel mode: iterations between two absorptions of the scalings


@_folds.full_precision
def _sinkhorn_plan(cost: jax.Array, cfg: SinkhornConfig, a_mask=None, b_mask=None):
    """Entropic plan for ``cost`` with uniform marginals: (plan, converged, iterations, error).

    ``a_mask`` / ``b_mask`` ([Na] / [Nb], 1.0 for live units, 0.0 for dead ones; None: all live)
    give dead units zero marginal weight, so that problems with different numbers of live units
    share one shape (dead units are zero-weight padding, ``folds.padded_live``). The plan is
    exactly 0 on dead rows and columns.

    Kernel mode (the default, ``cfg.lse_mode=False``): at every stage of the epsilon schedule the
    potentials of the previous stage are subtracted from the cost, then each row's and each
    column's minimum, so every row and column of the kernel ``exp(-reduced cost / eps)`` holds an
    entry 1 and nothing the plan needs underflows; ott's multiplicative updates then only correct
    the potentials by what the smaller epsilon changes. The same reduction is repeated every
    ``_ABSORB_EVERY`` iterations within a stage.
    """
    na, nb = cost.shape
    a_live = jnp.ones((na,), cost.dtype) if a_mask is None else a_mask.astype(cost.dtype)
    b_live = jnp.ones((nb,), cost.dtype) if b_mask is None else b_mask.astype(cost.dtype)
    a = a_live / a_live.sum()
    b = b_live / b_live.sum()
    live = (a_live[:, None] > 0) & (b_live[None, :] > 0)
    # Only differences between costs matter: scale the schedule to the spread of the live costs.
    n = live.sum()
    mean = jnp.where(live, cost, 0.0).sum() / n
    spread = jnp.sqrt(jnp.where(live, (cost - mean) ** 2, 0.0).sum() / n)
    spread = jnp.maximum(spread, 1e-6)
    n_stages = max(1, int(np.ceil(np.log(cfg.epsilon) / np.log(cfg.ratio) - 1e-9)) + 1)
    rel = np.maximum(cfg.ratio ** np.arange(n_stages), cfg.epsilon)
    thresholds = np.full(n_stages, cfg.stage_threshold)
    thresholds[-1] = cfg.threshold
    ott = _ott()
    kwargs = {"lse_mode": cfg.lse_mode}
    if cfg.momentum_start:
        kwargs["momentum"] = ott.Momentum(start=cfg.momentum_start)
    big = jnp.asarray(jnp.finfo(cost.dtype).max, cost.dtype)

    def absorbed(f, g, df, dg):
        # Dead units have potential -inf (zero scaling); keep them at 0 so costs stay finite.
        return jnp.where(a_live > 0, f + df, 0.0), jnp.where(b_live > 0, g + dg, 0.0)

    def kernel_chunk(state, eps, threshold):
        """Up to ``_ABSORB_EVERY`` multiplicative iterations on the reduced cost."""
        f, g, n_iters, _ = state
        reduced = jnp.where(live, cost - f[:, None] - g[None, :], big)
        row = jnp.where(a_live > 0, reduced.min(1), 0.0)
        reduced = reduced - row[:, None]
        col = jnp.where(b_live > 0, reduced.min(0), 0.0)
        reduced = reduced - col[None, :]
        kernel = jnp.where(live, jnp.exp(-reduced / eps), 0.0)
        geom = ott.KernelGeometry(kernel_matrix=kernel, epsilon=eps)
        solver = ott.Sinkhorn(
            threshold=threshold, max_iterations=min(_ABSORB_EVERY, cfg.max_iterations), **kwargs
        )
        out = solver(ott.LinearProblem(geom, a, b))
        f, g = absorbed(f, g, row + out.f, col + out.g)
        return f, g, n_iters + out.n_iters, out.converged

    def stage(potentials, schedule):
        f, g = potentials
        eps, threshold = schedule
        if cfg.lse_mode:
            solver = ott.Sinkhorn(threshold=threshold, max_iterations=cfg.max_iterations, **kwargs)
            geom = ott.Geometry(cost_matrix=jnp.where(live, cost, 0.0), epsilon=eps)
            out = solver(ott.LinearProblem(geom, a, b), init=(f, g))
            f, g = absorbed(f, g, out.f - f, out.g - g)
            return (f, g), (out.n_iters, out.converged)
        # The scalings are folded back into the potentials every _ABSORB_EVERY iterations, so
        # they stay near 1 and cannot overflow however far the potentials move (stabilised
        # scaling, Schmitzer 2019).
        f, g, n_iters, converged = jax.lax.while_loop(
            lambda s: ~s[3] & (s[2] < cfg.max_iterations),
            lambda s: kernel_chunk(s, eps, threshold),
            (f, g, jnp.zeros((), jnp.int32), jnp.zeros((), bool)),
        )
        return (f, g), (n_iters, converged)

    init = (jnp.zeros((na,), cost.dtype), jnp.zeros((nb,), cost.dtype))
    (f, g), (n_iters, converged) = jax.lax.scan(
        stage, init, (spread * jnp.asarray(rel, cost.dtype), jnp.asarray(thresholds, cost.dtype))
    )
    eps = spread * rel[-1]
    plan = jnp.where(live, jnp.exp((f[:, None] + g[None, :] - cost) / eps), 0.0)
    error = jnp.abs(plan.sum(1) - a).sum() + jnp.abs(plan.sum(0) - b).sum()
    plan = round_to_polytope(plan, a, b)
    ok = converged[-1] & jnp.all(jnp.isfinite(plan))
    plan = jnp.where(jnp.isfinite(plan), plan, 0.0)
    return plan, ok, n_iters.sum(), error


def _check_config(cfg: SinkhornConfig) -> SinkhornConfig:
    if not isinstance(cfg, SinkhornConfig):
        raise ValueError(f"config must be a SinkhornConfig, got {type(cfg).__name__}")
    checks.probability("config.epsilon", cfg.epsilon)
    ratio = checks.probability("config.ratio", cfg.ratio)
    if ratio >= 1:
        raise ValueError(f"config.ratio must be in (0, 1), got {cfg.ratio!r}")
    checks.positive_float("config.threshold", cfg.threshold)
    checks.positive_float("config.stage_threshold", cfg.stage_threshold)
    checks.positive_int("config.max_iterations", cfg.max_iterations)
    if (
        isinstance(cfg.momentum_start, bool)
        or not isinstance(cfg.momentum_start, int)
        or (cfg.momentum_start < 0)
    ):
        raise ValueError(
            f"config.momentum_start must be an integer >= 0, got {cfg.momentum_start!r}"
        )
    if not isinstance(cfg.lse_mode, bool):
        raise ValueError(f"config.lse_mode must be True or False, got {cfg.lse_mode!r}")
    return cfg


@partial(jax.jit, static_argnames=("cfg", "keep_plans"))
def _soft(moments: _folds.FoldMoments, cfg: SinkhornConfig, keep_x, keep_y, keep_plans=True):
    # Folds in sequence (lax.map): one fold's [Na, Nb] temporaries at a time.
    def fold(k):
        train, test = _folds.fold_correlations(moments, k)
        plan, converged, n_iters, error = _sinkhorn_plan(1.0 - train, cfg, keep_x, keep_y)
        kept = plan if keep_plans else None
        return (plan * test).sum(), (plan * train).sum(), kept, converged, n_iters, error

    return jax.lax.map(fold, jnp.arange(moments.count.shape[0]))


_BATCH_NUMBERS = 1 << 22  # all folds' correlations in one call up to this many numbers


def _live_correlations(p: _folds.Prepared, moments):
    """Per fold, the train and test correlations of the live units ([na, nb] float64, host).

    A generator. Small problems: every fold's matrices from one compiled call and one transfer
    (per-fold dispatch would cost more than the solver); large ones: one fold at a time, so only
    one fold's matrices are held.
    """
    na, nb = len(p.units_x.live), len(p.units_y.live)
    n_folds = len(p.folds.sizes)
    if 2 * n_folds * moments.cross.shape[1] * moments.cross.shape[2] <= _BATCH_NUMBERS:
        train, test = (np.asarray(a) for a in _all_fold_correlations(moments))
        for k in range(n_folds):
            yield (np.asarray(a[k, :na, :nb], dtype=np.float64) for a in (train, test))
        return
    for k in range(n_folds):
        train, test = _fold_correlations(moments, k)
        yield (np.asarray(a[:na, :nb], dtype=np.float64) for a in (train, test))


_fold_correlations = jax.jit(_folds.fold_correlations)


@jax.jit
def _all_fold_correlations(moments: _folds.FoldMoments):
    """[K, Na, Nb] train and test correlations of every fold."""
    n_folds = moments.count.shape[0]
    return jax.lax.map(lambda k: _folds.fold_correlations(moments, k), jnp.arange(n_folds))


def exact_plan(train: np.ndarray) -> np.ndarray:
    """Exact optimal plan maximising ``sum(P * train)`` with uniform marginals (host code).

    Equal sizes: scipy's ``linear_sum_assignment`` (a permutation divided by N). Otherwise POT's
    network simplex ``ot.emd``.

    Args:
      train: [Na, Nb] train correlations.

    Returns:
      [Na, Nb] float64 plan.
    """
    train = np.asarray(train, dtype=np.float64)
    na, nb = train.shape
    if na == nb:
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(train, maximize=True)
        plan = np.zeros((na, nb))
        plan[rows, cols] = 1.0 / na
        return plan
    try:
        ot = import_pot()
    except ImportError as err:  # POT is an optional dependency (extra "exact")
        raise ImportError(
            "soft_matching(solver='exact') with unequal sizes needs POT: "
            "pip install 'superalign[exact]' (or pip install POT)"
        ) from err

    return ot.emd(np.full(na, 1.0 / na), np.full(nb, 1.0 / nb), 1.0 - train, numItermax=10**9)


@_folds.full_precision
def soft_matching(
    X,
    Y,
    *,
    n_folds: int = 5,
    seed: int = 0,
    solver: Literal["auto", "exact", "sinkhorn"] = "auto",
    config: SinkhornConfig | None = None,
    keep_plans: bool = True,
) -> SoftMatchingResult:
    """Cross-validated soft-matching correlation score (paper eq. 1).

    Per fold, P is the optimal transport plan between uniform marginals 1/Na and 1/Nb for the
    cost ``1 - train correlation``; the score is ``sum(P * test correlation)``. Units that are
    constant (all zero or any other value) on the train or test rows of some fold are removed
    first (``dead_x`` / ``dead_y``); Na and Nb count the live units.

    Args:
      X: [M, Na] source responses (numpy or jax array, list or tuple; real numbers).
      Y: [M, Nb] target responses.
      n_folds: number of shuffled folds K.
      seed: seed of the shuffle (scikit-learn ``KFold`` ``random_state``).
      solver: "exact" (scipy's ``linear_sum_assignment`` for equal sizes, POT's ``ot.emd``
        otherwise; host code), "sinkhorn" (ott-jax, all folds in one jit),
        or "auto" (default): "exact" where both sides have few live units, "sinkhorn" above,
        as measured by ``python -m benchmarks.solver_threshold`` (see :func:`auto_solver`).
      config: Sinkhorn settings (:class:`SinkhornConfig`), used when Sinkhorn runs; None for
        the defaults.
      keep_plans: return every fold's plan (``[K, Na, Nb]`` float32, 4 K bytes per unit pair);
        False keeps only the scores, so a fold's plan is freed before the next fold starts (for
        populations of tens of thousands of units; see the memory model in the README).

    Returns:
      A :class:`SoftMatchingResult`. If Sinkhorn did not converge on some fold the result says
      so (``converged``) and a ``RuntimeWarning`` is issued; the rounded plan is still feasible.
    """
    _check_solver(solver)
    cfg = _check_config(SinkhornConfig() if config is None else config)
    _check_keep_plans(keep_plans)
    p = _folds.prepare(X, Y, n_folds, seed)
    return _soft_result(p, _folds.moments_of(p), solver, cfg, keep_plans)


@_folds.full_precision
def soft_and_semi_matching(
    X,
    Y,
    *,
    n_folds: int = 5,
    seed: int = 0,
    solver: Literal["auto", "exact", "sinkhorn"] = "auto",
    config: SinkhornConfig | None = None,
    direction: Literal["target", "source"] = "target",
    keep_plans: bool = True,
) -> tuple[SoftMatchingResult, SemiMatchingResult]:
    """:func:`soft_matching` and :func:`semi_matching` of the same pair from one pass over the rows.

    Both scores read the same per-fold correlations, so validation, the dead-unit rule and the
    per-part moments are computed once. The results equal the two separate calls'.

    Args: as :func:`soft_matching`, plus ``direction`` of :func:`semi_matching`.

    Returns:
      ``(soft, semi)``.
    """
    _check_solver(solver)
    _check_direction(direction)
    cfg = _check_config(SinkhornConfig() if config is None else config)
    _check_keep_plans(keep_plans)
    p = _folds.prepare(X, Y, n_folds, seed)
    moments = _folds.moments_of(p)
    return _soft_result(p, moments, solver, cfg, keep_plans), _semi_result(p, moments, direction)


def _check_keep_plans(keep_plans):
    if not isinstance(keep_plans, bool):
        raise ValueError(f"keep_plans must be True or False, got {keep_plans!r}")


def _check_solver(solver):
    if solver not in ("auto", "exact", "sinkhorn"):
        raise ValueError(f"solver must be 'auto', 'exact' or 'sinkhorn', got {solver!r}")


def import_pot():
    """POT's ``ot`` module, imported with only its numpy backend.

    POT loads a backend for every array library it finds (torch, tensorflow, jax, cupy), which
    costs seconds and imports tensorflow and torch into the process; superalign hands POT numpy
    arrays only. The ``POT_BACKEND_DISABLE_*`` variables are set unless the user set them.
    """
    for lib in ("PYTORCH", "TENSORFLOW", "JAX", "CUPY"):
        os.environ.setdefault(f"POT_BACKEND_DISABLE_{lib}", "1")
    import ot

    return ot


def _has_pot() -> bool:
    try:
        import_pot()
    except ImportError:
        return False
    return True


def auto_solver(na: int, nb: int) -> Literal["exact", "sinkhorn"]:
    """The solver ``solver="auto"`` runs for ``na`` x ``nb`` live units.

    "exact" if ``max(na, nb) <= AUTO_EXACT_MAX_UNITS_SQUARE`` (512) for equal sizes (scipy's
    ``linear_sum_assignment``) or ``<= AUTO_EXACT_MAX_UNITS`` (1024) for unequal sizes (POT's
    ``ot.emd``; without POT installed, unequal sizes always go to Sinkhorn); "sinkhorn" above.

    Measured by ``python -m benchmarks.solver_threshold`` (whole ``soft_matching`` calls, 5 folds,
    4,000 stimuli, best of 3 warm calls, on a shared 2-core x86 CPU under heavy other load, so
    +-2x noise): seconds exact / Sinkhorn.

    ===========  ===============  ===============  ===============  ===============
    units        random n x n     random n x n-1   planted n x n    planted n x n-1
    ===========  ===============  ===============  ===============  ===============
    16           0.008 / 0.017    0.084 / 0.029    0.006 / 0.007    0.006 / 0.007
    64           0.014 / 0.089    0.093 / 0.48     0.015 / 0.077    0.13 / 0.41
    128          0.053 / 0.11     0.17 / 2.0       0.081 / 0.037    0.29 / 2.7
    256          0.28 / 0.36      0.70 / 9.3       0.19 / 0.17      2.9 / 1.3
    512          1.4 / 1.9        2.6 / 28         0.39 / 0.39      4.1 / 15
    1024         5.7 / 4.0        11 / 19          1.4 / 2.3
    ===========  ===============  ===============  ===============  ===============

    With unequal sizes Sinkhorn needs many more iterations (it often stops at the iteration cap
    without converging), and the exact solver wins up to 1024 units; with equal sizes the two
    are within about 2x up to 512 units, and Sinkhorn wins from 1024 on. The exact solver gives
    the exact optimum; Sinkhorn agreed with it to 2e-3 or better in every case above.
    """
    limit = AUTO_EXACT_MAX_UNITS_SQUARE if na == nb else AUTO_EXACT_MAX_UNITS
    if max(na, nb) > limit or (na != nb and not _has_pot()):
        return "sinkhorn"
    return "exact"


def _soft_result(p: _folds.Prepared, moments, solver, cfg, keep_plans=True) -> SoftMatchingResult:
    k = len(p.folds.sizes)
    if solver == "auto":
        solver = auto_solver(len(p.units_x.live), len(p.units_y.live))
    if solver == "exact":
        plans, scores, train_scores = [], [], []
        for train, test in _live_correlations(p, moments):  # one fold at a time
            plan = exact_plan(train)
            scores.append((plan * test).sum())
            train_scores.append((plan * train).sum())
            if keep_plans:
                plans.append(plan)
            del plan, train, test
        plans = np.stack(plans) if keep_plans else None
        converged, n_iters, errors = np.ones(k, bool), np.zeros(k, int), np.zeros(k)
    else:
        scores, train_scores, plans, converged, n_iters, errors = (
            None if a is None else np.asarray(a)
            for a in _soft(moments, cfg, *_folds.keep_masks(p), keep_plans=keep_plans)
        )
        if keep_plans:
            plans = plans[:, : len(p.units_x.live), : len(p.units_y.live)]
        if not converged.all():
            warnings.warn(
                f"soft_matching: Sinkhorn did not reach threshold {cfg.threshold} within "
                f"{cfg.max_iterations} iterations on fold(s) {np.flatnonzero(~converged).tolist()} "
                f"(marginal errors {errors[~converged].tolist()}); plans were rounded onto the "
                "polytope, but scores may be off the exact optimum",
                RuntimeWarning,
                stacklevel=3,
            )
    folds, mean, sem = _folds.summary(scores)
    return SoftMatchingResult(
        folds,
        mean,
        sem,
        plans,
        converged,
        n_iters,
        errors,
        np.asarray(train_scores, dtype=np.float64),
        p.units_x.dead,
        p.units_y.dead,
        solver,
    )


@_folds.full_precision
def permutation_score(X, Y, *, n_folds: int = 5, seed: int = 0) -> PermutationResult:
    """Cross-validated permutation score (paper section 3): the exact one-to-one assignment.

    Per fold, scipy's ``linear_sum_assignment`` finds the pairing of units that maximises the
    summed train correlation (a bijection for equal sizes; ``min(Na, Nb)`` pairs otherwise); the
    score is the mean test correlation over the pairs. Units that are constant on the train or
    test rows of some fold are removed first (``dead_x`` / ``dead_y``).

    Args:
      X: [M, Na] source responses (numpy or jax array, list or tuple; real numbers).
      Y: [M, Nb] target responses.
      n_folds: number of shuffled folds K.
      seed: seed of the shuffle (scikit-learn ``KFold`` ``random_state``).

    Returns:
      A :class:`PermutationResult`.
    """
    from scipy.optimize import linear_sum_assignment

    p = _folds.prepare(X, Y, n_folds, seed)
    pairs, scores = [], []
    for train, test in _live_correlations(p, _folds.moments_of(p)):
        r, c = linear_sum_assignment(train, maximize=True)
        pairs.append((r, c))
        scores.append(test[r, c].mean())
    folds, mean, sem = _folds.summary(scores)
    rows = np.stack([p.units_x.live[r] for r, _ in pairs])
    cols = np.stack([p.units_y.live[c] for _, c in pairs])
    return PermutationResult(folds, mean, sem, rows, cols, p.units_x.dead, p.units_y.dead)
