"""Figures of the toy-model experiment, drawn from ``results.json`` alone.

Figure 2 (feature overlap, arrangement comparison, soft-matching bars with percentage change),
figure 4 top (ridge), figure 6 (feature recovery), figure 7 top (semi-matching), and beyond the
paper, which metrics superposition deflates (every metric's Neuron->Neuron against SAE->SAE and
RandSAE->SAE).
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


DEFLATION_METRICS = ("soft_matching", "semi_matching", "ridge", "cka", "rsa", "rotation_score")
DEFLATION_CONDITIONS = ("neuron_neuron", "sae_sae", "randsae_sae")


def deflation_figure(results):
    """Which metrics superposition deflates: one panel per metric, bars per size N.

    Each panel shows Neuron->Neuron, SAE->SAE and RandSAE->SAE (ridge has no RandSAE->SAE
    condition; its control is RandSAE->Neuron, in figure 4) with the change of SAE->SAE over
    Neuron->Neuron above each size. A metric that rises with SAEs while RandSAE->SAE does not
    was deflated by the arrangement of the features in the units. None if ``results`` holds
    none of the metrics.
    """
    sizes = results["sizes"]
    metrics = [m for m in DEFLATION_METRICS if all(m in res for res in sizes.values())]
    if not metrics:
        return None
    ncols = min(3, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(4.2 * ncols, 3.4 * nrows),
        constrained_layout=True,
        squeeze=False,
    )
    for i, (ax, metric) in enumerate(zip(axes.flat, metrics, strict=False)):
        conds = [c for c in DEFLATION_CONDITIONS if all(c in r[metric] for r in sizes.values())]
        values = _values(results, metric, conds)
        negative = any(v[0] < 0 for g in values.values() for v in g.values())
        style.bar_and_gain(ax, values, conds, ylim=None if negative else (0, 1.1), legend=i == 0)
        ax.set_title(style.METRIC_NAMES.get(metric, metric), fontsize=10)
        ax.set_ylabel(style.YLABELS.get(metric, "score"), fontsize=8)
    for ax in axes.flat[len(metrics) :]:
        ax.set_visible(False)
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
        "metrics_deflation": deflation_figure(results),
    }
