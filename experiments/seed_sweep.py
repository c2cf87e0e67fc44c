"""The toy experiment over many seed pairs, sizes N and SAE k: scores as mean and spread.

    python -m experiments.seed_sweep                    # 16 pairs, N in {8..48}, k in {3..12}
    python -m experiments.seed_sweep --config quick     # a few minutes on a 2-core CPU
    python -m experiments.seed_sweep --config.n_pairs=4 --config.sizes="(16,)" --out runs/s

Per size N, one compiled call each: all 2 x n_pairs toy models (the seed axis split over the
device mesh, :func:`superalign.toy.make_sharded_train`), then the SAEs of every (seed, k) on
the same rows (k a vmap axis, compiled once at the largest k), then the held-out activations.
Alignment is computed for every pair (2p -> 2p + 1) with the library calls the toy experiment
makes (soft- and semi-matching share one set of fold moments); the library
pads dead units to the input widths, so all pairs of a condition share one compile. Every score
is reported per pair and as mean, std, sem, min and max across pairs; the alignment gains
(SAE->SAE over Neuron->Neuron soft-matching, SAE->Neuron over Neuron->Neuron ridge) likewise,
with a figure of the gains and their spread.
Finished sizes are cached in ``out/sizes``; SAE training is checkpointed every
``segment_steps`` batches.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import superalign
from experiments import _io, launch, seed_sweep_figures
from experiments import figure_style as style
from experiments.configs import seed_sweep as configs
from experiments.toy_models import seed_keys
from superalign import analysis, features, sae, sharding, toy
from superalign.folds import full_precision

PRESETS = configs.PRESETS


def validate(cfg: configs.SeedSweepConfig, mesh) -> None:
    """Every setting checked before any work (ValueError naming the field)."""
    cfg.validate()
    sharding.check_divisible("2 * n_pairs (seeds)", 2 * cfg.n_pairs, mesh)
    _, held = features.split_steps(cfg.toy.data)
    if not 0 <= cfg.heldout_steps <= len(held):
        raise ValueError(
            f"heldout_steps must be in 0..{len(held)} (0: all held-out batches), "
            f"got {cfg.heldout_steps}"
        )
    if heldout_rows(cfg) < 2 * cfg.n_folds:
        raise ValueError(f"heldout_steps={cfg.heldout_steps} leaves too few rows for the folds")


def heldout_range(cfg) -> range:
    _, held = features.split_steps(cfg.toy.data)
    n = cfg.heldout_steps or len(held)
    return range(held.start, held.start + n)


def heldout_rows(cfg) -> int:
    return len(heldout_range(cfg)) * cfg.toy.batch_size


# ---------------------------------------------------------------------------------------------
# Training: all seeds of a size in one call, all (seed, k) SAEs in one call.


def train_toy_models(cfg, n_hidden: int, mesh):
    """``[S, ...]`` toy parameters of seeds 0 .. 2 n_pairs - 1 (same keys as toy_models)."""
    train = toy.make_sharded_train(cfg.toy_config(n_hidden), mesh, None, cfg.group_size)
    params, metrics = train(seed_keys(cfg.seeds, 0))
    return params


def _sae_segment(scfg: sae.SAEConfig, spec: features.DataSpec, n: int):
    """``(state [S, K], toy_params [S], ks [K], start) -> state``: SAE steps start .. start+n-1.

    Each step draws the batch once, maps it through every seed's toy model and updates every
    (seed, k) SAE on its seed's activations: the rows of ``toy_models.train_saes``.
    """
    update = sae.make_update(scfg)
    per_k = jax.vmap(update, in_axes=(0, None, 0))  # the k axis shares a seed's activations
    per_seed = jax.vmap(per_k, in_axes=(0, 0, None))

    def segment(state, toy_params, ks, start):
        def step(st, i):
            h = jax.vmap(toy.hidden, in_axes=(0, None))(toy_params, features.batch(spec, i))
            st, metrics = per_seed(st, h, ks)
            return st, metrics.mse

        return jax.lax.scan(step, state, start + jnp.arange(n))[0]

    return segment


def train_saes(cfg, n_hidden: int, toy_params, out: Path, mesh, progress=True):
    """``[S, K, ...]`` SAE parameters for every seed and every k in ``cfg.sae_ks``."""
    scfg = cfg.sae_config(n_hidden)
    train_steps, _ = features.split_steps(cfg.toy.data)
    ks = jnp.asarray(cfg.sae_ks, jnp.int32)
    init = jax.vmap(lambda k: sae.init_state(scfg, k))(seed_keys(cfg.seeds, 1))
    init = jax.tree.map(lambda x: jnp.repeat(x[:, None], len(cfg.sae_ks), axis=1), init)
    seeds, rep = sharding.leading(mesh).spec, sharding.replicated(mesh).spec
    compiled = {}

    def step_fn(state, s, n):
        if n not in compiled:
            compiled[n] = jax.jit(
                jax.shard_map(
                    _sae_segment(scfg, cfg.toy.data, n),
                    mesh=mesh,
                    in_specs=(seeds, seeds, rep, rep),
                    out_specs=seeds,
                    check_vma=False,
                )
            )
        return compiled[n](state, toy_params, ks, jnp.int32(s))

    state = launch.train(
        init,
        step_fn,
        len(train_steps),
        every=cfg.segment_steps,
        start=train_steps.start,
        directory=out / "checkpoints" / f"sae_N{n_hidden}",
        desc=f"N={n_hidden} SAEs ({len(cfg.seeds)} seeds x {len(cfg.sae_ks)} k)",
        progress=progress,
    )
    return state.params


# ---------------------------------------------------------------------------------------------
# Alignment over pairs: the library, pair by pair.


def align_pairs(X_all, Y_all, src, tgt, metrics, *, n_folds, seed):
    """Cross-validated scores of ``Y_all[tgt[p]]`` from ``X_all[src[p]]`` for every pair ``p``.

    Calls ``superalign.soft_and_semi_matching`` (direction "target", plans not kept) and
    ``superalign.ridge_regression`` pair by pair. The library pads dead units to the input
    widths, so every pair of a condition runs the same compiled code: one compile per condition
    and size, not per pair. (Vectorising the pairs inside one call was measured slower on the
    CPU than the library's streamed ridge and kernel-mode Sinkhorn; benchmarks/RESULTS.md.)

    Args:
      X_all: ``[S_x, M, Na]`` source populations. Y_all: ``[S_y, M, Nb]`` targets.
      src, tgt: ``[P]`` indices into ``X_all`` and ``Y_all``.
      metrics: a subset of ``("matching", "ridge")``.
      n_folds, seed: the folds.

    Returns:
      ``{metric: {"folds": [P, K], ...}}`` for "soft_matching" (with "converged"),
      "semi_matching" and "ridge" (with "alpha"), plus "dead_x" / "dead_y" counts ``[P]``.
    """
    kw = dict(n_folds=n_folds, seed=seed)
    rows: dict = {key: [] for key in ("soft", "converged", "semi", "ridge", "alpha", "dx", "dy")}
    for a, b in zip(src, tgt, strict=True):
        X, Y = X_all[a], Y_all[b]
        if "matching" in metrics:
            soft, semi = superalign.soft_and_semi_matching(X, Y, keep_plans=False, **kw)
            rows["soft"].append(soft.folds)
            rows["converged"].append(soft.converged)
            rows["semi"].append(semi.folds)
            dead = soft
        if "ridge" in metrics:
            ridge = superalign.ridge_regression(X, Y, **kw)
            rows["ridge"].append(ridge.folds)
            rows["alpha"].append(ridge.alpha)
            dead = ridge
        rows["dx"].append(len(dead.dead_x))
        rows["dy"].append(len(dead.dead_y))
    out: dict = {}
    if "matching" in metrics:
        out["soft_matching"] = {
            "folds": np.stack(rows["soft"]),
            "converged": np.stack(rows["converged"]),
        }
        out["semi_matching"] = {"folds": np.stack(rows["semi"])}
    if "ridge" in metrics:
        out["ridge"] = {"folds": np.stack(rows["ridge"]), "alpha": np.stack(rows["alpha"])}
    out["dead_x"], out["dead_y"] = np.array(rows["dx"]), np.array(rows["dy"])
    return out


def spread(per_pair) -> dict:
    """Mean, std (ddof 1), sem, min and max across pairs of per-pair values ``[P]``."""
    v = np.asarray(per_pair, np.float64)
    return {
        "pairs": v,
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)),
        "sem": float(v.std(ddof=1) / np.sqrt(len(v))),
        "min": float(v.min()),
        "max": float(v.max()),
    }


def _summaries(scores: dict) -> dict:
    out = {}
    for metric in ("soft_matching", "semi_matching", "ridge"):
        if metric not in scores:
            continue
        folds = np.asarray(scores[metric]["folds"], np.float64)
        rec = spread(folds.mean(1))
        rec["fold_sem"] = folds.std(1, ddof=1) / np.sqrt(folds.shape[1])
        rec["folds"] = folds
        if metric == "soft_matching":
            rec["converged"] = bool(scores[metric]["converged"].all())
        if metric == "ridge":
            rec["alpha"] = scores[metric]["alpha"]
        rec["dead_x"], rec["dead_y"] = scores["dead_x"], scores["dead_y"]
        out[metric] = rec
    return out


def gain(base: dict, new: dict) -> dict:
    """Per-pair change of a score: absolute and relative (%), each with its spread."""
    b, n = np.asarray(base["pairs"]), np.asarray(new["pairs"])
    rel = 100 * (n - b) / np.abs(b)
    return {
        "absolute": spread(n - b),
        "percent": spread(rel),
        "fraction_positive": float(np.mean(n > b)),
    }


# ---------------------------------------------------------------------------------------------
# One size.


def heldout_neurons(cfg, n_hidden, toy_params):
    """``[S, M, N]`` neuron activations on the alignment rows (features drawn once per call)."""
    spec = cfg.toy.data
    rows = heldout_range(cfg)
    acts = jax.vmap(lambda p, s: toy.activations(p, spec, s, len(rows)), in_axes=(0, None))
    return jax.jit(acts)(toy_params, rows.start)


def _encoder(scfg):
    """``(params [S], h [S, M, N], k) -> [S, M, L]`` latents; one compile serves every k."""
    return jax.jit(jax.vmap(lambda p, h, k: sae.encode(scfg, p, h, k)[0], (0, 0, None)))


def analyse_pairs(toy_params, n_pairs: int) -> dict:
    """Superposition counts and the arrangement comparison of every pair (vectorised)."""
    norms = jnp.linalg.norm(toy_params.W, axis=-1)  # [S, F]: analysis.feature_norms per seed
    a, b = jnp.arange(0, 2 * n_pairs, 2), jnp.arange(1, 2 * n_pairs, 2)
    shared = norms[a] * norms[b] >= 1.0  # analysis.shared_features per pair
    best = jax.vmap(analysis.arrangement_best_match)(toy_params.W[a], toy_params.W[b], shared)
    return {
        "n_represented": spread((norms > 0.5).sum(-1)),
        "n_shared": spread(shared.sum(-1)),
        "arrangement_below_half": spread((best < 0.5).mean(-1)),
    }


def run_size(cfg, n_hidden: int, out: Path, mesh, progress=True) -> dict:
    """Everything for one size over all pairs; cached in ``out/sizes/N<n>.json``."""
    cached = out / "sizes" / f"N{n_hidden}.json"
    if cached.exists():
        return _io.read_json(cached)
    t0 = time.perf_counter()
    stage = launch.Stages(f"N={n_hidden}")
    scfg = cfg.sae_config(n_hidden)
    P = cfg.n_pairs
    src, tgt = list(range(0, 2 * P, 2)), list(range(1, 2 * P, 2))
    kw = dict(n_folds=cfg.n_folds, seed=cfg.fold_seed)

    toy_params = stage("toy models", train_toy_models, cfg, n_hidden, mesh)
    sae_params = stage("SAEs", train_saes, cfg, n_hidden, toy_params, out, mesh, progress)
    neurons = stage("held-out neurons", heldout_neurons, cfg, n_hidden, toy_params)
    rand_keys = seed_keys(cfg.seeds[::2], cfg.random_sae_seed)  # each pair's source seed
    rand_params = jax.vmap(lambda k: sae.init(scfg, k))(rand_keys)
    encode = _encoder(scfg)
    result: dict = {"pairs": P, "k": {}}
    both = ("matching", "ridge")
    scores = stage("alignment Neuron->Neuron", align_pairs, neurons, neurons, src, tgt, both, **kw)
    result["neuron_neuron"] = _summaries(scores)
    desc = f"N={n_hidden} alignment per k"
    with launch.progress_bar(desc, progress, len(cfg.sae_ks)) as tick:
        for j, k in enumerate(cfg.sae_ks):
            params_k = jax.tree.map(lambda x, j=j: x[:, j], sae_params)
            latents = encode(params_k, neurons, k)  # [S, M, L]
            rand = encode(rand_params, neurons[::2], k)  # [P, M, L]: each source seed
            ps = list(range(P))
            runs = {
                "sae_sae": (latents, latents, src, tgt, both),
                "randsae_sae": (rand, latents, ps, tgt, ("matching",)),
                "sae_neuron": (latents, neurons, src, tgt, ("ridge",)),
                "randsae_neuron": (rand, neurons, ps, tgt, ("ridge",)),
            }
            rec: dict = {"soft_matching": {}, "semi_matching": {}, "ridge": {}}
            for cond, args in runs.items():
                res = _summaries(stage(f"alignment k={k} {cond}", align_pairs, *args, **kw))
                for metric, summary in res.items():
                    rec[metric][cond] = summary
            nn = result["neuron_neuron"]
            rec["gains"] = {
                "soft_matching_sae_sae": gain(nn["soft_matching"], rec["soft_matching"]["sae_sae"]),
                "semi_matching_sae_sae": gain(nn["semi_matching"], rec["semi_matching"]["sae_sae"]),
                "ridge_sae_neuron": gain(nn["ridge"], rec["ridge"]["sae_neuron"]),
                "ridge_sae_sae": gain(nn["ridge"], rec["ridge"]["sae_sae"]),
            }
            result["k"][str(k)] = rec
            del latents, rand
            tick(j + 1)
    result["analysis"] = analyse_pairs(toy_params, P)
    result["wall_seconds"] = time.perf_counter() - t0
    result["stage_seconds"] = stage.seconds
    _io.write_json(cached, result)
    return _io.read_json(cached)


@full_precision
def run(cfg: configs.SeedSweepConfig, out, *, mesh=None, progress=True) -> dict:
    """Run (or resume) the sweep; write results.json and the figures (float32 products at full
    precision, also on GPUs)."""
    out = Path(out)
    mesh = sharding.default_mesh() if mesh is None else mesh
    validate(cfg, mesh)
    _io.check_out(cfg, out)
    sizes = {str(n): run_size(cfg, n, out, mesh, progress) for n in cfg.sizes}
    results = {
        **_io.header(cfg, mesh.devices.flat),
        "heldout_rows": heldout_rows(cfg),
        "sizes": sizes,
    }
    _io.write_json(out / "results.json", results)
    style.save_all(seed_sweep_figures.figures(results), out / "figures")
    return results


def summary(results: dict) -> str:
    """Alignment gains per (N, k): mean +- std across pairs, and the share of pairs that gain."""
    lines = [
        "| N | k | soft N->N | soft SAE->SAE | soft gain % (mean ± std) | pairs > 0 "
        "| ridge N->N | ridge SAE->N | ridge gain % | pairs > 0 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, res in results["sizes"].items():
        nn = res["neuron_neuron"]
        for k, rec in res["k"].items():
            g, r = rec["gains"]["soft_matching_sae_sae"], rec["gains"]["ridge_sae_neuron"]
            sn = rec["ridge"]["sae_neuron"]
            lines.append(
                f"| {n} | {k} | {nn['soft_matching']['mean']:.3f} ± "
                f"{nn['soft_matching']['std']:.3f} | {rec['soft_matching']['sae_sae']['mean']:.3f}"
                f" ± {rec['soft_matching']['sae_sae']['std']:.3f} | {g['percent']['mean']:+.1f} ± "
                f"{g['percent']['std']:.1f} | {g['fraction_positive']:.0%} "
                f"| {nn['ridge']['mean']:.3f} ± {nn['ridge']['std']:.3f} "
                f"| {sn['mean']:.3f} ± {sn['std']:.3f} "
                f"| {r['percent']['mean']:+.1f} ± {r['percent']['std']:.1f} "
                f"| {r['fraction_positive']:.0%} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    launch.cli(__name__)
