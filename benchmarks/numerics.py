"""Accuracy of the metrics at extreme scales and offsets, against float64 references.

Run from the repository root::

    python -m benchmarks.numerics

Float32 data (1,000 stimuli, 20 and 15 units reading 10 shared latents plus noise) scaled by
1e-13 (recordings in tesla), 1e9, and shifted far from zero over a small spread (1e4 + 0.01 x, so
each column varies by about 0.03). Every reference is written here in float64 numpy from the
protocol (scikit-learn's shuffled KFold, dead units removed) and sees the same float32 numbers.
Prints, per case and metric, the largest difference of a fold score from its reference.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata
from sklearn.model_selection import KFold

import superalign
from tests.references import hsic_unbiased


def _folds(X, Y, n_folds=5, seed=0):
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    splits = list(KFold(n_folds, shuffle=True, random_state=seed).split(X))
    live = []
    for A in (X, Y):
        dead = np.zeros(A.shape[1], bool)
        for part in (p for s in splits for p in s):
            dead |= A[part].max(0) == A[part].min(0)
        live.append(np.flatnonzero(~dead))
    return X[:, live[0]], Y[:, live[1]], splits


def _std(a):
    a = a - a.mean(0)
    return a / np.linalg.norm(a, axis=0)


def _hsic_biased(K, L):
    H = np.eye(len(K)) - 1 / len(K)
    return np.trace(K @ H @ L @ H)


def cka(X, Y, debiased=False):
    X, Y, splits = _folds(X, Y)
    hsic = hsic_unbiased if debiased else _hsic_biased
    out = []
    for _, test in splits:
        x, y = X[test] - X[test].mean(0), Y[test] - Y[test].mean(0)
        K, L = x @ x.T, y @ y.T
        out.append(hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L)))
    return np.array(out)


def semi_matching(X, Y):
    X, Y, splits = _folds(X, Y)
    out = []
    for train, test in splits:
        a, b = _std(X[train]).T @ _std(Y[train]), _std(X[test]).T @ _std(Y[test])
        out.append(b[a.argmax(0), np.arange(b.shape[1])].mean())
    return np.array(out)


def rotation_score(X, Y):
    X, Y, splits = _folds(X, Y)
    na, nb = X.shape[1], Y.shape[1]
    width = max(na, nb)
    out = []
    for train, test in splits:

        def z(A, rows, ref=train):
            Z = np.zeros((len(rows), width))
            Z[:, : A.shape[1]] = (A[rows] - A[ref].mean(0)) / A[ref].std(0)
            return Z

        u, _, vt = np.linalg.svd(z(X, train).T @ z(Y, train))
        pred = (z(X, test) @ u @ vt)[:, :nb]
        out.append((_std(pred) * _std(z(Y, test)[:, :nb])).sum(0).mean())
    return np.array(out)


def rsa_euclidean(X, Y):
    X, Y, splits = _folds(X, Y)
    out = []
    for _, test in splits:
        rows = np.sort(test)
        tri = []
        for A in (X[rows], Y[rows]):
            d = A[:, None, :] - A[None, :, :]
            tri.append(((d * d).sum(-1) / A.shape[1])[np.triu_indices(len(rows), 1)])
        out.append(np.corrcoef(rankdata(tri[0]), rankdata(tri[1]))[0, 1])
    return np.array(out)


METRICS = {
    "cka": (superalign.cka, cka),
    "cka debiased": (
        lambda X, Y: superalign.cka(X, Y, debiased=True),
        lambda X, Y: cka(X, Y, debiased=True),
    ),
    "semi_matching": (superalign.semi_matching, semi_matching),
    "semi_matching source": (
        lambda X, Y: superalign.semi_matching(X, Y, direction="source"),
        lambda X, Y: semi_matching(Y, X),
    ),
    "rotation_score": (superalign.rotation_score, rotation_score),
    "rsa euclidean": (lambda X, Y: superalign.rsa(X, Y, rdm="euclidean"), rsa_euclidean),
}


def main() -> None:
    rng = np.random.default_rng(0)
    z = rng.standard_normal((1000, 10))
    X = (z @ rng.standard_normal((10, 20)) + 0.5 * rng.standard_normal((1000, 20))).astype(
        np.float32
    )
    Y = (z @ rng.standard_normal((10, 15)) + 0.5 * rng.standard_normal((1000, 15))).astype(
        np.float32
    )
    f32 = np.float32
    cases = {
        "as drawn": (X, Y),
        "X x 1e-13": (X * f32(1e-13), Y),
        "X x 1e9": (X * f32(1e9), Y),
        "1e4 + 0.01 x (both)": (f32(1e4) + f32(0.01) * X, f32(1e4) + f32(0.01) * Y),
    }
    print("| case | " + " | ".join(METRICS) + " |")
    print("|---|" + "---|" * len(METRICS))
    for name, (a, b) in cases.items():
        diffs = []
        for ours, ref in METRICS.values():
            diffs.append(np.abs(np.asarray(ours(a, b).folds) - ref(a, b)).max())
        print(f"| {name} | " + " | ".join(f"{d:.1e}" for d in diffs) + " |")


if __name__ == "__main__":
    main()
