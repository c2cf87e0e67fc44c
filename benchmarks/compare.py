"""Wall time of every stage of a ``superalign.compare`` run on planted data.

Run by hand: ``python -m benchmarks.compare`` (the default size: 10,000 scoring rows x 1,024
units per side, 50,000 SAE training rows per side, SAE 4x = 4,096 latents, k = 32, 2 epochs,
soft-matching, semi-matching and ridge); ``--layer4`` for the paper's ResNet50 layer4 size
(2,048 units, 8,192 latents, k = 82); ``--quick`` for a smoke run. Measure peak memory with
``/usr/bin/time -v python -m benchmarks.compare``.

The stages are :func:`superalign.compare.compare`'s own, called one by one so each is timed
(compilation included, as in a real run): validation, SAE training per side (seeds a vmap
axis), encoding with the SAE quality measures, then every metric call of
:func:`superalign.compare.score_conditions`. Planted data: ``F = 4 x units`` sparse
nonnegative features (about 20 active per row), two random Gaussian mixings to the units with a
ReLU; generated with scipy's sparse products (not timed as a stage).

Prints a markdown table (stage, wall seconds, process CPU seconds) and the machine's load
average before and after, since the CPU may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import numpy as np
import scipy.sparse

from superalign import folds, sae
from superalign.compare import (
    check_rows,
    conditions_of,
    default_sae_config,
    encode,
    sae_key,
    score_conditions,
    train_saes,
)


def planted(n_rows: int, units: int, seed: int, active: int = 20):
    """``(X, Y)`` float32 ``[n_rows, units]``: shared sparse features, two mixings with a ReLU."""
    n_features = 4 * units
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(12345)
    A = mix.standard_normal((n_features, units)).astype(np.float32) / np.sqrt(active)
    B = mix.standard_normal((n_features, units)).astype(np.float32) / np.sqrt(active)
    cols = rng.integers(0, n_features, (n_rows, active))
    vals = rng.uniform(0, 1, (n_rows, active)).astype(np.float32)
    z = scipy.sparse.csr_matrix(
        (vals.ravel(), cols.ravel(), np.arange(0, n_rows * active + 1, active)),
        shape=(n_rows, n_features),
    )
    return np.maximum(z @ A, 0).astype(np.float32), np.maximum(z @ B, 0).astype(np.float32)


class Clock:
    """Wall and process CPU seconds of consecutive stages."""

    def __init__(self):
        self.rows = []
        self.mark = (time.perf_counter(), time.process_time())

    def __call__(self, stage: str, **extra):
        now = (time.perf_counter(), time.process_time())
        self.rows.append(
            {"stage": stage, "wall": now[0] - self.mark[0], "cpu": now[1] - self.mark[1], **extra}
        )
        print(f"{stage}: {self.rows[-1]['wall']:.1f} s", flush=True)
        self.mark = now


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layer4", action="store_true", help="2,048 units, 8,192 latents, k = 82")
    p.add_argument("--quick", action="store_true", help="a smoke run (small sizes)")
    p.add_argument("--rows", type=int, default=10_000, help="scoring rows")
    p.add_argument("--train-rows", type=int, default=50_000, help="SAE training rows per side")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--sae-seeds", type=int, default=1)
    p.add_argument("--json", help="also write the timings to this JSON file")
    args = p.parse_args(argv)
    units, k = (2048, 82) if args.layer4 else (1024, 32)
    rows, train_rows = args.rows, args.train_rows
    if args.quick:
        units, k, rows, train_rows = 128, 8, 1000, 4000
    load_before = os.getloadavg()
    print(f"load average before: {load_before}", flush=True)

    X, Y = planted(rows, units, seed=0)
    X_train, Y_train = planted(train_rows, units, seed=1)
    cfg = default_sae_config(units, expansion=4, k=k, n_epochs=args.epochs)
    metrics = ("soft_matching", "semi_matching", "ridge")
    clock = Clock()

    for name, x in (("X", X), ("Y", Y), ("X_train", X_train), ("Y_train", Y_train)):
        check_rows(name, x)
    folds.prepare(X, Y, 5, 0)
    clock("validate (finite rows, dead-unit rule)")

    trained = {}
    for side, x in (("x", X_train), ("y", Y_train)):
        params, _ = train_saes(cfg, x, sae_key(0, side), args.sae_seeds)
        jax.block_until_ready(params)
        trained[side] = (cfg, params)
        clock(f"train SAE {side} ({train_rows} rows x {args.epochs} epochs)")

    codes_x, qx = encode(trained["x"], X)
    codes_y, qy = encode(trained["y"], Y)
    rand = jax.tree.map(lambda a: a[None], sae.init(cfg, sae_key(0, "random")))
    codes_r = encode((cfg, rand), X)[0][0]
    clock("encode (SAE x, SAE y, random SAE) + quality", fve_x=qx.fve, fve_y=qy.fve)

    for group in (("soft_matching", "semi_matching"), ("ridge",)):
        conds = conditions_of(group[0])
        labels = [c for c in conds for _ in (range(args.sae_seeds) if "sae_" in c else [0])]

        def tick(done, total, group=group, labels=labels):
            clock(f"{' + '.join(group)}: {labels[done - 1]}")

        score_conditions(
            X, Y, codes_x, codes_y, codes_r, metrics=group, n_folds=5, seed=0, callback=tick
        )

    total_wall = sum(r["wall"] for r in clock.rows)
    total_cpu = sum(r["cpu"] for r in clock.rows)
    load_after = os.getloadavg()
    print()
    print(
        f"units {units}, latents {cfg.n_latents}, k {k}, scoring rows {rows}, training rows "
        f"{train_rows} per side, {args.epochs} epochs, metrics {', '.join(metrics)}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, jax "
        f"{jax.__version__}; load average before {load_before}, after {load_after}"
    )
    print()
    print("| stage | wall s | CPU s |")
    print("|---|---|---|")
    for r in clock.rows:
        print(f"| {r['stage']} | {r['wall']:.1f} | {r['cpu']:.1f} |")
    print(f"| **total** | **{total_wall:.1f}** | **{total_cpu:.1f}** |")
    print(f"\nSAE FVE on the scoring rows: x {qx.fve}, y {qy.fve}; L0 {qx.l0}, dead {qx.dead}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "stages": clock.rows,
                    "load_before": load_before,
                    "load_after": load_after,
                    "units": units,
                    "k": k,
                },
                f,
                indent=2,
                default=lambda o: np.asarray(o).tolist(),
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
