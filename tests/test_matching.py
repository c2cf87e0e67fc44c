"""Matching scores against independent references: plain numpy over scikit-learn's KFold,
scipy's linear_sum_assignment, POT's exact solver, and the closed form of paper section 3."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import ot
import pytest
from references import live_folds
from scipy.optimize import linear_sum_assignment

import superalign
from superalign import matching


def _standardize(a):
    a = a - a.mean(0)
    return a / np.linalg.norm(a, axis=0)


def _reference_folds(X, Y, n_folds=5, seed=0):
    """float64 train and test correlations per fold, dead units removed (numpy + sklearn)."""
    X, Y, splits, keep = live_folds(X, Y, n_folds, seed)
    out = []
    for train, test in splits:
        out.append(
            (
                _standardize(X[train]).T @ _standardize(Y[train]),
                _standardize(X[test]).T @ _standardize(Y[test]),
            )
        )
    return out, keep


def _random(m, na, nb, seed):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((m, na)).astype(np.float32),
        rng.standard_normal((m, nb)).astype(np.float32),
    )


def planted(m, na, nb, seed, noise=1.0):
    """A noisy permutation: Y's units are X's shared latents in shuffled order, plus noise."""
    rng = np.random.default_rng(seed)
    n = max(na, nb)
    z = rng.standard_normal((m, n))
    X = z[:, :na] + noise * rng.standard_normal((m, na))
    Y = z[:, rng.permutation(n)[:nb]] + noise * rng.standard_normal((m, nb))
    return X.astype(np.float32), Y.astype(np.float32)


def _sparse_relu(m, n, seed):
    rng = np.random.default_rng(seed)
    X = np.maximum(rng.standard_normal((m, n)) - 1.0, 0).astype(np.float32)
    X[:, 0] = 0.0  # a dead unit
    return X


@pytest.mark.parametrize("direction", ["target", "source"])
def test_semi_matching_matches_numpy_loop(direction):
    X = _sparse_relu(2003, 30, 0)
    rng = np.random.default_rng(1)
    Y = (X[:, rng.permutation(30)[:20]] + 0.7 * rng.standard_normal((2003, 20))).astype(np.float32)
    result = superalign.semi_matching(X, Y, direction=direction, seed=4)
    folds, (live_x, live_y) = _reference_folds(X, Y, seed=4)
    expected = []
    for k, (train, test) in enumerate(folds):
        if direction == "source":
            train, test = train.T, test.T
        best = train.argmax(0)
        expected.append(test[best, np.arange(test.shape[1])].mean())
        partners = live_x if direction == "target" else live_y
        np.testing.assert_array_equal(result.matches[k], partners[best])
    np.testing.assert_allclose(result.folds, expected, atol=1e-5)
    assert result.mean == pytest.approx(np.mean(expected), abs=1e-5)
    assert result.sem == pytest.approx(np.std(expected, ddof=1) / np.sqrt(5), abs=1e-5)
    np.testing.assert_array_equal(result.dead_x, [0])


@pytest.mark.parametrize("shape", [(40, 40), (25, 40), (40, 25)])
def test_permutation_score_matches_linear_sum_assignment(shape):
    X, Y = planted(1500, *shape, seed=2, noise=2.0)
    result = superalign.permutation_score(X, Y)
    folds, _ = _reference_folds(X, Y)
    expected = []
    for train, test in folds:
        rows, cols = linear_sum_assignment(train, maximize=True)
        expected.append(test[rows, cols].mean())
    np.testing.assert_allclose(result.folds, expected, atol=1e-5)
    assert result.rows.shape == (5, min(shape))


def _exact_reference(X, Y, n_folds):
    folds, _ = _reference_folds(X, Y, n_folds=n_folds)
    scores = []
    for train, test in folds:
        na, nb = train.shape
        plan = ot.emd(np.full(na, 1 / na), np.full(nb, 1 / nb), 1 - train, numItermax=10**8)
        scores.append((plan * test).sum())
    return np.array(scores)


@pytest.mark.parametrize(
    ("na", "nb", "m", "n_folds"),
    # 1000 x 1500 on 2 folds keeps the exact reference and the test fast.
    [(64, 64, 4000, 5), (256, 256, 4000, 5), (1000, 1500, 4000, 2)],
)
@pytest.mark.parametrize("data", ["random", "planted"])
def test_soft_matching_agrees_with_exact_lp(na, nb, m, n_folds, data):
    make = _random if data == "random" else planted
    X, Y = make(m, na, nb, seed=na + nb)
    exact = _exact_reference(X, Y, n_folds)
    ours_exact = superalign.soft_matching(X, Y, n_folds=n_folds, solver="exact")
    np.testing.assert_allclose(ours_exact.folds, exact, atol=1e-5)
    sinkhorn = superalign.soft_matching(X, Y, n_folds=n_folds, solver="sinkhorn")
    assert sinkhorn.converged.all()
    np.testing.assert_allclose(sinkhorn.folds, exact, atol=1e-3)
    # The rounded plans are feasible: uniform marginals to float32 precision.
    np.testing.assert_allclose(sinkhorn.plans.sum(2), 1 / na, rtol=1e-3)
    np.testing.assert_allclose(sinkhorn.plans.sum(1), 1 / nb, rtol=1e-3)
    assert (sinkhorn.plans >= 0).all()


@pytest.mark.parametrize("data", ["random", "planted"])
def test_log_domain_sinkhorn_reaches_the_same_optimum(data):
    """Kernel mode (default) and ott's log-domain updates solve the same problem."""
    make = _random if data == "random" else planted
    X, Y = make(3000, 80, 120, seed=11)
    exact = superalign.soft_matching(X, Y, solver="exact")
    kernel = superalign.soft_matching(X, Y, solver="sinkhorn")
    log = superalign.soft_matching(
        X, Y, solver="sinkhorn", config=matching.SinkhornConfig(lse_mode=True)
    )
    assert kernel.converged.all() and log.converged.all()
    np.testing.assert_allclose(kernel.folds, exact.folds, atol=1e-3)
    np.testing.assert_allclose(log.folds, exact.folds, atol=1e-3)


