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


def positive_float(name: str, value) -> float:
    """Return ``value`` as a float, or raise if it is not a finite number > 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not (np.isfinite(value) and value > 0)
    ):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def nonnegative_float(name: str, value) -> float:
    """Return ``value`` as a float, or raise if it is not a finite number >= 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not (np.isfinite(value) and value >= 0)
    ):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def probability(name: str, value) -> float:
    """Return ``value`` as a float in (0, 1], or raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0 < value <= 1):
        raise ValueError(f"{name} must be a probability in (0, 1], got {value!r}")
    return float(value)


def array(name: str, x, *, ndim: int | None = None, width: int | None = None, finite: bool = True):
    """Check rank, last-axis width and finiteness of an array; return it unchanged.

    Args:
      name: argument name used in the error message.
      x: numpy or jax array (anything ``np.shape`` understands).
      ndim: required rank, or None for any.
      width: required size of the last axis, or None for any.
      finite: whether NaN and Inf are refused.
    """
    shape = np.shape(x)
    if ndim is not None and len(shape) != ndim:
        raise ValueError(f"{name} must have rank {ndim}, got shape {shape}")
    if width is not None and (len(shape) == 0 or shape[-1] != width):
        raise ValueError(f"{name} must have last dimension {width}, got shape {shape}")
    if finite:
        ok = (
            bool(jnp.isfinite(x).all())
            if not isinstance(x, np.ndarray)
            else bool(np.isfinite(x).all())
        )
        if not ok:
            raise ValueError(f"{name} must be finite, but it contains NaN or Inf (shape {shape})")
    return x
