"""The DNN->brain experiment end to end on a miniature NSD, and its refusals."""

import json

import numpy as np
import pytest
from experiment_checks import ROOT, check_figures, check_record, command

import superalign
from experiments import brain_alignment, launch, run_files
from experiments.configs import brain as configs
from superalign.brain import nsd

# The tiny preset: subjects 1 and 2 of a (10, 12, 9) miniature, the "mixed" DNN, 3 SAE epochs.
TINY = ["--config", "tiny"]


def _main(argv):
    """``launch.main(brain_alignment, argv)`` as a command: ``python -m
    experiments.brain_alignment``."""
    return dict(args=command("brain_alignment", *argv), cwd=ROOT)


def _synthetic_out(factory):
    (factory.getbasetemp() / "brain").mkdir(exist_ok=True)
    return factory.getbasetemp() / "brain" / "run"


def _synthetic_job(factory):
    out = _synthetic_out(factory)
    return out, _main(["--out", str(out), *TINY])


def _nsd_args(root, out):
    return [
        "--config",
        "nsd",
        "--out",
        str(out),
        f"--config.nsd_root={root}",
        "--config.subjects=(1,)",
        "--config.n_sessions=3",
        "--config.dnns=('features',)",
        f"--config.activation_files=('{root / 'activations' / 'features.npz'}',)",
        "--config.sae_train_files=('',)",
        "--config.sae_expansion=(2,)",
        "--config.sae_k=(4,)",
        "--config.sae.n_epochs=2",
        "--config.n_folds=3",
    ]


def _nsd_job(factory):
    root = _synthetic_out(factory) / "synthetic_nsd"  # the synthetic run's tree
    out = factory.mktemp("brain_nsd") / "nsd_run"
    return (root, out), dict(**_main(_nsd_args(root, out)), after=("synthetic_run",))


# Both runs start in the background with the session; the tests that use them run once they
# are done (see conftest.py).
BACKGROUND = {"synthetic_run": _synthetic_job, "nsd_run": _nsd_job}


@pytest.fixture(scope="module")
def synthetic_run(background, tmp_path_factory):
    out, _ = background.completed(__name__, "synthetic_run", _synthetic_job, tmp_path_factory)
    return out, json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def nsd_run(synthetic_run, background, tmp_path_factory):
    """``(root, out)``: --config nsd on the synthetic run's tree."""
    (root, out), _ = background.completed(__name__, "nsd_run", _nsd_job, tmp_path_factory)
    return root, out


def test_synthetic_run_writes_scores_table_and_figures(synthetic_run):
    out, results = synthetic_run
    assert results["config"]["name"] == "synthetic" and "jax" in results["versions"]
    assert list(results["subjects"]) == ["1", "2"]
    root = out / "synthetic_nsd"
    for s, res in results["subjects"].items():
        data = nsd.load_subject(root, int(s), n_sessions=3, cache_dir=out / "cache")
        assert res["n_images"] == 750 and res["n_voxels"] == data.responses.shape[1]
        nc = float(np.mean(data.noise_ceiling))
        assert res["noise_ceiling"]["mean"] == pytest.approx(nc, rel=1e-6)
        scores = res["dnns"]["mixed"]
        assert set(scores) == set(brain_alignment.CONDITIONS)
        for r in scores.values():
            check_record(r, n_folds=3)
            assert r["normalized_mean"] == pytest.approx(r["mean"] / (nc / 100), rel=1e-6)
        assert scores["sae_voxel"]["memory"]["peak_gib"] > 0
        # Shuffling the images destroys the prediction.
        assert abs(scores["scrambled_voxel"]["mean"]) < 0.06
        assert scores["neuron_voxel"]["mean"] > 0.3
    figures = ("figure5_brain_ridge", "figure8_brain_ridge_other_subjects", "noise_ceilings")
    check_figures(out / "figures", figures)
    table = (out / "table.md").read_text()
    assert table.count("\n") == 2 + 2 and "SAE vs Neuron" in table
    change = results["changes"][0]
    expected = 100 * (change["sae_voxel"] - change["neuron_voxel"]) / change["neuron_voxel"]
    assert change["sae_voxel_change_percent"] == pytest.approx(expected)


def test_scores_equal_a_direct_ridge_on_the_files(synthetic_run):
    # The image-id bookkeeping: the activation file's rows for the subject's images, in order.
    out, results = synthetic_run
    data = nsd.load_subject(out / "synthetic_nsd", 2, n_sessions=3, cache_dir=out / "cache")
    with np.load(out / "synthetic_nsd" / "activations" / "mixed.npz") as f:
        ids, acts = f["image_ids"], f["activations"]
    X = acts[[int(np.flatnonzero(ids == i)[0]) for i in data.image_ids]]
    direct = superalign.ridge_regression(X, data.responses, n_folds=3)
    got = results["subjects"]["2"]["dnns"]["mixed"]["neuron_voxel"]
    np.testing.assert_allclose(got["folds"], direct.folds, atol=1e-6)


def test_sae_parameters_are_read_back_and_checked(synthetic_run, tmp_path):
    out, _ = synthetic_run
    cfg = configs.get_config("tiny")
    scfg = brain_alignment.sae_config(cfg, 0, 16)
    params = brain_alignment.read_sae_params(out / "sae" / "mixed.npz", scfg)
    assert params.W_enc.shape == (16, 64) and params.W_dec.shape == (64, 16)
    with pytest.raises(ValueError, match=r"W_enc must have shape \(32, 128\)"):
        brain_alignment.read_sae_params(
            out / "sae" / "mixed.npz", brain_alignment.sae_config(cfg, 0, 32)
        )
    with pytest.raises(FileNotFoundError, match="SAE parameters not found"):
        brain_alignment.read_sae_params(tmp_path / "none.npz", scfg)


