"""The toy experiment over many seed pairs, sizes N and SAE k: scores as mean and spread.

    python -m experiments.seed_sweep                    # 16 pairs, N in {8..48}, k in {3..12}
    python -m experiments.seed_sweep --config findings  # the paper's setting, 8 pairs, all metrics
    python -m experiments.seed_sweep --config quick     # a few minutes on a 2-core CPU
    python -m experiments.seed_sweep --config.n_pairs=4 --config.sizes="(16,)" --out runs/s

Per size N, one compiled call each: all 2 x n_pairs toy models (the seed axis split over the
device mesh, :func:`superalign.toy.make_sharded_train`), then the SAEs of every (seed, k) on
the same rows (k a vmap axis, compiled once at the largest k), then the held-out activations
(seeds still split over the mesh). Every pair (seed 2p -> seed 2p + 1) is then scored by
:func:`superalign.compare.score_conditions`, the one place where the paper's conditions are
defined, with every metric of ``config.metrics`` (soft- and semi-matching share one pass over the
rows; the library pads dead units to the input widths, so all pairs of a condition share one
compile), alongside the superposition analysis and the feature-recovery check of the pair.

Reported per size: every score per pair and as mean, std, sem, min and max across pairs; the
alignment gains (SAE->SAE over Neuron->Neuron for every metric, SAE->Neuron over Neuron->Neuron
ridge) likewise; and, over all sizes, in how many pairs each of the paper's six toy findings
holds (:func:`experiments.toy_models.findings` applied to each pair, and to the means across
pairs). ``figures/`` shows the gains and the scores with their spread. Finished sizes are cached
in ``out/sizes``; SAE training is checkpointed (orbax) every ``segment_steps`` batches.

Several processes (hosts)
-------------------------

The same command runs on a cluster, one process per host (or per accelerator group), every
process with the same arguments and the same ``--out`` on a shared file system. Each process
joins the run through :func:`superalign.sharding.initialize` before any other JAX call; the mesh
then spans the devices of all processes, the toy models and SAEs train with the seed axis split
over them, each process scores the pairs whose seeds it holds (``n_pairs`` must be a multiple of
the number of processes), and the scores are gathered once per size. Only process 0 writes
``config.json``, ``sizes/``, ``results.json`` and the figures; the orbax checkpoints are written
by all processes together into the shared folder (a killed run resumes from them).

Explicitly, on every host (process 0's host and a free port as the coordinator)::

    python -m experiments.seed_sweep --config findings --out /shared/runs/sweep \\
        --coordinator host0:12345 --num-processes 4 --process-id $I

or through the environment (the flags win): ``JAX_COORDINATOR_ADDRESS=host0:12345
JAX_NUM_PROCESSES=4 JAX_PROCESS_ID=$I python -m experiments.seed_sweep ...``.

SLURM (JAX reads the coordinator, process count and id from SLURM's variables)::

    srun --nodes=4 --ntasks-per-node=1 \\
        python -m experiments.seed_sweep --config findings --out /shared/runs/sweep --distributed

Cloud TPU pods (one process per TPU VM host, the topology detected by JAX)::

    gcloud compute tpus tpu-vm ssh POD --worker=all --command="cd superalign && \\
        python -m experiments.seed_sweep --config findings --out /shared/runs/sweep --distributed"

Open MPI (``mpirun -n 4 ... --distributed``) is detected the same way. On CPUs the processes
exchange data through gloo (``--xla_force_host_platform_device_count=D`` gives each process ``D``
devices); on GPUs and TPUs through their own collectives.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import superalign
from experiments import figure_style as style
from experiments import launch, run_files, seed_sweep_figures, toy_models
from experiments.configs import seed_sweep as configs
from experiments.toy_models import seed_keys
from superalign import analysis, features, sae, sharding, toy
from superalign.compare import (
    MATCHING_CONDITIONS,
    REGRESSION_CONDITIONS,
    SEED_CONDITIONS,
    available_metrics,
    score_conditions,
)
from superalign.folds import full_precision

PRESETS = configs.PRESETS
PAPER_METRICS = ("soft_matching", "semi_matching", "ridge")
"""The metrics the paper's findings and the headline gains are stated in."""


