"""Sparse synthetic features (paper section 4.1; Elhage et al. 2022).

Each of ``F`` features is active with probability ``p``; an active feature takes a value drawn
from U[0, 1]. The dataset is never stored: batch ``step`` is a pure function of
``(data_key, step)``, so every seed and every consumer (toy training, activation extraction, SAE
training, held-out alignment rows) sees exactly the same rows. The train / held-out split is a
split of step indices (:func:`split_steps`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from superalign import checks


def importance(n_features: int) -> jax.Array:
    """Power-law task importance ``(1 + 2 i / F)^-2`` for ``i = 0..F-1``.

    That is ``1 / x^2`` at ``F`` even steps of ``x`` in ``[1, 3 - 2/F]`` (PROTOCOL.md, "Toy
    models").

    Returns:
      ``[F]`` float32 weights, decreasing from 1.
    """
    n_features = checks.positive_int("n_features", n_features)
    i = jnp.arange(n_features, dtype=jnp.float32)
    return (1.0 + 2.0 * i / n_features) ** -2


def sample(key: jax.Array, n_rows: int, n_features: int, prob: float) -> jax.Array:
    """Draw ``n_rows`` sparse feature vectors.

    Args:
      key: PRNG key.
      n_rows: number of rows.
      n_features: F.
      prob: probability that an entry is active, in (0, 1].

    Returns:
      ``[n_rows, F]`` float32; each entry is 0 with probability ``1 - prob``, else U[0, 1].
    """
    n_rows = checks.positive_int("n_rows", n_rows)
    n_features = checks.positive_int("n_features", n_features)
    prob = checks.probability("prob", prob)
    # One uniform draw per entry: u < p marks an active entry, and given that, u / p is U[0, 1).
    # Same law as separate mask and value draws, at half the random bits (data generation is a
    # large share of a toy step on the CPU).
    u = jax.random.uniform(key, (n_rows, n_features))
    return jnp.where(u < prob, u / prob, 0.0)


class DataSpec(NamedTuple):
    """The fixed synthetic dataset: ``n_steps`` batches of ``batch_size`` rows.

    The paper's dataset is ``M = 10,000 x 1024 = 10,240,000`` rows of ``F = 64`` features; the
    first ``train_fraction`` of the batches train the SAEs, the rest are held out for alignment.
    """

    seed: int = 0
    n_features: int = 64
    prob: float = 0.1
    batch_size: int = 1024
    n_steps: int = 10_000
    train_fraction: float = 0.8

    def validate(self) -> DataSpec:
        checks.positive_int("n_features", self.n_features)
        checks.probability("prob", self.prob)
        checks.positive_int("batch_size", self.batch_size)
        checks.positive_int("n_steps", self.n_steps)
        if not 0 < self.train_fraction < 1:
            raise ValueError(f"train_fraction must be in (0, 1), got {self.train_fraction!r}")
        return self

    @property
    def key(self) -> jax.Array:
        """The data key every consumer derives its batches from."""
        return jax.random.key(self.seed)

    @property
    def n_rows(self) -> int:
        return self.n_steps * self.batch_size


def batch(spec: DataSpec, step) -> jax.Array:
    """Rows ``[step * B, (step + 1) * B)`` of the dataset, as a pure function of the step.

    Args:
      spec: the dataset.
      step: integer scalar (may be traced).

    Returns:
      ``[B, F]`` float32 features.
    """
    key = jax.random.fold_in(spec.key, step)
    return sample(key, spec.batch_size, spec.n_features, spec.prob)


def batches(spec: DataSpec, steps: jax.Array) -> jax.Array:
    """Several batches at once: ``[len(steps), B, F]``."""
    return jax.vmap(lambda s: batch(spec, s))(steps)


def split_steps(spec: DataSpec) -> tuple[range, range]:
    """The 80/20 split as step ranges: ``(train_steps, heldout_steps)``."""
    spec.validate()
    n_train = int(round(spec.n_steps * spec.train_fraction))
    if not 0 < n_train < spec.n_steps:
        raise ValueError(
            f"train_fraction={spec.train_fraction} leaves an empty split of n_steps={spec.n_steps}"
        )
    return range(0, n_train), range(n_train, spec.n_steps)
