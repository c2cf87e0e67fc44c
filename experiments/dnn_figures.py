"""Figures of the deep-network experiment, drawn from ``results.json`` alone.

Figure 3 (soft-matching between seeds per layer), figure 4 bottom (ridge) and figure 7 bottom
(semi-matching): one panel per model, one group of bars per layer, mean ± sem over folds, and the
percentage change of the disentangled condition over Neuron->Neuron.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments import _io  # noqa: E402
from experiments.toy_figures import COLORS, LABELS  # noqa: E402


def _panel(ax, model: str, res: dict, metric: str, conds):
    layers = list(res["layers"])
    width = 0.8 / len(conds)
    for j, cond in enumerate(conds):
        means = [res["layers"][ly][metric][cond]["mean"] for ly in layers]
        sems = [res["layers"][ly][metric][cond]["sem"] for ly in layers]
        x = np.arange(len(layers)) + (j - (len(conds) - 1) / 2) * width
        ax.bar(x, means, width, yerr=sems, capsize=3, color=COLORS[cond], label=LABELS[cond])
    for i, ly in enumerate(layers):
        base = res["layers"][ly][metric][conds[0]]["mean"]
        new = res["layers"][ly][metric][conds[1]]["mean"]
        top = max(res["layers"][ly][metric][c]["mean"] for c in conds)
        if base > 0:
            ax.annotate(
                f"{100 * (new - base) / base:+.1f}%",
                (i, top),
                xytext=(0, 6),
                textcoords="offset points",
                ha="center",
                fontsize=8,
            )
    acc = ", ".join(f"{a:.2f}" for a in res["accuracy"].values())
    ax.set_title(f"{model} (accuracy {acc})", fontsize=9)
    ax.set_xticks(np.arange(len(layers)), layers, fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.legend(frameon=False, fontsize=7, loc="upper left")
    ax.spines[["top", "right"]].set_visible(False)


def _figure(results: dict, metric: str, conds, ylabel: str):
    names = list(results["models"])
    fig, axes = plt.subplots(
        1, len(names), figsize=(4.5 * len(names), 3.6), constrained_layout=True, squeeze=False
    )
    for ax, name in zip(axes[0], names, strict=True):
        _panel(ax, name, results["models"][name], metric, conds)
    axes[0][0].set_ylabel(ylabel)
    return fig


def save_all(results: dict, directory) -> list[Path]:
    directory = Path(directory)
    figures = {
        "figure3_softmatching": _figure(
            results,
            "soft_matching",
            ("neuron_neuron", "sae_sae", "randsae_sae"),
            "soft-matching correlation",
        ),
        "figure4_bottom_ridge": _figure(
            results,
            "ridge",
            ("neuron_neuron", "sae_neuron", "sae_sae", "randsae_neuron"),
            "ridge regression correlation",
        ),
        "figure7_bottom_semimatching": _figure(
            results,
            "semi_matching",
            ("neuron_neuron", "sae_sae", "randsae_sae"),
            "semi-matching correlation",
        ),
    }
    paths = []
    for name, fig in figures.items():
        paths += _io.save_figure(fig, directory / name)
        plt.close(fig)
    return paths
