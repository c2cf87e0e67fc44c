"""Folds, dead-unit rule, blocked correlations and input validation of the alignment metrics."""

import numpy as np
import pytest
from sklearn.model_selection import KFold

import superalign
from superalign import checks
from superalign import folds as F


def _standardize(a):
    a = a - a.mean(0)
    return a / np.linalg.norm(a, axis=0)


def _reference_dead(X, n_folds, seed):
    """Plain numpy loop over scikit-learn's KFold: constant in any train or test part."""
    dead = np.zeros(X.shape[1], bool)
    for train, test in KFold(n_folds, shuffle=True, random_state=seed).split(X):
        dead |= (X[train] == X[train][0]).all(0) | (X[test] == X[test][0]).all(0)
    return np.flatnonzero(dead)


@pytest.mark.parametrize(("n", "k", "seed"), [(10, 2, 0), (103, 5, 0), (1000, 7, 3), (57, 5, 11)])
def test_kfold_matches_sklearn(n, k, seed):
    ours = F.kfold_test_indices(n, k, seed)
    theirs = [test for _, test in KFold(k, shuffle=True, random_state=seed).split(np.zeros(n))]
    assert len(ours) == k
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(np.sort(a), b)


def test_fold_correlations_match_float64_reference():
    # Offsets and scales far from zero mean and unit variance: float32 must still agree with a
    # float64 reference to 1e-5, for train (pooled) and test (own part) statistics alike.
    rng = np.random.default_rng(0)
    m = 20_003
    X = (
        rng.standard_normal((m, 7)) * [1, 10, 0.01, 3, 1, 1, 1] + [1e3, -50, 2, 0, 7, 0, 1]
    ).astype(np.float32)
    Y = (X[:, :5] * 0.3 + rng.standard_normal((m, 5)) + 100).astype(np.float32)
    _check_fold_correlations(X, Y)


def _check_fold_correlations(X, Y):
    """Train and test correlations of every fold within 1e-5 of float64 on the same numbers."""
    moments = F.moments_of(F.prepare(X, Y, 5, 0))
    x, y = X.astype(np.float64), Y.astype(np.float64)
    for k, (train, test) in enumerate(KFold(5, shuffle=True, random_state=0).split(X)):
        tr, te = (np.asarray(a) for a in F.fold_correlations(moments, k))
        np.testing.assert_allclose(tr, _standardize(x[train]).T @ _standardize(y[train]), atol=1e-5)
        np.testing.assert_allclose(te, _standardize(x[test]).T @ _standardize(y[test]), atol=1e-5)


def test_train_correlations_of_a_large_offset_over_a_small_spread():
    """Raw values near 1e4 that vary by about 0.03: the pooled train statistics (from per-part
    means) keep the accuracy of the test ones, as in float64 on the same float32 numbers."""
    rng = np.random.default_rng(2)
    z = rng.standard_normal((1000, 10))
    X = np.float32(1e4) + (0.01 * (z @ rng.standard_normal((10, 20)))).astype(np.float32)
    Y = np.float32(-3e4) + (0.01 * (z @ rng.standard_normal((10, 15)))).astype(np.float32)
    _check_fold_correlations(X, Y)


