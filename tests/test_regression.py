"""Ridge regression score against scikit-learn's RidgeCV, fold by fold."""

import jax.numpy as jnp
import numpy as np
import pytest
from references import sklearn_ridge_loop
from sklearn.model_selection import KFold

import superalign
from superalign import folds, regression


def _latent_data(m, na, nb, seed, noise_y=2.0, collinear=True):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((m, 15))
    X = z @ rng.standard_normal((15, na)) + 0.5 * rng.standard_normal((m, na))
    if collinear:  # ill-conditioned X: the small-alpha end must stay accurate
        X[:, 1] = X[:, 0] + 1e-3 * rng.standard_normal(m)
    X = np.maximum(X, 0) + 5.0  # offset columns: centring matters
    Y = z @ rng.standard_normal((15, nb)) + noise_y * rng.standard_normal((m, nb))
    return X.astype(np.float32), Y.astype(np.float32)


@pytest.mark.parametrize(
    ("m", "na", "nb", "noise_y", "seed", "collinear"),
    [
        (2003, 40, 12, 2.0, 0, True),  # unequal fold sizes, tall ill-conditioned X (fallback)
        (2003, 40, 12, 2.0, 0, False),  # the same, well conditioned (streamed path)
        (1500, 30, 30, 6.0, 1, True),  # noisy targets: a large alpha wins
        (150, 200, 8, 1.0, 2, True),  # wide X (fewer train rows than units)
        (20_000, 12, 6, 2.0, 3, True),  # tall X
        (20_000, 12, 6, 2.0, 3, False),  # tall X, streamed path
    ],
)
def test_ridge_matches_sklearn_ridgecv(m, na, nb, noise_y, seed, collinear):
    X, Y = _latent_data(m, na, nb, seed, noise_y, collinear)
    alphas = regression.DEFAULT_ALPHAS
    result = superalign.ridge_regression(X, Y)
    chosen, scores = sklearn_ridge_loop(X, Y, alphas)
    np.testing.assert_array_equal(result.alpha, chosen)
    np.testing.assert_allclose(result.folds, scores, atol=1e-4)
    assert result.mean == pytest.approx(scores.mean(), abs=1e-4)
    assert result.loo_error.shape == (5, 17)
    assert np.isfinite(result.folds).all()


def test_ridge_drops_dead_units_and_matches_sklearn():
    X, Y = _latent_data(1000, 20, 6, seed=3)
    X[:, 4] = 0.0
    Y[KFold(5, shuffle=True, random_state=1).split(X).__next__()[1], 2] = 0.0
    result = superalign.ridge_regression(X, Y, seed=1, alphas=[1e-2, 1.0, 1e2])
    np.testing.assert_array_equal(result.dead_x, [4])
    np.testing.assert_array_equal(result.dead_y, [2])
    chosen, scores = sklearn_ridge_loop(
        np.delete(X, 4, 1), np.delete(Y, 2, 1), [1e-2, 1.0, 1e2], seed=1
    )
    np.testing.assert_array_equal(result.alpha, chosen)
    np.testing.assert_allclose(result.folds, scores, atol=1e-4)


def test_default_alphas_are_the_papers_sweep():
    np.testing.assert_array_equal(regression.DEFAULT_ALPHAS, 10.0 ** np.arange(-8, 9))
    assert len(regression.DEFAULT_ALPHAS) == 17


@pytest.mark.parametrize(
    "alphas",
    [[1.0, 0.0], [-1.0], [1.0, np.nan], [np.inf], [], [[1.0, 2.0]], "abc", [1 + 1j], [True]],
    ids=str,
)
def test_bad_alphas_raise(alphas):
    X, Y = _latent_data(100, 5, 3, seed=4)
    with pytest.raises(ValueError, match="alphas"):
        superalign.ridge_regression(X, Y, alphas=alphas)


def test_unpredictable_target_scores_without_nan():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((400, 5)).astype(np.float32)
    Y = rng.standard_normal((400, 3)).astype(np.float32)
    result = superalign.ridge_regression(X, Y, alphas=[1e8])
    assert np.isfinite(result.folds).all()
    assert abs(result.mean) < 0.2


