"""Figures of the deep-network experiment, drawn from ``results.json`` alone.

Figure 3 (soft-matching between seeds per layer), figure 4 bottom (ridge) and figure 7 bottom
(semi-matching): one panel per model, one group of bars per layer, mean ± sem over folds, and the
percentage change of the disentangled condition over Neuron->Neuron.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

from experiments import figure_style as style


def metric_figure(results: dict, metric: str, conds):
    """One panel per model: the metric's scores per layer and condition."""
    names = list(results["models"])
    fig, axes = plt.subplots(
        1, len(names), figsize=(4.5 * len(names), 3.6), constrained_layout=True, squeeze=False
    )
    for ax, name in zip(axes[0], names, strict=True):
        res = results["models"][name]
        values = {
            layer: {c: (r[metric][c]["mean"], r[metric][c]["sem"]) for c in conds}
            for layer, r in res["layers"].items()
        }
        style.bar_and_gain(ax, values, conds)
        acc = ", ".join(f"{a:.2f}" for a in res["accuracy"].values())
        ax.set_title(f"{name} (accuracy {acc})", fontsize=9)
    axes[0][0].set_ylabel(style.YLABELS[metric])
    return fig


def figures(results: dict) -> dict:
    """Every figure of the experiment, by file stem."""
    return {
        "figure3_softmatching": metric_figure(results, "soft_matching", style.MATCHING_CONDITIONS),
        "figure4_bottom_ridge": metric_figure(results, "ridge", style.RIDGE_CONDITIONS),
        "figure7_bottom_semimatching": metric_figure(
            results, "semi_matching", style.MATCHING_CONDITIONS
        ),
    }
