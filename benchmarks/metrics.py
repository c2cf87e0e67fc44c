"""Alignment metrics against their references, timed in one run on one machine.

Run by hand: ``python -m benchmarks.metrics`` (``--quick`` for a small smoke run). Prints, per
problem, superalign's score and time, the reference's score and time, the largest per-fold score
difference and the time ratio. Results are recorded in ``benchmarks/RESULTS.md``.

- Soft-matching: superalign's Sinkhorn (ott-jax) against the authors' approach, a numpy
  correlation loop over scikit-learn's KFold with POT's exact network simplex ``ot.emd``.
- Ridge: superalign against a plain scikit-learn loop, ``RidgeCV(alphas, fit_intercept=False)``
  per fold on float64 columns centred and scaled to unit norm. Problems: a wide and a tall pair
  of populations reading shared sparse latents, and a square planted pair (SAE-latent-like, as
  the soft-matching problems: train rows close to the number of units, as many targets).
"""

from __future__ import annotations

import numpy as np

from benchmarks.common import against, end, machine, parser, timed


def _standardize(a):
    a = a - a.mean(0)
    return a / np.linalg.norm(a, axis=0)


def _sparse_pair(m, na, nb, f, seed, noise=0.5, density=0.1):
    """Two populations reading the same sparse non-negative latents through different mixings."""
    rng = np.random.default_rng(seed)
    z = (rng.uniform(size=(m, f)) < density) * rng.uniform(size=(m, f))
    z = z.astype(np.float32)
    ax = rng.standard_normal((f, na)).astype(np.float32) * (rng.uniform(size=(f, na)) < 0.2)
    ay = rng.standard_normal((f, nb)).astype(np.float32) * (rng.uniform(size=(f, nb)) < 0.2)
    X = np.maximum(z @ ax + noise * rng.standard_normal((m, na), dtype=np.float32), 0)
    Y = z @ ay + noise * rng.standard_normal((m, nb), dtype=np.float32)
    return X, Y


def planted(m, n, seed, noise=1.0):
    """A noisy permutation of sparse non-negative units (SAE-latent-like)."""
    rng = np.random.default_rng(seed)
    z = np.maximum(rng.standard_normal((m, n), dtype=np.float32) - 0.5, 0)
    X = np.maximum(z + noise * rng.standard_normal((m, n), dtype=np.float32) * (z > 0), 0)
    Y = np.maximum(
        z[:, rng.permutation(n)] + noise * rng.standard_normal((m, n), dtype=np.float32), 0
    )
    return X, Y


def _random(m, n, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, n), dtype=np.float32), rng.standard_normal(
        (m, n), dtype=np.float32
    )


def pot_soft_matching(X, Y, n_folds=5, seed=0):
    """The release's soft-matching loop: numpy correlations per fold and POT's exact LP."""
    import ot
    from sklearn.model_selection import KFold

    X, Y = X.astype(np.float64), Y.astype(np.float64)
    scores = []
    for train, test in KFold(n_folds, shuffle=True, random_state=seed).split(X):
        corr_train = _standardize(X[train]).T @ _standardize(Y[train])
        corr_test = _standardize(X[test]).T @ _standardize(Y[test])
        na, nb = corr_train.shape
        plan = ot.emd(np.full(na, 1 / na), np.full(nb, 1 / nb), 1 - corr_train, numItermax=10**9)
        scores.append((plan * corr_test).sum())
    return np.array(scores)


