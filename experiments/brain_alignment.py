"""DNN->brain alignment on NSD: paper section 6 (figure 5) and appendix A.6 (figure 8).

    python -m experiments.brain_alignment --config synthetic            # miniature NSD, CPU minutes
    python -m experiments.brain_alignment --config nsd \\
        --config.nsd_root=/data/nsd \\
        --config.activation_files="('resnet50_layer4.2_nsd.npz', 'vit_b16_block11_nsd.npz')" \\
        --config.sae_train_files="('resnet50_imagenet.npz', 'vit_b16_imagenet.npz')"
    python -m experiments.brain_alignment --config checkpoint --config.nsd_root=/data/nsd \\
        --config.checkpoint=resnet50-11ad3fa6.pth --config.arch=resnet50

For every DNN: a TopK SAE (``sae.dnn_config``) trained on the DNN's activations and an untrained
SAE of the same shape (the RandSAE control); their latents and the DNN's units for every NSD image.
For every subject: its ventral-stream voxels (``superalign.brain.nsd.load_subject``: z-scored
per session, 3 repetitions averaged, NSD's noise ceiling), then 5-fold ridge
(``superalign.ridge_regression``) for Neuron->Voxel, SAE->Voxel, RandSAE->Voxel and a scrambled
control (Neuron->Voxel with the image order shuffled, which must score about 0), each divided by
the subject's mean noise ceiling (as a fraction, NC / 100, as in the paper).

Activation files (``--config.activation_files``, one per DNN; the DNN pipeline writes them):
``.npz`` with ``image_ids`` [n] int64, the NSD 73k-ids of the images, **0-based** (the row of
``imgBrick`` in ``nsd_stimuli.hdf5``; the design file's 1-based ids minus 1), and
``activations`` [n, units] float32 (ResNet50 layer4.2: the centre spatial position, clamped at
0; ViT-B/16 block 11: the CLS token). An optional scalar ``image_id_base`` (0 or 1) declares
1-based ids. The file must hold every image of every subject analysed. The SAE trains on
``--config.sae_train_files`` (same format; ``image_ids`` may be absent), e.g. ImageNet
activations as in the paper, or on the NSD file itself when that is "".

Checkpoints (``--config checkpoint``): each DNN is a torchvision file (``checkpoint``) of a
``superalign.models`` preset (``arch``), read with :func:`superalign.models.from_torchvision`
(every file before any image is read). The units of ``checkpoint_layers`` (default: the
penultimate layer, ``layer4.2`` of ResNet50 and ``encoder_layer_11`` of ViT-B/16, see
``experiments/configs/brain.py``) are extracted for exactly the images the subjects saw in the
sessions analysed (the design file's trials), read from ``nsd_stimuli.hdf5`` through
``superalign.datasets`` (``name="nsd"``, torchvision's evaluation transform at ``image_size``),
and written as the activation file ``features/<dnn>.npz`` in the format above; the rest runs as
for given files.

Memory: results.json records, after the SAE->Voxel call (the widest source), the peak memory
measured so far: the device's ``peak_bytes_in_use`` where the backend reports it (GPUs), else
the process's peak resident set (the CPU).

Outputs in ``--out``: ``config.json``, ``results.json`` (config, versions, per subject the noise
ceiling summary and every score with folds, mean, sem, alpha, normalised values), ``table.md``
(percentage changes), ``figures/`` (figure 5 and figure 8 panels, noise ceilings; PNG and PDF),
``sae/`` (trained SAE parameters), ``subjects/`` (per-subject scores, reused on a rerun, and
``subjNN_voxels.npz``: every voxel's test r of Neuron->Voxel and SAE->Voxel), ``features/``
(checkpoints: the extracted activation files) and the per-subject NSD cache. With ``gain_maps``,
``figures/gain_map_<dnn>_subjNN.{png,pdf}``: SAE->Voxel minus Neuron->Voxel r per voxel over the
subject's T1 (``experiments/brain_maps.py``). A directory belongs to one config.
"""

