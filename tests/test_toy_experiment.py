"""The toy experiment end to end on the tiny preset at two sizes, including a SIGKILL and resume."""

import json
import subprocess

import numpy as np
import pytest
from experiment_checks import (
    ROOT,
    TINY_TOY_ARGS,
    check_alignment,
    check_figures,
    command,
    job_fixture,
    kill_once_checkpointed,
    tiny_toy_job,
)
from references import sklearn_ridge_loop

import superalign
from experiments import launch, run_files, toy_models
from experiments.configs import toy_models as configs

FIGURES = (
    "figure2_superposition_softmatching",
    "figure4_top_ridge",
    "figure6_recovery",
    "figure7_top_semimatching",
)


def _run(out, *extra):
    return subprocess.run(
        command("toy_models", "--out", out, *TINY_TOY_ARGS, *extra),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )


def _scores(results):
    return {
        (n, metric, cond): res[metric][cond]["folds"]
        for n, res in results["sizes"].items()
        for metric in toy_models.METRICS
        for cond in res[metric]
    }


def _killed_job(factory):
    """A second run killed with SIGKILL once its SAE stage has checkpointed, then run again."""
    killed = factory.mktemp("toy_killed") / "killed"

    def kill_and_resume():
        cmd = command("toy_models", "--out", killed, *TINY_TOY_ARGS)
        if not kill_once_checkpointed(cmd, killed / "checkpoints" / "sae_N4-8", timeout=120):
            return {"running_at_kill": False}
        return {
            "running_at_kill": True,
            "results_after_kill": (killed / "results.json").exists(),
            "resumed": _run(killed),
        }

    return killed, dict(call=kill_and_resume)


# The tiny preset at N = 4 and 8 from the command line (F = 16, batches of 64, SAEs of 16 latents
# with k = 3, 3 folds), shared with test_toy_metrics, and a killed and resumed run of it; they
# run in the background from the start of the session and their tests run once they are done (see
# conftest.py).
BACKGROUND = {"tiny_toy": tiny_toy_job, "killed": _killed_job}
tiny_toy = job_fixture("tiny_toy", tiny_toy_job)


@pytest.fixture
def killed(background, tmp_path_factory):
    """``(out, facts)`` of the killed and resumed run."""
    return background.result(__name__, "killed", _killed_job, tmp_path_factory)


def test_tiny_run_end_to_end(tiny_toy):
    """Every output of a run exists, and its scores equal the independent references."""
    out, stdout = tiny_toy
    assert "soft_matching" in stdout  # the summary table
    results = json.loads((out / "results.json").read_text())
    assert results["config"] == json.loads((out / "config.json").read_text())
    cfg = configs.get_config("tiny")
    assert results["config"]["sizes"] == [4, 8] and results["config"]["toy"]["n_steps"] == 400
    assert {"python", "jax", "ott-jax", "numpy"} <= set(results["versions"])
    check_figures(out / "figures", FIGURES)
    acts = out / "activations"
    n_rows = round(cfg.toy.n_steps * (1 - cfg.toy.train_fraction)) * cfg.toy.batch_size
    assert sorted(results["sizes"]) == sorted(str(n) for n in cfg.sizes)
    for n in cfg.sizes:
        res = results["sizes"][str(n)]
        assert (out / "sizes" / f"N{n}.json").exists()
        check_alignment(res, cfg.n_folds)
        shared = res["shared_features"]  # indices of the features both models represent
        assert 0 < len(shared) <= cfg.toy.n_features and len(set(shared)) == len(shared)
        assert len(res["arrangement_best_match"]) == n
        assert len(res["recovery"]["neurons"]) == len(res["recovery"]["sae"]) == cfg.toy.n_features
        pops = {"neuron": "neurons", "sae": "sae", "randsae": "randsae"}
        shapes = {"neurons": n, "sae": cfg.sae.n_latents, "randsae": cfg.sae.n_latents}
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
            exact = superalign.soft_matching(*pair(cond), n_folds=cfg.n_folds, solver="exact")
            np.testing.assert_allclose(res["soft_matching"][cond]["folds"], exact.folds, atol=1e-3)
        # Ridge: every condition against a plain scikit-learn RidgeCV loop on the activations.
        for cond in toy_models.RIDGE:
            r = res["ridge"][cond]
            X, Y = pair(cond)
            X, Y = np.delete(X, r["dead_x"], axis=1), np.delete(Y, r["dead_y"], axis=1)
            chosen, scores = sklearn_ridge_loop(X, Y, 10.0 ** np.arange(-8, 9), n_folds=cfg.n_folds)
            np.testing.assert_array_equal(r["alpha"], chosen)
            np.testing.assert_allclose(r["folds"], scores, atol=1e-4)


