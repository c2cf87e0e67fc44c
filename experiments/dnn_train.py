"""Train image classifiers for a list of seeds, resumable, data-parallel over devices.

    python -m experiments.dnn_train --config digits_small --out runs/dnn_digits
    python -m experiments.dnn_train --config imagenet_resnet50 --config.data.data_dir=/data/tfds

Every model of the config is trained from every seed on the same batches (the data seed fixes
order and augmentation; seeds differ in initialisation only). Seeds are a ``vmap`` axis where the
config says so (``vmap_seeds``), otherwise they are trained one after another. With several
devices, each batch is split over them (``jax.sharding``: a 1-D ``Mesh`` over ``"data"``,
batches ``NamedSharding(P("data"))``, the state replicated); batch statistics and gradients are
then reduced over the whole global batch, so the result equals a one-device run up to float
summation order. Training states are orbax checkpoints every ``checkpoint_every`` steps under
``<out>/models/<model>/seeds<...>/``; a killed run started again resumes from the latest one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from experiments import launch, run_files
from experiments.configs import dnn as configs
from superalign import datasets, models

PRESETS = configs.PRESETS


class TrainState(NamedTuple):
    params: dict
    batch_stats: dict  # empty for models without batch norm
    opt_state: optax.OptState
    step: jax.Array  # int32


class TrainMetrics(NamedTuple):
    loss: jax.Array
    accuracy: jax.Array


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """Everything the pure step needs for one model."""

    model: models.ModelConfig
    optimizer: str
    lr: float
    weight_decay: float
    epochs: int
    warmup_epochs: int
    label_smoothing: float
    steps_per_epoch: int


def model_config(cfg: configs.DNNExperimentConfig, m: int) -> models.ModelConfig:
    return models.preset(
        cfg.models[m],
        num_classes=datasets.num_classes(cfg.data),
        image_size=cfg.data.image_size,
    )


def train_spec(cfg: configs.DNNExperimentConfig, m: int, steps_per_epoch: int) -> TrainSpec:
    return TrainSpec(
        model=model_config(cfg, m),
        optimizer=cfg.optimizer[m],
        lr=float(cfg.lr[m]),
        weight_decay=float(cfg.weight_decay[m]),
        epochs=int(cfg.epochs[m]),
        warmup_epochs=int(cfg.warmup_epochs[m]),
        label_smoothing=float(cfg.label_smoothing[m]),
        steps_per_epoch=steps_per_epoch,
    )


def make_optimizer(spec: TrainSpec) -> optax.GradientTransformation:
    total = spec.epochs * spec.steps_per_epoch
    warmup = spec.warmup_epochs * spec.steps_per_epoch
    warmup = max(min(warmup, total - 1), 1)
    schedule = optax.warmup_cosine_decay_schedule(0.0, spec.lr, warmup, max(total, warmup + 1))
    if spec.optimizer == "sgd":
        # Weight decay on every parameter, as torchvision's recipe (PyTorch SGD's weight_decay).
        return optax.chain(
            optax.add_decayed_weights(spec.weight_decay), optax.sgd(schedule, momentum=0.9)
        )
    return optax.adamw(schedule, weight_decay=spec.weight_decay)


def init_state(spec: TrainSpec, key: jax.Array) -> TrainState:
    variables = models.init(spec.model, key)
    params = variables["params"]
    return TrainState(
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=make_optimizer(spec).init(params),
        step=jnp.zeros((), jnp.int32),
    )


def variables_of(state: TrainState) -> dict:
    out = {"params": state.params}
    if state.batch_stats:
        out["batch_stats"] = state.batch_stats
    return out


def make_step(spec: TrainSpec):
    """The pure ``step(state, images [B, S, S, 3], labels [B]) -> (state, metrics)``."""
    module = models.module(spec.model)
    opt = make_optimizer(spec)
    n_classes = spec.model.num_classes

    def loss_fn(params, batch_stats, images, labels):
        variables = {"params": params}
        if batch_stats:
            variables["batch_stats"] = batch_stats
            logits, updates = module.apply(variables, images, train=True, mutable=["batch_stats"])
            new_stats = updates["batch_stats"]
        else:
            logits, new_stats = module.apply(variables, images, train=True), batch_stats
        targets = optax.smooth_labels(jax.nn.one_hot(labels, n_classes), spec.label_smoothing)
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        accuracy = (logits.argmax(-1) == labels).mean()
        return loss, (new_stats, accuracy)

    def step(state: TrainState, images, labels):
        (loss, (stats, acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats, images, labels
        )
        updates, opt_state = opt.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, stats, opt_state, state.step + 1), TrainMetrics(loss, acc)

    return step


def make_eval(spec: TrainSpec):
    """``correct(states, images, labels, valid) -> [S]`` correct predictions per seed."""
    module = models.module(spec.model)

    def correct(state, images, labels, valid):
        logits = module.apply(variables_of(state), images, train=False)
        return jnp.sum((logits.argmax(-1) == labels) & valid)

    return jax.vmap(correct, in_axes=(0, None, None, None))


def mesh() -> Mesh:
    """A 1-D mesh over every device, axis ``"data"``."""
    return Mesh(np.asarray(jax.devices()), ("data",))


def _seed_groups(cfg, m: int) -> list[tuple]:
    return [tuple(cfg.seeds)] if cfg.vmap_seeds[m] else [(s,) for s in cfg.seeds]


def _keys(seeds) -> jax.Array:
    return jnp.stack([jax.random.key(s) for s in seeds])


def _check_batch(cfg, n_devices: int) -> None:
    if cfg.batch_size % n_devices:
        raise ValueError(
            f"batch_size={cfg.batch_size} must be a multiple of the {n_devices} devices"
        )


class _TrainBatches:
    """The training batches by global step, read on from the open epoch where possible."""

    def __init__(self, cfg, steps_per_epoch: int):
        self.cfg, self.steps_per_epoch = cfg, steps_per_epoch
        self.batches, self.next_step = None, None

    def take(self, start: int, n: int):
        """The batches of steps ``start .. start + n - 1`` (epochs in turn)."""
        for step in range(start, start + n):
            epoch, offset = divmod(step, self.steps_per_epoch)
            if offset == 0 or step != self.next_step:
                self.batches = iter(datasets.batches(
                    self.cfg.data, "train", self.cfg.batch_size, train=True,
                    seed=self.cfg.data_seed, epoch=epoch, start=offset,
                ))  # fmt: skip
            self.next_step = step + 1
            yield next(self.batches)


def train_group(cfg, m: int, seeds: tuple, directory: Path, progress: bool = True):
    """Train one model from ``seeds`` (a vmap axis); resume from ``directory``'s checkpoints.

    Returns:
      The final :class:`TrainState` with a leading seed axis.
    """
    steps_per_epoch = datasets.num_examples(cfg.data, "train") // cfg.batch_size
    spec = train_spec(cfg, m, steps_per_epoch)
    grid = mesh()
    _check_batch(cfg, grid.size)
    replicated = NamedSharding(grid, PartitionSpec())
    split = NamedSharding(grid, PartitionSpec("data"))
    step = jax.jit(
        jax.vmap(make_step(spec), in_axes=(0, None, None)),
        in_shardings=(replicated, split, split),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )
    init = jax.jit(jax.vmap(lambda k: init_state(spec, k)), out_shardings=replicated)
    stream = _TrainBatches(cfg, steps_per_epoch)
    desc = f"{cfg.models[m]} seeds {','.join(map(str, seeds))}"

    def segment(state, start, n):
        for batch in stream.take(start, n):
            images = jax.device_put(batch.images, split)
            labels = jax.device_put(batch.labels, split)
            state, metrics = step(state, images, labels)
        launch.log.info("%s step %d: loss %.3f", desc, start + n, float(metrics.loss.mean()))
        return state

    # The state restores onto this run's mesh (replicated), whatever the devices that saved it.
    return launch.train(
        init(_keys(seeds)),
        segment,
        spec.epochs * steps_per_epoch,
        every=cfg.checkpoint_every,
        directory=directory,
        desc=desc,
        progress=progress,
    )


def evaluate(cfg, m: int, state: TrainState, progress: bool = True) -> np.ndarray:
    """Validation accuracy per seed, ``[S]``."""
    spec = train_spec(cfg, m, 1)
    correct = jax.jit(make_eval(spec))
    total, n = np.zeros(jax.tree.leaves(state.step)[0].shape[0]), 0
    batches = datasets.batches(cfg.data, "validation", cfg.extract_batch_size, train=False)
    with launch.progress_bar(f"{cfg.models[m]} accuracy", progress) as tick:
        for i, batch in enumerate(batches):
            total += np.asarray(correct(state, batch.images, batch.labels, batch.valid))
            n += int(batch.valid.sum())
            tick(i + 1)
    return total / n


def model_dir(out: Path, cfg, m: int, seeds: tuple) -> Path:
    return Path(out) / "models" / cfg.models[m] / ("seeds_" + "_".join(map(str, seeds)))


def train_model(cfg, m: int, out: Path, progress: bool = True):
    """All seeds of model ``m``: ``(variables with a leading seed axis, accuracy [S])``.

    Accuracies are cached in ``<out>/models/<model>/accuracy.json``.
    """
    groups = _seed_groups(cfg, m)
    states = [train_group(cfg, m, g, model_dir(out, cfg, m, g), progress) for g in groups]
    state = jax.tree.map(lambda *a: jnp.concatenate(a), *states) if len(states) > 1 else states[0]
    cache = Path(out) / "models" / cfg.models[m] / "accuracy.json"
    if cache.exists():
        accuracy = np.asarray(run_files.read_json(cache)["accuracy"])
    else:
        accuracy = evaluate(cfg, m, state, progress)
        run_files.write_json(cache, {"seeds": cfg.seeds, "accuracy": accuracy})
    return variables_of(state), accuracy


def validate(cfg) -> None:
    """Every model, layer and SAE setting, checked before any work."""
    for m in range(len(cfg.models)):
        mc = model_config(cfg, m)
        models.check_layers(mc, cfg.layers[m])
    _check_batch(cfg, len(jax.devices()))


def run(cfg: configs.DNNExperimentConfig, out, *, progress: bool = True) -> dict:
    """Train every model of the config from every seed (resumable); their validation accuracy."""
    validate(cfg)
    out = Path(out)
    run_files.check_out(cfg, out, "train_config.json")
    launch.log.info("devices: %s", jax.devices())
    accuracy = {}
    for m, name in enumerate(cfg.models):
        _, acc = train_model(cfg, m, out, progress)
        accuracy[name] = {str(s): float(a) for s, a in zip(cfg.seeds, acc, strict=True)}
    return {**run_files.header(cfg), "platform": jax.default_backend(), "accuracy": accuracy}


def summary(results: dict) -> str:
    lines = [f"devices: {len(results['devices'])} ({results['platform']})"]
    for name, acc in results["accuracy"].items():
        seeds = ", ".join(f"seed {s}: {a:.4f}" for s, a in acc.items())
        lines.append(f"{name}: validation accuracy {seeds}")
    return "\n".join(lines)


if __name__ == "__main__":
    launch.cli(__name__)
