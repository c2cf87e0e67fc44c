"""The toy-model experiment: paper section 4 and the toy half of section 6, from one command.

    python -m experiments.toy_models                     # the paper's setting (PROTOCOL.md)
    python -m experiments.toy_models --config quick      # about a minute
    python -m experiments.toy_models --config.sizes="(16,)" --config.sae.k=5 --out runs/n16

For every size N: two toy models (seeds as a vmap axis) trained on the same rows, TopK SAEs on
the first 80% of their activations, random-SAE controls, then on the held-out 20%:
soft- and semi-matching (Neuron->Neuron, SAE->SAE, RandSAE->SAE), ridge (Neuron->Neuron,
SAE->Neuron, SAE->SAE, RandSAE->Neuron), the shared features and their arrangement, and the
feature-recovery check. Beyond the paper, linear CKA, RSA and the rotation score are scored on
the matching conditions (the conditions of every metric: ``superalign.compare``), and a figure
shows which metrics superposition deflates. Training is checkpointed (orbax) every
``segment_steps`` batches; a killed run started again with the same command resumes, and
finished stages are reused.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments import figure_style as style
from experiments import launch, run_files, toy_figures
from experiments.configs import toy_models as configs
from superalign import analysis, features, sae, toy
from superalign.compare import DEFAULT_METRICS, SEED_CONDITIONS, available_metrics, score_conditions
from superalign.folds import full_precision

PRESETS = configs.PRESETS
FLAGS = {"save_activations": "also write the held-out activations (.npy)"}
MATCHING = style.MATCHING_CONDITIONS
RIDGE = style.RIDGE_CONDITIONS
OTHER_METRICS = ("cka", "rsa", "rotation_score")
"""Metrics beyond the paper's, scored on the matching conditions."""
METRICS = DEFAULT_METRICS + OTHER_METRICS
"""Every metric the toy experiment scores, in the order of its tables and figures."""


def seed_keys(seeds, salt: int) -> jax.Array:
    """``[S]`` keys, one per seed: ``fold_in(key(seed), salt)`` (salt 0: toy models, 1: SAEs)."""
    return jnp.stack([jax.random.fold_in(jax.random.key(s), salt) for s in seeds])


def _segments(start: int, stop: int, size: int):
    for s in range(start, stop, size):
        yield s, min(size, stop - s)


def _ckpt_name(prefix: str, sizes) -> str:
    return f"{prefix}_N" + "-".join(str(n) for n in sizes)


def _segment_batches(cfg: configs.ToySetup, start, n: int) -> jax.Array:
    """``[n, B, F]`` features of batches ``start .. start + n - 1`` (shared by every size)."""
    return features.batches(cfg.toy.data, start + jnp.arange(n))


def train_toy_models_all(cfg, sizes, out: Path, progress=True) -> dict:
    """Both seeds' toy models of every size in ``sizes``, ``{N: [S, ...] parameters}``.

    One pass over the rows: each segment's batches are drawn once and train every size and seed.
    """
    sizes = tuple(sizes)
    tcfgs = [cfg.toy_config(n) for n in sizes]
    keys = seed_keys(cfg.seeds, 0)
    init = tuple(jax.vmap(lambda k, tc=tc: toy.init_state(tc, k))(keys) for tc in tcfgs)

    updates = [jax.vmap(toy.make_update(tc), in_axes=(0, None)) for tc in tcfgs]

    def segment(states, start, n):
        z = _segment_batches(cfg, start, n)

        # Every size's step in one loop body: XLA runs the independent updates side by side,
        # about 25% faster on 2 cores than one loop per size (results identical).
        def step(states, i):
            batch = jax.lax.dynamic_index_in_dim(z, i, keepdims=False)
            return tuple(up(st, batch)[0] for up, st in zip(updates, states, strict=True)), None

        return jax.lax.scan(step, states, jnp.arange(n))[0]

    state = launch.train(
        init,
        jax.jit(segment, static_argnums=2),
        cfg.toy.n_steps,
        every=cfg.segment_steps,
        directory=out / "checkpoints" / _ckpt_name("toy", sizes),
        desc=f"toy models N={sizes}",
        progress=progress,
    )
    return {n: st.params for n, st in zip(sizes, state, strict=True)}


def train_toy_models(cfg, n_hidden, out: Path, progress=True):
    """Both seeds' toy models of one size, ``[S, ...]`` parameters."""
    return train_toy_models_all(cfg, (n_hidden,), out, progress)[n_hidden]


