"""The paper's method on any two representations: Neuron->Neuron against SAE->SAE, with controls.

Given two systems' responses to the same stimuli, ``X [M, Na]`` (the source) and ``Y [M, Nb]``
(the target), :func:`compare` trains a TopK SAE on each side (``superalign.sae``), encodes the
scoring rows and scores every condition of the paper with every requested metric:

- matching-type metrics (soft-matching, semi-matching, and any metric registered as such):
  ``neuron_neuron`` (X -> Y), ``sae_sae`` (X's SAE latents -> Y's SAE latents) and
  ``randsae_sae`` (an untrained SAE of X's shape -> Y's SAE latents, the control);
- ridge regression (predicting the target from the source): ``neuron_neuron``, ``sae_neuron``,
  ``sae_sae`` and ``randsae_neuron``.

Rows. SAEs train on ``X_train`` / ``Y_train`` when given (the paper: the train split) and every
row of ``X`` / ``Y`` is scored. Otherwise the rows are split once by :func:`split_rows` (a
seeded 50/50 split): the SAEs train on one half and every condition is scored on the other, so
no scored stimulus was seen in training. When both SAEs are passed already trained, every row is
scored.

SAE seeds. ``sae_seeds = S`` trains S SAEs per side in one vmapped run (seeds are a ``vmap``
axis). Conditions that involve a trained SAE (``sae_sae``, ``randsae_sae``, ``sae_neuron``) then
hold a tuple of S results, seed ``s`` at index ``s`` (X's SAE ``s`` against Y's SAE ``s``);
``neuron_neuron`` and ``randsae_neuron`` hold a single result. The tuple has one element when
``S = 1``, so the layout never depends on the value.

Default SAE (:func:`default_sae_config`): the paper's DNN SAE (``sae.dnn_config``: per-sample
normalisation, Kaiming-uniform, AuxK, Adam 4e-4, batch 64) with 4x expansion, ``k`` from
:func:`default_k` and a number of epochs from :func:`default_epochs`.

Metrics are looked up by name in :func:`available_metrics`: ``soft_matching``,
``semi_matching``, ``ridge``, and ``cka``, ``rsa`` and ``rotation_score`` when the installed
``superalign`` provides them (each ``f(X, Y, *, n_folds, seed)`` returning ``.folds``, ``.mean``,
``.sem``; scored like the matching metrics).

The command line (``python -m superalign.compare A B --out DIR``, or ``superalign-compare``) is
:func:`main`; it reads files, checkpoints the trained SAEs and writes results through
:mod:`superalign.io`. Everything else here is pure.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import math
import numbers
import sys
import time
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from superalign import checks, matching, regression, sae
from superalign import folds as _folds

MATCHING_CONDITIONS = ("neuron_neuron", "sae_sae", "randsae_sae")
"""Conditions of matching-type metrics (source -> target)."""

REGRESSION_CONDITIONS = ("neuron_neuron", "sae_neuron", "sae_sae", "randsae_neuron")
"""Conditions of ridge regression (predictors -> predicted)."""

SEED_CONDITIONS = frozenset({"sae_sae", "randsae_sae", "sae_neuron"})
"""Conditions that involve a trained SAE: one result per SAE seed."""

DEFAULT_METRICS = ("soft_matching", "semi_matching", "ridge")
OPTIONAL_METRICS = ("cka", "rsa", "rotation_score")
"""Metrics registered when the installed ``superalign`` provides them."""

FVE_WARNING = 0.5
"""An SAE explaining less than this fraction of the scoring rows' variance triggers a warning.

Below one half, most of the representation is not in the latents: SAE conditions then measure
how badly the SAE fits rather than how the two systems align, and a gain or loss against
Neuron->Neuron cannot be read as an alignment effect.
"""

DEFAULT_CHUNK_ROWS = 65_536
"""Training rows read and sent to the device at a time (see :func:`train_saes`)."""

_TARGET_STEPS = 4_000  # default training length in optimiser steps (see default_epochs)
_MAX_EPOCHS = 300  # the paper's DNN setting


def _soft_matching(X, Y, *, n_folds: int = 5, seed: int = 0):
    # Plans are not needed for the scores; [K, Na, Nb] plans of 4x-expanded SAEs are large.
    return matching.soft_matching(X, Y, n_folds=n_folds, seed=seed, keep_plans=False)


METRICS: Mapping[str, Callable] = {
    "soft_matching": _soft_matching,
    "semi_matching": matching.semi_matching,
    "ridge": regression.ridge_regression,
}
"""The built-in metrics: name -> ``f(X, Y, *, n_folds, seed)``."""

REGRESSION_METRICS = frozenset({"ridge"})
"""Metrics scored with :data:`REGRESSION_CONDITIONS`; every other metric is matching-type."""


def available_metrics() -> dict[str, Callable]:
    """The metric registry: the built-ins plus those of :data:`OPTIONAL_METRICS` that exist.

    An optional metric is found as ``superalign.<name>`` (a function, or a module holding a
    function of that name) or as the module ``superalign.<name>``; looked up at call time so a
    metric added to the package later is picked up without changing this module.
    """
    import superalign

    found = dict(METRICS)
    for name in OPTIONAL_METRICS:
        fn = getattr(superalign, name, None)
        if fn is None:
            try:
                fn = importlib.import_module(f"superalign.{name}")
            except ImportError:
                continue
        if not callable(fn):
            fn = getattr(fn, name, None)
        if callable(fn):
            found[name] = fn
    return found


def conditions_of(metric: str) -> tuple[str, ...]:
    """The conditions a metric is scored on."""
    return REGRESSION_CONDITIONS if metric in REGRESSION_METRICS else MATCHING_CONDITIONS


# ---------------------------------------------------------------------------------------------
# Results.


class TrainedSAE(NamedTuple):
    """SAEs of one side: their config and parameters with a leading seed axis.

    Attributes:
      config: the SAE settings.
      params: :class:`superalign.sae.SAEParams` with every leaf ``[S, ...]`` (S SAE seeds).
    """

    config: sae.SAEConfig
    params: sae.SAEParams


class SAEQuality(NamedTuple):
    """How well each SAE of one side describes the scoring rows.

    Attributes:
      fve: [S] fraction of variance explained, ``1 - sum|x - x_hat|^2 / sum|x - mean(x)|^2``
        over the scoring rows, in the space the SAE reconstructs (per-sample normalised inputs
        for the DNN SAE).
      l0: [S] mean number of active latents per row.
      dead: [S] latents that never fire on the scoring rows.
      n_latents: latents per SAE.
    """

    fve: np.ndarray
    l0: np.ndarray
    dead: np.ndarray
    n_latents: int


class Gain(NamedTuple):
    """SAE->SAE against Neuron->Neuron: ``100 * (sae_sae - neuron_neuron) / |neuron_neuron|``.

    Attributes:
      percent: [S] the gain of every SAE seed (fold means compared), in percent.
      mean: mean over seeds.
      std: standard deviation over seeds (ddof 1); NaN with one seed.
    """

    percent: np.ndarray
    mean: float
    std: float


class NullResult(NamedTuple):
    """A condition's scores under shuffled stimulus order of Y.

    Attributes:
      scores: [n] (or [S, n] for a condition with one result per SAE seed) fold-mean scores,
        one per permutation.
      p_value: ``(1 + #(null >= observed)) / (1 + n)`` (``[S]`` per SAE seed).
    """

    scores: np.ndarray
    p_value: float | np.ndarray


class Comparison(NamedTuple):
    """Everything :func:`compare` found.

    Attributes:
      scores: ``scores[metric][condition]``: the metric's result (``.folds``, ``.mean``,
        ``.sem``, ...); a tuple of S results (one per SAE seed) for :data:`SEED_CONDITIONS`.
      gain: ``gain[metric]``: a :class:`Gain`.
      sae_quality: ``{"x": SAEQuality, "y": SAEQuality}``.
      null: ``null[metric][condition]``: a :class:`NullResult` (same layout as ``scores``), or
        None without permutations.
      saes: ``{"x": TrainedSAE, "y": TrainedSAE, "random": TrainedSAE}`` (the random SAE is the
        control, of X's shape, never trained; its params have a seed axis of length 1).
      scoring_rows: indices of the rows of X and Y that were scored.
      training_rows: indices of the rows of X and Y the SAEs trained on, or None (trained on
        ``X_train`` / ``Y_train``, or passed trained).
    """

    scores: dict
    gain: dict
    sae_quality: dict
    null: dict | None
    saes: dict
    scoring_rows: np.ndarray
    training_rows: np.ndarray | None


# ---------------------------------------------------------------------------------------------
# Settings and validation.


def default_k(n_inputs: int, n_latents: int | None = None) -> int:
    """Active latents of the default SAE: ``round(n_inputs / 25)``, within ``1..n_latents``.

    One active latent per 25 input units reproduces the paper's ResNet50 layer4 SAE (2,048
    units, k = 82); it gives 41 at 1,024 units and 1 below 38 units.
    """
    n_latents = 4 * n_inputs if n_latents is None else n_latents
    return int(np.clip(round(n_inputs / 25), 1, n_latents))


def default_epochs(n_train_rows: int, batch_size: int = 64) -> int:
    """Epochs of the default SAE: enough for about 4,000 optimiser steps, 1 to 300.

    The paper trains 300 epochs on its activation sets; on a CPU that is hours for tens of
    thousands of rows. About 4,000 steps of 64 rows let a 4x TopK SAE explain most of the
    variance of planted sparse data (the tests check FVE > 0.75 after 3,700 steps) and keep a
    50,000-row run to minutes.

    Raises:
      ValueError: ``batch_size`` is not a positive integer.
    """
    batch_size = checks.positive_int("batch_size", batch_size)
    steps_per_epoch = max(1, n_train_rows // batch_size)
    return int(np.clip(math.ceil(_TARGET_STEPS / steps_per_epoch), 1, _MAX_EPOCHS))


def default_sae_config(
    n_inputs: int, n_train_rows: int | None = None, *, expansion: int = 4, **overrides
) -> sae.SAEConfig:
    """The default SAE of :func:`compare`: ``sae.dnn_config`` sized to the inputs.

    Args:
      n_inputs: units of the representation.
      n_train_rows: rows the SAE trains on (sets the epochs by :func:`default_epochs`); None
        keeps ``dnn_config``'s 300 epochs.
      expansion: latents per unit.
      **overrides: any :class:`superalign.sae.SAEConfig` field (``k``, ``n_epochs``, ``lr``...).
    """
    checks.positive_int("n_inputs", n_inputs)
    checks.positive_int("expansion", expansion)
    k = overrides.pop("k", default_k(n_inputs, expansion * n_inputs))
    if n_train_rows is not None and "n_epochs" not in overrides:
        overrides["n_epochs"] = default_epochs(n_train_rows, overrides.get("batch_size", 64))
    return sae.dnn_config(n_inputs, expansion=expansion, k=k, **overrides)


def split_rows(n_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The seeded 50/50 split used when no SAE training rows are given.

    Returns:
      ``(train, score)``: sorted row indices; ``train`` has ``n_rows // 2`` rows, ``score`` the
      rest. The SAEs train on ``train``; every condition is scored on ``score``.
    """
    order = np.random.default_rng([int(seed), 0x5A1]).permutation(int(n_rows))
    half = int(n_rows) // 2
    return np.sort(order[:half]), np.sort(order[half:])


