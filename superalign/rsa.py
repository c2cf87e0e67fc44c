"""Representational similarity analysis (RSA) under the library's cross-validation protocol.

Per fold of the shared split (``PROTOCOL.md``: shuffled K folds, dead units removed once), each
system's representational dissimilarity matrix (RDM) over the test part's stimuli is computed and
the two RDMs are compared over their upper triangles (diagonal excluded). There is nothing to
fit, so only the test part is used; folds, mean and standard error are then comparable with the
other metrics'. The definitions are rsatoolbox's:

- ``rdm="correlation"``: ``1 - r`` with ``r`` the Pearson correlation of two stimulus patterns
  over the live units (``rsatoolbox.rdm.calc_rdm(..., method="correlation")``);
- ``rdm="euclidean"``: the squared Euclidean distance divided by the number of live units
  (``calc_rdm(..., method="euclidean")``, which rsatoolbox calls "squared euclidean"; neither
  comparison depends on that positive scale, so the computation leaves it out);
- ``compare="spearman"``: Pearson correlation of the average ranks (ties share the mean of their
  ranks, ``scipy.stats.rankdata``) of the two triangles (``rsatoolbox.rdm.compare(...,
  method="spearman")``); ``compare="pearson"``: Pearson correlation of the triangles themselves,
  means removed (``compare(..., method="corr")``).

Zero-variance stimulus patterns. A stimulus whose pattern is constant over the live units (an
all-zero row of a ReLU code, say) has no correlation with anything, so its correlation distances
are undefined (rsatoolbox gives NaN and drops those pairs, and refuses RDMs whose NaNs differ).
For ``rdm="correlation"`` such a stimulus is dropped from the fold's RDMs of both systems if its
pattern is constant in either system; the result reports how many stimuli each fold used.
Euclidean distances are always defined and drop nothing.

Large folds. A fold with more stimuli than ``max_stimuli`` (after the drop above) uses a seeded
subsample of ``max_stimuli`` of them, the same rows for X and Y: the first ``max_stimuli`` of the
fold's candidate rows permuted by ``numpy.random.default_rng((seed, fold))``. RDMs are
``S x S`` and the comparison sorts ``S (S - 1) / 2`` numbers per fold, so ``S`` bounds both
memory and time.
"""

from __future__ import annotations

from functools import partial
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from superalign import checks
from superalign import folds as _folds
from superalign.cka import pairwise_sum

RDMS = ("correlation", "euclidean")
COMPARISONS = ("spearman", "pearson")


class RSAResult(NamedTuple):
    """Cross-validated RSA.

    Attributes:
      folds: [K] correlation of the two RDMs of every fold's test stimuli.
      mean: mean over folds.
      sem: standard error over folds (std with ddof=1 over sqrt(K)).
      n_stimuli: [K] stimuli in every fold's RDMs (after dropping and subsampling).
      n_dropped: [K] test stimuli dropped per fold for a constant pattern (correlation RDMs).
      dead_x: column indices of X removed as dead.
      dead_y: column indices of Y removed as dead.
    """

    folds: np.ndarray
    mean: float
    sem: float
    n_stimuli: np.ndarray
    n_dropped: np.ndarray
    dead_x: np.ndarray
    dead_y: np.ndarray


_CONSTANT_ROWS_BLOCK = 1 << 14


