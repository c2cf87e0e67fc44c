"""Superposition analysis of toy models (paper figure 2 left, appendix A.3)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from superalign import checks


def feature_norms(W: jax.Array) -> jax.Array:
    """Row norms ``||W_i||`` of a toy model's ``W [F, N]`` (about 1 for a represented feature)."""
    checks.array("W", W, ndim=2)
    return jnp.linalg.norm(W, axis=-1)


def n_represented(W: jax.Array, threshold: float = 0.5) -> jax.Array:
    """Number of features whose row norm exceeds ``threshold``."""
    return jnp.sum(feature_norms(W) > threshold)


def n_directions(W: jax.Array, threshold: float = 0.5, same_direction: float = 0.9) -> jax.Array:
    """Represented features counted by direction: features whose rows point the same way
    (cosine > ``same_direction``) count once.

    A linear (no output ReLU) toy model can give two features of near-equal importance one
    shared direction at norm ``1/sqrt(2)`` each: that is averaging, not superposition, and this
    count stays at most N where :func:`n_represented` can read N + 1.
    """
    norms = feature_norms(W)
    live = norms > threshold
    unit = W / jnp.maximum(norms, 1e-12)[:, None]
    same = (unit @ unit.T > same_direction) & live[:, None] & live[None, :]
    # A live feature is new if no earlier live feature shares its direction.
    earlier = jnp.tril(same, k=-1).any(axis=1)
    return jnp.sum(live & ~earlier)


def shared_features(W_a: jax.Array, W_b: jax.Array, threshold: float = 1.0) -> jax.Array:
    """Features represented by both seeds: ``||W_a,i|| * ||W_b,i|| >= threshold``.

    Returns:
      ``[F]`` boolean mask.
    """
    checks.array("W_b", W_b, ndim=2)
    if W_a.shape[0] != W_b.shape[0]:
        raise ValueError(
            f"W_a and W_b must have the same rows (features), got {W_a.shape}, {W_b.shape}"
        )
    return feature_norms(W_a) * feature_norms(W_b) >= threshold


def _centred_unit(A: jax.Array, rows: jax.Array | None = None) -> jax.Array:
    """Columns of ``A [M, p]`` centred and scaled to unit norm over ``rows`` (``[M]`` mask, or
    all rows); other rows become 0, and a constant column becomes 0 (never NaN)."""
    if rows is None:
        C = A - A.mean(axis=0)
    else:
        w = rows.astype(A.dtype)[:, None]
        C = (A - (A * w).sum(0) / jnp.maximum(w.sum(), 1)) * w
    norm = jnp.linalg.norm(C, axis=0)
    return jnp.where(norm > 0, C / jnp.where(norm > 0, norm, 1.0), 0.0)


def _column_corr(A: jax.Array, B: jax.Array) -> jax.Array:
    """Pearson correlations between the columns of ``A [M, p]`` and ``B [M, q]``: ``[p, q]``.

    A constant column correlates 0 with everything (never NaN).
    """
    return _centred_unit(A).T @ _centred_unit(B)


def arrangement_best_match(W_a: jax.Array, W_b: jax.Array, shared: jax.Array) -> jax.Array:
    """Per neuron of seed a, its best correlation with any neuron of seed b over shared features.

    ``W_s`` are the rows of ``W`` for the shared features; a neuron's arrangement is its ``W_s``
    column (how much of each shared feature it carries). Identical arrangements up to a
    permutation of neurons give 1 everywhere; the paper finds almost all neurons below 0.5.

    Args:
      W_a: ``[F, N_a]`` seed a. W_b: ``[F, N_b]`` seed b. shared: ``[F]`` mask
        (:func:`shared_features`).

    Returns:
      ``[N_a]`` best correlations (0 for a neuron with no variation over the shared features).
    """
    # Correlation over the shared rows only, as a masked computation (keeps shapes static).
    shared = jnp.asarray(shared, bool)
    return (_centred_unit(W_a, shared).T @ _centred_unit(W_b, shared)).max(axis=1)


def feature_recovery(features: jax.Array, units: jax.Array) -> jax.Array:
    """Per ground-truth feature, its best correlation with any unit (appendix A.3).

    Args:
      features: ``[M, F]`` ground-truth feature values on the held-out rows.
      units: ``[M, U]`` neuron or SAE-latent activations on the same rows.

    Returns:
      ``[F]`` best Pearson correlations (0 where a feature or unit never varies).
    """
    checks.array("features", features, ndim=2, finite=False)
    checks.array("units", units, ndim=2, finite=False)
    if features.shape[0] != units.shape[0]:
        raise ValueError(
            f"features and units must have the same rows, got {features.shape} and {units.shape}"
        )
    return _column_corr(features, units).max(axis=1)