def sae_key(seed: int, side: str) -> jax.Array:
    """The PRNG key of one side's SAEs (``"x"``, ``"y"``) or the random control's (``"random"``)."""
    index = {"x": 0, "y": 1, "random": 2}[side]
    return jax.random.fold_in(jax.random.key(int(seed)), index)


def nonfinite_rows(x, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> np.ndarray:
    """Indices of the rows of ``x [M, N]`` holding NaN or Inf, read ``chunk_rows`` at a time.

    ``x`` may be a numpy array, a memory map, a jax array or an h5py dataset.
    """
    bad = []
    for start in range(0, int(np.shape(x)[0]), chunk_rows):
        block = np.asarray(x[start : start + chunk_rows])
        bad.append(start + np.flatnonzero(~np.isfinite(block).all(axis=1)))
    return np.concatenate(bad) if bad else np.zeros(0, int)


def check_rows(name: str, x, *, width: int | None = None, min_rows: int = 1):
    """Refuse an activation matrix of the wrong rank, width or size, or with NaN/Inf rows."""
    checks.array(name, x, ndim=2, width=width, finite=False)
    shape = tuple(np.shape(x))
    if shape[1] < 1:
        raise ValueError(f"{name} must have at least one unit (column), got shape {shape}")
    if shape[0] < min_rows:
        raise ValueError(f"{name} must have at least {min_rows} rows, got shape {shape}")
    bad = nonfinite_rows(x)
    if bad.size:
        raise ValueError(
            f"{name} has NaN or Inf in {bad.size} row(s) of {shape[0]}; first rows: "
            f"{bad[:5].tolist()}"
        )
    return x


def check_metrics(metrics) -> dict[str, Callable]:
    """The requested metrics as ``name -> function``; refuse unknown or repeated names.

    Args:
      metrics: names from :func:`available_metrics`, or a mapping ``name -> f(X, Y, *, n_folds,
        seed)`` for custom metrics (scored like matching metrics unless named ``ridge``).
    """
    if isinstance(metrics, Mapping):
        if not metrics or not all(isinstance(n, str) and callable(f) for n, f in metrics.items()):
            raise ValueError(
                f"metrics must map names to callables f(X, Y, *, n_folds, seed), got {metrics!r}"
            )
        return dict(metrics)
    if isinstance(metrics, str) or not isinstance(metrics, Sequence) or not metrics:
        raise ValueError(f"metrics must be a non-empty sequence of metric names, got {metrics!r}")
    registry = available_metrics()
    unknown = [m for m in metrics if m not in registry]
    if unknown:
        raise ValueError(f"metrics: unknown metric(s) {unknown}; available: {sorted(registry)}")
    if len(set(metrics)) != len(metrics):
        raise ValueError(f"metrics must not repeat a name, got {list(metrics)}")
    return {m: registry[m] for m in metrics}


def _nonnegative_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    return int(seed)


def _stacked(name: str, params: sae.SAEParams, sae_seeds: int) -> sae.SAEParams:
    """Params with a leading seed axis of length ``sae_seeds``."""
    ndim = np.ndim(params.W_enc)
    if ndim == 2:
        if sae_seeds != 1:
            raise ValueError(
                f"{name} holds one trained SAE (W_enc {np.shape(params.W_enc)}) but "
                f"sae_seeds={sae_seeds}; pass params stacked as [sae_seeds, ...]"
            )
        return jax.tree.map(lambda a: jnp.asarray(a)[None], params)
    if ndim != 3 or np.shape(params.W_enc)[0] != sae_seeds:
        raise ValueError(
            f"{name} params must be one SAE or [sae_seeds={sae_seeds}, ...] stacked, got W_enc "
            f"of shape {np.shape(params.W_enc)}"
        )
    return jax.tree.map(jnp.asarray, params)


def _check_params_shape(name: str, config: sae.SAEConfig, params: sae.SAEParams) -> None:
    want = {
        "W_enc": (config.n_inputs, config.n_latents),
        "b_enc": (config.n_latents,),
        "W_dec": (config.n_latents, config.n_inputs),
        "b_dec": (config.n_inputs,),
    }
    for field, shape in want.items():
        got = tuple(np.shape(getattr(params, field))[1:])
        if got != shape:
            raise ValueError(
                f"{name}.{field} must be [S, {', '.join(map(str, shape))}] for n_inputs="
                f"{config.n_inputs}, n_latents={config.n_latents}, got "
                f"{np.shape(getattr(params, field))}"
            )


def _check_normalisable(
    name: str, config: sae.SAEConfig, remedy: str = ", or an SAE with normalize_inputs=False"
) -> None:
    """Refuse per-sample normalisation of a single unit: it maps every row to 0."""
    if config.normalize_inputs and config.n_inputs < 2:
        raise ValueError(
            f"{name} normalises every row over its units (normalize_inputs=True), which makes "
            f"every row 0 with n_inputs={config.n_inputs}; its activations need at least 2 "
            f"units (columns){remedy}"
        )


def _check_split_folds(
    flag: str, n_folds, n_rows: int, n_train: int, n_score: int, rows: str, remedy: str
) -> None:
    """The fold count against the scoring half of a :func:`split_rows` split of ``n_rows``."""
    try:
        _folds.check_fold_counts(n_score, n_folds)
    except ValueError:
        if isinstance(n_folds, bool) or not isinstance(n_folds, numbers.Integral) or n_folds < 2:
            raise
        raise ValueError(
            f"{flag}={n_folds} needs at least {2 * n_folds} scoring rows (2 per fold), but the "
            f"{n_rows} {rows} are split into {n_train} SAE training rows and {n_score} scoring "
            f"rows; need at least {4 * n_folds - 1} rows, or {remedy}"
        ) from None


def resolve_sae(
    name: str, spec, n_inputs: int, n_train_rows: int | None, sae_seeds: int
) -> tuple[sae.SAEConfig, sae.SAEParams | None]:
    """``(config, stacked params or None)`` of one side's SAE argument (see :func:`compare`)."""
    if spec is None:
        config, params = default_sae_config(n_inputs, n_train_rows), None
    elif isinstance(spec, sae.SAEConfig):
        config, params = spec, None
    elif isinstance(spec, TrainedSAE):
        config, params = spec.config, _stacked(name, spec.params, sae_seeds)
    elif isinstance(spec, sae.SAEParams):
        n_latents = int(np.shape(spec.W_enc)[-1])
        config = default_sae_config(
            int(np.shape(spec.W_enc)[-2]),
            expansion=1,
            n_latents=n_latents,
            k=default_k(n_inputs, n_latents),
        )
        params = _stacked(name, spec, sae_seeds)
    else:
        raise ValueError(
            f"{name} must be None, an SAEConfig, SAEParams or a TrainedSAE, got "
            f"{type(spec).__name__}"
        )
    if config.n_inputs != n_inputs:
        raise ValueError(
            f"{name} is for n_inputs={config.n_inputs} units but its activations have {n_inputs}"
        )
    _check_normalisable(name, config)
    if params is not None:
        _check_params_shape(name, config, params)
    return config, params


# ---------------------------------------------------------------------------------------------
# Training and encoding.


def take_rows(x, rows, block_rows: int = DEFAULT_CHUNK_ROWS) -> np.ndarray:
    """``x[rows]`` as float32 numpy, for numpy arrays, memory maps and h5py datasets alike.

    numpy and jax arrays (memory maps included) are indexed directly. Other array-likes (h5py
    datasets, which read a list of rows slowly and only in increasing order) are read as
    contiguous slices of at most ``block_rows`` rows covering the requested rows, which are
    picked out in memory and returned in the requested order.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if isinstance(x, np.ndarray | jax.Array):
        return np.asarray(x[rows], np.float32)
    out = np.empty((rows.size, *np.shape(x)[1:]), np.float32)
    order = np.argsort(rows, kind="stable")
    wanted = rows[order]
    start = 0
    while start < wanted.size:
        lo = int(wanted[start])
        stop = int(np.searchsorted(wanted, lo + block_rows, side="left"))
        block = np.asarray(x[lo : int(wanted[stop - 1]) + 1], np.float32)
        out[order[start:stop]] = block[wanted[start:stop] - lo]
        start = stop
    return out


def _check_chunk_rows(name: str, chunk_rows, batch_size: int, sae_name: str = "the SAE") -> int:
    """``chunk_rows`` as an int; refuse one that is not a positive integer or below a batch."""
    chunk_rows = checks.positive_int(name, chunk_rows)
    if chunk_rows < batch_size:
        raise ValueError(
            f"{name}={chunk_rows} is smaller than the batch_size={batch_size} of {sae_name}: "
            f"no chunk would hold one batch; need at least {batch_size} rows per chunk"
        )
    return chunk_rows


def _chunk_bounds(n_rows: int, chunk_rows: int, batch_size: int) -> np.ndarray:
    """Where :func:`train_saes` cuts ``n_rows`` training rows into chunks: ``[n_chunks + 1]``.

    Chunks of ``chunk_rows`` rounded down to a multiple of ``batch_size``; the last one holds the
    rest, merged into the chunk before it when the rest is less than one batch. The chunks
    then hold ``n_rows // batch_size`` full batches in all.
    """
    size = chunk_rows // batch_size * batch_size
    bounds = list(range(0, n_rows, size)) + [n_rows]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < batch_size:
        del bounds[-2]
    return np.asarray(bounds)


def train_saes(
    config: sae.SAEConfig,
    x,
    key: jax.Array,
    n_seeds: int = 1,
    *,
    rows=None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    callback: Callable[[int, int], None] | None = None,
) -> tuple[sae.SAEParams, sae.SAEMetrics]:
    """Train ``n_seeds`` SAEs on the same rows, seeds a ``vmap`` axis.

    The rows are cut, in order, into chunks of ``chunk_rows`` rounded down to a multiple of
    ``batch_size`` (the last chunk holds the rows left over, together with the chunk before it
    when fewer than ``batch_size`` rows are left, so it may exceed ``chunk_rows`` by less than
    one batch). The chunks are read from ``x`` one at a time (so ``x`` may be a memory map or an
    h5py dataset larger than memory), in a new seeded order every epoch; each chunk is one
    jitted scan over its batches (:func:`sae.make_chunk_run`). Only the last chunk can hold a
    remainder of fewer than ``batch_size`` rows, which is skipped, so every epoch takes ``n //
    batch_size`` steps whatever the chunking, as :func:`sae.make_train` does. Seed ``s`` uses
    key ``split(key, n_seeds)[s]``: ``(k_init, k_data) = split(.)``, epoch keys ``split(k_data,
    n_epochs)``; with one chunk (every ``n <= chunk_rows``) that is exactly
    ``sae.make_train(config)(key_s, x[rows])``.

    Args:
      config: the SAE.
      x: [M, n_inputs] activations (numpy, memory map, jax array or h5py dataset).
      key: PRNG key.
      n_seeds: SAEs to train.
      rows: row indices of ``x`` to train on (None: all rows).
      chunk_rows: rows per chunk (see above); at least ``config.batch_size``.
      callback: ``callback(done, total)`` after each chunk (progress bars); it waits for the
        chunk to finish.

    Returns:
      ``(params, metrics)`` with a leading ``[n_seeds]`` axis; metrics over all steps.

    Raises:
      ValueError: ``chunk_rows`` smaller than ``config.batch_size`` (no chunk would hold a
        batch), or fewer than ``batch_size`` rows.
    """
    n_seeds = checks.positive_int("n_seeds", n_seeds)
    chunk_rows = _check_chunk_rows("chunk_rows", chunk_rows, config.batch_size)
    rows = np.arange(np.shape(x)[0]) if rows is None else np.asarray(rows)
    n = rows.size
    if n < config.batch_size:
        raise ValueError(
            f"the SAE needs at least batch_size={config.batch_size} training rows, got {n}"
        )
    bounds = _chunk_bounds(n, chunk_rows, config.batch_size)
    n_chunks = bounds.size - 1
    seed_keys = jax.random.split(key, n_seeds)
    k_init, k_data = jnp.swapaxes(jax.vmap(jax.random.split)(seed_keys), 0, 1)
    epoch_keys = jax.vmap(lambda k: jax.random.split(k, config.n_epochs))(k_data)
    state = jax.vmap(lambda k: sae.init_state(config, k))(k_init)
    run = partial(_run_chunk, config)
    history = []
    total, done = config.n_epochs * n_chunks, 0
    for epoch in range(config.n_epochs):
        order = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), n_chunks))
        for position, c in enumerate(order):
            chunk = take_rows(x, rows[bounds[c] : bounds[c + 1]])
            keys = epoch_keys[:, epoch]
            if n_chunks > 1:
                keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, position)
            state, metrics = run(state, chunk, keys)
            history.append(metrics)
            done += 1
            if callback is not None:
                jax.block_until_ready(metrics)
                callback(done, total)
    metrics = jax.tree.map(lambda *m: jnp.concatenate(m, axis=1), *history)
    return state.params, metrics


@partial(jax.jit, static_argnums=0)
def _run_chunk(config, state, x, keys):
    run = sae.make_chunk_run(config)
    if keys.shape[0] == 1:
        # One seed runs without the vmap: a seed axis of size 1 makes every product a batched
        # one, and the dead-latent loss's skip when no latent is dead would run both branches.
        one = run(jax.tree.map(lambda a: a[0], state), x, keys[0])
        return jax.tree.map(lambda a: a[None], one)
    return jax.vmap(run, in_axes=(0, None, 0))(state, x, keys)


@partial(jax.jit, static_argnums=0)
def _encode_block(config: sae.SAEConfig, params: sae.SAEParams, x: jax.Array):
    """Latents of a block for every seed and the block's sums for the quality measures."""
    raw = dataclasses.replace(config, normalize_inputs=False)
    xn = sae.preprocess(config, x)

    def one(p):
        latents = sae.encode(raw, p, xn)[0]
        err = jnp.sum((sae.decode(config, p, latents) - xn) ** 2)
        return latents, err, jnp.sum(latents != 0), jnp.any(latents != 0, axis=0)

    latents, err, active, fired = jax.vmap(one)(params)
    return latents, err, active, fired, jnp.sum(xn, 0), jnp.sum(xn**2, 0)


def encode(trained: TrainedSAE, x, block_rows: int = 4096) -> tuple[np.ndarray, SAEQuality]:
    """Latents of every SAE seed on ``x`` and their :class:`SAEQuality` on those rows.

    Args:
      trained: the SAEs (params ``[S, ...]``).
      x: [M, n_inputs] activations.
      block_rows: rows encoded at a time (memory: ``S * block_rows * n_latents`` floats twice).

    Returns:
      ``(latents [S, M, n_latents] float32, quality)``.
    """
    config, params = trained
    x = np.asarray(x, np.float32)
    n_seeds = int(np.shape(params.W_enc)[0])
    out = np.empty((n_seeds, x.shape[0], config.n_latents), np.float32)
    err = np.zeros(n_seeds)
    active = np.zeros(n_seeds)
    fired = np.zeros((n_seeds, config.n_latents), bool)
    total = np.zeros(config.n_inputs)
    squares = np.zeros(config.n_inputs)
    for start in range(0, x.shape[0], block_rows):
        block = x[start : start + block_rows]
        lat, e, a, f, s, s2 = _encode_block(config, params, block)
        out[:, start : start + block.shape[0]] = np.asarray(lat)
        err += np.asarray(e, np.float64)
        active += np.asarray(a, np.float64)
        fired |= np.asarray(f)
        total += np.asarray(s, np.float64)
        squares += np.asarray(s2, np.float64)
    variance = float(np.sum(squares - total**2 / x.shape[0]))
    fve = 1.0 - err / variance if variance > 0 else np.full(n_seeds, np.nan)
    quality = SAEQuality(
        fve=fve,
        l0=active / x.shape[0],
        dead=(~fired).sum(axis=1),
        n_latents=config.n_latents,
    )
    return out, quality


# ---------------------------------------------------------------------------------------------
# Scoring.


def score_conditions(
    X,
    Y,
    sae_x,
    sae_y,
    randsae_x,
    *,
    metrics=DEFAULT_METRICS,
    n_folds: int = 5,
    seed: int = 0,
    callback: Callable[[int, int], None] | None = None,
    conditions: Collection[str] | None = None,
    workers: int = 1,
) -> dict:
    """Every condition of every metric, from neuron activations and SAE latents of the same rows.

    This is where the conditions are defined; :func:`compare` and the experiments call it.

    Args:
      X: [M, Na] source neurons.
      Y: [M, Nb] target neurons.
      sae_x: [S, M, La] latents of X's SAEs (one per SAE seed).
      sae_y: [S, M, Lb] latents of Y's SAEs.
      randsae_x: [M, Lr] latents of the untrained control SAE on X.
      metrics: metric names or a ``name -> function`` mapping (:func:`check_metrics`).
      n_folds: folds K.
      seed: fold seed.
      callback: ``callback(done, total)`` after each metric call.
      conditions: score only these conditions (None: all of each metric's), e.g. to skip
        Neuron->Neuron when it was scored already on the same X and Y.
      workers: metric calls run side by side on this many threads (the same results: every call
        is computed as on its own). Two use a 2-core CPU better than one (much of a call is
        single-threaded host work or compilation) but hold two calls' working memory at once.

    Returns:
      ``scores[metric][condition]``: a result, or a tuple of S results for
      :data:`SEED_CONDITIONS` (seed ``s``: ``sae_x[s]`` with ``sae_y[s]``).
    """
    fns = check_metrics(metrics)
    workers = checks.positive_int("workers", workers)
    every = set(MATCHING_CONDITIONS) | set(REGRESSION_CONDITIONS)
    if conditions is not None and (isinstance(conditions, str) or not set(conditions) <= every):
        raise ValueError(f"conditions must be a collection of {sorted(every)}, got {conditions!r}")
    wanted_conditions = every if conditions is None else set(conditions)
    n_seeds = int(np.shape(sae_x)[0])
    if np.ndim(sae_x) != 3 or np.ndim(sae_y) != 3 or np.shape(sae_y)[0] != n_seeds:
        raise ValueError(
            f"sae_x and sae_y must be [S, M, latents] with the same S, got {np.shape(sae_x)} and "
            f"{np.shape(sae_y)}"
        )
    sources = {"neuron": lambda s: X, "sae": lambda s: sae_x[s], "randsae": lambda s: randsae_x}
    targets = {"neuron": lambda s: Y, "sae": lambda s: sae_y[s]}
    # Soft- and semi-matching of the same pair share one pass over the rows.
    joint = (
        fns.get("soft_matching") is METRICS["soft_matching"]
        and fns.get("semi_matching") is METRICS["semi_matching"]
    )
    jobs: dict[tuple[str, int], list[str]] = {}
    for metric in fns:
        for cond in conditions_of(metric):
            if cond not in wanted_conditions:
                continue
            for s in range(n_seeds) if cond in SEED_CONDITIONS else (None,):
                jobs.setdefault((cond, s), []).append(metric)
    # The metric calls: (condition, SAE seed, metric names), one call each.
    pair = ("soft_matching", "semi_matching")
    calls = []
    for (cond, s), wanted in jobs.items():
        rest = list(wanted)
        if joint and set(pair) <= set(wanted):
            calls.append((cond, s, pair))
            rest = [m for m in rest if m not in pair]
        calls += [(cond, s, (m,)) for m in rest]

    def score(call):
        cond, s, names = call
        src, tgt = cond.split("_")
        A, B = sources[src](s or 0), targets[tgt](s or 0)
        kw = dict(n_folds=n_folds, seed=seed)
        with _naming_condition(cond, s, jobs[(cond, s)]):
            if names == pair:
                return matching.soft_and_semi_matching(A, B, keep_plans=False, **kw)
            return (fns[names[0]](A, B, **kw),)

    results: dict = {metric: {} for metric in fns}
    with contextlib.ExitStack() as stack:
        if workers > 1:
            # Ridge's calls (the longest on many rows) first, so that none is left running alone
            # at the end: at N = 32 of the toy experiment, 48 s instead of 52 s warm.
            calls.sort(key=lambda call: call[2] != ("ridge",))
            pool = stack.enter_context(ThreadPoolExecutor(min(workers, len(calls) or 1)))
            # On an error, calls not started yet are dropped (the running ones finish).
            stack.callback(pool.shutdown, wait=False, cancel_futures=True)
            outs = pool.map(score, calls)
        else:
            outs = map(score, calls)
        for done, ((cond, s, names), out) in enumerate(zip(calls, outs, strict=True), 1):
            for metric, result in zip(names, out, strict=True):
                results[metric].setdefault(cond, {})[s] = result
            if callback is not None:
                callback(done, len(calls))
    return {
        metric: {
            cond: tuple(conds[cond][s] for s in range(n_seeds))
            if cond in SEED_CONDITIONS
            else conds[cond][None]
            for cond in conditions_of(metric)
            if cond in wanted_conditions
        }
        for metric, conds in results.items()
    }


_ROLES = {
    "neuron": ("the neurons of X", "the neurons of Y"),
    "sae": ("the latents of sae_x", "the latents of sae_y"),
    "randsae": ("the latents of the random SAE of X",),
}


@contextlib.contextmanager
def _naming_condition(cond: str, seed: int | None, metrics: list[str]):
    """Re-raise a metric's ``ValueError`` naming the condition and what its X and Y are."""
    try:
        yield
    except ValueError as err:
        src, tgt = cond.split("_")
        which = "" if seed is None else f", SAE seed {seed}"
        raise ValueError(
            f"{cond}{which} ({', '.join(metrics)}; X: {_ROLES[src][0]}, Y: {_ROLES[tgt][1]}): {err}"
        ) from err


def gains(scores: dict) -> dict[str, Gain]:
    """``gain[metric]``: SAE->SAE against Neuron->Neuron per SAE seed (see :class:`Gain`)."""
    out = {}
    for metric, conds in scores.items():
        base = conds["neuron_neuron"].mean
        new = np.array([r.mean for r in conds["sae_sae"]], np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            percent = 100.0 * (new - base) / abs(base)
        std = float(percent.std(ddof=1)) if percent.size > 1 else float("nan")
        out[metric] = Gain(percent, float(percent.mean()), std)
    return out


def _means(scores: dict) -> dict:
    """Fold means in the layout of ``scores``: floats, or [S] arrays for seed conditions."""
    return {
        metric: {
            cond: np.array([r.mean for r in res]) if cond in SEED_CONDITIONS else res.mean
            for cond, res in conds.items()
        }
        for metric, conds in scores.items()
    }


def null_permutation(n_rows: int, seed: int, index: int) -> np.ndarray:
    """The ``index``-th shuffled stimulus order of Y used by the permutation null."""
    return np.random.default_rng([int(seed), 0x4E11, int(index)]).permutation(int(n_rows))


# ---------------------------------------------------------------------------------------------
# The method.


def compare(
    X,
    Y,
    *,
    X_train=None,
    Y_train=None,
    sae_x=None,
    sae_y=None,
    metrics=DEFAULT_METRICS,
    sae_seeds: int = 1,
    n_folds: int = 5,
    seed: int = 0,
    null_permutations: int = 0,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Callable[[str, int, int], None] | None = None,
) -> Comparison:
    """Compare two representations with and without SAEs: the paper's method in one call.

    Args:
      X: [M, Na] source responses (numpy or jax); row i is stimulus i.
      Y: [M, Nb] target responses to the same stimuli, in the same order.
      X_train: [Mx, Na] rows to train X's SAE on (e.g. the train split); with it (and
        ``Y_train``) every row of X and Y is scored. None: see the module docstring.
      Y_train: [My, Nb] rows to train Y's SAE on.
      sae_x: X's SAE: None (:func:`default_sae_config`), an :class:`superalign.sae.SAEConfig`
        (trained here), trained :class:`superalign.sae.SAEParams` (one SAE, or ``[S, ...]``
        stacked; encoded with the default config's ``k`` and normalisation), or a
        :class:`TrainedSAE` (config and params).
      sae_y: Y's SAE, likewise.
      metrics: metric names (:func:`available_metrics`) or a ``name -> function`` mapping.
      sae_seeds: SAEs per side, trained at once as a ``vmap`` axis.
      n_folds: cross-validation folds K of every metric.
      seed: seed of the folds, the row split, the SAE keys (:func:`sae_key`) and the
        permutations.
      null_permutations: score every condition again under this many seeded shuffles of Y's
        stimulus order (:func:`null_permutation`) and report p-values; 0 for none.
      chunk_rows: SAE training rows per chunk (:func:`train_saes`).
      progress: ``progress(stage, done, total)`` with stage ``"train x"``, ``"train y"``,
        ``"score"`` or ``"null"`` (progress bars).

    Returns:
      A :class:`Comparison`. Warns (``UserWarning``) when an SAE explains less than
      :data:`FVE_WARNING` of the scoring rows' variance.

    Raises:
      ValueError: naming the argument, before any training, for bad shapes, unequal row
        counts, NaN or Inf rows, too few rows for the folds or the SAE batch, unknown metrics and
        bad settings.
    """
    # --- validation: everything before any training.
    sae_seeds = checks.positive_int("sae_seeds", sae_seeds)
    null_permutations = _nonnegative_int("null_permutations", null_permutations)
    seed = _check_seed(seed)
    fns = check_metrics(metrics)
    check_rows("X", X)
    check_rows("Y", Y)
    if np.shape(X)[0] != np.shape(Y)[0]:
        raise ValueError(
            f"X and Y must have the same number of rows (stimuli), got X {np.shape(X)} and "
            f"Y {np.shape(Y)}"
        )
    n_rows, na, nb = int(np.shape(X)[0]), int(np.shape(X)[1]), int(np.shape(Y)[1])
    trains = {"x": X_train, "y": Y_train}
    for side, t, width in (("x", X_train, na), ("y", Y_train, nb)):
        if t is not None:
            check_rows(f"{side.upper()}_train", t, width=width)
    given = any(t is not None for t in trains.values())
    split = None
    if not given and not all(isinstance(s, TrainedSAE | sae.SAEParams) for s in (sae_x, sae_y)):
        split = split_rows(n_rows, seed)
    score_rows = np.arange(n_rows) if split is None else split[1]
    n_train = {
        side: int(np.shape(t)[0]) if t is not None else (len(split[0]) if split else None)
        for side, t in trains.items()
    }
    configs, params = {}, {}
    for side, spec, width in (("x", sae_x, na), ("y", sae_y, nb)):
        configs[side], params[side] = resolve_sae(
            f"sae_{side}", spec, width, n_train[side], sae_seeds
        )
    for side in ("x", "y"):
        name = f"{side.upper()}_train"
        if params[side] is not None and trains[side] is not None:
            raise ValueError(f"{name} is given but sae_{side} is already trained")
        if params[side] is None and given and trains[side] is None:
            raise ValueError(
                f"{name} is required: the other side's training rows are given and sae_{side} "
                "is not trained (give both, or neither for the 50/50 split)"
            )
        if params[side] is None and n_train[side] < configs[side].batch_size:
            raise ValueError(
                f"{name if given else 'X and Y'} must give at least batch_size="
                f"{configs[side].batch_size} SAE training rows, got {n_train[side]}"
                + ("" if given else f" (half of {n_rows} rows)")
            )
        if params[side] is None:
            _check_chunk_rows("chunk_rows", chunk_rows, configs[side].batch_size, f"sae_{side}")
    if split is None:
        _folds.check_fold_counts(len(score_rows), n_folds)
    else:
        _check_split_folds(
            "n_folds",
            n_folds,
            n_rows,
            len(split[0]),
            len(score_rows),
            "rows of X and Y",
            "pass X_train and Y_train (every row of X and Y is then scored)",
        )
    X_score = np.asarray(take_rows(X, score_rows))
    Y_score = np.asarray(take_rows(Y, score_rows))
    # The dead-unit rule and the constant-column check of the metrics, on the neurons now.
    _folds.prepare(X_score, Y_score, n_folds, seed)

    def report(stage):
        return None if progress is None else partial(progress, stage)

    # --- SAEs.
    saes = {}
    for side, data in (("x", X), ("y", Y)):
        if params[side] is None:
            x, rows = (trains[side], None) if given else (data, split[0])
            params[side], _ = train_saes(
                configs[side],
                x,
                sae_key(seed, side),
                sae_seeds,
                rows=rows,
                chunk_rows=chunk_rows,
                callback=report(f"train {side}"),
            )
        saes[side] = TrainedSAE(configs[side], params[side])
    rand = jax.tree.map(lambda a: a[None], sae.init(configs["x"], sae_key(seed, "random")))
    saes["random"] = TrainedSAE(configs["x"], rand)

    codes_x, quality_x = encode(saes["x"], X_score)
    codes_y, quality_y = encode(saes["y"], Y_score)
    codes_r = encode(saes["random"], X_score)[0][0]
    quality = {"x": quality_x, "y": quality_y}
    for side, q in quality.items():
        low = np.flatnonzero(~(q.fve >= FVE_WARNING))
        if low.size:
            warnings.warn(
                f"compare: the SAE of {side.upper()} explains too little of the scoring rows' "
                f"variance (FVE {np.round(q.fve[low], 3).tolist()} for seed(s) {low.tolist()}, "
                f"below {FVE_WARNING}); SAE conditions then reflect the SAE's fit more than "
                "alignment. Train longer (n_epochs), on more rows, or with a larger k.",
                UserWarning,
                stacklevel=2,
            )

    kw = dict(metrics=fns, n_folds=n_folds, seed=seed)
    scores = score_conditions(
        X_score, Y_score, codes_x, codes_y, codes_r, callback=report("score"), **kw
    )

    null = None
    if null_permutations:
        observed = _means(scores)
        draws = []
        for i in range(null_permutations):
            perm = null_permutation(len(score_rows), seed, i)
            draws.append(
                _means(
                    score_conditions(
                        X_score, Y_score[perm], codes_x, codes_y[:, perm], codes_r, **kw
                    )
                )
            )
            if progress is not None:
                progress("null", i + 1, null_permutations)
        null = {}
        for metric, conds in observed.items():
            null[metric] = {}
            for cond, obs in conds.items():
                values = np.stack([np.asarray(d[metric][cond]) for d in draws], axis=-1)
                exceed = (values >= np.asarray(obs)[..., None]).sum(axis=-1)
                p = (1.0 + exceed) / (1.0 + null_permutations)
                null[metric][cond] = NullResult(values, p if np.ndim(p) else float(p))

    return Comparison(
        scores=scores,
        gain=gains(scores),
        sae_quality=quality,
        null=null,
        saes=saes,
        scoring_rows=score_rows,
        training_rows=None if split is None else split[0],
    )


# ---------------------------------------------------------------------------------------------
# Reports: JSON-ready records, a markdown table and a figure.


def _record(result) -> dict:
    """The JSON record of one metric result: folds, mean, sem and what explains it."""
    rec = {"folds": np.asarray(result.folds), "mean": result.mean, "sem": result.sem}
    fields = getattr(result, "_fields", ())
    for name in ("alpha", "converged"):
        if name in fields:
            rec[name] = np.asarray(getattr(result, name))
    for name in ("dead_x", "dead_y"):
        if name in fields:
            rec[f"n_{name}"] = int(np.size(getattr(result, name)))
    return rec


def to_dict(comparison: Comparison) -> dict:
    """A JSON-ready summary of a :class:`Comparison` (no parameters, no latents).

    Seed conditions hold a list of per-seed records; every record has ``folds``, ``mean`` and
    ``sem`` (plus ``alpha`` for ridge, ``converged`` for soft-matching, dead-unit counts).
    """
    scores = {
        metric: {
            cond: [_record(r) for r in res] if cond in SEED_CONDITIONS else _record(res)
            for cond, res in conds.items()
        }
        for metric, conds in comparison.scores.items()
    }
    out = {
        "scores": scores,
        "gain": {m: g._asdict() for m, g in comparison.gain.items()},
        "sae_quality": {s: q._asdict() for s, q in comparison.sae_quality.items()},
        "sae_configs": {
            s: dataclasses.asdict(t.config) for s, t in comparison.saes.items() if s != "random"
        },
        "n_scoring_rows": int(len(comparison.scoring_rows)),
        "n_training_rows": None
        if comparison.training_rows is None
        else int(len(comparison.training_rows)),
        "null": None,
    }
    if comparison.null is not None:
        out["null"] = {
            m: {c: n._asdict() for c, n in conds.items()} for m, conds in comparison.null.items()
        }
    return out


def _mean_sem(rec) -> tuple[float, float, np.ndarray]:
    """Mean over seeds of fold means, mean fold sem, and the per-seed means."""
    recs = rec if isinstance(rec, list) else [rec]
    means = np.array([np.nan if r["mean"] is None else r["mean"] for r in recs], float)
    sems = np.array([np.nan if r["sem"] is None else r["sem"] for r in recs], float)
    return float(means.mean()), float(sems.mean()), means


def _signed(v) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:+.1f}%"


def table(results: dict) -> str:
    """A markdown table of every metric's conditions (mean ± sem) and gains, from :func:`to_dict`.

    With several SAE seeds a seed condition shows the mean over seeds of the fold means and
    the mean fold sem.
    """
    conds = list(dict.fromkeys(c for m in results["scores"].values() for c in m))
    null = results.get("null")
    lines = [
        "| metric | " + " | ".join(conds) + " | SAE->SAE gain (mean ± std over seeds) |",
        "|---|" + "---|" * (len(conds) + 1),
    ]
    for metric, recs in results["scores"].items():
        cells = []
        for c in conds:
            if c not in recs:
                cells.append("")
                continue
            mean, sem, _ = _mean_sem(recs[c])
            cell = f"{mean:.3f} ± {sem:.3f}"
            if null is not None:
                p = np.atleast_1d(np.asarray(null[metric][c]["p_value"], float))
                cell += f" (p {', '.join(f'{v:.3g}' for v in p)})"
            cells.append(cell)
        g = results["gain"][metric]
        spread = "" if g["std"] is None or not np.isfinite(g["std"]) else f" ± {g['std']:.1f}"
        lines.append(f"| {metric} | " + " | ".join(cells) + f" | {_signed(g['mean'])}{spread} |")
    lines.append("")
    lines.append("| SAE | latents | FVE | L0 | dead latents |")
    lines.append("|---|---|---|---|---|")
    for side, q in results["sae_quality"].items():
        lines.append(
            f"| {side} | {q['n_latents']} | {', '.join(f'{v:.3f}' for v in q['fve'])} | "
            f"{', '.join(f'{v:.1f}' for v in q['l0'])} | {', '.join(map(str, q['dead']))} |"
        )
    return "\n".join(lines) + "\n"


_COLOURS = {
    "neuron_neuron": "#7f7f7f",
    "sae_sae": "#1f77b4",
    "sae_neuron": "#6baed6",
    "randsae_sae": "#d62728",
    "randsae_neuron": "#ff9896",
}


def plot(results: dict):
    """One panel per metric: every condition's score (mean ± fold sem), the SAE->SAE gain.

    Takes :func:`to_dict`'s output (or ``results.json``); per-seed values are dots. Returns the
    matplotlib figure (the caller chooses the backend and saves it).
    """
    import matplotlib.pyplot as plt

    metrics = list(results["scores"])
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(3.6 * len(metrics), 3.4), squeeze=False, layout="constrained"
    )
    for ax, metric in zip(axes[0], metrics, strict=True):
        recs = results["scores"][metric]
        for i, (cond, rec) in enumerate(recs.items()):
            mean, sem, per_seed = _mean_sem(rec)
            ax.bar(i, mean, yerr=sem, color=_COLOURS.get(cond, "#999999"), capsize=3)
            if per_seed.size > 1:
                ax.plot(np.full(per_seed.size, i), per_seed, "k.", ms=4)
        ax.set_xticks(range(len(recs)))
        ax.set_xticklabels([c.replace("_", "->") for c in recs], rotation=30, ha="right")
        ax.axhline(0, color="k", lw=0.5)
        g = results["gain"][metric]
        spread = "" if g["std"] is None or not np.isfinite(g["std"]) else f" ± {g['std']:.1f}"
        ax.set_title(f"{metric}\nSAE->SAE gain {_signed(g['mean'])}{spread}", fontsize=9)
    axes[0][0].set_ylabel("score (mean over folds)")
    return fig