def test_streamed_ridge_with_dead_units_matches_sklearn():
    """Dead units on the streamed path: its passes run at the full widths with zero padding."""
    X, Y = _latent_data(2003, 20, 6, seed=4, collinear=False)
    X[:, 4] = 0.0
    Y[KFold(5, shuffle=True, random_state=1).split(X).__next__()[1], 2] = 0.0
    p = folds.prepare(X, Y, 5, 1)
    assert regression._ridge_streamed(p, regression.DEFAULT_ALPHAS) is not None
    result = superalign.ridge_regression(X, Y, seed=1)
    np.testing.assert_array_equal(result.dead_x, [4])
    np.testing.assert_array_equal(result.dead_y, [2])
    chosen, scores = sklearn_ridge_loop(
        np.delete(X, 4, 1), np.delete(Y, 2, 1), regression.DEFAULT_ALPHAS, seed=1
    )
    np.testing.assert_array_equal(result.alpha, chosen)
    np.testing.assert_allclose(result.folds, scores, atol=1e-4)


def test_dead_units_do_not_change_the_compiled_shapes():
    """The streamed passes compile once per input widths, whatever the number of dead units."""
    X, Y = _latent_data(2003, 20, 6, seed=5, collinear=False)
    superalign.ridge_regression(X, Y)
    before = regression._loo_pass._cache_size(), regression._test_pass._cache_size()
    X[:, [3, 7]] = 0.0
    Y[:, 1] = 0.0
    result = superalign.ridge_regression(X, Y)
    assert len(result.dead_x) == 2 and len(result.dead_y) == 1
    after = regression._loo_pass._cache_size(), regression._test_pass._cache_size()
    assert after == before


def test_second_call_does_not_recompile():
    X, Y = _latent_data(500, 10, 4, seed=6)
    superalign.ridge_regression(X, Y)
    before = regression._ridge_folds._cache_size()
    superalign.ridge_regression(X * 2, Y + 1)
    assert regression._ridge_folds._cache_size() == before


@pytest.mark.parametrize("kappa_noise", [None, 1e-3, 1e-6])
def test_thin_svd_of_tall_matrices_as_accurate_as_lapack(kappa_noise):
    """CholeskyQR2 where it is accurate, LAPACK's SVD where it is not (checked at run time)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20_000, 16))
    if kappa_noise is not None:  # condition number about 1 / kappa_noise
        x[:, 1] = x[:, 0] + kappa_noise * rng.standard_normal(len(x))
    x = x.astype(np.float32)
    u, s, vt = (np.asarray(a, np.float64) for a in regression._thin_svd(x))
    s_ref = np.linalg.svd(x.astype(np.float64), compute_uv=False)
    s_lapack = np.linalg.svd(x, compute_uv=False).astype(np.float64)  # float32 LAPACK
    assert np.abs(s - s_ref).max() <= 2 * np.abs(s_lapack - s_ref).max() + 1e-6 * s_ref[0]
    np.testing.assert_allclose(u.T @ u, np.eye(16), atol=1e-5)
    np.testing.assert_allclose((u * s) @ vt, x, atol=1e-4 * np.abs(x).max())


@pytest.mark.parametrize("collinear", [False, True])
def test_tall_x_is_streamed_unless_ill_conditioned(collinear):
    """Well-conditioned tall X takes the streamed path (Cholesky of float64 Gram matrices); a
    condition number above 1e3 falls back to LAPACK's SVD on the gathered folds."""
    X, Y = _latent_data(2003, 40, 12, 0, 2.0, collinear)
    p = folds.prepare(X, Y, 5, 0)
    out = regression._ridge_streamed(p, regression.DEFAULT_ALPHAS)
    assert (out is None) == collinear
    if out is not None:
        ref = regression._ridge_materialised(p, regression.DEFAULT_ALPHAS)
        np.testing.assert_array_equal(out[1], np.asarray(ref[1]))
        np.testing.assert_allclose(out[0], np.asarray(ref[0]), atol=1e-6)
        np.testing.assert_allclose(out[3], np.asarray(ref[3]), atol=1e-6)


