"""Scale: seeds per call, soft-matching at thousands of units, and the seed sweep's cost per pair.

Run by hand (results go to ``benchmarks/RESULTS.md``)::

    python -m benchmarks.scale --part seeds     # toy seeds per second, 1 / 8 / 32 / 128 seeds
    python -m benchmarks.scale --part soft      # soft-matching at 4,096 / 8,192 / 16,384 units
    python -m benchmarks.scale --part compare   # seed sweep vs single-pair toy experiment
    python -m benchmarks.scale --part compare --sweep-config findings   # the paper's setting

Every measurement runs in its own child process under ``/usr/bin/time`` (peak resident memory
of that process alone) and, for soft-matching, under ``prlimit --as`` so that a size that does not
fit fails in its child instead of exhausting a shared machine.

- seeds: ``toy.make_sharded_train`` (default mesh: all devices) at N = 32, F = 64, batch 1024,
  ``--toy-steps`` steps with the data drawn on the fly; one call per seed count, timed after a
  compile call. Seeds per second = seeds / wall.
- soft: ``superalign.soft_matching`` as it is, 5 folds, on a planted problem (a noisy permutation
  of sparse non-negative units, SAE-latent-like; ``benchmarks.metrics.planted``) with
  ``--rows`` stimuli; the Sinkhorn solver and ``solver="exact"`` (scipy's
  ``linear_sum_assignment``) in separate children. Times include compilation.
- compare: ``experiments.toy_models.run`` (one seed pair) and ``experiments.seed_sweep.run``
  (``--pairs`` pairs, k = 7 only, all held-out rows) on the same small settings, back to back in
  this process; both cold (compilation included), each in a fresh output folder. With
  ``--sweep-config NAME`` the sweep is that preset as it is (``findings``: the paper's setting,
  8 pairs, every metric, its first 200 held-out batches) and the single pair is the toy
  experiment's paper preset with the sweep's data, sizes and SAE (all 2,000 held-out batches);
  the sweep's summary (scores, findings per pair, gains) is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _child(args: list[str], mem_limit_gb: float | None = None, timeout: float = 3600) -> dict:
    """Run ``python -m benchmarks.scale --child ...``: its JSON line, peak RSS and exit status."""
    with tempfile.NamedTemporaryFile(suffix=".time") as tf:
        cmd = ["/usr/bin/time", "-f", "%M %e", "-o", tf.name]
        if mem_limit_gb:
            cmd += ["prlimit", f"--as={int(mem_limit_gb * 2**30)}"]
        cmd += [sys.executable, "-m", "benchmarks.scale", "--child", *args]
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
            rc, out, err = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as e:
            rc, out, err = "timeout", e.stdout or "", e.stderr or ""
        text = Path(tf.name).read_text().split()
    result = {"rc": rc, "peak_rss_gb": None, "process_wall_s": None}
    if len(text) >= 2:
        result["peak_rss_gb"] = int(text[-2]) / 2**20
        result["process_wall_s"] = float(text[-1])
    lines = [ln for ln in (out if isinstance(out, str) else out.decode()).splitlines() if ln]
    if rc == 0 and lines:
        result.update(json.loads(lines[-1]))
    else:
        tail = err if isinstance(err, str) else err.decode()
        result["error"] = tail.strip().splitlines()[-1][:300] if tail.strip() else f"rc={rc}"
    return result


def child_seeds(n_seeds: int, n_steps: int, n_hidden: int) -> dict:
    import jax

    from superalign import toy

    cfg = toy.ToyConfig(n_hidden=n_hidden, n_steps=n_steps)
    train = toy.make_sharded_train(cfg)
    keys = jax.random.split(jax.random.key(0), n_seeds)
    t0 = time.perf_counter()
    jax.block_until_ready(train(keys))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    params, metrics = jax.block_until_ready(train(jax.random.split(jax.random.key(1), n_seeds)))
    wall = time.perf_counter() - t0
    return {
        "seeds": n_seeds,
        "wall_s": wall,
        "first_call_s": first,
        "seeds_per_s": n_seeds / wall,
        "devices": len(jax.devices()),
        "final_loss": float(metrics.loss[:, -100:].mean()),
    }


def child_soft(n_units: int, n_rows: int, solver: str) -> dict:
    import numpy as np

    import superalign
    from benchmarks.metrics import planted

    X, Y = planted(n_rows, n_units, seed=n_units)
    t0 = time.perf_counter()
    res = superalign.soft_matching(X, Y, n_folds=5, solver=solver, keep_plans=False)
    wall = time.perf_counter() - t0
    return {
        "units": n_units,
        "solver": solver,
        "wall_s": wall,
        "score": res.mean,
        "folds": np.asarray(res.folds).tolist(),
        "converged": bool(np.all(res.converged)),
        "iterations": np.asarray(res.n_iterations).tolist(),
    }


def part_seeds(args) -> list[dict]:
    rows = []
    for s in args.seed_counts:
        r = _child(["seeds", str(s), str(args.toy_steps), "32"])
        rows.append(r)
        print(json.dumps(r), file=sys.stderr, flush=True)
    print(
        f"\n| seeds in one call (N = 32, {args.toy_steps} steps) | wall (s) | seeds / s "
        "| first call incl. compile (s) | peak RSS (GB) |"
    )
    print("|---|---|---|---|---|")
    for r in rows:
        if "wall_s" in r:
            print(
                f"| {r['seeds']} | {r['wall_s']:.2f} | {r['seeds_per_s']:.2f} "
                f"| {r['first_call_s']:.2f} | {r['peak_rss_gb']:.2f} |"
            )
        else:
            print(f"| ? | failed: {r.get('error')} | | | {r['peak_rss_gb']} |")
    return rows


def part_soft(args) -> list[dict]:
    rows = []
    for n in args.units:
        pair = {}
        for solver in ("sinkhorn", "exact"):
            if solver == "exact" and n > args.exact_max_units:
                pair[solver] = {"peak_rss_gb": None, "error": f"not run (> {args.exact_max_units})"}
                continue
            r = _child(["soft", str(n), str(args.rows), solver], args.mem_limit_gb, args.timeout)
            pair[solver] = r
            print(json.dumps(r), file=sys.stderr, flush=True)
        rows.append((n, pair))
    print(
        f"\n| units | solver | wall (s) | peak RSS (GB) | bytes / unit pair | score "
        f"| diff to exact | Sinkhorn iterations per fold |  ({args.rows} stimuli, 5 folds, "
        f"limit {args.mem_limit_gb} GB address space)"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n, pair in rows:
        exact = pair["exact"].get("score")
        for solver, r in pair.items():
            rss = r["peak_rss_gb"]
            per_pair = f"{rss * 2**30 / n**2:.0f}" if rss else "-"
            if "wall_s" in r:
                diff = f"{r['score'] - exact:+.2e}" if exact is not None else "-"
                iters = r["iterations"] if solver == "sinkhorn" else "-"
                print(
                    f"| {n} | {solver} | {r['wall_s']:.1f} | {rss:.2f} | {per_pair} "
                    f"| {r['score']:.6f} | {diff} | {iters} |"
                )
            else:
                print(
                    f"| {n} | {solver} | failed ({r.get('error')}) | {rss} | {per_pair} "
                    "| - | - | - |"
                )
    return rows


def _compare_configs(args):
    """``(single-pair config, sweep config, settings)`` of ``--part compare``."""
    import dataclasses

    from experiments.configs import seed_sweep as sweep_configs
    from experiments.configs import toy_models as toy_configs

    if args.sweep_config:
        sweep_cfg = sweep_configs.get_config(args.sweep_config)
        if args.pairs is not None:
            sweep_cfg = dataclasses.replace(sweep_cfg, n_pairs=args.pairs)
        single_cfg = dataclasses.replace(
            toy_configs.get_config(),
            toy=sweep_cfg.toy,
            sae=dataclasses.replace(sweep_cfg.sae, k=sweep_cfg.sae_ks[0]),
            sizes=sweep_cfg.sizes,
            segment_steps=sweep_cfg.segment_steps,
        )
        settings = {
            "sweep_config": args.sweep_config,
            "n_steps": sweep_cfg.toy.n_steps,
            "sizes": sweep_cfg.sizes,
            "sae_ks": sweep_cfg.sae_ks,
            "metrics": sweep_cfg.metrics,
            "sweep_heldout_steps": sweep_cfg.heldout_steps,
        }
        return single_cfg, sweep_cfg, settings
    common = dict(n_steps=args.compare_steps, sizes=tuple(args.compare_sizes), segment_steps=250)
    single_cfg = dataclasses.replace(toy_configs.get_config(), **common)
    sweep_cfg = dataclasses.replace(
        sweep_configs.get_config(),
        **common,
        n_pairs=16 if args.pairs is None else args.pairs,
        sae_ks=(7,),
        heldout_steps=0,
    )
    return single_cfg, sweep_cfg, common


def part_compare(args) -> dict:
    import logging

    from experiments import run_files, seed_sweep, toy_models

    # The experiments' stage times (launch.Stages) in the log, as their command lines show them.
    logging.basicConfig(format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("experiments").setLevel(logging.INFO)

    single_cfg, sweep_cfg, settings = _compare_configs(args)
    pairs = sweep_cfg.n_pairs
    with tempfile.TemporaryDirectory() as tmp:
        keep = Path(args.compare_out or tmp)
        if (keep / "single").exists() or (keep / "sweep").exists():
            raise ValueError(f"--compare-out {keep} already holds runs; give a new folder")
        t0 = time.perf_counter()
        single_results = toy_models.run(single_cfg, keep / "single", progress=False)
        single = time.perf_counter() - t0
        print(f"single pair: {single:.1f} s", flush=True)
        print(toy_models.summary(single_results), flush=True)
        t0 = time.perf_counter()
        sweep_results = seed_sweep.run(sweep_cfg, keep / "sweep", progress=False)
        sweep = time.perf_counter() - t0
        print(seed_sweep.summary(sweep_results), flush=True)
    out = {
        "settings": settings,
        "pairs": pairs,
        "single_pair_s": single,
        "sweep_s": sweep,
        "sweep_per_pair_s": sweep / pairs,
        "ratio": sweep / pairs / single,
    }
    print(json.dumps(out))
    if args.compare_out:
        run_files.write_json(Path(args.compare_out) / "compare.json", out)
    label = args.sweep_config or f"{args.compare_steps} steps, sizes {tuple(args.compare_sizes)}"
    print(
        f"\n| run ({label}) | wall (s) | pairs | per pair (s) | per pair / single pair |\n"
        "|---|---|---|---|---|\n"
        f"| toy_models (one pair) | {single:.1f} | 1 | {single:.1f} | 1.00 |\n"
        f"| seed_sweep ({sweep_cfg.sae_ks}) | {sweep:.1f} | {pairs} | {sweep / pairs:.1f} "
        f"| {sweep / pairs / single:.2f} |"
    )
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        kind, *rest = argv[1:]
        if kind == "seeds":
            out = child_seeds(*map(int, rest))
        else:
            out = child_soft(int(rest[0]), int(rest[1]), rest[2])
        print(json.dumps(out))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("seeds", "soft", "compare"), action="append")
    ap.add_argument("--seed-counts", type=int, nargs="+", default=[1, 8, 32, 128])
    ap.add_argument("--toy-steps", type=int, default=1000)
    ap.add_argument("--units", type=int, nargs="+", default=[4096, 8192, 16384])
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--mem-limit-gb", type=float, default=16.0)
    ap.add_argument(
        "--exact-max-units", type=int, default=8192, help="skip the exact solver above this"
    )
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument(
        "--pairs", type=int, default=None, help="sweep pairs (default 16, or the preset's)"
    )
    ap.add_argument("--compare-steps", type=int, default=1000)
    ap.add_argument("--compare-sizes", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--compare-out", default=None, help="keep both runs here (default: a temp dir)")
    ap.add_argument(
        "--sweep-config",
        default=None,
        help="compare: a seed-sweep preset (findings) instead of the small settings",
    )
    args = ap.parse_args(argv)
    print(f"load average {os.getloadavg()}, {os.cpu_count()} cores", flush=True)
    for part in args.part or ("seeds", "soft", "compare"):
        {"seeds": part_seeds, "soft": part_soft, "compare": part_compare}[part](args)


if __name__ == "__main__":
    main()
