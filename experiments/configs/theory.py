"""Config of the section-3 theory experiment (``python -m experiments.theory``)."""

from __future__ import annotations

import dataclasses

from experiments import launch


@dataclasses.dataclass(frozen=True)
class TheoryConfig:
    seed: int = 0
    n_features: int = 64  # F, as in the toy models
    # Settings 1 and 2: any whitened latents give the closed forms; a moderate K keeps the
    # sampling noise small (K-sparse latents are heavy tailed: E z^4 = 3 F / K).
    n_samples: int = 5_000
    latent_k: int = 16
    levels: tuple = (1, 2, 3, 4, 5, 6, 7, 8)  # 1. n features per unit of system b
    groups: tuple = (2, 4, 8)  # 2. group sizes g; every shift s = 0..g is scored
    # 3. Recovery: K-sparse latents, Gaussian mixing with N < F, OMP on each system.
    recovery_k: int = 3
    recovery_units: int = 32
    recovery_samples: int = 5_000
    sweep_ks: tuple = (1, 2, 3, 4, 6, 8, 12)
    sweep_units: tuple = (8, 12, 16, 24, 32, 48, 64)
    sweep_samples: int = 4_000
    # 4. The table: the setting-1 and setting-2 rows it shows.
    table_level: int = 4
    table_group: int = 2
    table_shift: int = 1
    # Alignment protocol.
    n_folds: int = 5
    fold_seed: int = 0


def paper() -> TheoryConfig:
    """The default run: about a minute on a 2-core CPU."""
    return TheoryConfig()


def quick() -> TheoryConfig:
    """The default settings on 2,000 samples per setting (sampling noise about 1.6x larger)."""
    return dataclasses.replace(
        paper(), n_samples=2_000, recovery_samples=2_000, sweep_samples=2_000
    )


def tiny() -> TheoryConfig:
    """Seconds: for tests and the notebook's test run (few distinct shapes, so few compiles)."""
    return dataclasses.replace(
        paper(),
        n_features=16,
        n_samples=2_000,
        latent_k=4,
        levels=(1, 2, 4),
        groups=(2,),
        recovery_k=2,
        recovery_units=16,  # = F: in the tiny preset only, to share compiled shapes
        recovery_samples=2_000,
        sweep_ks=(1, 2, 4),
        sweep_units=(8, 16),
        sweep_samples=2_000,
        table_level=2,
        n_folds=3,
    )


PRESETS = {"paper": paper, "quick": quick, "tiny": tiny}


def get_config(name: str = "paper") -> TheoryConfig:
    return launch.preset(PRESETS, name)
