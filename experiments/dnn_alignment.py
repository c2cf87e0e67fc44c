"""The deep-network experiment: paper section 5 and the DNN half of section 6, from one command.

    python -m experiments.dnn_alignment --config digits_small          # CPU, minutes
    python -m experiments.dnn_alignment --config imagenet_resnet50 \\
        --config.data.data_dir=/data/tfds --config.data.manual_dir=/data/imagenet  # accelerator

For every model of the config: train it from every seed (``experiments.dnn_train``), extract the
configured layers' units (ResNet: centre position clamped at 0; ViT: CLS token) for the train and
validation splits into activation shards on disk, train one DNN SAE per layer and seed on the
train shards (PROTOCOL.md: per-sample normalisation, Kaiming-uniform, AuxK dead after 32 steps,
Adam 4e-4, batch 64, shuffled epochs; seeds a vmap axis), and score on the validation split
(seed 0 -> seed 1, dead units removed by the metrics): soft- and semi-matching Neuron->Neuron,
SAE->SAE, RandSAE->SAE and ridge Neuron->Neuron, SAE->Neuron, SAE->SAE, RandSAE->Neuron.

Outputs under ``--out``: ``config.json``, ``results.json``, ``figures/`` (figure 3, figure 4
bottom, figure 7 bottom; PNG and PDF), ``models/`` (orbax checkpoints, accuracy),
``activations/<model>/<split>/<layer>/seed<s>/`` (shards, see ``experiments/_shards.py``),
``saes/`` (orbax checkpoints), ``layers/<model>/<layer>.json`` (finished layers), and for other
modules ``features/<model>/seed<s>/<layer>.npz``: ``image_ids`` [n] int64 (sorted) and
``activations`` [n, units] float32, the validation units. Every stage resumes after a kill.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments import _io, _shards, dnn_figures, dnn_train, launch, toy_models
from experiments import figure_style as style
from experiments.configs import dnn as configs
from superalign import datasets, models, sae

PRESETS = configs.PRESETS
SPLITS = ("train", "validation")


def sae_config(cfg, m: int, layer_index: int) -> sae.SAEConfig:
    """``cfg.sae`` for one layer: its width, ``sae_expansion`` x width latents, ``sae_k``."""
    units = models.layer_width(dnn_train.model_config(cfg, m), cfg.layers[m][layer_index])
    return dataclasses.replace(
        cfg.sae,
        n_inputs=units,
        n_latents=cfg.sae_expansion[m][layer_index] * units,
        k=cfg.sae_k[m][layer_index],
    )


def shard_dir(out: Path, cfg, m: int, split: str, layer: str, seed: int) -> Path:
    return Path(out) / "activations" / cfg.models[m] / split / layer / f"seed{seed}"


def feature_path(out: Path, model: str, seed: int, layer: str) -> Path:
    """Where the validation units of one (model, seed, layer) are written (``.npz``)."""
    return Path(out) / "features" / model / f"seed{seed}" / f"{layer}.npz"


def _pass_plan(cfg, split: str):
    """``(n_passes, batches per pass, train-mode batches?)`` of an extraction."""
    n = datasets.num_examples(cfg.data, split)
    augment = split == "train" and cfg.sae_train_augment
    passes = cfg.sae_train_passes if split == "train" else 1
    per_pass = n // cfg.extract_batch_size if augment else -(-n // cfg.extract_batch_size)
    return passes, per_pass, augment


def extract(cfg, m: int, variables, out: Path, split: str, progress=True) -> None:
    """Write the units of every configured layer and seed for a split into shards (resumable)."""
    mc = dnn_train.model_config(cfg, m)
    layers = cfg.layers[m]
    writers = {
        (layer, s): _shards.ShardWriter(
            shard_dir(out, cfg, m, split, layer, seed),
            models.layer_width(mc, layer),
            cfg.shard_rows,
        )
        for layer in layers
        for s, seed in enumerate(cfg.seeds)
    }
    if all(w.complete for w in writers.values()):
        return
    rows = min(w.rows for w in writers.values())
    for w in writers.values():  # a kill can leave writers one shard apart: back to a common row
        w.truncate(rows)
    passes, per_pass, augment = _pass_plan(cfg, split)
    fn = jax.jit(jax.vmap(lambda v, x: models.extract(mc, v, x, layers), in_axes=(0, None)))
    first = rows // cfg.extract_batch_size
    desc = f"{cfg.models[m]} {split} activations"
    with launch.progress_bar(desc, progress, passes * per_pass) as tick:
        tick(first)
        for p in range(first // per_pass, passes):
            start = first - p * per_pass if p == first // per_pass else 0
            for i, batch in enumerate(
                datasets.batches(
                    cfg.data,
                    split,
                    cfg.extract_batch_size,
                    train=augment,
                    seed=cfg.data_seed + 1,  # not the training order
                    epoch=p,
                    start=start,
                ),
                start,
            ):
                acts = fn(variables, batch.images)
                keep = batch.valid
                for (layer, s), w in writers.items():
                    w.append(np.asarray(acts[layer][s])[keep], batch.image_ids[keep])
                tick(p * per_pass + i + 1)
    for w in writers.values():
        w.close()


def write_features(cfg, m: int, out: Path) -> None:
    """The validation units as ``features/<model>/seed<s>/<layer>.npz``, sorted by image id."""
    for layer in cfg.layers[m]:
        for seed in cfg.seeds:
            path = feature_path(out, cfg.models[m], seed, layer)
            if path.exists():
                continue
            reader = _shards.ShardReader(shard_dir(out, cfg, m, "validation", layer, seed))
            ids = reader.image_ids()
            order = np.argsort(ids, kind="stable")
            acts = reader.read()[order]
            _io.write_atomic(
                path,
                lambda f, a=acts, i=ids[order]: np.savez(f, image_ids=i, activations=a),
            )


def train_sae(cfg, m: int, layer_index: int, out: Path, progress=True):
    """One SAE per seed (a vmap axis) on that seed's train shards; checkpointed every tenth epoch.

    Mirrors :func:`superalign.sae.train_on_stream` with ``n_seeds``: chunks of
    ``sae_chunk_rows`` rows (shards in a per-epoch seeded order, the same for every seed),
    batches shuffled within each chunk, and the same per-chunk keys.

    Returns:
      ``(params [S, ...], mse [S] of the last epoch's last chunk, or None if no epoch ran)``.
    """
    layer = cfg.layers[m][layer_index]
    scfg = sae_config(cfg, m, layer_index)
    readers = [
        _shards.ShardReader(shard_dir(out, cfg, m, "train", layer, seed)) for seed in cfg.seeds
    ]
    key = jax.random.fold_in(jax.random.key(cfg.seeds[0]), 1 + layer_index)
    k_init, k_data = jax.random.split(key)
    init = jax.vmap(lambda k: sae.init_state(scfg, k))(jax.random.split(k_init, len(cfg.seeds)))
    run = jax.jit(jax.vmap(sae.make_chunk_run(scfg), in_axes=(0, 0, None)))
    mse = []

    def epochs(state, start, n):
        for epoch in range(start, start + n):
            order_seed = cfg.data_seed * 1_000_003 + epoch
            streams = [r.chunks(cfg.sae_chunk_rows, seed=order_seed) for r in readers]
            chunks = (np.stack(c) for c in zip(*streams, strict=True))
            for index, x in enumerate(c for c in chunks if c.shape[1] >= scfg.batch_size):
                chunk_key = jax.random.fold_in(jax.random.fold_in(k_data, epoch), index)
                state, metrics = run(state, x, chunk_key)
            mse.append(metrics.mse.mean(axis=1))
        return state

    state = launch.train(
        init,
        epochs,
        scfg.n_epochs,
        every=max(1, scfg.n_epochs // 10),
        directory=Path(out) / "saes" / cfg.models[m] / layer,
        desc=f"{cfg.models[m]} {layer} SAEs",
        progress=progress,
    )
    return state.params, (np.asarray(mse[-1]) if mse else None)


def layer_result(cfg, m: int, layer_index: int, out: Path, progress=True) -> dict:
    """SAEs, validation latents and every score of one layer; cached in ``layers/``."""
    model, layer = cfg.models[m], cfg.layers[m][layer_index]
    cached = Path(out) / "layers" / model / f"{layer}.json"
    if cached.exists():
        return _io.read_json(cached)
    t0 = time.perf_counter()
    scfg = sae_config(cfg, m, layer_index)
    params, final_mse = train_sae(cfg, m, layer_index, out, progress)
    neurons = np.stack(
        [
            _shards.ShardReader(shard_dir(out, cfg, m, "validation", layer, s)).read()
            for s in cfg.seeds
        ]
    )
    ids = [
        _shards.ShardReader(shard_dir(out, cfg, m, "validation", layer, s)).image_ids()
        for s in cfg.seeds
    ]
    if not all(np.array_equal(ids[0], i) for i in ids):
        raise RuntimeError(f"{model} {layer}: the seeds' validation rows are not aligned")
    encode = jax.jit(jax.vmap(lambda p, x: sae.encode(scfg, p, x)[0]))
    latents = np.asarray(encode(params, neurons))
    rand = sae.init(scfg, jax.random.fold_in(jax.random.key(cfg.random_sae_seed), layer_index))
    randsae = np.asarray(jax.jit(lambda x: sae.encode(scfg, rand, x)[0])(neurons[0]))
    acts = {"neurons": neurons, "sae": latents, "randsae": randsae}
    scores = toy_models.alignment(acts, n_folds=cfg.n_folds, seed=cfg.fold_seed, progress=progress)
    result = {
        "n_units": int(neurons.shape[-1]),
        "n_latents": scfg.n_latents,
        "k": scfg.k,
        "n_rows": int(neurons.shape[1]),
        "n_train_rows": _shards.ShardReader(
            shard_dir(out, cfg, m, "train", layer, cfg.seeds[0])
        ).rows,
        "dead_latents": [int(((latents[s] != 0).sum(0) == 0).sum()) for s in range(len(latents))],
        "dead_neurons": [int(((neurons[s] != 0).sum(0) == 0).sum()) for s in range(len(neurons))],
        "sae_final_mse": final_mse,
        "fraction_variance_unexplained": _fvu(scfg, params, neurons),
        **scores,
        "wall_seconds": time.perf_counter() - t0,
    }
    _io.write_json(cached, result)
    return _io.read_json(cached)


def _fvu(scfg, params, neurons) -> list[float]:
    """Per seed: validation reconstruction error over the variance (normalised inputs)."""

    raw = dataclasses.replace(scfg, normalize_inputs=False)  # x below is normalised already

    def fvu(p, x):
        x = sae.preprocess(scfg, x)
        err = jnp.sum((sae.decode(scfg, p, sae.encode(raw, p, x)[0]) - x) ** 2)
        return err / jnp.sum((x - x.mean(0)) ** 2)

    return [float(v) for v in jax.jit(jax.vmap(fvu))(params, neurons)]


def run_model(cfg, m: int, out: Path, progress=True) -> dict:
    stage = launch.Stages(cfg.models[m])
    variables, accuracy = stage("training", dnn_train.train_model, cfg, m, out, progress)
    for split in SPLITS:
        stage(f"{split} activations", extract, cfg, m, variables, out, split, progress)
    write_features(cfg, m, out)
    layers = {}
    for i, layer in enumerate(cfg.layers[m]):
        layers[layer] = stage(f"{layer} SAEs and alignment", layer_result, cfg, m, i, out, progress)
    return {
        "accuracy": {str(s): float(a) for s, a in zip(cfg.seeds, accuracy, strict=True)},
        "layers": layers,
        "stage_seconds": stage.seconds,
    }


def run(cfg: configs.DNNExperimentConfig, out, *, progress=True) -> dict:
    """Run (or resume) the whole experiment; write results.json and the figures."""
    out = Path(out)
    dnn_train.validate(cfg)
    for m in range(len(cfg.models)):
        for i in range(len(cfg.layers[m])):
            sae_config(cfg, m, i)
    _io.check_out(cfg, out)
    results = _io.header(cfg)
    results["models"] = {
        name: run_model(cfg, m, out, progress) for m, name in enumerate(cfg.models)
    }
    _io.write_json(out / "results.json", results)
    style.save_all(dnn_figures.figures(results), out / "figures")
    return results


def summary(results: dict) -> str:
    lines = []
    for model, res in results["models"].items():
        acc = ", ".join(f"seed {s}: {a:.3f}" for s, a in res["accuracy"].items())
        lines.append(f"\n{model}: validation accuracy {acc}")
        lines += toy_models.scores_table("layer", res["layers"], digits=3)
        for layer, r in res["layers"].items():
            lines.append(
                f"{layer}: {r['n_units']} units, {r['n_latents']} latents (k = {r['k']}), dead "
                f"latents {r['dead_latents']}, validation FVU {np.round(r['fraction_variance_unexplained'], 3).tolist()}"  # noqa: E501
            )
    return "\n".join(lines)


if __name__ == "__main__":
    launch.cli(__name__)
