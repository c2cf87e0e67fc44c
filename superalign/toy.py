"""Toy models of superposition (paper section 4; Elhage et al. 2022).

A tied-weight ReLU autoencoder: ``h = ReLU(z W)``, ``z_hat = ReLU(h W^T + b)``, with ``W`` of shape
``[F, N]``, ``N < F``. The output ReLU is the authors' (and Elhage et al.'s) choice; the paper's
equation omits it, and without it the model learns no superposition (PROTOCOL.md, "Toy
models"). It is the ``output_relu`` flag, on by default.

Training is one pure function: ``train = make_train(config)``; ``train(key) -> (params, metrics)``
runs the whole pass as one ``lax.scan``. Many seeds are ``jax.jit(jax.vmap(train))(keys)``; the
data key lives in the config, so every seed sees the same rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from superalign import checks
from superalign import features as feats


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    """Toy-model settings (paper defaults, PROTOCOL.md)."""

    n_features: int = 64
    n_hidden: int = 16
    feature_prob: float = 0.1
    batch_size: int = 1024
    n_steps: int = 10_000
    lr: float = 1e-3
    weight_decay: float = 0.01  # PyTorch's AdamW default, which the paper's runs used
    output_relu: bool = True
    data_seed: int = 0
    train_fraction: float = 0.8  # of the batches, for the SAE split downstream

    def __post_init__(self):
        checks.positive_int("n_hidden", self.n_hidden)
        # Checked here under its own name (the dataset calls it ``prob``); the dataset checks
        # n_features, batch_size, n_steps and train_fraction.
        checks.probability("feature_prob", self.feature_prob)
        self.data.validate()
        checks.positive_float("lr", self.lr)
        checks.nonnegative_float("weight_decay", self.weight_decay)

    @property
    def data(self) -> feats.DataSpec:
        """The dataset this model trains on (one pass, ``n_steps`` batches)."""
        return feats.DataSpec(
            seed=self.data_seed,
            n_features=self.n_features,
            prob=self.feature_prob,
            batch_size=self.batch_size,
            n_steps=self.n_steps,
            train_fraction=self.train_fraction,
        )


class ToyParams(NamedTuple):
    W: jax.Array  # [F, N]
    b: jax.Array  # [F]


class ToyState(NamedTuple):
    """Training state: parameters and AdamW state (the step lives outside, unbatched)."""

    params: ToyParams
    opt_state: optax.OptState


class ToyMetrics(NamedTuple):
    loss: jax.Array  # [n_steps] training loss per step


# Xavier (Glorot) normal as in PyTorch's xavier_normal_: a plain, untruncated normal.
_xavier_normal = jax.nn.initializers.variance_scaling(1.0, "fan_avg", "normal")


def init(config: ToyConfig, key: jax.Array) -> ToyParams:
    """Xavier-normal ``W [F, N]`` and a zero bias ``b [F]``."""
    W = _xavier_normal(key, (config.n_features, config.n_hidden), jnp.float32)
    return ToyParams(W=W, b=jnp.zeros((config.n_features,), jnp.float32))


def hidden(params: ToyParams, z: jax.Array) -> jax.Array:
    """Neuron activations ``h = ReLU(z W)``: ``[..., F] -> [..., N]``."""
    return jax.nn.relu(z @ params.W)


def forward(params: ToyParams, z: jax.Array, output_relu: bool = True) -> jax.Array:
    """Reconstruction ``z_hat = ReLU(h W^T + b)`` (no output ReLU if ``output_relu`` is False)."""
    out = hidden(params, z) @ params.W.T + params.b
    return jax.nn.relu(out) if output_relu else out


def loss(
    params: ToyParams, z: jax.Array, weights: jax.Array, output_relu: bool = True
) -> jax.Array:
    """Importance-weighted squared error, mean over batch and features.

    Args:
      params: the model.
      z: ``[B, F]`` features.
      weights: ``[F]`` importance.
      output_relu: see :func:`forward`.
    """
    err = z - forward(params, z, output_relu)
    return jnp.mean(weights * err**2)


def optimizer(config: ToyConfig) -> optax.GradientTransformation:
    return optax.adamw(config.lr, weight_decay=config.weight_decay)


def init_state(config: ToyConfig, key: jax.Array) -> ToyState:
    params = init(config, key)
    return ToyState(params=params, opt_state=optimizer(config).init(params))


def make_run(
    config: ToyConfig, batch_fn: Callable[[jax.Array], jax.Array] | None = None
) -> Callable[[ToyState, jax.Array, int], tuple[ToyState, ToyMetrics]]:
    """Build ``run(state, start, n) -> (state, metrics)``: steps ``start .. start + n - 1``.

    Checkpointing code calls ``run`` on consecutive segments; :func:`make_train` runs it once.
    ``start`` is a shared (unbatched) scalar, so under ``vmap`` over seeds the batch is drawn once
    and every seed trains on it.

    Args:
      config: the model and data.
      batch_fn: ``step -> [B, F]`` features; default :func:`superalign.features.batch` of the
        config's dataset. Benchmarks pass a pre-generated buffer here.
    """
    batch_fn = _default_batches(config, batch_fn)
    update = make_update(config)

    def step_fn(state: ToyState, step):
        return update(state, batch_fn(step))

    def run(state: ToyState, start, n: int):
        steps = start + jnp.arange(n)
        state, losses = jax.lax.scan(step_fn, state, steps)
        return state, ToyMetrics(loss=losses)

    return run


def _default_batches(config: ToyConfig, batch_fn):
    spec = config.data
    return batch_fn or (lambda step: feats.batch(spec, step))


def make_update(config: ToyConfig):
    """One AdamW step of one seed on a batch ``z [B, F]``: ``(state, z) -> (state, loss)``."""
    opt = optimizer(config)
    weights = feats.importance(config.n_features)
    grad_fn = jax.value_and_grad(loss)

    def update(state: ToyState, z):
        value, grads = grad_fn(state.params, z, weights, config.output_relu)
        updates, opt_state = opt.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return ToyState(params, opt_state), value

    return update


def make_train_seeds(
    config: ToyConfig,
    batch_fn: Callable[[jax.Array], jax.Array] | None = None,
    group_size: int = 8,
) -> Callable[[jax.Array], tuple[ToyParams, ToyMetrics]]:
    """Build ``train(keys) -> (params, metrics)`` for many seeds, in vmapped groups per step.

    Equal to ``jax.vmap(make_train(config))(keys)``, but each step draws its batch once and then
    updates the seeds ``group_size`` at a time (``lax.map`` over vmapped groups), which keeps a
    step's working set in the CPU's cache when there are many seeds (see benchmarks/train.py).
    The number of seeds must be a multiple of ``group_size`` (or smaller than it).
    """
    group_size = checks.positive_int("group_size", group_size)
    batch_fn = _default_batches(config, batch_fn)
    update = jax.vmap(make_update(config), in_axes=(0, None))

    def train(keys: jax.Array):
        n_seeds = keys.shape[0]
        group = min(group_size, n_seeds)
        if n_seeds % group:
            raise ValueError(
                f"the number of seeds ({n_seeds}) must be a multiple of group_size={group}"
            )

        def grouped(tree):
            return jax.tree.map(lambda x: x.reshape(n_seeds // group, group, *x.shape[1:]), tree)

        state = grouped(jax.vmap(lambda k: init_state(config, k))(keys))

        def step_fn(state, step):
            z = batch_fn(step)
            return jax.lax.map(lambda st: update(st, z), state)

        state, losses = jax.lax.scan(step_fn, state, jnp.arange(config.n_steps))
        params = jax.tree.map(lambda x: x.reshape(n_seeds, *x.shape[2:]), state.params)
        return params, ToyMetrics(loss=jnp.moveaxis(losses, 0, -1).reshape(n_seeds, -1))

    return train


def make_train(
    config: ToyConfig, batch_fn: Callable[[jax.Array], jax.Array] | None = None
) -> Callable[[jax.Array], tuple[ToyParams, ToyMetrics]]:
    """Build the pure ``train(key) -> (params, metrics)`` for one seed.

    Many seeds: ``jax.jit(jax.vmap(make_train(config)))(jax.random.split(key, n))``.
    """
    run = make_run(config, batch_fn)

    def train(key: jax.Array):
        state, metrics = run(init_state(config, key), 0, config.n_steps)
        return state.params, metrics

    return train


def activations(params: ToyParams, spec: feats.DataSpec, start, n_steps: int) -> jax.Array:
    """Neuron activations for batches ``start .. start + n_steps - 1`` of the dataset.

    Under ``vmap`` over seeds (params) the features are drawn once and shared.

    Returns:
      ``[n_steps * B, N]`` activations, rows in dataset order.
    """
    z = feats.batches(spec, start + jnp.arange(n_steps))
    return hidden(params, z.reshape(-1, spec.n_features))


def make_sharded_train(
    config: ToyConfig,
    mesh=None,
    batch_fn: Callable[[jax.Array], jax.Array] | None = None,
    group_size: int = 8,
) -> Callable[[jax.Array], tuple[ToyParams, ToyMetrics]]:
    """Build a jitted ``train(keys) -> (params, metrics)`` with the seed axis split over a mesh.

    Every device trains its share of the seeds with :func:`make_train_seeds` (``shard_map`` over
    the mesh's one axis) and draws the shared batches itself, so no data moves between devices;
    the results equal ``jax.vmap(make_train(config))(keys)`` (tested at rtol 1e-5). Seeds per
    device beyond ``group_size`` are updated in vmapped groups (see :func:`make_train_seeds`).

    Args:
      config: the model and data.
      mesh: a 1-D :class:`jax.sharding.Mesh`; None for
        :func:`superalign.sharding.default_mesh` (all devices).
      batch_fn: see :func:`make_run`.
      group_size: seeds per vmapped group on each device.

    Returns:
      ``train(keys)``: ``keys [S]`` with ``S`` a multiple of the number of devices; the returned
      ``params`` (``W [S, F, N]``, ``b [S, F]``) and ``metrics.loss [S, n_steps]`` stay split over
      the mesh along ``S``. One compile per number of seeds.
    """
    from superalign import sharding

    mesh = sharding.default_mesh() if mesh is None else mesh
    spec = sharding.leading(mesh).spec
    n_dev = mesh.devices.size
    local = make_train_seeds(config, batch_fn, group_size)
    sharded = jax.jit(
        jax.shard_map(local, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)
    )

    def train(keys: jax.Array):
        sharding.check_divisible("the number of seeds (keys)", keys.shape[0], mesh)
        per_device = keys.shape[0] // n_dev
        if per_device > group_size and per_device % group_size:
            raise ValueError(
                f"seeds per device ({per_device}) must be a multiple of group_size={group_size}"
            )
        return sharded(sharding.put(keys, sharding.leading(mesh)))

    return train