def sklearn_ridge(X, Y, alphas, n_folds=5, seed=0, folds=None):
    """Plain scikit-learn loop: RidgeCV(alphas, fit_intercept=False) per fold."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold

    chosen, scores = [], []
    splits = list(KFold(n_folds, shuffle=True, random_state=seed).split(X))
    for train, test in splits[: folds or n_folds]:
        model = RidgeCV(alphas=alphas, fit_intercept=False)
        model.fit(
            _standardize(X[train].astype(np.float64)), _standardize(Y[train].astype(np.float64))
        )
        pred = _standardize(model.predict(_standardize(X[test].astype(np.float64))))
        r = (pred * _standardize(Y[test].astype(np.float64))).sum(0)
        chosen.append(model.alpha_)
        scores.append(r.mean())
    return np.array(chosen), np.array(scores)


def bench_soft(sizes, m, kinds):
    import superalign

    print(f"\n## soft-matching: {m} stimuli, 5 folds, Sinkhorn (ott-jax) vs POT ot.emd")
    for n in sizes:
        for kind in kinds:
            X, Y = (planted if kind == "planted" else _random)(m, n, seed=n)
            # The library's time includes compilation.
            ours, t_ours, ref, t_ref, diff = against(
                superalign.soft_matching, pot_soft_matching, X, Y
            )
            print(
                f"soft {n:5d} {kind:8s} superalign {ours.mean:.6f} ({t_ours:7.2f} s; "
                f"iterations {ours.n_iterations.tolist()}; converged "
                f"{bool(ours.converged.all())})  POT {ref.mean():.6f} ({t_ref:7.2f} s)  "
                f"max fold diff {diff:.2e}  POT/superalign time {t_ref / t_ours:.2f}x",
                flush=True,
            )


def bench_ridge(problems, sklearn_folds):
    import superalign
    from superalign.regression import DEFAULT_ALPHAS

    print("\n## ridge: 5 folds, 17 alphas, superalign vs scikit-learn RidgeCV loop")
    for m, na, nb, kind in problems:
        if kind == "planted":
            X, Y = planted(m, na, seed=na)
        else:
            X, Y = _sparse_pair(m, na, nb, f=max(na, nb), seed=m)
        ours, t_ours = timed(superalign.ridge_regression, X, Y)  # includes compilation
        k = sklearn_folds.get((m, na, nb, kind), 5)
        if k == 0:
            print(
                f"ridge {m}x{na}->{nb} {kind} superalign {ours.mean:.6f} ({t_ours:7.2f} s; "
                f"alphas {ours.alpha.tolist()}; folds {ours.folds.tolist()})  sklearn not run",
                flush=True,
            )
            continue
        (chosen, ref), t_ref = timed(sklearn_ridge, X, Y, DEFAULT_ALPHAS, folds=k)
        t_ref_5 = t_ref * 5 / k
        diff = np.abs(ours.folds[:k] - ref).max()
        same = int((ours.alpha[:k] == chosen).sum())
        note = "" if k == 5 else f" (sklearn timed on {k} of 5 folds, scaled x{5 / k:g})"
        print(
            f"ridge {m}x{na}->{nb} {kind} superalign {ours.mean:.6f} ({t_ours:7.2f} s; "
            f"alphas {ours.alpha.tolist()})  sklearn {ref.mean():.6f} "
            f"({t_ref_5:7.2f} s{note}; alphas {chosen.tolist()})  same alpha {same}/{k}  "
            f"max fold diff {diff:.2e}  sklearn/superalign time {t_ref_5 / t_ours:.2f}x",
            flush=True,
        )


def main():
    cli = parser(__doc__, only=["soft", "ridge"])
    cli.add_argument(
        "--sklearn-folds-wide",
        type=int,
        default=5,
        help="folds of the scikit-learn baseline at 50,000 x 2,048 (0: do not run it)",
    )
    cli.add_argument(
        "--sklearn-folds-big",
        type=int,
        default=5,
        help="folds of the scikit-learn baseline at 2,048,000 rows (timing scaled to 5; 0: skip)",
    )
    cli.add_argument(
        "--sklearn-folds-square",
        type=int,
        default=5,
        help="folds of the scikit-learn baseline at 10,000 x 2,048 -> 2,048 planted (0: skip)",
    )
    cli.add_argument(
        "--ridge-cases",
        default="wide,tall,square",
        help="comma-separated ridge problems to run (wide, tall, square)",
    )
    args = cli.parse_args()
    print(f"machine: {machine()}")
    if args.quick:
        sizes, m = [256], 4000
        cases = {
            "wide": (20_000, 256, 64, "latent"),
            "tall": (200_000, 64, 64, "latent"),
            "square": (2_500, 512, 512, "planted"),
        }
    else:
        sizes, m = [512, 2048, 4096], 10_000
        cases = {
            "wide": (50_000, 2048, 512, "latent"),
            "tall": (2_048_000, 64, 64, "latent"),
            "square": (10_000, 2048, 2048, "planted"),
        }
    problems = [cases[name] for name in args.ridge_cases.split(",")]
    big = {
        cases["tall"]: args.sklearn_folds_big,
        cases["wide"]: args.sklearn_folds_wide,
        cases["square"]: args.sklearn_folds_square,
    }
    if args.only in (None, "soft"):
        bench_soft(sizes, m, ["random", "planted"])
    if args.only in (None, "ridge"):
        bench_ridge(problems, big)
    end()


if __name__ == "__main__":
    main()
