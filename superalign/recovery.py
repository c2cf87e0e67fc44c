"""Sparse recovery with a known dictionary: orthogonal matching pursuit and FISTA for the lasso.

Paper section 3 ("Perfect alignment after superposition disentanglement"): if the mixing matrix
of a system satisfies the restricted isometry property and an exact sparse recovery method
recovers the latents from its units, the recovered latents of two systems agree up to a
permutation, and their permutation score is 1. These solvers are that recovery step.

Conventions follow the paper's ``Y = Z A``: a row ``y`` [N] of the responses is the sparse row
``z`` [F] of the latents times the mixing matrix ``A`` [F, N], so the F rows of ``A`` are the
dictionary's atoms. Every function works on a whole matrix of rows at once, is pure and jittable,
and takes its sparsity ``k`` (OMP) or penalty ``lam`` (lasso) as a possibly traced value, so a
sweep over them is a ``jax.vmap`` axis (OMP then needs a static ``max_k``).
"""

from __future__ import annotations

import numbers
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from superalign import checks


class OMPResult(NamedTuple):
    """Orthogonal matching pursuit output.

    Attributes:
      codes: [M, F] recovered latents ``Z_hat`` (at most ``k`` non-zeros per row).
      support: [M, max_k] the atom chosen at each iteration, in order; slots past ``k``, and
        slots whose atom already lay in the span of the chosen ones (only when ``k > N``), are 0.
      residual: [M] Euclidean norm of ``y - z_hat A`` per row.
    """

    codes: jax.Array
    support: jax.Array
    residual: jax.Array


class LassoResult(NamedTuple):
    """FISTA output for the lasso.

    Attributes:
      codes: [M, F] the lasso solution per row after ``n_iter`` iterations.
      objective: [M] ``0.5 ||y - z A||^2 + lam ||z||_1`` at ``codes``.
    """

    codes: jax.Array
    objective: jax.Array


def _is_concrete(value) -> bool:
    return not isinstance(value, jax.core.Tracer)


def _check_problem(Y, A) -> None:
    checks.array("A", A, ndim=2, finite=_is_concrete(A))
    checks.array("Y", Y, ndim=2, width=np.shape(A)[1], finite=_is_concrete(Y))


def _check_k(k, n_features: int, max_k) -> int:
    """Validate ``k`` (concrete, or traced with a static ``max_k``); return the iteration count."""
    if max_k is not None:
        max_k = checks.positive_int("max_k", max_k)
        if max_k > n_features:
            raise ValueError(
                f"max_k must be at most the number of atoms (rows of A) {n_features}, got {max_k}"
            )
    if not _is_concrete(k):
        if max_k is None:
            raise ValueError("k is traced (e.g. a vmap axis): pass a static max_k >= every k")
        return max_k
    if np.ndim(k) == 0 and np.issubdtype(np.asarray(k).dtype, np.integer):
        k = int(np.asarray(k))
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= n_features:
        raise ValueError(f"k must be an integer in 1..{n_features} (rows of A), got {k!r}")
    if max_k is not None and k > max_k:
        raise ValueError(f"k must be at most max_k={max_k}, got {k}")
    return k if max_k is None else max_k


def omp(Y, A, k, *, max_k: int | None = None) -> OMPResult:
    """Orthogonal matching pursuit for every row of ``Y``: ``y ~ z A`` with ``||z||_0 <= k``.

    Each of ``k`` iterations adds the atom (row of ``A``) whose normalised correlation with the
    residual, ``|<a_j, r>| / ||a_j||``, is largest among the atoms not yet chosen, then refits
    all chosen coefficients by least squares (Pati, Rezaiifar & Krishnaprasad 1993; Tropp &
    Gilbert 2007). With a Gaussian ``A`` and ``N >~ 2 K ln F`` measurements it recovers every
    K-sparse row exactly with high probability. Residual correlations come from the Gram matrix
    (``A r = A y - G[:, S] c``) and the refit from the inverse Gram matrix of the chosen atoms,
    updated by one rank-one bordering step per iteration: an iteration costs
    ``O(F max_k + max_k^2)`` per row with no factorisation, which keeps big vmapped sweeps fast.

    Args:
      Y: [M, N] responses, one observation per row.
      A: [F, N] mixing matrix (dictionary; atoms are its rows, zero rows are never chosen).
      k: number of atoms per row (int, or a traced int when ``max_k`` is given).
      max_k: static iteration count when ``k`` is traced (vmapped); iterations past ``k`` are
        masked out. Defaults to ``k``.

    Returns:
      An :class:`OMPResult`.
    """
    _check_problem(Y, A)
    n_iter = _check_k(k, np.shape(A)[0], max_k)
    dtype = jnp.promote_types(jnp.result_type(Y, A), jnp.float32)
    return _omp(jnp.asarray(Y, dtype), jnp.asarray(A, dtype), jnp.asarray(k, jnp.int32), n_iter)


_SPAN_TOL = 1e-3  # relative squared distance below which an atom counts as in the span (float32)


class _OMPCarry(NamedTuple):
    support: jax.Array  # [max_k] chosen atoms
    used: jax.Array  # [max_k] whether the slot is active
    inverse: jax.Array  # [max_k, max_k] inverse Gram matrix of the chosen atoms (0 elsewhere)
    coef: jax.Array  # [max_k] least-squares coefficients of the chosen atoms


