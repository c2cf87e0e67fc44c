"""Paper section 3 as an experiment: superposition deflates matching scores; recovery restores them.

    python -m experiments.theory                       # about a minute on a 2-core CPU
    python -m experiments.theory --config tiny         # seconds
    python -m experiments.theory --config.n_samples=40000 --out runs/theory_big

Four parts, every score from the library's metrics (5-fold CV, dead units removed), every one
next to its exact population value (``superalign.theory``):

1. Different sparsity levels: ``A_a = I_F`` against ``A_b`` whose units mix n features equally,
   n = 1..8; closed form ``1/sqrt(n)``.
2. Different sparsity patterns: groups of g features against the same groups shifted by s;
   closed form ``max(s, g - s) / g`` (1/2 for the paper's pairs and shifted pairs).
3. Recovery: K-sparse whitened latents, Gaussian mixing with N < F, OMP on each system; then a
   sweep of K and N (one vmapped call) mapping where recovery breaks.
4. One table of settings 1-3 under permutation, soft-matching, semi-matching and ridge.

Settings 1-3 are also scored with linear CKA (the biased and the unbiased HSIC estimator) and the
rotation score, next to their closed forms (``theory.level_cka``, ``level_rotation``,
``shift_cka``, ``shift_rotation``) and population values: CKA compares the shared subspace and
the rotation score allows any rotation of the units, so both are deflated less by the
arrangement than the matching scores (but still deflated).

Writes ``config.json``, ``results.json`` (config, versions, every score with its folds, the
closed forms) and ``figures/`` (PNG and PDF) into ``--out``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

import superalign
from experiments import figure_style as style
from experiments import launch, run_files, theory_figures
from experiments.configs import theory as configs
from superalign import folds, theory

PRESETS = configs.PRESETS
METRICS = tuple(style.METRIC_LABELS)
"""Every metric scored: permutation, soft, semi, ridge, ridge_reverse, cka, cka_debiased,
rotation."""
POPULATION = {"cka_debiased": "cka"}
"""The population value of a metric that differs from its name (both CKA estimators converge to
the population CKA)."""


def population(pop) -> dict:
    """``{metric: population value}`` of every metric of :data:`METRICS`."""
    values = pop._asdict()
    return {m: values[POPULATION.get(m, m)] for m in METRICS}


def validate(cfg: configs.TheoryConfig) -> None:
    """Raise ``ValueError`` for a config that cannot run, before any work."""
    if not isinstance(cfg, configs.TheoryConfig):
        raise ValueError(f"config must be a TheoryConfig, got {type(cfg).__name__}")
    f = cfg.n_features
    for name in ("n_features", "n_samples", "recovery_samples", "sweep_samples", "latent_k"):
        launch.positive_int(name, getattr(cfg, name))
    if cfg.latent_k > f:
        raise ValueError(f"latent_k must be at most n_features={f}, got {cfg.latent_k}")

    def ints_in(name, values, lo, hi):
        if not values or any(
            isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi for v in values
        ):
            raise ValueError(
                f"{name} must be a non-empty tuple of integers in {lo}..{hi}, got {values!r}"
            )

    ints_in("levels", cfg.levels, 1, f)
    ints_in("groups", cfg.groups, 1, f)
    for g in cfg.groups:
        if f % g:
            raise ValueError(f"every group must divide n_features={f}, got groups={cfg.groups}")
    ints_in("sweep_ks", cfg.sweep_ks, 1, f)
    ints_in("sweep_units", cfg.sweep_units, 1, f)
    ints_in("recovery_k", (cfg.recovery_k,), 1, f)
    ints_in("recovery_units", (cfg.recovery_units,), 1, f)
    if cfg.table_level not in cfg.levels:
        raise ValueError(f"table_level must be one of levels={cfg.levels}, got {cfg.table_level}")
    if cfg.table_group not in cfg.groups:
        raise ValueError(f"table_group must be one of groups={cfg.groups}, got {cfg.table_group}")
    ints_in("table_shift", (cfg.table_shift,), 0, cfg.table_group)
    folds.check_fold_counts(
        min(cfg.n_samples, cfg.recovery_samples, cfg.sweep_samples), cfg.n_folds
    )


def _record(result) -> dict:
    return {"folds": result.folds, "mean": result.mean, "sem": result.sem}


def score_pair(cfg, X, Y, metrics=METRICS) -> dict:
    """Every metric of ``Y`` from ``X``, library protocol (``ridge_reverse``: ``X`` from ``Y``)."""
    kw = dict(n_folds=cfg.n_folds, seed=cfg.fold_seed)
    fns = {
        "permutation": lambda: superalign.permutation_score(X, Y, **kw),
        "soft": lambda: superalign.soft_matching(X, Y, **kw),
        "semi": lambda: superalign.semi_matching(X, Y, **kw),
        "ridge": lambda: superalign.ridge_regression(X, Y, **kw),
        "ridge_reverse": lambda: superalign.ridge_regression(Y, X, **kw),
        "cka": lambda: superalign.cka(X, Y, **kw),
        "cka_debiased": lambda: superalign.cka(X, Y, debiased=True, **kw),
        "rotation": lambda: superalign.rotation_score(X, Y, **kw),
    }
    return {m: _record(fns[m]()) for m in metrics}


def _latents(cfg, key):
    return theory.sparse_latents(key, cfg.n_samples, cfg.n_features, cfg.latent_k)


def levels(cfg, Z, progress=True, metrics=METRICS) -> dict:
    """Setting 1: ``Y_a = Z`` against ``Y_b = Z A_b(n)`` for every n, all ``A_b`` in one vmap.

    ``metrics``: the metrics measured (every closed form and population value is recorded).
    """
    f = cfg.n_features
    ns = jnp.asarray(cfg.levels)
    mixings = jax.vmap(lambda n: theory.equal_mixing(f, n))(ns)  # [L, F, F]
    Ys = jnp.einsum("mf,lfn->lmn", Z, mixings, precision=jax.lax.Precision.HIGHEST)
    out = {}
    for i, n in enumerate(tqdm(cfg.levels, desc="1. sparsity levels", disable=not progress)):
        pop = theory.population_scores(jnp.eye(f), mixings[i])
        out[str(n)] = {
            "measured": score_pair(cfg, Z, Ys[i], metrics),
            "closed_form": {
                "permutation": float(theory.level_score(n)),
                "soft": float(theory.level_score(n)),
                "semi": float(theory.level_score(n)),
                "ridge": 1.0,
                "ridge_reverse": theory.level_ridge_reverse(f, n),
                # level_cka's derivation needs 2n - 1 <= F (the mixed supports do not wrap).
                "cka": theory.level_cka(f, n) if 2 * n - 1 <= f else pop.cka,
                "cka_debiased": theory.level_cka(f, n) if 2 * n - 1 <= f else pop.cka,
                "rotation": theory.level_rotation(f, n),
            },
            "population": population(pop),
        }
    return out


def patterns(cfg, Z, progress=True, metrics=METRICS) -> dict:
    """Setting 2: groups of g features against the same groups shifted by s = 0..g.

    ``metrics``: the metrics measured (every closed form and population value is recorded).
    """
    f = cfg.n_features
    jobs = [(g, s) for g in cfg.groups for s in range(g + 1)]
    mixings = {
        g: jax.vmap(lambda s, g=g: theory.grouped_mixing(f, g, s))(jnp.arange(g + 1))
        for g in cfg.groups
    }
    out = {}
    for g, s in tqdm(jobs, desc="2. sparsity patterns", disable=not progress):
        A_a, A_b = mixings[g][0], mixings[g][s]
        closed = theory.shift_score(g, s)
        out[f"{g}_{s}"] = {
            "group": g,
            "shift": s,
            "overlap": (g - s % g) / g,
            # Ridge is symmetric here (same closed form both ways): the reverse direction is
            # scored only for the setting the table shows.
            "measured": score_pair(
                cfg,
                Z @ A_a,
                Z @ A_b,
                metrics
                if (g, s) == (cfg.table_group, cfg.table_shift)
                else tuple(m for m in metrics if m != "ridge_reverse"),
            ),
            "closed_form": {
                "permutation": closed,
                "soft": closed,
                "semi": closed,
                "ridge": theory.shift_ridge(g, s),
                "ridge_reverse": theory.shift_ridge(g, s),
                "cka": theory.shift_cka(g, s),
                "cka_debiased": theory.shift_cka(g, s),
                "rotation": theory.shift_rotation(f, g, s),
            },
            "population": population(theory.population_scores(A_a, A_b)),
        }
    return out


def recovery_setting(cfg, key, progress=True) -> dict:
    """Setting 3: recover Z from each system by OMP; score units and recovered latents."""
    f, k, n = cfg.n_features, cfg.recovery_k, cfg.recovery_units
    problem = theory.recovery_problem(key, cfg.recovery_samples, f, k, n)
    rec = theory.recover(problem, k)
    eye = jnp.eye(f)
    pairs = {
        "units": (problem.Y_a, problem.Y_b, (problem.A_a, problem.A_b)),
        "recovered": (rec.Z_hat_a, rec.Z_hat_b, (eye, eye)),
        "recovered_to_units": (rec.Z_hat_a, problem.Y_b, (eye, problem.A_b)),
    }
    out = {
        "k": k,
        "n_units": n,
        "exact_fraction": {"a": float(rec.exact_a), "b": float(rec.exact_b)},
        "omp_guarantee_units": _omp_units(k, f),
    }
    for name, (X, Y, mix) in tqdm(
        pairs.items(), desc="3. recovery", disable=not progress, leave=False
    ):
        # Exact recovery gives Z_hat = Z: its population scores are those of the identity.
        out[name] = {
            "measured": score_pair(cfg, X, Y),
            "population": population(theory.population_scores(*mix)),
        }
    return out


def _omp_units(k: int, f: int) -> float:
    """The rule of thumb N = 2 K ln F for OMP with Gaussian mixing (Tropp & Gilbert 2007)."""
    return 2.0 * k * math.log(f)


def sweep(cfg, key, progress=True) -> dict:
    """Setting 3, swept: recovery for every (K, N) in one vmapped call, then the scores."""
    f = cfg.n_features
    max_k, max_n = max(cfg.sweep_ks), max(cfg.sweep_units)
    run = theory.make_recovery_sweep(cfg.sweep_samples, f, max_k, max_n)
    t0 = time.perf_counter()
    grid = jax.block_until_ready(run(key, np.asarray(cfg.sweep_ks), np.asarray(cfg.sweep_units)))
    solve_seconds = time.perf_counter() - t0
    rec = grid.recovered
    nk, nn = len(cfg.sweep_ks), len(cfg.sweep_units)
    perm = np.zeros((nk, nn))
    jobs = [(i, j) for i in range(nk) for j in range(nn)]
    for i, j in tqdm(jobs, desc="3. sweep scores", disable=not progress, leave=False):
        perm[i, j] = superalign.permutation_score(
            rec.Z_hat_a[i, j], rec.Z_hat_b[i, j], n_folds=cfg.n_folds, seed=cfg.fold_seed
        ).mean
    # The units themselves: for whitened Z their correlations depend on A_a, A_b (so on N) only;
    # their population score is exact (setting 3 measures it at one N).
    _, k_mix = jax.random.split(key)  # the subkey recovery_problem gives mixing_pair
    mixings = jax.vmap(lambda n: theory.mixing_pair(k_mix, f, n, max_units=max_n))(
        jnp.asarray(cfg.sweep_units)
    )
    units_pop = [
        theory.population_scores(mixings[0][j][:, :n], mixings[1][j][:, :n]).permutation
        for j, n in enumerate(cfg.sweep_units)
    ]
    return {
        "ks": list(cfg.sweep_ks),
        "units": list(cfg.sweep_units),
        "recovered_permutation": perm,
        "exact_fraction_a": np.asarray(rec.exact_a),
        "exact_fraction_b": np.asarray(rec.exact_b),
        "matched_corr": np.asarray(rec.matched_corr),
        "units_permutation_population": units_pop,
        "omp_guarantee_units": [_omp_units(k, f) for k in cfg.sweep_ks],
        "solve_seconds": solve_seconds,
    }


def table(cfg, results) -> list[dict]:
    """Setting 4: settings 1-3 under every metric, measured and population values."""
    lev = results["levels"][str(cfg.table_level)]
    pat = results["patterns"][f"{cfg.table_group}_{cfg.table_shift}"]
    rec = results["recovery"]
    rows = [
        (f"1. I vs {cfg.table_level} features per unit", lev),
        (f"2. groups of {cfg.table_group} vs shifted by {cfg.table_shift}", pat),
        (f"3. units Y_a vs Y_b (N={rec['n_units']}, K={rec['k']})", rec["units"]),
        ("3. recovered Z_hat_a vs Z_hat_b", rec["recovered"]),
        ("3. recovered Z_hat_a vs units Y_b", rec["recovered_to_units"]),
    ]
    return [
        {
            "setting": name,
            "measured": {m: r["measured"][m]["mean"] for m in METRICS},
            "sem": {m: r["measured"][m]["sem"] for m in METRICS},
            "population": {m: r["population"][m] for m in METRICS},
        }
        for name, r in rows
    ]


def run(cfg, out, *, progress=True) -> dict:
    """Run the four parts; write ``results.json`` and the figures into ``out``."""
    validate(cfg)
    out = Path(out)
    run_files.check_out(cfg, out)
    t0 = time.perf_counter()
    key = jax.random.key(cfg.seed)
    stage = launch.Stages("theory")
    Z = _latents(cfg, jax.random.fold_in(key, 0))
    results = run_files.header(cfg)
    kw = dict(progress=progress)
    results["levels"] = stage("levels", levels, cfg, Z, **kw)
    results["patterns"] = stage("patterns", patterns, cfg, Z, **kw)
    results["recovery"] = stage("recovery", recovery_setting, cfg, jax.random.fold_in(key, 1), **kw)
    results["sweep"] = stage("sweep", sweep, cfg, jax.random.fold_in(key, 2), **kw)
    results["table"] = table(cfg, results)
    results["stage_seconds"] = stage.seconds
    results["wall_seconds"] = time.perf_counter() - t0
    run_files.write_json(out / "results.json", results)
    results = run_files.read_json(out / "results.json")
    style.save_all(theory_figures.figures(results), out / "figures")
    return results


def _mean_sem(s: dict) -> str:
    """A measured score: mean ± standard error over folds."""
    return f"{s['mean']:.4f} ± {s['sem']:.4f}"


def summary(results: dict) -> str:
    """Markdown: closed forms against measured scores, the table, and the sweep."""
    lines = [
        "Setting 1 (A_a = I, n features per unit of b): permutation score",
        "| n | measured | 1/sqrt(n) | ridge b→a | closed form |",
        "|---|---|---|---|---|",
    ]
    for n, r in results["levels"].items():
        m, c = r["measured"], r["closed_form"]
        lines.append(
            f"| {n} | {_mean_sem(m['permutation'])} | {c['permutation']:.4f} | "
            f"{m['ridge_reverse']['mean']:.4f} | {c['ridge_reverse']:.4f} |"
        )
    lines += [
        "",
        "Setting 2 (groups of g vs shifted by s): permutation score",
        "| g | s | overlap | measured | max(s, g-s)/g |",
        "|---|---|---|---|---|",
    ]
    for r in results["patterns"].values():
        m = r["measured"]["permutation"]
        lines.append(
            f"| {r['group']} | {r['shift']} | {r['overlap']:.3f} | {_mean_sem(m)} | "
            f"{r['closed_form']['permutation']:.4f} |"
        )
    lines += [
        "",
        "CKA and the rotation score: measured (closed form)",
        "| setting | CKA | CKA (debiased) | rotation |",
        "|---|---|---|---|",
    ]
    rows = [(f"1. n = {n}", r) for n, r in results["levels"].items()]
    rows += [(f"2. g = {r['group']}, s = {r['shift']}", r) for r in results["patterns"].values()]
    for name, r in rows:
        m, c = r["measured"], r["closed_form"]
        cells = [f"{_mean_sem(m[k])} ({c[k]:.4f})" for k in ("cka", "cka_debiased", "rotation")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Setting 4: every metric, measured (population)",
        "| setting | " + " | ".join(style.METRIC_LABELS[m] for m in METRICS) + " |",
        "|---|" + "---|" * len(METRICS),
    ]
    for row in results["table"]:
        cells = [f"{row['measured'][m]:.3f} ({row['population'][m]:.3f})" for m in METRICS]
        lines.append(f"| {row['setting']} | " + " | ".join(cells) + " |")
    rec, sw = results["recovery"], results["sweep"]
    lines += [
        "",
        f"Setting 3: OMP recovered {rec['exact_fraction']['a']:.2%} / "
        f"{rec['exact_fraction']['b']:.2%} of the rows exactly (K={rec['k']}, "
        f"N={rec['n_units']}, F={results['config']['n_features']}); Score_perm units "
        f"{rec['units']['measured']['permutation']['mean']:.4f}, recovered "
        f"{rec['recovered']['measured']['permutation']['mean']:.4f}",
        "",
        "Sweep: Score_perm(Z_hat_a, Z_hat_b) (rows K, columns N); last row: population "
        "Score_perm(Y_a, Y_b)",
        "| K \\ N | " + " | ".join(str(n) for n in sw["units"]) + " |",
        "|---|" + "---|" * len(sw["units"]),
    ]
    for k, row in zip(sw["ks"], sw["recovered_permutation"], strict=True):
        lines.append(f"| {k} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    pop = sw["units_permutation_population"]
    lines.append("| units (population) | " + " | ".join(f"{v:.3f}" for v in pop) + " |")
    lines.append(f"\n(recovery grid solved in {sw['solve_seconds']:.1f} s, one vmapped call)")
    return "\n".join(lines)


if __name__ == "__main__":
    launch.cli(__name__)
