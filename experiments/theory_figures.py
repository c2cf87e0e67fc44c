"""Figures of the section-3 theory experiment, drawn from ``results.json`` alone."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from experiments import figure_style as style
from experiments.figure_style import METRIC_COLORS as COLORS
from experiments.figure_style import METRIC_LABELS as LABELS

LEVEL_METRICS = (
    "permutation",
    "soft",
    "semi",
    "ridge",
    "ridge_reverse",
    "cka",
    "cka_debiased",
    "rotation",
)
"""The metrics of setting 1's figure and of the table figure, in the order of their markers."""


def levels_figure(results):
    """Setting 1: every metric against n, with the closed forms."""
    lev = results["levels"]
    ns = np.array([int(n) for n in lev])
    fig, ax = plt.subplots(figsize=(5.5, 4), constrained_layout=True)
    grid = np.linspace(1, ns.max(), 200)
    ax.plot(grid, 1 / np.sqrt(grid), color="k", lw=1, label="1/√n")
    ax.plot(
        ns,
        [lev[str(n)]["closed_form"]["ridge_reverse"] for n in ns],
        "k--",
        lw=1,
        label="√(rank(A_b)/F)",
    )
    for m, ls in (("cka", ":"), ("rotation", "-.")):
        closed = [lev[str(n)]["closed_form"][m] for n in ns]
        ax.plot(ns, closed, ls, color=COLORS[m], lw=1, label=f"{LABELS[m]} (closed form)")
    metrics = [m for m in LEVEL_METRICS if m in lev[str(ns[0])]["measured"]]
    for j, m in enumerate(metrics):
        means = [lev[str(n)]["measured"][m]["mean"] for n in ns]
        off = (j - (len(metrics) - 1) / 2) * 0.05
        ax.plot(ns + off, means, "o", ms=4, color=COLORS[m], label=LABELS[m])
    style.finish(
        ax,
        "features mixed per unit of system b (n)",
        "score (A_a = I)",
        ylim=(0, 1.05),
        title="1. different sparsity levels",
        legend=dict(fontsize=6, ncol=2),
    )
    return fig


