"""Configs of the seed sweep: the toy experiment over many seed pairs, sizes and SAE k.

Holds the toy experiment's settings (:class:`experiments.configs.toy_models.ToySetup`: ``toy``,
``sae``, ``sizes``, folds) plus the sweep's axes and its metrics. ``sae.k`` is set from
``sae_ks`` (the SAEs of a size are compiled once, at the largest k) and holds the placeholder 1.

Presets: ``paper`` (16 pairs, six sizes, five k), ``findings`` (the paper's setting over 8 seed
pairs with every metric: how often each of the paper's six toy findings holds), ``quick`` and
``tiny``.
"""

from __future__ import annotations

import dataclasses

from experiments import launch
from experiments.configs.toy_models import ToySetup
from superalign import sae
from superalign.compare import check_metrics


def _sae() -> sae.SAEConfig:
    return sae.toy_config(1, k=1)


@dataclasses.dataclass(frozen=True)
class SeedSweepConfig(ToySetup):
    sae: sae.SAEConfig = dataclasses.field(default_factory=_sae)  # n_inputs: sizes; k: sae_ks
    sizes: tuple = (8, 12, 16, 24, 32, 48)
    # Toy models: seed pairs (2p, 2p + 1) for p < n_pairs, every size trained in one call.
    n_pairs: int = 16
    # SAEs: every (seed, k) of a size trained in one call (k is a vmap axis, compiled at max k).
    sae_ks: tuple = (3, 5, 7, 9, 12)
    # Alignment: the first heldout_steps batches of the held-out 20% (0: all of them). The
    # default, 200 batches (204,800 rows), keeps 32 seeds' latents in memory (32 x 204,800 x 64
    # floats = 1.7 GB per k); the paper's 2,048,000 rows need 17 GB per k. The fold-to-fold error
    # (about 3e-4) stays far below the seed-to-seed spread this sweep measures.
    heldout_steps: int = 200
    group_size: int = 8  # toy seeds per vmapped group on a device (toy.make_train_seeds)
    # Metrics scored for every condition (superalign.compare.available_metrics names).
    metrics: tuple = ("soft_matching", "semi_matching", "ridge")
    # Most stimuli per fold RDM of superalign.rsa (larger folds are subsampled; an RDM of S
    # stimuli sorts S (S - 1) / 2 distances per fold and condition).
    rsa_max_stimuli: int = 1_000

    @property
    def seeds(self) -> tuple:
        """Seeds 0 .. 2 n_pairs - 1; pair p is seed 2p -> seed 2p + 1."""
        return tuple(range(2 * self.n_pairs))

    def sae_config(self, n_hidden: int) -> sae.SAEConfig:
        """The SAE of one size at the largest k (each k of ``sae_ks`` is a vmap axis)."""
        return dataclasses.replace(self.sae, n_inputs=n_hidden, k=max(self.sae_ks))

    def validate(self) -> None:
        """Every setting checked before any work (``ValueError`` naming the field)."""
        if isinstance(self.n_pairs, bool) or not isinstance(self.n_pairs, int) or self.n_pairs < 2:
            raise ValueError(
                f"n_pairs must be an integer >= 2 (a spread needs two), got {self.n_pairs!r}"
            )
        if not self.sae_ks or len(set(self.sae_ks)) != len(self.sae_ks):
            raise ValueError(f"sae_ks must be distinct values, got {self.sae_ks!r}")
        for k in self.sae_ks:
            if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.sae.n_latents:
                raise ValueError(
                    f"sae_ks must be in 1..sae.n_latents={self.sae.n_latents}, got {k!r}"
                )
        launch.per_run("sae", self.sae, k="sae_ks")
        launch.positive_int("group_size", self.group_size)
        if not isinstance(self.metrics, tuple) or not self.metrics:
            raise ValueError(f"metrics must be a non-empty tuple of names, got {self.metrics!r}")
        check_metrics(list(self.metrics))  # the registry of superalign.compare
        launch.positive_int("rsa_max_stimuli", self.rsa_max_stimuli)
        if self.rsa_max_stimuli < 3:
            raise ValueError(f"rsa_max_stimuli must be at least 3, got {self.rsa_max_stimuli}")
        super().validate()


def paper() -> SeedSweepConfig:
    """16 pairs per size, N in {8, 12, 16, 24, 32, 48}, k in {3, 5, 7, 9, 12}, the paper's data."""
    return SeedSweepConfig()


def findings() -> SeedSweepConfig:
    """The paper's setting over 8 seed pairs: 10,000 batches, N in {8, 16, 32}, k = 7, 64
    latents, every metric (soft- and semi-matching, ridge, CKA, RSA, rotation score)."""
    return dataclasses.replace(
        paper(),
        sizes=(8, 16, 32),
        n_pairs=8,
        sae_ks=(7,),
        metrics=("soft_matching", "semi_matching", "ridge", "cka", "rsa", "rotation_score"),
    )


def quick() -> SeedSweepConfig:
    """A few minutes on a 2-core CPU: 1,000 batches, 4 pairs, three sizes, two k."""
    cfg = paper()
    return dataclasses.replace(
        cfg,
        toy=dataclasses.replace(cfg.toy, n_steps=1_000),
        sizes=(8, 16, 32),
        n_pairs=4,
        sae_ks=(5, 7),
        segment_steps=250,
    )


def tiny() -> SeedSweepConfig:
    """Seconds: two pairs at N = 4 (F = 16), 200 batches of 64 rows, k in {2, 3}."""
    cfg = paper()
    return dataclasses.replace(
        cfg,
        toy=dataclasses.replace(cfg.toy, n_features=16, batch_size=64, n_steps=200),
        sae=dataclasses.replace(cfg.sae, n_latents=16, batch_size=64),
        sizes=(4,),
        n_pairs=2,
        sae_ks=(2, 3),
        heldout_steps=0,
        n_folds=3,
        segment_steps=200,
    )


PRESETS = {"paper": paper, "findings": findings, "quick": quick, "tiny": tiny}


def get_config(name: str = "paper") -> SeedSweepConfig:
    return launch.preset(PRESETS, name)
