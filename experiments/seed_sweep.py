"""The toy experiment over many seed pairs, sizes N and SAE k: scores as mean and spread.

    python -m experiments.seed_sweep                    # 16 pairs, N in {8..48}, k in {3..12}
    python -m experiments.seed_sweep --quick            # a few minutes on a 2-core CPU
    python -m experiments.seed_sweep --config.n_pairs=4 --config.sizes="(16,)" --out runs/s

Per size N, one compiled call each: all 2 x n_pairs toy models (the seed axis split over the
device mesh, :func:`superalign.toy.make_sharded_train`), then the SAEs of every (seed, k) on
the same rows (k a vmap axis, compiled once at the largest k), then the held-out activations.
Alignment is computed for every pair (2p -> 2p + 1) with the protocol and the library code of
``experiments.toy_models`` (soft- and semi-matching share one set of fold moments), vectorised
over pairs: pairs with the same numbers of live units are one ``lax.map`` (vmapped in batches of
``pair_batch``) in one compiled call. Every score is reported per pair and as mean, std, sem,
min and max across pairs; the alignment gains (SAE->SAE over Neuron->Neuron soft-matching,
SAE->Neuron over Neuron->Neuron ridge) likewise, with a figure of the gains and their spread.
Finished sizes are cached in ``out/sizes``; SAE training is checkpointed every
``segment_steps`` batches.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from experiments import _io, toy_models
from experiments.configs import seed_sweep as configs
from superalign import analysis, features, matching, regression, sae, sharding, toy
from superalign import folds as _folds

MATCHING = ("neuron_neuron", "sae_sae", "randsae_sae")
RIDGE = ("neuron_neuron", "sae_neuron", "sae_sae", "randsae_neuron")


def validate(cfg: configs.SeedSweepConfig, mesh) -> None:
    """Every setting checked before any work (ValueError naming the field)."""
    if not isinstance(cfg.n_pairs, int) or isinstance(cfg.n_pairs, bool) or cfg.n_pairs < 2:
        raise ValueError(f"n_pairs must be an integer >= 2 (a spread needs two), got {cfg.n_pairs}")
    if not cfg.sae_ks or len(set(cfg.sae_ks)) != len(cfg.sae_ks):
        raise ValueError(f"sae_ks must be distinct values, got {cfg.sae_ks!r}")
    for k in cfg.sae_ks:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= cfg.sae_latents:
            raise ValueError(f"sae_ks must be in 1..sae_latents={cfg.sae_latents}, got {k!r}")
    for name in ("group_size", "pair_batch", "matching_pair_batch", "segment_steps"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    sharding.check_divisible("2 * n_pairs (seeds)", 2 * cfg.n_pairs, mesh)
    base = cfg.base()
    for n in cfg.sizes:
        tcfg = toy_models.toy_config(base, n)
        toy_models.sae_config(base, n)
    _, held = features.split_steps(tcfg.data)
    if not 0 <= cfg.heldout_steps <= len(held):
        raise ValueError(
            f"heldout_steps must be in 0..{len(held)} (0: all held-out batches), "
            f"got {cfg.heldout_steps}"
        )
    if heldout_rows(cfg) < 2 * cfg.n_folds:
        raise ValueError(f"heldout_steps={cfg.heldout_steps} leaves too few rows for the folds")


def heldout_range(cfg) -> range:
    _, held = features.split_steps(toy_models.toy_config(cfg.base(), cfg.sizes[0]).data)
    n = cfg.heldout_steps or len(held)
    return range(held.start, held.start + n)


def heldout_rows(cfg) -> int:
    return len(heldout_range(cfg)) * cfg.batch_size


# ---------------------------------------------------------------------------------------------
# Training: all seeds of a size in one call, all (seed, k) SAEs in one call.


def train_toy_models(cfg, n_hidden: int, mesh):
    """``[S, ...]`` toy parameters of seeds 0 .. 2 n_pairs - 1 (same keys as toy_models)."""
    base = cfg.base()
    train = toy.make_sharded_train(
        toy_models.toy_config(base, n_hidden), mesh, None, cfg.group_size
    )
    params, metrics = train(toy_models._seed_keys(base.seeds, 0))
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
    base = cfg.base()
    tcfg, scfg = toy_models.toy_config(base, n_hidden), toy_models.sae_config(base, n_hidden)
    train_steps, _ = features.split_steps(tcfg.data)
    ks = jnp.asarray(cfg.sae_ks, jnp.int32)
    init = jax.vmap(lambda k: sae.init_state(scfg, k))(toy_models._seed_keys(base.seeds, 1))
    init = jax.tree.map(lambda x: jnp.repeat(x[:, None], len(cfg.sae_ks), axis=1), init)
    seeds, rep = sharding.leading(mesh).spec, sharding.replicated(mesh).spec
    compiled = {}

    def step_fn(state, s, n):
        if n not in compiled:
            compiled[n] = jax.jit(
                jax.shard_map(
                    _sae_segment(scfg, tcfg.data, n),
                    mesh=mesh,
                    in_specs=(seeds, seeds, rep, rep),
                    out_specs=seeds,
                    check_vma=False,
                )
            )
        return compiled[n](state, toy_params, ks, jnp.int32(s))

    state = toy_models._train_segmented(
        out / "checkpoints" / f"sae_N{n_hidden}",
        init,
        step_fn,
        train_steps.start,
        train_steps.stop,
        cfg.segment_steps,
        f"N={n_hidden} SAEs ({len(base.seeds)} seeds x {len(cfg.sae_ks)} k)",
        progress,
    )
    return state.params


# ---------------------------------------------------------------------------------------------
# Vectorised alignment over pairs.


_ranges_all = jax.jit(jax.vmap(_folds._part_ranges, in_axes=(0, None, None)))


def live_units_all(name: str, X_all, folds: _folds.Folds) -> list[_folds.LiveUnits]:
    """:func:`superalign.folds.live_units` for every ``X_all[s]`` (``[S, M, N]``) in one call."""
    block = _folds.block_rows_for(len(folds.sizes), X_all.shape[-1], int(folds.sizes.max()))
    index, mask = _folds.blocked(folds, block)
    lo, hi = (np.asarray(a) for a in _ranges_all(X_all, index, mask))
    out = []
    for s in range(X_all.shape[0]):
        zero = (lo[s] == 0) & (hi[s] == 0)
        constant = (lo[s] == hi[s]) & ~zero
        dead = zero.any(axis=0)
        bad = constant.any(axis=0) & ~dead
        if bad.any():
            raise ValueError(
                f"{name}[{s}] column {int(np.flatnonzero(bad)[0])} is constant but not zero on "
                "the rows of a fold; its correlation is undefined"
            )
        if dead.all():
            raise ValueError(f"{name}[{s}] has no live unit (shape {X_all.shape[1:]})")
        out.append(_folds.LiveUnits(np.flatnonzero(~dead), np.flatnonzero(dead)))
    return out


@partial(jax.jit, static_argnames=("cfg", "pair_batch"))
def _matching_pairs(X, Y, src, tgt, mask_x, mask_y, index, mask, cfg, pair_batch):
    """Soft- and semi-matching (direction "target") of every pair from one set of moments."""
    all_x, all_y = jnp.arange(X.shape[-1]), jnp.arange(Y.shape[-1])

    def one(args):
        a, b = args
        mx, my = mask_x[a], mask_y[b]
        # Dead columns zeroed: their correlations are 0 and the masks keep them out.
        moments = _folds.fold_moments(X[a] * mx, Y[b] * my, all_x, all_y, index, mask)

        def fold(k):
            train, test = _folds.fold_correlations(moments, k)
            plan, converged, _, _ = matching._sinkhorn_plan(1.0 - train, cfg, mx, my)
            best = jnp.argmax(jnp.where(mx[:, None] > 0, train, -jnp.inf), axis=0)
            semi = jnp.take_along_axis(test, best[None, :], axis=0)[0]
            return (plan * test).sum(), converged, (semi * my).sum() / my.sum()

        # Folds (and pairs) as a vmap axis: the Sinkhorn loops of all of them step together,
        # which on the CPU costs about what one small problem's loop costs.
        return jax.vmap(fold)(jnp.arange(moments.count.shape[0]))

    return jax.lax.map(one, (src, tgt), batch_size=pair_batch)


@partial(jax.jit, static_argnames=("pair_batch",))
def _ridge_pairs(X, Y, src, tgt, mask_x, mask_y, splits, alphas, pair_batch):
    """Ridge of every pair; dead columns zeroed (a zero column of X changes no prediction and
    no leave-one-out error; a zero target is left out of the mean)."""
    all_x, all_y = jnp.arange(X.shape[-1]), jnp.arange(Y.shape[-1])

    def one(args):
        a, b = args
        mx, my = mask_x[a], mask_y[b]
        _, best, _, r = regression._ridge_folds(X[a] * mx, Y[b] * my, all_x, all_y, *splits, alphas)
        return (r * my).sum(-1) / my.sum(), best

    return jax.lax.map(one, (src, tgt), batch_size=pair_batch)


def _ridge_splits(folds: _folds.Folds):
    """The padded train / test row indices of ``superalign.ridge_regression``."""
    tests = folds.parts
    trains = [
        np.sort(np.concatenate([t for j, t in enumerate(tests) if j != k]))
        for k in range(len(tests))
    ]
    train = regression._padded(trains, regression._round_up(max(len(t) for t in trains)))
    test = regression._padded(tests, regression._round_up(max(len(t) for t in tests)))
    return (*train, *test)


def _live_mask(units: list[_folds.LiveUnits], width: int, dtype) -> jax.Array:
    m = np.zeros((len(units), width), np.float32)
    for s, u in enumerate(units):
        m[s, u.live] = 1.0
    return jnp.asarray(m, dtype)


def align_pairs(
    X_all,
    Y_all,
    src,
    tgt,
    *,
    metrics,
    n_folds,
    seed,
    pair_batch,
    matching_pair_batch=None,
    live=None,
):
    """Cross-validated scores of ``Y_all[tgt[p]]`` from ``X_all[src[p]]`` for every pair ``p``.

    The numbers of ``superalign.soft_matching`` / ``semi_matching`` (direction "target") /
    ``ridge_regression`` called pair by pair (tested), in one compiled call per condition:
    dead units (the same rule, :func:`live_units_all`) are masked instead of removed, so all
    pairs share one shape.

    Args:
      X_all: ``[S_x, M, Na]`` source populations. Y_all: ``[S_y, M, Nb]`` targets.
      src, tgt: ``[P]`` indices into ``X_all`` and ``Y_all``.
      metrics: a subset of ``("matching", "ridge")``.
      n_folds, seed: the folds.
      pair_batch: pairs vmapped together inside the ``lax.map`` over pairs (ridge).
      matching_pair_batch: the same for the matching scores; None for ``pair_batch``.
      live: optional precomputed ``(live_x, live_y)`` lists of :class:`LiveUnits`.

    Returns:
      ``{metric: {"folds": [P, K], ...}}`` for "soft_matching" (with "converged"),
      "semi_matching" and "ridge" (with "alpha"), plus "dead_x" / "dead_y" counts ``[P]``.
    """
    n_rows = X_all.shape[1]
    folds = _folds.make_folds(n_rows, n_folds, seed)
    live_x, live_y = live or (
        live_units_all("X", X_all, folds),
        live_units_all("Y", Y_all, folds),
    )
    mask_x = _live_mask(live_x, X_all.shape[-1], X_all.dtype)
    mask_y = _live_mask(live_y, Y_all.shape[-1], Y_all.dtype)
    a, b = jnp.asarray(src), jnp.asarray(tgt)
    out: dict = {}
    if "matching" in metrics:
        width = X_all.shape[-1] + Y_all.shape[-1]
        block = _folds.block_rows_for(n_folds, width, int(folds.sizes.max()))
        index, mask = _folds.blocked(folds, block)
        soft, conv, semi = _matching_pairs(
            X_all,
            Y_all,
            a,
            b,
            mask_x,
            mask_y,
            index,
            mask,
            matching.SinkhornConfig(),
            matching_pair_batch or pair_batch,
        )
        out["soft_matching"] = {"folds": np.asarray(soft), "converged": np.asarray(conv)}
        out["semi_matching"] = {"folds": np.asarray(semi)}
    if "ridge" in metrics:
        alphas = regression.check_alphas(None)
        scores, best = _ridge_pairs(
            X_all,
            Y_all,
            a,
            b,
            mask_x,
            mask_y,
            _ridge_splits(folds),
            jnp.asarray(alphas, X_all.dtype),
            pair_batch,
        )
        out["ridge"] = {"folds": np.asarray(scores), "alpha": alphas[np.asarray(best)]}
    out["dead_x"] = np.array([len(live_x[s].dead) for s in src])
    out["dead_y"] = np.array([len(live_y[t].dead) for t in tgt])
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
    spec = toy_models.toy_config(cfg.base(), n_hidden).data
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
    stage = toy_models._Stages(f"N={n_hidden}")
    base = cfg.base()
    scfg = toy_models.sae_config(base, n_hidden)
    P = cfg.n_pairs
    src, tgt = list(range(0, 2 * P, 2)), list(range(1, 2 * P, 2))
    kw = dict(
        n_folds=cfg.n_folds,
        seed=cfg.fold_seed,
        pair_batch=cfg.pair_batch,
        matching_pair_batch=cfg.matching_pair_batch,
    )

    toy_params = stage("toy models", train_toy_models, cfg, n_hidden, mesh)
    sae_params = stage("SAEs", train_saes, cfg, n_hidden, toy_params, out, mesh, progress)
    neurons = stage("held-out neurons", heldout_neurons, cfg, n_hidden, toy_params)
    rand_keys = jnp.stack(
        [toy_models._seed_keys([s], cfg.random_sae_seed)[0] for s in base.seeds[::2]]
    )
    rand_params = jax.vmap(lambda k: sae.init(scfg, k))(rand_keys)
    encode = _encoder(scfg)
    result: dict = {"pairs": P, "k": {}}
    scores = stage(
        "alignment Neuron->Neuron",
        lambda: align_pairs(neurons, neurons, src, tgt, metrics=("matching", "ridge"), **kw),
    )
    result["neuron_neuron"] = _summaries(scores)
    folds = _folds.make_folds(neurons.shape[1], cfg.n_folds, cfg.fold_seed)
    live_neurons = live_units_all("neurons", neurons, folds)
    with tqdm(cfg.sae_ks, desc=f"N={n_hidden} alignment per k", disable=not progress) as bar:
        for j, k in enumerate(bar):
            params_k = jax.tree.map(lambda x, j=j: x[:, j], sae_params)
            latents = encode(params_k, neurons, k)  # [S, M, L]
            rand = encode(rand_params, neurons[::2], k)  # [P, M, L]: each source seed
            live_lat = live_units_all("sae", latents, folds)
            live_rand = live_units_all("randsae", rand, folds)
            ps = list(range(P))
            runs = {
                "sae_sae": (latents, latents, src, tgt, ("matching", "ridge"), live_lat, live_lat),
                "randsae_sae": (rand, latents, ps, tgt, ("matching",), live_rand, live_lat),
                "sae_neuron": (latents, neurons, src, tgt, ("ridge",), live_lat, live_neurons),
                "randsae_neuron": (rand, neurons, ps, tgt, ("ridge",), live_rand, live_neurons),
            }
            rec: dict = {"soft_matching": {}, "semi_matching": {}, "ridge": {}}
            for cond, (X, Y, s_, t_, metrics, lx, ly) in runs.items():
                res = _summaries(
                    stage(
                        f"alignment k={k} {cond}",
                        lambda X=X, Y=Y, s_=s_, t_=t_, m=metrics, lx=lx, ly=ly: align_pairs(
                            X, Y, s_, t_, metrics=m, live=(lx, ly), **kw
                        ),
                    )
                )
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
    result["analysis"] = analyse_pairs(toy_params, P)
    result["wall_seconds"] = time.perf_counter() - t0
    result["stage_seconds"] = stage.seconds
    _io.write_json(cached, result)
    return _io.read_json(cached)


def run(cfg, out, *, mesh=None, progress=True) -> dict:
    """Run (or resume) the sweep; write results.json and the figures."""
    out = Path(out)
    mesh = sharding.default_mesh() if mesh is None else mesh
    validate(cfg, mesh)
    _io.check_out(cfg, out)
    t0 = time.perf_counter()
    sizes = {str(n): run_size(cfg, n, out, mesh, progress) for n in cfg.sizes}
    results = {
        "config": dataclasses.asdict(cfg),
        "versions": _io.versions(),
        "devices": [str(d) for d in mesh.devices.flat],
        "heldout_rows": heldout_rows(cfg),
        "sizes": sizes,
    }
    _io.write_json(out / "results.json", results)
    from experiments import seed_sweep_figures

    seed_sweep_figures.save_all(results, out / "figures")
    results["wall_seconds"] = time.perf_counter() - t0
    return results


def summary_table(results: dict) -> str:
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


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(
        prog="python -m experiments.seed_sweep",
        description=__doc__.split("\n")[0],
        epilog="Config fields: --config.FIELD=VALUE, e.g. --config.n_pairs=8.",
    )
    ap.add_argument("--quick", action="store_true", help="the quick preset (a few minutes)")
    ap.add_argument("--out", default="runs/seed_sweep", help="output directory")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    args, overrides = ap.parse_known_args(argv)
    cfg = configs.quick() if args.quick else configs.get_config()
    try:
        cfg = _io.apply_overrides(cfg, overrides)
    except ValueError as err:
        ap.error(str(err))
    results = run(cfg, args.out, progress=not args.no_progress)
    print(summary_table(results))
    print(
        f"\nresults: {Path(args.out) / 'results.json'}; figures: {Path(args.out) / 'figures'}; "
        f"wall time {results['wall_seconds']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
