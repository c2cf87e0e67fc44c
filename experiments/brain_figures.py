"""Figures of the DNN->brain experiment, drawn from ``results.json`` alone.

Figure 5 (the first subject: a group of bars per DNN), figure 8 (the other subjects: a row each) and
the subjects' noise-ceiling distributions. Bars are ridge scores divided by the subject's mean
noise ceiling (NC / 100), with the standard error over folds; the label above each DNN's bars
is the change of SAE->Voxel over Neuron->Voxel.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from experiments import figure_style as style


def _panel(ax, scores: dict, title: str) -> None:
    """One subject: a group of bars per DNN (normalised ridge r ± sem), SAE's change labelled."""
    conds = [c for c in style.LABELS if c in next(iter(scores.values()))]
    values = {
        name: {c: (s[c]["normalized_mean"], s[c]["normalized_sem"]) for c in conds}
        for name, s in scores.items()
    }
    style.bar_and_gain(ax, values, conds, ylim=None)
    ax.set_title(title, fontsize=9)


def _grid(results: dict, subjects: list[str], suptitle: str):
    n_dnns = len(results["subjects"][subjects[0]]["dnns"])
    fig, axes = plt.subplots(
        len(subjects),
        1,
        figsize=(1.2 + 2.4 * n_dnns, 2.9 * len(subjects)),
        squeeze=False,
        constrained_layout=True,
    )
    for i, s in enumerate(subjects):
        _panel(axes[i, 0], results["subjects"][s]["dnns"], f"subject {s}")
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
    style.finish(ax, "noise ceiling (% variance)", "voxels", legend=dict())
    return fig


def figures(results: dict) -> dict:
    """Every figure of the experiment, by file stem (figure 8 is None for one subject)."""
    return {
        "figure5_brain_ridge": figure5(results),
        "figure8_brain_ridge_other_subjects": figure8(results),
        "noise_ceilings": noise_ceilings(results),
    }