def test_a_rerun_reuses_every_stage(synthetic_run):
    out, results = synthetic_run
    stamps = {p: p.stat().st_mtime_ns for p in (out / "subjects").iterdir()}
    assert launch.main(brain_alignment, ["--out", str(out), *TINY, "--no-progress"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "subjects").iterdir()} == stamps
    again = json.loads((out / "results.json").read_text())
    assert again["subjects"] == results["subjects"]


def test_nsd_config_on_a_tree_in_the_release_layout(synthetic_run, nsd_run):
    # The real-data path: --config nsd pointed at a download (here the miniature tree), with the
    # known generative features as the "DNN": they beat a scrambled control by far.
    out, _ = synthetic_run
    root, nsd_out = nsd_run
    assert root == out / "synthetic_nsd"
    results = json.loads((nsd_out / "results.json").read_text())
    scores = results["subjects"]["1"]["dnns"]["features"]
    assert set(scores) == set(brain_alignment.CONDITIONS)
    assert results["sae_train_files"] == [str(root / "activations" / "features.npz")]
    data = nsd.load_subject(root, 1, n_sessions=3)
    true, scrambled = scores["neuron_voxel"]["mean"], scores["scrambled_voxel"]["mean"]
    assert abs(scrambled) < 0.06 and true > scrambled + 0.5
    # The features span the signal: per voxel r ~ sqrt(NC / 100).
    assert true == pytest.approx(np.mean(np.sqrt(data.noise_ceiling / 100)), abs=0.05)


def test_another_config_in_the_same_directory_is_refused(tmp_path):
    run_files.write_json(tmp_path / "config.json", {"name": "other"})
    with pytest.raises(ValueError, match="another config"):
        brain_alignment.run(configs.get_config("synthetic"), tmp_path)


def test_bad_configs_fail_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="nsd_root must be set"):
        brain_alignment.check_config(configs.get_config("nsd"))
    cfg = launch.apply_overrides(
        configs.get_config("nsd"), ["--config.nsd_root=/data/nsd", "--config.sae_k=(82,)"]
    )
    with pytest.raises(ValueError, match=r"sae_k must have one entry per DNN \(2"):
        brain_alignment.check_config(cfg)
    cfg = launch.apply_overrides(configs.get_config("synthetic"), ["--config.subjects=(9,)"])
    with pytest.raises(ValueError, match="NSD subjects 1..8"):
        brain_alignment.run(cfg, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    cfg = launch.apply_overrides(configs.get_config("tiny"), ["--config.subjects=(1, 5)"])
    with pytest.raises(ValueError, match=r"subjects \(1, 5\) must be among synthetic.subjects"):
        brain_alignment.run(cfg, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match="unknown config 'nope'"):
        configs.get_config("nope")
    # A str field takes digits as text.
    cfg = launch.apply_overrides(configs.get_config("nsd"), ["--config.cache_dir=2024"])
    assert cfg.cache_dir == "2024"
    # Names whose files would be the same (letters and digits, case ignored).
    cfg = launch.apply_overrides(
        configs.get_config("nsd"),
        ["--config.nsd_root=/data/nsd", "--config.dnns=('Net A', 'net-a')"],
    )
    with pytest.raises(ValueError, match=r"'Net A' and 'net-a' are both 'net_a'"):
        brain_alignment.check_config(cfg)
    # Missing NSD files fail before the out folder is claimed: the corrected command runs there.
    cfg = launch.apply_overrides(
        configs.get_config("nsd"),
        [f"--config.nsd_root={tmp_path}/nope", "--config.activation_files=('a.npz', 'b.npz')"],
    )
    with pytest.raises(FileNotFoundError):
        brain_alignment.run(cfg, tmp_path / "typo")
    assert not (tmp_path / "typo").exists()


def test_activation_files_are_checked(tmp_path):
    path = tmp_path / "acts.npz"
    with pytest.raises(FileNotFoundError, match=str(path)):
        brain_alignment.read_activations(path)
    np.savez(path, activations=np.ones((3, 2), np.float32))
    with pytest.raises(ValueError, match=r"'image_ids' \[n\] \(0-based NSD 73k-ids\)"):
        brain_alignment.read_activations(path)
    np.savez(path, image_ids=np.array([1, 5, 73_000]), image_id_base=1, activations=np.eye(3))
    ids, x = brain_alignment.read_activations(path)  # 1-based ids, declared
    np.testing.assert_array_equal(ids, [0, 4, 72_999])
    assert x.dtype == np.float32
    with pytest.raises(ValueError, match=r"lacks 1 of the 2 images needed .*\[7\]"):
        brain_alignment.rows_for(ids, np.array([4, 7]), "acts.npz")
    np.testing.assert_array_equal(brain_alignment.rows_for(ids, np.array([72_999, 0]), "a"), [2, 0])
    np.savez(path, image_ids=np.array([1, 1, 2]), activations=np.eye(3))
    with pytest.raises(ValueError, match="distinct 0-based NSD 73k-ids"):
        brain_alignment.read_activations(path)
