"""The rotation score: the permutation score with any rotation in place of a permutation.

Per fold of the shared split (``PROTOCOL.md``: shuffled K folds, dead units removed once), the
units of both systems are z-scored with the train part's mean and standard deviation, the
narrower system is zero-padded to the wider width, and the orthogonal Procrustes rotation
``R = argmin ||X R - Y||_F`` over orthogonal ``R`` is fitted on the train part: ``R = U V^T``
from the SVD ``X^T Y = U S V^T`` (Schoenemann 1966). On the test part, standardised with the same
train statistics, the score is the mean over Y's live units ``j`` of the Pearson correlation of
``(X R)[:, j]`` with ``Y[:, j]``.

A permutation is a rotation, so the Procrustes fit reaches at least the train objective of the
best permutation; the score measures how much of Y is a rigid rotation of X, whatever basis each
system happens to use.

Everything comes from the per-part moments of ``superalign.folds`` (one blocked pass over the
rows). The padded ``X^T Y`` is ``n`` times the train correlation matrix ``C`` [Nx, Ny] bordered
by zeros; its SVD is the thin SVD of ``C`` plus zero singular values whose vectors live on the
padding (generically), so the block of ``R`` that maps real units to real units is ``U V^T``
of the thin SVD of ``C``. On the test part, with ``s`` the ratio of test to train standard
deviations of X's units and ``v_j = s * R[:, j]``, the correlation is
``v_j . C_test[:, j] / sqrt(v_j^T C_test^xx v_j)`` (``C_test^xx`` the test correlations of X
with itself).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from superalign import folds as _folds


class RotationResult(NamedTuple):
    """Cross-validated rotation scores.

    Attributes:
      folds: [K] mean test correlation over Y's live units per fold.
      mean: mean over folds.
      sem: standard error over folds (std with ddof=1 over sqrt(K)).
      rotations: [K, nx, ny] per fold the block of the Procrustes rotation that maps X's live
        units (rows, in column order) to Y's live units (columns), for standardised units; None
        unless called with ``keep_rotations=True``.
      dead_x: column indices of X removed as dead.
      dead_y: column indices of Y removed as dead.
    """

    folds: np.ndarray
    mean: float
    sem: float
    rotations: np.ndarray | None
    dead_x: np.ndarray
    dead_y: np.ndarray


def _safe_ratio(num, den):
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


@partial(jax.jit, static_argnames=("keep_rotations",))
def _rotation(moments: _folds.FoldMoments, keep_x, keep_y, keep_rotations=False):
    hi = jax.lax.Precision.HIGHEST
    dtype = moments.cross.dtype
    keep_y = keep_y.astype(dtype)

    def fold(k):
        train, test = _folds.fold_correlations(moments, k)
        u, _, vt = jnp.linalg.svd(train, full_matrices=False)
        rot = jnp.matmul(u, vt, precision=hi)
        # Standard deviations of X's units: train (pooled parts) and test (part k).
        others = (jnp.arange(moments.count.shape[0]) != k).astype(dtype)
        w = others * moments.count
        mean = w @ moments.mean_x / w.sum()
        ss_train = others @ moments.ss_x + w @ ((moments.mean_x - mean) ** 2)
        sd_train = jnp.sqrt(ss_train / w.sum())
        sd_test = jnp.sqrt(moments.ss_x[k] / moments.count[k])
        v = rot * _safe_ratio(sd_test, sd_train)[:, None]
        scale = _safe_ratio(1.0, jnp.sqrt(moments.ss_x[k]))
        xx = moments.gram_x[k] * scale[:, None] * scale[None, :]
        num = (v * test).sum(0)
        var = (v * jnp.matmul(xx, v, precision=hi)).sum(0)
        r = _safe_ratio(num, jnp.sqrt(jnp.maximum(var, 0.0)))
        score = (r * keep_y).sum() / keep_y.sum()
        return score, (rot if keep_rotations else None)

    return jax.lax.map(fold, jnp.arange(moments.count.shape[0]))


def _check_keep_rotations(keep_rotations):
    if not isinstance(keep_rotations, bool):
        raise ValueError(f"keep_rotations must be True or False, got {keep_rotations!r}")


@_folds.full_precision
def rotation_score(
    X, Y, *, n_folds: int = 5, seed: int = 0, keep_rotations: bool = False
) -> RotationResult:
    """Cross-validated rotation score: Procrustes fit on train, per-unit correlation on test.

    Args:
      X: [M, Nx] source responses (numpy or jax).
      Y: [M, Ny] target responses.
      n_folds: number of shuffled folds K.
      seed: seed of the shuffle (scikit-learn ``KFold`` ``random_state``).
      keep_rotations: also return every fold's rotation block (``[K, nx, ny]``).

    Returns:
      A :class:`RotationResult`.
    """
    _check_keep_rotations(keep_rotations)
    p = _folds.prepare(X, Y, n_folds, seed)
    keep_x, keep_y = _folds.keep_masks(p)
    moments = _folds.moments_of(p, with_gram_x=True)
    scores, rotations = _rotation(moments, keep_x, keep_y, keep_rotations=keep_rotations)
    if keep_rotations:
        rotations = np.asarray(rotations)[:, : len(p.units_x.live), : len(p.units_y.live)]
    folds, mean, sem = _folds.summary(scores)
    return RotationResult(folds, mean, sem, rotations, p.units_x.dead, p.units_y.dead)