def validate(cfg: configs.SeedSweepConfig, mesh) -> None:
    """Every setting checked before any work (ValueError naming the field)."""
    cfg.validate()
    missing = [m for m in PAPER_METRICS if m not in cfg.metrics]
    if missing:
        raise ValueError(
            f"metrics must include {PAPER_METRICS} (the findings and gains use them); "
            f"{missing} missing from {cfg.metrics!r}"
        )
    sharding.check_divisible("2 * n_pairs (seeds)", 2 * cfg.n_pairs, mesh)
    if cfg.n_pairs % jax.process_count():
        raise ValueError(
            f"n_pairs must be a multiple of the number of processes ({jax.process_count()}), so "
            f"that every process scores as many pairs, got {cfg.n_pairs}"
        )
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
    """``[S, K, ...]`` SAE parameters for every seed and every k in ``cfg.sae_ks``.

    Inputs are placed on the mesh with :func:`superalign.sharding.put` (global arrays when the
    mesh spans several processes); the checkpoints hold the global state.
    """
    scfg = cfg.sae_config(n_hidden)
    train_steps, _ = features.split_steps(cfg.toy.data)
    init = jax.vmap(lambda k: sae.init_state(scfg, k))(seed_keys(cfg.seeds, 1))
    init = jax.tree.map(lambda x: jnp.repeat(x[:, None], len(cfg.sae_ks), axis=1), init)
    init = sharding.put(init, sharding.leading(mesh))
    rep = sharding.replicated(mesh)
    ks = sharding.put(np.asarray(cfg.sae_ks, np.int32), rep)
    seeds = sharding.leading(mesh).spec
    compiled = {}

    def step_fn(state, s, n):
        if n not in compiled:
            compiled[n] = jax.jit(
                jax.shard_map(
                    _sae_segment(scfg, cfg.toy.data, n),
                    mesh=mesh,
                    in_specs=(seeds, seeds, rep.spec, rep.spec),
                    out_specs=seeds,
                    check_vma=False,
                )
            )
        return compiled[n](state, toy_params, ks, sharding.put(np.int32(s), rep))

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


def heldout_neurons(cfg, n_hidden, toy_params, mesh):
    """``[S, M, N]`` neuron activations on the alignment rows, seeds split over the mesh."""
    spec = cfg.toy.data
    rows = heldout_range(cfg)
    acts = jax.vmap(lambda p: toy.activations(p, spec, rows.start, len(rows)))
    return jax.jit(acts, out_shardings=sharding.leading(mesh))(toy_params)


# ---------------------------------------------------------------------------------------------
# Alignment over pairs.