@jax.jit
def _constant_rows(X, keep):
    """[M] whether each row is constant over the kept columns (zero variance, exactly).

    Over blocks of rows: XLA:CPU materialises the masked copies of its input before reducing
    them (two [M, N] temporaries, 1 GB at 2,048,000 x 64), a block at a time they are small.
    """
    live = keep > 0
    m = X.shape[0]
    rows = min(m, _CONSTANT_ROWS_BLOCK)

    def block(i, out):
        start = jnp.minimum(i * rows, m - rows)  # the last block overlaps the one before it
        x = jax.lax.dynamic_slice_in_dim(X, start, rows)
        lo = jnp.where(live, x, jnp.inf).min(axis=1)
        hi = jnp.where(live, x, -jnp.inf).max(axis=1)
        return jax.lax.dynamic_update_slice_in_dim(out, lo == hi, start, 0)

    return jax.lax.fori_loop(0, -(-m // rows), block, jnp.zeros(m, bool))


def upper_triangle(D: jax.Array) -> jax.Array:
    """The strictly upper triangle of an even-sized square matrix, as a [S/2, S-1] array.

    Row ``i`` of the result holds ``D[i, i+1:]`` followed by ``D[S-1-i, S-i:]`` (``S-1-i`` plus
    ``i`` entries): every pair ``i < j`` exactly once, built from gathers whose indices are
    computed in the program (no ``S^2`` index constants).

    Args:
      D: [S, S] matrix, S even.

    Returns:
      [S/2, S-1] entries ``D[i, j]``, ``i < j``.
    """
    s = D.shape[0]
    half = s // 2
    i = jnp.arange(half)[:, None]
    c = jnp.arange(s - 1)[None, :]
    first = jnp.take_along_axis(D[:half], (i + 1 + c) % s, axis=1)
    second = D[::-1][:half][:, 1:]  # row S-1-i, columns 1.. (entry c is column c + 1)
    return jnp.where(c < s - 1 - i, first, second)


def _pattern_rdm(x, keep, n_units, rdm):
    """[S, S] RDM of the rows of ``x`` ([S, N], dead columns zero, the first row a real
    stimulus) over ``n_units`` live units."""
    hi = jax.lax.Precision.HIGHEST
    if rdm == "correlation":
        x = (x - x.sum(1, keepdims=True) / n_units) * keep
        norm = jnp.sqrt((x * x).sum(1, keepdims=True))
        x = x / jnp.where(norm > 0, norm, 1.0)
        return 1.0 - jnp.matmul(x, x.T, precision=hi)
    # rsatoolbox's formula, on the patterns minus the first stimulus's pattern: distances do not
    # change, and |x_i|^2 + |x_j|^2 - 2 x_i . x_j no longer cancels a large common offset (raw
    # recordings at 1e4 with a spread of 0.1 lost every digit). The shift is exact for the
    # integer-valued patterns whose distances tie exactly, and for every pattern close to the
    # first; centring the columns on their mean instead would round integer patterns, and their
    # distances would lose their ties (and Spearman's average ranks with them).
    x = x - x[:1]
    sq = (x * x).sum(1)
    # Not divided by the number of units here: a positive scale changes neither comparison, and
    # a division fused into the program can round equal distances differently (vectorised and
    # scalar code paths), breaking exact ties.
    return sq[:, None] + sq[None, :] - 2.0 * jnp.matmul(x, x.T, precision=hi)


def _doubled_centred_ranks(v, valid):
    """Average ranks of the valid entries of ``v``, doubled and centred, as exact integers.

    Invalid entries are ranked after every valid one (set to +inf), so the valid entries' ranks
    are their ranks among the valid entries alone. A tie group at sorted positions ``l..r``
    (0-based) has average rank ``(l + r + 2) / 2``; twice that minus twice the mean rank
    ``n + 1`` is the integer ``l + r + 1 - n``, exact in float32 up to 2^24 (the ``.5`` of
    average ranks is not, above 2^23 entries).
    """
    v = jnp.where(valid, v, jnp.inf)
    order = jnp.argsort(v)
    s = v[order]
    pos = jnp.arange(v.shape[0], dtype=jnp.int32)
    new = jnp.concatenate([jnp.ones((1,), bool), s[1:] != s[:-1]])
    last = jnp.concatenate([s[1:] != s[:-1], jnp.ones((1,), bool)])
    start = jax.lax.cummax(jnp.where(new, pos, 0))
    end = jax.lax.cummin(jnp.where(last, pos, v.shape[0]), reverse=True)
    n = valid.sum(dtype=jnp.int32)
    doubled = jnp.zeros_like(pos).at[order].set(start + end + 1 - n)
    return jnp.where(valid, doubled, 0).astype(v.dtype)


def _doubled_centred_ranks_host(v, valid):
    """:func:`_doubled_centred_ranks` by scipy's ``rankdata`` on the host (for CPU backends).

    The same integers: XLA's sort on a CPU is an order of magnitude slower than numpy's (0.23 s
    against 0.017 s for 500,000 floats on a 2-core CPU).
    """
    from scipy.stats import rankdata

    v, valid = np.asarray(v), np.asarray(valid)
    out = np.zeros(v.shape, v.dtype)
    out[valid] = 2.0 * rankdata(v[valid]) - (valid.sum() + 1)  # average ranks: exact halves
    return out


def _pearson(u, v, w):
    """Weighted Pearson correlation of ``u`` and ``v`` (``w`` 1.0/0.0), tree sums.

    The two norms are taken apart: Spearman's doubled ranks of a fold of S stimuli reach
    ``S (S - 1) / 2`` in magnitude, and their sum of squares about ``S^6 / 24``, so the product
    of the two sums overflows float32 from about 2,800 stimuli on (every fold then scored 0).
    """
    total = pairwise_sum
    n = total(w)
    u = (u - total(u * w) / n) * w
    v = (v - total(v * w) / n) * w
    return total(u * v) / (jnp.sqrt(total(u * u)) * jnp.sqrt(total(v * v)))


def _triangles(X, Y, keep_x, keep_y, idx, m, rdm):
    """The upper triangles of one fold's two RDMs and of its real-pair mask, [S/2, S-1] each."""
    dtype = X.dtype
    keep_x, keep_y = keep_x.astype(dtype), keep_y.astype(dtype)
    dx = _pattern_rdm(X[idx] * keep_x, keep_x, keep_x.sum(), rdm)
    dy = _pattern_rdm(Y[idx] * keep_y, keep_y, keep_y.sum(), rdm)
    return upper_triangle(dx), upper_triangle(dy), upper_triangle(m[:, None] & m[None, :])


@partial(jax.jit, static_argnames=("rdm", "compare"))
def _rsa_folds(X, Y, keep_x, keep_y, index, mask, rdm, compare):
    """[K] RDM correlation of every fold; ``index``/``mask`` [K, S] the rows of each fold."""

    def fold(args):
        u, v, pair = _triangles(X, Y, keep_x, keep_y, *args, rdm)
        if compare == "spearman":
            u = _doubled_centred_ranks(u.ravel(), pair.ravel()).reshape(u.shape)
            v = _doubled_centred_ranks(v.ravel(), pair.ravel()).reshape(v.shape)
        return _pearson(u, v, pair.astype(X.dtype))

    # One fold at a time: one fold's RDMs and sort buffers in memory.
    return jax.lax.map(fold, (index, mask))


_fold_triangles = jax.jit(_triangles, static_argnames=("rdm",))
_pearson_jit = jax.jit(_pearson)


def _rsa_folds_host_ranks(X, Y, keep_x, keep_y, index, mask, rdm):
    """:func:`_rsa_folds` for Spearman with the ranks by scipy on the host (CPU backends).

    XLA's sort on a CPU is an order of magnitude slower than numpy's, and the ranks are exact
    integers either way. Each fold's triangles come from one jitted program, are ranked on the
    host (no copy on a CPU) and correlated by another: both programs are plain XLA, so the
    persistent compilation cache keeps them (a host callback inside a program would not be).
    """
    scores = []
    for idx, m in zip(index, mask, strict=True):
        u, v, pair = (np.asarray(a) for a in _fold_triangles(X, Y, keep_x, keep_y, idx, m, rdm))
        valid = pair.ravel()
        u = _doubled_centred_ranks_host(u.ravel(), valid).reshape(u.shape)
        v = _doubled_centred_ranks_host(v.ravel(), valid).reshape(v.shape)
        scores.append(_pearson_jit(u, v, pair.astype(u.dtype)))
    return jnp.stack(scores)


def _check_choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _fold_rows(p: _folds.Prepared, drop, max_stimuli: int, seed: int):
    """Per fold the rows of its RDMs (sorted) and the number of rows dropped."""
    rows, dropped = [], []
    for k, part in enumerate(p.folds.parts):
        part = np.sort(part)
        kept = part[~drop[part]] if drop is not None else part
        dropped.append(len(part) - len(kept))
        if len(kept) < 3:
            which = "" if drop is None else " with a non-constant pattern in both X and Y"
            raise ValueError(
                f"fold {k} has {len(kept)} test stimuli{which} (of {len(part)}); comparing RDMs "
                "needs at least 3"
            )
        if len(kept) > max_stimuli:
            perm = np.random.default_rng((seed, k)).permutation(len(kept))
            kept = np.sort(kept[perm[:max_stimuli]])
        rows.append(kept)
    return rows, np.array(dropped)


@_folds.full_precision
def rsa(
    X,
    Y,
    *,
    n_folds: int = 5,
    seed: int = 0,
    rdm: Literal["correlation", "euclidean"] = "correlation",
    compare: Literal["spearman", "pearson"] = "spearman",
    max_stimuli: int = 5000,
) -> RSAResult:
    """Cross-validated RSA: the correlation of the two systems' RDMs on every fold's test part.

    Args:
      X: [M, Nx] responses of system x (numpy or jax).
      Y: [M, Ny] responses of system y.
      n_folds: number of shuffled folds K.
      seed: seed of the shuffle (scikit-learn ``KFold`` ``random_state``) and of the subsample
        of folds larger than ``max_stimuli``.
      rdm: dissimilarity, "correlation" (1 - Pearson r of stimulus patterns) or "euclidean"
        (squared distance over the number of units), as rsatoolbox defines them.
      compare: "spearman" (average ranks) or "pearson" correlation of the upper triangles.
      max_stimuli: most stimuli per fold RDM (at least 3); larger folds are subsampled.

    Returns:
      An :class:`RSAResult`.
    """
    _check_choice("rdm", rdm, RDMS)
    _check_choice("compare", compare, COMPARISONS)
    max_stimuli = checks.positive_int("max_stimuli", max_stimuli)
    if max_stimuli < 3:
        raise ValueError(f"max_stimuli must be at least 3, got {max_stimuli}")
    p = _folds.prepare(X, Y, n_folds, seed)
    keep_x = np.zeros(p.X.shape[1], np.float32)
    keep_x[p.units_x.live] = 1.0
    keep_y = np.zeros(p.Y.shape[1], np.float32)
    keep_y[p.units_y.live] = 1.0
    keep_x, keep_y = jnp.asarray(keep_x), jnp.asarray(keep_y)
    drop = None
    if rdm == "correlation":
        drop = np.asarray(_constant_rows(p.X, keep_x)) | np.asarray(_constant_rows(p.Y, keep_y))
    rows, dropped = _fold_rows(p, drop, max_stimuli, seed)
    # One shape per input shape: every fold padded to the largest possible size, made even for
    # upper_triangle; padding rows are masked out of every pair.
    size = min(int(p.folds.sizes.max()), max_stimuli)
    size += size % 2
    index = np.zeros((len(rows), size), np.int32)
    mask = np.zeros((len(rows), size), bool)
    for k, r in enumerate(rows):
        index[k, : len(r)] = r
        mask[k, : len(r)] = True
    on_cpu = all(d.platform == "cpu" for d in getattr(p.X, "devices", jax.devices)())
    if compare == "spearman" and on_cpu:
        scores = _rsa_folds_host_ranks(p.X, p.Y, keep_x, keep_y, index, mask, rdm)
    else:
        scores = _rsa_folds(
            p.X, p.Y, keep_x, keep_y, jnp.asarray(index), jnp.asarray(mask), rdm, compare
        )
    folds, mean, sem = _folds.summary(scores)
    n_stimuli = np.array([len(r) for r in rows])
    return RSAResult(folds, mean, sem, n_stimuli, dropped, p.units_x.dead, p.units_y.dead)
