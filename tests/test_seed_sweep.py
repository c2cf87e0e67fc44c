"""The seed sweep: vectorised per-pair scores equal the library's, and a tiny sweep end to end."""

import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest
from experiment_checks import TINY_SWEEP_ARGS, check_figures, job_fixture, tiny_sweep_job

import superalign
from experiments import launch, seed_sweep
from experiments.configs import seed_sweep as configs


def _populations(n_seeds=4, m=400, n=6, seed=0):
    """Sparse non-negative units sharing latents, with dead columns of both kinds."""
    rng = np.random.default_rng(seed)
    z = (rng.random((m, 5)) < 0.3) * rng.random((m, 5))
    X = np.stack(
        [
            np.maximum(z @ rng.normal(size=(5, n)) + 0.3 * rng.normal(size=(m, n)), 0)
            for _ in range(n_seeds)
        ]
    ).astype(np.float32)
    X[1, :, 2] = 0.0  # dead everywhere
    X[2, :, 4] = 0.0
    X[2, :3, 4] = 1.0 + rng.random(3)  # zero on most rows: dead (all zero in some fold part)
    X[3, :, 0] = 0.0
    X[3, :, 5] = 0.0
    return X


def _compile_events():
    events = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, *_a, **_k: (
            events.append(name) if name == "/jax/core/compile/backend_compile_duration" else None
        )
    )
    return events


def test_pairs_equal_the_library_pair_by_pair():
    X = _populations()
    src, tgt = [0, 2], [1, 3]
    kw = dict(n_folds=3, seed=0)
    got = seed_sweep.align_pairs(X, X, src, tgt, metrics=("matching", "ridge"), **kw)
    for p, (a, b) in enumerate(zip(src, tgt, strict=True)):
        soft = superalign.soft_matching(X[a], X[b], n_folds=3, seed=0)
        exact = superalign.soft_matching(X[a], X[b], n_folds=3, seed=0, solver="exact")
        semi = superalign.semi_matching(X[a], X[b], n_folds=3, seed=0)
        ridge = superalign.ridge_regression(X[a], X[b], n_folds=3, seed=0)
        np.testing.assert_allclose(got["soft_matching"]["folds"][p], soft.folds, atol=2e-5)
        np.testing.assert_allclose(got["soft_matching"]["folds"][p], exact.folds, atol=1e-3)
        assert got["soft_matching"]["converged"][p].all()
        np.testing.assert_allclose(got["semi_matching"]["folds"][p], semi.folds, atol=1e-6)
        np.testing.assert_allclose(got["ridge"]["folds"][p], ridge.folds, atol=2e-5)
        np.testing.assert_array_equal(got["ridge"]["alpha"][p], ridge.alpha)
        assert got["dead_x"][p] == len(soft.dead_x) and got["dead_y"][p] == len(soft.dead_y)
    assert got["dead_y"].tolist() == [1, 2]  # the masked units really were dead ones

    # Other seeds (other dead units) with the same shapes: no recompilation.
    events = _compile_events()
    again = seed_sweep.align_pairs(X[::-1].copy(), X, src, tgt, metrics=("matching", "ridge"), **kw)
    assert events == [], "a second call with the same shapes recompiled"
    assert not np.allclose(again["ridge"]["folds"], got["ridge"]["folds"])


def test_spread_and_gain():
    s = seed_sweep.spread([0.1, 0.3, 0.2])
    assert s["mean"] == pytest.approx(0.2) and s["std"] == pytest.approx(0.1)
    assert s["sem"] == pytest.approx(0.1 / np.sqrt(3)) and (s["min"], s["max"]) == (0.1, 0.3)
    g = seed_sweep.gain(seed_sweep.spread([0.5, 0.4]), seed_sweep.spread([0.6, 0.3]))
    np.testing.assert_allclose(g["percent"]["pairs"], [20.0, -25.0])
    assert g["fraction_positive"] == 0.5


# The tiny sweep from the command line (shared with test_distributed, see experiment_checks.py):
# seed_sweep.run, then its summary table. It runs in the background with the session; its test
# runs once it is done (see conftest.py).
BACKGROUND = {"tiny_sweep": tiny_sweep_job}
tiny_sweep = job_fixture("tiny_sweep", tiny_sweep_job)


def test_tiny_sweep_end_to_end(tiny_sweep, tmp_path):
    out, printed = tiny_sweep
    cfg = launch.apply_overrides(configs.get_config("tiny"), list(TINY_SWEEP_ARGS[2:]))
    tmp_path = tmp_path / "copy"  # the run's folder is shared with test_distributed
    shutil.copytree(out, tmp_path)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["config"]["n_pairs"] == 2 and "jax" in on_disk["versions"]
    assert on_disk["heldout_rows"] == 40 * 64
    res = on_disk["sizes"]["4"]
    assert set(res["k"]) == {"2", "3"}
    for rec in [res["neuron_neuron"]] + [res["k"][k]["soft_matching"] for k in ("2", "3")]:
        for summary in rec.values() if "sae_sae" in rec else [rec["soft_matching"]]:
            pairs = np.asarray(summary["pairs"])
            assert pairs.shape == (2,)
            np.testing.assert_allclose(pairs, np.mean(summary["folds"], axis=1))
            assert summary["mean"] == pytest.approx(pairs.mean())
            assert summary["std"] == pytest.approx(pairs.std(ddof=1))
    for k in ("2", "3"):
        g = res["k"][k]["gains"]["soft_matching_sae_sae"]["absolute"]["pairs"]
        expected = np.subtract(
            res["k"][k]["soft_matching"]["sae_sae"]["pairs"],
            res["neuron_neuron"]["soft_matching"]["pairs"],
        )
        np.testing.assert_allclose(g, expected)
    check_figures(tmp_path / "figures", ("seed_sweep_gains", "seed_sweep_scores"))
    assert "soft gain" in printed  # seed_sweep.summary_table of the run's results
    # A finished size is reused; another config in the same folder is refused.
    before = (tmp_path / "sizes" / "N4.json").stat().st_mtime_ns
    seed_sweep.run(cfg, tmp_path, progress=False)
    assert (tmp_path / "sizes" / "N4.json").stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="another config"):
        seed_sweep.run(dataclasses.replace(cfg, n_pairs=4), tmp_path, progress=False)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("n_pairs", 1, "n_pairs"),
        ("sae_ks", (3, 100), "sae_ks"),
        ("sae_ks", (3, 3), "sae_ks"),
        ("heldout_steps", 10**6, "heldout_steps"),
        ("group_size", 0, "group_size"),
        ("sizes", (), "sizes"),
        ("segment_steps", 0, "segment_steps"),
    ],
)
def test_bad_config_fails_before_any_work(tmp_path, field, value, match):
    cfg = dataclasses.replace(configs.get_config(), **{field: value})
    with pytest.raises(ValueError, match=match):
        seed_sweep.run(cfg, tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()


def test_overrides_are_typed():
    overrides = ["--config.sae_ks=(5,)", "--config.n_pairs=4", "--config.sae.n_latents=32"]
    cfg = launch.apply_overrides(configs.get_config(), overrides)
    assert cfg.sae_ks == (5,) and cfg.n_pairs == 4
    assert cfg.seeds == tuple(range(8))
    assert cfg.sae_config(16) == superalign.toy_config(16, n_latents=32, k=5)
    assert cfg.toy_config(16) == superalign.ToyConfig(n_hidden=16)
    with pytest.raises(ValueError, match="sae.k is set for each run from sae_ks"):
        launch.apply_overrides(cfg, ["--config.sae.k=5"]).validate()