def test_masked_sinkhorn_equals_the_live_subproblem():
    """Zero-weight (dead) rows and columns: a plan of exactly 0 there, the live part unchanged."""
    rng = np.random.default_rng(12)
    cost = jnp.asarray(rng.uniform(size=(30, 40)).astype(np.float32))
    a_mask = jnp.asarray((np.arange(30) % 4 != 1).astype(np.float32))
    b_mask = jnp.asarray((np.arange(40) % 3 != 2).astype(np.float32))
    cfg = matching.SinkhornConfig()
    # Jitted as in soft-matching (one program each, not one per operation).
    solve = jax.jit(matching._sinkhorn_plan, static_argnums=1)
    plan, ok, _, _ = solve(cost, cfg, a_mask, b_mask)
    live_a, live_b = np.flatnonzero(a_mask), np.flatnonzero(b_mask)
    sub, ok_sub, _, _ = solve(cost[live_a][:, live_b], cfg)
    assert bool(ok) and bool(ok_sub)
    plan = np.asarray(plan)
    assert plan[np.asarray(a_mask) == 0].sum() == 0 and plan[:, np.asarray(b_mask) == 0].sum() == 0
    np.testing.assert_allclose(plan[np.ix_(live_a, live_b)], np.asarray(sub), atol=1e-6)


def test_soft_matching_equals_permutation_for_equal_sizes():
    X, Y = planted(3000, 50, 50, seed=7, noise=1.5)
    soft = superalign.soft_matching(X, Y, solver="exact")
    perm = superalign.permutation_score(X, Y)
    np.testing.assert_allclose(soft.folds, perm.folds, atol=1e-6)


def test_non_convergence_is_reported_and_warned():
    # Unequal sizes: with equal sizes and so small an epsilon, the row and column reductions of
    # kernel mode can already hold a permutation, which Sinkhorn then meets exactly.
    X, Y = _random(1000, 40, 60, seed=8)
    cfg = matching.SinkhornConfig(epsilon=1e-4, threshold=1e-9, max_iterations=10)
    with pytest.warns(RuntimeWarning, match="did not reach threshold"):
        result = superalign.soft_matching(X, Y, solver="sinkhorn", config=cfg)
    assert not result.converged.any()
    assert np.isfinite(result.folds).all()
    np.testing.assert_allclose(result.plans.sum(2), 1 / 40, rtol=1e-3)


def test_dead_units_do_not_change_the_compiled_shapes():
    """Matching compiles once per input widths, whatever the number of dead units."""
    X, Y = _random(1000, 30, 20, seed=13)
    superalign.soft_and_semi_matching(X, Y, solver="sinkhorn")
    before = matching._soft._cache_size(), matching._semi._cache_size()
    X[:, [2, 5]] = 0.0
    soft, semi = superalign.soft_and_semi_matching(X, Y, solver="sinkhorn")
    assert list(soft.dead_x) == [2, 5] and soft.plans.shape[1:] == (28, 20)
    assert (matching._soft._cache_size(), matching._semi._cache_size()) == before


def test_round_to_polytope_gives_exact_marginals():
    rng = np.random.default_rng(9)
    plan = rng.uniform(size=(30, 20)) / 600
    a, b = np.full(30, 1 / 30), np.full(20, 1 / 20)
    rounded = np.asarray(matching.round_to_polytope(plan, a, b))
    np.testing.assert_allclose(rounded.sum(1), a, rtol=1e-5)
    np.testing.assert_allclose(rounded.sum(0), b, rtol=1e-5)
    assert (rounded >= 0).all()


