"""CKA, RSA and the rotation score in the toy and theory experiments.

The toy experiment (tiny preset, command line, in the background queue of conftest.py) writes
every new metric for every condition, each equal to the library's metric called on the saved
activations, and the figure of which metrics superposition deflates. The theory experiment's CKA
(both estimators) and rotation scores meet their closed forms.
"""

import dataclasses
import json
from pathlib import Path

import jax
import matplotlib.patches
import matplotlib.pyplot as plt
import numpy as np
import pytest
from experiment_checks import check_figures, check_record, job_fixture, tiny_toy_job

import superalign
from experiments import theory as theory_experiment
from experiments import theory_figures, toy_figures, toy_models
from experiments.configs import theory as theory_configs
from superalign import theory

ROOT = Path(__file__).resolve().parents[1]
NEW_METRICS = {
    "cka": superalign.cka,
    "rsa": superalign.rsa,
    "rotation_score": superalign.rotation_score,
}
POPULATIONS = {"neuron": "neurons", "sae": "sae", "randsae": "randsae"}

# The tiny preset at two sizes, shared with test_toy_experiment (see experiment_checks.py); it
# runs in the background from the start of the session and the tests that need it run once it
# is done.
BACKGROUND = {"tiny_toy": tiny_toy_job}
tiny_toy = job_fixture("tiny_toy", tiny_toy_job)


def test_toy_results_hold_every_metric_equal_to_direct_calls(tiny_toy):
    out, stdout = tiny_toy
    results = json.loads((out / "results.json").read_text())
    cfg = results["config"]
    assert cfg["rsa_max_stimuli"] == 1_000
    n_folds, seed = cfg["n_folds"], cfg["fold_seed"]
    assert len(cfg["sizes"]) == 2
    acts = out / "activations"
    for n in cfg["sizes"]:
        res = results["sizes"][str(n)]
        assert set(toy_models.METRICS) <= set(res)

        def load(pop, seed, n=n):
            return np.load(acts / f"N{n}_{POPULATIONS[pop]}_seed{seed}.npy")

        for metric, fn in NEW_METRICS.items():
            # The matching conditions, no others (the conditions of superalign.compare).
            assert sorted(res[metric]) == sorted(toy_models.MATCHING), metric
            for cond in toy_models.MATCHING:
                record = res[metric][cond]
                check_record(record, n_folds)
                src, tgt = cond.split("_")
                X, Y = load(src, cfg["seeds"][0]), load(tgt, cfg["seeds"][1])
                kw = dict(n_folds=n_folds, seed=seed)
                if metric == "rsa":
                    kw["max_stimuli"] = cfg["rsa_max_stimuli"]
                direct = fn(X, Y, **kw)
                # The same compiled computation on the same float32 values.
                np.testing.assert_allclose(record["folds"], direct.folds, rtol=0, atol=1e-6)
                np.testing.assert_array_equal(record["dead_x"], direct.dead_x)
                np.testing.assert_array_equal(record["dead_y"], direct.dead_y)
                if metric == "rsa":  # every fold's test part (about 1,707 rows) was subsampled
                    assert record["n_stimuli"] == [cfg["rsa_max_stimuli"]] * n_folds
                    np.testing.assert_array_equal(record["n_stimuli"], direct.n_stimuli)
        # The summary's table shows the new metrics.
        for metric in NEW_METRICS:
            assert f"| {n} | {metric} |" in stdout


