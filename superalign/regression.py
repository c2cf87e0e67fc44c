"""Cross-validated ridge regression score (paper section 6).

Per fold (``REFERENCE.md``, "Alignment protocol"): train X and Y columns centred and scaled to
unit norm with train statistics; one SVD of the train X; every alpha at once by broadcasting;
alpha chosen by efficient leave-one-out on the train fold with one alpha shared by all targets
(scikit-learn ``RidgeCV(alphas, fit_intercept=False)``'s default: the mean squared LOO error over
all samples and targets); test X centred and unit norm with test statistics; score = mean over
target units of the Pearson r between prediction and test target. All folds run under one jit.

Leave-one-out with ``X = U S V^T`` (thin SVD, U: [n, r]) and ``c_j = alpha / (s_j^2 + alpha)``:
the residual of the fit is ``Y_perp + U diag(c) U^T Y`` with ``Y_perp = Y - U U^T Y``, and one
minus the leverage of row i is ``sum_j U_ij^2 c_j + (1 - sum_j U_ij^2)``; the LOO residual is
their ratio. Writing the residual this way keeps the alpha-dependent part exact in float32
(no ``Y - Y_hat`` cancellation at small alpha), and one GEMM per row block serves all alphas.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from superalign import folds as _folds

DEFAULT_ALPHAS = 10.0 ** np.arange(-8, 9)
"""The paper's sweep: 10^-8 ... 10^8, 17 values."""

_PAD = 1024  # padded part lengths are multiples of this (blocked sums, row blocks)


class RidgeResult(NamedTuple):
    """Ridge regression scores.

    Attributes:
      folds: [K] mean Pearson r over target units on the test part, per fold.
      mean: mean over folds.
      sem: standard error over folds (std with ddof=1 over sqrt(K)).
      alpha: [K] alpha chosen by leave-one-out on each train part.
      alpha_index: [K] its index in ``alphas``.
      loo_error: [K, n_alphas] mean squared LOO error of every alpha, per fold.
      unit_r: [K, Nb] test Pearson r of every live target unit, per fold.
      dead_x: column indices of X removed as dead.
      dead_y: column indices of Y removed as dead.
    """

    folds: np.ndarray
    mean: float
    sem: float
    alpha: np.ndarray
    alpha_index: np.ndarray
    loo_error: np.ndarray
    unit_r: np.ndarray
    dead_x: np.ndarray
    dead_y: np.ndarray


def check_alphas(alphas) -> np.ndarray:
    """Return ``alphas`` as a 1-D float64 array, or raise if any is not a finite number > 0."""
    a = np.asarray(alphas, dtype=np.float64) if alphas is not None else DEFAULT_ALPHAS
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"alphas must be a non-empty 1-D sequence, got shape {a.shape}")
    if not np.all(np.isfinite(a) & (a > 0)):
        raise ValueError(f"alphas must all be finite and > 0, got {a.tolist()}")
    return a


def _sum_rows(x: jax.Array) -> jax.Array:
    """Column sums of [L, ...] with L a multiple of _PAD, summed in blocks (float32-accurate)."""
    return x.reshape(-1, _PAD, *x.shape[1:]).sum(1).sum(0)