from __future__ import annotations

import dataclasses
import re
import resource
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import superalign
from experiments import brain_figures, brain_maps, launch, nsd_synthetic, run_files, shards
from experiments import figure_style as style
from experiments.configs import brain as configs
from superalign import datasets, models, sae
from superalign.brain import nsd

PRESETS = configs.PRESETS
CONDITIONS = ("neuron_voxel", "sae_voxel", "randsae_voxel", "scrambled_voxel")
PER_DNN = ("activation_files", "sae_train_files", "sae_expansion", "sae_k")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower()


def check_config(cfg: configs.BrainConfig) -> None:
    """Refuse a config that cannot run, before any work."""
    n = len(cfg.dnns)
    if n == 0:
        raise ValueError("dnns must name at least one DNN")
    # Each DNN's files (features, SAE, voxel results) are named from its name's slug.
    seen = {}
    for name in cfg.dnns:
        slug = _slug(str(name))
        if not slug:
            raise ValueError(f"dnns: {name!r} has no letter or digit to name its files by")
        if slug in seen:
            raise ValueError(
                f"dnns must name every DNN differently (its files are named from letters and "
                f"digits of the name, case ignored): {seen[slug]!r} and {name!r} are both {slug!r}"
            )
        seen[slug] = name
    launch.per_run("sae", cfg.sae, n_inputs="the DNN", n_latents="sae_expansion", k="sae_k")
    synthetic = cfg.synthetic is not None
    for field in PER_DNN[2:] if synthetic else PER_DNN:  # synthetic: files are written
        if len(getattr(cfg, field)) != n:
            raise ValueError(
                f"{field} must have one entry per DNN ({n}: {cfg.dnns}), got {getattr(cfg, field)}"
            )
    if len(cfg.sae_param_files) not in (0, n):
        raise ValueError(
            f"sae_param_files must be () or have one entry per DNN ({n}: {cfg.dnns}), got "
            f"{cfg.sae_param_files}"
        )
    if not cfg.subjects:
        raise ValueError("subjects must name at least one NSD subject")
    for s in cfg.subjects:
        if s not in nsd.SESSIONS:
            raise ValueError(f"subjects must be NSD subjects 1..8, got {cfg.subjects}")
    if cfg.n_sessions < 0:
        raise ValueError(f"n_sessions must be >= 0 (0: all), got {cfg.n_sessions}")
    if synthetic:
        if set(cfg.dnns) - {"features", "mixed"}:
            raise ValueError(
                f"the synthetic config's dnns must be 'features' and/or 'mixed', got {cfg.dnns}"
            )
        if set(cfg.subjects) - set(cfg.synthetic.subjects):
            raise ValueError(
                f"subjects {cfg.subjects} must be among synthetic.subjects="
                f"{cfg.synthetic.subjects} (the miniature's subjects)"
            )
    else:
        if not cfg.nsd_root:
            raise ValueError(
                "nsd_root must be set to the NSD download (the folder holding nsddata, "
                "nsddata_betas, nsddata_stimuli): --config.nsd_root=/path/to/nsd"
            )
        missing = [d for d, f in zip(cfg.dnns, cfg.activation_files, strict=True) if not f]
        if missing and not cfg.checkpoint:
            raise ValueError(
                f"activation_files must give an .npz per DNN; none for {missing} "
                "(--config.activation_files=\"('a.npz', 'b.npz')\")"
            )
    for i in range(n):  # the SAE settings, at a width where any k <= expansion x width fits
        sae_config(cfg, i, max(1, cfg.sae_k[i]))
    for i, path in enumerate(cfg.checkpoint):
        models.check_layers(checkpoint_model(cfg, i), (cfg.checkpoint_layers[i],))
        if not Path(path).is_file():
            raise ValueError(f"checkpoint[{i}]: no checkpoint file at {path!r}")


