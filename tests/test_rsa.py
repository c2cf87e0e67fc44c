"""RSA against rsatoolbox: calc_rdm ("correlation", "euclidean") and compare ("spearman",
"corr") on the same fold rows (scikit-learn's KFold test parts, dead units removed)."""

import importlib

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from references import rsatoolbox_rsa

import superalign

rsa_module = importlib.import_module("superalign.rsa")


@pytest.fixture(scope="module")
def pair():
    """Shared latents, ReLU in X (some all-zero rows), an offset in Y, dead units in both."""
    rng = np.random.default_rng(3)
    z = rng.standard_normal((601, 6))
    X = np.maximum(z @ rng.standard_normal((6, 17)) - 1.5, 0)
    Y = z @ rng.standard_normal((6, 11)) + rng.standard_normal((601, 11)) + 2.0
    X[:, 2] = 0.0
    Y[:, 5] = 0.0
    X[::7] = 0.0  # all-zero patterns: undefined correlation distance
    return X.astype(np.float32), Y.astype(np.float32)


@pytest.mark.parametrize("rdm", ["correlation", "euclidean"])
@pytest.mark.parametrize("compare", ["spearman", "pearson"])
def test_rsa_matches_rsatoolbox(pair, rdm, compare):
    X, Y = pair
    result = superalign.rsa(X, Y, rdm=rdm, compare=compare, seed=1)
    expected = rsatoolbox_rsa(X, Y, rdm, compare, seed=1)
    np.testing.assert_allclose(result.folds, expected, atol=1e-5)
    assert result.mean == pytest.approx(expected.mean(), abs=1e-5)
    np.testing.assert_array_equal(result.dead_x, [2])
    np.testing.assert_array_equal(result.dead_y, [5])
    parts = superalign.folds.kfold_test_indices(601, 5, 1)
    if rdm == "correlation":  # the all-zero rows of X (Y has none) are dropped, nothing else
        assert (Y[:, [j for j in range(11) if j != 5]].std(1) > 0).all()
        dropped = [int((X[p].max(1) == 0).sum()) for p in parts]
        assert min(dropped) > 0
    else:
        dropped = [0] * 5
    np.testing.assert_array_equal(result.n_dropped, dropped)
    np.testing.assert_array_equal(
        result.n_stimuli, [len(p) - d for p, d in zip(parts, dropped, strict=True)]
    )


@pytest.mark.parametrize("compare", ["spearman", "pearson"])
def test_euclidean_rdms_of_a_large_common_offset(pair, compare):
    """Raw recordings far from zero (1e4, with a spread of about 0.1): the distances, and so the
    comparison, are those of rsatoolbox (float64) on the same float32 numbers."""
    X, Y = pair
    a, b = np.float32(1e4) + np.float32(0.05) * X, np.float32(-2e4) + np.float32(0.05) * Y
    result = superalign.rsa(a, b, rdm="euclidean", compare=compare, seed=1)
    np.testing.assert_allclose(
        result.folds, rsatoolbox_rsa(a, b, "euclidean", compare, seed=1), atol=1e-5
    )


def test_spearman_ties_use_average_ranks():
    # Small integer patterns: squared distances are exact in float32 and heavily tied.
    rng = np.random.default_rng(4)
    X = rng.integers(0, 3, (300, 4)).astype(np.float32)
    Y = (X[:, :3] + rng.integers(0, 2, (300, 3))).astype(np.float32)
    result = superalign.rsa(X, Y, rdm="euclidean")
    np.testing.assert_allclose(
        result.folds, rsatoolbox_rsa(X, Y, "euclidean", "spearman"), atol=1e-6
    )


def test_correlation_of_large_ranks_does_not_overflow():
    """Spearman's doubled ranks of a 5,000-stimulus fold reach 1.25e7; their sums of squares
    (about 6.5e20 each) overflowed float32 when multiplied, and every fold scored 0."""
    rng = np.random.default_rng(5)
    m = 1000
    u = rng.standard_normal(m)
    v = 0.6 * u + 0.8 * rng.standard_normal(m)
    w = np.ones(m)
    w[-7:] = 0.0  # entries outside the triangle's valid pairs
    expected = np.corrcoef(u[w > 0], v[w > 0])[0, 1]
    for scale in (1.0, 1.25e7 * 2e3):  # sum of squares up to about 6e26: the product 4e53
        got = rsa_module._pearson(
            np.float32(scale) * u.astype(np.float32),
            np.float32(scale) * v.astype(np.float32),
            w.astype(np.float32),
        )
        assert float(got) == pytest.approx(expected, abs=1e-5)


