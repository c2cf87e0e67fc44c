"""Cross-validation machinery shared by the alignment metrics.

The protocol (``PROTOCOL.md``, "Alignment protocol"): shuffled K folds with a fixed seed; a unit
that is constant in the train part or the test part of any fold is dead and removed once, before
scoring; per fold the columns are centred and scaled to unit norm, the train part with train
statistics and the test part with test statistics, so correlations are inner products.

Dead units. A unit that is all zero on the rows of some fold part (it never fires there) has no
correlation with anything there; neither has a unit that is constant at any other value (zero
variance: a bias-only unit, a saturated unit, a constant column of ones). Every metric treats
both the same: the unit is removed from X or Y before scoring, reported in the result's
``dead_x`` / ``dead_y``, and a pair scores as if it had never been there (:func:`live_units`).
Inputs pass through :func:`check_pair` first: numpy or jax arrays, lists or tuples of real
numbers (bool counts as 0 / 1); complex, non-numeric, NaN and Inf entries are refused.

Correlations are never formed from the raw rows of each fold's train part. Each row belongs to
exactly one fold part (the test part of one fold), so one blocked pass over the rows gives, per
part, the count, mean and centred cross products; the train statistics of fold k are the pooled
statistics of the other parts (Chan et al.'s parallel formula). That costs one pass over the data
instead of K, keeps memory at ``[K, Na, Nb]`` whatever the number of rows, and is accurate in
float32: every part is centred with its own two-pass mean, blocks are accumulated with Kahan
compensation, and the pooling corrections are products of small mean differences.
"""

from __future__ import annotations

import functools
import threading
import weakref
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from superalign import checks