@pytest.mark.parametrize("host", [False, True])
def test_part_grams_match_a_float64_reference(host):
    """The streamed path's per-part Gram matrices: float64 sums on the device or on the host."""
    X, _ = _latent_data(3001, 9, 2, seed=8, collinear=False)
    X[:, 4] = 0.0  # a dead column, weighted 0
    fo = folds.make_folds(len(X), 5, 0)
    index, mask = folds.blocked(fo, 256)
    live, keep = folds.padded_live(np.array([0, 1, 2, 3, 5, 6, 7, 8]), 9)
    counts = np.array([len(part) for part in fo.parts], np.float64)
    rough = np.stack([X[part][:, np.asarray(live)].mean(0) for part in fo.parts]) + 0.3
    mean, gram = regression._part_grams(
        jnp.asarray(X), live, keep, index, mask, counts, rough, host=host
    )
    for k, part in enumerate(fo.parts):
        x = X[part][:, np.asarray(live)].astype(np.float64) * np.asarray(keep)
        np.testing.assert_allclose(mean[k], x.mean(0), rtol=1e-13, atol=1e-13)
        xc = x - x.mean(0)
        np.testing.assert_allclose(gram[k], xc.T @ xc, rtol=1e-11, atol=1e-9)
    assert gram.dtype == np.float64


def test_svd_of_r_matches_lapack():
    """The streamed path's SVD of its float64 triangular factor (via eigh of r^T r)."""
    rng = np.random.default_rng(7)
    r = np.triu(rng.standard_normal((50, 50))) + 10 * np.eye(50)
    u, s, vt = regression._svd_of_r(r)
    s_ref = np.linalg.svd(r, compute_uv=False)
    np.testing.assert_allclose(s, s_ref, rtol=1e-10)
    np.testing.assert_allclose((u * s) @ vt, r, atol=1e-10 * s_ref[0])
    np.testing.assert_allclose(u.T @ u, np.eye(50), atol=1e-10)
    np.testing.assert_allclose(vt @ vt.T, np.eye(50), atol=1e-12)


@pytest.fixture(scope="module")
def square_pair():
    """Train rows close to the number of units, as many targets: the weighted-Gram LOO path."""
    return _latent_data(600, 80, 100, seed=9, noise_y=2.0, collinear=False)


def _record_grams(monkeypatch):
    ranks = []
    weighted_grams = regression._weighted_grams

    def spy(u, phi):
        ranks.append(phi.shape[1] - 1)
        return weighted_grams(u, phi)

    monkeypatch.setattr(regression, "_weighted_grams", spy)
    return ranks


@pytest.mark.parametrize("fine", [False, True])
def test_square_ridge_uses_low_rank_weights_and_matches_sklearn(square_pair, monkeypatch, fine):
    """Truncated weights, certified by their error bounds. ``fine``: alphas a factor 1.5 apart
    and no tolerance (rank 0) leave the best alphas in doubt, and every fold is redone at the
    full rank (exact)."""
    X, Y = square_pair
    alphas = 1.5 ** np.arange(-6, 10) if fine else regression.DEFAULT_ALPHAS
    if fine:
        monkeypatch.setattr(regression, "_LOWRANK_RTOL", np.inf)
    ranks = _record_grams(monkeypatch)
    result = superalign.ridge_regression(X, Y, alphas=alphas)
    if fine:
        assert len(ranks) == 10 and ranks[::2] == [0] * 5 and min(ranks[1::2]) >= 8
    else:
        assert len(ranks) == 5 and max(ranks) < 16  # every fold once, truncated
    chosen, scores = sklearn_ridge_loop(X, Y, alphas)
    np.testing.assert_array_equal(result.alpha, chosen)
    np.testing.assert_allclose(result.folds, scores, atol=1e-6)
    p = folds.prepare(X, Y, 5, 0)
    ref = regression._ridge_materialised(p, alphas)
    np.testing.assert_allclose(result.loo_error, np.asarray(ref[2]), rtol=1e-5)


