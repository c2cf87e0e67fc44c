"""Paper section 3 as code: how superposition deflates permutation scores, and why recovery helps.

Two systems observe the same latents through different mixing matrices: ``Y_a = Z A_a`` and
``Y_b = Z A_b`` with ``Z`` [M, F] and ``A_a``, ``A_b`` [F, N]. If ``Z`` is whitened (zero mean,
identity covariance) the population correlation of unit i of a and unit j of b is

    rho_ij = a_i . b_j / (||a_i|| ||b_j||),

with ``a_i``, ``b_j`` the columns of the mixing matrices: every alignment score is then a function
of ``G = A_a^T A_b`` (columns normalised) alone, and no training noise blurs it. This module builds
the paper's constructions and the exact population value of each score:

- :func:`sparse_latents`: K-sparse whitened latents (the shared generator ``Z``).
- :func:`equal_mixing`: columns mixing ``n`` features equally (example 1, "different sparsity
  levels"); closed forms :func:`level_score`, :func:`level_ridge_reverse`.
- :func:`grouped_mixing`: features grouped in blocks, optionally shifted (example 2, "different
  sparsity patterns"); closed forms :func:`shift_score`, :func:`shift_ridge`.
- :func:`gaussian_mixing`, :func:`recovery_problem`, :func:`make_recovery_sweep`: random mixing
  with ``N < F`` and the recovery of ``Z`` from each system by OMP (``superalign.recovery``).
- :func:`population_scores`: the population permutation, soft-matching, semi-matching, ridge,
  linear CKA and rotation scores of any pair of mixing matrices (the reference every measured
  score converges to); :func:`population_cka`, :func:`population_rotation`, and the closed forms
  :func:`level_cka`, :func:`level_rotation`, :func:`shift_cka`, :func:`shift_rotation` of the
  two examples.

Everything here is pure; sampling takes an explicit key.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from superalign import checks, recovery


def _int_in(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")
    return int(value)


def _concrete(value) -> bool:
    return not isinstance(value, jax.core.Tracer)


# --------------------------------------------------------------------------------------------
# The shared latent generator.


def sparse_latents(key, n_samples: int, n_features: int, k, *, max_k: int | None = None):
    """K-sparse whitened latents: every row has exactly ``k`` non-zero entries.

    The support of each row is a uniformly random ``k``-subset of the features (the first ``k``
    of ``max_k`` slots drawn without replacement, so a smaller ``k`` gives nested supports for the
    same key); the values are independent standard normals scaled by ``sqrt(F / k)``. Then
    ``E[z] = 0`` and ``E[z_i z_j] = P(i, j in support) E[v_i] E[v_j] = 0`` for ``i != j`` and
    ``(k / F) (F / k) = 1`` for ``i = j``: the population covariance is the identity.

    Args:
      key: PRNG key.
      n_samples: rows M.
      n_features: latent features F.
      k: non-zeros per row (int, or traced when ``max_k`` is given).
      max_k: static number of support slots when ``k`` is traced (a vmap axis). Defaults to k.

    Returns:
      [M, F] float32 latents ``Z``.
    """
    n_samples = checks.positive_int("n_samples", n_samples)
    n_features = checks.positive_int("n_features", n_features)
    if max_k is None:
        max_k = _int_in("k", k, 1, n_features)
    else:
        max_k = _int_in("max_k", max_k, 1, n_features)
        if _concrete(k):
            _int_in("k", int(np.asarray(k)), 1, max_k)
    k_support, k_values = jax.random.split(key)
    # top_k of i.i.d. uniforms: the first k slots are a uniform random k-subset for every k.
    _, support = jax.lax.top_k(jax.random.uniform(k_support, (n_samples, n_features)), max_k)
    slot_on = jnp.arange(max_k) < k
    values = jax.random.normal(k_values, (n_samples, max_k)) * slot_on
    values = values * jnp.sqrt(n_features / jnp.asarray(k, jnp.float32))
    rows = jnp.arange(n_samples)[:, None]
    return jnp.zeros((n_samples, n_features), jnp.float32).at[rows, support].add(values)


# --------------------------------------------------------------------------------------------
# Example 1: different sparsity levels.


def equal_mixing(n_features: int, n) -> jax.Array:
    """Mixing matrix whose column j mixes ``n`` features equally: ``sum_t e_{j+t} / sqrt(n)``.

    Supports are cyclic, ``{j, j+1, ..., j+n-1} mod F``, so every feature is used by exactly
    ``n`` columns and the matrix is square (N = F), circulant, with unit-norm columns.

    Args:
      n_features: F.
      n: features per column, 1..F (may be traced, e.g. a vmap axis over n).

    Returns:
      [F, F] float32 matrix ``A_b`` (``A_a = I_F`` is the pure single-feature system).
    """
    n_features = checks.positive_int("n_features", n_features)
    if _concrete(n):
        _int_in("n", int(np.asarray(n)), 1, n_features)
    i = jnp.arange(n_features)
    offset = (i[:, None] - i[None, :]) % n_features  # feature i in column j at offset i - j
    return jnp.where(offset < n, 1.0, 0.0) / jnp.sqrt(jnp.asarray(n, jnp.float32))


def level_score(n):
    """Permutation score of ``A_a = I`` against :func:`equal_mixing` ``(F, n)``: ``1/sqrt(n)``.

    Derivation (paper section 3, example 1): ``G = I^T A_b = A_b``; column j of ``A_b`` has
    ``n`` entries ``1/sqrt(n)`` and zeros elsewhere, so every entry of G is at most
    ``1/sqrt(n)``, and the identity permutation picks ``G_jj = 1/sqrt(n)`` (feature j is in the
    support of column j) for every j. Hence ``max_P tr(G P) / N = 1/sqrt(n)``. The same value is
    the soft-matching score (equal sizes: the optimal transport plan is a permutation, Birkhoff)
    and the semi-matching score (every unit of b finds a ``1/sqrt(n)`` partner in a).
    """
    return 1.0 / np.sqrt(np.asarray(n, np.float64))


def level_ridge_reverse(n_features: int, n: int) -> float:
    """Ridge score predicting ``Y_a = Z`` from ``Y_b = Z A_b`` (:func:`equal_mixing`).

    Derivation: for whitened Z the best linear prediction of ``z_i`` from ``Z A_b`` is
    ``Z P e_i`` with ``P`` the orthogonal projector onto the column space of ``A_b``, and its
    correlation with ``z_i`` is ``e_i^T P e_i / ||P e_i|| = sqrt(P_ii)``. ``A_b`` is circulant:
    its eigenvectors are the Fourier modes (each with ``|f(i)|^2 = 1/F``) and its eigenvalues
    ``sum_{t<n} w^{jt} = (1 - w^{jn}) / (1 - w^j)`` (``w = exp(2 pi i / F)``) vanish exactly
    when ``j != 0`` and ``jn = 0 mod F``, i.e. for ``gcd(n, F) - 1`` modes. So
    ``P_ii = rank / F`` for every i and the score is ``sqrt((F - gcd(n, F) + 1) / F)``.
    The other direction (predicting ``Y_b`` from ``Y_a = Z``) is exactly 1.
    """
    n_features = checks.positive_int("n_features", n_features)
    n = _int_in("n", n, 1, n_features)
    return math.sqrt((n_features - math.gcd(n, n_features) + 1) / n_features)


# --------------------------------------------------------------------------------------------
# Example 2: different sparsity patterns.


def grouped_mixing(n_features: int, group: int, shift=0) -> jax.Array:
    """Mixing matrix of disjoint feature groups, optionally shifted.

    Column k mixes features ``{g k + s, ..., g k + s + g - 1} mod F`` equally (weights
    ``1/sqrt(g)``). ``shift = 0`` is the grouping ``{(1, 2), (3, 4), ...}`` of the paper for
    ``g = 2``; ``shift = 1`` is the shifted grouping ``{(2, 3), (4, 5), ...}`` (with the last
    feature grouped cyclically with the first, so both systems have ``F / g`` units).

    Args:
      n_features: F, a multiple of ``group``.
      group: features per unit g.
      shift: offset s of the groups (may be traced).

    Returns:
      [F, F // g] float32 matrix with unit-norm columns.
    """
    n_features = checks.positive_int("n_features", n_features)
    group = _int_in("group", group, 1, n_features)
    if n_features % group:
        raise ValueError(f"n_features={n_features} must be a multiple of group={group}")
    if _concrete(shift):
        shift = int(np.asarray(shift))
    offset = jnp.arange(n_features)[:, None] - shift - group * jnp.arange(n_features // group)
    return jnp.where(offset % n_features < group, 1.0, 0.0) / jnp.sqrt(float(group))


def shift_score(group: int, shift: int) -> float:
    """Permutation score of :func:`grouped_mixing` ``(F, g, 0)`` against ``(F, g, s)``.

    Derivation: with ``s' = s mod g``, unit k of b shares ``g - s'`` features with unit k of a
    and ``s'`` features with unit k + 1 (cyclically), and no feature with any other unit. All
    weights are ``1/sqrt(g)``, so ``G_{k,k} = (g - s')/g``, ``G_{k+1,k} = s'/g`` and G is zero
    elsewhere. Every row of G has maximum ``max(s', g - s')/g``, which bounds the mean over
    any permutation, and the identity (or the cyclic shift by one) attains it:

        Score_perm = max(s', g - s') / g.

    The paper's example (pairs against shifted pairs, g = 2, s = 1) gives 1/2: lower than the
    ``1/sqrt(2)`` of pairs against single features, although both systems are equally sparse.
    Soft-matching and semi-matching take the same value (every column's maximum is the same).
    """
    group = checks.positive_int("group", group)
    if isinstance(shift, bool) or not isinstance(shift, numbers.Integral):
        raise ValueError(f"shift must be an integer, got {shift!r}")
    s = shift % group
    return max(s, group - s) / group


def shift_ridge(group: int, shift: int) -> float:
    """Ridge score between the two groupings of :func:`shift_score` (either direction).

    Derivation: for whitened Z the best prediction of unit ``b_k`` from ``Z A_a`` has
    correlation ``||P_a b_k|| / ||b_k||`` with ``P_a`` the projector onto the column space of
    ``A_a``. The columns of ``A_a`` are orthonormal and ``b_k`` has components ``(g - s')/g``
    and ``s'/g`` on the two a-units it overlaps, so the score is
    ``sqrt((g - s')^2 + s'^2) / g``: also deflated (each system loses the within-group
    differences the other keeps), but less than the permutation score.
    """
    group = checks.positive_int("group", group)
    if isinstance(shift, bool) or not isinstance(shift, numbers.Integral):
        raise ValueError(f"shift must be an integer, got {shift!r}")
    s = shift % group
    return math.sqrt((group - s) ** 2 + s**2) / group


# --------------------------------------------------------------------------------------------
# Population scores of any pair of mixing matrices.


class PopulationScores(NamedTuple):
    """Population values (whitened latents, infinite samples) of the alignment scores of ``Y_b``
    from ``Y_a``.

    Attributes:
      permutation: best one-to-one assignment, mean correlation over ``min(Na, Nb)`` pairs.
      soft: optimal transport between uniform marginals, ``sum(P * G)``.
      semi: every unit of b takes its best unit of a (``direction="target"``).
      ridge: mean over units of b of the correlation of the best linear prediction from a.
      ridge_reverse: the same, predicting a from b.
      cka: linear CKA (:func:`population_cka`).
      rotation: the orthogonal Procrustes rotation score (:func:`population_rotation`).
    """

    permutation: float
    soft: float
    semi: float
    ridge: float
    ridge_reverse: float
    cka: float = float("nan")
    rotation: float = float("nan")


def population_correlations(A_a, A_b) -> jax.Array:
    """[Na, Nb] correlations of the units of ``Z A_a`` and ``Z A_b`` for whitened ``Z``.

    Args:
      A_a: [F, Na] mixing matrix of system a (no zero column).
      A_b: [F, Nb] mixing matrix of system b.
    """
    A_a, A_b = _check_mixing_pair(A_a, A_b)
    a = A_a / jnp.linalg.norm(A_a, axis=0)
    b = A_b / jnp.linalg.norm(A_b, axis=0)
    return jnp.matmul(a.T, b, precision=jax.lax.Precision.HIGHEST)


def population_ridge(A_x, A_y) -> jax.Array:
    """[Ny] correlation of each unit of ``Z A_y`` with its best linear prediction from ``Z A_x``.

    For whitened Z the prediction of ``Z y`` is ``Z P y`` with ``P`` the projector onto the
    column space of ``A_x``, and the correlation is ``||P y|| / ||y||`` (ridge with a vanishing
    penalty, the limit the leave-one-out choice reaches on noise-free data).
    """
    A_x, A_y = _check_mixing_pair(A_x, A_y, names=("A_x", "A_y"))
    hi = jax.lax.Precision.HIGHEST
    u, s, _ = jnp.linalg.svd(A_x, full_matrices=False)
    # Singular vectors of (numerically) zero singular values are outside the column space.
    basis = u * (s > s.max() * max(A_x.shape) * jnp.finfo(s.dtype).eps)  # [F, min(F, Nx)]
    proj = jnp.matmul(basis.T, A_y, precision=hi)
    return jnp.linalg.norm(proj, axis=0) / jnp.linalg.norm(A_y, axis=0)


def population_scores(A_a, A_b) -> PopulationScores:
    """The exact population value of every alignment score for ``Y_a = Z A_a``, ``Y_b = Z A_b``.

    Host code (scipy's assignment and the library's exact transport plan), float64.

    Args:
      A_a: [F, Na] mixing matrix of the source system.
      A_b: [F, Nb] mixing matrix of the target system.

    Returns:
      A :class:`PopulationScores`.
    """
    from scipy.optimize import linear_sum_assignment

    from superalign import matching

    G = np.asarray(population_correlations(A_a, A_b), np.float64)
    rows, cols = linear_sum_assignment(G, maximize=True)
    plan = matching.exact_plan(G)
    return PopulationScores(
        permutation=float(G[rows, cols].mean()),
        soft=float((plan * G).sum()),
        semi=float(G.max(axis=0).mean()),
        ridge=float(np.mean(population_ridge(A_a, A_b))),
        ridge_reverse=float(np.mean(population_ridge(A_b, A_a))),
        cka=population_cka(A_a, A_b),
        rotation=population_rotation(A_a, A_b),
    )


def population_cka(A_a, A_b) -> float:
    """Linear CKA of ``Z A_a`` and ``Z A_b`` for whitened ``Z`` (float64, host).

    The centred population covariances are ``A_a^T A_a``, ``A_b^T A_b`` and the cross-covariance
    ``A_a^T A_b``, so (the sample CKA's limit, biased or unbiased estimator alike)

        CKA = ||A_a^T A_b||_F^2 / (||A_a^T A_a||_F ||A_b^T A_b||_F).

    CKA does not scale units, so the column norms of the mixings matter (unlike for the
    correlation-based scores). For Gaussian ``Z`` this is also the population Pearson RSA of the
    squared-Euclidean RDMs (``Cov(u^T M u, u^T N u) = 2 tr(M S N S)`` for Gaussian ``u``); for
    other latents fourth moments enter there, and RSA has no closed form in general.

    Args:
      A_a: [F, Na] mixing matrix of system a.
      A_b: [F, Nb] mixing matrix of system b.
    """
    A_a, A_b = (np.asarray(A, np.float64) for A in _check_mixing_pair(A_a, A_b))
    cross = np.linalg.norm(A_a.T @ A_b) ** 2
    return float(cross / (np.linalg.norm(A_a.T @ A_a) * np.linalg.norm(A_b.T @ A_b)))


def population_rotation(A_a, A_b) -> float:
    """Rotation score (``superalign.rotation_score``) of ``Z A_b`` from ``Z A_a``, whitened Z.

    The z-scored units are ``Z a`` and ``Z b`` with unit-norm columns ``a``, ``b`` of the
    mixings; their cross-covariance is ``G = a^T b`` (:func:`population_correlations`) and the
    Procrustes rotation (zero padding is implicit, as in the sample score) is ``R = U V^T`` from
    the thin SVD ``G = U S V^T``. Unit j of b is predicted by ``Z a R e_j``, with correlation

        r_j = (R^T G)_jj / sqrt((R^T a^T a R)_jj),

    and the score is the mean of ``r_j`` over the units of b (0 for a unit predicted by 0). When
    a's units are orthonormal (``a^T a = I``) the denominators are 1 and the score is
    ``tr(R^T G) / Nb``, at least any permutation's ``tr(P^T G) / Nb``; with correlated units of
    a the per-unit normalisation can, in principle, reverse that.

    Args:
      A_a: [F, Na] mixing matrix of the source system.
      A_b: [F, Nb] mixing matrix of the target system.
    """
    A_a, A_b = (np.asarray(A, np.float64) for A in _check_mixing_pair(A_a, A_b))
    a = A_a / np.linalg.norm(A_a, axis=0)
    b = A_b / np.linalg.norm(A_b, axis=0)
    G = a.T @ b
    u, _, vt = np.linalg.svd(G, full_matrices=False)
    R = u @ vt
    num = (R * G).sum(0)
    var = ((a @ R) ** 2).sum(0)
    ok = var > 1e-12
    return float(np.where(ok, num / np.sqrt(np.where(ok, var, 1.0)), 0.0).mean())


def level_cka(n_features: int, n: int) -> float:
    """Linear CKA of ``Z`` against ``Z`` :func:`equal_mixing` ``(F, n)``: ``sqrt(3n / (2n^2+1))``.

    Derivation: ``A_a = I``, so ``||A_a^T A_b||_F^2 = ||A_b||_F^2 = F`` (unit-norm columns) and
    ``||A_a^T A_a||_F = sqrt(F)``. ``A_b^T A_b`` is circulant with entry ``(n - |d|) / n`` at
    cyclic offset ``|d| < n``; if ``2n - 1 <= F`` these offsets do not wrap onto each other, so
    ``||A_b^T A_b||_F^2 = F sum_{|d|<n} (n - |d|)^2 / n^2 = F (2n^2 + 1) / (3n)``. Hence
    ``CKA = F / (sqrt(F) sqrt(F (2n^2+1) / (3n)))``. It falls more slowly than the permutation
    score ``1/sqrt(n)`` (2n^2+1 < 3n^2): CKA sees the shared subspace, not the units.
    """
    n_features = checks.positive_int("n_features", n_features)
    n = _int_in("n", n, 1, (n_features + 1) // 2)
    return math.sqrt(3 * n / (2 * n * n + 1))


def level_rotation(n_features: int, n: int) -> float:
    """Rotation score of ``Z`` against ``Z`` :func:`equal_mixing` ``(F, n)`` (either direction).

    Derivation: ``a = I``, so the score is ``tr(R^T G) / F``, the mean singular value of the
    circulant ``G = A_b`` (:func:`population_rotation`). Its singular values are the moduli of
    its eigenvalues ``sum_{t<n} w^{kt} / sqrt(n)`` (``w = exp(2 pi i / F)``), a Dirichlet kernel:

        score = (n + sum_{k=1}^{F-1} |sin(pi k n / F) / sin(pi k / F)|) / (F sqrt(n)).

    From ``A_b`` to ``I`` the prediction ``a R`` is the symmetric square root of ``A_b A_b^T``,
    whose rows have norm 1, and the score is the same mean singular value.
    """
    n_features = checks.positive_int("n_features", n_features)
    n = _int_in("n", n, 1, n_features)
    k = np.arange(1, n_features)
    kernel = np.abs(np.sin(np.pi * k * n / n_features) / np.sin(np.pi * k / n_features))
    return float((n + kernel.sum()) / (n_features * np.sqrt(n)))


def shift_rotation(n_features: int, group: int, shift: int) -> float:
    """Rotation score of :func:`grouped_mixing` ``(F, g, 0)`` against ``(F, g, s)``.

    Derivation: both mixings have orthonormal columns, so the score is the mean singular value of
    ``G = ((g - s') I + s' P) / g`` (``P`` the cyclic shift of the ``m = F / g`` units), a
    circulant with eigenvalues ``((g - s') + s' exp(2 pi i k / m)) / g``:

        score = (1/m) sum_{k<m} |(g - s') + s' exp(2 pi i k / m)| / g.

    Pairs against shifted pairs (g = 2, s = 1): ``(1/m) sum_k |cos(pi k / m)|``, about
    ``2/pi = 0.64`` for large m, above the permutation score 1/2.
    """
    n_features = checks.positive_int("n_features", n_features)
    group = checks.positive_int("group", group)
    if n_features % group:
        raise ValueError(f"n_features={n_features} must be a multiple of group={group}")
    if isinstance(shift, bool) or not isinstance(shift, numbers.Integral):
        raise ValueError(f"shift must be an integer, got {shift!r}")
    s = shift % group
    m = n_features // group
    k = np.arange(m)
    return float(np.abs((group - s) + s * np.exp(2j * np.pi * k / m)).mean() / group)


def shift_cka(group: int, shift: int) -> float:
    """Linear CKA of :func:`grouped_mixing` ``(F, g, 0)`` against ``(F, g, s)``.

    Derivation: both mixings have orthonormal columns, so ``||A^T A||_F^2 = F / g`` on each side,
    and ``G = A_a^T A_b`` has one entry ``(g - s')/g`` and one ``s'/g`` per column
    (:func:`shift_score`), so ``CKA = ((g - s')^2 + s'^2) / g^2``: the square of
    :func:`shift_ridge`.
    """
    return shift_ridge(group, shift) ** 2


def _check_mixing_pair(A_a, A_b, names=("A_a", "A_b")):
    for name, A in zip(names, (A_a, A_b), strict=True):
        checks.array(name, A, ndim=2, finite=_concrete(A))
        if _concrete(A) and not np.all(np.linalg.norm(np.asarray(A), axis=0) > 0):
            raise ValueError(f"{name} must have no all-zero column, got shape {np.shape(A)}")
    if np.shape(A_a)[0] != np.shape(A_b)[0]:
        raise ValueError(
            f"{names[0]} and {names[1]} must mix the same number of features (rows), got "
            f"{np.shape(A_a)} and {np.shape(A_b)}"
        )
    dtype = jnp.promote_types(jnp.result_type(A_a, A_b), jnp.float32)
    return jnp.asarray(A_a, dtype), jnp.asarray(A_b, dtype)


# --------------------------------------------------------------------------------------------
# Recovery: random mixing with N < F, and OMP on each system.


def gaussian_mixing(key, n_features: int, n_units, *, max_units: int | None = None):
    """Random Gaussian mixing matrix with unit-norm atoms (rows), padded to ``max_units``.

    Entries are i.i.d. standard normal; columns ``>= n_units`` are zeroed and every row is then
    scaled to unit norm. As a measurement matrix (``y^T = A^T z^T``, N measurements of F
    unknowns) such a matrix satisfies the restricted isometry property of order K with high
    probability once ``N >~ K log(F / K)`` (Candes & Tao 2005; Baraniuk et al. 2008). The first
    ``n_units`` columns are the same draws for every ``n_units`` under one key.

    Args:
      key: PRNG key.
      n_features: F.
      n_units: N, the number of observed units (may be traced when ``max_units`` is given).
      max_units: static width when ``n_units`` is traced. Defaults to ``n_units``.

    Returns:
      [F, max_units] float32 matrix ``A``; ``Z A`` has zero columns past ``n_units``.
    """
    n_features = checks.positive_int("n_features", n_features)
    if max_units is None:
        max_units = checks.positive_int("n_units", n_units)
    else:
        max_units = checks.positive_int("max_units", max_units)
        if _concrete(n_units):
            _int_in("n_units", int(np.asarray(n_units)), 1, max_units)
    A = jax.random.normal(key, (n_features, max_units)) * (jnp.arange(max_units) < n_units)
    return A / jnp.linalg.norm(A, axis=1, keepdims=True)


def mixing_pair(key, n_features: int, n_units, *, max_units: int | None = None):
    """The two independent :func:`gaussian_mixing` matrices ``(A_a, A_b)`` of a recovery problem.

    :func:`recovery_problem` draws its matrices with this function from its key's second subkey.
    """
    k_a, k_b = jax.random.split(key)
    return (
        gaussian_mixing(k_a, n_features, n_units, max_units=max_units),
        gaussian_mixing(k_b, n_features, n_units, max_units=max_units),
    )


class RecoveryProblem(NamedTuple):
    """Two systems observing the same K-sparse latents (paper section 3).

    Attributes:
      Z: [M, F] whitened K-sparse latents.
      A_a: [F, max_units] mixing matrix of system a (columns past N are zero).
      A_b: [F, max_units] mixing matrix of system b.
      Y_a: [M, max_units] responses ``Z A_a``.
      Y_b: [M, max_units] responses ``Z A_b``.
    """

    Z: jax.Array
    A_a: jax.Array
    A_b: jax.Array
    Y_a: jax.Array
    Y_b: jax.Array


class Recovered(NamedTuple):
    """Latents recovered from each system by OMP, with diagnostics.

    Attributes:
      Z_hat_a: [M, F] latents recovered from ``Y_a``.
      Z_hat_b: [M, F] latents recovered from ``Y_b``.
      exact_a: fraction of rows with ``||z_hat - z|| <= 1e-3 ||z||`` for system a.
      exact_b: the same for system b.
      matched_corr: mean over features i of the correlation of ``Z_hat_a[:, i]`` and
        ``Z_hat_b[:, i]`` on all rows (the true pairing; 0 for a constant column).
    """

    Z_hat_a: jax.Array
    Z_hat_b: jax.Array
    exact_a: jax.Array
    exact_b: jax.Array
    matched_corr: jax.Array


def recovery_problem(
    key, n_samples: int, n_features: int, k, n_units, *, max_k=None, max_units=None
) -> RecoveryProblem:
    """Sample ``Z`` (:func:`sparse_latents`) and two independent Gaussian mixing matrices.

    ``Z`` uses the first subkey of ``key`` and :func:`mixing_pair` the second, so across a sweep of
    ``k`` and ``n_units`` under one key the supports are nested and the matrices share columns:
    the sweep compares settings, not draws.

    Args:
      key: PRNG key.
      n_samples: M.
      n_features: F.
      k: non-zeros per latent row (traced allowed with ``max_k``).
      n_units: N per system (traced allowed with ``max_units``).
      max_k: static bound on k for sweeps.
      max_units: static bound on N for sweeps.

    Returns:
      A :class:`RecoveryProblem`.
    """
    k_z, k_mix = jax.random.split(key)
    Z = sparse_latents(k_z, n_samples, n_features, k, max_k=max_k)
    A_a, A_b = mixing_pair(k_mix, n_features, n_units, max_units=max_units)
    hi = jax.lax.Precision.HIGHEST
    return RecoveryProblem(
        Z, A_a, A_b, jnp.matmul(Z, A_a, precision=hi), jnp.matmul(Z, A_b, precision=hi)
    )


def _column_corr(x, y):
    x = x - x.mean(0)
    y = y - y.mean(0)
    nx = jnp.sqrt((x * x).sum(0))
    ny = jnp.sqrt((y * y).sum(0))
    ok = (nx > 0) & (ny > 0)
    return jnp.where(ok, (x * y).sum(0) / jnp.where(ok, nx * ny, 1.0), 0.0)


def recover(problem: RecoveryProblem, k, *, max_k: int | None = None) -> Recovered:
    """Recover the latents of both systems of ``problem`` by OMP with ``k`` atoms per row.

    Args:
      problem: a :class:`RecoveryProblem`.
      k: atoms per row (the true sparsity; traced allowed with ``max_k``).
      max_k: static iteration count for sweeps.

    Returns:
      A :class:`Recovered`.
    """
    za = recovery.omp(problem.Y_a, problem.A_a, k, max_k=max_k).codes
    zb = recovery.omp(problem.Y_b, problem.A_b, k, max_k=max_k).codes

    def exact(z_hat):
        err = jnp.linalg.norm(z_hat - problem.Z, axis=1)
        return jnp.mean(err <= 1e-3 * jnp.linalg.norm(problem.Z, axis=1))

    return Recovered(za, zb, exact(za), exact(zb), _column_corr(za, zb).mean())


class RecoverySweep(NamedTuple):
    """One vmapped sweep over sparsity K and units N.

    Attributes:
      ks: [nK] sparsities.
      ns: [nN] unit counts.
      recovered: :class:`Recovered` with leading axes [nK, nN] (codes [nK, nN, M, F]).
    """

    ks: jax.Array
    ns: jax.Array
    recovered: Recovered


def make_recovery_sweep(
    n_samples: int, n_features: int, max_k: int, max_units: int
) -> Callable[[jax.Array, jax.Array, jax.Array], RecoverySweep]:
    """Build ``sweep(key, ks, ns)``: the recovery of every (K, N) pair in one jitted vmap.

    The grid is ``jax.vmap`` over ``ks`` of ``jax.vmap`` over ``ns`` of
    :func:`recovery_problem` + :func:`recover`, with ``max_k`` and ``max_units`` as the static
    shapes; one compile per grid shape, no Python loop.

    Args:
      n_samples: M rows of latents per grid point.
      n_features: F.
      max_k: largest K in the grid (number of OMP iterations).
      max_units: largest N in the grid (padded width).

    Returns:
      ``sweep(key, ks [nK] int, ns [nN] int) -> RecoverySweep``.
    """
    n_samples = checks.positive_int("n_samples", n_samples)
    n_features = checks.positive_int("n_features", n_features)
    max_k = _int_in("max_k", max_k, 1, n_features)
    max_units = checks.positive_int("max_units", max_units)

    def point(key, k, n):
        problem = recovery_problem(
            key, n_samples, n_features, k, n, max_k=max_k, max_units=max_units
        )
        return recover(problem, k, max_k=max_k)

    grid = jax.jit(jax.vmap(jax.vmap(point, (None, None, 0)), (None, 0, None)))

    def sweep(key, ks, ns) -> RecoverySweep:
        ks_np, ns_np = np.asarray(ks), np.asarray(ns)
        for name, v, hi in (("ks", ks_np, max_k), ("ns", ns_np, max_units)):
            if v.ndim != 1 or v.size == 0 or not np.issubdtype(v.dtype, np.integer):
                raise ValueError(f"{name} must be a non-empty 1-D integer array, got {v!r}")
            if v.min() < 1 or v.max() > hi:
                raise ValueError(f"{name} must lie in 1..{hi}, got {v.tolist()}")
        ks, ns = jnp.asarray(ks_np, jnp.int32), jnp.asarray(ns_np, jnp.int32)
        return RecoverySweep(ks, ns, grid(key, ks, ns))

    sweep.grid = grid  # the jitted function, for compile-cache checks
    return sweep