def test_host_ranks_are_the_device_ranks():
    """On CPUs the ranks come from scipy on the host; they equal the jitted ones."""
    rng = np.random.default_rng(7)
    for n, levels in ((1001, 5), (4000, 1000), (257, None)):
        v = rng.random(n) if levels is None else rng.integers(0, levels, n)  # ties, or none
        v = v.astype(np.float32)
        valid = rng.random(n) < 0.9
        device = rsa_module._doubled_centred_ranks(jnp.asarray(v), jnp.asarray(valid))
        host = rsa_module._doubled_centred_ranks_host(v, valid)
        assert host.dtype == np.float32
        np.testing.assert_array_equal(host, np.asarray(device))
        # Against scipy: doubled average ranks of the valid entries, centred on n + 1.
        ranks = scipy.stats.rankdata(v[valid])
        np.testing.assert_array_equal(host[valid], 2 * ranks - (valid.sum() + 1))
        assert (host[~valid] == 0).all()


def test_upper_triangle_lists_every_pair_once():
    s = 10
    D = np.arange(s * s, dtype=np.float32).reshape(s, s)
    tri = np.asarray(rsa_module.upper_triangle(D))
    assert tri.shape == (s // 2, s - 1)
    np.testing.assert_array_equal(np.sort(tri.ravel()), D[np.triu_indices(s, 1)])


def test_constant_rows_over_row_blocks(monkeypatch):
    """The constant-pattern check runs over row blocks (the last one overlapping the one before
    it); every row's answer is numpy's min == max over the kept columns."""
    monkeypatch.setattr(rsa_module, "_CONSTANT_ROWS_BLOCK", 8)
    rng = np.random.default_rng(5)
    X = rng.standard_normal((29, 4)).astype(np.float32)  # 29 rows: blocks 0, 8, 16 and 21
    X[[0, 7, 8, 20, 28], :3] = 2.5  # constant over the kept columns, not over column 3
    X[3] = 0.0
    keep = np.array([1, 1, 1, 0], np.float32)
    got = np.asarray(rsa_module._constant_rows(jnp.asarray(X), jnp.asarray(keep)))
    kept = X[:, keep > 0]
    np.testing.assert_array_equal(got, kept.min(1) == kept.max(1))
    assert got.sum() == 6


def test_large_folds_are_subsampled_with_the_documented_rows(pair):
    X, Y = pair
    result = superalign.rsa(X, Y, rdm="euclidean", compare="pearson", max_stimuli=50, seed=2)
    assert (result.n_stimuli == 50).all()
    rows = []
    for k, part in enumerate(superalign.folds.kfold_test_indices(601, 5, 2)):
        part = np.sort(part)
        rows.append(np.sort(part[np.random.default_rng((2, k)).permutation(len(part))[:50]]))
    expected = rsatoolbox_rsa(X, Y, "euclidean", "pearson", seed=2, rows=rows)
    np.testing.assert_allclose(result.folds, expected, atol=1e-5)


def test_second_call_does_not_recompile(pair):
    X, Y = pair
    superalign.rsa(X, Y)
    before = rsa_module._rsa_folds._cache_size()
    X2 = X.copy()
    X2[:, 8] = 0.0  # a dead unit and different dropped rows: same shapes
    X2[1::11] = 0.0
    result = superalign.rsa(X2, Y, seed=0)
    np.testing.assert_array_equal(result.dead_x, [2, 8])
    assert rsa_module._rsa_folds._cache_size() == before


def test_bad_input_is_refused(pair):
    X, Y = pair
    with pytest.raises(ValueError, match=r"rdm must be one of \('correlation', 'euclidean'\)"):
        superalign.rsa(X, Y, rdm="cosine")
    with pytest.raises(ValueError, match="compare must be one of .*'kendall'"):
        superalign.rsa(X, Y, compare="kendall")
    with pytest.raises(ValueError, match="max_stimuli must be at least 3"):
        superalign.rsa(X, Y, max_stimuli=2)
    with pytest.raises(ValueError, match="same number of stimuli"):
        superalign.rsa(X, Y[:-1])
    with pytest.raises(ValueError, match="finite"):
        superalign.rsa(np.full_like(X, np.inf), Y)
    with pytest.raises(ValueError, match="n_folds"):
        superalign.rsa(X, Y, n_folds=0)
    Z = np.repeat((np.arange(40) % 2 + 1.0)[:, None], 2, axis=1)  # every pattern constant
    with pytest.raises(ValueError, match="non-constant pattern in both X and Y"):
        superalign.rsa(Z, np.random.default_rng(0).standard_normal((40, 2)))
    small = np.random.default_rng(1).standard_normal((10, 3))
    with pytest.raises(ValueError, match="fold 0 has 2 test stimuli .*needs at least 3"):
        superalign.rsa(small, small, rdm="euclidean")