def align_pairs(X_all, Y_all, src, tgt, metrics, *, n_folds, seed):
    """Cross-validated scores of ``Y_all[tgt[p]]`` from ``X_all[src[p]]`` for every pair ``p``.

    For pairings other than the sweep's conditions (which :func:`score_pair` scores through
    :func:`superalign.compare.score_conditions`). Calls ``superalign.soft_and_semi_matching``
    (direction "target", plans not kept) and ``superalign.ridge_regression`` pair by pair. The
    library pads dead units to the input widths, so every pair runs the same compiled code: one
    compile per shape, not per pair.

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


def metric_functions(cfg) -> dict:
    """``name -> f(X, Y, *, n_folds, seed)`` of ``cfg.metrics`` (RSA with ``rsa_max_stimuli``)."""
    registry = available_metrics()
    fns = {name: registry[name] for name in cfg.metrics}
    if "rsa" in fns:
        fns["rsa"] = functools.partial(fns["rsa"], max_stimuli=cfg.rsa_max_stimuli)
    return fns


_AFTER_FIRST_K = tuple(
    dict.fromkeys(c for c in (*MATCHING_CONDITIONS, *REGRESSION_CONDITIONS) if c != "neuron_neuron")
)
"""The conditions scored again for each further k (Neuron->Neuron is the same for every k)."""

_EXTRAS = ("converged", "alpha", "n_stimuli")
"""Per-fold fields of a metric result kept next to its folds (soft-matching, ridge, RSA)."""


def _record(result) -> dict:
    """A metric result as fixed-shape numpy arrays: folds [K], extras [K], dead unit counts."""
    rec = {"folds": np.asarray(result.folds, np.float64)}
    for field in _EXTRAS:
        if hasattr(result, field) and getattr(result, field) is not None:
            rec[field] = np.asarray(getattr(result, field))
    rec["dead_x"], rec["dead_y"] = np.int64(len(result.dead_x)), np.int64(len(result.dead_y))
    return rec


def score_pair(cfg, scfg, fns, z, neurons, toy_W, sae_params, rand_params) -> dict:
    """Everything measured on one pair (seed a -> seed b), as fixed-shape numpy arrays.

    Args:
      cfg: the sweep config. scfg: the SAE config of the size (k = max of ``sae_ks``).
      fns: the metrics (:func:`metric_functions`).
      z: ``[M, F]`` ground-truth features of the held-out rows.
      neurons: ``[2, M, N]`` held-out neurons of seeds a and b.
      toy_W: ``[2, F, N]`` their toy weights.
      sae_params: their SAEs, every leaf ``[2, K, ...]`` (one per k of ``sae_ks``).
      rand_params: the untrained control SAE of seed a (no seed axis).

    Returns:
      ``{"scores": {k: {metric: {condition: record}}}, "analysis": ..., "recovery": ...}``;
      conditions and their sources are :func:`superalign.compare.score_conditions`'.
    """
    X, Y = jnp.asarray(neurons[0]), jnp.asarray(neurons[1])
    norms = np.linalg.norm(toy_W, axis=-1)  # [2, F]: analysis.feature_norms per seed
    shared = analysis.shared_features(toy_W[0], toy_W[1])
    out: dict = {
        "analysis": {
            "n_represented": (norms > 0.5).sum(-1),
            "n_shared": np.int64(np.asarray(shared).sum()),
            "arrangement_best_match": np.asarray(
                analysis.arrangement_best_match(toy_W[0], toy_W[1], shared)
            ),
        },
        "recovery": {"neurons": np.asarray(analysis.feature_recovery(z, X))},
        "scores": {},
    }
    encode = _encoder(scfg)
    first: dict = {}  # the first k's records: Neuron->Neuron does not depend on k
    for j, k in enumerate(cfg.sae_ks):
        lat = [
            encode(jax.tree.map(lambda x, i=i, j=j: x[i, j], sae_params), h, k)
            for i, h in enumerate((X, Y))
        ]
        rand = encode(rand_params, X, k)
        scores = score_conditions(
            X,
            Y,
            lat[0][None],
            lat[1][None],
            rand,
            metrics=fns,
            n_folds=cfg.n_folds,
            seed=cfg.fold_seed,
            conditions=None if j == 0 else _AFTER_FIRST_K,
        )
        records = {
            metric: {
                cond: _record(r[0] if cond in SEED_CONDITIONS else r) for cond, r in conds.items()
            }
            for metric, conds in scores.items()
        }
        first = first or records
        out["scores"][str(k)] = {
            metric: {"neuron_neuron": first[metric]["neuron_neuron"], **conds}
            for metric, conds in records.items()
        }
        out["recovery"][f"sae_k{k}"] = np.asarray(analysis.feature_recovery(z, lat[0]))
    return out


@functools.cache
def _encoder(scfg):
    """``(params, h [M, N], k) -> [M, L]`` latents; one compile serves every k."""
    return jax.jit(lambda p, h, k: sae.encode(scfg, p, h, k)[0])


def score_local_pairs(cfg, n_hidden, toy_params, sae_params, neurons, progress=True) -> dict:
    """:func:`score_pair` of every pair whose seeds this process holds, stacked ``[P_local]``.

    Returns the records with a leading pair axis plus ``"pair"``, the pair indices.
    """
    seeds, (W, params, acts) = sharding.addressable_rows((toy_params.W, sae_params, neurons))
    if len(seeds) % 2 or np.any(seeds[::2] % 2) or np.any(seeds[1::2] != seeds[::2] + 1):
        raise ValueError(
            f"every process must hold whole pairs of seeds (2p, 2p + 1); this one holds {seeds}"
        )
    scfg = cfg.sae_config(n_hidden)
    fns = metric_functions(cfg)
    rows = heldout_range(cfg)
    z = features.batches(cfg.toy.data, rows.start + jnp.arange(len(rows)))
    z = z.reshape(-1, cfg.toy.n_features)
    records = []
    desc = f"N={n_hidden} alignment of {len(seeds) // 2} pairs"
    with launch.progress_bar(desc, progress, len(seeds) // 2) as tick:
        for i in range(0, len(seeds), 2):
            pair = int(seeds[i]) // 2
            # The control SAE of each pair's source seed (as the toy experiment's of seed 0).
            rand_key = seed_keys((cfg.seeds[2 * pair],), cfg.random_sae_seed)[0]
            rand = sae.init(scfg, rand_key)
            local = jax.tree.map(lambda x, i=i: x[i : i + 2], params)
            rec = score_pair(cfg, scfg, fns, z, acts[i : i + 2], W[i : i + 2], local, rand)
            records.append({**rec, "pair": np.int64(pair)})
            tick(i // 2 + 1)
    return jax.tree.map(lambda *leaves: np.stack(leaves), *records)


def gather_pairs(local: dict) -> dict:
    """Every process's pair records in pair order, on every process (one gather)."""
    every = sharding.gather(local)
    order = np.argsort(every["pair"], kind="stable")
    return jax.tree.map(lambda x: x[order], every)