def checkpoint_model(cfg, i: int) -> models.ModelConfig:
    """The model of checkpoint ``i``: ``arch[i]`` with ``num_classes`` and ``image_size``."""
    return models.preset(cfg.arch[i], num_classes=cfg.num_classes, image_size=cfg.image_size)


def seen_images(root, subjects, n_sessions: int | None) -> np.ndarray:
    """[n] 0-based 73k-ids of every image the subjects saw in their first sessions, ascending.

    From the design file: the images of the subjects' first ``n_sessions`` x 750 trials (None:
    every session the subject completed).
    """
    design = nsd.read_design(nsd.expdesign_path(root))
    ids = [
        nsd.trial_image_ids(design, s, (n_sessions or nsd.SESSIONS[s]) * nsd.TRIALS_PER_SESSION)
        for s in subjects
    ]
    return np.unique(np.concatenate(ids)).astype(np.int64)


def load_checkpoints(cfg) -> list[dict]:
    """Every checkpoint's variables, all files read before any is used.

    Raises ``ValueError`` naming the file for one that does not fit its ``arch`` and
    ``num_classes`` (:func:`superalign.models.from_torchvision`).
    """
    out = []
    for i, path in enumerate(cfg.checkpoint):
        try:
            out.append(models.from_torchvision(checkpoint_model(cfg, i), path))
        except ValueError as err:
            raise ValueError(
                f"checkpoint[{i}] ({path}) is not a torchvision {cfg.arch[i]} with "
                f"num_classes={cfg.num_classes}: {err}"
            ) from None
    return out


def feature_path(out: Path, cfg, i: int) -> Path:
    """The activation file written for checkpoint ``i``."""
    return Path(out) / "features" / f"{_slug(cfg.dnns[i])}.npz"


