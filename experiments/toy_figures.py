"""Figures of the toy-model experiment, drawn from ``results.json`` alone.

Figure 2 (feature overlap, arrangement comparison, soft-matching bars with percentage change),
figure 4 top (ridge), figure 6 (feature recovery) and figure 7 top (semi-matching).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments import _io  # noqa: E402

LABELS = {
    "neuron_neuron": "Neuron→Neuron",
    "sae_sae": "SAE→SAE",
    "randsae_sae": "RandSAE→SAE",
    "sae_neuron": "SAE→Neuron",
    "randsae_neuron": "RandSAE→Neuron",
}
COLORS = {
    "neuron_neuron": "#4c72b0",
    "sae_sae": "#c44e52",
    "randsae_sae": "#8c8c8c",
    "sae_neuron": "#dd8452",
    "randsae_neuron": "#b0b0b0",
}


def _bars(ax, results, metric, conds, ylabel):
    sizes = list(results["sizes"])
    width = 0.8 / len(conds)
    for j, cond in enumerate(conds):
        means = [results["sizes"][n][metric][cond]["mean"] for n in sizes]
        sems = [results["sizes"][n][metric][cond]["sem"] for n in sizes]
        x = np.arange(len(sizes)) + (j - (len(conds) - 1) / 2) * width
        ax.bar(x, means, width, yerr=sems, capsize=3, color=COLORS[cond], label=LABELS[cond])
    # Percentage change of the second condition (the disentangled one) over the first.
    for i, n in enumerate(sizes):
        base = results["sizes"][n][metric][conds[0]]["mean"]
        new = results["sizes"][n][metric][conds[1]]["mean"]
        top = max(results["sizes"][n][metric][c]["mean"] for c in conds)
        if base > 0:
            ax.annotate(
                f"{100 * (new - base) / base:+.1f}%",
                (i, top),
                xytext=(0, 6),
                textcoords="offset points",
                ha="center",
                fontsize=8,
            )
    ax.set_xticks(np.arange(len(sizes)), [f"N = {n}" for n in sizes])
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.1)
    ax.legend(frameon=False, fontsize=8, loc="upper left")
    ax.spines[["top", "right"]].set_visible(False)


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
    _bars(
        ax,
        results,
        "soft_matching",
        ("neuron_neuron", "sae_sae", "randsae_sae"),
        "soft-matching correlation",
    )
    return fig


def _metric_figure(results, metric, conds, ylabel):
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    _bars(ax, results, metric, conds, ylabel)
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


def save_all(results, directory) -> list[Path]:
    directory = Path(directory)
    figures = {
        "figure2_superposition_softmatching": figure2(results),
        "figure4_top_ridge": _metric_figure(
            results,
            "ridge",
            ("neuron_neuron", "sae_neuron", "sae_sae", "randsae_neuron"),
            "ridge regression correlation",
        ),
        "figure6_recovery": figure6(results),
        "figure7_top_semimatching": _metric_figure(
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