def test_blocking_does_not_change_moments():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((5000, 6)).astype(np.float32) + 3
    Y = rng.standard_normal((5000, 4)).astype(np.float32)
    p = F.prepare(X, Y, 3, 2)
    live_x, live_y = np.arange(6), np.arange(4)
    small = F.fold_moments(X, Y, live_x, live_y, *F.blocked(p.folds, 64), with_gram_x=True)
    large = F.fold_moments(X, Y, live_x, live_y, *F.blocked(p.folds, 4096), with_gram_x=True)
    for a, b in zip(small, large, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-4)
    # X^T X of every part against float64 numpy.
    for k, part in enumerate(p.folds.parts):
        xc = X[part].astype(np.float64) - X[part].astype(np.float64).mean(0)
        np.testing.assert_allclose(np.asarray(small.gram_x[k]), xc.T @ xc, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("host", [True, False])
def test_dead_unit_rule_matches_sklearn_loop(monkeypatch, host):
    """On the host (small arrays) and in the device pass (large ones): the same dead units."""
    if not host:
        monkeypatch.setattr(checks, "HOST_ELEMENTS", 0)
    rng = np.random.default_rng(2)
    m = 200
    X = rng.standard_normal((m, 8)).astype(np.float32)
    parts = F.kfold_test_indices(m, 5, 0)
    X[:, 1] = 0.0  # dead everywhere
    X[parts[2], 3] = 0.0  # all zero in one test part
    only = np.zeros(m, bool)
    only[parts[4]] = True
    X[~only, 5] = 0.0  # all zero in the train part of fold 4 (alive only in its test part)
    X[parts[0][:-1], 6] = 0.0  # one non-zero row left in part 0: alive
    X[:, 7] = 2.5  # constant, not zero, everywhere
    X[~only, 0] = -1.0  # constant, not zero, on the train part of fold 4
    X[parts[1][1:], 2] = 3.0  # one other value left in part 1: alive
    dead = F.live_units("X", X, F.make_folds(m, 5, 0)).dead
    np.testing.assert_array_equal(dead, _reference_dead(X, 5, 0))
    np.testing.assert_array_equal(dead, [0, 1, 3, 5, 7])
    result = superalign.semi_matching(X, rng.standard_normal((m, 3)))
    np.testing.assert_array_equal(result.dead_x, [0, 1, 3, 5, 7])
    assert result.dead_y.size == 0


def test_large_jax_arrays_are_checked_for_nan_and_inf_on_the_device(monkeypatch):
    import jax.numpy as jnp

    monkeypatch.setattr(checks, "HOST_ELEMENTS", 0)
    X = jnp.ones((40, 3)).at[:, 0].set(jnp.arange(40.0))
    Y = jnp.arange(80.0).reshape(40, 2)
    assert superalign.semi_matching(X, Y).dead_x.tolist() == [1, 2]
    for bad in (jnp.nan, jnp.inf):
        with pytest.raises(ValueError, match="X must be finite"):
            superalign.semi_matching(X.at[7, 2].set(bad), Y)


def test_second_call_does_not_recompile():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((300, 5)).astype(np.float32)
    Y = rng.standard_normal((300, 4)).astype(np.float32)
    superalign.semi_matching(X, Y)
    before = F.fold_moments._cache_size()
    superalign.semi_matching(X + 1, Y * 2)
    assert F.fold_moments._cache_size() == before


def _metric_calls():
    return [
        ("semi", superalign.semi_matching, {}),
        ("soft", superalign.soft_matching, {}),
        ("perm", superalign.permutation_score, {}),
        ("ridge", superalign.ridge_regression, {}),
    ]


def _bad_inputs():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((40, 3)).astype(np.float32)
    Y = rng.standard_normal((40, 2)).astype(np.float32)
    nan = X.copy()
    nan[3, 1] = np.nan
    inf = Y.copy()
    inf[0, 0] = np.inf
    dead = np.ones_like(Y)
    return [
        ("different stimuli", (X, Y[:30]), {}, "same number of stimuli"),
        ("NaN", (nan, Y), {}, "X must be finite"),
        ("Inf", (X, inf), {}, "Y must be finite"),
        ("rank 1", (X[:, 0], Y), {}, "X must have rank 2"),
        ("rank 3", (X, Y[None]), {}, "Y must have rank 2"),
        ("fewer rows than folds", (X[:4], Y[:4]), {}, "n_folds=5 is larger"),
        ("fewer than 2 rows per fold", (X[:9], Y[:9]), {}, "fewer than 2 rows per fold"),
        ("one fold", (X, Y), {"n_folds": 1}, "n_folds must be an integer >= 2"),
        ("no live unit", (X, dead), {}, "Y has no live unit"),
        ("complex", (X.astype(np.complex64), Y), {}, "X must be real, got dtype complex64"),
    ]


@pytest.mark.parametrize(("metric", "fn", "extra"), _metric_calls(), ids=lambda v: str(v)[:5])
@pytest.mark.parametrize(
    ("case", "args", "kwargs", "message"), _bad_inputs(), ids=[c[0] for c in _bad_inputs()]
)
def test_bad_input_raises_value_error(metric, fn, extra, case, args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fn(*args, **kwargs, **extra)


def test_constant_column_within_one_fold_is_dead():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((50, 3)).astype(np.float32)
    X[F.kfold_test_indices(50, 5, 0)[1], 0] = 2.0  # constant, non-zero, on one test part
    result = superalign.soft_matching(X, rng.standard_normal((50, 3)))
    np.testing.assert_array_equal(result.dead_x, [0])


def test_summary_sem_is_std_over_sqrt_k():
    scores, mean, sem = F.summary([0.1, 0.2, 0.4])
    assert mean == pytest.approx(np.mean(scores))
    assert sem == pytest.approx(np.std(scores, ddof=1) / np.sqrt(3))


def test_facts_about_jax_arrays_are_computed_once_per_array(monkeypatch):
    """The live units of a jax array are remembered while it exists (keyed by split); numpy
    arrays, which can change in place, are checked on every call."""
    import gc

    import jax.numpy as jnp

    calls = []
    live_units = F.live_units
    monkeypatch.setattr(F, "live_units", lambda *a: calls.append(a[0]) or live_units(*a))
    rng = np.random.default_rng(6)
    X = rng.standard_normal((60, 4)).astype(np.float32)
    X[:, 2] = 0.0
    Xj, Yj = jnp.asarray(X), jnp.asarray(rng.standard_normal((60, 3)).astype(np.float32))
    first = F.prepare(Xj, Yj, 5, 0)
    first.units_x.dead[0] = 99  # the caller's copy: the remembered one is unchanged
    again = F.prepare(Xj, Yj, 5, 0)
    assert calls == ["X", "Y"]
    np.testing.assert_array_equal(again.units_x.dead, [2])
    F.prepare(Xj, Yj, 5, 1)  # another split
    assert calls == ["X", "Y"] * 2
    F.prepare(X, Yj, 5, 0)  # numpy X: computed again
    assert calls == ["X", "Y"] * 2 + ["X"]
    # NaN in a new array is refused every time (a failed check is not remembered).
    bad = Xj.at[3, 1].set(jnp.nan)
    for _ in range(2):
        with pytest.raises(ValueError, match="finite"):
            F.prepare(bad, Yj, 5, 0)
    # An array that is gone leaves nothing behind.
    n_entries = len(F._LIVE._entries)
    del first, again, Xj
    gc.collect()
    assert len(F._LIVE._entries) == n_entries - 2  # Xj's two splits
    folds = F.make_folds(60, 5, 0)
    assert folds is F.make_folds(60, 5, 0)
    assert not folds.parts[0].flags.writeable and not folds.sizes.flags.writeable


def test_metrics_of_one_pair_share_one_pass_over_the_rows(monkeypatch):
    """Matching, ridge and the rotation score of the same jax arrays compute the per-part
    moments once (with X^T X, equal to a separate pass); threads wait for the one computing
    them; numpy inputs and pairs over ``SHARED_MOMENTS_BYTES`` compute what they ask for."""
    import gc

    import jax.numpy as jnp

    import superalign

    calls = []
    fold_moments = F.fold_moments

    def counted(*args, **kwargs):
        calls.append(kwargs["with_gram_x"])
        return fold_moments(*args, **kwargs)

    monkeypatch.setattr(F, "fold_moments", counted)
    rng = np.random.default_rng(7)
    X = rng.standard_normal((3000, 6)).astype(np.float32)
    Y = (X @ rng.standard_normal((6, 4)) + rng.standard_normal((3000, 4))).astype(np.float32)
    Xj, Yj = jnp.asarray(X), jnp.asarray(Y)
    shared = [
        *superalign.soft_and_semi_matching(Xj, Yj, keep_plans=False),
        superalign.ridge_regression(Xj, Yj),
        superalign.rotation_score(Xj, Yj),
        superalign.permutation_score(Xj, Yj),
    ]
    assert calls == [True]
    alone = [
        *superalign.soft_and_semi_matching(X, Y, keep_plans=False),
        superalign.ridge_regression(X, Y),
        superalign.rotation_score(X, Y),
        superalign.permutation_score(X, Y),
    ]
    assert calls == [True, False, False, True, False]  # numpy: every metric its own pass
    for a, b in zip(shared, alone, strict=True):
        np.testing.assert_allclose(a.folds, b.folds, rtol=0, atol=1e-6)
    p = F.prepare(Xj, Yj, 5, 0)
    with_gram = F.moments_of(p)
    assert F.moments_of(p, with_gram_x=True) is with_gram
    separate = F._pair_moments(F.prepare(X, Y, 5, 0), True)
    for a, b in zip(with_gram, separate, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-5)
    # Another split is another pass; so is a pair over the size limit.
    F.moments_of(F.prepare(Xj, Yj, 5, 1))
    assert calls[5:] == [True, True]
    limit = F.SHARED_MOMENTS_BYTES
    monkeypatch.setattr(F, "SHARED_MOMENTS_BYTES", 4 * 5 * 6 * 10 - 1)
    F.moments_of(F.prepare(Xj, Yj, 5, 0))
    assert calls[7:] == [False]
    monkeypatch.setattr(F, "SHARED_MOMENTS_BYTES", limit)
    # Threads asking for a new pair at once: one pass, the same object for all.
    got = _moments_from_threads(F.prepare(Xj, Yj + 1.0, 5, 0), 4)
    assert calls[8:] == [True] and all(g is got[0] for g in got)
    # The moments go with the arrays.
    n_entries = len(F._MOMENTS._entries)
    del p, with_gram, got, shared, Xj
    gc.collect()
    assert len(F._MOMENTS._entries) == n_entries - 2  # Xj's two splits


def _moments_from_threads(p, n):
    import threading

    got = [None] * n
    barrier = threading.Barrier(n)

    def ask(i):
        barrier.wait()
        got[i] = F.moments_of(p)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return got
