"""Figures of the DNN->brain experiment, drawn from ``results.json`` alone.

Figure 5 (the first subject: one panel per DNN), figure 8 (the other subjects: a row each) and
the subjects' noise-ceiling distributions. Bars are ridge scores divided by the subject's mean
noise ceiling (NC / 100), with the standard error over folds; the label above each group is the
change of SAE->Voxel over Neuron->Voxel.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments import _io  # noqa: E402

LABELS = {
    "neuron_voxel": "Neuron→Voxel",
    "sae_voxel": "SAE→Voxel",
    "randsae_voxel": "RandSAE→Voxel",
    "scrambled_voxel": "Scrambled→Voxel",
}
COLORS = {
    "neuron_voxel": "#4c72b0",
    "sae_voxel": "#c44e52",
    "randsae_voxel": "#8c8c8c",
    "scrambled_voxel": "#d0d0d0",
}


def _panel(ax, scores: dict, title: str) -> None:
    conds = [c for c in LABELS if c in scores]
    means = [scores[c]["normalized_mean"] for c in conds]
    sems = [scores[c]["normalized_sem"] for c in conds]
    x = np.arange(len(conds))
    ax.bar(x, means, yerr=sems, capsize=3, color=[COLORS[c] for c in conds])
    ax.set_xticks(x, [LABELS[c] for c in conds], rotation=20, ha="right", fontsize=8)
    base, new = scores["neuron_voxel"]["normalized_mean"], scores["sae_voxel"]["normalized_mean"]
    if base > 0:
        ax.annotate(
            f"SAE vs Neuron: {100 * (new - base) / base:+.1f}%",
            (0.5, max(means)),
            xytext=(0, 8),
            textcoords="offset points",
            ha="center",
            fontsize=8,
        )
    ax.set_ylim(min(0.0, min(means) * 1.2), max(means) * 1.25 + 1e-9)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_title(title, fontsize=9)
    ax.spines[["top", "right"]].set_visible(False)


def _grid(results: dict, subjects: list[str], suptitle: str):
    dnns = list(results["subjects"][subjects[0]]["dnns"])
    fig, axes = plt.subplots(
        len(subjects),
        len(dnns),
        figsize=(3.2 * len(dnns), 2.9 * len(subjects)),
        squeeze=False,
        constrained_layout=True,
    )
    for i, s in enumerate(subjects):
        for j, name in enumerate(dnns):
            _panel(axes[i, j], results["subjects"][s]["dnns"][name], f"subject {s}: {name}")
        axes[i, 0].set_ylabel("ridge r / mean noise ceiling")
    fig.suptitle(suptitle, fontsize=10)
    return fig


def figure5(results: dict):
    first = next(iter(results["subjects"]))
    return _grid(results, [first], f"Figure 5: DNN→ventral stream ridge, subject {first}")


def figure8(results: dict):
    rest = list(results["subjects"])[1:]
    if not rest:
        return None
    return _grid(results, rest, "Figure 8: the remaining subjects")


def noise_ceilings(results: dict):
    subjects = list(results["subjects"])
    fig, ax = plt.subplots(figsize=(5, 3), constrained_layout=True)
    edges = np.linspace(0, 100, 21)
    centres = (edges[:-1] + edges[1:]) / 2
    for s in subjects:
        nc = results["subjects"][s]["noise_ceiling"]
        ax.plot(
            centres, nc["histogram"], marker="o", ms=3, label=f"subject {s} (mean {nc['mean']:.1f})"
        )
    ax.set_xlabel("noise ceiling (% variance)")
    ax.set_ylabel("voxels")
    ax.legend(frameon=False, fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def save_all(results: dict, directory) -> list[Path]:
    """Write every figure as PNG and PDF under ``directory``."""
    directory = Path(directory)
    paths = []
    for stem, make in (
        ("figure5_brain_ridge", figure5),
        ("figure8_brain_ridge_other_subjects", figure8),
        ("noise_ceilings", noise_ceilings),
    ):
        fig = make(results)
        if fig is None:
            continue
        paths += _io.save_figure(fig, directory / stem)
        plt.close(fig)
    return paths