def patterns_figure(results):
    """Setting 2: G for pairs vs shifted pairs, and the scores against the overlap."""
    pat = results["patterns"]
    f = results["config"]["n_features"]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    # G = A_a^T A_b for g = 2, s = 1 (first 8 units), from the construction itself.
    g = 2
    n_show = min(8, f // g)
    feats = np.arange(f)
    a = np.stack([(feats // g == k) for k in range(f // g)], 1) / np.sqrt(g)
    b = np.stack([((feats - 1) % f // g == k) for k in range(f // g)], 1) / np.sqrt(g)
    G = (a.T @ b)[:n_show, :n_show]
    im = ax0.imshow(G, cmap="Greys", vmin=0, vmax=1)
    ax0.set_title("G = A_aᵀA_b: pairs vs shifted pairs")
    ax0.set_xlabel("unit of b: (2,3), (4,5), …")
    ax0.set_ylabel("unit of a: (1,2), (3,4), …")
    fig.colorbar(im, ax=ax0, shrink=0.8)
    o = np.linspace(0, 1, 201)
    ax1.plot(o, np.maximum(o, 1 - o), color="k", lw=1, label="max(o, 1−o)")
    ax1.plot(o, np.sqrt(o**2 + (1 - o) ** 2), "k--", lw=1, label="√(o² + (1−o)²)")
    ax1.plot(o, o**2 + (1 - o) ** 2, ":", color=COLORS["cka"], lw=1, label="o² + (1−o)² (CKA)")
    markers = {2: "o", 4: "s", 8: "^"}
    shown = [m for m in ("permutation", "ridge", "cka", "rotation") if m in _first(pat)]
    for r in pat.values():
        mk = markers.get(r["group"], "D")
        # The rotation score's closed form also depends on the number of groups F / g.
        if "rotation" in shown:
            ax1.plot(r["overlap"], r["closed_form"]["rotation"], "k_", ms=8)
        for m in shown:
            ax1.plot(
                r["overlap"],
                r["measured"][m]["mean"],
                mk,
                ms=5,
                color=COLORS[m],
                mfc="none" if m == "ridge" else COLORS[m],
            )
    for grp, mk in markers.items():
        if any(r["group"] == grp for r in pat.values()):
            ax1.plot([], [], mk, color="grey", label=f"g = {grp}")
    for m in shown:
        mfc = "none" if m == "ridge" else COLORS[m]
        ax1.plot([], [], "s", color=COLORS[m], mfc=mfc, label=f"{LABELS[m]} (measured)")
    if "rotation" in shown:
        ax1.plot([], [], "k_", ms=8, label="rotation (closed form)")
    style.finish(
        ax1,
        "overlap o = (g − s)/g of a unit with its best partner's support",
        "score",
        ylim=(0.4, 1.05),
        title="2. different sparsity patterns",
        legend=dict(fontsize=6),
    )
    return fig


def _first(mapping) -> dict:
    """The measured scores of the first setting of ``mapping`` (which metrics were scored)."""
    return next(iter(mapping.values()))["measured"]


def recovery_figure(results):
    """Setting 3: units vs recovered latents, and the (K, N) sweep."""
    rec, sw = results["recovery"], results["sweep"]
    ks, ns = np.array(sw["ks"]), np.array(sw["units"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
    ax = axes[0]
    names = {
        "units": "units\nY_a vs Y_b",
        "recovered": "recovered\nẐ_a vs Ẑ_b",
        "recovered_to_units": "recovered → units\nẐ_a vs Y_b",
    }
    x = np.arange(len(names))
    metrics = [
        m
        for m in ("permutation", "soft", "semi", "ridge", "cka", "rotation")
        if m in rec["units"]["measured"]
    ]
    w = 0.8 / len(metrics)
    for j, m in enumerate(metrics):
        vals = [rec[k]["measured"][m]["mean"] for k in names]
        pops = [rec[k]["population"][m] for k in names]
        off = x + (j - (len(metrics) - 1) / 2) * w
        ax.bar(off, vals, w, color=COLORS[m], label=LABELS[m])
        ax.plot(off, pops, "k_", ms=6)
    ax.set_xticks(x, list(names.values()), fontsize=8)
    style.finish(
        ax,
        None,
        "score (bars: measured, ticks: population)",
        ylim=(0, 1.1),
        title=f"3. K = {rec['k']}, N = {rec['n_units']}, F = {results['config']['n_features']}",
        legend=dict(fontsize=7, loc="upper left"),
    )
    for ax, key, title in (
        (axes[1], "recovered_permutation", "Score_perm(Ẑ_a, Ẑ_b)"),
        (axes[2], "exact_fraction_a", "rows recovered exactly (system a)"),
    ):
        im = ax.imshow(
            np.asarray(sw[key]), origin="lower", cmap="viridis", vmin=0, vmax=1, aspect="auto"
        )
        ax.set_xticks(np.arange(len(ns)), ns)
        ax.set_yticks(np.arange(len(ks)), ks)
        ax.set_xlabel("units N")
        ax.set_ylabel("sparsity K")
        ax.set_title(title)
        fig.colorbar(im, ax=ax, shrink=0.85)
        # Where the rule of thumb N = 2 K ln F sits, in grid coordinates.
        bound = np.interp(sw["omp_guarantee_units"], ns, np.arange(len(ns)), right=np.nan)
        ax.plot(bound, np.arange(len(ks)), "w--", lw=1, label="N = 2 K ln F")
        ax.legend(frameon=False, fontsize=7, labelcolor="w", loc="upper left")
    return fig


def sweep_units_figure(results):
    """Score_perm of the units against N next to the recovered latents' at each K."""
    sw = results["sweep"]
    ns = np.array(sw["units"])
    fig, ax = plt.subplots(figsize=(5.5, 4), constrained_layout=True)
    for i, k in enumerate(sw["ks"]):
        ax.plot(
            ns,
            sw["recovered_permutation"][i],
            "-o",
            ms=3,
            color=style.sequence_color(i, len(sw["ks"])),
            label=f"Ẑ, K = {k}",
        )
    ax.plot(ns, sw["units_permutation_population"], "-s", color="k", ms=4, label="units Y")
    style.finish(ax, "units N", "Score_perm", ylim=(0, 1.05), legend=dict(fontsize=7, ncol=2))
    return fig


def table_figure(results):
    """Setting 4: every metric on every setting (bars measured, ticks population)."""
    rows = results["table"]
    metrics = [m for m in LEVEL_METRICS if m in rows[0]["measured"]]
    fig, ax = plt.subplots(figsize=(13, 4.2), constrained_layout=True)
    x = np.arange(len(rows))
    w = 0.8 / len(metrics)
    for j, m in enumerate(metrics):
        off = x + (j - (len(metrics) - 1) / 2) * w
        ax.bar(off, [r["measured"][m] for r in rows], w, color=COLORS[m], label=LABELS[m])
        ax.plot(off, [r["population"][m] for r in rows], "k_", ms=8)
    ax.set_xticks(x, [r["setting"].replace(" vs ", "\nvs ") for r in rows], fontsize=8)
    style.finish(
        ax, None, "score", ylim=(0, 1.15), legend=dict(ncol=len(metrics), loc="upper center")
    )
    return fig


def figures(results) -> dict:
    """Every figure of the experiment, by file stem."""
    return {
        "theory1_sparsity_levels": levels_figure(results),
        "theory2_sparsity_patterns": patterns_figure(results),
        "theory3_recovery": recovery_figure(results),
        "theory3_sweep_units": sweep_units_figure(results),
        "theory4_metrics_table": table_figure(results),
    }