def train_saes_all(cfg, toy_params: dict, out: Path, progress=True) -> dict:
    """Both seeds' SAEs of every size on their own model's activations, ``{N: [S, ...]}``.

    One in-order pass over the train rows, each segment's batches drawn once for every size.
    """
    sizes = tuple(toy_params)
    scfgs = [cfg.sae_config(n) for n in sizes]
    train_steps, _ = features.split_steps(cfg.toy.data)
    keys = seed_keys(cfg.seeds, 1)
    init = tuple(jax.vmap(lambda k, sc=sc: sae.init_state(sc, k))(keys) for sc in scfgs)
    hidden = jax.vmap(toy.hidden, in_axes=(0, None))

    updates = [jax.vmap(sae.make_update(sc), in_axes=(0, 0)) for sc in scfgs]
    rows = cfg.toy.batch_size

    def segment(states, params, start, n):
        z = _segment_batches(cfg, start, n).reshape(-1, cfg.toy.n_features)
        xs = [hidden(p, z) for p in params]  # [S, n * B, N] per size

        # In-order batches, every size's step in one loop body (as for the toy models).
        def step(states, i):
            new = []
            for up, st, x in zip(updates, states, xs, strict=True):
                new.append(up(st, jax.lax.dynamic_slice_in_dim(x, i * rows, rows, axis=1))[0])
            return tuple(new), None

        return jax.lax.scan(step, states, jnp.arange(n))[0]

    segment = jax.jit(segment, static_argnums=3)
    params = tuple(toy_params[n] for n in sizes)
    state = launch.train(
        init,
        lambda st, s, n: segment(st, params, s, n),
        len(train_steps),
        every=cfg.segment_steps,
        start=train_steps.start,
        directory=out / "checkpoints" / _ckpt_name("sae", sizes),
        desc=f"SAEs N={sizes}",
        progress=progress,
    )
    return {n: st.params for n, st in zip(sizes, state, strict=True)}


def train_saes(cfg, n_hidden, toy_params, out: Path, progress=True):
    """Both seeds' SAEs of one size on their own model's activations."""
    return train_saes_all(cfg, {n_hidden: toy_params}, out, progress)[n_hidden]


class RecoveryMoments:
    """Streamed correlations between ground-truth features and units (appendix A.3).

    Each chunk's centred moments come from one jitted call (float32, centred within the chunk);
    chunks are pooled on the host in float64 (Chan et al.), so the held-out features are never
    stored.
    """

    def __init__(self):
        self.n, self.parts = 0, None
        self._moments = jax.jit(self._chunk)

    @staticmethod
    def _chunk(z, units):
        mz, mu = z.mean(0), units.mean(0)
        zc, uc = z - mz, units - mu
        return mz, mu, (zc * zc).sum(0), (uc * uc).sum(0), zc.T @ uc

    def add(self, z, units) -> None:
        n_b = z.shape[0]
        mz_b, mu_b, szz_b, suu_b, szu_b = (
            np.asarray(a, np.float64) for a in self._moments(z, units)
        )
        if self.parts is None:
            self.n, self.parts = n_b, [mz_b, mu_b, szz_b, suu_b, szu_b]
            return
        mz, mu, szz, suu, szu = self.parts
        n = self.n + n_b
        dz, du = mz_b - mz, mu_b - mu
        f = self.n * n_b / n
        self.parts = [
            mz + dz * n_b / n,
            mu + du * n_b / n,
            szz + szz_b + f * dz**2,
            suu + suu_b + f * du**2,
            szu + szu_b + f * np.outer(dz, du),
        ]
        self.n = n

    def best_correlations(self) -> np.ndarray:
        """``[F]`` best correlation of every feature with any unit (0 for constant columns)."""
        _, _, szz, suu, szu = self.parts
        denom = np.sqrt(np.outer(szz, suu))
        corr = np.divide(szu, denom, out=np.zeros_like(szu), where=denom > 0)
        return corr.max(axis=1)


_HELDOUT_CHUNK = 100
"""Batches per held-out chunk: the chunk's features, activations and codes are the only memory
the pass adds to the held-out arrays (about 0.3 GB at N = 32 for 100 batches of 1024 rows)."""


