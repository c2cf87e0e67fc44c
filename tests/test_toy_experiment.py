"""The toy experiment end to end on a tiny config, including a SIGKILL and resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_regression import _sklearn_loop

import superalign
from experiments import _io, toy_models
from experiments.configs import toy_models as configs

TINY = [
    "--config.n_features=16",
    "--config.sizes=(4,)",
    "--config.batch_size=64",
    "--config.sae_latents=16",
    "--config.sae_k=3",
    "--config.n_folds=3",
    "--no-progress",
]
ROOT = Path(__file__).resolve().parents[1]
# The command-line runs of one test session share a JAX compilation cache (only the subprocesses:
# in-process tests that count compilations must see every one), so the repeated runs of the same
# tiny config reuse the compiled programs of the first. Same programs, same numbers.
_CACHE = {
    "JAX_COMPILATION_CACHE_DIR": "",
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}


@pytest.fixture(scope="module", autouse=True)
def _compilation_cache(tmp_path_factory):
    _CACHE["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax_cache"))


def _env():
    return {**os.environ, **_CACHE} if _CACHE["JAX_COMPILATION_CACHE_DIR"] else None


def _run(out, *extra):
    return subprocess.run(
        [sys.executable, "-m", "experiments.toy_models", "--out", str(out), *TINY, *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env=_env(),
    )


def _scores(results):
    res = results["sizes"]["4"]
    return {
        (metric, cond): res[metric][cond]["folds"]
        for metric in ("soft_matching", "semi_matching", "ridge")
        for cond in res[metric]
    }


def test_killed_run_resumes_to_identical_results(tmp_path):
    steps = ["--config.n_steps=400", "--config.segment_steps=10"]
    whole = tmp_path / "whole"
    proc = _run(whole, *steps, "--save-activations")
    assert "soft_matching" in proc.stdout  # the summary table
    results = json.loads((whole / "results.json").read_text())

    # Layout and content of results.json.
    assert results["config"]["sizes"] == [4] and results["config"]["n_steps"] == 400
    assert "jax" in results["versions"]
    res = results["sizes"]["4"]
    for metric, conds in (
        ("soft_matching", toy_models.MATCHING),
        ("semi_matching", toy_models.MATCHING),
        ("ridge", toy_models.RIDGE),
    ):
        for cond in conds:
            r = res[metric][cond]
            assert len(r["folds"]) == 3
            assert r["mean"] == pytest.approx(np.mean(r["folds"]))
            assert r["sem"] == pytest.approx(np.std(r["folds"], ddof=1) / np.sqrt(3))
    assert len(res["arrangement_best_match"]) == 4
    assert len(res["recovery"]["neurons"]) == len(res["recovery"]["sae"]) == 16
    for name in (
        "figure2_superposition_softmatching",
        "figure4_top_ridge",
        "figure6_recovery",
        "figure7_top_semimatching",
    ):
        for ext in ("png", "pdf"):
            assert (whole / "figures" / f"{name}.{ext}").stat().st_size > 1000

    # The scores agree with the exact LP and a plain scikit-learn RidgeCV loop on the activations.
    acts = whole / "activations"
    for cond, (src, tgt) in {
        "neuron_neuron": ("neurons", "neurons"),
        "sae_sae": ("sae", "sae"),
    }.items():
        X, Y = np.load(acts / f"N4_{src}_seed0.npy"), np.load(acts / f"N4_{tgt}_seed1.npy")
        exact = superalign.soft_matching(X, Y, n_folds=3, solver="exact")
        np.testing.assert_allclose(res["soft_matching"][cond]["folds"], exact.folds, atol=1e-3)
    for cond, (src, tgt) in {
        "neuron_neuron": ("neurons", "neurons"),
        "sae_neuron": ("sae", "neurons"),
    }.items():
        r = res["ridge"][cond]
        X = np.delete(np.load(acts / f"N4_{src}_seed0.npy"), r["dead_x"], axis=1)
        Y = np.delete(np.load(acts / f"N4_{tgt}_seed1.npy"), r["dead_y"], axis=1)
        chosen, scores = _sklearn_loop(X, Y, 10.0 ** np.arange(-8, 9), n_folds=3)
        np.testing.assert_array_equal(r["alpha"], chosen)
        np.testing.assert_allclose(r["folds"], scores, atol=1e-4)

    # Kill a second run with SIGKILL once its SAE stage has checkpointed, then resume it.
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "experiments.toy_models", "--out", str(killed), *TINY, *steps]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env()
    )
    sae_ckpt = killed / "checkpoints" / "sae_N4"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if sae_ckpt.exists() and any(p.name.isdigit() for p in sae_ckpt.iterdir()):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.json").exists()
    _run(killed, *steps)
    resumed = json.loads((killed / "results.json").read_text())
    assert _scores(resumed) == _scores(results)

    # A finished stage is reused: a third call recomputes nothing and gives the same file.
    before = (killed / "sizes" / "N4.json").stat().st_mtime_ns
    _run(killed, *steps)
    assert (killed / "sizes" / "N4.json").stat().st_mtime_ns == before


def test_another_config_in_the_same_directory_is_refused(tmp_path):
    cfg = configs.quick()
    _io.write_json(tmp_path / "config.json", {"n_steps": 3})
    with pytest.raises(ValueError, match="another config"):
        toy_models.run(cfg, tmp_path)


def test_overrides_are_typed():
    cfg = _io.apply_overrides(configs.get_config(), ["--config.sizes=(16,)", "--config.lr=1e-2"])
    assert cfg.sizes == (16,) and cfg.lr == 0.01
    with pytest.raises(ValueError, match="unknown config field"):
        _io.apply_overrides(cfg, ["--config.nope=1"])
    with pytest.raises(ValueError, match="must be a int"):
        _io.apply_overrides(cfg, ["--config.n_steps=abc"])


def test_bad_config_fails_before_any_work(tmp_path):
    cfg = _io.apply_overrides(configs.get_config(), ["--config.sae_k=100"])
    with pytest.raises(ValueError, match="k must be in 1..n_latents"):
        toy_models.run(cfg, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_streamed_recovery_equals_full_arrays():
    rng = np.random.default_rng(0)
    z = (rng.random((3000, 6)) < 0.2) * rng.random((3000, 6))
    units = np.maximum(z @ rng.normal(size=(6, 4)) + 0.1 * rng.normal(size=(3000, 4)), 0)
    units[:, 3] = 0.0  # a dead unit correlates 0
    moments = toy_models._RecoveryMoments()
    for lo in range(0, 3000, 700):
        moments.add(z[lo : lo + 700].astype(np.float32), units[lo : lo + 700].astype(np.float32))
    expected = superalign.feature_recovery(z, units)
    np.testing.assert_allclose(moments.best_correlations(), expected, rtol=1e-4, atol=1e-5)


def _check_quick_outputs(out: Path) -> None:
    """Every output of the quick preset exists, and its scores equal the independent references."""
    cfg = configs.quick()
    results = json.loads((out / "results.json").read_text())
    assert results["config"] == json.loads((out / "config.json").read_text())
    assert results["config"]["n_steps"] == cfg.n_steps
    assert {"python", "jax", "ott-jax", "numpy"} <= set(results["versions"])
    for name in (
        "figure2_superposition_softmatching",
        "figure4_top_ridge",
        "figure6_recovery",
        "figure7_top_semimatching",
    ):
        for ext in ("png", "pdf"):
            assert (out / "figures" / f"{name}.{ext}").stat().st_size > 1000
    acts = out / "activations"
    n_rows = round(cfg.n_steps * (1 - cfg.train_fraction)) * cfg.batch_size
    assert sorted(results["sizes"]) == sorted(str(n) for n in cfg.sizes)
    for n in cfg.sizes:
        res = results["sizes"][str(n)]
        assert (out / "sizes" / f"N{n}.json").exists()
        for metric, conds in (
            ("soft_matching", toy_models.MATCHING),
            ("semi_matching", toy_models.MATCHING),
            ("ridge", toy_models.RIDGE),
        ):
            assert sorted(res[metric]) == sorted(conds)
            for cond in conds:
                r = res[metric][cond]
                assert len(r["folds"]) == cfg.n_folds and np.isfinite(r["folds"]).all()
                assert r["mean"] == pytest.approx(np.mean(r["folds"]))
                assert r["sem"] == pytest.approx(np.std(r["folds"], ddof=1) / np.sqrt(cfg.n_folds))
        shared = res["shared_features"]  # indices of the features both models represent
        assert 0 < len(shared) <= cfg.n_features and len(set(shared)) == len(shared)
        assert len(res["arrangement_best_match"]) == n
        assert len(res["recovery"]["neurons"]) == len(res["recovery"]["sae"]) == cfg.n_features
        pops = {"neuron": "neurons", "sae": "sae", "randsae": "randsae"}
        shapes = {"neurons": n, "sae": cfg.sae_latents, "randsae": cfg.sae_latents}
        for pop, width in shapes.items():
            for seed in (0,) if pop == "randsae" else cfg.seeds:
                assert np.load(acts / f"N{n}_{pop}_seed{seed}.npy", mmap_mode="r").shape == (
                    n_rows,
                    width,
                )

        def pair(cond, n=n, pops=pops):
            src, tgt = cond.split("_")
            return (
                np.load(acts / f"N{n}_{pops[src]}_seed0.npy"),
                np.load(acts / f"N{n}_{pops[tgt]}_seed1.npy"),
            )

        # Soft-matching: every condition against the exact LP on the saved activations.
        for cond in toy_models.MATCHING:
            exact = superalign.soft_matching(*pair(cond), solver="exact")
            np.testing.assert_allclose(res["soft_matching"][cond]["folds"], exact.folds, atol=1e-3)
        # Ridge: against a plain scikit-learn RidgeCV loop. To keep CI fast, only at the smallest
        # size and for the conditions with neuron targets (float64 leave-one-out over 64 SAE
        # targets would dominate the suite; SAE->SAE runs the same code path).
        if n == min(cfg.sizes):
            for cond in ("neuron_neuron", "sae_neuron", "randsae_neuron"):
                r = res["ridge"][cond]
                X, Y = pair(cond)
                X, Y = np.delete(X, r["dead_x"], axis=1), np.delete(Y, r["dead_y"], axis=1)
                chosen, scores = _sklearn_loop(X, Y, 10.0 ** np.arange(-8, 9))
                np.testing.assert_array_equal(r["alpha"], chosen)
                np.testing.assert_allclose(r["folds"], scores, atol=1e-4)


def _quick_job(factory):
    """``python -m experiments.toy_models --quick --save-activations`` into a fresh folder."""
    out = factory.mktemp("quick") / "quick"
    args = [sys.executable, "-m", "experiments.toy_models", "--quick", "--out", str(out)]
    return out, dict(args=[*args, "--no-progress", "--save-activations"], cwd=ROOT)


# The quick preset runs in the background from the start of the session; its test runs last
# (see conftest.py).
BACKGROUND = {"quick_run": _quick_job}


@pytest.fixture
def quick_run(background, tmp_path_factory):
    """``(out folder, stdout)`` of the quick preset's command-line run."""
    out, proc = background.completed(__name__, "quick_run", _quick_job, tmp_path_factory)
    return out, proc.stdout


def test_quick_preset_end_to_end(quick_run):
    out, stdout = quick_run
    assert "Neuron->Neuron" in stdout or "neuron_neuron" in stdout
    _check_quick_outputs(out)
