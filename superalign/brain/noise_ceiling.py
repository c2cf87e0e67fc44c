"""Per-session z-scoring, repetition averaging and NSD's voxel noise ceiling (pure numpy).

The recipe (``PROTOCOL.md``, "Brains"; Allen et al. 2022, "A massive 7T fMRI dataset to bridge
cognitive neuroscience and artificial intelligence", Methods, "Noise ceiling"):

1. z-score every voxel over the trials of each scan session (mean 0, standard deviation 1 with
   ``ddof = 0``, as ``scipy.stats.zscore``), which removes session-to-session changes of a voxel's
   baseline and gain;
2. keep the images shown ``n_repetitions`` (3) times; average each image's repetitions;
3. per voxel, the noise variance is the mean over images of the variance (``ddof = 1``) of its
   z-scored betas across repetitions; the signal variance is what is left of the unit total,
   ``max(0, 1 - noise variance)``; ``ncsnr = sqrt(signal variance) / sqrt(noise variance)``;
4. the noise ceiling of a response averaged over ``n`` repetitions, in percent of variance, is
   ``NC = 100 ncsnr^2 / (ncsnr^2 + 1 / n)``.

For a voxel whose z-scored betas are ``signal + noise`` with variances ``s`` and ``e = 1 - s``, the
closed form is ``NC = 100 s / (s + e / n)`` (:func:`closed_form_noise_ceiling`).

Everything here is arrays in, arrays out; the NIfTI reading lives in :mod:`superalign.brain.nsd`.
Sums are accumulated in float64 so that 30,000 trials of float32 betas lose nothing.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from superalign import checks


class Repetitions(NamedTuple):
    """Which trials showed which image.

    Attributes:
      image_ids: [I] ids of the images shown exactly ``n_repetitions`` times, ascending.
      trials: [I, R] their trial indices, in chronological order per image.
      counts: ``{times shown: number of images}`` over every image in the trials.
    """

    image_ids: np.ndarray
    trials: np.ndarray
    counts: dict


class NoiseCeiling(NamedTuple):
    """NSD's per-voxel noise ceiling.

    Attributes:
      noise_ceiling: [V] percent of the variance of the repetition-averaged response that the
        stimulus can explain (0 to 100).
      ncsnr: [V] noise-ceiling signal-to-noise ratio (``inf`` where the noise variance is 0).
      noise_var: [V] mean over images of the across-repetition variance (ddof 1).
    """

    noise_ceiling: np.ndarray
    ncsnr: np.ndarray
    noise_var: np.ndarray


def zscore(betas) -> tuple[np.ndarray, np.ndarray]:
    """z-score every voxel over the trials of one session.

    Args:
      betas: [T, V] single-trial betas of one scan session.

    Returns:
      ``(z, constant)``: ``z`` [T, V] float32 with mean 0 and standard deviation 1 (``ddof=0``) per
      column; ``constant`` [V] bool, True for voxels with no variance in this session (their ``z``
      is 0: a z-score is undefined there, and the caller decides what to do with them).
    """
    checks.array("betas", betas, ndim=2)
    x = np.asarray(betas, dtype=np.float64)
    mean = x.mean(axis=0)
    centred = x - mean
    std = np.sqrt((centred * centred).mean(axis=0))
    # A column of equal values can leave a rounding residue; call it constant relative to its size.
    constant = std <= 1e-12 * np.maximum(np.abs(mean), 1.0)
    scale = np.where(constant, 0.0, 1.0 / np.where(constant, 1.0, std))
    return (centred * scale).astype(np.float32), constant


def zscore_by_session(betas, session) -> tuple[np.ndarray, np.ndarray]:
    """z-score every voxel within each session.

    Args:
      betas: [T, V] single-trial betas of all sessions.
      session: [T] session label of every trial.

    Returns:
      ``(z, constant)``: ``z`` [T, V] float32; ``constant`` [V] bool, True for voxels constant in
      at least one session.
    """
    checks.array("betas", betas, ndim=2)
    session = np.asarray(session)
    if session.shape != (np.shape(betas)[0],):
        raise ValueError(
            f"session must have shape ({np.shape(betas)[0]},) (one label per trial of betas), "
            f"got {session.shape}"
        )
    z = np.empty(np.shape(betas), np.float32)
    constant = np.zeros(np.shape(betas)[1], bool)
    for label in np.unique(session):
        rows = session == label
        z[rows], const = zscore(np.asarray(betas)[rows])
        constant |= const
    return z, constant


def repetitions(image_ids, n_repetitions: int = 3) -> Repetitions:
    """Group trials by image; keep the images shown exactly ``n_repetitions`` times.

    Args:
      image_ids: [T] image id of every trial, in chronological order.
      n_repetitions: repetitions an image must have to be kept.

    Returns:
      A :class:`Repetitions`. Raises ``ValueError`` if some image was shown more often.
    """
    n_repetitions = checks.positive_int("n_repetitions", n_repetitions)
    ids = np.asarray(image_ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"image_ids must be a 1-D integer array, got {ids.dtype} {ids.shape}")
    order = np.argsort(ids, kind="stable")
    unique, start, count = np.unique(ids[order], return_index=True, return_counts=True)
    counts = {int(c): int(n) for c, n in zip(*np.unique(count, return_counts=True), strict=True)}
    if count.size and count.max() > n_repetitions:
        raise ValueError(
            f"image_ids has images shown more than n_repetitions={n_repetitions} times "
            f"(images per number of showings: {counts})"
        )
    keep = count == n_repetitions
    trials = order[start[keep][:, None] + np.arange(n_repetitions)]
    return Repetitions(unique[keep], trials, counts)


def _check_trials(z, trials) -> np.ndarray:
    checks.array("z", z, ndim=2)
    trials = np.asarray(trials)
    if trials.ndim != 2 or trials.shape[1] < 2 or not np.issubdtype(trials.dtype, np.integer):
        raise ValueError(
            f"trials must be an integer [images, repetitions >= 2] array, got {trials.dtype} "
            f"{trials.shape}"
        )
    if trials.size and (trials.min() < 0 or trials.max() >= np.shape(z)[0]):
        raise ValueError(
            f"trials must index the {np.shape(z)[0]} rows of z, got values in "
            f"[{trials.min()}, {trials.max()}]"
        )
    return trials


def average_repetitions(z, trials) -> np.ndarray:
    """Mean over repetitions: [I, V] float32 from z [T, V] and trials [I, R]."""
    trials = _check_trials(z, trials)
    z = np.asarray(z)
    total = np.zeros((trials.shape[0], z.shape[1]), np.float64)
    for r in range(trials.shape[1]):  # R gathers of [I, V]: never an [I, R, V] copy
        total += z[trials[:, r]]
    return (total / trials.shape[1]).astype(np.float32)


def noise_ceiling(z, trials, n_average: int | None = None) -> NoiseCeiling:
    """NSD's noise ceiling of every voxel from z-scored single-trial betas.

    Args:
      z: [T, V] betas z-scored within sessions.
      trials: [I, R] trial indices of each image's repetitions (:func:`repetitions`).
      n_average: repetitions averaged in the response being predicted; None for R.

    Returns:
      A :class:`NoiseCeiling`.
    """
    trials = _check_trials(z, trials)
    n = trials.shape[1] if n_average is None else checks.positive_int("n_average", n_average)
    z = np.asarray(z)
    mean = np.zeros((trials.shape[0], z.shape[1]), np.float64)
    for r in range(trials.shape[1]):
        mean += z[trials[:, r]]
    mean /= trials.shape[1]
    ss = np.zeros_like(mean)
    for r in range(trials.shape[1]):
        d = z[trials[:, r]] - mean
        ss += d * d
    noise_var = (ss / (trials.shape[1] - 1)).mean(axis=0)
    return _from_noise_var(noise_var, n)


def _from_noise_var(noise_var, n: int) -> NoiseCeiling:
    noise_var = np.asarray(noise_var, np.float64)
    signal_sd = np.sqrt(np.maximum(0.0, 1.0 - noise_var))
    with np.errstate(divide="ignore", invalid="ignore"):
        ncsnr = np.where(noise_var > 0, signal_sd / np.sqrt(noise_var), np.inf)
        snr2 = ncsnr * ncsnr
        nc = np.where(np.isinf(snr2), 100.0, 100.0 * snr2 / (snr2 + 1.0 / n))
    return NoiseCeiling(nc, ncsnr, noise_var)


def closed_form_noise_ceiling(noise_var, n_average: int = 3) -> np.ndarray:
    """``NC = 100 s / (s + e / n)`` with ``e`` the noise variance and ``s = 1 - e``.

    The noise ceiling of voxels whose z-scored single-trial betas are ``signal + noise`` with
    noise variance ``e`` (0 < e <= 1) and signal variance ``1 - e``.
    """
    e = np.asarray(noise_var, np.float64)
    if np.any(~np.isfinite(e) | (e <= 0) | (e > 1)):
        raise ValueError(f"noise_var must be in (0, 1], got values in [{e.min()}, {e.max()}]")
    n = checks.positive_int("n_average", n_average)
    s = 1.0 - e
    return 100.0 * s / (s + e / n)