def _k_sparse_whitened(m, f, k, seed):
    """K-sparse latents with independent random signs: zero mean, equal variance, uncorrelated."""
    rng = np.random.default_rng(seed)
    z = np.zeros((m, f), np.float32)
    support = np.argsort(rng.uniform(size=(m, f)), axis=1)[:, :k]
    np.put_along_axis(z, support, rng.choice([-1.0, 1.0], size=(m, k)).astype(np.float32), 1)
    return z


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_permutation_score_closed_form_deflation(n):
    # Paper section 3, example (1): A_a = I; every unit of system b mixes n features with
    # equal weights (unit-norm columns, cyclic supports); the score is 1/sqrt(n).
    f = 48
    z = _k_sparse_whitened(40_000, f, k=4, seed=n)
    mix = np.zeros((f, f), np.float32)
    for j in range(f):
        mix[(j + np.arange(n)) % f, j] = 1 / np.sqrt(n)
    result = superalign.permutation_score(z, z @ mix)
    assert result.mean == pytest.approx(1 / np.sqrt(n), abs=0.01)
    soft = superalign.soft_matching(z, z @ mix)
    assert soft.mean == pytest.approx(1 / np.sqrt(n), abs=0.01)


def test_soft_and_semi_from_one_pass_equal_the_separate_calls():
    rng = np.random.default_rng(7)
    z = rng.standard_normal((3000, 12))
    X = np.maximum(z @ rng.standard_normal((12, 20)), 0).astype(np.float32)
    Y = (z @ rng.standard_normal((12, 15))).astype(np.float32)
    X[:, 3] = 0.0  # a dead unit
    soft, semi = superalign.soft_and_semi_matching(X, Y, n_folds=4, seed=3)
    ref_soft = superalign.soft_matching(X, Y, n_folds=4, seed=3)
    ref_semi = superalign.semi_matching(X, Y, n_folds=4, seed=3)
    np.testing.assert_array_equal(soft.folds, ref_soft.folds)
    np.testing.assert_array_equal(semi.folds, ref_semi.folds)
    np.testing.assert_array_equal(soft.dead_x, [3])
    np.testing.assert_array_equal(semi.matches, ref_semi.matches)
    with pytest.raises(ValueError, match="direction"):
        superalign.soft_and_semi_matching(X, Y, direction="both")
    with pytest.raises(ValueError, match="direction must be 'target' or 'source'"):
        superalign.semi_matching(X, Y, direction=np.array(["target"]))  # unhashable
    with pytest.raises(ValueError, match="solver"):
        superalign.soft_and_semi_matching(X, Y, solver="lp")


@pytest.fixture(scope="module")
def auto_pair():
    """12 x 11 units, one of X's dead: 11 x 11 live units."""
    X, Y = planted(600, 12, 11, seed=15)
    X[:, 4] = 0.0
    return X, Y


@pytest.mark.parametrize(("limit", "expected"), [(11, "exact"), (10, "sinkhorn")])
def test_auto_runs_exact_up_to_the_threshold_and_sinkhorn_above(
    monkeypatch, auto_pair, limit, expected
):
    """The threshold counts live units; the scores are the chosen solver's, unchanged."""
    monkeypatch.setattr(matching, "AUTO_EXACT_MAX_UNITS", limit)
    monkeypatch.setattr(matching, "AUTO_EXACT_MAX_UNITS_SQUARE", limit)
    auto = superalign.soft_matching(*auto_pair)
    explicit = superalign.soft_matching(*auto_pair, solver=expected)
    assert auto.solver == explicit.solver == expected
    np.testing.assert_array_equal(auto.folds, explicit.folds)
    np.testing.assert_array_equal(auto.plans, explicit.plans)
    np.testing.assert_array_equal(auto.dead_x, [4])
    soft, _ = superalign.soft_and_semi_matching(*auto_pair)
    assert soft.solver == expected
    np.testing.assert_array_equal(soft.folds, explicit.folds)
    # Both solvers reach the same optimum.
    other = superalign.soft_matching(
        *auto_pair, solver={"exact": "sinkhorn"}.get(expected, "exact")
    )
    np.testing.assert_allclose(auto.folds, other.folds, atol=1e-4)


def test_auto_solver_threshold_and_pot_fallback(monkeypatch, auto_pair):
    limit, square = matching.AUTO_EXACT_MAX_UNITS, matching.AUTO_EXACT_MAX_UNITS_SQUARE
    assert matching.auto_solver(limit, limit - 1) == "exact"
    assert matching.auto_solver(limit - 1, limit) == "exact"
    assert matching.auto_solver(limit + 1, limit) == "sinkhorn"
    assert matching.auto_solver(square, square) == "exact"
    assert matching.auto_solver(square + 1, square + 1) == "sinkhorn"
    monkeypatch.setitem(sys.modules, "ot", None)  # POT not installed: import ot fails
    assert matching.auto_solver(4, 3) == "sinkhorn"
    assert matching.auto_solver(4, 4) == "exact"  # scipy's linear_sum_assignment
    X, Y = auto_pair
    X = X.copy()
    X[:, 4] = Y[:, 0]  # 12 x 11 live units (the Sinkhorn shape of the test above: no compile)
    assert superalign.soft_matching(X, Y).solver == "sinkhorn"
