"""Rotation score against scipy's orthogonal_procrustes and a float64 numpy loop over
scikit-learn's KFold (z-scored with train statistics, narrower system zero-padded)."""

import importlib

import numpy as np
import pytest
from references import live_folds
from scipy.linalg import orthogonal_procrustes

import superalign

rotation_module = importlib.import_module("superalign.rotation")


def _reference(X, Y, n_folds=5, seed=0):
    """Per fold (score, R block of the real units), float64, dead units removed."""
    X, Y, splits, _ = live_folds(X, Y, n_folds, seed)
    nx, ny = X.shape[1], Y.shape[1]
    n = max(nx, ny)
    scores, rotations = [], []
    for train, test in splits:
        mx, sx = X[train].mean(0), X[train].std(0)
        my, sy = Y[train].mean(0), Y[train].std(0)
        xa = np.zeros((len(train), n))
        ya = np.zeros((len(train), n))
        xa[:, :nx] = (X[train] - mx) / sx
        ya[:, :ny] = (Y[train] - my) / sy
        R, _ = orthogonal_procrustes(xa, ya)
        xt = np.zeros((len(test), n))
        xt[:, :nx] = (X[test] - mx) / sx
        pred = xt @ R
        yt = (Y[test] - my) / sy
        r = [np.corrcoef(pred[:, j], yt[:, j])[0, 1] for j in range(ny)]
        scores.append(np.mean(r))
        rotations.append(R[:nx, :ny])
    return np.array(scores), rotations


def _pair(m, nx, ny, seed, noise=1.0):
    """Y's units are a rotation of shared latents (X's units, offset and scaled) plus noise."""
    rng = np.random.default_rng(seed)
    f = max(nx, ny)
    z = rng.standard_normal((m, f))
    Q, _ = np.linalg.qr(rng.standard_normal((f, f)))
    X = z[:, :nx] * rng.uniform(0.5, 3.0, nx) + rng.uniform(-2, 2, nx)
    Y = (z @ Q)[:, :ny] + noise * rng.standard_normal((m, ny)) + 1.0
    return X.astype(np.float32), Y.astype(np.float32)


@pytest.mark.parametrize("shape", [(12, 12), (8, 14), (14, 8)])
def test_rotation_score_matches_procrustes_reference(shape):
    X, Y = _pair(1500, *shape, seed=sum(shape))
    X[:, 3] = 0.0  # a dead unit
    result = superalign.rotation_score(X, Y, seed=3, keep_rotations=True)
    scores, rotations = _reference(X, Y, seed=3)
    np.testing.assert_allclose(result.folds, scores, atol=1e-5)
    assert result.sem == pytest.approx(scores.std(ddof=1) / np.sqrt(5), abs=1e-5)
    np.testing.assert_array_equal(result.dead_x, [3])
    assert result.rotations.shape == (5, shape[0] - 1, shape[1])
    for ours, ref in zip(result.rotations, rotations, strict=True):
        np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_permutation_at_most_rotation_at_most_one():
    # A permutation is a rotation: on a rotated (not permuted) copy the rotation score is near
    # the noise ceiling while the permutation score is deflated; on a permuted copy both agree.
    # Shapes of the reference test above: no new compile.
    rng = np.random.default_rng(8)
    z = rng.standard_normal((1500, 12))
    Q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    noise = 0.3 * rng.standard_normal((1500, 12))
    for Y in (z @ Q + noise, z[:, rng.permutation(12)] + noise):
        X, Y = z.astype(np.float32), Y.astype(np.float32)
        perm = superalign.permutation_score(X, Y).mean
        rot = superalign.rotation_score(X, Y).mean
        assert perm <= rot + 2e-3 and rot <= 1.0
        assert rot == pytest.approx(1 / np.sqrt(1 + 0.3**2), abs=0.01)
    assert perm == pytest.approx(rot, abs=2e-3)  # the permuted copy


def test_second_call_does_not_recompile():
    X, Y = _pair(1500, 12, 8, seed=1)
    superalign.rotation_score(X, Y)
    before = rotation_module._rotation._cache_size()
    X[:, 2] = 0.0
    result = superalign.rotation_score(X, Y)
    np.testing.assert_array_equal(result.dead_x, [2])
    assert result.rotations is None
    assert rotation_module._rotation._cache_size() == before


def test_bad_input_is_refused():
    X, Y = _pair(100, 4, 3, seed=0)
    with pytest.raises(ValueError, match="keep_rotations must be True or False"):
        superalign.rotation_score(X, Y, keep_rotations=1)
    with pytest.raises(ValueError, match="same number of stimuli"):
        superalign.rotation_score(X, Y[:50])
    with pytest.raises(ValueError, match="rank 2"):
        superalign.rotation_score(X[:, 0], Y)
    with pytest.raises(ValueError, match="finite"):
        superalign.rotation_score(X, np.full_like(Y, np.nan))
    with pytest.raises(ValueError, match="seed"):
        superalign.rotation_score(X, Y, seed=-1)
