"""CKA, RSA and the rotation score, timed in one run on one machine.

Run by hand: ``python -m benchmarks.similarity`` (``--quick`` for a small smoke run, ``--only``
for one part). Prints, per problem, the score and the time of each call (the first includes
compilation), and for RSA rsatoolbox's score and time on the same fold rows.

- CKA: planted float32 data (shared latents read through two random mixings, plus noise) built
  block by block on the device, so the peak memory is the two matrices plus one block; the peak
  resident memory of the process (``resource.getrusage``) is printed after each size.
  ``--cka-rows``/``--cka-units`` choose the size (the default is the full 100,000 x 16,384 per
  side, about 13 GB of data and 3 GB of accumulators).
- RSA: superalign against a plain loop over scikit-learn's KFold test parts with rsatoolbox's
  ``calc_rdm`` and ``compare`` (correlation RDMs, Spearman), dead units removed as the library
  does; the largest per-fold difference is printed.
- Rotation score: 4,096 units per side.
"""

from __future__ import annotations

import numpy as np

from benchmarks.common import against, end, machine, parser, peak_gib, timed
from tests.references import rsatoolbox_rsa


def planted(m: int, n: int, seed: int, n_latents: int = 256, block: int = 4096):
    """Two [m, n] float32 jax arrays reading the same latents, generated in row blocks.

    ``X = relu(Z A + noise)``, ``Y = Z B + noise`` with Gaussian ``Z`` [m, n_latents]; block ``i``
    of rows is drawn from its own key and written in place into the two outputs, so the peak is
    the outputs plus one block.
    """
    import jax
    import jax.numpy as jnp

    n_full, rest = divmod(m, block)
    k_a, k_b, k_rows = jax.random.split(jax.random.key(seed), 3)
    A = jax.random.normal(k_a, (n_latents, n)) / np.sqrt(n_latents)
    B = jax.random.normal(k_b, (n_latents, n)) / np.sqrt(n_latents)
    keys = jax.random.split(k_rows, n_full + (rest > 0))

    def one(key):
        kz, kx, ky = jax.random.split(key, 3)
        z = jax.random.normal(kz, (block, n_latents))
        x = jnp.maximum(z @ A + 0.5 * jax.random.normal(kx, (block, n)), 0.0)
        y = z @ B + 0.5 * jax.random.normal(ky, (block, n))
        return x, y

    @jax.jit
    def make():
        def body(i, xy):
            x, y = one(keys[i])
            return tuple(
                jax.lax.dynamic_update_slice(out, new, (i * block, 0))
                for out, new in zip(xy, (x, y), strict=True)
            )

        xy = (jnp.zeros((m, n), jnp.float32), jnp.zeros((m, n), jnp.float32))
        if n_full:  # (traced even for zero iterations: a block larger than m cannot be)
            xy = jax.lax.fori_loop(0, n_full, body, xy)
        if rest:
            x, y = one(keys[n_full])
            xy = (
                xy[0].at[n_full * block :].set(x[:rest]),
                xy[1].at[n_full * block :].set(y[:rest]),
            )
        return xy

    return make()


def bench_cka(rows: int, units: int):
    import jax

    import superalign

    print(f"\n## CKA: {rows:,} stimuli x {units:,} units per side, 5 folds (test parts)")
    (X, Y), t_make = timed(lambda: jax.block_until_ready(planted(rows, units, seed=0)))
    print(f"data generated in {t_make:.1f} s; peak RSS {peak_gib():.2f} GiB", flush=True)
    for debiased in (False, True):
        out, t = timed(superalign.cka, X, Y, debiased=debiased)
        print(
            f"cka debiased={debiased!s:5s} {out.mean:.6f} +- {out.sem:.6f} ({t:8.2f} s incl. "
            f"compile on the first call); peak RSS {peak_gib():.2f} GiB",
            flush=True,
        )
    del X, Y


def bench_rsa(problems):
    import superalign

    print("\n## RSA: correlation RDMs, Spearman, 5 folds; superalign vs rsatoolbox loop")
    for m, n in problems:
        X, Y = (np.asarray(a) for a in planted(m, n, seed=1))
        first, t_first = timed(superalign.rsa, X, Y)
        ours, t_ours, ref, t_ref, diff = against(superalign.rsa, rsatoolbox_rsa, X, Y)
        print(
            f"rsa {m}x{n} (RDMs of {ours.n_stimuli.max()} stimuli) superalign {ours.mean:.6f} "
            f"({t_ours:.3f} s; first call {t_first:.2f} s)  rsatoolbox {ref.mean():.6f} "
            f"({t_ref:.3f} s)  max fold diff {diff:.2e}  rsatoolbox/superalign time "
            f"{t_ref / t_ours:.2f}x (first call {t_ref / t_first:.2f}x)",
            flush=True,
        )


def bench_rotation(rows: int, units: int):
    import superalign

    print(f"\n## rotation score: {rows:,} stimuli x {units:,} units per side, 5 folds")
    X, Y = planted(rows, units, seed=2)
    first, t_first = timed(superalign.rotation_score, X, Y)
    out, t = timed(superalign.rotation_score, X, Y)
    print(
        f"rotation {out.mean:.6f} +- {out.sem:.6f} ({t:.2f} s; first call {t_first:.2f} s); "
        f"peak RSS {peak_gib():.2f} GiB",
        flush=True,
    )


def main():
    cli = parser(__doc__, only=["cka", "rsa", "rotation"])
    cli.add_argument("--cka-rows", type=int, default=100_000)
    cli.add_argument("--cka-units", type=int, default=16_384)
    cli.add_argument("--rotation-rows", type=int, default=20_000)
    cli.add_argument("--rotation-units", type=int, default=4_096)
    args = cli.parse_args()
    print(f"machine: {machine()}")
    if args.quick:
        cka_size, rsa_problems, rot_size = (5_000, 512), [(1_000, 256)], (2_000, 256)
    else:
        cka_size = (args.cka_rows, args.cka_units)
        rsa_problems = [(2_000, 1_024), (10_000, 1_024)]
        rot_size = (args.rotation_rows, args.rotation_units)
    if args.only in (None, "rsa"):
        bench_rsa(rsa_problems)
    if args.only in (None, "rotation"):
        bench_rotation(*rot_size)
    if args.only in (None, "cka"):
        bench_cka(*cka_size)
    end()


if __name__ == "__main__":
    main()