@partial(jax.jit, static_argnums=3)
def _omp(Y, A, k, n_iter: int) -> OMPResult:
    hi = jax.lax.Precision.HIGHEST
    gram = jnp.matmul(A, A.T, precision=hi)  # [F, F]
    norms = jnp.sqrt(jnp.diagonal(gram))
    inv_norm = jnp.where(norms > 0, 1.0 / jnp.where(norms > 0, norms, 1.0), 0.0)
    AY = jnp.matmul(Y, A.T, precision=hi)  # [M, F]
    slots = jnp.arange(n_iter)

    def row(ay):
        def step(c: _OMPCarry, t):
            corr = ay - gram[:, c.support] @ c.coef  # A r for the current residual
            score = jnp.abs(corr) * inv_norm
            taken = jnp.zeros(score.shape, bool).at[c.support].max(c.used)
            j = jnp.argmax(jnp.where(taken | (norms == 0), -1.0, score))
            active = t < k
            # Bordered inverse: with b = G_S^-1 g and Schur complement s = g_jj - g.b, the new
            # inverse is the old one plus (b - e_t)(b - e_t)^T / s. No factorisation per step.
            g = jnp.where(c.used, gram[c.support, j], 0.0)
            b = c.inverse @ g
            schur = gram[j, j] - g @ b  # squared distance of atom j from the chosen span
            # An atom (numerically) in the span of the chosen ones adds nothing: once the chosen
            # atoms span the N-dimensional space (k > N) the slot stays empty.
            active = active & (schur > _SPAN_TOL * gram[j, j])
            u = b - (slots == t).astype(ay.dtype)
            inverse = jnp.where(active, c.inverse + jnp.outer(u, u) / schur, c.inverse)
            support = c.support.at[t].set(jnp.where(active, j, 0))
            used = c.used.at[t].set(active)
            coef = inverse @ jnp.where(used, ay[support], 0.0)
            return _OMPCarry(support, used, inverse, jnp.where(used, coef, 0.0)), None

        init = _OMPCarry(
            jnp.zeros((n_iter,), jnp.int32),
            jnp.zeros((n_iter,), bool),
            jnp.zeros((n_iter, n_iter), ay.dtype),
            jnp.zeros((n_iter,), ay.dtype),
        )
        c, _ = jax.lax.scan(step, init, slots)
        code = jnp.zeros_like(ay).at[c.support].add(c.coef)
        return code, c.support

    codes, support = jax.vmap(row)(AY)
    residual = jnp.linalg.norm(Y - jnp.matmul(codes, A, precision=hi), axis=1)
    return OMPResult(codes, support, residual)


def lasso(Y, A, lam, *, n_iter: int = 500, nonnegative: bool = False) -> LassoResult:
    """Lasso codes of every row of ``Y`` by FISTA (Beck & Teboulle 2009).

    Minimises ``0.5 ||y - z A||^2 + lam ||z||_1`` (optionally with ``z >= 0``) per row with the
    accelerated proximal gradient method, step ``1 / ||A||_2^2``, from ``z = 0`` for a fixed
    ``n_iter`` iterations (the objective gap decays as ``O(1 / n_iter^2)``). This is
    scikit-learn's ``Lasso(alpha=lam / N, fit_intercept=False)`` on the design ``A^T``.

    Args:
      Y: [M, N] responses.
      A: [F, N] mixing matrix (atoms are its rows).
      lam: penalty >= 0 (may be traced, e.g. a vmap axis).
      n_iter: number of FISTA iterations (static).
      nonnegative: constrain the codes to be >= 0.

    Returns:
      A :class:`LassoResult`.
    """
    _check_problem(Y, A)
    n_iter = checks.positive_int("n_iter", n_iter)
    if _is_concrete(lam):
        checks.nonnegative_float("lam", float(np.asarray(lam)) if np.ndim(lam) == 0 else lam)
    dtype = jnp.promote_types(jnp.result_type(Y, A), jnp.float32)
    return _lasso(
        jnp.asarray(Y, dtype), jnp.asarray(A, dtype), jnp.asarray(lam, dtype), n_iter, nonnegative
    )


class _FistaCarry(NamedTuple):
    z: jax.Array  # [M, F] current iterate
    x: jax.Array  # [M, F] extrapolated point
    t: jax.Array  # momentum scalar


@partial(jax.jit, static_argnums=(3, 4))
def _lasso(Y, A, lam, n_iter: int, nonnegative: bool) -> LassoResult:
    hi = jax.lax.Precision.HIGHEST
    gram = jnp.matmul(A, A.T, precision=hi)
    AY = jnp.matmul(Y, A.T, precision=hi)
    lipschitz = jnp.maximum(jnp.linalg.eigvalsh(gram)[-1], jnp.finfo(Y.dtype).tiny)
    thresh = lam / lipschitz

    def prox(v):
        if nonnegative:
            return jnp.maximum(v - thresh, 0.0)
        return jnp.sign(v) * jnp.maximum(jnp.abs(v) - thresh, 0.0)

    def step(c: _FistaCarry, _):
        z = prox(c.x - (jnp.matmul(c.x, gram, precision=hi) - AY) / lipschitz)
        t = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * c.t * c.t))
        return _FistaCarry(z, z + ((c.t - 1.0) / t) * (z - c.z), t), None

    zero = jnp.zeros(AY.shape, Y.dtype)
    c, _ = jax.lax.scan(step, _FistaCarry(zero, zero, jnp.ones((), Y.dtype)), None, n_iter)
    resid = Y - jnp.matmul(c.z, A, precision=hi)
    objective = 0.5 * (resid * resid).sum(1) + lam * jnp.abs(c.z).sum(1)
    return LassoResult(c.z, objective)