@partial(jax.jit, donate_argnums=0)
def _write_rows(buffer: jax.Array, rows: jax.Array, start) -> jax.Array:
    """``buffer`` with ``rows`` written from row ``start`` on (in place: the buffer is donated)."""
    return jax.lax.dynamic_update_slice(buffer, rows, (start, 0))


def heldout(cfg, n_hidden, toy_params, sae_params, progress=True):
    """Held-out activations and the feature-recovery check, in one streamed pass.

    Returns:
      ``neurons`` (S arrays [M, N]) and ``sae`` (S arrays [M, L]), one per seed, ``randsae
      [M, L]`` (the untrained control SAE of the first seed, the only one the conditions use), and
      ``recovery`` (``neurons`` and ``sae`` of the first seed, ``[F]`` each). ``M`` is the
      number of held-out rows. The activations are device arrays: the metrics read them in
      place, and nothing is copied to the host unless the caller asks.
    """
    scfg, batch_size = cfg.sae_config(n_hidden), cfg.toy.batch_size
    _, held = features.split_steps(cfg.toy.data)
    rand_params = sae.init(scfg, seed_keys(cfg.seeds[:1], cfg.random_sae_seed)[0])
    n_seeds = len(cfg.seeds)
    recovery = {"neurons": RecoveryMoments(), "sae": RecoveryMoments()}

    def encode(params, x):
        # In row blocks of a few batches: 30-40% faster on the CPU than one encode of the whole
        # chunk (the top-k rounds then stay in cache).
        n_batches = len(x) // batch_size
        per_block = next(d for d in (4, 2, 1) if n_batches % d == 0)
        blocks = x.reshape(-1, per_block * batch_size, x.shape[-1])
        return jax.lax.map(lambda b: sae.encode(scfg, params, b)[0], blocks).reshape(len(x), -1)

    @partial(jax.jit, static_argnums=3)
    def segment(toy_params, sae_params, start, n):
        # The features are drawn once per segment and shared by every consumer.
        z = _segment_batches(cfg, start, n).reshape(-1, cfg.toy.n_features)
        h = jax.vmap(toy.hidden, in_axes=(0, None))(toy_params, z)
        latents = jax.vmap(encode)(sae_params, h)
        return z, h, latents, encode(rand_params, h[0])

    # Preallocated per-seed device arrays, written in place segment by segment (donated buffers),
    # so that peak memory is the activations plus one segment.
    n_rows = len(held) * batch_size
    widths = {"neurons": n_hidden, "sae": scfg.n_latents}
    out = {
        k: [jnp.zeros((n_rows, w), jnp.float32) for _ in range(n_seeds)] for k, w in widths.items()
    }
    out["randsae"] = jnp.zeros((n_rows, scfg.n_latents), jnp.float32)
    chunk = min(cfg.segment_steps, _HELDOUT_CHUNK)
    desc = f"N={n_hidden} held-out activations"
    with launch.progress_bar(desc, progress, len(held)) as tick:
        for s, n in _segments(held.start, held.stop, chunk):
            z, h, latents, rand = segment(toy_params, sae_params, s, n)
            recovery["neurons"].add(z, h[0])
            recovery["sae"].add(z, latents[0])
            lo = (s - held.start) * batch_size
            for i in range(n_seeds):
                out["neurons"][i] = _write_rows(out["neurons"][i], h[i], lo)
                out["sae"][i] = _write_rows(out["sae"][i], latents[i], lo)
            out["randsae"] = _write_rows(out["randsae"], rand, lo)
            tick(s + n - held.start)
    out["recovery"] = {k: v.best_correlations() for k, v in recovery.items()}
    return out


def score(result) -> dict:
    """The JSON record of one metric result: folds, mean, sem and what explains it."""
    record = {"folds": result.folds, "mean": result.mean, "sem": result.sem}
    for field in ("alpha", "converged", "dead_x", "dead_y", "n_stimuli", "n_dropped"):
        if hasattr(result, field):
            record[field] = getattr(result, field)
    return record


def metric_functions(metrics=METRICS, *, rsa_max_stimuli: int | None = None) -> dict:
    """``name -> f(X, Y, *, n_folds, seed)`` of the library's registry for ``metrics``.

    Args:
      metrics: names from :func:`superalign.compare.available_metrics`.
      rsa_max_stimuli: RSA's ``max_stimuli`` (stimuli per fold RDM), or None for its default.
    """
    registry = available_metrics()
    unknown = [m for m in metrics if m not in registry]
    if unknown:
        raise ValueError(f"metrics: unknown metric(s) {unknown}; available: {sorted(registry)}")
    fns = {m: registry[m] for m in metrics}
    if "rsa" in fns and rsa_max_stimuli is not None:
        fns["rsa"] = partial(fns["rsa"], max_stimuli=rsa_max_stimuli)
    return fns


