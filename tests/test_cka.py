"""Linear CKA against a float64 numpy reference written from the n x n Gram matrices:
the biased HSIC ``tr(K H L H) / (n-1)^2`` and Song et al.'s unbiased estimator, on the test rows
of scikit-learn's KFold with the dead units removed."""

import importlib

import numpy as np
import pytest
from references import hsic_unbiased, live_folds

import superalign
from superalign import folds

# superalign.cka is the function (re-exported); the module is reached through sys.modules.
cka_module = importlib.import_module("superalign.cka")


def _hsic_biased(K, L):
    n = len(K)
    H = np.eye(n) - 1.0 / n
    return np.trace(K @ H @ L @ H) / (n - 1) ** 2


def _hsic_unbiased(K, L):
    """Song et al. (2012), eq. 5, from its Gram-matrix definition."""
    n = len(K)
    return hsic_unbiased(K, L) / (n * (n - 3))


def _reference(X, Y, debiased, n_folds=5, seed=0):
    X, Y, splits, _ = live_folds(X, Y, n_folds, seed)
    hsic = _hsic_unbiased if debiased else _hsic_biased
    out = []
    for _, test in splits:
        x, y = X[test], Y[test]
        x, y = x - x.mean(0), y - y.mean(0)
        K, L = x @ x.T, y @ y.T
        out.append(hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L)))
    return np.array(out)


@pytest.fixture(scope="module")
def pair():
    """Sparse ReLU codes reading shared latents, with offsets, unequal widths and dead units."""
    rng = np.random.default_rng(5)
    z = rng.standard_normal((1203, 10))
    X = np.maximum(z @ rng.standard_normal((10, 37)) - 1.0, 0) + 0.1 * rng.standard_normal(37)
    Y = z @ rng.standard_normal((10, 23)) + 0.5 * rng.standard_normal((1203, 23)) + 3.0
    X[:, 4] = 0.0  # dead everywhere
    parts = folds.kfold_test_indices(1203, 5, 2)
    Y[parts[3], 7] = 0.0  # all zero in one test part: dead
    return X.astype(np.float32), Y.astype(np.float32)


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_matches_float64_gram_reference(pair, debiased):
    X, Y = pair
    result = superalign.cka(X, Y, seed=2, debiased=debiased)
    expected = _reference(X, Y, debiased, seed=2)
    np.testing.assert_allclose(result.folds, expected, atol=1e-5)
    assert result.mean == pytest.approx(expected.mean(), abs=1e-5)
    assert result.sem == pytest.approx(expected.std(ddof=1) / np.sqrt(5), abs=1e-5)
    np.testing.assert_array_equal(result.dead_x, [4])
    np.testing.assert_array_equal(result.dead_y, [7])
    assert result.debiased is debiased


def test_cka_limits_and_invariances():
    rng = np.random.default_rng(6)
    X = rng.standard_normal((500, 12)).astype(np.float32)
    Q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    rotated = (3.0 * X @ Q + 7.0).astype(np.float32)  # rotation, isotropic scale, offset
    for debiased in (False, True):
        np.testing.assert_allclose(
            superalign.cka(X, rotated, debiased=debiased).folds, 1, atol=1e-5
        )
    # Independent systems: the unbiased estimator is near 0, the biased one is not.
    Y = rng.standard_normal((500, 12)).astype(np.float32)
    assert abs(superalign.cka(X, Y, debiased=True).mean) < 0.02
    assert superalign.cka(X, Y).mean > 0.1


@pytest.mark.parametrize("debiased", [False, True])
def test_extreme_scales_and_offsets_keep_float64_accuracy(pair, debiased):
    """Recordings in tesla (1e-13) or in the millions, and a large offset over a small spread:
    the same CKA as the float64 reference on the same float32 numbers."""
    X, Y = pair
    # The offset case without the pair's dead units: offset, they are constant but not zero,
    # which the reference's all-zero rule would not remove.
    x, y = np.delete(X, 4, axis=1), np.delete(Y, 7, axis=1)
    cases = {
        "tiny": (X * np.float32(1e-13), Y),
        "huge": (X, Y * np.float32(1e9)),
        "both": (X * np.float32(1e-20), Y * np.float32(1e15)),
        "offset": (np.float32(1e4) + np.float32(0.01) * x, np.float32(-3e4) + np.float32(0.01) * y),
    }
    for name, (a, b) in cases.items():
        got = superalign.cka(a, b, seed=2, debiased=debiased).folds
        np.testing.assert_allclose(got, _reference(a, b, debiased, seed=2), atol=1e-5, err_msg=name)


def test_second_call_does_not_recompile(pair):
    X, Y = pair
    superalign.cka(X, Y)
    before = cka_module._cka_terms._cache_size()
    X2 = X.copy()
    X2[:, 9] = 0.0  # another dead unit: same shapes, same compiled code
    result = superalign.cka(X2, Y, debiased=True)
    np.testing.assert_array_equal(result.dead_x, [4, 9])
    assert cka_module._cka_terms._cache_size() == before


def test_bad_input_is_refused():
    X = np.ones((20, 3), np.float32)
    with pytest.raises(ValueError, match="same number of stimuli"):
        superalign.cka(np.zeros((20, 3)), np.zeros((21, 3)))
    with pytest.raises(ValueError, match="rank 2"):
        superalign.cka(np.zeros(20), X)
    with pytest.raises(ValueError, match="finite"):
        superalign.cka(np.full((20, 3), np.nan), X)
    with pytest.raises(ValueError, match="n_folds"):
        superalign.cka(X, X, n_folds=1)
    with pytest.raises(ValueError, match="debiased must be True or False"):
        superalign.cka(X, X, debiased="yes")
    rng = np.random.default_rng(0)
    small = rng.standard_normal((15, 3))
    with pytest.raises(ValueError, match="at least 4 rows per fold"):
        superalign.cka(small, small, debiased=True)
