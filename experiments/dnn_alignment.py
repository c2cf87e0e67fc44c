"""The deep-network experiment: paper section 5 and the DNN half of section 6, from one command.

    python -m experiments.dnn_alignment --config digits_small          # CPU, minutes
    python -m experiments.dnn_alignment --config imagenet_resnet50 \\
        --config.data.data_dir=/data/tfds --config.data.manual_dir=/data/imagenet  # accelerator
    python -m experiments.dnn_alignment --config checkpoints --config.arch=resnet50 \\
        --config.checkpoints="('seed0.pth', 'seed1.pth')" --config.images=/data/imagenet/val

For every model of the config: train it from every seed (``experiments.dnn_train``), extract the
configured layers' units (ResNet: centre position clamped at 0; ViT: CLS token) for the train and
validation splits into activation shards on disk, train one DNN SAE per layer and seed on the
train shards (PROTOCOL.md: per-sample normalisation, Kaiming-uniform, AuxK dead after 32 steps,
Adam 4e-4, batch 64, shuffled epochs; seeds a vmap axis), and score on the validation split
(seed 0 -> seed 1, dead units removed by the metrics): soft- and semi-matching Neuron->Neuron,
SAE->SAE, RandSAE->SAE and ridge Neuron->Neuron, SAE->Neuron, SAE->SAE, RandSAE->Neuron
(the conditions of :func:`superalign.compare.score_conditions`).

Trained checkpoints (``--config checkpoints``): nothing is trained. Each seed's torchvision file
(``checkpoints``, ``arch``) is read with :func:`superalign.models.from_torchvision`, every file
before any image is read (a file of another architecture fails first), and the layers' units of
the images in ``images`` (``superalign.datasets`` ``folder``: torchvision's evaluation transform
at ``image_size`` / ``resize_size``) are written to shards. Rows: with ``train_images``, the
SAEs train on that folder's images and every image of ``images`` is scored (the paper: ImageNet's
train split for the SAEs, the 50,000 validation images scored); without it, ``images`` is split
once by :func:`superalign.compare.split_rows` (seed ``split_seed``): the SAEs train on half the
images (``n // 2``) and the other half is scored, so no scored image was seen in SAE training.
Nothing depends on labels; no accuracy is reported.

Outputs under ``--out``: ``config.json``, ``results.json``, ``figures/`` (figure 3, figure 4
bottom, figure 7 bottom; PNG and PDF), ``models/`` (orbax checkpoints, accuracy),
``activations/<model>/<split>/<layer>/seed<s>/`` (shards, see ``experiments/shards.py``),
``saes/`` (orbax checkpoints), ``layers/<model>/<layer>.json`` (finished layers), and for other
modules ``features/<model>/seed<s>/<layer>.npz``: ``image_ids`` [n] int64 (sorted) and
``activations`` [n, units] float32, the validation units. Every stage resumes after a kill.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments import dnn_figures, dnn_train, launch, run_files, shards, toy_models
from experiments import figure_style as style
from experiments.configs import dnn as configs
from superalign import datasets, models, sae
from superalign import folds as _folds
from superalign.compare import split_rows

PRESETS = configs.PRESETS
SPLITS = ("train", "validation")


def model_config(cfg, m: int) -> models.ModelConfig:
    """Model ``m``: trained here (``dnn_train.model_config``) or read from checkpoints."""
    if cfg.arch:
        return models.preset(cfg.arch, num_classes=cfg.num_classes, image_size=cfg.image_size)
    return dnn_train.model_config(cfg, m)


def sae_config(cfg, m: int, layer_index: int) -> sae.SAEConfig:
    """``cfg.sae`` for one layer: its width, ``sae_expansion`` x width latents, ``sae_k``."""
    units = models.layer_width(model_config(cfg, m), cfg.layers[m][layer_index])
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


def _pass_plan(cfg, split: str, data):
    """``(n_passes, batches per pass, train-mode batches?)`` of an extraction."""
    n = datasets.num_examples(data, split)
    augment = split == "train" and cfg.sae_train_augment
    passes = cfg.sae_train_passes if split == "train" else 1
    per_pass = n // cfg.extract_batch_size if augment else -(-n // cfg.extract_batch_size)
    return passes, per_pass, augment


def extract(
    cfg, m: int, variables, out: Path, split: str, progress=True, *, data=None, into=None
) -> None:
    """Write the units of every configured layer and seed for a split into shards (resumable).

    Args:
      variables: the seeds' variables stacked on a leading axis (one entry per seed).
      split: the split of ``data`` read.
      data: the data set (default ``cfg.data``).
      into: the shard folder's split name (default ``split``).
    """
    data = cfg.data if data is None else data
    into = split if into is None else into
    mc = model_config(cfg, m)
    layers = cfg.layers[m]
    writers = {
        (layer, s): shards.ShardWriter(
            shard_dir(out, cfg, m, into, layer, seed),
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
    passes, per_pass, augment = _pass_plan(cfg, split, data)
    fn = jax.jit(jax.vmap(lambda v, x: models.extract(mc, v, x, layers), in_axes=(0, None)))
    first = rows // cfg.extract_batch_size
    desc = f"{cfg.models[m]} {into} activations"
    with launch.progress_bar(desc, progress, passes * per_pass) as tick:
        tick(first)
        for p in range(first // per_pass, passes):
            start = first - p * per_pass if p == first // per_pass else 0
            for i, batch in enumerate(
                datasets.batches(
                    data,
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
            reader = shards.ShardReader(shard_dir(out, cfg, m, "validation", layer, seed))
            ids = reader.image_ids()
            order = np.argsort(ids, kind="stable")
            acts = reader.read()[order]
            run_files.write_atomic(
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
        shards.ShardReader(shard_dir(out, cfg, m, "train", layer, seed)) for seed in cfg.seeds
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
        return run_files.read_json(cached)
    t0 = time.perf_counter()
    scfg = sae_config(cfg, m, layer_index)
    params, final_mse = train_sae(cfg, m, layer_index, out, progress)
    neurons = np.stack(
        [
            shards.ShardReader(shard_dir(out, cfg, m, "validation", layer, s)).read()
            for s in cfg.seeds
        ]
    )
    ids = [
        shards.ShardReader(shard_dir(out, cfg, m, "validation", layer, s)).image_ids()
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
        "n_train_rows": shards.ShardReader(
            shard_dir(out, cfg, m, "train", layer, cfg.seeds[0])
        ).rows,
        "dead_latents": [int(((latents[s] != 0).sum(0) == 0).sum()) for s in range(len(latents))],
        "dead_neurons": [int(((neurons[s] != 0).sum(0) == 0).sum()) for s in range(len(neurons))],
        "sae_final_mse": final_mse,
        "fraction_variance_unexplained": _fvu(scfg, params, neurons),
        **scores,
        "wall_seconds": time.perf_counter() - t0,
    }
    run_files.write_json(cached, result)
    return run_files.read_json(cached)


def _fvu(scfg, params, neurons) -> list[float]:
    """Per seed: validation reconstruction error over the variance (normalised inputs)."""

    raw = dataclasses.replace(scfg, normalize_inputs=False)  # x below is normalised already

    def fvu(p, x):
        x = sae.preprocess(scfg, x)
        err = jnp.sum((sae.decode(scfg, p, sae.encode(raw, p, x)[0]) - x) ** 2)
        return err / jnp.sum((x - x.mean(0)) ** 2)

    return [float(v) for v in jax.jit(jax.vmap(fvu))(params, neurons)]


# ---------------------------------------------------------------------------------------------
# Trained checkpoints (the ``checkpoints`` config).


def _folder(cfg, path: str) -> datasets.DataConfig:
    return dataclasses.replace(cfg.data, path=path)


def check_checkpoints(cfg) -> None:
    """Refuse a ``checkpoints`` config that cannot run: files, folders and row counts.

    Every checkpoint file must exist; ``images`` (and ``train_images`` when given) must hold
    images; the scored images must give every fold at least 2 rows, and the SAEs' images at
    least one batch (``sae.batch_size``). Raises ``ValueError`` naming the field.
    """
    if len(cfg.checkpoints) != len(cfg.seeds):
        raise ValueError(
            f"checkpoints must give one torchvision file per seed (seeds {cfg.seeds}), got "
            f"{cfg.checkpoints!r}: --config.checkpoints=\"('seed0.pth', 'seed1.pth')\""
        )
    for i, path in enumerate(cfg.checkpoints):
        if not Path(path).is_file():
            raise ValueError(f"checkpoints[{i}]: no checkpoint file at {path!r}")
    if not cfg.images:
        raise ValueError("images must name a folder of images to score: --config.images=DIR")
    counts = {}
    for name in ("images", "train_images"):
        if getattr(cfg, name):
            try:
                counts[name] = len(datasets.image_files(getattr(cfg, name)).paths)
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
    if cfg.train_images:
        n_train, n_score = counts["train_images"], counts["images"]
        where = f"train_images holds {n_train} images"
    else:
        n_train, n_score = counts["images"] // 2, counts["images"] - counts["images"] // 2
        where = f"images holds {counts['images']}: the SAEs train on {n_train}"
    try:
        _folds.check_fold_counts(n_score, cfg.n_folds)
    except ValueError as err:
        raise ValueError(
            f"images: {n_score} images are scored (images holds {counts['images']}"
            f"{'' if cfg.train_images else ', half of them'}); {err}"
        ) from None
    if n_train < cfg.sae.batch_size:
        raise ValueError(
            f"{'train_images' if cfg.train_images else 'images'}: {where}, fewer than one SAE "
            f"batch (sae.batch_size={cfg.sae.batch_size}); give more images"
        )


def load_checkpoints(cfg) -> dict:
    """Every seed's variables, stacked on a leading axis; every file read before any is used.

    Raises ``ValueError`` (from :func:`superalign.models.from_torchvision`, prefixed with the
    file) for a checkpoint that does not fit ``arch`` and ``num_classes``.
    """
    mc = model_config(cfg, 0)
    loaded = []
    for i, path in enumerate(cfg.checkpoints):
        try:
            loaded.append(models.from_torchvision(mc, path))
        except ValueError as err:
            raise ValueError(
                f"checkpoints[{i}] ({path}) is not a torchvision {cfg.arch} with "
                f"num_classes={cfg.num_classes}: {err}"
            ) from None
    return jax.tree.map(lambda *a: np.stack(a), *loaded)


def _complete(out: Path, cfg, split: str) -> bool:
    dirs = [
        shard_dir(out, cfg, 0, split, layer, seed) / "index.json"
        for layer in cfg.layers[0]
        for seed in cfg.seeds
    ]
    return all(p.exists() and run_files.read_json(p)["complete"] for p in dirs)


def split_shards(cfg, out: Path) -> None:
    """Split the ``all`` shards into ``train`` and ``validation`` rows (``split_rows``).

    Rows are images in the folder's order, the same for every layer and seed; the split is by
    position in that order, so every layer and seed gets the same images on each side.
    """
    for layer in cfg.layers[0]:
        for seed in cfg.seeds:
            reader = shards.ShardReader(shard_dir(out, cfg, 0, "all", layer, seed))
            acts, ids = reader.read(), reader.image_ids()
            parts = dict(zip(SPLITS, split_rows(len(ids), cfg.split_seed), strict=True))
            for split, rows in parts.items():
                w = shards.ShardWriter(
                    shard_dir(out, cfg, 0, split, layer, seed), reader.units, cfg.shard_rows
                )
                if w.complete:
                    continue
                w.truncate(0)
                for lo in range(0, len(rows), cfg.shard_rows):
                    part = rows[lo : lo + cfg.shard_rows]
                    w.append(acts[part], ids[part])
                w.close()


def extract_checkpoints(cfg, variables, out: Path, progress=True) -> None:
    """The units of ``images`` (and ``train_images``) as ``train`` and ``validation`` shards."""
    if cfg.train_images:
        train = _folder(cfg, cfg.train_images)
        extract(cfg, 0, variables, out, "validation", progress, data=train, into="train")
        extract(cfg, 0, variables, out, "validation", progress)
        return
    extract(cfg, 0, variables, out, "validation", progress, into="all")
    split_shards(cfg, out)
    shutil.rmtree(Path(out) / "activations" / cfg.models[0] / "all")  # train + validation hold it


def _extracted(cfg, out: Path) -> bool:
    return all(_complete(out, cfg, split) for split in SPLITS)


# ---------------------------------------------------------------------------------------------
# The experiment.


def run_model(cfg, m: int, out: Path, progress=True, variables=None) -> dict:
    """One model: trained (or its checkpoints' ``variables``), extracted, SAEs, every score."""
    stage = launch.Stages(cfg.models[m])
    if cfg.arch:
        accuracy = []
        if not _extracted(cfg, out):
            stage("activations", extract_checkpoints, cfg, variables, out, progress)
    else:
        variables, accuracy = stage("training", dnn_train.train_model, cfg, m, out, progress)
        for split in SPLITS:
            stage(f"{split} activations", extract, cfg, m, variables, out, split, progress)
    write_features(cfg, m, out)
    layers = {}
    for i, layer in enumerate(cfg.layers[m]):
        layers[layer] = stage(f"{layer} SAEs and alignment", layer_result, cfg, m, i, out, progress)
    result = {
        "accuracy": {str(s): float(a) for s, a in zip(cfg.seeds, accuracy, strict=False)},
        "layers": layers,
        "stage_seconds": stage.seconds,
    }
    if cfg.arch:
        result["checkpoints"] = {str(s): p for s, p in zip(cfg.seeds, cfg.checkpoints, strict=True)}
    return result


def run(cfg: configs.DNNExperimentConfig, out, *, progress=True) -> dict:
    """Run (or resume) the whole experiment; write results.json and the figures.

    A ``checkpoints`` config is checked (:func:`check_checkpoints`) and, unless a previous run
    extracted everything already, its checkpoints read (:func:`load_checkpoints`) before
    anything is written.
    """
    out = Path(out)
    given, variables = cfg, None
    if cfg.arch:
        check_checkpoints(cfg)
        cfg = configs.resolve_checkpoints(cfg)
        for i in range(len(cfg.layers[0])):
            sae_config(cfg, 0, i)
        if not _extracted(cfg, out):
            variables = load_checkpoints(cfg)
    else:
        dnn_train.validate(cfg)
        for m in range(len(cfg.models)):
            for i in range(len(cfg.layers[m])):
                sae_config(cfg, m, i)
    run_files.check_out(given, out)
    results = run_files.header(cfg)
    results["models"] = {
        name: run_model(cfg, m, out, progress, variables) for m, name in enumerate(cfg.models)
    }
    run_files.write_json(out / "results.json", results)
    style.save_all(dnn_figures.figures(results), out / "figures")
    return results


def summary(results: dict) -> str:
    lines = []
    for model, res in results["models"].items():
        if "checkpoints" in res:
            files = ", ".join(f"seed {s}: {p}" for s, p in res["checkpoints"].items())
            lines.append(f"\n{model}: checkpoints {files}")
        else:
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