def full_precision(fn):
    """Run ``fn`` with float32 matrix products at full float32 precision.

    On GPUs and TPUs, JAX's default precision for float32 products is lower (TF32 or bfloat16
    passes: about 1e-3 relative error on an H100); the metrics need float32 throughout (the
    leave-one-out alpha choice resolves relative differences far below that). On the CPU this
    changes nothing: its float32 products are always full precision.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with jax.default_matmul_precision("highest"):
            return fn(*args, **kwargs)

    return wrapper


class Folds(NamedTuple):
    """A shuffled K-fold split: the test part of every fold (the train part is the rest).

    Attributes:
      parts: K arrays of test row indices, in scikit-learn's order.
      sizes: [K] rows per part (scikit-learn's fold sizes).
    """

    parts: tuple
    sizes: np.ndarray


class FoldMoments(NamedTuple):
    """Centred second moments of X and Y per fold part (the test part of each fold).

    The means are taken relative to a shift, one row of the data (exact in float32): the part
    means of raw values far from zero (1e4, varying by 0.03) then differ from each other by
    numbers float32 holds, and the train statistics pooled from them (:func:`fold_correlations`)
    keep the accuracy of the test ones. Only differences of means enter any correlation; the
    absolute means are ``shift_x + mean_x`` (add them in float64 to keep that accuracy).

    Attributes:
      count: [K] rows per part.
      mean_x: [K, Na] column means of X per part, minus ``shift_x``.
      mean_y: [K, Nb] column means of Y per part, minus ``shift_y``.
      ss_x: [K, Na] centred sums of squares of X per part.
      ss_y: [K, Nb] centred sums of squares of Y per part.
      cross: [K, Na, Nb] centred cross products X^T Y per part.
      gram_x: [K, Na, Na] centred cross products X^T X per part, or None when not asked for.
      shift_x: [Na] the shift of X's columns (None: 0).
      shift_y: [Nb] the shift of Y's columns (None: 0).
    """

    count: jax.Array
    mean_x: jax.Array
    mean_y: jax.Array
    ss_x: jax.Array
    ss_y: jax.Array
    cross: jax.Array
    gram_x: jax.Array | None = None
    shift_x: jax.Array | None = None
    shift_y: jax.Array | None = None


class LiveUnits(NamedTuple):
    """Result of the dead-unit rule for one matrix.

    Attributes:
      live: [n_live] int indices of the kept columns.
      dead: [n_dead] int indices of the removed columns.
    """

    live: np.ndarray
    dead: np.ndarray


def kfold_test_indices(n_rows: int, n_folds: int, seed: int) -> list[np.ndarray]:
    """Test indices of a shuffled K-fold split, identical to scikit-learn's.

    ``sklearn.model_selection.KFold(n_folds, shuffle=True, random_state=seed)`` shuffles
    ``arange(n_rows)`` with ``RandomState(seed)`` and cuts it into consecutive parts, the first
    ``n_rows % n_folds`` of them one row longer. This reproduces it without scikit-learn.

    Args:
      n_rows: number of stimuli M.
      n_folds: number of folds K.
      seed: integer seed of the shuffle.

    Returns:
      K arrays of test row indices (in shuffled order); fold k trains on all other rows.
    """
    order = np.arange(n_rows)
    np.random.RandomState(seed).shuffle(order)
    sizes = np.full(n_folds, n_rows // n_folds, dtype=int)
    sizes[: n_rows % n_folds] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [order[bounds[k] : bounds[k + 1]] for k in range(n_folds)]


def block_rows_for(n_folds: int, width: int, part_rows: int, budget: int = 1 << 24) -> int:
    """Rows per block so that one block of every part holds about ``budget`` numbers."""
    rows = budget // max(1, n_folds * width)
    rows = int(np.clip(rows, 256, 8192))
    rows = 1 << int(np.floor(np.log2(rows)))
    return int(min(rows, 1 << int(np.ceil(np.log2(max(part_rows, 1))))))


def make_folds(n_rows: int, n_folds: int, seed: int) -> Folds:
    """Shuffled K-fold split of ``n_rows`` stimuli (validated; see :func:`kfold_test_indices`).

    The split is remembered (its arrays are read-only): every metric of an experiment asks for
    the same one, and shuffling millions of row indices takes a noticeable fraction of a second.
    """
    check_fold_counts(n_rows, n_folds)
    return _split(int(n_rows), int(n_folds), _check_seed(seed))


@functools.lru_cache(maxsize=8)
def _split(n_rows: int, n_folds: int, seed: int) -> Folds:
    parts = kfold_test_indices(n_rows, n_folds, seed)
    sizes = np.array([len(p) for p in parts])
    for a in (*parts, sizes):
        a.flags.writeable = False
    return Folds(tuple(parts), sizes)


def blocked(folds: Folds, block_rows: int) -> tuple[jax.Array, jax.Array]:
    """Lay the parts out as padded row blocks for the scans.

    Args:
      folds: the split.
      block_rows: rows per block B.

    Returns:
      ``(index, mask)``, each [K, n_blocks, B]: row indices of every part in increasing order
      (padding points at row 0) and a mask that is True for real rows.
    """
    n_folds = len(folds.parts)
    n_blocks = -(-int(folds.sizes.max()) // block_rows)
    index = np.zeros((n_folds, n_blocks * block_rows), dtype=np.int32)
    mask = np.zeros(index.shape, dtype=bool)
    for k, part in enumerate(folds.parts):
        # Sorted: the blocks then gather rows in memory order (about 15% faster passes than in
        # shuffled order). Only the order of summation changes.
        index[k, : len(part)] = np.sort(part)
        mask[k, : len(part)] = True
    shape = (n_folds, n_blocks, block_rows)
    return jnp.asarray(index.reshape(shape)), jnp.asarray(mask.reshape(shape))


def check_fold_counts(n_rows: int, n_folds) -> int:
    """Raise unless ``n_folds`` >= 2 and every fold has at least 2 rows."""
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    if n_rows < n_folds:
        raise ValueError(
            f"n_folds={n_folds} is larger than the number of stimuli (rows of X) {n_rows}"
        )
    if n_rows // n_folds < 2:
        raise ValueError(
            f"n_folds={n_folds} leaves fewer than 2 rows per fold for {n_rows} stimuli "
            f"(rows of X); need at least {2 * n_folds} rows"
        )
    return int(n_folds)


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not (0 <= seed < 2**32):
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    return int(seed)


def check_pair(X, Y) -> tuple[jax.Array, jax.Array]:
    """Validate a pair of response matrices and return them as floating jax arrays.

    Numpy and jax arrays, Python lists and tuples are accepted. Integer and bool entries are cast
    to float (bool as 0.0 / 1.0: binary responses are valid data); complex and non-numeric
    entries, NaN and Inf are refused.

    Args:
      X: [M, Na] source responses.
      Y: [M, Nb] target responses.
    """
    X = checks.array("X", X, ndim=2)
    Y = checks.array("Y", Y, ndim=2)
    if np.shape(X)[0] != np.shape(Y)[0]:
        raise ValueError(
            f"X and Y must have the same number of stimuli (rows), got X {np.shape(X)} "
            f"and Y {np.shape(Y)}"
        )
    for name, a in (("X", X), ("Y", Y)):
        if np.shape(a)[1] < 1:
            raise ValueError(f"{name} must have at least one unit (column), got {np.shape(a)}")
    # device_put copies a numpy array once; jnp.asarray would hold a second, temporary copy.
    X = X if isinstance(X, jax.Array) else jax.device_put(np.asarray(X))
    Y = Y if isinstance(Y, jax.Array) else jax.device_put(np.asarray(Y))
    dtype = jnp.promote_types(jnp.result_type(X, Y), jnp.float32)
    return X.astype(dtype), Y.astype(dtype)


@jax.jit
def _part_ranges(X: jax.Array, index: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[K, N] minimum and maximum of every column over every fold part."""

    def step(carry, block):
        lo, hi = carry
        idx, m = block
        rows = X[idx]  # [K, B, N]
        m = m[..., None]
        lo = jnp.minimum(lo, jnp.where(m, rows, jnp.inf).min(axis=1))
        hi = jnp.maximum(hi, jnp.where(m, rows, -jnp.inf).max(axis=1))
        return (lo, hi), None

    k, n = index.shape[0], X.shape[1]
    init = (jnp.full((k, n), jnp.inf, X.dtype), jnp.full((k, n), -jnp.inf, X.dtype))
    (lo, hi), _ = jax.lax.scan(step, init, (jnp.swapaxes(index, 0, 1), jnp.swapaxes(mask, 0, 1)))
    return lo, hi


def live_units(name: str, X, folds: Folds) -> LiveUnits:
    """Apply the dead-unit rule to the columns of ``X``.

    A column is dead if it is constant (zero variance) on the test part or the train part of any
    fold: all zero (a unit that never fires there) or any other constant value. Its correlation
    with anything is undefined there, so every metric removes it, once, before scoring. Every
    train part is a union of other test parts, and a column constant on a union is constant on
    each of its parts, so that is the same as: constant on some part.

    Args:
      name: argument name for error messages.
      X: [M, N] responses.
      folds: the split.

    Returns:
      A :class:`LiveUnits`; raises ``ValueError`` if no column is live.
    """
    if checks.is_small_concrete(X):
        x = np.asarray(X)
        lo = np.stack([x[part].min(0) for part in folds.parts])
        hi = np.stack([x[part].max(0) for part in folds.parts])
    else:
        block = block_rows_for(len(folds.sizes), np.shape(X)[1], int(folds.sizes.max()))
        lo, hi = (np.asarray(a) for a in _part_ranges(X, *blocked(folds, block)))
    dead = (lo == hi).any(axis=0)
    live = np.flatnonzero(~dead)
    if live.size == 0:
        raise ValueError(
            f"{name} has no live unit: all {np.shape(X)[1]} columns are constant (all zero, or "
            "another constant value) on the train or test rows of some fold"
        )
    return LiveUnits(live, np.flatnonzero(dead))


def kahan_add(total, comp, value):
    """One step of Kahan's compensated summation: ``(total, comp)`` after adding ``value``.

    Accumulating float32 block sums this way keeps the rounding error of a long sum at about one
    unit in the last place, independent of the number of blocks.
    """
    y = value - comp
    t = total + y
    return t, (t - total) - y


@partial(jax.jit, static_argnames=("with_gram_x",))
def fold_moments(
    X: jax.Array,
    Y: jax.Array,
    live_x: jax.Array,
    live_y: jax.Array,
    index,
    mask,
    with_gram_x: bool = False,
    keep_x: jax.Array | None = None,
    keep_y: jax.Array | None = None,
) -> FoldMoments:
    """Per-part centred moments of the live columns of X and Y, in row blocks.

    Args:
      X: [M, Na_all] source responses.
      Y: [M, Nb_all] target responses.
      live_x: [Na] columns of X to keep.
      live_y: [Nb] columns of Y to keep.
      index: [K, n_blocks, B] row indices of every part (``Folds.index``).
      mask: [K, n_blocks, B] real-row mask (``Folds.mask``).
      with_gram_x: also accumulate X^T X per part (``FoldMoments.gram_x``).
      keep_x: [Na] optional 1.0/0.0 weight of every gathered column of X; a column with weight 0
        is treated as all zero (its moments are 0, its correlations 0). With ``live_x`` padded
        to a fixed width and ``keep_x`` zero on the padding, the shapes (and so the compiled
        code) depend on the input widths only, not on how many units are dead.
      keep_y: [Nb] the same for Y.

    Returns:
      A :class:`FoldMoments` for the kept columns, shifted by the first row of the first part.
    """
    dtype = X.dtype
    hi = jax.lax.Precision.HIGHEST
    na, nb = live_x.shape[0], live_y.shape[0]

    def kept(x, keep):
        return x if keep is None else x * keep.astype(dtype)

    first = index[0, 0, 0]  # parts are never empty: a real row
    shift_x, shift_y = kept(X[first][live_x], keep_x), kept(Y[first][live_y], keep_y)

    def rows(idx, m):
        w = m[:, None].astype(dtype)
        x = (kept(X[idx][:, live_x], keep_x) - shift_x) * w
        y = (kept(Y[idx][:, live_y], keep_y) - shift_y) * w
        return x, y, w

    def part(blocks):
        """Moments of one part from its row blocks ([n_blocks, B] indices and mask)."""

        def sum_step(carry, block):
            (sx, cx), (sy, cy) = carry
            x, y, _ = rows(*block)
            return (kahan_add(sx, cx, x.sum(0)), kahan_add(sy, cy, y.sum(0))), None

        zx, zy = jnp.zeros((na,), dtype), jnp.zeros((nb,), dtype)
        ((sx, _), (sy, _)), _ = jax.lax.scan(sum_step, ((zx, zx), (zy, zy)), blocks)
        count = blocks[1].sum().astype(dtype)
        mx, my = sx / count, sy / count

        def moment_step(carry, block):
            x, y, w = rows(*block)
            x = (x - mx) * w
            y = (y - my) * w
            values = [x.sum(0), y.sum(0), (x * x).sum(0), (y * y).sum(0)]
            values.append(jnp.matmul(x.T, y, precision=hi))
            if with_gram_x:
                values.append(jnp.matmul(x.T, x, precision=hi))
            new = [kahan_add(acc, comp, v) for (acc, comp), v in zip(carry, values, strict=True)]
            return tuple(new), None

        zeros = [zx, zy, zx, zy, jnp.zeros((na, nb), dtype)]
        if with_gram_x:
            zeros.append(jnp.zeros((na, na), dtype))
        acc, _ = jax.lax.scan(moment_step, tuple((z, z) for z in zeros), blocks)
        (dx, _), (dy, _), (qx, _), (qy, _), (qxy, _) = acc[:5]
        # Second pass of the two-pass mean: remove what the first mean missed.
        out = [
            count,
            mx + dx / count,
            my + dy / count,
            qx - dx * dx / count,
            qy - dy * dy / count,
            qxy - jnp.outer(dx, dy) / count,
        ]
        if with_gram_x:
            out.append(acc[5][0] - jnp.outer(dx, dx) / count)
        return tuple(out)

    # One part at a time: the accumulators are [Na, Nb], not [K, Na, Nb].
    out = jax.lax.map(part, (index, mask))
    return FoldMoments(*out[:6], out[6] if with_gram_x else None, shift_x, shift_y)


def safe_rsqrt(ss):
    """``1 / sqrt(ss)`` where ``ss > 0``, else 0 (sums of squares of columns)."""
    # A live column has positive variance in every part; the guard only keeps an underflowed
    # sum of squares from turning into NaN (its correlations become 0).
    return jnp.where(ss > 0, jax.lax.rsqrt(jnp.where(ss > 0, ss, 1.0)), 0.0)


def fold_correlations(moments: FoldMoments, k) -> tuple[jax.Array, jax.Array]:
    """Train and test correlation matrices of fold ``k`` from per-part moments.

    The train part pools every part but k: sums of centred products plus ``n_j`` times the
    outer product of each part's mean offset from the pooled mean.

    Args:
      moments: per-part moments from :func:`fold_moments`.
      k: fold index (may be traced).

    Returns:
      ``(train, test)``, each [Na, Nb] Pearson correlations.
    """
    n_parts = moments.count.shape[0]
    keep = (jnp.arange(n_parts) != k).astype(moments.cross.dtype)
    w = keep * moments.count
    mean_x = jnp.einsum("j,ja->a", w, moments.mean_x) / w.sum()
    mean_y = jnp.einsum("j,jb->b", w, moments.mean_y) / w.sum()
    dx = moments.mean_x - mean_x
    dy = moments.mean_y - mean_y
    hi = jax.lax.Precision.HIGHEST
    cross = jnp.einsum("j,jab->ab", keep, moments.cross, precision=hi) + jnp.einsum(
        "j,ja,jb->ab", w, dx, dy, precision=hi
    )
    ss_x = keep @ moments.ss_x + w @ (dx * dx)
    ss_y = keep @ moments.ss_y + w @ (dy * dy)
    train = cross * safe_rsqrt(ss_x)[:, None] * safe_rsqrt(ss_y)[None, :]
    test = (
        moments.cross[k]
        * safe_rsqrt(moments.ss_x[k])[:, None]
        * safe_rsqrt(moments.ss_y[k])[None, :]
    )
    return train, test


class Prepared(NamedTuple):
    """Validated inputs of a cross-validated metric."""

    X: jax.Array
    Y: jax.Array
    folds: Folds
    units_x: LiveUnits
    units_y: LiveUnits
    # (n_folds, seed) of ``folds`` when X and Y are the caller's own jax arrays (which cannot
    # change, so what is computed from them may be remembered: see moments_of), else None.
    split: tuple[int, int] | None = None


_LIVE = checks.ArrayMemo()  # live units of jax arrays, per split (see prepare)


def prepare(X, Y, n_folds: int, seed: int) -> Prepared:
    """Validate ``X``, ``Y``, ``n_folds`` and ``seed``; split and apply the dead-unit rule.

    Every ``ValueError`` of the metrics' inputs is raised here, before any scoring work.
    """
    given = (X, Y)
    X, Y = check_pair(X, Y)
    check_fold_counts(X.shape[0], n_folds)
    seed = _check_seed(seed)
    split = (int(n_folds), seed) if X is given[0] and Y is given[1] else None
    folds = make_folds(X.shape[0], n_folds, seed)
    # The same split (rows, n_folds, seed) gives the same live units of the same jax array.
    # Copies: the results hand these arrays to the caller.
    key = ("live units", n_folds, seed)
    units_x = _LIVE.get(X, key, lambda: live_units("X", X, folds))
    units_y = _LIVE.get(Y, key, lambda: live_units("Y", Y, folds))
    units = (LiveUnits(*(a.copy() for a in u)) for u in (units_x, units_y))
    return Prepared(X, Y, folds, *units, split)


def padded_live(live: np.ndarray, width: int) -> tuple[jax.Array, jax.Array]:
    """The live columns padded to ``width``: ``(index [width] int32, keep [width] float32)``.

    The live columns come first, in order; the padding repeats column 0 with weight 0. Metrics
    computed on these have one shape per input width (one compile), and the first
    ``len(live)`` rows/columns of their results are the live units.
    """
    n = len(live)
    index = np.zeros(width, np.int32)
    index[:n] = live
    keep = np.zeros(width, np.float32)
    keep[:n] = 1.0
    return jnp.asarray(index), jnp.asarray(keep)


# Moments of pairs of jax arrays, per split: X -> {Y -> FoldMoments}, for as long as both exist.
_MOMENTS = checks.ArrayMemo()
# Up to this size (the [K, Na, Na + Nb] products in float32), a pair's moments are remembered.
SHARED_MOMENTS_BYTES = 64 << 20
_PAIR_LOCKS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_PAIR_LOCKS_GUARD = threading.Lock()


def moments_of(p: Prepared, *, with_gram_x: bool = False) -> FoldMoments:
    """Per-part moments of a prepared pair at the full input widths, dead columns zeroed.

    Row ``i`` / column ``j`` of the result is live unit ``i`` of X / ``j`` of Y for
    ``i < len(p.units_x.live)``, ``j < len(p.units_y.live)``; the rest is zero padding (see
    :func:`padded_live`). Row blocks are sized for memory.

    Metrics called in turn on the same jax arrays (matching, ridge and the rotation score of one
    condition) share one pass over the rows: where the products fit in
    :data:`SHARED_MOMENTS_BYTES`, the moments are computed once per pair and split, with
    ``gram_x`` included, and remembered while both arrays exist (calls on other threads wait for
    the one computing them). Larger pairs, and other inputs (numpy arrays, lists, jax arrays
    cast to float), get exactly what they ask for.
    """
    n_folds, na, nb = len(p.folds.sizes), p.X.shape[1], p.Y.shape[1]
    if p.split is None or 4 * n_folds * na * (na + nb) > SHARED_MOMENTS_BYTES:
        return _pair_moments(p, with_gram_x)
    with _PAIR_LOCKS_GUARD:
        lock = _PAIR_LOCKS.setdefault((id(p.X), id(p.Y), p.split), threading.Lock())
    with lock:
        of_x = _MOMENTS.get(p.X, ("moments", *p.split), checks.ArrayMemo)
        return of_x.get(p.Y, "moments", lambda: _pair_moments(p, True))


def _pair_moments(p: Prepared, with_gram_x: bool) -> FoldMoments:
    na, nb = p.X.shape[1], p.Y.shape[1]
    width = (2 * na if with_gram_x else na) + nb
    block = block_rows_for(len(p.folds.sizes), width, int(p.folds.sizes.max()))
    live_x, keep_x = padded_live(p.units_x.live, na)
    live_y, keep_y = padded_live(p.units_y.live, nb)
    return fold_moments(
        p.X,
        p.Y,
        live_x,
        live_y,
        *blocked(p.folds, block),
        with_gram_x=with_gram_x,
        keep_x=keep_x,
        keep_y=keep_y,
    )


def keep_masks(p: Prepared) -> tuple[jax.Array, jax.Array]:
    """[Na], [Nb] weights of the columns of :func:`moments_of` (1.0 live, 0.0 padding)."""
    keep_x = padded_live(p.units_x.live, p.X.shape[1])[1]
    return keep_x, padded_live(p.units_y.live, p.Y.shape[1])[1]


def summary(scores) -> tuple[np.ndarray, float, float]:
    """Per-fold scores as numpy, their mean and standard error (std ddof=1 / sqrt(K))."""
    scores = np.asarray(scores, dtype=np.float64)
    return scores, float(scores.mean()), float(scores.std(ddof=1) / np.sqrt(len(scores)))