# ---------------------------------------------------------------------------------------------
# Summaries across pairs.


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


def gain(base: dict, new: dict) -> dict:
    """Per-pair change of a score: absolute and relative (%), each with its spread."""
    b, n = np.asarray(base["pairs"]), np.asarray(new["pairs"])
    rel = 100 * (n - b) / np.abs(b)
    return {
        "absolute": spread(n - b),
        "percent": spread(rel),
        "fraction_positive": float(np.mean(n > b)),
    }


def summarise(rec: dict) -> dict:
    """Across-pair summary of one metric and condition from its stacked records ``[P, ...]``."""
    folds = np.asarray(rec["folds"], np.float64)  # [P, K]
    out = spread(folds.mean(1))
    out["fold_sem"] = folds.std(1, ddof=1) / np.sqrt(folds.shape[1])
    out["folds"] = folds
    if "converged" in rec:
        out["converged"] = bool(np.all(rec["converged"]))
    for field in ("alpha", "n_stimuli", "dead_x", "dead_y"):
        if field in rec:
            out[field] = rec[field]
    return out


def summarise_size(cfg, pairs: dict) -> dict:
    """The size's record in ``results.json`` from the gathered pair records ``[P, ...]``."""
    ks = [str(k) for k in cfg.sae_ks]
    first = pairs["scores"][ks[0]]
    result: dict = {"pairs": cfg.n_pairs, "k": {}}
    # Neuron->Neuron does not depend on k: the first k's values.
    result["neuron_neuron"] = {m: summarise(c["neuron_neuron"]) for m, c in first.items()}
    nn = result["neuron_neuron"]
    for k in ks:
        rec: dict = {
            metric: {c: summarise(r) for c, r in conds.items() if c != "neuron_neuron"}
            for metric, conds in pairs["scores"][k].items()
        }
        rec["gains"] = {f"{m}_sae_sae": gain(nn[m], rec[m]["sae_sae"]) for m in cfg.metrics}
        rec["gains"]["ridge_sae_neuron"] = gain(nn["ridge"], rec["ridge"]["sae_neuron"])
        recovery = pairs["recovery"][f"sae_k{k}"]  # [P, F]
        rec["recovery_sae"] = {**spread(recovery.mean(1)), "features": recovery}
        result["k"][k] = rec
    a = pairs["analysis"]
    best = a["arrangement_best_match"]  # [P, N]
    result["analysis"] = {
        "n_represented": spread(a["n_represented"].reshape(-1)),  # both seeds of every pair
        "n_shared": spread(a["n_shared"]),
        "arrangement_below_half": spread((best < 0.5).mean(-1)),
        "arrangement_best_match": best,
    }
    rn = pairs["recovery"]["neurons"]
    result["recovery_neurons"] = {**spread(rn.mean(1)), "features": rn}
    return result


def _toy_layout(sizes: dict, k: str, pick) -> dict:
    """Results in :func:`experiments.toy_models.findings`' layout for one k; ``pick`` maps a
    summary's per-pair values (or stacked per-pair arrays) to the values of one view."""
    out = {}
    for n, res in sizes.items():
        rec = res["k"][k]
        one: dict = {}
        for metric in PAPER_METRICS:
            conds = {"neuron_neuron": res["neuron_neuron"][metric], **rec[metric]}
            one[metric] = {c: {"mean": float(pick(s["pairs"]))} for c, s in conds.items()}
        one["arrangement_best_match"] = pick(res["analysis"]["arrangement_best_match"], pool=True)
        one["recovery"] = {
            "neurons": pick(res["recovery_neurons"]["features"], pool=False),
            "sae": pick(rec["recovery_sae"]["features"], pool=False),
        }
        out[n] = one
    return {"sizes": out}


