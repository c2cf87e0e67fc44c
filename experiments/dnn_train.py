"""Train image classifiers for a list of seeds, resumable, data-parallel over devices.

    python -m experiments.dnn_train --config digits_small --out runs/dnn_digits
    python -m experiments.dnn_train --config imagenet_resnet50 --config.data_dir=/data/tfds

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

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from experiments import _io
from experiments.configs import dnn as configs
from superalign import datasets, models


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


def data_config(cfg: configs.DNNExperimentConfig) -> datasets.DataConfig:
    return datasets.DataConfig(
        name=cfg.dataset,
        image_size=cfg.image_size,
        resize_size=cfg.resize_size,
        data_dir=cfg.data_dir,
        manual_dir=cfg.manual_dir,
        val_fraction=cfg.val_fraction,
        split_seed=cfg.split_seed,
    )


def model_config(cfg: configs.DNNExperimentConfig, m: int) -> models.ModelConfig:
    return models.preset(
        cfg.models[m],
        num_classes=datasets.num_classes(data_config(cfg)),
        image_size=cfg.image_size,
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


def train_group(cfg, m: int, seeds: tuple, directory: Path, progress: bool = True):
    """Train one model from ``seeds`` (a vmap axis); resume from ``directory``'s checkpoints.

    Returns:
      The final :class:`TrainState` with a leading seed axis.
    """
    dcfg = data_config(cfg)
    steps_per_epoch = datasets.num_examples(dcfg, "train") // cfg.batch_size
    spec = train_spec(cfg, m, steps_per_epoch)
    total = spec.epochs * steps_per_epoch
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
    ckpt = _io.Checkpoints(directory)
    fresh = init(_keys(seeds))
    # Restore onto this run's mesh, whatever the devices of the run that saved it.
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), fresh
    )
    done, state = ckpt.latest(abstract)
    state = fresh if state is None else jax.device_put(state, replicated)
    desc = f"{cfg.models[m]} seeds {','.join(map(str, seeds))}"
    with tqdm(total=total, initial=done, desc=desc, disable=not progress, leave=False) as bar:
        for epoch in range(done // steps_per_epoch, spec.epochs):
            start = done - epoch * steps_per_epoch if epoch == done // steps_per_epoch else 0
            batches = datasets.batches(
                dcfg, "train", cfg.batch_size, train=True, seed=cfg.data_seed, epoch=epoch,
                start=start,
            )  # fmt: skip
            for batch in batches:
                images = jax.device_put(batch.images, split)
                labels = jax.device_put(batch.labels, split)
                state, metrics = step(state, images, labels)
                done += 1
                bar.update(1)
                if done % cfg.checkpoint_every == 0 or done == total:
                    ckpt.save(done, state)
                    bar.set_postfix(loss=f"{float(metrics.loss.mean()):.3f}")
    if ckpt.manager.latest_step() != done:
        ckpt.save(done, state)
    ckpt.close()
    return state


def evaluate(cfg, m: int, state: TrainState, progress: bool = True) -> np.ndarray:
    """Validation accuracy per seed, ``[S]``."""
    dcfg = data_config(cfg)
    spec = train_spec(cfg, m, 1)
    correct = jax.jit(make_eval(spec))
    total, n = np.zeros(jax.tree.leaves(state.step)[0].shape[0]), 0
    for batch in tqdm(
        datasets.batches(dcfg, "validation", cfg.extract_batch_size, train=False),
        desc=f"{cfg.models[m]} accuracy",
        disable=not progress,
        leave=False,
    ):
        total += np.asarray(correct(state, batch.images, batch.labels, batch.valid))
        n += int(batch.valid.sum())
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
        accuracy = np.asarray(_io.read_json(cache)["accuracy"])
    else:
        accuracy = evaluate(cfg, m, state, progress)
        _io.write_json(cache, {"seeds": cfg.seeds, "accuracy": accuracy})
    return variables_of(state), accuracy


def validate(cfg) -> None:
    """Every model, layer and SAE setting, checked before any work."""
    for m in range(len(cfg.models)):
        mc = model_config(cfg, m)
        models.check_layers(mc, cfg.layers[m])
    _check_batch(cfg, len(jax.devices()))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m experiments.dnn_train", description=__doc__)
    ap.add_argument("--config", default="digits_small", choices=sorted(configs.CONFIGS))
    ap.add_argument("--out", default="runs/dnn_train")
    ap.add_argument("--no-progress", action="store_true")
    args, overrides = ap.parse_known_args(argv)
    try:
        cfg = _io.apply_overrides(configs.get_config(args.config), overrides)
        validate(cfg)
    except ValueError as err:
        ap.error(str(err))
    out = Path(args.out)
    _io.write_json(out / "train_config.json", dataclasses.asdict(cfg))
    print(f"devices: {len(jax.devices())} ({jax.devices()[0].platform})", flush=True)
    for m, name in enumerate(cfg.models):
        _, acc = train_model(cfg, m, out, not args.no_progress)
        print(f"{name}: validation accuracy " + ", ".join(
            f"seed {s}: {a:.4f}" for s, a in zip(cfg.seeds, acc, strict=True)))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