# ---------------------------------------------------------------------------------------------
# Command line.


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="superalign-compare",
        description="Compare two representations Neuron->Neuron against SAE->SAE (Longon, "
        "Klindt & Khosla 2025). A is the source, B the target (ridge predicts B from A).",
    )
    p.add_argument("a", help="source activations: .npy, .npz or .h5/.hdf5 ([n, units])")
    p.add_argument("b", help="target activations (same formats)")
    p.add_argument("--out", required=True, help="output directory (a rerun resumes)")
    p.add_argument("--key", default="activations", help="array name in .npz / .h5 files")
    p.add_argument("--train-a", help="rows to train A's SAE on (default: a 50/50 split)")
    p.add_argument("--train-b", help="rows to train B's SAE on (with --train-a)")
    p.add_argument("--expansion", type=int, default=4, help="SAE latents per unit (4)")
    p.add_argument("--k", type=int, help="active latents (default: units / 25)")
    p.add_argument("--epochs", type=int, help="SAE epochs (default: about 4,000 steps)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--sae-seeds", type=int, default=1)
    p.add_argument(
        "--metrics", default=",".join(DEFAULT_METRICS), help="comma-separated metric names"
    )
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--null-permutations", type=int, default=0)
    p.add_argument(
        "--chunk-rows",
        type=int,
        default=DEFAULT_CHUNK_ROWS,
        help="SAE training rows read per chunk (rounded down to whole batches; at least one batch)",
    )
    p.add_argument("--cache-dir", help="JAX compilation cache (default: OUT/jax_cache)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


class _Side(NamedTuple):
    name: str  # "a" or "b"
    data: object  # io.Activations of the scored file
    train: object  # io.Activations of the training file (may be data)
    train_rows: np.ndarray | None  # rows of train.values (None: all)
    score_rows: np.ndarray
    config: sae.SAEConfig


class _Plan(NamedTuple):
    sides: tuple
    X: np.ndarray
    Y: np.ndarray
    metrics: list
    matched: int | None
    settings: dict


def _file_rows_ok(label: str, act, rows) -> None:
    """Refuse NaN or Inf in the used rows of a file (read in chunks), naming file rows."""
    bad = nonfinite_rows(act.values)
    if rows is not None:
        bad = np.intersect1d(bad, rows)
    if bad.size:
        raise ValueError(
            f"{label} ({act.path}) has NaN or Inf in {bad.size} used row(s); first file rows: "
            f"{bad[:5].tolist()}"
        )


def _prepare(args, log) -> _Plan:
    """Read, align and validate everything; every input error is raised here."""
    from superalign import io

    sae_seeds = checks.positive_int("--sae-seeds", args.sae_seeds)
    _nonnegative_int("--null-permutations", args.null_permutations)
    _check_seed(args.seed)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    check_metrics(metrics)
    checks.positive_int("--chunk-rows", args.chunk_rows)
    checks.positive_int("--batch-size", args.batch_size)
    a = io.read_activations(args.a, key=args.key)
    b = io.read_activations(args.b, key=args.key)
    align = io.align_rows(a, b)
    if align.image_ids is not None:
        log(
            f"matched {align.image_ids.size} stimuli by image_ids ({a.values.shape[0]} rows in "
            f"{a.path.name}, {b.values.shape[0]} in {b.path.name})"
        )
    if (args.train_a is None) != (args.train_b is None):
        raise ValueError("--train-a and --train-b must be given together")
    n = align.rows_a.size
    if args.train_a is not None:
        ta = io.read_activations(args.train_a, key=args.key)
        tb = io.read_activations(args.train_b, key=args.key)
        for t, d, flag in ((ta, a, "--train-a"), (tb, b, "--train-b")):
            if t.values.shape[1] != d.values.shape[1]:
                raise ValueError(
                    f"{flag} ({t.path}) has {t.values.shape[1]} units but {d.path} has "
                    f"{d.values.shape[1]}"
                )
        trains = ((ta, None), (tb, None))
        score = np.arange(n)
    else:
        train, score = split_rows(n, args.seed)
        trains = ((a, align.rows_a[train]), (b, align.rows_b[train]))
        _check_split_folds(
            "--folds",
            args.folds,
            n,
            train.size,
            score.size,
            "matched rows of A and B",
            "give --train-a and --train-b (every matched row is then scored)",
        )
    _folds.check_fold_counts(score.size, args.folds)
    sides = []
    for name, data, rows, (t, t_rows) in (
        ("a", a, align.rows_a, trains[0]),
        ("b", b, align.rows_b, trains[1]),
    ):
        n_train = t.values.shape[0] if t_rows is None else t_rows.size
        overrides = dict(batch_size=args.batch_size, lr=args.lr)
        if args.k is not None:
            overrides["k"] = args.k
        if args.epochs is not None:
            overrides["n_epochs"] = args.epochs
        units = int(data.values.shape[1])
        config = default_sae_config(units, n_train, expansion=args.expansion, **overrides)
        if n_train < config.batch_size:
            raise ValueError(
                f"side {name.upper()} has {n_train} SAE training rows, fewer than --batch-size "
                f"{config.batch_size}"
            )
        _check_normalisable(f"the SAE of side {name.upper()} ({data.path})", config, "")
        _check_chunk_rows(
            "--chunk-rows", args.chunk_rows, config.batch_size, f"the SAE of side {name.upper()}"
        )
        sides.append(_Side(name, data, t, t_rows, rows[score], config))
    for s in sides:
        _file_rows_ok(s.name.upper(), s.data, s.score_rows)
        if s.train is not s.data:
            _file_rows_ok(f"--train-{s.name}", s.train, None)
        elif s.train_rows is not None:
            _file_rows_ok(s.name.upper(), s.data, s.train_rows)
    X = take_rows(a.values, sides[0].score_rows)
    Y = take_rows(b.values, sides[1].score_rows)
    _folds.prepare(X, Y, args.folds, args.seed)
    settings = {
        "a": str(a.path.absolute()),
        "b": str(b.path.absolute()),
        "key": args.key,
        "train_a": None if args.train_a is None else str(Path(args.train_a).absolute()),
        "train_b": None if args.train_b is None else str(Path(args.train_b).absolute()),
        "sae": {s.name: dataclasses.asdict(s.config) for s in sides},
        "sae_seeds": sae_seeds,
        "metrics": metrics,
        "folds": args.folds,
        "seed": args.seed,
        "null_permutations": args.null_permutations,
        "chunk_rows": args.chunk_rows,
        "rows": {
            "a": int(a.values.shape[0]),
            "b": int(b.values.shape[0]),
            "matched": int(n),
            "scoring": int(score.size),
            "training": {
                s.name: int(s.train.values.shape[0] if s.train_rows is None else s.train_rows.size)
                for s in sides
            },
        },
        "split": "files" if args.train_a is not None else "50/50 of the matched rows",
    }
    return _Plan(tuple(sides), X, Y, metrics, n if align.image_ids is not None else None, settings)


def _fingerprint(side: _Side, settings: dict) -> dict:
    """What an SAE checkpoint was trained from; any change retrains."""
    import hashlib

    stat = side.train.path.stat()
    rows = "all" if side.train_rows is None else hashlib.sha1(side.train_rows.tobytes()).hexdigest()
    return {
        "config": dataclasses.asdict(side.config),
        "file": str(side.train.path.absolute()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "key": settings["key"],
        "rows": rows,
        "seed": settings["seed"],
        "sae_seeds": settings["sae_seeds"],
        "chunk_rows": settings["chunk_rows"],
    }


_RESULT_FILES = ("table.md", "figure.png", "figure.pdf", "results.json")
"""What :func:`main` writes from the scores; ``results.json`` last, as it holds the settings."""


def _remove_stale_results(out: Path, settings: dict) -> None:
    """Remove the results in ``out`` unless ``results.json`` was computed with ``settings``
    (the compilation cache's folder aside).

    ``results.json`` goes last, so a run stopped while removing leaves it to mark the rest stale.
    """
    from superalign import io

    try:
        stored = io.read_json(out / "results.json")["config"]
    except (OSError, ValueError, KeyError, TypeError):
        stored = None
    # Where compiled programs are cached changes no result.
    same = {k: v for k, v in io.jsonable(settings).items() if k != "compilation_cache"}
    if (
        isinstance(stored, dict)
        and {k: v for k, v in stored.items() if k != "compilation_cache"} == same
    ):
        return
    for name in _RESULT_FILES:
        (out / name).unlink(missing_ok=True)


class _Progress:
    """tqdm bars per stage, and the wall time between consecutive stage ends."""

    def __init__(self, enabled: bool):
        self.enabled, self.bars, self.seconds = enabled, {}, {}
        self.mark = time.perf_counter()

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.enabled:
            from tqdm.auto import tqdm

            bar = self.bars.get(stage)
            if bar is None:
                bar = self.bars[stage] = tqdm(total=total, desc=stage, leave=False)
            bar.update(done - bar.n)
            if done == total:
                bar.close()
        if done == total:
            self.stop(stage)

    def stop(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self.mark
        self.mark = now


def main(argv=None) -> int:
    """``python -m superalign.compare A B --out DIR``: see ``--help`` and the module docstring.

    Writes ``config.json`` (every setting), ``saes/{a,b}/`` (orbax checkpoints of the trained
    SAEs; a rerun with the same settings restores them instead of training), ``results.json``
    (with the settings it was computed with under ``"config"``, equal to ``config.json``),
    ``table.md`` and ``figure.png`` / ``figure.pdf`` to ``--out``, each atomically. A run whose
    settings differ from those of the ``results.json`` in ``--out`` removes it, the table and
    the figures before any work, so the folder never holds results of other settings than its
    ``config.json``.
    """
    from superalign import io

    parser = _parser()
    args = parser.parse_args(argv)
    out = Path(args.out)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    bars = _Progress(not args.no_progress)
    # Before the first compilation (validation compiles too); the folder appears on first use.
    cache = io.enable_compilation_cache(args.cache_dir or out / "jax_cache")
    try:
        plan = _prepare(args, log)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    bars.stop("read and validate")
    plan.settings["compilation_cache"] = str(cache)
    _remove_stale_results(out, plan.settings)
    io.write_json(out / "config.json", plan.settings)

    trained, source = {}, {}
    for side, jside in zip(plan.sides, ("x", "y"), strict=True):
        cfg, n_seeds = side.config, plan.settings["sae_seeds"]
        fingerprint = _fingerprint(side, plan.settings)
        abstract = jax.eval_shape(
            lambda cfg=cfg, n=n_seeds: jax.vmap(lambda k: sae.init(cfg, k))(
                jax.random.split(jax.random.key(0), n)
            )
        )
        folder = out / "saes" / side.name
        params = io.load_params(folder, abstract, fingerprint)
        source[side.name] = "checkpoint" if params is not None else "trained"
        if params is None:
            params, _ = train_saes(
                cfg,
                side.train.values,
                sae_key(plan.settings["seed"], jside),
                n_seeds,
                rows=side.train_rows,
                chunk_rows=plan.settings["chunk_rows"],
                callback=partial(bars, f"train {side.name}"),
            )
            io.save_params(folder, params, fingerprint)
        bars.stop(f"train {side.name}")
        trained[side.name] = TrainedSAE(cfg, params)
        log(f"SAE {side.name.upper()}: {source[side.name]} ({cfg.n_latents} latents, k = {cfg.k})")

    comparison = compare(
        plan.X,
        plan.Y,
        sae_x=trained["a"],
        sae_y=trained["b"],
        metrics=plan.metrics,
        sae_seeds=plan.settings["sae_seeds"],
        n_folds=plan.settings["folds"],
        seed=plan.settings["seed"],
        null_permutations=plan.settings["null_permutations"],
        progress=bars,
    )
    results = to_dict(comparison)
    results["config"] = plan.settings
    results["matched_rows"] = plan.matched
    results["rows"] = plan.settings["rows"]
    results["sae_source"] = source
    results["stage_seconds"] = bars.seconds
    io.write_json(out / "results.json", results)
    results = io.read_json(out / "results.json")
    io.write_text(out / "table.md", table(results))
    import matplotlib.pyplot as plt

    fig = plot(results)
    io.save_figure(fig, out / "figure")
    plt.close(fig)
    log(table(results))
    log(f"wrote {out}/results.json, table.md, figure.png and figure.pdf")
    return 0
