"""The look every experiment figure shares: colours, labels, the bar-and-gain panel, saving.

Figure functions build and return a matplotlib figure and never choose the backend: a notebook
shows them inline, and the command line (``experiments.launch``) draws with Agg.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from experiments import run_files

# Source -> target conditions of the alignment scores.
LABELS = {
    "neuron_neuron": "Neuron→Neuron",
    "sae_sae": "SAE→SAE",
    "randsae_sae": "RandSAE→SAE",
    "sae_neuron": "SAE→Neuron",
    "randsae_neuron": "RandSAE→Neuron",
    "neuron_voxel": "Neuron→Voxel",
    "sae_voxel": "SAE→Voxel",
    "randsae_voxel": "RandSAE→Voxel",
    "scrambled_voxel": "Scrambled→Voxel",
}
COLORS = {
    "neuron_neuron": "#4c72b0",
    "sae_sae": "#c44e52",
    "randsae_sae": "#8c8c8c",
    "sae_neuron": "#dd8452",
    "randsae_neuron": "#b0b0b0",
    "neuron_voxel": "#4c72b0",
    "sae_voxel": "#c44e52",
    "randsae_voxel": "#8c8c8c",
    "scrambled_voxel": "#d0d0d0",
}
# The metrics of the theory experiment.
METRIC_LABELS = {
    "permutation": "permutation",
    "soft": "soft-matching",
    "semi": "semi-matching",
    "ridge": "ridge a→b",
    "ridge_reverse": "ridge b→a",
    "cka": "CKA",
    "cka_debiased": "CKA (debiased)",
    "rotation": "rotation",
}
METRIC_COLORS = {
    "permutation": "#c44e52",
    "soft": "#4c72b0",
    "semi": "#55a868",
    "ridge": "#dd8452",
    "ridge_reverse": "#8172b2",
    "cka": "#937860",
    "cka_debiased": "#da8bc3",
    "rotation": "#17becf",
}
# The conditions each metric's figure shows, the disentangled one second (its gain is labelled).
MATCHING_CONDITIONS = ("neuron_neuron", "sae_sae", "randsae_sae")
RIDGE_CONDITIONS = ("neuron_neuron", "sae_neuron", "sae_sae", "randsae_neuron")
YLABELS = {
    "soft_matching": "soft-matching correlation",
    "semi_matching": "semi-matching correlation",
    "ridge": "ridge regression correlation",
    "cka": "linear CKA",
    "rsa": "RSA (Spearman r of RDMs)",
    "rotation_score": "rotation score (correlation)",
}
# Short names of the toy and DNN experiments' metrics (panel titles).
METRIC_NAMES = {
    "soft_matching": "soft-matching",
    "semi_matching": "semi-matching",
    "ridge": "ridge regression",
    "cka": "CKA",
    "rsa": "RSA",
    "rotation_score": "rotation score",
}


def clean(ax) -> None:
    """No top and right spines."""
    ax.spines[["top", "right"]].set_visible(False)


def finish(
    ax, xlabel=None, ylabel=None, *, ylim=None, title=None, title_size=None, legend=None
) -> None:
    """Axis labels, the y range, a title, a frameless legend and no top and right spines.

    ``legend``: keyword arguments of ``ax.legend`` (``{}``: the defaults), or None for none.
    """
    if xlabel is not None:
        ax.set_xlabel(xlabel)
    if ylabel is not None:
        ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    if title is not None:
        ax.set_title(title, fontsize=title_size)
    if legend is not None:
        ax.legend(**{"frameon": False, "fontsize": 8, **legend})
    clean(ax)


def sequence_color(i: int, n: int):
    """The ``i``-th of ``n`` colours along viridis (one per k, one per K)."""
    return plt.get_cmap("viridis")(i / max(1, n - 1))


def bar_and_gain(ax, values: dict, conds, *, ylim=(0.0, 1.1), legend=True) -> None:
    """Grouped bars (mean ± sem) with the change of ``conds[1]`` over ``conds[0]`` above each group.

    Args:
      ax: the axes.
      values: ``{group label: {condition: (mean, sem)}}``; a group is a size, a layer or a DNN.
      conds: the conditions, one bar each per group; the first is the baseline.
      ylim: the y range, or None for one that fits the bars (and negative scores).
      legend: label the conditions.
    """
    groups = list(values)
    width = 0.8 / len(conds)
    for j, cond in enumerate(conds):
        means = [values[g][cond][0] for g in groups]
        sems = [values[g][cond][1] for g in groups]
        x = np.arange(len(groups)) + (j - (len(conds) - 1) / 2) * width
        ax.bar(x, means, width, yerr=sems, capsize=3, color=COLORS[cond], label=LABELS[cond])
    for i, g in enumerate(groups):
        base, new = values[g][conds[0]][0], values[g][conds[1]][0]
        if base > 0:
            ax.annotate(
                f"{100 * (new - base) / base:+.1f}%",
                (i, max(values[g][c][0] for c in conds)),
                xytext=(0, 6),
                textcoords="offset points",
                ha="center",
                fontsize=8,
            )
    ax.set_xticks(np.arange(len(groups)), groups, fontsize=8)
    if ylim is None:
        means = [values[g][c][0] for g in groups for c in conds]
        ylim = (min(0.0, min(means) * 1.2), max(means) * 1.25 + 1e-9)
        ax.axhline(0, color="k", lw=0.5)
    ax.set_ylim(*ylim)
    if legend:
        ax.legend(frameon=False, fontsize=7, loc="upper left")
    clean(ax)


def save_all(figures: dict, directory) -> list[Path]:
    """Write every figure (``{stem: figure or None}``) as PNG and PDF, then close it."""
    directory = Path(directory)
    paths = []
    for stem, fig in figures.items():
        if fig is None:
            continue
        paths += run_files.save_figure(fig, directory / stem)
        plt.close(fig)
    return paths