def findings(results: dict) -> dict:
    """In how many pairs each of the paper's six toy findings holds, per k.

    :func:`experiments.toy_models.findings` (the findings' one definition) is applied to each
    pair's scores, arrangement and recovery across the sizes, and to the means across pairs
    (arrangement matches pooled over the pairs' neurons, recovery averaged per feature).

    Returns:
      ``{k: [{"claim", "pairs" ([P] bool), "holds" (count), "of" (P), "on_means" (bool),
      "numbers_on_means"}]}``.
    """
    sizes = results["sizes"]
    n_pairs = int(next(iter(sizes.values()))["pairs"])
    out = {}
    for k in next(iter(sizes.values()))["k"]:

        def mean_view(v, pool=None):
            v = np.asarray(v, np.float64)
            return v.reshape(-1) if pool else v.mean(0)

        on_means = toy_models.findings(_toy_layout(sizes, k, mean_view))
        per_pair = []
        for p in range(n_pairs):

            def pair_view(v, pool=None, p=p):
                return np.asarray(v, np.float64)[p]

            per_pair.append(
                [holds for _, holds, _ in toy_models.findings(_toy_layout(sizes, k, pair_view))]
            )
        out[k] = [
            {
                "claim": claim,
                "pairs": [row[i] for row in per_pair],
                "holds": int(sum(row[i] for row in per_pair)),
                "of": n_pairs,
                "on_means": bool(holds),
                "numbers_on_means": numbers,
            }
            for i, (claim, holds, numbers) in enumerate(on_means)
        ]
    return out


# ---------------------------------------------------------------------------------------------
# One size, the whole sweep.


def run_size(cfg, n_hidden: int, out: Path, mesh, progress=True) -> dict:
    """Everything for one size over all pairs; cached in ``out/sizes/N<n>.json``.

    With several processes, process 0 decides whether the size is cached and writes the cache;
    every process returns the same record.
    """
    cached = out / "sizes" / f"N{n_hidden}.json"
    if bool(sharding.broadcast(np.int32(cached.exists()))):
        return run_files.read_json(cached)
    t0 = time.perf_counter()
    stage = launch.Stages(f"N={n_hidden}")
    toy_params = stage("toy models", train_toy_models, cfg, n_hidden, mesh)
    sae_params = stage("SAEs", train_saes, cfg, n_hidden, toy_params, out, mesh, progress)
    neurons = stage("held-out neurons", heldout_neurons, cfg, n_hidden, toy_params, mesh)
    args = (cfg, n_hidden, toy_params, sae_params, neurons, progress)
    local = stage("alignment", score_local_pairs, *args)
    del neurons
    result = summarise_size(cfg, stage("gather", gather_pairs, local))
    result["wall_seconds"] = time.perf_counter() - t0
    result["stage_seconds"] = stage.seconds
    if jax.process_index() == 0:
        run_files.write_json(cached, result)
    sharding.barrier(f"seed_sweep N={n_hidden} written")
    return run_files.read_json(cached)


def _check_out(cfg, out: Path) -> None:
    """:func:`experiments.run_files.check_out` on process 0; every process raises if it refused."""
    error = None
    if jax.process_index() == 0:
        try:
            run_files.check_out(cfg, out)
        except ValueError as err:
            error = err
    if not bool(sharding.broadcast(np.int32(error is None))):
        raise error or ValueError(
            f"--out {out} holds a run with another config (process 0 refused it)"
        )


@full_precision
def run(cfg: configs.SeedSweepConfig, out, *, mesh=None, progress=True) -> dict:
    """Run (or resume) the sweep; write results.json and the figures (float32 products at full
    precision, also on GPUs).

    With several processes (:func:`superalign.sharding.initialize` first) every process runs
    this with the same arguments and ``out`` on a shared file system; process 0 writes.
    """
    out = Path(out)
    mesh = sharding.default_mesh() if mesh is None else mesh
    validate(cfg, mesh)
    _check_out(cfg, out)
    sizes = {str(n): run_size(cfg, n, out, mesh, progress) for n in cfg.sizes}
    results = {
        **run_files.header(cfg, mesh.devices.flat),
        "processes": jax.process_count(),
        "heldout_rows": heldout_rows(cfg),
        "sizes": sizes,
    }
    results["findings"] = findings(results)
    if jax.process_index() == 0:
        run_files.write_json(out / "results.json", results)
        style.save_all(seed_sweep_figures.figures(results), out / "figures")
    sharding.barrier("seed_sweep results written")
    return run_files.read_json(out / "results.json")


