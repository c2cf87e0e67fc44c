"""Cross-validated ridge regression score (paper section 6).

Per fold (``PROTOCOL.md``, "Alignment protocol"): train X and Y columns centred and scaled to
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

Three paths give the same folds: tall X (train rows at least 8 times the units) is streamed
over row blocks; X with more train rows than units and at least a quarter as many targets as
units (SAE-sized pairs) takes the streamed factorisation with the LOO sums through a few weighted
Gram matrices (see the section comment of :func:`_lowrank_loo`); the rest, and any X whose condition
number exceeds 1e3, gathers every fold and uses LAPACK's SVD. The streamed paths' float64 host
algebra (one eigendecomposition per fold) runs one fold per core on single-threaded BLAS
(:func:`_serial_blas`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from superalign import folds as _folds

try:  # a core dependency; without it the host algebra runs on one thread
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

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
    if alphas is None:
        return DEFAULT_ALPHAS
    a = np.asarray(alphas)
    if a.dtype == bool or not (
        np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)
    ):
        raise ValueError(
            f"alphas must be real numbers (ints or floats), got {a.dtype} entries: {alphas!r}"
        )
    a = a.astype(np.float64)
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
    return x * _folds.safe_rsqrt(_sum_rows(x * x))


class _LooTerms(NamedTuple):
    """The alpha-dependent constants of the LOO sums for one fold (see :func:`_loo_errors`)."""

    c0: jax.Array  # [r] c(a0)
    dc: jax.Array  # [A, r] c(a) - c(a0)
    c0b: jax.Array  # [r, t] c(a0) * b
    dcb: jax.Array  # [r, A * t] (c(a) - c(a0)) * b, alphas side by side


def _loo_terms(s, b, alphas) -> _LooTerms:
    """Constants of the LOO sums for singular values ``s`` and ``b = U^T y``."""
    s2 = s * s
    a0 = alphas[0]
    c0 = a0 / (s2 + a0)  # [r]
    dc = s2[None, :] * (alphas[:, None] - a0) / ((s2[None, :] + alphas[:, None]) * (s2 + a0))
    n_alpha, t = alphas.shape[0], b.shape[1]
    dcb = (dc[:, :, None] * b[None]).transpose(1, 0, 2).reshape(b.shape[0], n_alpha * t)
    return _LooTerms(c0, dc, c0[:, None] * b, dcb)


def _loo_block(terms: _LooTerms, ub, yb, lb):
    """One row block's LOO sums: ``(sum of q0 / e0^2, [A] sum of the change at each alpha)``.

    ``ub`` [B, r] rows of U, ``yb`` [B, t] rows of ``Y_perp``, ``lb`` [B] rows of
    ``1 - sum_j U_ij^2``. Padding rows (``ub = yb = 0``, ``lb = 1``) add nothing.
    """
    n_alpha = terms.dc.shape[0]
    r0 = yb + ub @ terms.c0b  # [B, t] LOO numerators at a0
    dr = (ub @ terms.dcb).reshape(ub.shape[0], n_alpha, -1)  # [B, A, t] their change at each alpha
    q0 = (r0 * r0).sum(-1)  # [B]
    dq = (dr * (2.0 * r0[:, None, :] + dr)).sum(-1)  # [B, A]
    u2 = ub * ub
    e0 = u2 @ terms.c0 + lb  # [B] one minus leverage at a0
    de = u2 @ terms.dc.T  # [B, A]
    e = e0[:, None] + de
    dw = -de * (2.0 * e0[:, None] + de) / (e * e * (e0 * e0)[:, None])
    delta = dq / (e * e) + q0[:, None] * dw
    return (q0 / (e0 * e0)).sum(), delta.sum(0)


def _loo_errors(u, s, y, alphas, n_rows, block_rows):
    """Mean squared LOO error of ridge on (U S V^T, y) for every alpha.

    Returns ``(loo, delta)``, each [A]: the mean squared LOO error, and its difference from the
    first alpha's, summed over rows and targets. On tall data the LOO curve is flat at small
    alphas (relative differences of 1e-9); ``delta`` is accumulated from per-row differences
    computed directly (``c(a) - c(a0)`` in closed form), so it resolves those differences in
    float32 where ``loo`` itself could not, and the argmin agrees with a float64 reference.
    """
    b = u.T @ y  # [r, t]
    terms = _loo_terms(s, b, alphas)
    t = y.shape[1]
    n_blocks = u.shape[0] // block_rows
    parts = (
        u.reshape(n_blocks, block_rows, -1),
        (y - u @ b).reshape(n_blocks, block_rows, t),
        (1.0 - (u * u).sum(1)).reshape(n_blocks, block_rows),
    )
    base, delta = jax.lax.map(lambda a: _loo_block(terms, *a), parts)
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


# --- Tall X: the streamed path ----------------------------------------------------------------
#
# With many more train rows than columns, nothing row-sized is materialised. One pass gives the
# per-part moments (``folds.fold_moments``), another the per-part Gram matrices X^T X accumulated
# in float64 (``_part_grams``). The train Gram matrix of every fold is pooled from them on the
# host; being exact to float64, its Cholesky factor R (X_std = Q R) and the SVD R = U_R S V^T give
# U = X_std R^-1 U_R as orthonormal as float32 rows can be, with no second pass over the rows
# (CholeskyQR2 in float32 needs one). A third pass runs the LOO sums over the row blocks of every
# fold's train parts, a fourth the test Pearson sums. Every pass gathers row blocks of the parts,
# so memory is the inputs plus a few blocks. If a train Gram matrix is not positive definite or
# the condition number of X_std is above _MAX_COND (the float32 rows of U then lose more than
# about 1e-4), the materialised path with LAPACK's SVD is used instead.

_MAX_COND = 1e3


def _train_blocks(index, mask, others):
    """Row blocks of the parts in ``others`` (a fold's train parts), as [n, B] each."""
    return index[others].reshape(-1, index.shape[-1]), mask[others].reshape(-1, index.shape[-1])


def _rows(X, live, idx):
    return X[idx][:, live]


def _part_grams_body(X, live_x, keep_x, index, mask, shift):
    """Per part: ``sum(x - shift)`` [K, p] and ``sum((x - shift)^T (x - shift))`` [K, p, p]."""
    f64 = shift.dtype
    p = live_x.shape[0]

    def part(args):
        idx_k, m_k, c = args

        def step(carry, block):
            idx, m = block
            x = _rows(X, live_x, idx).astype(f64) * keep_x.astype(f64)
            x = (x - c) * m[:, None].astype(f64)
            return (carry[0] + x.sum(0), carry[1] + x.T @ x), None

        zero = (jnp.zeros((p,), f64), jnp.zeros((p, p), f64))
        return jax.lax.scan(step, zero, (idx_k, m_k))[0]

    return jax.lax.map(part, (index, mask, shift))


_part_grams_x64 = jax.jit(_part_grams_body)


def _part_grams_host(X, live_x, keep_x, index, mask, shift, chunk=1 << 16):
    """The same sums with numpy on the host (float64), for backends without float64 (TPU)."""
    X, live_x, keep_x = np.asarray(X), np.asarray(live_x), np.asarray(keep_x, np.float64)
    index, mask = np.asarray(index), np.asarray(mask)
    p = len(live_x)
    s1, s2 = np.zeros((len(index), p)), np.zeros((len(index), p, p))
    for k in range(len(index)):
        rows = index[k][mask[k]]
        for lo in range(0, len(rows), chunk):
            x = X[rows[lo : lo + chunk]][:, live_x].astype(np.float64) * keep_x - shift[k]
            s1[k] += x.sum(0)
            s2[k] += x.T @ x
    return s1, s2


def _part_grams(X, live_x, keep_x, index, mask, counts, means, host=None):
    """Per-part column means [K, p] and centred Gram matrices X^T X [K, p, p], in float64.

    Float64 accumulation makes the Gram matrix exact to float64 whatever the row count, so its
    Cholesky factor defines an orthonormal U directly. Each part is shifted by its float32 mean
    ``means`` first (no cancellation in the centring). On a CPU or GPU the sums run on the device
    under ``jax.enable_x64``; on a TPU (``host`` None) or with ``host=True``, with numpy.
    """
    shift = np.asarray(means, np.float64)
    if host is None:
        host = jax.default_backend() == "tpu"
    if host:
        s1, s2 = _part_grams_host(X, live_x, keep_x, index, mask, shift)
    else:
        with jax.enable_x64(True):
            out = _part_grams_x64(X, live_x, keep_x, index, mask, jnp.asarray(shift, jnp.float64))
            s1, s2 = np.array(out[0], np.float64), np.array(out[1], np.float64)  # writable
            del out  # the device copy of the [K, p, p] sums
    n = np.asarray(counts, np.float64)
    mean = s1 / n[:, None]
    for k in range(len(n)):  # in place, one part at a time: no [K, p, p] temporaries
        s2[k] -= (n[k] * mean[k])[:, None] * mean[k][None, :]
    return shift + mean, s2


class _StreamedFold(NamedTuple):
    """One fold's constants of the streamed LOO pass (stacked over folds on the device).

    ``u = (x - mean_x) @ w`` are the rows of U; ``(y - mean_y) * scale_y`` the
    standardised targets; ``b = U^T Y_std``; ``s`` the singular values of the train X_std.
    """

    mean_x: jax.Array  # [p]
    w: jax.Array  # [p, p]
    mean_y: jax.Array  # [t]
    scale_y: jax.Array  # [t]
    b: jax.Array  # [p, t]
    s: jax.Array  # [p]


@jax.jit
def _loo_pass(X, Y, live_x, live_y, index, mask, others, consts: _StreamedFold, alphas):
    """[K] and [K, A]: each fold's LOO sums over its train rows (see :func:`_loo_block`)."""

    def fold(args):
        o, c = args
        terms = _loo_terms(c.s, c.b, alphas)

        def step(carry, block):
            idx, m = block
            w = m[:, None].astype(c.w.dtype)
            u = ((_rows(X, live_x, idx) - c.mean_x) @ c.w) * w
            y = (_rows(Y, live_y, idx) - c.mean_y) * c.scale_y * w
            base, delta = _loo_block(terms, u, y - u @ c.b, 1.0 - (u * u).sum(1))
            (tb, cb), (td, cd) = carry
            return (_folds.kahan_add(tb, cb, base), _folds.kahan_add(td, cd, delta)), None

        zb, zd = jnp.zeros((), c.w.dtype), jnp.zeros(alphas.shape, c.w.dtype)
        ((base, _), (delta, _)), _ = jax.lax.scan(
            step, ((zb, zb), (zd, zd)), _train_blocks(index, mask, o)
        )
        return base, delta

    return jax.lax.map(fold, (others, consts))


@jax.jit
def _test_pass(X, Y, live_x, live_y, index, mask, mean_x, scale_x, coef, mean_y):
    """Per fold, sums over its test rows of pred, y, pred^2, y^2 and pred * y ([K, 5, t])."""

    def fold(args):
        idx_k, m_k, mx, sx, c, my = args

        def step(carry, block):
            idx, m = block
            w = m[:, None].astype(c.dtype)
            pred = (((_rows(X, live_x, idx) - mx) * sx) @ c) * w
            y = (_rows(Y, live_y, idx) - my) * w
            sums = jnp.stack([pred.sum(0), y.sum(0), (pred * pred).sum(0), (y * y).sum(0)])
            sums = jnp.concatenate([sums, (pred * y).sum(0)[None]])
            return _folds.kahan_add(*carry, sums), None

        zero = jnp.zeros((5, c.shape[1]), c.dtype)
        (sums, _), _ = jax.lax.scan(step, (zero, zero), (idx_k, m_k))
        return sums

    return jax.lax.map(fold, (index, mask, mean_x, scale_x, coef, mean_y))


# --- n close to p with many targets: the LOO sums through weighted Gram matrices --------------
#
# One alpha serves all targets, so the LOO error is sum_i w_i(a) sum_j e_ij(a)^2 with
# w_i(a) = 1 / (1 - h_i(a))^2 and e(a) = Y_perp + U C_a b (``C_a = diag(a / (s^2 + a))``).
# Expanding the square, every part but the quadratic one, sum_i w_i(a) |(U C_a b)_i|^2, costs
# O(n p) per alpha once ``Y_perp`` and ``g = U * (Y_perp b^T)`` are known. The quadratic part is
# ``c_a^T (M * (U^T diag(w(a)) U)) c_a`` with ``M = b b^T``: O(n p^2) per alpha. But the 17
# weight vectors w(a) span few directions (rank 4 reaches 1e-6 of every alpha's LOO sum on the
# planted 2,048-unit benchmark; see :func:`_lowrank_loo` for the basis): with
# ``w(a) - w(a0) ~ sum_r psi_r(a) phi_r`` only ``1 + R`` weighted Gram matrices are needed, and
# the truncation error of alpha a is at most
# ``max_i |err_i(a)| * sum_i |(U C_a b)_i|^2 = max_i |err_i(a)| * sum_k c_k(a)^2 M_kk``
# (U has orthonormal columns), a bound known before any Gram matrix is formed. R is the
# smallest rank whose bound is below _LOWRANK_RTOL of every alpha's LOO sum; if the bounds then
# leave the argmin in doubt, the full rank (exact) is used.

_LOWRANK_RTOL = 1e-6


@jax.jit
def _loo_rows(X, Y, live_x, live_y, idx, m, mean_x, w, mean_y, scale_y, b, alphas, s):
    """Per train row of one fold: U, and the alpha-dependent LOO quantities other than M's.

    ``idx``, ``m`` [n_blocks, B] the fold's train row blocks; ``w`` [p, p] maps centred X rows
    to rows of U; ``b`` [p, t] = U^T Y_std. Returns ``u`` [n, p], ``e0`` [n] and ``de`` [n, A]
    (one minus leverage at a0 and its change), ``rho`` [n] = |Y_perp_i|^2, ``l0`` [n] and
    ``dl`` [n, A] (the cross term ``Y_perp_i . (U C_a b)_i`` at a0 and its change).
    """
    terms = _loo_terms(s, b[:, :1], alphas)

    def step(_, block):
        i, mk = block
        wt = mk[:, None].astype(w.dtype)
        u = ((_rows(X, live_x, i) - mean_x) @ w) * wt
        y = (_rows(Y, live_y, i) - mean_y) * scale_y * wt
        yp = y - u @ b
        g = u * (yp @ b.T)
        u2 = u * u
        e0 = u2 @ terms.c0 + (1.0 - u2.sum(1))
        return None, (u, e0, u2 @ terms.dc.T, (yp * yp).sum(1), g @ terms.c0, g @ terms.dc.T)

    _, out = jax.lax.scan(step, None, (idx, m))
    return tuple(a.reshape(-1, *a.shape[2:]) for a in out)


def _column_blocks(p: int) -> list[tuple[int, int]]:
    """Column ranges of at most 8 blocks (at least 256 wide) for the block-triangular Grams."""
    width = max(256, -(-p // 8))
    return [(lo, min(p, lo + width)) for lo in range(0, p, width)]


_GRAM_BLOCK_ELEMENTS = 1 << 22  # right-hand side of one weighted-Gram product (16 MiB)


@jax.jit
def _gram_blocks(u, phi):
    """The blocks on and above the diagonal of :func:`_weighted_grams`: per column block
    ``lo:hi``, ``[hi, R * (hi - lo)]`` = ``U[:, :hi]^T (phi_r * U[:, lo:hi])`` for every r.

    One product per block over all rows when its right-hand side fits in _GRAM_BLOCK_ELEMENTS,
    else accumulated over row blocks.
    """
    n, p = u.shape
    r = phi.shape[1]
    cols = _column_blocks(p)
    widest = max(hi - lo for lo, hi in cols)
    limit = _GRAM_BLOCK_ELEMENTS
    rows = n if n * r * widest <= limit else max(8, limit // (r * widest))

    def products(x, f):
        out = []
        for lo, hi in cols:
            rhs = (f[:, :, None] * x[:, None, lo:hi]).reshape(x.shape[0], r * (hi - lo))
            out.append(x[:, :hi].T @ rhs)
        return out

    if rows >= n:
        return products(u, phi)
    n_blocks = -(-n // rows)
    pad = n_blocks * rows - n
    ub = jnp.pad(u, ((0, pad), (0, 0))).reshape(n_blocks, rows, p)
    fb = jnp.pad(phi, ((0, pad), (0, 0))).reshape(n_blocks, rows, r)

    def step(acc, block):
        return [a + b for a, b in zip(acc, products(*block), strict=True)], None

    zero = [jnp.zeros((hi, r * (hi - lo)), u.dtype) for lo, hi in cols]
    return jax.lax.scan(step, zero, (ub, fb))[0]


class _GramBlock(NamedTuple):
    """Columns ``lo:hi``, rows ``0:hi`` of every weighted Gram matrix: ``[R, hi, hi - lo]``."""

    lo: int
    hi: int
    block: np.ndarray


def _weighted_grams(u, phi) -> list[_GramBlock]:
    """``U^T diag(phi_r) U`` for the columns of ``phi`` [n, R], as float64 column blocks.

    The products are symmetric: only the blocks on and above the diagonal of a grid of at most
    8 x 8 column blocks are formed (9/16 of the multiply-adds at 8 blocks, :func:`_gram_blocks`),
    and :func:`_quad_forms` reads the lower triangle from them.
    """
    p, r = u.shape[1], phi.shape[1]
    return [
        _GramBlock(lo, hi, np.asarray(blk, np.float64).reshape(hi, r, hi - lo).transpose(1, 0, 2))
        for blk, (lo, hi) in zip(_gram_blocks(u, phi), _column_blocks(p), strict=True)
    ]


def _quad_forms(m, grams, r, c, d):
    """``c_a^T (M * P_r) d_a`` for every row a of ``c``, ``d`` [A, p] (float64), with ``P_r``
    the symmetric matrix of which ``grams`` (:func:`_weighted_grams`) hold the upper blocks."""
    out = np.zeros(c.shape[0])
    for lo, hi, blk in grams:
        mp = m[:hi, lo:hi] * blk[r]
        diag, upper = mp[lo:], mp[:lo]  # the diagonal block (whole), the blocks above it
        out += np.einsum("ap,ap->a", c[:, lo:hi] @ diag, d[:, lo:hi])
        out += np.einsum("ap,ap->a", c[:, :lo] @ upper, d[:, lo:hi])
        out += np.einsum("ap,ap->a", d[:, :lo] @ upper, c[:, lo:hi])  # their mirror image
    return out


def _lowrank_loo(rows, m, s, alphas):
    """``(base, delta)`` of one fold's LOO sums (as :func:`_loo_block` sums them) from
    :func:`_loo_rows`' output, with the quadratic part through weighted Gram matrices;
    ``m`` [p, p] is ``b b^T`` (float64)."""
    u, e0, de, rho, l0, dl = rows
    e0, de, rho, l0, dl = (np.asarray(a, np.float64) for a in (e0, de, rho, l0, dl))
    s2 = np.asarray(s, np.float64) ** 2
    c = alphas[:, None] / (s2[None, :] + alphas[:, None])  # [A, p]
    c0 = c[0]
    dc = s2[None, :] * (alphas[:, None] - alphas[0]) / ((s2 + alphas[:, None]) * (s2 + alphas[0]))
    e = e0[:, None] + de
    w0 = 1.0 / (e0 * e0)
    dw = -de * (2.0 * e0[:, None] + de) / (e * e * (e0 * e0)[:, None])  # w(a) - w(a0)
    q0 = rho + 2.0 * l0
    base = (w0 * q0).sum()
    delta = (dw * (q0[:, None] + 2.0 * dl)).sum(0) + 2.0 * (w0[:, None] * dl).sum(0)
    total_q = (c * c) @ np.diag(m)  # [A] sum_i |(U C_a b)_i|^2
    lower = base + delta + (1.0 / (e * e)).min(0) * total_q  # a lower bound of each LOO sum

    # The weight changes in two bases. Exact: columns scaled to unit max, all of their numerical
    # rank. Truncated: columns in units of each alpha's LOO sum over its quadratic part, where
    # the SVD's leading directions are those the error bounds need (one Gram matrix fewer than
    # unit-max columns at 2,048 units: the small alphas' changes, whose quadratic part is
    # negligible, no longer take directions of their own).
    unit = np.abs(dw).max(0)
    unit[unit == 0] = 1.0
    exact = (*np.linalg.svd(dw / unit, full_matrices=False), unit)
    full = int((exact[1] > exact[1][0] * 1e-12).sum()) if exact[1][0] > 0 else 0
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.maximum(lower, 0.0) / total_q
    rel = np.where(np.isfinite(rel) & (rel > 0), rel, unit)
    truncated = (*np.linalg.svd(dw / rel, full_matrices=False), rel)
    phi, sv, psi, _ = truncated
    err = np.empty((full + 1, len(alphas)))
    resid = dw / rel
    for r in range(full + 1):
        err[r] = np.abs(resid).max(0) * rel * total_q
        if r < full:
            resid = resid - np.outer(phi[:, r] * sv[r], psi[r])
    ok = (err <= _LOWRANK_RTOL * np.maximum(lower, 0.0)[None, :]).all(1)
    rank = int(np.argmax(ok)) if ok.any() else full

    def sums(rank, basis):
        phi, sv, psi, scale = basis
        basis = np.concatenate([w0[:, None], phi[:, :rank]], axis=1)
        grams = _weighted_grams(u, np.asarray(basis, u.dtype))
        quad0 = _quad_forms(m, grams, 0, c0[None], c0[None])[0]
        dquad = _quad_forms(m, grams, 0, dc, c + c0[None])
        coef = (psi[:rank] * sv[:rank, None]).T * scale[:, None]  # [A, rank]
        for r in range(rank):
            dquad = dquad + coef[:, r] * _quad_forms(m, grams, r + 1, c, c)
        return base + quad0, delta + dquad

    if not ok.any():
        return sums(full, exact)
    tot_base, tot_delta = sums(rank, truncated)
    bound = err[rank]
    best = int(np.argmin(tot_delta))
    others = np.arange(len(alphas)) != best
    certain = (tot_delta[best] + bound[best] < (tot_delta - bound)[others]).all()
    if rank < full and not certain:
        tot_base, tot_delta = sums(full, exact)
    return tot_base, tot_delta


def _pool(counts, means, k):
    """Pooled count, mean and the per-part mean offsets of every part but ``k`` (float64)."""
    keep = np.arange(len(counts)) != k
    w = counts[keep]
    mean = (w[:, None] * means[keep]).sum(0) / w.sum()
    return w, mean, means[keep] - mean


def _svd_of_r(r):
    """SVD of a square float64 factor ``r`` through the eigendecomposition of ``r^T r``.

    Three times faster than LAPACK's SVD at 2,048 columns. Squaring the condition number is
    harmless here: the streamed path keeps the result only when X_std's condition number (read
    from these singular values) is at most _MAX_COND = 1e3, where float64 keeps about 1e-10
    relative accuracy in every singular vector; a singular ``r`` gives a zero singular value.
    """
    lam, v = np.linalg.eigh(r.T @ r)
    lam, v = lam[::-1], v[:, ::-1]  # descending, as np.linalg.svd
    s = np.sqrt(np.maximum(lam, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        return (r @ v) / s[None, :], s, v.T


def _inv_upper(r):
    return np.linalg.solve(r, np.eye(r.shape[0]))


def _embed(a, shape, fill=0.0):
    """``a`` in the leading corner of an array of ``shape`` filled with ``fill``."""
    if np.shape(a) == (shape if isinstance(shape, tuple) else (shape,)):
        return np.asarray(a, np.float64)
    out = np.full(shape, fill, dtype=np.float64)
    out[tuple(slice(0, n) for n in np.shape(a))] = a
    return out


def _serial_blas(fn):
    """Run ``fn`` with every host BLAS and LAPACK call on a single thread (``threadpoolctl``).

    The streamed paths' host algebra is many calls, large (an ``eigh`` of a 2,048 x 2,048
    matrix synchronises OpenBLAS's threads thousands of times) and small (products of [A, p]
    matrices). On a machine shared with other processes, threads that wait on each other
    stall: one multi-threaded ``eigh`` took anywhere from 1.3 s to 22 s where the
    single-threaded one took 2 s every time, and the small products and SVDs of the LOO sums
    of five folds took 12 s instead of 0.6 s. Parallelism comes from running folds side by side
    instead (:func:`_host_map`). Without ``threadpoolctl``, BLAS keeps its own threads.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if threadpool_limits is None:
            return fn(*args, **kwargs)
        with _single_threaded_blas():
            return fn(*args, **kwargs)

    return wrapper


_BLAS_LOCK = threading.Lock()
_BLAS_USERS = [0, None]  # calls inside, and the limiter the first of them set


@contextlib.contextmanager
def _single_threaded_blas():
    """``threadpool_limits(1)`` for as long as any thread is inside.

    The limit is process-wide: with ridge calls running side by side on several threads, nested
    limiters would restore each other's settings in the wrong order (and could leave BLAS on one
    thread for good). The first caller sets it, the last one restores the original.
    """
    with _BLAS_LOCK:
        if _BLAS_USERS[0] == 0:
            _BLAS_USERS[1] = threadpool_limits(limits=1)
        _BLAS_USERS[0] += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_USERS[0] -= 1
            if _BLAS_USERS[0] == 0:
                _BLAS_USERS[1].restore_original_limits()
                _BLAS_USERS[1] = None


def _host_map(fn, n: int, then=None):
    """``[fn(0), ..., fn(n - 1)]`` on up to one thread per core, or None as soon as one of them
    is None. For the folds' independent host algebra under :func:`_serial_blas`.

    ``then(k, fn(k))``, if given, runs on the calling thread as each result arrives, in order:
    fold k's device passes then overlap the host algebra of the folds after it. What it returns
    takes the place of ``fn(k)`` in the list (so large results can be dropped once used), and
    at most one fold per spare core (cores minus the calling thread, at least one) is computed
    ahead of it: at 4,096 units and more a fold's factors are several hundred MB each.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = max(1, min(n, cores or 1)) if threadpool_limits is not None else 1
    window = n if then is None else max(1, workers - 1)
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(fn, k) for k in range(min(n, window))]
        out = []
        for k in range(n):
            out.append(futures[k].result())
            futures[k] = None  # the list holds the only reference to the result
            if out[-1] is None:  # the caller falls back: drop the folds not started yet
                for g in futures[k + 1 :]:
                    g.cancel()
                return None
            if k + window < n:
                futures.append(pool.submit(fn, k + window))
            if then is not None:
                out[-1] = then(k, out[-1])
        return out


class _FoldFactors(NamedTuple):
    """One fold's host algebra: the constants of its passes, V^T and its train row count."""

    consts: _StreamedFold
    vt: np.ndarray
    n_train: float


def _factor_fold(m: _folds.FoldMoments, totals, keep, k, lowrank):
    """Fold ``k``'s train statistics pooled from the parts ``keep`` (``totals``: the sums of
    ``m.gram_x`` and ``m.cross`` over all parts), the factorisation of its standardised X and
    ``b = U^T Y_std`` (float64); None if X_std's condition number exceeds _MAX_COND or its Gram
    matrix is not positive definite.

    The eigendecomposition stays in float64: LAPACK's float32 one takes half the time, but its
    eigenvectors are orthogonal only to about 1e-6, and a nearly noiseless target's LOO curve
    (flat to 1e-7 at small alphas) then no longer picks scikit-learn's alpha."""
    w, mean_x, dx = _pool(m.count, m.mean_x, k)
    _, mean_y, dy = _pool(m.count, m.mean_y, k)
    dxw = dx * w[:, None]
    # In place where the arrays are [p, p] (several GB at 16,384 units if each op copied).
    gxx = totals[0] - m.gram_x[k]
    gxx += dxw.T @ dx
    gxy = totals[1] - m.cross[k].astype(np.float64)
    gxy += dxw.T @ dy
    ssy = m.ss_y[keep].sum(0) + (w[:, None] * dy * dy).sum(0)
    sx = np.sqrt(np.diag(gxx))
    scale_y = 1.0 / np.sqrt(ssy)
    gxx /= np.outer(sx, sx)
    gxy *= scale_y[None, :]
    if lowrank:  # X_std = U S V^T from the eigendecomposition of its Gram matrix
        # LAPACK's syevd as numpy's eigh calls it, on gxx itself (numpy's copies its input).
        lam, v = scipy.linalg.eigh(gxx, overwrite_a=True, check_finite=False, driver="evd")
        del gxx
        lam, v = lam[::-1], v[:, ::-1]  # descending
        if not (lam[-1] > 0 and lam[0] <= _MAX_COND**2 * lam[-1]):
            return None
        s = np.sqrt(lam)
        w1 = v / s[None, :]
        w1 /= sx[:, None]
        b = w1.T @ gxy
        return _FoldFactors(_StreamedFold(mean_x, w1, mean_y, scale_y, b, s), v.T, w.sum())
    try:
        r = np.linalg.cholesky(gxx).T
    except np.linalg.LinAlgError:
        return None
    if not np.isfinite(r).all():
        return None
    ur, s, vt = _svd_of_r(r)
    if not (s[-1] > 0 and s[0] / s[-1] <= _MAX_COND):
        return None
    # One map from centred X rows to rows of U, R^-1 U_R / sx, formed in float64: one GEMM per
    # row block on the device instead of two.
    w1 = (_inv_upper(r) / sx[:, None]) @ ur
    b = w1.T @ gxy  # U^T Y_std from the moments
    return _FoldFactors(_StreamedFold(mean_x, w1, mean_y, scale_y, b, s), vt, w.sum())


@_folds.full_precision
@_serial_blas
def _ridge_streamed(prep: _folds.Prepared, alphas, lowrank=False):
    """Ridge folds of a tall X without materialising any fold; None if X is ill-conditioned.

    The device passes run at the full input widths (the live columns first, then zero-weight
    padding: ``folds.padded_live``), so their compiled code depends on the input shapes only;
    the host algebra runs on the live block, and its constants are embedded with zeros (unit
    singular values) on the padding, which then adds nothing to any sum. The per-part moments
    are those the other metrics of the same pair use (``folds.moments_of``).
    """
    X, Y, folds = prep.X, prep.Y, prep.folds
    live_x, live_y = prep.units_x.live, prep.units_y.live
    raw = _folds.moments_of(prep)
    n_folds, p, t = len(folds.sizes), len(live_x), len(live_y)
    width_x, width_y = X.shape[1], Y.shape[1]
    block = 512 if lowrank else _loo_block_rows(len(alphas), width_y)
    index, mask = _folds.blocked(folds, block)
    lx, kx = _folds.padded_live(live_x, width_x)
    ly, _ = _folds.padded_live(live_y, width_y)
    # The [K, p, t] cross products stay float32 (float64 where they are used: the same numbers).
    m = _folds.FoldMoments(*(np.asarray(a, np.float64) for a in raw[:5]), np.asarray(raw.cross))
    # Absolute means in float64 (shift + mean: the pooled mean offsets keep their accuracy).
    m = m._replace(
        mean_x=m.mean_x + np.asarray(raw.shift_x, np.float64),
        mean_y=m.mean_y + np.asarray(raw.shift_y, np.float64),
    )
    del raw  # the device copy ([K, p, t] cross products), unless the pair's moments are shared
    mean64, gram = _part_grams(X, lx, kx, index, mask, m.count, m.mean_x)
    full_mean_x, full_mean_y, full_ss_x = m.mean_x, m.mean_y, m.ss_x
    m = _folds.FoldMoments(  # the live block
        m.count,
        mean64[:, :p],
        m.mean_y[:, :t],
        m.ss_x[:, :p],
        m.ss_y[:, :t],
        m.cross[:, :p, :t],
        gram[:, :p, :p],
    )
    others = np.array([[j for j in range(n_folds) if j != k] for k in range(n_folds)])
    dtype = X.dtype
    sq_x, sq_xy = (width_x, width_x), (width_x, width_y)

    # Train statistics, the factorisation and U^T Y_std of every fold (host, float64).
    totals = (m.gram_x.sum(0), m.cross.sum(0, dtype=np.float64))
    index_np, mask_np = np.asarray(index), np.asarray(mask)  # for the folds' row selections

    def loo_sums(k, f):
        """Weighted-Gram path: fold k's LOO sums and coefficients as soon as its factors are
        known; its [p, p] factors are then dropped (only the train row count is kept)."""
        base_k, delta_k = _lowrank_fold(
            X, Y, lx, ly, index_np, mask_np, others[k], f, alphas, sq_x, sq_xy
        )
        coef_k = _coefficients(f, alphas[np.argmin(delta_k)], sq_xy).astype(dtype)
        return f.n_train, base_k, delta_k, coef_k

    factors = _host_map(
        lambda k: _factor_fold(m, totals, others[k], k, lowrank),
        n_folds,
        then=loo_sums if lowrank else None,
    )
    if factors is None:
        return None
    if lowrank:
        n_train, base, delta, coef = (np.array(a) for a in zip(*factors, strict=True))
    else:
        consts = [f.consts for f in factors]
        n_train = np.array([f.n_train for f in factors])
        padded = [
            _StreamedFold(
                _embed(c.mean_x, width_x),
                _embed(c.w, sq_x),
                _embed(c.mean_y, width_y),
                _embed(c.scale_y, width_y),
                _embed(c.b, sq_xy),
                _embed(c.s, width_x, fill=1.0),
            )
            for c in consts
        ]
        stacked = jax.tree.map(lambda *a: jnp.asarray(np.stack(a), dtype), *padded)
        alphas_d = jnp.asarray(alphas, dtype)
        base, delta = _loo_pass(X, Y, lx, ly, index, mask, jnp.asarray(others), stacked, alphas_d)
        delta = np.asarray(delta)
    n_train = np.asarray(n_train, dtype)
    best = np.argmin(delta, axis=1)
    loo = (np.asarray(base)[:, None] + delta) / (n_train[:, None] * t)

    # Coefficients (float64) and the test Pearson r of every target.
    if not lowrank:
        coef = _host_map(
            lambda k: _coefficients(factors[k], alphas[best[k]], sq_xy).astype(dtype), n_folds
        )
    with np.errstate(divide="ignore"):
        scale_x = np.where(full_ss_x > 0, 1.0 / np.sqrt(full_ss_x), 0.0)
    sums = np.asarray(
        _test_pass(
            X,
            Y,
            lx,
            ly,
            index,
            mask,
            np.asarray(full_mean_x, dtype),
            np.asarray(scale_x, dtype),
            np.stack(coef),
            np.asarray(full_mean_y, dtype),
        ),
        np.float64,
    )[:, :, :t]
    n = m.count[:, None]
    sp, sy, spp, syy, spy = (sums[:, i] for i in range(5))
    var_p, var_y = spp - sp * sp / n, syy - sy * sy / n
    cov = spy - sp * sy / n
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where((var_p > 0) & (var_y > 0), cov / np.sqrt(var_p * var_y), 0.0)
    return r.mean(1), best, loo, r


def _coefficients(f: _FoldFactors, alpha, shape):
    """A fold's ridge coefficients ``V diag(s / (s^2 + alpha)) b`` (float64), padded to shape."""
    c = f.consts
    return _embed(f.vt.T @ ((c.s / (c.s * c.s + alpha))[:, None] * c.b), shape)


def _lowrank_fold(X, Y, lx, ly, index, mask, others, f: _FoldFactors, alphas, sq_x, sq_xy):
    """One fold's LOO sums ``(base, delta [A])`` by :func:`_loo_rows` and :func:`_lowrank_loo`;
    ``others`` are its train parts. ``index`` and ``mask`` are numpy arrays (their row selections
    and every argument of the jitted pass are host arrays: no op-by-op dispatch)."""
    dtype = X.dtype
    width_x, width_y = sq_xy

    def arg(a):
        return np.asarray(a, dtype)

    c = f.consts
    b = _embed(c.b, sq_xy)
    s = _embed(c.s, width_x, fill=1.0)
    rows = _loo_rows(
        X,
        Y,
        lx,
        ly,
        index[others].reshape(-1, index.shape[-1]),
        mask[others].reshape(-1, index.shape[-1]),
        arg(_embed(c.mean_x, width_x)),
        arg(_embed(c.w, sq_x)),
        arg(_embed(c.mean_y, width_y)),
        arg(_embed(c.scale_y, width_y)),
        arg(b),
        arg(alphas),
        arg(s),
    )
    return _lowrank_loo(rows, _embed(c.b @ c.b.T, sq_x), s, alphas)


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


@_folds.full_precision
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
    out = None
    n_train, n_x, n_y = (
        p.X.shape[0] - int(p.folds.sizes.max()),
        len(p.units_x.live),
        len(p.units_y.live),
    )
    if n_train >= 8 * n_x:
        out = _ridge_streamed(p, alphas)
    elif n_train > n_x and 4 * n_y >= n_x:
        # At 10,000 x 4,096 -> 1,024 (SAE latents -> units) this path took 94-130 s where LAPACK's
        # SVD of every fold took 131-145 s (benchmarks/RESULTS.md, section 7).
        out = _ridge_streamed(p, alphas, lowrank=True)
    if out is None:
        out = _ridge_materialised(p, alphas)
    scores, best, loo, r = out
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


@_folds.full_precision
def _ridge_materialised(p: _folds.Prepared, alphas):
    """Ridge folds with every fold's train rows gathered and factored by LAPACK-backed SVDs."""
    tests = p.folds.parts
    trains = [
        np.sort(np.concatenate([t for j, t in enumerate(tests) if j != k]))
        for k in range(len(tests))
    ]
    train_idx, train_mask = _padded(trains, _round_up(max(len(t) for t in trains)))
    test_idx, test_mask = _padded(tests, _round_up(max(len(t) for t in tests)))
    return _ridge_folds(
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