class SeedAxis:
    """``[S, M, units]`` populations held as S arrays, for :func:`score_conditions`.

    Stacking the per-seed arrays would copy every one of them (half a gigabyte each at N = 32);
    this holds them as they are and hands out ``[M, units]`` per seed.
    """

    def __init__(self, arrays):
        self.arrays = list(arrays)
        self.shape = (len(self.arrays), *np.shape(self.arrays[0]))
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, s):
        return self.arrays[s]


def alignment(
    acts: dict, *, n_folds: int, seed: int, metrics=DEFAULT_METRICS, progress=True, workers=1
):
    """Every alignment score of one size (or layer) on its held-out activations, seed 0 -> 1.

    The conditions of every metric are those of :func:`superalign.compare.score_conditions`:
    ridge Neuron->Neuron, SAE->Neuron, SAE->SAE, RandSAE->Neuron; every other metric
    Neuron->Neuron, SAE->SAE, RandSAE->SAE. Soft- and semi-matching of a condition share one pass
    over the rows.

    Args:
      acts: ``neurons`` and ``sae`` (a population per seed, ``[M, units]`` each) and
        ``randsae`` (``[M, latents]``, the control SAE of seed 0).
      n_folds, seed: the folds.
      metrics: metric names, or a mapping ``name -> f(X, Y, *, n_folds, seed)``
        (:func:`metric_functions`).
      workers: metric calls side by side (:func:`superalign.compare.score_conditions`).

    Returns:
      ``{metric: {condition: record}}`` (:func:`score`).
    """
    a, b = 0, 1
    with launch.progress_bar("alignment", progress) as tick:
        scores = score_conditions(
            acts["neurons"][a],
            acts["neurons"][b],
            SeedAxis([acts["sae"][a]]),  # one SAE per model: seed axes of length 1
            SeedAxis([acts["sae"][b]]),
            acts["randsae"],
            metrics=metrics,
            n_folds=n_folds,
            seed=seed,
            callback=tick,
            workers=workers,
        )
    return {
        metric: {
            cond: score(res[0] if cond in SEED_CONDITIONS else res) for cond, res in conds.items()
        }
        for metric, conds in scores.items()
    }


def analyse(cfg, toy_params, acts: dict) -> dict:
    """Superposition analysis (figure 2 left) and the recovery check (appendix A.3)."""
    W_a, W_b = toy_params.W[0], toy_params.W[1]
    shared = analysis.shared_features(W_a, W_b)
    return {
        "feature_norms": {
            f"seed_{s}": analysis.feature_norms(toy_params.W[i]) for i, s in enumerate(cfg.seeds)
        },
        "n_represented": {
            f"seed_{s}": int(analysis.n_represented(toy_params.W[i]))
            for i, s in enumerate(cfg.seeds)
        },
        "shared_features": np.flatnonzero(np.asarray(shared)),
        "arrangement_best_match": analysis.arrangement_best_match(W_a, W_b, shared),
        "recovery": acts["recovery"],
    }


def _cached(out: Path, n_hidden: int) -> Path:
    return out / "sizes" / f"N{n_hidden}.json"


def run_size(
    cfg, n_hidden: int, toy_params, sae_params, out: Path, save_activations=False, progress=True
) -> dict:
    """Held-out activations, alignment and analysis of one trained size.

    The result is cached in ``out/sizes/N<n>.json``.
    """
    t0 = time.perf_counter()
    stage = launch.Stages(f"N={n_hidden}")
    acts = stage("held-out activations", heldout, cfg, n_hidden, toy_params, sae_params, progress)
    if save_activations:
        for name in ("neurons", "sae"):
            for i, seed in enumerate(cfg.seeds):
                path = out / "activations" / f"N{n_hidden}_{name}_seed{seed}.npy"
                run_files.save_npy(path, np.asarray(acts[name][i]))
        path = out / "activations" / f"N{n_hidden}_randsae_seed{cfg.seeds[0]}.npy"
        run_files.save_npy(path, np.asarray(acts["randsae"]))
    metrics = metric_functions(METRICS, rsa_max_stimuli=cfg.rsa_max_stimuli)
    kw = dict(n_folds=cfg.n_folds, seed=cfg.fold_seed, metrics=metrics, progress=progress)
    kw["workers"] = cfg.metric_workers
    scores = stage("alignment", alignment, acts, **kw)
    result = {**scores, **stage("analysis", analyse, cfg, toy_params, acts)}
    result["wall_seconds"] = time.perf_counter() - t0
    result["stage_seconds"] = stage.seconds
    run_files.write_json(_cached(out, n_hidden), result)
    return run_files.read_json(_cached(out, n_hidden))