def test_toy_deflation_figure_shows_every_metric(tiny_toy):
    out, _ = tiny_toy
    check_figures(out / "figures", ["metrics_deflation"])
    results = json.loads((out / "results.json").read_text())
    sizes = [results["sizes"][str(n)] for n in results["config"]["sizes"]]
    fig = toy_figures.deflation_figure(results)
    try:
        axes = [ax for ax in fig.axes if ax.get_visible()]
        assert [ax.get_title() for ax in axes] == [
            "soft-matching",
            "semi-matching",
            "ridge regression",
            "CKA",
            "RSA",
            "rotation score",
        ]
        for ax, metric in zip(axes, toy_figures.DEFLATION_METRICS, strict=True):
            # Per condition, Neuron->Neuron, SAE->SAE, RandSAE->SAE (ridge has no RandSAE->SAE),
            # one bar per size, each as high as the fold mean in results.json.
            conds = [c for c in toy_figures.DEFLATION_CONDITIONS if c in sizes[0][metric]]
            bars = [p for p in ax.patches if isinstance(p, matplotlib.patches.Rectangle)]
            heights = [b.get_height() for b in bars]
            means = [res[metric][c]["mean"] for c in conds for res in sizes]
            np.testing.assert_allclose(heights, means)
            assert len(conds) == (2 if metric == "ridge" else 3)
    finally:
        plt.close(fig)


# Theory: the tiny preset's features, more samples and lighter tails (K = F / 2: E z^4 = 3F/K),
# so that the sampling error and the biased CKA estimator's excess (of order F E z^4 / n per
# fold) stay well inside 0.01; settings 1 and 2 only, measuring only the new metrics (the others
# are tested in test_theory.py).
THEORY = dataclasses.replace(
    theory_configs.tiny(), n_samples=6_000, latent_k=8, levels=(1, 2, 4), groups=(2,)
)
NEW_THEORY = ("cka", "cka_debiased", "rotation")


@pytest.fixture(scope="module")
def theory_parts():
    key = jax.random.fold_in(jax.random.key(THEORY.seed), 0)  # the experiment's settings 1-2
    Z = theory.sparse_latents(key, THEORY.n_samples, THEORY.n_features, THEORY.latent_k)
    return {
        "config": dataclasses.asdict(THEORY),
        "levels": theory_experiment.levels(THEORY, Z, progress=False, metrics=NEW_THEORY),
        "patterns": theory_experiment.patterns(THEORY, Z, progress=False, metrics=NEW_THEORY),
    }


def test_theory_cka_and_rotation_meet_their_closed_forms(theory_parts):
    f = THEORY.n_features
    entries = [
        (r, theory.level_cka(f, int(n)), theory.level_rotation(f, int(n)))
        for n, r in theory_parts["levels"].items()
    ]
    entries += [
        (
            r,
            theory.shift_cka(r["group"], r["shift"]),
            theory.shift_rotation(f, r["group"], r["shift"]),
        )
        for r in theory_parts["patterns"].values()
    ]
    assert len(entries) == 6
    for r, cka, rotation in entries:
        closed = {"cka": cka, "cka_debiased": cka, "rotation": rotation}
        for m in NEW_THEORY:
            assert r["closed_form"][m] == pytest.approx(closed[m], abs=1e-12)
            assert r["population"][m] == pytest.approx(closed[m], abs=1e-6)
            assert r["measured"][m]["mean"] == pytest.approx(closed[m], abs=0.01), (m, r)
            assert len(r["measured"][m]["folds"]) == THEORY.n_folds
    # The settings are not trivial: groups of 2 shifted by 1 deflate both scores (1/2 and about
    # 0.64 in population), less than the permutation score (1/2 exactly equals CKA here).
    shifted = theory_parts["patterns"]["2_1"]["closed_form"]
    assert shifted["cka"] == pytest.approx(0.5) and 0.6 < shifted["rotation"] < 0.7


def test_theory_figures_show_the_new_metrics(theory_parts):
    for figure in (theory_figures.levels_figure, theory_figures.patterns_figure):
        fig = figure(theory_parts)
        try:
            legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
            labels = [t.get_text() for legend in legends for t in legend.texts]
        finally:
            plt.close(fig)
        for m in ("cka", "rotation"):
            assert any(label.startswith(theory_figures.LABELS[m]) for label in labels), (m, labels)
