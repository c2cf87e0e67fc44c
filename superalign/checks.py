"""Input validation shared by the library: every check raises ``ValueError`` naming the argument,
what it got and what was expected, before any work starts."""

from __future__ import annotations

import numbers
import weakref

import jax
import jax.numpy as jnp
import numpy as np


class ArrayMemo:
    """Facts about jax arrays, remembered for as long as each array exists.

    A jax array cannot change, so what was computed from it (all entries finite; which columns
    are constant on which fold parts) holds for the life of the object. Metrics called in turn on
    the same arrays (every metric of every condition of an experiment) then compute it once.
    Numpy arrays (they can change in place), lists and traced arrays are never remembered.
    """

    def __init__(self):
        self._entries: dict = {}

    def get(self, x, key, compute):
        """``compute()``, or what it returned for the same ``x`` and hashable ``key`` before."""
        if not isinstance(x, jax.Array) or isinstance(x, jax.core.Tracer):
            return compute()
        entry = (id(x), key)
        hit = self._entries.get(entry)
        if hit is not None and hit[0]() is x:
            return hit[1]
        value = compute()  # an exception stores nothing
        forget = self._entries.pop
        self._entries[entry] = (weakref.ref(x, lambda _: forget(entry, None)), value)
        return value


_FINITE = ArrayMemo()
# Up to this many entries, facts about a jax array are computed on the host (numpy): the same
# answers, without compiling a pass for every new shape.
HOST_ELEMENTS = 1 << 20


def is_small_concrete(x) -> bool:
    """Whether ``x`` is a concrete (not traced) array of at most :data:`HOST_ELEMENTS` entries."""
    return not isinstance(x, jax.core.Tracer) and np.size(x) <= HOST_ELEMENTS


@jax.jit
def _all_finite(x) -> jax.Array:
    # One fused pass; op by op, jnp.isfinite(x) would first write an [M, N] array of bools.
    return jnp.isfinite(x).all()


def positive_int(name: str, value) -> int:
    """Return ``value`` as an int, or raise if it is not an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _real(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real)


def positive_float(name: str, value) -> float:
    """Return ``value`` as a float, or raise if it is not a finite number > 0."""
    if not (_real(value) and np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def nonnegative_float(name: str, value) -> float:
    """Return ``value`` as a float, or raise if it is not a finite number >= 0."""
    if not (_real(value) and np.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def probability(name: str, value) -> float:
    """Return ``value`` as a float in (0, 1], or raise."""
    if not (_real(value) and 0 < value <= 1):
        raise ValueError(f"{name} must be a probability in (0, 1], got {value!r}")
    return float(value)


def array(name: str, x, *, ndim: int | None = None, width: int | None = None, finite: bool = True):
    """Check type, rank, last-axis width and finiteness of an array.

    Python lists and tuples are accepted and converted with ``np.asarray``. The element type must
    be real: integers, floats (bfloat16 included) and bool pass (bool is a number here, 0 or 1;
    callers cast it to float with everything else), complex numbers are refused (their imaginary
    part would be dropped silently by a cast to float), and so are non-numeric types (object,
    str, datetime).

    Args:
      name: argument name used in the error message.
      x: numpy or jax array (traced ones too), list or tuple.
      ndim: required rank, or None for any.
      width: required size of the last axis, or None for any.
      finite: whether NaN and Inf are refused (needs concrete values).

    Returns:
      ``x`` unchanged, or as a numpy array if it was a list or tuple.
    """
    if isinstance(x, (list, tuple)):
        try:
            x = np.asarray(x)
        except ValueError as err:  # ragged nesting
            raise ValueError(
                f"{name} must be a rectangular array, got a ragged {type(x).__name__}"
            ) from err
    dtype = real_dtype(name, x)
    shape = np.shape(x)
    if ndim is not None and len(shape) != ndim:
        raise ValueError(f"{name} must have rank {ndim}, got shape {shape}")
    if width is not None and (len(shape) == 0 or shape[-1] != width):
        raise ValueError(f"{name} must have last dimension {width}, got shape {shape}")
    if finite and jnp.issubdtype(dtype, jnp.inexact):
        if isinstance(x, np.ndarray) or is_small_concrete(x):
            ok = bool(np.isfinite(np.asarray(x)).all())
        else:
            ok = _FINITE.get(x, "finite", lambda: bool(_all_finite(x)))
        if not ok:
            raise ValueError(f"{name} must be finite, but it contains NaN or Inf (shape {shape})")
    return x


def real_dtype(name: str, x) -> np.dtype:
    """The dtype of array ``x``; raise unless it is real (integer, float or bool)."""
    dtype = np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise ValueError(f"{name} must be real, got dtype {dtype}")
    if not (jnp.issubdtype(dtype, jnp.number) or dtype == np.bool_):
        raise ValueError(f"{name} must be a real numeric array, got dtype {dtype}")
    return dtype
