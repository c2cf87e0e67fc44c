"""Figures of the toy-model experiment, drawn from ``results.json`` alone.

Figure 2 (feature overlap, arrangement comparison, soft-matching bars with percentage change),
figure 4 top (ridge), figure 6 (feature recovery) and figure 7 top (semi-matching).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from experiments import figure_style as style


def _values(results, metric, conds) -> dict:
    """``{"N = n": {cond: (mean, sem)}}`` of one metric."""
    return {
        f"N = {n}": {c: (res[metric][c]["mean"], res[metric][c]["sem"]) for c in conds}
        for n, res in results["sizes"].items()
    }


def metric_figure(results, metric: str, conds):
    """One metric's scores per size and condition, with the gain of the second condition."""
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    style.bar_and_gain(ax, _values(results, metric, conds), conds)
    ax.set_ylabel(style.YLABELS[metric])
    return fig


def figure2(results):
    sizes = list(results["sizes"])
    fig = plt.figure(figsize=(4 * len(sizes) + 5, 6), constrained_layout=True)
    grid = fig.add_gridspec(2, len(sizes) + 2)
    for i, n in enumerate(sizes):
        res = results["sizes"][n]
        norms = res["feature_norms"]
        ax = fig.add_subplot(grid[0, i])
        f = np.arange(len(next(iter(norms.values()))))
        for (seed, v), c in zip(norms.items(), ("#4c72b0", "#dd8452"), strict=False):
            ax.bar(f, v, color=c, alpha=0.6, label=seed.replace("_", " "))
        ax.scatter(
            res["shared_features"],
            np.full(len(res["shared_features"]), 1.25),
            marker="v",
            s=8,
            color="k",
            label="shared",
        )
        ax.set_title(f"N = {n}: {len(res['shared_features'])} shared features")
        ax.set_xlabel("feature")
        ax.set_ylabel("‖W_i‖")
        ax.legend(frameon=False, fontsize=7)
        ax = fig.add_subplot(grid[1, i])
        ax.hist(res["arrangement_best_match"], bins=np.linspace(-0.2, 1, 25), color="#555555")
        ax.axvline(0.5, ls="--", color="k", lw=1)
        ax.set_xlabel("best correlation of a neuron's W_s column")
        ax.set_ylabel("neurons")
    ax = fig.add_subplot(grid[:, len(sizes) :])
    conds = style.MATCHING_CONDITIONS
    style.bar_and_gain(ax, _values(results, "soft_matching", conds), conds)
    ax.set_ylabel(style.YLABELS["soft_matching"])
    return fig


def figure6(results):
    sizes = list(results["sizes"])
    fig, axes = plt.subplots(
        1, len(sizes), figsize=(4 * len(sizes), 3.2), constrained_layout=True, squeeze=False
    )
    for ax, n in zip(axes[0], sizes, strict=True):
        rec = results["sizes"][n]["recovery"]
        bins = np.linspace(0, 1, 21)
        for key, color, label in (("neurons", "c", "neurons"), ("sae", "m", "SAE latents")):
            ax.hist(rec[key], bins=bins, color=color, alpha=0.5, label=label)
            ax.axvline(np.mean(rec[key]), color=color, ls="--")
        ax.set_title(f"N = {n}")
        ax.set_xlabel("best correlation with a ground-truth feature")
        ax.set_ylabel("features")
        ax.legend(frameon=False, fontsize=8)
    return fig


def figures(results) -> dict:
    """Every figure of the experiment, by file stem."""
    return {
        "figure2_superposition_softmatching": figure2(results),
        "figure4_top_ridge": metric_figure(results, "ridge", style.RIDGE_CONDITIONS),
        "figure6_recovery": figure6(results),
        "figure7_top_semimatching": metric_figure(
            results, "semi_matching", style.MATCHING_CONDITIONS
        ),
    }
