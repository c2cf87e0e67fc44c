"""Input validation shared by the library: every check raises ``ValueError`` naming the argument,
what it got and what was expected, before any work starts."""

from __future__ import annotations

import numbers

import jax.numpy as jnp
import numpy as np


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
        ok = (
            bool(jnp.isfinite(x).all())
            if not isinstance(x, np.ndarray)
            else bool(np.isfinite(x).all())
        )
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
