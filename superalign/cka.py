"""Linear centred kernel alignment (CKA) under the library's cross-validation protocol.

CKA (Kornblith et al. 2019) compares the stimulus-by-stimulus linear kernels ``K = X X^T`` and
``L = Y Y^T`` of two systems. It has nothing to fit, so there is no train part: it is computed on
the test part of every fold of the shared split (``PROTOCOL.md``: shuffled K folds, dead units
removed once), which makes its folds, mean and standard error directly comparable with the other
metrics'. Columns are centred on the fold's rows; units are not scaled (CKA weighs units by their
variance by design).

Nothing here forms an ``n x n`` kernel. With centred rows ``x_i``, ``y_i``, ``a_i = |x_i|^2`` and
``b_i = |y_i|^2``:

- biased HSIC (Gretton et al. 2005): ``tr(K H L H) = ||X^T Y||_F^2``, so
  ``CKA = ||X^T Y||_F^2 / (||X^T X||_F ||Y^T Y||_F)``;
- unbiased HSIC (Song et al. 2012), with ``K~`` the kernel with its diagonal zeroed:
  ``tr(K~ L~) = ||X^T Y||_F^2 - sum_i a_i b_i``, ``1^T K~ 1 = -sum_i a_i`` (centred rows sum to
  zero) and ``1^T K~ L~ 1 = sum_i a_i b_i``, so
  ``HSIC_1 = [||X^T Y||^2 - sum a b + (sum a)(sum b) / ((n-1)(n-2)) - 2 sum a b / (n-2)]
  / (n (n-3))`` and ``CKA = HSIC_1(K, L) / sqrt(HSIC_1(K, K) HSIC_1(L, L))``.

Precision. Each fold part is first shifted by the pattern of one of its stimuli (exact for the
large offsets of raw recordings: a column at 1e4 with a spread of 0.03 keeps all of its digits)
and scaled by a power of two (exact) that brings its largest shifted value into [1, 2): CKA does
not change when either system is scaled, and the fourth powers in the Frobenius norms then
neither underflow nor overflow float32, for data in tesla (1e-13) as for data in the millions.

Every term is a unit-by-unit cross product (``[Nx, Nx]``, ``[Ny, Ny]``, ``[Nx, Ny]``) or a sum
over rows, accumulated over row blocks of one fold at a time: memory is the three accumulators
plus one block, whatever the number of stimuli. The scalars are combined in float64 on the host
(the unbiased estimator subtracts nearly equal terms).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from superalign import folds as _folds


class CKAResult(NamedTuple):
    """Cross-validated linear CKA.

    Attributes:
      folds: [K] CKA on the test part of every fold.
      mean: mean over folds.
      sem: standard error over folds (std with ddof=1 over sqrt(K)).
      debiased: whether the unbiased HSIC estimator was used.
      dead_x: column indices of X removed as dead.
      dead_y: column indices of Y removed as dead.
    """

    folds: np.ndarray
    mean: float
    sem: float
    debiased: bool
    dead_x: np.ndarray
    dead_y: np.ndarray


class _Sums(NamedTuple):
    """Accumulators of one fold part (centred rows): the scan carry of the second pass."""

    xx: jax.Array  # [Nx, Nx] X^T X
    yy: jax.Array  # [Ny, Ny] Y^T Y
    xy: jax.Array  # [Nx, Ny] X^T Y
    a: jax.Array  # sum_i |x_i|^2
    b: jax.Array  # sum_i |y_i|^2
    aa: jax.Array  # sum_i |x_i|^4
    bb: jax.Array  # sum_i |y_i|^4
    ab: jax.Array  # sum_i |x_i|^2 |y_i|^2


class _Terms(NamedTuple):
    """[K] scalars of every fold from which both estimators follow."""

    n: jax.Array
    xy2: jax.Array  # ||X^T Y||_F^2
    xx2: jax.Array  # ||X^T X||_F^2
    yy2: jax.Array  # ||Y^T Y||_F^2
    a: jax.Array
    b: jax.Array
    aa: jax.Array
    bb: jax.Array
    ab: jax.Array


def pairwise_sum(a: jax.Array, branch: int = 32) -> jax.Array:
    """Sum of all entries of ``a`` by a tree of sums over ``branch`` entries at a time.

    XLA's CPU reductions add the entries of a long axis one after the other, so float32 rounding
    grows with the length (about 3e-6 relative over a few thousand terms); the tree keeps it at
    about ``eps * log_branch(size)``.

    Args:
      a: array of any shape.
      branch: entries summed at each node.

    Returns:
      The scalar sum.
    """
    a = a.ravel()
    while a.shape[0] > 1:
        size = -(-a.shape[0] // branch) * branch
        a = jnp.pad(a, (0, size - a.shape[0])).reshape(-1, branch).sum(axis=1)
    return a.reshape(())


def _frobenius2(m):
    return pairwise_sum(m * m)


def _power_of_two_scale(amax):
    """``2^(1-e)`` for ``amax = f 2^e``, ``f`` in [0.5, 1): an exact scaling that brings ``amax``
    into [1, 2) (1 for ``amax`` 0, a constant part)."""
    exponent = jnp.frexp(jnp.where(amax > 0, amax, 1.0))[1]
    return jnp.ldexp(jnp.ones((), amax.dtype), 1 - exponent)


@jax.jit
def _cka_terms(X, Y, keep_x, keep_y, index, mask) -> _Terms:
    """Per fold part, the scalars of :class:`_Terms` (two passes over its row blocks)."""
    dtype = X.dtype
    hi = jax.lax.Precision.HIGHEST
    keep_x, keep_y = keep_x.astype(dtype), keep_y.astype(dtype)

    def part(blocks):
        # The part's first row is a real one (parts are never empty); its pattern is the shift.
        first = blocks[0][0, 0]
        x0, y0 = X[first] * keep_x, Y[first] * keep_y

        def rows(idx, m):
            w = m[:, None].astype(dtype)
            # Dead columns are zeroed: they add nothing to any cross product or row norm.
            return (X[idx] * keep_x - x0) * w, (Y[idx] * keep_y - y0) * w, w

        def sum_step(carry, block):
            x, y, _ = rows(*block)
            sx, sy, ax, ay = carry
            ax, ay = jnp.maximum(ax, jnp.abs(x).max()), jnp.maximum(ay, jnp.abs(y).max())
            return (sx + x.sum(0), sy + y.sum(0), ax, ay), None

        zx, zy, z = jnp.zeros(X.shape[1], dtype), jnp.zeros(Y.shape[1], dtype), jnp.zeros((), dtype)
        (sx, sy, ax, ay), _ = jax.lax.scan(sum_step, (zx, zy, z, z), blocks)
        n = blocks[1].sum().astype(dtype)
        mx, my = sx / n, sy / n
        scale_x, scale_y = _power_of_two_scale(ax), _power_of_two_scale(ay)

        def step(c: _Sums, block):
            x, y, w = rows(*block)
            x, y = (x - mx) * w * scale_x, (y - my) * w * scale_y
            a, b = (x * x).sum(1), (y * y).sum(1)
            return _Sums(
                c.xx + jnp.matmul(x.T, x, precision=hi),
                c.yy + jnp.matmul(y.T, y, precision=hi),
                c.xy + jnp.matmul(x.T, y, precision=hi),
                c.a + pairwise_sum(a),
                c.b + pairwise_sum(b),
                c.aa + pairwise_sum(a * a),
                c.bb + pairwise_sum(b * b),
                c.ab + pairwise_sum(a * b),
            ), None

        z = jnp.zeros((), dtype)
        init = _Sums(
            jnp.zeros((X.shape[1],) * 2, dtype),
            jnp.zeros((Y.shape[1],) * 2, dtype),
            jnp.zeros((X.shape[1], Y.shape[1]), dtype),
            *(z,) * 5,
        )
        s, _ = jax.lax.scan(step, init, blocks)
        return _Terms(
            n,
            _frobenius2(s.xy),
            _frobenius2(s.xx),
            _frobenius2(s.yy),
            s.a,
            s.b,
            s.aa,
            s.bb,
            s.ab,
        )

    # One part at a time (lax.map): the accumulators exist once, not once per fold.
    return jax.lax.map(part, (index, mask))


def _hsic1(cross2, a, b, ab, n):
    """Unbiased HSIC (times n(n-3)) from feature-space terms (float64 numpy, [K])."""
    return cross2 - ab + a * b / ((n - 1) * (n - 2)) - 2.0 * ab / (n - 2)


def cka_from_terms(terms: _Terms, debiased: bool) -> np.ndarray:
    """[K] CKA of every fold from its feature-space terms (float64, host)."""
    t = _Terms(*(np.asarray(v, np.float64) for v in terms))
    if not debiased:
        return t.xy2 / np.sqrt(t.xx2 * t.yy2)
    kl = _hsic1(t.xy2, t.a, t.b, t.ab, t.n)
    kk = _hsic1(t.xx2, t.a, t.a, t.aa, t.n)
    ll = _hsic1(t.yy2, t.b, t.b, t.bb, t.n)
    return kl / np.sqrt(kk * ll)


def _check_debiased(debiased):
    if not isinstance(debiased, bool):
        raise ValueError(f"debiased must be True or False, got {debiased!r}")


@_folds.full_precision
def cka(X, Y, *, n_folds: int = 5, seed: int = 0, debiased: bool = False) -> CKAResult:
    """Cross-validated linear CKA: the CKA of the test part of every fold.

    Args:
      X: [M, Nx] responses of system x (numpy or jax).
      Y: [M, Ny] responses of system y.
      n_folds: number of shuffled folds K.
      seed: seed of the shuffle (scikit-learn ``KFold`` ``random_state``).
      debiased: use the unbiased HSIC estimator of Song et al. (2012) (needs at least 4 rows per
        fold; unbiased, so near 0 for independent systems where the biased CKA is not).

    Returns:
      A :class:`CKAResult`.
    """
    _check_debiased(debiased)
    p = _folds.prepare(X, Y, n_folds, seed)
    if debiased and int(p.folds.sizes.min()) < 4:
        raise ValueError(
            f"debiased=True needs at least 4 rows per fold, got {int(p.folds.sizes.min())} for "
            f"{p.X.shape[0]} stimuli and n_folds={n_folds}"
        )
    keep_x = np.zeros(p.X.shape[1], np.float32)
    keep_x[p.units_x.live] = 1.0
    keep_y = np.zeros(p.Y.shape[1], np.float32)
    keep_y[p.units_y.live] = 1.0
    # Blocks of about 2^24 numbers per side: few blocks (float32 sums of few terms) and a block
    # that is small next to the [N, N] accumulators.
    width = max(p.X.shape[1], p.Y.shape[1])
    block = _folds.block_rows_for(1, width, int(p.folds.sizes.max()))
    terms = _cka_terms(
        p.X, p.Y, jnp.asarray(keep_x), jnp.asarray(keep_y), *_folds.blocked(p.folds, block)
    )
    folds, mean, sem = _folds.summary(cka_from_terms(terms, debiased))
    return CKAResult(folds, mean, sem, debiased, p.units_x.dead, p.units_y.dead)