def _standardize(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Centre and scale the columns of the real rows of ``x`` to unit norm; padding stays 0."""
    w = mask[:, None].astype(x.dtype)
    n = w.sum()
    x = x * w
    x = (x - _sum_rows(x) / n) * w
    x = (x - _sum_rows(x) / n) * w  # two-pass mean
    return x * _folds._safe_rsqrt(_sum_rows(x * x))


def _loo_errors(u, s, y, alphas, n_rows, block_rows):
    """Mean squared LOO error of ridge on (U S V^T, y) for every alpha.

    Returns ``(loo, delta)``, each [A]: the mean squared LOO error, and its difference from the
    first alpha's, summed over rows and targets. On tall data the LOO curve is flat at small
    alphas (relative differences of 1e-9); ``delta`` is accumulated from per-row differences
    computed directly (``c(a) - c(a0)`` in closed form), so it resolves those differences in
    float32 where ``loo`` itself could not, and the argmin agrees with a float64 reference.
    """
    b = u.T @ y  # [r, t]
    y_perp = y - u @ b
    lev_perp = 1.0 - (u * u).sum(1)
    s2 = s * s
    a0 = alphas[0]
    c0 = a0 / (s2 + a0)  # [r]
    dc = s2[None, :] * (alphas[:, None] - a0) / ((s2[None, :] + alphas[:, None]) * (s2 + a0))
    n_alpha, t = alphas.shape[0], y.shape[1]
    c0b = c0[:, None] * b
    dcb = (dc[:, :, None] * b[None]).transpose(1, 0, 2).reshape(b.shape[0], n_alpha * t)

    def block(args):
        ub, yb, lb = args
        r0 = yb + ub @ c0b  # [B, t] LOO numerators at a0
        dr = (ub @ dcb).reshape(-1, n_alpha, t)  # [B, A, t] their change at each alpha
        q0 = (r0 * r0).sum(-1)  # [B]
        dq = (dr * (2.0 * r0[:, None, :] + dr)).sum(-1)  # [B, A]
        u2 = ub * ub
        e0 = u2 @ c0 + lb  # [B] one minus leverage at a0
        de = u2 @ dc.T  # [B, A]
        e = e0[:, None] + de
        dw = -de * (2.0 * e0[:, None] + de) / (e * e * (e0 * e0)[:, None])
        delta = dq / (e * e) + q0[:, None] * dw
        return (q0 / (e0 * e0)).sum(), delta.sum(0)

    n_blocks = u.shape[0] // block_rows
    parts = (
        u.reshape(n_blocks, block_rows, -1),
        y_perp.reshape(n_blocks, block_rows, t),
        lev_perp.reshape(n_blocks, block_rows),
    )
    base, delta = jax.lax.map(block, parts)
    delta = delta.sum(0)
    return (base.sum() + delta) / (n_rows * t), delta


def _cholesky_qr(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One CholeskyQR pass: ``a = q r`` from the Cholesky factor of ``a^T a`` (NaN if singular)."""
    g = jnp.matmul(a.T, a, precision=jax.lax.Precision.HIGHEST)
    r = jnp.linalg.cholesky(g).T  # upper triangular
    r_inv = jax.scipy.linalg.solve_triangular(r, jnp.eye(r.shape[0], dtype=a.dtype), lower=False)
    return a @ r_inv, r


def _thin_svd(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Thin SVD ``x = U diag(s) V^T`` of a [L, p] matrix; tall ones through CholeskyQR2.

    LAPACK's SVD of a tall matrix is a serial Householder QR over all L rows (about 2 s at
    163,840 x 64 on this CPU). Two CholeskyQR passes (Gram matrix, Cholesky, triangular
    inverse: all GEMMs) give an orthonormal Q to float32 accuracy whenever the condition number
    of x is below about 1/sqrt(float32 eps) ~ 3,000 (Yamamoto et al. 2015); the SVD of the small
    R then gives the factors. When the check ``|Q^T Q - I| < 1e-5`` fails (ill-conditioned or
    rank-deficient x, where Cholesky breaks down), the direct SVD is used instead.
    """
    n, p = x.shape
    if n < 8 * p:
        return jnp.linalg.svd(x, full_matrices=False)

    q1, r1 = _cholesky_qr(x)
    q, r2 = _cholesky_qr(q1)
    gram = jnp.matmul(q.T, q, precision=jax.lax.Precision.HIGHEST)
    err = jnp.abs(gram - jnp.eye(p, dtype=x.dtype)).max()

    def from_r():
        ur, s, vt = jnp.linalg.svd(r2 @ r1)
        return q @ ur, s, vt

    def direct():
        return tuple(jnp.linalg.svd(x, full_matrices=False))

    return jax.lax.cond(jnp.isfinite(err) & (err < 1e-5), from_r, direct)


def _pearson(pred, y, mask):
    """[t] Pearson r over the real rows between columns of ``pred`` and ``y`` (0 if constant)."""
    pred = _standardize(pred, mask)
    y = _standardize(y, mask)
    return _sum_rows(pred * y)


@jax.jit
def _ridge_folds(X, Y, live_x, live_y, train_idx, train_mask, test_idx, test_mask, alphas):
    block_rows = _loo_block_rows(alphas.shape[0], live_y.shape[0])

    # Select the live columns once, not once per fold (a copy only if a unit is dead).
    if live_x.shape[0] < X.shape[1]:
        X = X[:, live_x]
    if live_y.shape[0] < Y.shape[1]:
        Y = Y[:, live_y]

    def fold(k):
        xtr = _standardize(X[train_idx[k]], train_mask[k])
        ytr = _standardize(Y[train_idx[k]], train_mask[k])
        u, s, vt = _thin_svd(xtr)
        n_rows = train_mask[k].sum().astype(X.dtype)
        loo, delta = _loo_errors(u, s, ytr, alphas, n_rows, block_rows)
        best = jnp.argmin(delta)
        alpha = alphas[best]
        coef = vt.T @ ((s / (s * s + alpha))[:, None] * (u.T @ ytr))  # [p, t]
        xte = _standardize(X[test_idx[k]], test_mask[k])
        r = _pearson(xte @ coef, Y[test_idx[k]], test_mask[k])
        return r.mean(), best, loo, r

    return jax.lax.map(fold, jnp.arange(train_idx.shape[0]))


def _loo_block_rows(n_alphas: int, n_targets: int) -> int:
    rows = max(1, (1 << 22) // (n_alphas * n_targets))
    return int(min(_PAD, 1 << int(np.floor(np.log2(rows)))))


def _padded(parts, length: int) -> tuple[jax.Array, jax.Array]:
    index = np.zeros((len(parts), length), dtype=np.int32)
    mask = np.zeros(index.shape, dtype=bool)
    for k, part in enumerate(parts):
        index[k, : len(part)] = part
        mask[k, : len(part)] = True
    return jnp.asarray(index), jnp.asarray(mask)


def _round_up(n: int) -> int:
    return -(-n // _PAD) * _PAD


def ridge_regression(X, Y, *, n_folds: int = 5, seed: int = 0, alphas=None) -> RidgeResult:
    """Cross-validated ridge regression score predicting Y from X.

    Args:
      X: [M, Na] source responses (numpy or jax).
      Y: [M, Nb] target responses.
      n_folds: number of shuffled folds K.
      seed: seed of the shuffle (scikit-learn ``KFold`` ``random_state``).
      alphas: [A] positive ridge penalties; None for 10^-8 ... 10^8 (17 values).

    Returns:
      A :class:`RidgeResult`.
    """
    alphas = check_alphas(alphas)
    p = _folds.prepare(X, Y, n_folds, seed)
    tests = p.folds.parts
    trains = [
        np.sort(np.concatenate([t for j, t in enumerate(tests) if j != k]))
        for k in range(len(tests))
    ]
    train_idx, train_mask = _padded(trains, _round_up(max(len(t) for t in trains)))
    test_idx, test_mask = _padded(tests, _round_up(max(len(t) for t in tests)))
    scores, best, loo, r = _ridge_folds(
        p.X,
        p.Y,
        jnp.asarray(p.units_x.live),
        jnp.asarray(p.units_y.live),
        train_idx,
        train_mask,
        test_idx,
        test_mask,
        jnp.asarray(alphas, dtype=p.X.dtype),
    )
    best = np.asarray(best)
    folds, mean, sem = _folds.summary(scores)
    return RidgeResult(
        folds,
        mean,
        sem,
        alphas[best],
        best,
        np.asarray(loo, dtype=np.float64),
        np.asarray(r, dtype=np.float64),
        p.units_x.dead,
        p.units_y.dead,
    )
