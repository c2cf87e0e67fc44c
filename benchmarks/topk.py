"""The SAE's narrow-code top-k (``sae.top_k``: k rounds of max) against ``jax.lax.top_k``.

Run by hand: ``python -m benchmarks.topk`` (under a minute on the 2-core CPU). Both must return
identical values and indices (checked here on every shape); prints a markdown table of the best
time of 20 calls after a warm-up call. Shapes: ``[seeds, batch, latents]`` as in SAE training
(toy experiment: 2 seeds per size; seed sweep: 32 seeds), and wide codes where ``sae.top_k``
falls back to ``lax.top_k``.
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import numpy as np

from superalign import sae

CASES = [
    ((2, 1024, 64), 7),
    ((6, 1024, 64), 7),
    ((32, 1024, 64), 7),
    ((32, 1024, 64), 12),
    ((8, 1024, 128), 16),
    ((8, 1024, 256), 8),
]


def _best(fn, x, repeat):
    jax.block_until_ready(fn(x))
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(x))
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args(argv)
    print(f"{platform.processor() or platform.machine()}, {jax.devices()}")
    print("| shape | k | lax.top_k (ms) | k rounds of max (ms) | speed-up |")
    print("|---|---|---|---|---|")
    for shape, k in CASES:
        x = jax.random.normal(jax.random.key(0), shape)
        ref = jax.jit(lambda x, k=k: jax.lax.top_k(x, k))
        ours = jax.jit(lambda x, k=k: sae.top_k(x, k))
        for a, b in zip(ref(x), ours(x), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        t_ref, t_ours = _best(ref, x, args.repeat), _best(ours, x, args.repeat)
        print(f"| {shape} | {k} | {t_ref * 1e3:.2f} | {t_ours * 1e3:.2f} | {t_ref / t_ours:.2f}x |")


if __name__ == "__main__":
    main()
