"""TopK sparse autoencoders with the auxiliary dead-latent loss (paper appendix A.2).

``pre = x W_enc + b_enc``; ``latents = ReLU(TopK(pre))``; ``x_hat = latents W_dec + b_dec``.
(The release's toy SAE computes ``ReLU(TopK(ReLU(pre)))``; both keep the ``k`` largest positive
pre-activations and give identical latents and gradients.)

Auxiliary loss: a latent is *dead* once it has not fired for ``dead_steps`` consecutive steps,
the current batch included (toy: ``dead_steps = 1``, i.e. silent over the whole current batch).
``e_hat = TopK_aux(pre masked to dead latents) W_dec + b_dec`` (with ``k_aux = n_latents`` that is
every dead pre-activation, negative ones included) is fitted to the residual ``x - x_hat`` (not
detached), weighted by ``aux_weight``. The dead-step counters live in :class:`SAEState`.

Two presets cover the paper: :func:`toy_config` (Xavier-normal init, AdamW with weight decay
0.01, errors averaged over batch and dimensions) and :func:`dnn_config` (per-sample input
normalisation, Kaiming-uniform init, Adam with eps 6.25e-10, errors summed over dimensions and
averaged over the batch, dead after 32 steps, aux weight 1e-4).

Training is pure: ``make_train(config)(key, x)`` trains on an in-memory ``[M, n_inputs]`` array
with one ``lax.scan``; seeds are a ``vmap`` axis. :func:`train_on_stream` is the host loop over
jitted chunk scans for activations that do not fit on the device. A randomly initialised SAE
(:func:`init`, never trained) is the control.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from functools import partial
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from superalign import checks


@dataclasses.dataclass(frozen=True)
class SAEConfig:
    """TopK SAE settings; defaults are the paper's toy SAE (PROTOCOL.md, "Toy SAEs")."""

    n_inputs: int
    n_latents: int = 64
    k: int = 7
    k_aux: int | None = None  # None: all latents
    aux_weight: float = 0.1
    dead_steps: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.01
    adam_eps: float = 1e-8
    batch_size: int = 1024
    n_epochs: int = 1
    shuffle: bool = False  # toy: one pass in order; DNN: shuffled epochs
    normalize_inputs: bool = False  # per-sample: subtract the mean, divide by the std
    init: Literal["xavier_normal", "kaiming_uniform"] = "xavier_normal"
    loss_reduction: Literal["mean", "sum_dims"] = "mean"
    decode: Literal["auto", "dense", "gather"] = "auto"

    def __post_init__(self):
        checks.positive_int("n_inputs", self.n_inputs)
        checks.positive_int("n_latents", self.n_latents)
        if not (isinstance(self.k, int) and not isinstance(self.k, bool)) or not (
            1 <= self.k <= self.n_latents
        ):
            raise ValueError(f"k must be in 1..n_latents={self.n_latents}, got {self.k}")
        if self.k_aux is not None:
            checks.positive_int("k_aux", self.k_aux)
            if self.k_aux > self.n_latents:
                raise ValueError(
                    f"k_aux must be in 1..n_latents={self.n_latents} or None, got {self.k_aux}"
                )
        checks.nonnegative_float("aux_weight", self.aux_weight)
        checks.positive_int("dead_steps", self.dead_steps)
        checks.positive_float("lr", self.lr)
        checks.nonnegative_float("weight_decay", self.weight_decay)
        checks.positive_float("adam_eps", self.adam_eps)
        checks.positive_int("batch_size", self.batch_size)
        checks.positive_int("n_epochs", self.n_epochs)
        for name, allowed in (
            ("init", ("xavier_normal", "kaiming_uniform")),
            ("loss_reduction", ("mean", "sum_dims")),
            ("decode", ("auto", "dense", "gather")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

    @property
    def n_aux(self) -> int:
        return self.n_latents if self.k_aux is None else self.k_aux

    @property
    def gather_decode(self) -> bool:
        """Whether to decode by gathering the k active rows of ``W_dec`` (see benchmarks)."""
        if self.decode == "auto":
            # Measured in benchmarks/train.py on the 2-core CPU: gathering wins once the code is
            # wide and sparse; for the toy SAE (64 latents) the dense matmul is faster.
            return self.n_latents >= 2048 and self.n_latents >= 16 * self.k
        return self.decode == "gather"


def toy_config(n_inputs: int, **overrides) -> SAEConfig:
    """The paper's toy SAE: 64 latents, k = 7, AuxK weight 0.1, dead after 1 step, AdamW."""
    return SAEConfig(n_inputs=n_inputs, **overrides)


def dnn_config(n_inputs: int, expansion: int = 4, k: int = 82, **overrides) -> SAEConfig:
    """The paper's DNN SAE (PROTOCOL.md, "Deep networks"); 300 epochs of batch 64."""
    base = dict(
        n_latents=expansion * n_inputs,
        k=k,
        aux_weight=1e-4,
        dead_steps=32,
        lr=4e-4,
        weight_decay=0.0,
        adam_eps=6.25e-10,
        batch_size=64,
        n_epochs=300,
        shuffle=True,
        normalize_inputs=True,
        init="kaiming_uniform",
        loss_reduction="sum_dims",
    )
    base.update(overrides)
    return SAEConfig(n_inputs=n_inputs, **base)


class SAEParams(NamedTuple):
    W_enc: jax.Array  # [n_inputs, n_latents]
    b_enc: jax.Array  # [n_latents]
    W_dec: jax.Array  # [n_latents, n_inputs]
    b_dec: jax.Array  # [n_inputs]


class SAEState(NamedTuple):
    params: SAEParams
    opt_state: optax.OptState
    steps_since_fired: jax.Array  # [n_latents] int32: consecutive steps without firing


class SAEMetrics(NamedTuple):
    mse: jax.Array  # [n_steps] reconstruction loss
    aux: jax.Array  # [n_steps] auxiliary loss
    n_dead: jax.Array  # [n_steps] dead latents at that step


class Code(NamedTuple):
    """The sparse code of a batch: ``k`` active values and their latent indices."""

    values: jax.Array  # [..., k] ReLU(TopK(pre)) values
    indices: jax.Array  # [..., k] int32 latent indices


_xavier_normal = jax.nn.initializers.variance_scaling(1.0, "fan_avg", "normal")
# PyTorch's kaiming_uniform_ (a = 0, fan_in): bound sqrt(6 / fan_in). Our weights are stored as
# [in, out], so fan_in is axis 0 for both W_enc [n_inputs, .] and W_dec [n_latents, .].
_kaiming_uniform = jax.nn.initializers.variance_scaling(2.0, "fan_in", "uniform", in_axis=0)


def init(config: SAEConfig, key: jax.Array) -> SAEParams:
    """Independent draws for ``W_enc`` and ``W_dec``; zero biases. Also the random-SAE control."""
    k_enc, k_dec = jax.random.split(key)
    draw = _xavier_normal if config.init == "xavier_normal" else _kaiming_uniform
    return SAEParams(
        W_enc=draw(k_enc, (config.n_inputs, config.n_latents), jnp.float32),
        b_enc=jnp.zeros((config.n_latents,), jnp.float32),
        W_dec=draw(k_dec, (config.n_latents, config.n_inputs), jnp.float32),
        b_dec=jnp.zeros((config.n_inputs,), jnp.float32),
    )


def preprocess(config: SAEConfig, x: jax.Array) -> jax.Array:
    """Per-sample normalisation for the DNN variant (identity for the toy SAE)."""
    if not config.normalize_inputs:
        return x
    mean = jnp.mean(x, axis=-1, keepdims=True)
    std = jnp.std(x, axis=-1, keepdims=True)
    return (x - mean) / jnp.maximum(std, 1e-8)


def top_k(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """``jax.lax.top_k(x, k)`` along the last axis, bitwise: same values, same indices.

    For a narrow code (``k * width <= 2048``, ``width <= 256``) by k rounds of "take the
    maximum and the first index holding it", which on the CPU is faster than XLA's sort-based
    top_k (``benchmarks/RESULTS.md``, "SAE top-k"); otherwise ``lax.top_k``. Ties go to the lower
    index, as in ``lax.top_k``, and the derivative is the same gather. Meant for finite inputs.
    """
    width = x.shape[-1]
    if width > 256 or k * width > 2048:
        return jax.lax.top_k(x, k)
    return _top_k_rounds(x, k)


@partial(jax.custom_jvp, nondiff_argnums=(1,))
def _top_k_rounds(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    width = x.shape[-1]
    iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    values, indices = [], []
    for _ in range(k):
        top = jnp.max(x, axis=-1, keepdims=True)
        i = jnp.min(jnp.where(x == top, iota, width - 1), axis=-1)  # width - 1 only for NaN
        values.append(top[..., 0])
        indices.append(i)
        x = jnp.where(iota == i[..., None], -jnp.inf, x)
    return jnp.stack(values, -1), jnp.stack(indices, -1)


@_top_k_rounds.defjvp
def _top_k_rounds_jvp(k, primals, tangents):
    (x,), (dx,) = primals, tangents
    values, indices = _top_k_rounds(x, k)
    dvalues = jnp.take_along_axis(dx, indices, axis=-1)  # lax.top_k's derivative
    return (values, indices), (dvalues, np.zeros(indices.shape, jax.dtypes.float0))


def _encode_sparse(config: SAEConfig, params: SAEParams, x: jax.Array, k=None):
    pre = x @ params.W_enc + params.b_enc
    values, indices = top_k(pre, config.k)
    if k is not None:
        # A traced k <= config.k: the top k of the sorted top config.k, the rest silenced.
        # One compiled function then serves every k (a sweep over k is a vmap axis).
        values = jnp.where(jnp.arange(config.k) < k, values, 0.0)
    return Code(jax.nn.relu(values), indices), pre


def _decode_sparse(config: SAEConfig, params: SAEParams, code: Code) -> jax.Array:
    if config.gather_decode:
        rows = params.W_dec[code.indices]  # [..., k, n_inputs]
        return jnp.einsum("...k,...kn->...n", code.values, rows) + params.b_dec
    return _densify(code, config.n_latents) @ params.W_dec + params.b_dec


def _densify(code: Code, n_latents: int) -> jax.Array:
    # A scatter: twice as fast as a one-hot contraction on the CPU, and exact.
    zeros = jnp.zeros((*code.values.shape[:-1], n_latents), code.values.dtype)
    return jnp.put_along_axis(zeros, code.indices, code.values, axis=-1, inplace=False)


def encode(
    config: SAEConfig, params: SAEParams, x: jax.Array, k=None
) -> tuple[jax.Array, jax.Array]:
    """Latents and pre-activations of raw inputs.

    Args:
      x: ``[..., n_inputs]`` activations (normalised here for the DNN variant); an array, list
        or tuple.
      k: None for ``config.k`` active latents, or a (possibly traced) integer scalar
        ``1 <= k <= config.k``: see :func:`make_train`.

    Returns:
      ``(latents, pre)``, both ``[..., n_latents]``; ``latents`` has at most ``k`` non-zeros.
    """
    if isinstance(x, (list, tuple)):
        x = jnp.asarray(checks.array("x", x, width=config.n_inputs, finite=False), jnp.float32)
    code, pre = _encode_sparse(config, params, preprocess(config, x), k)
    return _densify(code, config.n_latents), pre


def decode(config: SAEConfig, params: SAEParams, latents: jax.Array) -> jax.Array:
    """Reconstruction ``latents W_dec + b_dec`` (in the normalised space for the DNN variant)."""
    return latents @ params.W_dec + params.b_dec


def _reduce(config: SAEConfig, sq_err: jax.Array) -> jax.Array:
    if config.loss_reduction == "mean":
        return jnp.mean(sq_err)
    return jnp.mean(jnp.sum(sq_err, axis=-1))


def _aux_recon(config: SAEConfig, params: SAEParams, pre: jax.Array, dead: jax.Array):
    if config.n_aux == config.n_latents:
        # Every dead pre-activation (live ones zeroed): a dense matmul. With no dead latent it
        # is exactly b_dec, and so are its derivatives (zero for W_dec and the pre-activations):
        # the matmuls, forward and backward, run only when some latent is dead. (Under vmap the
        # condition is per seed and both branches run.)
        def dense(pre, dead, w_dec, b_dec):
            return jnp.where(dead, pre, 0.0) @ w_dec + b_dec

        def none_dead(pre, dead, w_dec, b_dec):
            return jnp.broadcast_to(b_dec, (*pre.shape[:-1], b_dec.shape[-1]))

        return jax.lax.cond(jnp.any(dead), dense, none_dead, pre, dead, params.W_dec, params.b_dec)
    masked = jnp.where(dead, pre, -jnp.inf)
    values, indices = jax.lax.top_k(masked, config.n_aux)
    values = jnp.where(jnp.isfinite(values), values, 0.0)
    return _decode_sparse(config, params, Code(values, indices))


def loss_fn(
    config: SAEConfig, params: SAEParams, x: jax.Array, steps_since_fired: jax.Array, k=None
):
    """Total loss of a batch and what the state needs.

    Args:
      x: ``[B, n_inputs]`` preprocessed inputs.
      steps_since_fired: ``[n_latents]`` counters before this batch.
      k: None, or a traced number of active latents ``<= config.k`` (see :func:`make_train`).

    Returns:
      ``(loss, (mse, aux, new_counters, n_dead))``.
    """
    code, pre = _encode_sparse(config, params, x, k)
    x_hat = _decode_sparse(config, params, code)
    fired = (
        jnp.zeros((config.n_latents,), bool)
        .at[code.indices.reshape(-1)]
        .max(code.values.reshape(-1) > 0)
    )
    counters = jnp.where(fired, 0, steps_since_fired + 1)
    dead = counters >= config.dead_steps
    residual = x - x_hat
    mse = _reduce(config, residual**2)
    e_hat = _aux_recon(config, params, pre, dead)
    aux = _reduce(config, (e_hat - residual) ** 2)
    total = mse + config.aux_weight * aux
    return total, (mse, aux, counters, jnp.sum(dead))


def optimizer(config: SAEConfig) -> optax.GradientTransformation:
    return optax.adamw(config.lr, eps=config.adam_eps, weight_decay=config.weight_decay)


def init_state(config: SAEConfig, key: jax.Array) -> SAEState:
    params = init(config, key)
    return SAEState(
        params=params,
        opt_state=optimizer(config).init(params),
        steps_since_fired=jnp.zeros((config.n_latents,), jnp.int32),
    )


def make_update(config: SAEConfig) -> Callable[[SAEState, jax.Array], tuple[SAEState, tuple]]:
    """One optimiser step on a raw ``[B, n_inputs]`` batch: ``update(state, x, k=None)``."""
    opt = optimizer(config)
    grad_fn = jax.value_and_grad(lambda p, x, c, k: loss_fn(config, p, x, c, k), has_aux=True)

    def update(state: SAEState, x: jax.Array, k=None):
        x = preprocess(config, x)
        (_, (mse, aux, counters, n_dead)), grads = grad_fn(
            state.params, x, state.steps_since_fired, k
        )
        updates, opt_state = opt.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return SAEState(params, opt_state, counters), SAEMetrics(mse, aux, n_dead)

    return update


def _batch_order(config: SAEConfig, key: jax.Array, n_rows: int) -> jax.Array:
    """Row indices of one epoch, ``[n_batches, B]`` (a permutation when shuffling)."""
    n_batches = n_rows // config.batch_size
    order = jax.random.permutation(key, n_rows) if config.shuffle else jnp.arange(n_rows)
    return order[: n_batches * config.batch_size].reshape(n_batches, config.batch_size)


def make_chunk_run(config: SAEConfig):
    """Build ``run(state, x, key, k=None) -> (state, metrics)``: one pass over an in-memory chunk.

    Full batches only (a remainder smaller than ``batch_size`` is skipped); batches are in row
    order, or in a ``key``-dependent permutation when ``config.shuffle``. ``k``: see
    :func:`make_train`.
    """
    update = make_update(config)

    def run(state: SAEState, x: jax.Array, key: jax.Array, k=None):
        order = _batch_order(config, key, x.shape[0])
        return jax.lax.scan(lambda s, idx: update(s, x[idx], k), state, order)

    return run


def check_activations(config: SAEConfig, x, name: str = "x", *, n_seeds: int | None = None):
    """Refuse activations of the wrong rank, width or type, too few rows, or with NaN or Inf.

    Args:
      config: the SAE.
      x: ``[M, n_inputs]`` activations, or with ``n_seeds`` ``[n_seeds, M, n_inputs]`` (one
        activation set per seed); ``M >= batch_size``.
      name: the argument as the error names it.
      n_seeds: None for one activation set, else the number of seeds.

    Returns ``x``, or a numpy array if it was a list or tuple.
    """
    if n_seeds is not None:
        x = checks.array(name, x, ndim=3, width=config.n_inputs)
        if x.shape[0] != n_seeds or x.shape[1] < config.batch_size:
            raise ValueError(
                f"{name} must be [n_seeds={n_seeds}, >= batch_size={config.batch_size}, "
                f"{config.n_inputs}], got shape {x.shape}"
            )
        return x
    x = checks.array(name, x, ndim=2, width=config.n_inputs)
    if np.shape(x)[0] < config.batch_size:
        raise ValueError(
            f"{name} must have at least batch_size={config.batch_size} rows, got shape "
            f"{np.shape(x)}"
        )
    return x


def make_train(config: SAEConfig) -> Callable[[jax.Array, jax.Array], tuple[SAEParams, SAEMetrics]]:
    """Build the pure ``train(key, x, k=None) -> (params, metrics)`` on ``x: [M, n_inputs]``.

    ``config.n_epochs`` passes of ``M // batch_size`` steps. Seeds are a ``vmap`` axis:
    ``jax.vmap(train)(keys, xs)`` (each seed its own activations) or
    ``jax.vmap(train, in_axes=(0, None))(keys, x)``. ``x`` may also be a list or tuple. Concrete
    ``x`` is validated (:func:`check_activations`: NaN or Inf raise ``ValueError`` instead of
    training to NaN parameters); under ``jit`` or a mapped ``vmap`` axis only its shape can be
    checked, so validate it with :func:`check_activations` before tracing.

    ``k``: None trains with ``config.k`` active latents. An integer scalar ``1 <= k <=
    config.k`` (may be traced; not checked inside jit) keeps the ``k`` largest of the top
    ``config.k`` pre-activations, which is exactly TopK with ``k``; so a sweep over k compiles
    once at ``config.k = max(ks)``: ``jax.vmap(train, in_axes=(None, None, 0))(key, x, ks)``.
    """
    run = make_chunk_run(config)

    def train(key: jax.Array, x: jax.Array, k=None):
        if isinstance(x, jax.core.Tracer):  # traced (jit / vmap): only the shape can be checked
            checks.array("x", x, ndim=2, width=config.n_inputs, finite=False)
        else:
            # numpy, a list or a tuple: a jax array (a traced row index cannot index numpy).
            x = jnp.asarray(check_activations(config, x))
        k_init, k_data = jax.random.split(key)
        epoch_keys = jax.random.split(k_data, config.n_epochs)
        state, metrics = jax.lax.scan(
            lambda s, ek: run(s, x, ek, k), init_state(config, k_init), epoch_keys
        )
        return state.params, jax.tree.map(lambda m: m.reshape(-1), metrics)

    return train


def train_on_stream(
    config: SAEConfig,
    key: jax.Array,
    chunks: Callable[[], Iterable[jax.Array]],
    *,
    n_seeds: int | None = None,
    callback: Callable[[int, SAEMetrics], None] | None = None,
) -> tuple[SAEParams, SAEMetrics]:
    """Train on activations that arrive in chunks (a host loop over jitted chunk scans).

    Args:
      config: the SAE.
      key: PRNG key; with ``n_seeds`` it is split into one key per seed.
      chunks: a callable returning an iterable of chunks for one epoch, each ``[C, n_inputs]``
        (or ``[n_seeds, C, n_inputs]`` with ``n_seeds``: one chunk per seed). It is called once
        per epoch, so a reader can stream shards from disk again. With ``shuffle``, batches are
        shuffled within each chunk.
      n_seeds: train this many seeds at once (a ``vmap`` axis), or None for one SAE.
      callback: called as ``callback(chunk_index, metrics)`` after each chunk (progress bars).

    Returns:
      ``(params, metrics)`` with metrics concatenated over all steps (a leading seed axis when
      ``n_seeds`` is given).
    """
    run = make_chunk_run(config)
    k_init, k_data = jax.random.split(key)
    if n_seeds is None:
        state = init_state(config, k_init)
        step = jax.jit(run)
    else:
        n_seeds = checks.positive_int("n_seeds", n_seeds)
        state = jax.vmap(lambda k: init_state(config, k))(jax.random.split(k_init, n_seeds))
        step = jax.jit(jax.vmap(run, in_axes=(0, 0, None)))
    history = []
    index = 0
    for epoch in range(config.n_epochs):
        for chunk in chunks():
            check_activations(config, chunk, "chunk", n_seeds=n_seeds)
            chunk_key = jax.random.fold_in(jax.random.fold_in(k_data, epoch), index)
            state, metrics = step(state, chunk, chunk_key)
            history.append(metrics)
            if callback is not None:
                callback(index, metrics)
            index += 1
    if not history:
        raise ValueError("chunks yielded no data")
    axis = 0 if n_seeds is None else 1
    metrics = jax.tree.map(lambda *m: jnp.concatenate(m, axis=axis), *history)
    return state.params, metrics


def make_sharded_train(config: SAEConfig, mesh=None, *, shared_x: bool = False):
    """Build a jitted ``train(keys, x, k=None)`` with the seed axis split over a mesh.

    Each device trains its share of the seeds (``shard_map`` over the mesh's one axis of
    ``jax.vmap(make_train(config))``); results equal the unsharded vmap (tested at rtol 1e-5).

    Args:
      config: the SAE.
      mesh: a 1-D :class:`jax.sharding.Mesh`; None for
        :func:`superalign.sharding.default_mesh` (all devices).
      shared_x: False: ``x [S, M, n_inputs]``, one activation set per seed, split with the
        seeds. True: ``x [M, n_inputs]``, the same rows for every seed, copied to every device.

    Returns:
      ``train(keys, x, k=None) -> (params, metrics)``: ``keys [S]`` with ``S`` a multiple of the
      number of devices; ``k`` None or an integer scalar (see :func:`make_train`); every output
      has a leading ``[S]`` axis split over the mesh.
    """
    from superalign import sharding

    mesh = sharding.default_mesh() if mesh is None else mesh
    seeds = sharding.leading(mesh).spec
    x_spec = sharding.replicated(mesh).spec if shared_x else seeds
    inner = jax.vmap(make_train(config), in_axes=(0, None if shared_x else 0, None))
    sharded = jax.jit(
        jax.shard_map(
            inner,
            mesh=mesh,
            in_specs=(seeds, x_spec, sharding.replicated(mesh).spec),
            out_specs=seeds,
            # Per-device seeds never talk to each other; the varying-axis check would only
            # object to scan carries (zero counters) that start replicated.
            check_vma=False,
        )
    )

    def train(keys: jax.Array, x: jax.Array, k=None):
        n = keys.shape[0]
        sharding.check_divisible("the number of seeds (keys)", n, mesh)
        check_activations(config, x, n_seeds=None if shared_x else n)
        k = jnp.asarray(config.k if k is None else k, jnp.int32)
        x = sharding.put(x, sharding.replicated(mesh) if shared_x else sharding.leading(mesh))
        return sharded(sharding.put(keys, sharding.leading(mesh)), x, k)

    return train


def make_data_parallel_train(config: SAEConfig, mesh=None):
    """Build a jitted ``train(key, xb, k=None)``: one SAE, every batch's rows split over devices.

    For activation sets that do not fit on one device. The activations are laid out as
    ``xb [n_batches, B, n_inputs]`` (see :func:`put_data_parallel`), each batch's ``B`` rows split
    over the mesh, so every device holds ``1 / n_devices`` of the rows; the parameters and
    optimiser state are replicated, and XLA adds the all-reduce of the gradients and of the
    dead-latent counts. Without shuffling the batches are exactly those of :func:`make_train`
    on the same rows (results equal at rtol 1e-5); with ``config.shuffle`` every epoch permutes
    the rows within each device's share (a global shuffle would move the whole data set
    between devices every epoch), then walks the batches in order.

    Args:
      config: the SAE; ``batch_size`` must be a multiple of the number of devices.
      mesh: a 1-D mesh; None for :func:`superalign.sharding.default_mesh`.

    Returns:
      ``train(key, xb, k=None) -> (params, metrics)`` with replicated parameters.
    """
    from superalign import sharding

    mesh = sharding.default_mesh() if mesh is None else mesh
    sharding.check_divisible("batch_size", config.batch_size, mesh)
    axis = mesh.axis_names[0]
    update = make_update(config)
    batches = sharding.rows_of_batches(mesh)
    rep = sharding.replicated(mesh)

    def local_shuffle(xb, key):
        # Inside shard_map: this device's [n_batches, B / n_devices, n] rows.
        key = jax.random.fold_in(key, jax.lax.axis_index(axis))
        flat = xb.reshape(-1, xb.shape[-1])
        return flat[jax.random.permutation(key, flat.shape[0])].reshape(xb.shape)

    shuffle = jax.shard_map(
        local_shuffle, mesh=mesh, in_specs=(batches.spec, rep.spec), out_specs=batches.spec
    )

    def epoch(state, xb, key, k):
        if config.shuffle:
            xb = shuffle(xb, key)
        xb = jax.lax.with_sharding_constraint(xb, batches)
        return jax.lax.scan(lambda s, x: update(s, x, k), state, xb)

    @jax.jit
    def run(key, xb, k):
        k_init, k_data = jax.random.split(key)
        state = jax.lax.with_sharding_constraint(init_state(config, k_init), rep)
        epoch_keys = jax.random.split(k_data, config.n_epochs)
        state, metrics = jax.lax.scan(lambda s, ek: epoch(s, xb, ek, k), state, epoch_keys)
        return state.params, jax.tree.map(lambda m: m.reshape(-1), metrics)

    def train(key: jax.Array, xb: jax.Array, k=None):
        checks.array("xb", xb, ndim=3, width=config.n_inputs, finite=False)
        if xb.shape[1] != config.batch_size:
            raise ValueError(
                f"xb must be [n_batches, batch_size={config.batch_size}, {config.n_inputs}], "
                f"got shape {xb.shape}"
            )
        k = jnp.asarray(config.k if k is None else k, jnp.int32)
        return run(key, jax.device_put(xb, batches), k)

    return train


def put_data_parallel(config: SAEConfig, x, mesh=None) -> jax.Array:
    """Lay ``x [M, n_inputs]`` out as ``[M // B, B, n_inputs]``, batch rows split over devices.

    From a host (numpy) array every device receives only its rows, so the activations never sit
    whole on one device. A remainder of fewer than ``batch_size`` rows is dropped, as in training.
    """
    from superalign import sharding

    mesh = sharding.default_mesh() if mesh is None else mesh
    check_activations(config, x)
    n_batches = x.shape[0] // config.batch_size
    xb = x[: n_batches * config.batch_size].reshape(n_batches, config.batch_size, -1)
    return jax.device_put(xb, sharding.rows_of_batches(mesh))
