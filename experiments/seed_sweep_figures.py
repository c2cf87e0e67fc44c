"""Figures of the seed sweep, drawn from ``results.json`` alone: alignment gains with their
spread across seed pairs, and the scores behind them."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from experiments import figure_style as style


def _per_k(results, key):
    """``{k: (sizes, means, stds, per-pair values)}`` of one gain across sizes."""
    out = {}
    for n, res in results["sizes"].items():
        for k, rec in res["k"].items():
            g = rec["gains"][key]["percent"]
            out.setdefault(k, ([], [], [], []))
            for lst, v in zip(out[k], (int(n), g["mean"], g["std"], g["pairs"]), strict=True):
                lst.append(v)
    return out


def gains_figure(results):
    """Relative gain (%) of SAE->SAE soft-matching and SAE->Neuron ridge over Neuron->Neuron,
    per N and k: mean across pairs with std error bars, every pair as a faint dot."""
    panels = (
        ("soft_matching_sae_sae", "soft-matching: SAE→SAE vs Neuron→Neuron"),
        ("ridge_sae_neuron", "ridge: SAE→Neuron vs Neuron→Neuron"),
    )
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    n_pairs = next(iter(results["sizes"].values()))["pairs"]
    for ax, (key, title) in zip(axes, panels, strict=True):
        per_k = _per_k(results, key)
        ks = sorted(per_k, key=int)
        for j, k in enumerate(ks):
            sizes, means, stds, pairs = per_k[k]
            x = np.log2(sizes) + (j - (len(ks) - 1) / 2) * 0.05
            color = style.sequence_color(j, len(ks))
            for xi, vals in zip(x, pairs, strict=True):
                ax.scatter(np.full(len(vals), xi), vals, s=4, color=color, alpha=0.25)
            ax.errorbar(x, means, yerr=stds, marker="o", capsize=3, color=color, label=f"k = {k}")
        sizes = sorted({int(n) for n in results["sizes"]})
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(np.log2(sizes), [str(n) for n in sizes])
        style.finish(
            ax,
            "hidden neurons N",
            "alignment gain (%), mean ± std across pairs",
            title=f"{title} ({n_pairs} seed pairs)",
            title_size=10,
        )
    axes[0].legend(frameon=False, fontsize=8)
    return fig


def scores_figure(results):
    """Soft-matching scores per N (Neuron->Neuron and SAE->SAE, RandSAE->SAE per k)."""
    sizes = list(results["sizes"])
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    x = np.log2([int(n) for n in sizes])
    nn = [results["sizes"][n]["neuron_neuron"]["soft_matching"] for n in sizes]
    ax.errorbar(
        x,
        [r["mean"] for r in nn],
        [r["std"] for r in nn],
        color="k",
        marker="s",
        capsize=3,
        label=style.LABELS["neuron_neuron"],
    )
    ks = sorted(next(iter(results["sizes"].values()))["k"], key=int)
    for j, k in enumerate(ks):
        color = style.sequence_color(j, len(ks))
        for cond, line in (("sae_sae", "-"), ("randsae_sae", ":")):
            recs = [results["sizes"][n]["k"][k]["soft_matching"][cond] for n in sizes]
            label = f"{style.LABELS[cond]}, k = {k}"
            ax.errorbar(
                x,
                [r["mean"] for r in recs],
                [r["std"] for r in recs],
                color=color,
                ls=line,
                marker="o",
                capsize=3,
                label=label,
            )
    ax.set_xticks(x, sizes)
    style.finish(
        ax,
        "hidden neurons N",
        "soft-matching score (mean ± std across pairs)",
        ylim=(0, 1.05),
        legend=dict(fontsize=7, ncol=2),
    )
    return fig


def figures(results: dict) -> dict:
    """Every figure of the sweep, by file stem."""
    return {"seed_sweep_gains": gains_figure(results), "seed_sweep_scores": scores_figure(results)}