def _weighted_gram_path_matches_sklearn(monkeypatch, X, Y):
    """Default alphas: the weighted-Gram path, every fold once, scikit-learn's alphas and
    scores."""
    ranks = _record_grams(monkeypatch)
    result = superalign.ridge_regression(X, Y)
    assert len(ranks) == 5
    chosen, scores = sklearn_ridge_loop(X, Y, regression.DEFAULT_ALPHAS)
    np.testing.assert_array_equal(result.alpha, chosen)
    np.testing.assert_allclose(result.folds, scores, atol=1e-6)


def test_a_quarter_as_many_targets_as_units_takes_the_weighted_gram_path(monkeypatch):
    """SAE latents -> units (targets a quarter of the sources): the weighted-Gram path, every
    fold once, with scikit-learn's alphas and scores."""
    rng = np.random.default_rng(4)
    X = np.maximum(rng.standard_normal((500, 64)), 0).astype(np.float32)
    Y = (X @ rng.standard_normal((64, 16)) + 3.0 * rng.standard_normal((500, 16))).astype(
        np.float32
    )
    _weighted_gram_path_matches_sklearn(monkeypatch, X, Y)


def test_square_ridge_with_a_flat_small_alpha_end(monkeypatch):
    """Nearly noiseless targets: the LOO curve is flat at small alphas (relative steps of 1e-7)
    and scikit-learn's float64 picks 1e-8; the changes from the first alpha resolve it."""
    rng = np.random.default_rng(10)
    X = rng.standard_normal((400, 60)).astype(np.float32)
    Y = (X @ rng.standard_normal((60, 40)) + 1e-3 * rng.standard_normal((400, 40))).astype(
        np.float32
    )
    _weighted_gram_path_matches_sklearn(monkeypatch, X, Y)


@pytest.mark.parametrize("row_blocks", [False, True])
def test_weighted_grams_match_float64_over_column_blocks(monkeypatch, row_blocks):
    """The weighted Gram matrices, formed block-triangularly (300 columns: blocks of 256 and 44),
    against float64 numpy; in one product, or over row blocks of 8 (rows padded); and the
    quadratic forms read from their upper blocks against dense float64 ones."""
    if row_blocks:
        monkeypatch.setattr(regression, "_GRAM_BLOCK_ELEMENTS", 8 * 3 * 256)
    n = 301 if row_blocks else 300  # a new shape: traced again with the limit set
    rng = np.random.default_rng(11)
    u = rng.standard_normal((n, 300)).astype(np.float32)
    phi = rng.standard_normal((n, 3)).astype(np.float32)
    grams = regression._weighted_grams(jnp.asarray(u), jnp.asarray(phi))
    assert [(g.lo, g.hi) for g in grams] == [(0, 256), (256, 300)]
    u64, phi64 = u.astype(np.float64), phi.astype(np.float64)
    ref = np.einsum("nr,np,nq->rpq", phi64, u64, u64)
    # float32 sums of n terms: error below n * eps32 of the sum of their magnitudes
    bound = n * 1.2e-7 * np.einsum("nr,np,nq->rpq", np.abs(phi64), np.abs(u64), np.abs(u64))
    for lo, hi, block in grams:
        assert (np.abs(block - ref[:, :hi, lo:hi]) <= bound[:, :hi, lo:hi]).all()
    m = rng.standard_normal((300, 40))
    m = m @ m.T
    c, d = rng.standard_normal((2, 5, 300))
    for r in range(3):
        dense = np.einsum("ap,pq,aq->a", c, m * ref[r], d)
        scale = np.einsum("ap,pq,aq->a", np.abs(c), np.abs(m) * bound[r], np.abs(d))
        assert (np.abs(regression._quad_forms(m, grams, r, c, d) - dense) <= scale).all()