def extract_features(
    cfg, i: int, variables, root, image_ids: np.ndarray, out: Path, progress=True
) -> Path:
    """Write checkpoint ``i``'s units of ``image_ids`` as an activation file (resumable).

    Batches of ``extract_batch_size`` stimuli (``superalign.datasets``, ``name="nsd"``) go through
    :func:`superalign.models.extract` (ResNet: the centre position clamped at 0; ViT: the CLS
    token) into shards, then into ``features/<dnn>.npz``: ``image_ids`` [n] int64 (0-based,
    ascending) and ``activations`` [n, units] float32.
    """
    path = feature_path(out, cfg, i)
    if path.is_file():
        return path
    mc, layer = checkpoint_model(cfg, i), cfg.checkpoint_layers[i]
    data = datasets.DataConfig(
        name="nsd",
        path=str(root),
        image_ids=image_ids,
        image_size=cfg.image_size,
        resize_size=cfg.resize_size,
    )
    bs = cfg.extract_batch_size
    shard_dir = path.with_suffix(".shards")
    writer = shards.ShardWriter(shard_dir, models.layer_width(mc, layer), 16 * bs)
    fn = jax.jit(lambda v, x: models.extract(mc, v, x, (layer,))[layer])
    if not writer.complete:  # complete: killed while writing the .npz below
        first = writer.rows // bs
        total = -(-len(image_ids) // bs)
        with launch.progress_bar(f"{cfg.dnns[i]} NSD features", progress, total) as tick:
            tick(first)
            batches = datasets.batches(data, "validation", bs, start=first)
            for b, batch in enumerate(batches, first):
                acts = np.asarray(fn(variables, batch.images))
                writer.append(acts[batch.valid], batch.image_ids[batch.valid])
                tick(b + 1)
        writer.close()
    reader = shards.ShardReader(shard_dir)
    ids, acts = reader.image_ids(), reader.read()
    run_files.write_atomic(path, lambda f: np.savez(f, image_ids=ids, activations=acts))
    shutil.rmtree(shard_dir)
    return path


def sae_config(cfg, i: int, n_inputs: int) -> sae.SAEConfig:
    """``cfg.sae`` for DNN ``i``: ``n_inputs`` units, ``sae_expansion[i]`` x as many latents."""
    return dataclasses.replace(
        cfg.sae, n_inputs=n_inputs, n_latents=cfg.sae_expansion[i] * n_inputs, k=cfg.sae_k[i]
    )


def read_activations(path, *, need_ids: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
    """``(image_ids [n] 0-based int64 or None, activations [n, units] float32)`` of an .npz file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            2, f"activation file not found; expected the file {path}", str(path)
        )
    with np.load(path) as f:
        keys = sorted(f.files)
        if "activations" not in f or (need_ids and "image_ids" not in f):
            raise ValueError(
                f"{path} must hold 'activations' [n, units]"
                + (" and 'image_ids' [n] (0-based NSD 73k-ids)" if need_ids else "")
                + f"; it holds {keys}"
            )
        x = np.asarray(f["activations"], np.float32)
        ids = np.asarray(f["image_ids"]) if "image_ids" in f else None
        base = int(f["image_id_base"]) if "image_id_base" in f else 0
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"{path}: activations must be [n >= 2, units >= 1], got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{path}: activations contain NaN or Inf")
    if ids is not None:
        if base not in (0, 1):
            raise ValueError(f"{path}: image_id_base must be 0 or 1, got {base}")
        if ids.shape != (x.shape[0],) or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(
                f"{path}: image_ids must be [{x.shape[0]}] integers (one per row of activations),"
                f" got {ids.dtype} {ids.shape}"
            )
        ids = ids.astype(np.int64) - base
        if ids.min() < 0 or ids.max() >= 73_000 or np.unique(ids).size != ids.size:
            raise ValueError(
                f"{path}: image_ids must be distinct {base}-based NSD 73k-ids, got values in "
                f"[{ids.min() + base}, {ids.max() + base}] ({ids.size - np.unique(ids).size} "
                "repeated)"
            )
    return ids, x


def rows_for(ids: np.ndarray, wanted: np.ndarray, what: str) -> np.ndarray:
    """Row of every ``wanted`` image id in ``ids``; refuse if some are missing."""
    order = np.argsort(ids)
    pos = np.searchsorted(ids, wanted, sorter=order)
    pos = np.minimum(pos, ids.size - 1)
    found = ids[order[pos]] == wanted
    if not found.all():
        lost = wanted[~found]
        raise ValueError(
            f"{what} lacks {lost.size} of the {wanted.size} images needed (0-based 73k-ids, "
            f"e.g. {lost[:5].tolist()}); it must hold every image of the subjects analysed"
        )
    return order[pos]


def train_sae(cfg, i: int, x: np.ndarray, out: Path, progress=True) -> sae.SAEParams:
    """The DNN's SAE on ``x`` [n, units]; checkpointed every epoch, parameters kept in ``out/sae``.

    The same steps and keys as :func:`superalign.sae.train_on_stream` on chunks of
    ``sae_chunk_rows`` rows (batches shuffled within a chunk).
    """
    scfg = sae_config(cfg, i, x.shape[1])
    given = cfg.sae_param_files[i] if cfg.sae_param_files else ""
    slug = _slug(cfg.dnns[i])
    path = Path(given) if given else out / "sae" / f"{slug}.npz"
    if given or path.is_file():
        return read_sae_params(path, scfg)
    sae.check_activations(scfg, x)
    step = max(scfg.batch_size, cfg.sae_chunk_rows // scfg.batch_size * scfg.batch_size)
    starts = list(range(0, x.shape[0], step))
    if len(starts) > 1 and x.shape[0] - starts[-1] < scfg.batch_size:
        starts.pop()  # a last chunk shorter than a batch joins the one before
    bounds = list(zip(starts, [*starts[1:], x.shape[0]], strict=True))
    k_init, k_data = jax.random.split(jax.random.key(cfg.sae_seed))
    run = jax.jit(sae.make_chunk_run(scfg))
    last_epoch = []

    def epochs(state, start, n):
        for epoch in range(start, start + n):
            mse = []
            for j, (lo, hi) in enumerate(bounds):
                index = epoch * len(bounds) + j  # train_on_stream counts chunks over epochs
                chunk_key = jax.random.fold_in(jax.random.fold_in(k_data, epoch), index)
                state, metrics = run(state, jnp.asarray(x[lo:hi]), chunk_key)
                mse.append(metrics.mse)
            last_epoch[:] = mse
        return state

    state = launch.train(
        sae.init_state(scfg, k_init),
        epochs,
        scfg.n_epochs,
        every=1,
        directory=out / "sae" / f"{slug}_checkpoints",
        desc=f"SAE {cfg.dnns[i]}",
        progress=progress,
    )
    run_files.write_atomic(path, lambda f: np.savez(f, **state.params._asdict()))
    mse = float(np.mean(np.concatenate(last_epoch))) if last_epoch else None
    run_files.write_json(out / "sae" / f"{slug}_metrics.json", {"mse_last_epoch": mse})
    return state.params


def read_sae_params(path, scfg: sae.SAEConfig) -> sae.SAEParams:
    """SAE parameters from an .npz of W_enc [units, latents], b_enc, W_dec, b_dec."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, f"SAE parameters not found; expected the file {path}", str(path))
    want = jax.eval_shape(lambda: sae.init(scfg, jax.random.key(0)))
    with np.load(path) as f:
        params = {}
        for name in sae.SAEParams._fields:
            shape = getattr(want, name).shape
            if name not in f or f[name].shape != shape:
                got = f[name].shape if name in f else "missing"
                raise ValueError(
                    f"{path}: {name} must have shape {shape} (SAE {scfg.n_inputs} -> "
                    f"{scfg.n_latents}), got {got}"
                )
            params[name] = jnp.asarray(f[name], jnp.float32)
    return sae.SAEParams(**params)


def encode(scfg: sae.SAEConfig, params: sae.SAEParams, x: np.ndarray, rows: int) -> np.ndarray:
    """SAE latents [n, n_latents] of ``x`` [n, units], in jitted blocks of ``rows``."""
    fn = jax.jit(lambda p, b: sae.encode(scfg, p, b)[0])
    out = np.empty((x.shape[0], scfg.n_latents), np.float32)
    pad = -x.shape[0] % rows if x.shape[0] > rows else 0
    xp = np.concatenate([x, np.zeros((pad, x.shape[1]), x.dtype)]) if pad else x
    block = min(rows, xp.shape[0])
    for lo in range(0, x.shape[0], block):  # one compile: every block has the same shape
        hi = min(lo + block, x.shape[0])
        out[lo:hi] = np.asarray(fn(params, jnp.asarray(xp[lo : lo + block])))[: hi - lo]
    return out


def dnn_sources(cfg, files: list[str], train_files: list[str], out: Path, progress=True) -> dict:
    """Per DNN: image ids and the Neuron, SAE and RandSAE matrices of every NSD image."""
    sources = {}
    for i, name in enumerate(cfg.dnns):
        ids, x = read_activations(files[i])
        train = train_files[i]
        x_train = read_activations(train, need_ids=False)[1] if train else x
        if x_train.shape[1] != x.shape[1]:
            raise ValueError(
                f"{name}: the SAE train file has {x_train.shape[1]} units but the NSD file "
                f"{x.shape[1]}"
            )
        scfg = sae_config(cfg, i, x.shape[1])
        params = train_sae(cfg, i, x_train, out, progress)
        rand = sae.init(scfg, jax.random.key(cfg.random_sae_seed))
        sources[name] = {
            "image_ids": ids,
            "neuron": x,
            "sae": encode(scfg, params, x, cfg.encode_rows),
            "randsae": encode(scfg, rand, x, cfg.encode_rows),
            "n_latents": scfg.n_latents,
        }
    return sources


def peak_memory() -> dict:
    """The peak memory so far: the device's where it reports one, else the process's RSS."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        peak, source = stats["peak_bytes_in_use"], "device peak_bytes_in_use"
    else:  # ru_maxrss is in KiB on Linux
        peak, source = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"
    return {"peak_gib": peak / 2.0**30, "source": source, "backend": jax.default_backend()}


def _score(result, nc_fraction: float) -> dict:
    return {
        "folds": result.folds,
        "mean": result.mean,
        "sem": result.sem,
        "normalized_folds": result.folds / nc_fraction,
        "normalized_mean": result.mean / nc_fraction,
        "normalized_sem": result.sem / nc_fraction,
        "alpha": result.alpha,
        "n_dead_x": len(result.dead_x),
        "n_dead_y": len(result.dead_y),
    }


MAPPED = ("neuron_voxel", "sae_voxel")
"""The conditions whose voxelwise r are kept for the gain maps."""


def subject_scores(
    cfg, data: nsd.SubjectData, sources: dict, progress=True, voxels: dict | None = None
) -> dict:
    """Every ridge score of one subject.

    Args:
      voxels: if given, filled with ``"<dnn slug>/<condition>/unit_r"`` [K, live] and
        ``".../dead_y"`` of the :data:`MAPPED` conditions (:mod:`experiments.brain_maps`).
    """
    nc = np.asarray(data.noise_ceiling, np.float64)
    nc_fraction = float(nc.mean() / 100.0)
    if not nc_fraction > 0:
        raise ValueError(f"subject {data.meta['subject']}: mean noise ceiling is {nc.mean()}")
    Y = data.responses
    out = {
        "n_images": int(Y.shape[0]),
        "n_voxels": int(Y.shape[1]),
        "noise_ceiling": {
            "mean": float(nc.mean()),
            "median": float(np.median(nc)),
            "histogram": np.histogram(nc, bins=20, range=(0, 100))[0],
        },
        "meta": data.meta,
        "dnns": {},
    }
    conds = CONDITIONS if cfg.scrambled_control else CONDITIONS[:3]
    kw = dict(n_folds=cfg.n_folds, seed=cfg.fold_seed)
    jobs = [(name, cond) for name in sources for cond in conds]
    scramble = np.random.default_rng(cfg.scramble_seed).permutation(Y.shape[0])
    desc = f"subject {data.meta['subject']} ridge"
    with launch.progress_bar(desc, progress, len(jobs)) as tick:
        for i, (name, cond) in enumerate(jobs):
            src = sources[name]
            rows = rows_for(src["image_ids"], data.image_ids, f"the activation file of {name}")
            key = "neuron" if cond == "scrambled_voxel" else cond.split("_")[0]
            X = src[key][rows]
            if cond == "scrambled_voxel":
                X = X[scramble]
            result = superalign.ridge_regression(X, Y, **kw)
            record = _score(result, nc_fraction)
            if voxels is not None and cond in MAPPED:
                voxels[f"{_slug(name)}/{cond}/unit_r"] = np.asarray(result.unit_r)
                voxels[f"{_slug(name)}/{cond}/dead_y"] = np.asarray(result.dead_y, np.int64)
            if cond == "sae_voxel":  # the widest source: the call that sets the peak
                record["memory"] = peak_memory()
            out["dnns"].setdefault(name, {})[cond] = record
            tick(i + 1)
    return out


def changes(results: dict) -> list[dict]:
    """Change (%) of SAE->Voxel and RandSAE->Voxel over Neuron->Voxel, per subject and DNN."""
    rows = []
    for subject, res in results["subjects"].items():
        for name, scores in res["dnns"].items():
            base = scores["neuron_voxel"]["normalized_mean"]
            row = {"subject": subject, "dnn": name}
            for cond in CONDITIONS:
                if cond in scores:
                    row[cond] = scores[cond]["normalized_mean"]
            for cond in ("sae_voxel", "randsae_voxel"):
                row[f"{cond}_change_percent"] = (
                    100.0 * (scores[cond]["normalized_mean"] - base) / base
                )
            rows.append(row)
    return rows


def table(results: dict) -> str:
    """Markdown table of normalised scores and percentage changes."""
    has_scr = any("scrambled_voxel" in r for r in changes(results))
    head = "| subject | DNN | Neuron→Voxel | SAE→Voxel | RandSAE→Voxel |"
    head += " Scrambled→Voxel |" if has_scr else ""
    head += " SAE vs Neuron | RandSAE vs Neuron |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in changes(results):
        cells = [f"{r['neuron_voxel']:.3f}", f"{r['sae_voxel']:.3f}", f"{r['randsae_voxel']:.3f}"]
        if has_scr:
            cells.append(f"{r['scrambled_voxel']:.3f}")
        cells += [
            f"{r['sae_voxel_change_percent']:+.1f}%",
            f"{r['randsae_voxel_change_percent']:+.1f}%",
        ]
        lines.append(f"| {r['subject']} | {r['dnn']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def synthetic_data(cfg, out: Path) -> tuple[Path, list[str], list[str]]:
    """Write (once) the miniature NSD of the synthetic config; its root and activation files."""
    root = out / "synthetic_nsd"
    done = root / ".complete"
    if not done.exists():
        nsd_synthetic.build(root, cfg.synthetic)
        done.touch()
    files = nsd_synthetic.activation_files(root)
    return (
        root,
        [str(files[name]) for name in cfg.dnns],
        [str(files[f"{name}_train"]) for name in cfg.dnns],
    )


def voxels_path(out: Path, subject: int) -> Path:
    """Where a subject's voxelwise results are kept (:func:`write_voxels`)."""
    return Path(out) / "subjects" / f"subj{subject:02d}_voxels.npz"


def write_voxels(path, voxels: dict, data: nsd.SubjectData, shape) -> None:
    """A subject's voxelwise r (``voxels`` of :func:`subject_scores`) and where its voxels lie.

    The ``.npz`` holds every ``"<dnn slug>/<condition>/unit_r"`` and ``".../dead_y"``, and
    ``voxel_ijk`` [V, 3], ``affine`` [4, 4], ``shape`` [3] (the grid) and
    ``noise_ceiling_fraction`` (the subject's mean NC / 100), so a rerun draws the maps from it.
    """
    extra = {
        "voxel_ijk": np.asarray(data.voxel_ijk),
        "affine": np.asarray(data.affine, np.float64),
        "shape": np.asarray(shape, np.int64),
        "noise_ceiling_fraction": np.float64(np.mean(data.noise_ceiling) / 100.0),
    }
    run_files.write_atomic(path, lambda f: np.savez(f, **voxels, **extra))


def gain_maps(cfg, root, out: Path) -> dict:
    """Every subject's SAE->Voxel minus Neuron->Voxel map per DNN, drawn into ``figures/``.

    Subjects scored by a run that kept no voxelwise results are skipped (logged).

    Returns:
      ``{dnn: {subject: [png, pdf]}}``.
    """
    volumes: dict = {name: {} for name in cfg.dnns}
    for s in cfg.subjects:
        path = voxels_path(out, s)
        if not path.is_file():
            launch.log.info("subject %d: no %s, no gain maps", s, path.name)
            continue
        with np.load(path) as f:
            mask = brain_maps.data_mask(f["voxel_ijk"], f["shape"])
            n_voxels = int(mask.sum())
            for name in cfg.dnns:
                slug = _slug(name)

                def result(cond, f=f, slug=slug):
                    return {k: f[f"{slug}/{cond}/{k}"] for k in ("unit_r", "dead_y")}

                gain = brain_maps.voxel_gain(result("neuron_voxel"), result("sae_voxel"), n_voxels)
                volumes[name][s] = brain_maps.to_volume(gain, mask, f["affine"])
    return {
        name: brain_maps.save_gain_maps(maps, root, Path(out) / "figures", name=name)
        for name, maps in volumes.items()
        if maps
    }


def run(cfg: configs.BrainConfig, out, *, progress=True) -> dict:
    """Run (or resume) the experiment; write results.json, table.md and the figures.

    With checkpoints, every file is read (:func:`load_checkpoints`) before anything is written,
    unless a previous run in ``out`` extracted every DNN's features already.
    """
    out = Path(out)
    given, cfg = cfg, configs.resolve_checkpoints(cfg)
    check_config(cfg)
    n_sessions = cfg.n_sessions or None
    variables = None
    if cfg.synthetic is None:
        # Every input file first, before the out folder is claimed and before hours of reading
        # and training.
        for s in cfg.subjects:
            nsd.check_files(cfg.nsd_root, s, atlas=cfg.roi_atlas, n_sessions=n_sessions)
    if cfg.checkpoint:
        nsd.num_stimuli(cfg.nsd_root)  # the stimulus file exists and holds imgBrick
        if not all(feature_path(out, cfg, i).is_file() for i in range(len(cfg.dnns))):
            variables = load_checkpoints(cfg)
    run_files.check_out(given, out)
    if cfg.synthetic is not None:
        root, files, train_files = synthetic_data(cfg, out)
        n_sessions = cfg.n_sessions or cfg.synthetic.n_sessions
        for s in cfg.subjects:  # the tree just written
            nsd.check_files(root, s, atlas=cfg.roi_atlas, n_sessions=n_sessions)
    else:
        root, files, train_files = (
            Path(cfg.nsd_root),
            list(cfg.activation_files),
            list(cfg.sae_train_files),
        )
    cache = Path(cfg.cache_dir) if cfg.cache_dir else out / "cache"
    if cfg.checkpoint:
        ids = seen_images(root, cfg.subjects, n_sessions)
        files = [
            str(
                extract_features(
                    cfg, i, variables[i] if variables else None, root, ids, out, progress
                )
            )
            for i in range(len(cfg.dnns))
        ]
        variables = None  # the features are on disk
    for path in [*files, *(f for f in train_files if f)]:
        if not Path(path).is_file():
            raise FileNotFoundError(2, f"activation file not found; expected the file {path}", path)
    subjects = {}
    for s in cfg.subjects:
        with launch.progress_bar(f"subject {s} sessions", progress) as tick:
            subjects[s] = nsd.load_subject(
                root,
                s,
                atlas=cfg.roi_atlas,
                label=cfg.roi_label,
                n_sessions=n_sessions,
                require_all_repetitions=cfg.require_all_repetitions,
                cache_dir=cache,
                progress=tick,
            )
    sources = None
    per_subject = {}
    for s, data in subjects.items():
        cached = out / "subjects" / f"subj{s:02d}.json"
        if cached.exists():
            per_subject[str(s)] = run_files.read_json(cached)
            continue
        if sources is None:
            sources = dnn_sources(cfg, files, train_files, out, progress)
        voxels: dict = {}
        scores = subject_scores(cfg, data, sources, progress, voxels)
        shape = nsd.roi_mask(root, s, atlas=cfg.roi_atlas, label=cfg.roi_label).mask.shape
        write_voxels(voxels_path(out, s), voxels, data, shape)
        run_files.write_json(cached, scores)
        per_subject[str(s)] = run_files.read_json(cached)
    results = {
        **run_files.header(cfg),
        "nsd_root": str(root),
        "activation_files": files,
        "sae_train_files": [f or files[i] for i, f in enumerate(train_files)],
        "subjects": per_subject,
    }
    results["changes"] = changes(results)
    run_files.write_json(out / "results.json", results)
    run_files.write_text(out / "table.md", table(results) + "\n")
    style.save_all(brain_figures.figures(results), out / "figures")
    if cfg.gain_maps:
        gain_maps(cfg, root, out)
    return results


def summary(results: dict) -> str:
    return table(results)


if __name__ == "__main__":
    launch.cli(__name__)