@full_precision
def run(cfg: configs.ToyExperimentConfig, out, *, save_activations=False, progress=True) -> dict:
    """Run (or resume) the whole experiment; write results.json and the figures.

    The toy models of every size train in one pass over the rows, then the SAEs of every size
    in one pass; each size then gets its held-out activations, scores and analysis, cached per
    size. A finished size is reused (unless activations are asked for).
    Float32 products run at full precision, also on GPUs (not TF32), as in the paper's code.
    """
    out = Path(out)
    cfg.validate()  # every setting before any work
    run_files.check_out(cfg, out)
    todo = [n for n in cfg.sizes if save_activations or not _cached(out, n).exists()]
    shared = {}
    if todo:
        stage = launch.Stages(f"N={tuple(cfg.sizes)}")
        # Every size trains, so that the shared checkpoints do not depend on what is cached.
        toy_params = stage("toy models", train_toy_models_all, cfg, cfg.sizes, out, progress)
        sae_params = stage("SAEs", train_saes_all, cfg, toy_params, out, progress)
        shared = stage.seconds
    sizes = {}
    for n in cfg.sizes:
        if n in todo:
            args = (cfg, n, toy_params[n], sae_params[n], out, save_activations, progress)
            sizes[str(n)] = run_size(*args)
        else:
            sizes[str(n)] = run_files.read_json(_cached(out, n))
    results = {**run_files.header(cfg), "sizes": sizes}
    if shared:
        results["shared_stage_seconds"] = shared
    run_files.write_json(out / "results.json", results)
    style.save_all(toy_figures.figures(results), out / "figures")
    return results


