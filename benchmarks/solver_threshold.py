"""Where Sinkhorn becomes faster than the exact solver in ``soft_matching``.

Times ``superalign.soft_matching`` (5 folds, plans not kept) with ``solver="exact"`` (scipy's
``linear_sum_assignment`` for equal sizes, POT's network simplex ``ot.emd`` otherwise) and
``solver="sinkhorn"`` on random and planted (noisy permutation) response matrices with 16 to
1024 units, square (n x n) and one unit short (n x (n - 1)). Each time is the best of
``--repeats`` calls (the one least disturbed by other load) after one warm-up call that compiles;
both solvers share the per-part moments, so the difference is the solver. The thresholds of
``solver="auto"`` (``matching.AUTO_EXACT_MAX_UNITS`` and ``matching.AUTO_EXACT_MAX_UNITS_SQUARE``)
were set from this table.

    python -m benchmarks.solver_threshold
    python -m benchmarks.solver_threshold --sizes 16 64 256 --rows 2000 --repeats 3
"""

from __future__ import annotations

import argparse
import functools
import platform
import time
import warnings

import numpy as np

import superalign
from superalign import matching


def random_pair(m: int, na: int, nb: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((m, na)).astype(np.float32),
        rng.standard_normal((m, nb)).astype(np.float32),
    )


def planted_pair(m: int, na: int, nb: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Y's units are X's latents in shuffled order, both plus unit-variance noise."""
    rng = np.random.default_rng(seed)
    n = max(na, nb)
    z = rng.standard_normal((m, n))
    X = z[:, :na] + rng.standard_normal((m, na))
    Y = z[:, rng.permutation(n)[:nb]] + rng.standard_normal((m, nb))
    return X.astype(np.float32), Y.astype(np.float32)


def timed(fn, repeats: int) -> tuple[float, object]:
    with warnings.catch_warnings():
        # Sinkhorn's non-convergence warning: the table reports it instead.
        warnings.simplefilter("ignore", RuntimeWarning)
        out = fn()  # warm-up: compilation
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
    return min(times), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.solver_threshold")
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512, 1024])
    ap.add_argument("--rows", type=int, default=4000, help="stimuli M")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--data", nargs="+", default=["random", "planted"], choices=["random", "planted"]
    )
    args = ap.parse_args(argv)
    print(f"# {platform.processor() or platform.machine()}, rows {args.rows}, 5 folds")
    print(
        f"# solver='auto' now: exact up to {matching.AUTO_EXACT_MAX_UNITS} units per side "
        f"({matching.AUTO_EXACT_MAX_UNITS_SQUARE} for equal sizes)"
    )
    print("| data | Na x Nb | exact ms | sinkhorn ms | faster | |exact - sinkhorn| |")
    print("| --- | --- | ---: | ---: | --- | ---: |")
    makers = {"random": random_pair, "planted": planted_pair}
    for data, make in ((d, makers[d]) for d in args.data):
        for n in args.sizes:
            for na, nb in ((n, n), (n, n - 1)):
                X, Y = make(args.rows, na, nb, seed=n)
                run = {
                    s: functools.partial(superalign.soft_matching, X, Y, solver=s, keep_plans=False)
                    for s in ("exact", "sinkhorn")
                }
                t_exact, exact = timed(run["exact"], args.repeats)
                t_sink, sink = timed(run["sinkhorn"], args.repeats)
                faster = "exact" if t_exact < t_sink else "sinkhorn"
                diff = float(np.abs(exact.folds - sink.folds).max())
                note = "" if sink.converged.all() else " (sinkhorn not converged)"
                print(
                    f"| {data} | {na} x {nb} | {1e3 * t_exact:.1f} | {1e3 * t_sink:.1f} | "
                    f"{faster} | {diff:.1e}{note} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