# ---------------------------------------------------------------------------------------------
# What the command prints.


def _ms(s: dict) -> str:
    return f"{s['mean']:.3f} ± {s['std']:.3f}"


def _gain_ms(percent: dict) -> str:
    """A gain in percent, signed: mean ± std across pairs."""
    return f"{percent['mean']:+.1f} ± {percent['std']:.1f}"


def scores_table(results: dict) -> list[str]:
    """Per N, k, metric: every condition's mean ± std across pairs."""
    cols = ("neuron_neuron", "sae_sae", "randsae_sae", "sae_neuron", "randsae_neuron")
    lines = [
        "| N | k | metric | " + " | ".join(cols) + " |",
        "|---|---|---|" + "---|" * len(cols),
    ]
    for n, res in results["sizes"].items():
        for k, rec in res["k"].items():
            for metric in results["config"]["metrics"]:
                conds = {"neuron_neuron": res["neuron_neuron"][metric], **rec[metric]}
                cells = [_ms(conds[c]) if c in conds else "" for c in cols]
                lines.append(f"| {n} | {k} | {metric} | " + " | ".join(cells) + " |")
    return lines


def gains_table(results: dict) -> list[str]:
    """Per N, k: the soft-matching and ridge gains, mean ± std across pairs (the headline)."""
    lines = [
        "| N | k | soft N->N | soft SAE->SAE | soft gain % (mean ± std) | pairs > 0 "
        "| ridge N->N | ridge SAE->N | ridge gain % | pairs > 0 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, res in results["sizes"].items():
        nn = res["neuron_neuron"]
        for k, rec in res["k"].items():
            g, r = rec["gains"]["soft_matching_sae_sae"], rec["gains"]["ridge_sae_neuron"]
            lines.append(
                f"| {n} | {k} | {_ms(nn['soft_matching'])} | "
                f"{_ms(rec['soft_matching']['sae_sae'])} | {_gain_ms(g['percent'])} "
                f"| {g['fraction_positive']:.0%} | {_ms(nn['ridge'])} "
                f"| {_ms(rec['ridge']['sae_neuron'])} | {_gain_ms(r['percent'])} "
                f"| {r['fraction_positive']:.0%} |"
            )
    return lines


def all_gains_table(results: dict) -> list[str]:
    """Per N, k and gain: relative and absolute change, mean ± std across pairs, pairs > 0."""
    lines = [
        "| N | k | gain | % (mean ± std) | absolute (mean ± std) | min .. max % | pairs > 0 |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, res in results["sizes"].items():
        for k, rec in res["k"].items():
            for name, g in rec["gains"].items():
                p, a = g["percent"], g["absolute"]
                lines.append(
                    f"| {n} | {k} | {name} | {_gain_ms(p)} | {a['mean']:+.4f} ± {a['std']:.4f} "
                    f"| {p['min']:+.1f} .. {p['max']:+.1f} "
                    f"| {round(g['fraction_positive'] * len(p['pairs']))} of {len(p['pairs'])} |"
                )
    return lines


def findings_lines(results: dict) -> list[str]:
    """The six findings: in how many pairs each holds, and whether it holds on the means."""
    lines = []
    for k, rows in results["findings"].items():
        lines.append(f"The paper's toy findings (PROTOCOL.md), k = {k}, per seed pair:")
        for row in rows:
            mark = "yes" if row["on_means"] else "NO "
            lines.append(
                f"  {row['holds']} of {row['of']} pairs; on the means [{mark}]: {row['claim']}: "
                f"{row['numbers_on_means']}"
            )
    return lines


def summary(results: dict) -> str:
    """Scores per N and condition, the findings per pair, and the gains with their spread."""
    lines = ["Scores, mean ± std across pairs:", *scores_table(results), ""]
    lines += [*findings_lines(results), "", "Gains across pairs:", *all_gains_table(results), ""]
    lines += gains_table(results)
    return "\n".join(lines)


if __name__ == "__main__":
    launch.cli(__name__)