def test_killed_run_resumes_to_identical_results(tiny_toy, killed):
    results = json.loads((tiny_toy[0] / "results.json").read_text())
    out, facts = killed
    assert facts["running_at_kill"], "the run finished before it could be killed"
    assert not facts["results_after_kill"]
    resumed = json.loads((out / "results.json").read_text())
    assert _scores(resumed) == _scores(results)

    # A finished stage is reused: a third call (here in-process) recomputes nothing and gives
    # the same file.
    before = (out / "sizes" / "N4.json").stat().st_mtime_ns
    again = toy_models.run(configs.get_config("tiny"), out, progress=False)
    assert (out / "sizes" / "N4.json").stat().st_mtime_ns == before
    assert _scores(again) == _scores(results)


def test_every_preset_is_valid():
    for name, preset in configs.PRESETS.items():
        cfg = preset()
        cfg.validate()
        assert cfg.toy.batch_size == cfg.sae.batch_size, name


def test_another_config_in_the_same_directory_is_refused(tmp_path):
    cfg = configs.quick()
    run_files.write_json(tmp_path / "config.json", {"n_steps": 3})
    with pytest.raises(ValueError, match="another config"):
        toy_models.run(cfg, tmp_path)


def test_overrides_are_typed():
    overrides = ["--config.sizes=(16,)", "--config.toy.lr=1e-2", "--config.sae.k=5"]
    cfg = launch.apply_overrides(configs.get_config(), overrides)
    assert cfg.sizes == (16,) and cfg.toy.lr == 0.01 and cfg.sae.k == 5
    assert cfg.toy_config(16).n_hidden == 16 and cfg.sae_config(16).n_inputs == 16
    # A list for a tuple field is that tuple (it was a tuple holding the list).
    assert launch.apply_overrides(cfg, ["--config.sizes=[8, 16]"]).sizes == (8, 16)
    with pytest.raises(ValueError, match="unknown config field"):
        launch.apply_overrides(cfg, ["--config.nope=1"])
    with pytest.raises(ValueError, match="unknown config field 'sae.nope'"):
        launch.apply_overrides(cfg, ["--config.sae.nope=1"])
    with pytest.raises(ValueError, match="must be a int"):
        launch.apply_overrides(cfg, ["--config.toy.n_steps=abc"])
    with pytest.raises(ValueError, match="unknown config 'nope'; --config must be one of"):
        configs.get_config("nope")


def test_bad_config_fails_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=r"--config.sae.k=100: k must be in 1..n_latents"):
        launch.apply_overrides(configs.get_config(), ["--config.sae.k=100"])
    for overrides, match in (
        (["--config.sae.batch_size=64"], "sae.batch_size must equal toy.batch_size=1024"),
        (["--config.toy.n_hidden=8"], "toy.n_hidden is set for each run from sizes"),
        (["--config.sizes=()"], "sizes must be distinct"),
    ):
        cfg = launch.apply_overrides(configs.get_config(), overrides)
        with pytest.raises(ValueError, match=match):
            toy_models.run(cfg, tmp_path / "bad")
        assert not (tmp_path / "bad").exists()


def test_streamed_recovery_equals_full_arrays():
    rng = np.random.default_rng(0)
    z = (rng.random((3000, 6)) < 0.2) * rng.random((3000, 6))
    units = np.maximum(z @ rng.normal(size=(6, 4)) + 0.1 * rng.normal(size=(3000, 4)), 0)
    units[:, 3] = 0.0  # a dead unit correlates 0
    moments = toy_models.RecoveryMoments()
    for lo in range(0, 3000, 700):
        moments.add(z[lo : lo + 700].astype(np.float32), units[lo : lo + 700].astype(np.float32))
    expected = superalign.feature_recovery(z, units)
    np.testing.assert_allclose(moments.best_correlations(), expected, rtol=1e-4, atol=1e-5)
