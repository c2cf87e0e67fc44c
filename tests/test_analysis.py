import jax
import numpy as np
import pytest

from superalign import analysis


def test_shared_features_and_norms():
    W_a = np.zeros((5, 2), np.float32)
    W_b = np.zeros((5, 2), np.float32)
    W_a[[0, 1, 2], 0] = [1.0, 1.1, 0.3]
    W_b[[0, 1, 3], 1] = [1.0, 0.95, 1.0]
    np.testing.assert_allclose(analysis.feature_norms(W_a), [1, 1.1, 0.3, 0, 0], rtol=1e-6)
    # Products 1.0, 1.045, 0, 0, 0: features 0 and 1 are shared.
    np.testing.assert_array_equal(analysis.shared_features(W_a, W_b), [1, 1, 0, 0, 0])
    assert int(analysis.n_represented(W_a)) == 2


def test_arrangement_permuted_neurons_match_perfectly():
    W = np.asarray(jax.random.normal(jax.random.key(0), (12, 4)))
    perm = [2, 0, 3, 1]
    best = analysis.arrangement_best_match(W, W[:, perm], np.ones(12, bool))
    np.testing.assert_allclose(best, 1.0, rtol=1e-5)


def test_arrangement_uses_only_shared_rows():
    rng = np.random.default_rng(0)
    W_a = rng.normal(size=(10, 3)).astype(np.float32)
    W_b = rng.normal(size=(10, 3)).astype(np.float32)
    shared = np.zeros(10, bool)
    shared[:6] = True
    best = analysis.arrangement_best_match(W_a, W_b, shared)
    corr = np.corrcoef(W_a[:6].T, W_b[:6].T)[:3, 3:]
    np.testing.assert_allclose(best, corr.max(axis=1), rtol=1e-5, atol=1e-6)


def test_feature_recovery_against_numpy():
    rng = np.random.default_rng(1)
    Z = rng.random((500, 4)).astype(np.float32)
    U = np.stack([Z[:, 0] + 0.1 * rng.random(500), Z[:, 1] * 2, np.zeros(500)], 1).astype(
        np.float32
    )
    got = np.asarray(analysis.feature_recovery(Z, U))
    with np.errstate(invalid="ignore", divide="ignore"):  # the constant unit
        C = np.nan_to_num(np.corrcoef(Z.T, U.T)[:4, 4:])
    np.testing.assert_allclose(got, C.max(axis=1), rtol=1e-4, atol=1e-5)
    assert got[1] == pytest.approx(1.0, abs=1e-5) and not np.isnan(got).any()


def test_n_directions_counts_shared_directions_once():
    W = np.zeros((4, 2), np.float32)
    W[0] = [1, 0]
    W[1] = [0.71, 0.0]  # same direction as feature 0
    W[2] = [0, 1]
    assert int(analysis.n_represented(W)) == 3
    assert int(analysis.n_directions(W)) == 2


def test_bad_input():
    with pytest.raises(ValueError, match="features and units"):
        analysis.feature_recovery(np.ones((5, 2)), np.ones((6, 2)))
    with pytest.raises(ValueError, match="W_a and W_b"):
        analysis.shared_features(np.ones((5, 2)), np.ones((6, 2)))
