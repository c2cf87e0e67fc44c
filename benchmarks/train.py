"""Wall times of the paper's toy pipeline and of toy training against the CPU's matmul limit.

Run by hand: ``python -m benchmarks.train`` (about 3 minutes on the 2-core CPU; ``--quick`` for a
smoke run). Prints markdown tables for ``benchmarks/RESULTS.md``.

1. Paper setting: F = 64, N in {8, 16, 32}, 2 seeds per size in one ``jit(vmap(train))`` call,
   10,000 steps of 1024 (data generated on the fly); SAEs (64 latents, k = 7) for 8,000 steps on
   the toy activations, 2 seeds per size in one vmapped stream.
2. Seed scaling at N = 32: 1, 8 and 32 seeds in one call, data generation excluded (batches come
   from a pre-generated buffer), against a large float32 ``jnp.dot`` timed in the same run.
   FLOPs per step and seed: forward 2 matmuls, backward 3, each ``2 B F N``: ``10 B F N``, plus
   elementwise work, counted as ``12 B F N`` as the issue does.
3. SAE decoding: gathering the k active rows of ``W_dec`` against a dense matmul.
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp

from superalign import features, sae, toy


def _time(fn, *args, repeat=1):
    """Best wall time of ``repeat`` calls after a warm-up (compile) call."""
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_flops(n=4096, repeat=5):
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    dt = _time(jax.jit(jnp.dot), a, a, repeat=repeat)
    return 2 * n**3 / dt


def _train_toy_saes(cfg, params, sae_steps, chunk_steps, key):
    """SAEs for every seed at once on the toy activations, streamed in chunks of batches."""
    acts = jax.jit(
        jax.vmap(lambda p, s: toy.activations(p, cfg.data, s, chunk_steps), in_axes=(0, None))
    )
    n_seeds = params.W.shape[0]

    def chunks():
        return (acts(params, s) for s in range(0, sae_steps, chunk_steps))

    out = sae.train_on_stream(
        sae.toy_config(cfg.n_hidden), jax.random.key(key), chunks, n_seeds=n_seeds
    )
    return jax.block_until_ready(out)


def paper_pipeline(n_steps, sae_steps, sizes=(8, 16, 32), chunk_steps=500):
    rows = []
    for n in sizes:
        cfg = toy.ToyConfig(n_hidden=n, n_steps=n_steps)
        keys = jax.random.split(jax.random.key(n), 2)
        train = jax.jit(jax.vmap(toy.make_train(cfg)))
        t0 = time.perf_counter()
        params, _ = jax.block_until_ready(train(keys))
        t_toy = time.perf_counter() - t0

        t0 = time.perf_counter()
        sparams, metrics = _train_toy_saes(cfg, params, sae_steps, chunk_steps, key=n)
        t_sae = time.perf_counter() - t0
        rows.append((n, t_toy, t_sae, float(metrics.mse[:, -100:].mean())))
    return rows


def seed_scaling(n_steps, seed_counts=(1, 8, 32), n_hidden=32, repeat=2):
    cfg = toy.ToyConfig(n_hidden=n_hidden, n_steps=n_steps)
    buffer = features.batches(cfg.data, jnp.arange(64))  # data generation excluded
    train = toy.make_train(cfg, lambda step: buffer[step % 64])
    flops_per_seed = 12 * cfg.batch_size * cfg.n_features * n_hidden * n_steps
    out = []
    for s in seed_counts:
        fn = jax.jit(jax.vmap(train))
        dt = _time(fn, jax.random.split(jax.random.key(0), s), repeat=repeat)
        out.append((f"{s}", s, dt, flops_per_seed * s / dt))
    # toy.make_train_seeds: one batch per step, seeds updated in vmapped groups of 8.
    grouped = jax.jit(toy.make_train_seeds(cfg, lambda step: buffer[step % 64], group_size=8))
    for s in seed_counts[1:]:
        dt = _time(grouped, jax.random.split(jax.random.key(0), s), repeat=repeat)
        out.append((f"{s} (make_train_seeds, groups of 8)", s, dt, flops_per_seed * s / dt))
    return out


def decode_timing(n_inputs, n_latents, k, batch, repeat=3):
    x = jax.random.normal(jax.random.key(0), (batch, n_inputs))
    out = {}
    for mode in ("dense", "gather"):
        cfg = sae.SAEConfig(
            n_inputs=n_inputs, n_latents=n_latents, k=k, batch_size=batch, decode=mode
        )
        state = sae.init_state(cfg, jax.random.key(1))
        out[mode] = _time(jax.jit(sae.make_update(cfg)), state, x, repeat=repeat)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run with few steps")
    args = ap.parse_args(argv)
    toy_steps, sae_steps, scale_steps = (200, 100, 100) if args.quick else (10_000, 8_000, 1_000)

    print(
        f"machine: {platform.processor() or platform.machine()}, jax {jax.__version__}, "
        f"devices {jax.devices()}"
    )
    peak = matmul_flops()
    print(f"float32 jnp.dot 4096^2: {peak / 1e9:.1f} GFLOP/s\n")

    print(
        f"| N | toy: 2 seeds x {toy_steps} steps (s) | SAE: 2 seeds x {sae_steps} steps (s) "
        "| final SAE mse |"
    )
    print("|---|---|---|---|")
    for n, t_toy, t_sae, mse in paper_pipeline(toy_steps, sae_steps):
        print(f"| {n} | {t_toy:.1f} | {t_sae:.1f} | {mse:.2e} |")

    scaling = seed_scaling(scale_steps)
    single = scaling[0][2]
    print(
        f"\n| seeds (N = 32, {scale_steps} steps, one call) | wall (s) | per seed (s) "
        "| per seed / 1 seed | GFLOP/s | of matmul |"
    )
    print("|---|---|---|---|---|---|")
    for label, s, dt, flops in scaling:
        print(
            f"| {label} | {dt:.2f} | {dt / s:.3f} | {dt / s / single:.2f} | {flops / 1e9:.1f} "
            f"| {flops / peak:.0%} |"
        )
    peak_after = matmul_flops()
    print(f"\nfloat32 jnp.dot after the scaling runs: {peak_after / 1e9:.1f} GFLOP/s")

    print("\n| SAE update step | dense decode (ms) | gather decode (ms) |")
    print("|---|---|---|")
    for shape in ((32, 64, 7, 1024), (512, 8192, 32, 2048), (2048, 8192, 82, 1024)):
        t = decode_timing(*shape)
        print(
            f"| {shape[0]} -> {shape[1]}, k = {shape[2]}, batch {shape[3]} "
            f"| {t['dense'] * 1e3:.1f} | {t['gather'] * 1e3:.1f} |"
        )


if __name__ == "__main__":
    main()