def scores_table(label: str, groups: dict, digits: int = 4) -> list[str]:
    """Markdown rows of :func:`alignment` scores (mean ± sem), one row per group and metric.

    Args:
      label: the groups' column header ("N", "layer").
      groups: ``{group: alignment scores}``.
      digits: decimals of the sem.
    """
    cols = ("neuron_neuron", "sae_sae", "randsae_sae", "sae_neuron", "randsae_neuron")
    lines = [f"| {label} | metric | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for group, res in groups.items():
        for metric in (m for m in METRICS if m in res):
            cells = []
            for c in cols:
                r = res[metric].get(c)
                cells.append(f"{r['mean']:.3f} ± {r['sem']:.{digits}f}" if r else "")
            lines.append(f"| {group} | {metric} | " + " | ".join(cells) + " |")
    return lines


def summary_table(results: dict) -> str:
    lines = scores_table("N", results["sizes"])
    for n, res in results["sizes"].items():
        rec = res["recovery"]
        below = np.mean(np.asarray(res["arrangement_best_match"]) < 0.5)
        lines.append(
            f"\nN={n}: shared features {len(res['shared_features'])}, neurons with best "
            f"arrangement match < 0.5: {below:.0%}, "
            f"recovery mean neurons {np.mean(rec['neurons']):.3f} vs SAE {np.mean(rec['sae']):.3f}"
        )
    return "\n".join(lines)


def findings(results: dict) -> list[tuple[str, bool, str]]:
    """The paper's six toy findings (PROTOCOL.md), each as ``(claim, holds, numbers)``."""
    sizes = results["sizes"]

    def m(n, metric, cond):
        return sizes[n][metric][cond]["mean"]

    out = []
    below = {
        n: float(np.mean(np.asarray(r["arrangement_best_match"]) < 0.5)) for n, r in sizes.items()
    }
    out.append(
        (
            "1. seeds arrange shared features differently (most neurons' best match < 0.5)",
            all(v > 0.5 for v in below.values()),
            ", ".join(f"N={n}: {v:.0%} of neurons" for n, v in below.items()),
        )
    )
    soft = {
        n: (m(n, "soft_matching", "neuron_neuron"), m(n, "soft_matching", "sae_sae")) for n in sizes
    }
    expect = {n: (int(n) >= 16) for n in sizes}
    out.append(
        (
            "2. soft-matching SAE->SAE > Neuron->Neuron for N >= 16, lower for N = 8",
            all((ss > nn) == expect[n] for n, (nn, ss) in soft.items()),
            ", ".join(f"N={n}: {nn:.3f} -> {ss:.3f}" for n, (nn, ss) in soft.items()),
        )
    )
    rand = {
        n: (m(n, "soft_matching", "randsae_sae"), m(n, "soft_matching", "sae_sae")) for n in sizes
    }
    out.append(
        (
            "3. soft-matching RandSAE->SAE < SAE->SAE",
            all(r < ss for r, ss in rand.values()),
            ", ".join(f"N={n}: {r:.3f} vs {ss:.3f}" for n, (r, ss) in rand.items()),
        )
    )
    rec = {
        n: (float(np.mean(r["recovery"]["neurons"])), float(np.mean(r["recovery"]["sae"])))
        for n, r in sizes.items()
    }
    out.append(
        (
            "4. SAE latents recover the features better than neurons (mean best correlation)",
            all(sa > ne for ne, sa in rec.values()),
            ", ".join(f"N={n}: {ne:.3f} vs {sa:.3f}" for n, (ne, sa) in rec.items()),
        )
    )
    ridge = {
        n: (m(n, "ridge", "neuron_neuron"), m(n, "ridge", "sae_neuron"), m(n, "ridge", "sae_sae"))
        for n in sizes
    }
    largest = max(sizes, key=int)
    out.append(
        (
            "5. ridge SAE->Neuron > Neuron->Neuron; SAE->SAE < Neuron->Neuron but at the largest N",
            all(sn > nn and ((s2 > nn) == (n == largest)) for n, (nn, sn, s2) in ridge.items()),
            ", ".join(
                f"N={n}: NN {nn:.3f}, SAE->N {sn:.3f}, SAE->SAE {s2:.3f}"
                for n, (nn, sn, s2) in ridge.items()
            ),
        )
    )
    signs = {
        n: all(
            np.sign(m(n, "semi_matching", c) - m(n, "semi_matching", "neuron_neuron"))
            == np.sign(m(n, "soft_matching", c) - m(n, "soft_matching", "neuron_neuron"))
            for c in ("sae_sae", "randsae_sae")
        )
        for n in sizes
    }
    out.append(
        (
            "6. semi-matching agrees with soft-matching (same sign of every change)",
            all(signs.values()),
            ", ".join(
                f"N={n}: semi {m(n, 'semi_matching', 'neuron_neuron'):.3f} -> "
                f"{m(n, 'semi_matching', 'sae_sae'):.3f}"
                for n in sizes
            ),
        )
    )
    return out


def deflation(results: dict) -> list[str]:
    """Per metric and size: Neuron->Neuron -> SAE->SAE (the change), and RandSAE->SAE.

    A metric that rises from neurons to SAE latents, while the untrained control does not, was
    deflated by how the features are arranged in the units (the paper's claim for matching).
    """
    lines = []
    for metric in METRICS:
        sizes = {n: r[metric] for n, r in results["sizes"].items() if metric in r}
        if not sizes:
            continue
        cells = []
        for n, r in sizes.items():
            nn, ss = r["neuron_neuron"]["mean"], r["sae_sae"]["mean"]
            cell = f"N={n}: {nn:.3f} -> {ss:.3f} ({ss - nn:+.3f})"
            if "randsae_sae" in r:
                cell += f", RandSAE {r['randsae_sae']['mean']:.3f}"
            cells.append(cell)
        lines.append(f"  {metric}: " + "; ".join(cells))
    return lines


def summary(results: dict) -> str:
    """The scores table, the paper's six toy findings, and which metrics SAEs raise."""
    lines = [summary_table(results), "", "The paper's toy findings (PROTOCOL.md):"]
    for claim, holds, numbers in findings(results):
        lines.append(f"  [{'yes' if holds else 'NO '}] {claim}: {numbers}")
    lines += ["", "Neuron->Neuron -> SAE->SAE per metric (which metrics superposition deflates):"]
    lines += deflation(results)
    return "\n".join(lines)


if __name__ == "__main__":
    launch.cli(__name__)
