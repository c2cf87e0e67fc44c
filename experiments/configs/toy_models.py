"""Configs of the toy-model experiment (paper section 4; values from REFERENCE.md)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ToyExperimentConfig:
    # Data: M = n_steps x batch_size rows of n_features sparse features.
    n_features: int = 64
    feature_prob: float = 0.1
    batch_size: int = 1024
    n_steps: int = 10_000
    train_fraction: float = 0.8
    data_seed: int = 0
    # Toy models: one per (size, seed), AdamW.
    sizes: tuple = (8, 16, 32)
    seeds: tuple = (0, 1)
    lr: float = 1e-3
    weight_decay: float = 0.01
    output_relu: bool = True
    # SAEs: one pass over the first train_fraction of the rows, in order.
    sae_latents: int = 64
    sae_k: int = 7
    sae_aux_weight: float = 0.1
    sae_dead_steps: int = 1
    sae_lr: float = 1e-3
    random_sae_seed: int = 1_000  # the untrained control SAEs
    # Alignment on the held-out rows.
    n_folds: int = 5
    fold_seed: int = 0
    # Execution: batches per jitted segment (checkpoint interval and activation chunk).
    segment_steps: int = 500


def get_config() -> ToyExperimentConfig:
    """The paper's setting: F = 64, N in {8, 16, 32}, seeds 0 and 1, 10,240,000 rows."""
    return ToyExperimentConfig()


def quick() -> ToyExperimentConfig:
    """About a minute on a 2-core CPU: 1,000 batches (800 for the SAEs, 200 held out)."""
    return dataclasses.replace(get_config(), n_steps=1_000, segment_steps=250)
