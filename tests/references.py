"""Independent float64 references shared by the tests and the benchmarks.

Written with numpy, scikit-learn and rsatoolbox only (never the library), following the
protocol the library implements: scikit-learn's shuffled ``KFold``, and a unit is dead (removed
from both parts of every fold) when it is all zero on any fold's train or test part.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import KFold

RSA_METHODS = {"spearman": "spearman", "pearson": "corr"}
"""The library's RDM comparison names and rsatoolbox's."""


def live_folds(X, Y, n_folds=5, seed=0):
    """The folds and the live units of a pair, in float64.

    Args:
      X: [M, Na] activations.
      Y: [M, Nb] activations, same rows.
      n_folds: K.
      seed: ``KFold``'s ``random_state``.

    Returns:
      ``(X [M, na], Y [M, nb], splits, (live_x, live_y))``: both matrices as float64 with their
      dead units removed, the K ``(train, test)`` row index pairs, and the column indices of the
      live units ``live_x [na]`` and ``live_y [nb]``.
    """
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    splits = list(KFold(n_folds, shuffle=True, random_state=seed).split(X))
    live = []
    for A in (X, Y):
        dead = np.zeros(A.shape[1], bool)
        for train, test in splits:
            dead |= (A[train] == 0).all(0) | (A[test] == 0).all(0)
        live.append(np.flatnonzero(~dead))
    return X[:, live[0]], Y[:, live[1]], splits, tuple(live)


def hsic_unbiased(K, L):
    """Song et al.'s (2012) unbiased HSIC (eq. 5) of two n x n Gram matrices, times n (n - 3)."""
    n = len(K)
    K, L = K.copy(), L.copy()
    np.fill_diagonal(K, 0.0)
    np.fill_diagonal(L, 0.0)
    one = np.ones(n)
    return (
        np.trace(K @ L)
        + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (one @ K @ L @ one)
    )


def rsatoolbox_rsa(X, Y, rdm="correlation", compare="spearman", n_folds=5, seed=0, rows=None):
    """Per fold, rsatoolbox's comparison of its two RDMs (float64) on ``rows[k]`` or the test
    part; correlation RDMs drop the stimuli whose pattern is constant in either system.

    Returns:
      [K] the comparison per fold.
    """
    import rsatoolbox

    X, Y, splits, _ = live_folds(X, Y, n_folds, seed)
    out = []
    for k, (_, test) in enumerate(splits):
        r = np.sort(test) if rows is None else rows[k]
        if rdm == "correlation":
            r = r[(X[r].std(1) > 0) & (Y[r].std(1) > 0)]
        rdms = [rsatoolbox.rdm.calc_rdm(rsatoolbox.data.Dataset(A[r]), method=rdm) for A in (X, Y)]
        out.append(rsatoolbox.rdm.compare(*rdms, method=RSA_METHODS[compare])[0, 0])
    return np.array(out)


def standardize(a):
    """Columns centred and scaled to unit norm (float64 numpy)."""
    a = a - a.mean(0)
    return a / np.linalg.norm(a, axis=0)


def sklearn_ridge_loop(X, Y, alphas, n_folds=5, seed=0):
    """Per fold: chosen alpha and mean test Pearson r of RidgeCV(alphas, fit_intercept=False).

    Train X and Y standardised with train statistics, test X with test statistics (the
    protocol's ridge); returns ``(alphas [K], scores [K])``.
    """
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    chosen, scores = [], []
    for train, test in KFold(n_folds, shuffle=True, random_state=seed).split(X):
        model = RidgeCV(alphas=alphas, fit_intercept=False)
        model.fit(standardize(X[train]), standardize(Y[train]))
        pred = model.predict(standardize(X[test]))
        r = [np.corrcoef(pred[:, j], Y[test, j])[0, 1] for j in range(Y.shape[1])]
        chosen.append(model.alpha_)
        scores.append(np.mean(r))
    return np.array(chosen), np.array(scores)
