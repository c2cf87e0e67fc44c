"""Sparse recovery against independent references: scikit-learn's orthogonal_mp and Lasso."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import Lasso, orthogonal_mp

from superalign import recovery


def _problem(m=300, f=40, n=20, k=3, seed=0, unit_atoms=True):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((f, n))
    if unit_atoms:
        A /= np.linalg.norm(A, axis=1, keepdims=True)
    Z = np.zeros((m, f))
    for i in range(m):
        Z[i, rng.choice(f, k, replace=False)] = rng.standard_normal(k)
    return Z.astype(np.float32), A.astype(np.float32), (Z @ A).astype(np.float32)


def test_omp_matches_scikit_learn_and_recovers_sparse_rows():
    Z, A, Y = _problem()
    result = recovery.omp(Y, A, 3)
    # scikit-learn's OMP on the design A^T (its atoms, the rows of A, have unit norm).
    expected = orthogonal_mp(A.T.astype(np.float64), Y.T.astype(np.float64), n_nonzero_coefs=3).T
    np.testing.assert_allclose(result.codes, expected, atol=1e-4)
    # N = 20 >= 2 K ln F = 22 nearly: almost every row is recovered exactly.
    err = np.linalg.norm(np.asarray(result.codes) - Z, axis=1)
    assert np.mean(err <= 1e-3 * np.linalg.norm(Z, axis=1)) >= 0.95
    np.testing.assert_allclose(
        result.residual, np.linalg.norm(Y - np.asarray(result.codes) @ A, axis=1), atol=1e-5
    )
    assert ((np.asarray(result.codes) != 0).sum(1) <= 3).all()


def test_omp_selects_by_normalised_correlation():
    # Rescaling atoms must not change which atoms are chosen; the codes scale inversely.
    Z, A, Y = _problem(seed=1)
    scale = np.random.default_rng(2).uniform(0.2, 5.0, size=(A.shape[0], 1)).astype(np.float32)
    base = recovery.omp(Y, A, 3)
    scaled = recovery.omp(Y, A * scale, 3)
    np.testing.assert_array_equal(base.support, scaled.support)
    np.testing.assert_allclose(np.asarray(scaled.codes) * scale.T, base.codes, atol=1e-4)


def test_omp_vmapped_over_k_equals_separate_calls_and_does_not_recompile():
    Z, A, Y = _problem(m=100, seed=3)
    ks = jnp.arange(1, 6)
    many = jax.jit(jax.vmap(lambda k: recovery.omp(Y, A, k, max_k=5).codes))(ks)
    for i, k in enumerate(range(1, 6)):
        np.testing.assert_allclose(many[i], recovery.omp(Y, A, k, max_k=5).codes, atol=1e-5)
    before = recovery._omp._cache_size()
    recovery.omp(Y * 2.0, A, 3, max_k=5)
    assert recovery._omp._cache_size() == before


def test_omp_with_more_atoms_than_units_stays_finite():
    # k > N: once the chosen atoms span the space the remaining slots stay empty.
    Z, A, Y = _problem(m=50, f=30, n=4, k=2, seed=4)
    result = recovery.omp(Y, A, 8)
    assert np.isfinite(np.asarray(result.codes)).all()
    assert (np.asarray(result.residual) < 1e-3 * np.linalg.norm(Y, axis=1)).all()
    assert ((np.asarray(result.codes) != 0).sum(1) <= 4).all()


@pytest.mark.parametrize("nonnegative", [False, True])
def test_lasso_matches_scikit_learn(nonnegative):
    Z, A, Y = _problem(m=6, seed=5)
    if nonnegative:
        Z, Y = np.abs(Z), np.abs(Z) @ A
    lam = 0.05
    result = recovery.lasso(Y, A, lam, n_iter=3000, nonnegative=nonnegative)
    n = A.shape[1]
    ref = Lasso(
        alpha=lam / n, fit_intercept=False, tol=1e-12, max_iter=100_000, positive=nonnegative
    )
    ref.fit(A.T.astype(np.float64), Y.T.astype(np.float64))
    np.testing.assert_allclose(result.codes, ref.coef_, atol=2e-4)
    expected = 0.5 * ((Y - ref.coef_ @ A) ** 2).sum(1) + lam * np.abs(ref.coef_).sum(1)
    np.testing.assert_allclose(result.objective, expected, rtol=1e-4, atol=1e-6)


def test_lasso_vmapped_over_penalty_equals_separate_calls():
    _, A, Y = _problem(m=20, seed=6)
    lams = jnp.array([0.01, 0.1, 0.5])
    many = jax.vmap(lambda lam: recovery.lasso(Y, A, lam, n_iter=200).codes)(lams)
    for i, lam in enumerate([0.01, 0.1, 0.5]):
        np.testing.assert_allclose(many[i], recovery.lasso(Y, A, lam, n_iter=200).codes, atol=1e-5)
    assert (np.abs(np.asarray(many[2])) > 0).sum() < (np.abs(np.asarray(many[0])) > 0).sum()


def test_bad_input_is_refused_before_any_work():
    _, A, Y = _problem(m=10)
    with pytest.raises(ValueError, match="Y must have last dimension 20"):
        recovery.omp(Y[:, :5], A, 3)
    with pytest.raises(ValueError, match="k must be an integer in 1..40"):
        recovery.omp(Y, A, 0)
    with pytest.raises(ValueError, match="k must be at most max_k=2"):
        recovery.omp(Y, A, 3, max_k=2)
    with pytest.raises(ValueError, match="pass a static max_k"):
        jax.vmap(lambda k: recovery.omp(Y, A, k).codes)(jnp.arange(1, 3))
    with pytest.raises(ValueError, match="A must have rank 2"):
        recovery.omp(Y, A[0], 3)
    with pytest.raises(ValueError, match="lam must be a finite number >= 0"):
        recovery.lasso(Y, A, -1.0)
    with pytest.raises(ValueError, match="Y must be finite"):
        recovery.lasso(np.full_like(Y, np.nan), A, 0.1)
