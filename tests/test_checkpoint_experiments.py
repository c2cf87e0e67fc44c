"""Trained torchvision checkpoints through the DNN and brain experiments, end to end.

Two random-init torchvision ResNet18s (10 classes, ``torch.manual_seed(0)`` and ``(1)``) saved
with ``torch.save`` stand in for trained seeds; generated PNGs for the image folder; the
miniature NSD (``experiments/nsd_synthetic.py``, one subject, one session) for the brain. Both
runs start in the background with the session (see conftest.py); the checks run in-process.
"""

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from experiment_checks import (
    ROOT,
    check_alignment,
    check_figures,
    check_record,
    command,
    raise_if_failed,
)

from experiments import brain_alignment, dnn_alignment, launch, nsd_synthetic
from experiments.configs import brain as brain_configs
from experiments.configs import dnn as dnn_configs
from superalign import datasets, models
from superalign.brain import nsd
from superalign.compare import split_rows

N_IMAGES = 48  # 24 train the SAEs, 24 are scored (3 folds of 8)
SIZE = dict(image_size=32, resize_size=36)  # small: XLA's CPU convolutions are slow
LAYER = "layer1.1.bn2"
# POT imports tensorflow when it can (seconds per process); no result depends on it.
ENV = {"POT_BACKEND_DISABLE_TENSORFLOW": "1"}


def _build_inputs(base: Path) -> None:
    import torch
    import torchvision
    from PIL import Image

    base.mkdir(parents=True, exist_ok=True)
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = torchvision.models.resnet18(num_classes=10)
        torch.save(model.state_dict(), base / f"seed{seed}.pth")
    torch.save(torchvision.models.resnet34(num_classes=10).state_dict(), base / "resnet34.pth")
    rng = np.random.default_rng(0)
    for folder, n in (("images", N_IMAGES), ("few", 4)):
        (base / folder).mkdir()
        for i in range(n):
            small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
            image = Image.fromarray(small).resize((40, 44), Image.BILINEAR)
            image.save(base / folder / f"img{i:03d}.png")
    (base / "empty").mkdir()
    spec = nsd_synthetic.SyntheticSpec(
        subjects=(1,), n_sessions=1, shape=(10, 12, 9), n_train_rows=200
    )
    nsd_synthetic.build(base / "nsd", spec)


def _base(factory) -> Path:
    return factory.getbasetemp() / "checkpoint_inputs"


def _inputs_job(factory):
    """Checkpoints (two seeds and a ResNet34), image folders and a miniature NSD, made in a
    process of their own: torch's import and the writing would otherwise hold the test process's
    interpreter while tests run."""
    base = _base(factory)
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, 'tests'); "
        "import test_checkpoint_experiments as t; t._build_inputs(Path(sys.argv[1]))"
    )
    args = [sys.executable, "-c", code, str(base)]
    return base, dict(args=args, cwd=ROOT, env={**os.environ, **ENV})


def _dnn_args(base: Path) -> list[str]:
    ckpts = (str(base / "seed0.pth"), str(base / "seed1.pth"))
    return [
        "--config",
        "checkpoints",
        "--config.arch=resnet18",
        f"--config.checkpoints={ckpts!r}",
        f"--config.images={base / 'images'}",
        *(f"--config.{k}={v}" for k, v in SIZE.items()),
        "--config.num_classes=10",
        f"--config.layers=('{LAYER}',)",
        "--config.sae_expansion=(2,)",
        "--config.sae_k=(16,)",
        "--config.sae.n_epochs=2",
        "--config.sae.batch_size=8",
        "--config.n_folds=3",
        "--config.extract_batch_size=16",
        "--config.shard_rows=32",
    ]


def _brain_args(base: Path) -> list[str]:
    return [
        "--config",
        "checkpoint",
        f"--config.nsd_root={base / 'nsd'}",
        "--config.subjects=(1,)",
        "--config.n_sessions=1",
        f"--config.checkpoint={base / 'seed0.pth'}",
        "--config.arch=resnet18",
        "--config.num_classes=10",
        *(f"--config.{k}={v}" for k, v in SIZE.items()),
        "--config.sae_expansion=(1,)",
        "--config.sae_k=(16,)",
        "--config.sae.n_epochs=2",
        "--config.n_folds=3",
    ]


def _config(presets, args: list[str]):
    """The config a command line with ``args`` runs (``--config NAME`` first)."""
    return launch.apply_overrides(presets[args[1]](), args[2:])


def _job(name: str, args_of):
    def spec(factory):
        base = _base(factory)
        out = factory.mktemp(f"checkpoint_{name}") / "run"

        def call(inputs):
            raise_if_failed(inputs[1], "making the inputs")
            args = args_of(base)
            t0 = time.perf_counter()
            proc = subprocess.run(
                command(f"{name}_alignment", "--out", out, *args),
                cwd=ROOT,
                env={**os.environ, **ENV},
                capture_output=True,
                text=True,
            )
            return proc, time.perf_counter() - t0

        return (base, out), dict(call=call, after=("inputs",))

    return spec


_dnn_job = _job("dnn", _dnn_args)
_brain_job = _job("brain", _brain_args)

# The inputs, then both runs, start in the background with the session; the tests that use them
# run once they are done.
BACKGROUND = {"inputs": _inputs_job, "dnn_run": _dnn_job, "brain_run": _brain_job}


def _finished(background, name, spec, factory):
    (base, out), (proc, seconds) = background.result(__name__, name, spec, factory)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return base, out, proc.stdout


@pytest.fixture(scope="module")
def dnn_run(background, tmp_path_factory):
    return _finished(background, "dnn_run", _dnn_job, tmp_path_factory)


@pytest.fixture(scope="module")
def brain_run(background, tmp_path_factory):
    return _finished(background, "brain_run", _brain_job, tmp_path_factory)


@pytest.fixture(scope="module")
def inputs(background, tmp_path_factory):
    base, _ = background.completed(__name__, "inputs", _inputs_job, tmp_path_factory)
    return base


@pytest.fixture(scope="module")
def direct(inputs):
    """``extract(seed, images, layers)``: ``models.extract`` of ResNet18 from a checkpoint,
    one compiled function for every call (batches of 16)."""
    mc = models.resnet18(num_classes=10, image_size=SIZE["image_size"])
    variables = {s: models.from_torchvision(mc, inputs / f"seed{s}.pth") for s in (0, 1)}
    layers = (LAYER, brain_configs.default_layer("resnet18"))
    fn = jax.jit(lambda v, x: models.extract(mc, v, x, layers))

    def extract(seed, data):
        ids, acts = [], []
        for batch in datasets.batches(data, "validation", 16):
            out = fn(variables[seed], batch.images)
            ids.append(batch.image_ids[batch.valid])
            acts.append({k: np.asarray(v)[batch.valid] for k, v in out.items()})
        return np.concatenate(ids), {k: np.concatenate([a[k] for a in acts]) for k in layers}

    return extract


def test_default_layers_and_sae_sizes():
    # The paper's layers and SAE sizes (PROTOCOL.md), and the analogues of other presets.
    assert dnn_configs.default_layers("resnet50") == ("layer2.3.bn2", "layer4.2.bn2")
    assert dnn_configs.default_layers("vit_b16") == ("encoder_layer_5.mlp", "encoder_layer_11.mlp")
    assert dnn_configs.default_layers("resnet18") == ("layer2.1.bn2", "layer4.1.bn2")
    assert dnn_configs.default_layers("vit_l16") == (
        "encoder_layer_11.mlp",
        "encoder_layer_23.mlp",
    )
    cfg = launch.apply_overrides(dnn_configs.get_config("checkpoints"), ["--config.images=x"])
    resnet = dnn_configs.resolve_checkpoints(cfg)
    assert resnet.models == ("resnet50",) and resnet.layers == (("layer2.3.bn2", "layer4.2.bn2"),)
    assert resnet.sae_expansion == ((4, 4),) and resnet.sae_k == ((20, 82),)
    vit = dnn_configs.resolve_checkpoints(launch.apply_overrides(cfg, ["--config.arch=vit_b16"]))
    assert vit.sae_expansion == ((2, 2),) and vit.sae_k == ((153, 153),)
    assert vit.data == datasets.DataConfig(name="folder", path="x")
    brain = brain_configs.resolve_checkpoints(
        launch.apply_overrides(
            brain_configs.get_config("checkpoint"),
            ["--config.checkpoint=('a.pth', 'b.pth')", "--config.arch=('resnet50', 'vit_b16')"],
        )
    )
    assert brain.dnns == ("ResNet50 layer4.2", "ViT-B/16 encoder_layer_11")
    assert brain.checkpoint_layers == ("layer4.2", "encoder_layer_11")
    assert brain.sae_expansion == (4, 4) and brain.sae_k == (82, 64)
    # Two seeds of one architecture saved under the same file name: told apart by folder.
    two = brain_configs.resolve_checkpoints(
        launch.apply_overrides(
            brain_configs.get_config("checkpoint"),
            ["--config.checkpoint=('runs/seed0/model.pth', 'runs/seed1/model.pth')"]
            + ["--config.arch=('resnet50', 'resnet50')"],
        )
    )
    assert two.dnns == ("ResNet50 layer4.2 (seed0/model)", "ResNet50 layer4.2 (seed1/model)")


def test_dnn_checkpoints_end_to_end(dnn_run, direct):
    base, out, stdout = dnn_run
    assert "checkpoints seed 0" in stdout and "soft_matching" in stdout
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["models"] == ["resnet18"] and not (out / "models").exists()
    res = results["models"]["resnet18"]
    assert res["checkpoints"] == {"0": str(base / "seed0.pth"), "1": str(base / "seed1.pth")}
    layer = res["layers"][LAYER]
    assert layer["n_units"] == 64 and layer["n_latents"] == 128 and layer["k"] == 16
    assert layer["n_rows"] == N_IMAGES - N_IMAGES // 2
    assert layer["n_train_rows"] == N_IMAGES // 2
    check_alignment(layer, n_folds=3)  # every condition of every metric, finite folds
    figures = ("figure3_softmatching", "figure4_bottom_ridge", "figure7_bottom_semimatching")
    check_figures(out / "figures", figures)

    # The features: the scored images (the half split_rows leaves), equal to models.extract.
    data = datasets.DataConfig(name="folder", path=str(base / "images"), **SIZE)
    _, scored = split_rows(N_IMAGES, 0)
    for seed in (0, 1):
        ids, want = direct(seed, data)
        with np.load(dnn_alignment.feature_path(out, "resnet18", seed, LAYER)) as f:
            assert f["image_ids"].dtype == np.int64 and f["activations"].dtype == np.float32
            np.testing.assert_array_equal(f["image_ids"], ids[scored])
            np.testing.assert_allclose(f["activations"], want[LAYER][scored], rtol=1e-5, atol=1e-5)

    # A second run resumes: nothing is read, extracted or trained again; the same results.
    stamps = {p: p.stat().st_mtime_ns for p in (out / "layers").rglob("*.json")}
    cfg = _config(dnn_configs.PRESETS, _dnn_args(base))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(models, "from_torchvision", pytest.fail)
        t0 = time.perf_counter()
        again = dnn_alignment.run(cfg, out, progress=False)
        seconds = time.perf_counter() - t0
    assert seconds < 30, seconds  # the figures only
    assert {p: p.stat().st_mtime_ns for p in (out / "layers").rglob("*.json")} == stamps
    assert json.loads(json.dumps(again["models"]["resnet18"]["layers"])) == res["layers"]


def test_brain_checkpoint_end_to_end(brain_run, direct):
    base, out, stdout = brain_run
    root = base / "nsd"
    assert "ResNet18 layer4.1" in stdout
    results = json.loads((out / "results.json").read_text())
    name = "ResNet18 layer4.1"
    scores = results["subjects"]["1"]["dnns"][name]
    assert set(scores) == set(brain_alignment.CONDITIONS)
    for record in scores.values():
        check_record(record, n_folds=3)
    assert abs(scores["scrambled_voxel"]["mean"]) < 0.15

    # The activation file: every image subject 1 saw in session 1, the checkpoint's units.
    path = out / "features" / "resnet18_layer4_1.npz"
    assert results["activation_files"] == [str(path)]
    design = nsd.read_design(nsd.expdesign_path(root))
    seen = np.unique(nsd.trial_image_ids(design, 1, nsd.TRIALS_PER_SESSION))
    with np.load(path) as f:
        ids, acts = f["image_ids"], f["activations"]
    np.testing.assert_array_equal(ids, seen)
    assert acts.shape == (250, 512) and acts.dtype == np.float32
    some = seen[::25]  # a direct extraction of every 25th image
    data = datasets.DataConfig(name="nsd", path=str(root), image_ids=some, **SIZE)
    got_ids, want = direct(0, data)
    np.testing.assert_array_equal(got_ids, some)
    np.testing.assert_allclose(acts[::25], want["layer4.1"], rtol=1e-5, atol=1e-5)

    # The voxelwise gain map over the subject's T1, and the voxel file a rerun draws it from.
    check_figures(out / "figures", ["gain_map_resnet18_layer4_1_subj01", "figure5_brain_ridge"])
    with np.load(brain_alignment.voxels_path(out, 1)) as f:
        assert f["resnet18_layer4_1/sae_voxel/unit_r"].shape[0] == 3
        assert tuple(f["shape"]) == (10, 12, 9)


def _refused(run, cfg, out: Path, match: str):
    with pytest.raises(ValueError, match=match):
        run(cfg, out, progress=False)
    assert not out.exists()


def test_dnn_bad_input_fails_before_any_work(inputs, tmp_path):
    cfg = _config(dnn_configs.PRESETS, _dnn_args(inputs))
    run = dnn_alignment.run

    def with_(**fields):
        return launch.apply_overrides(cfg, [f"--config.{k}={v}" for k, v in fields.items()])

    missing = (str(inputs / "seed0.pth"), str(inputs / "nope.pth"))
    _refused(run, with_(checkpoints=missing), tmp_path / "a", r"checkpoints\[1\]: no checkpoint")
    # A ResNet34 file as seed 1: refused after reading both files, before any image is read.
    other = (str(inputs / "seed0.pth"), str(inputs / "resnet34.pth"))
    _refused(
        run,
        with_(checkpoints=other),
        tmp_path / "b",
        r"checkpoints\[1\] .*resnet34.pth\) is not a torchvision resnet18.*layer1.2",
    )
    _refused(run, with_(images=inputs / "empty"), tmp_path / "c", "images: no images found")
    _refused(run, with_(images=inputs / "few"), tmp_path / "d", r"images: 2 images are scored")
    with pytest.raises(ValueError, match="arch must be one of"):
        with_(arch="resnet_small")
    with pytest.raises(ValueError, match="one file per seed"):
        with_(checkpoints=(str(inputs / "seed0.pth"),))


def test_brain_bad_input_fails_before_any_work(inputs, tmp_path):
    cfg = _config(brain_configs.PRESETS, _brain_args(inputs))
    run = brain_alignment.run

    def with_(**fields):
        return launch.apply_overrides(cfg, [f"--config.{k}={v}" for k, v in fields.items()])

    _refused(
        run,
        with_(checkpoint=inputs / "nope.pth"),
        tmp_path / "a",
        r"checkpoint\[0\]: no checkpoint file",
    )
    _refused(
        run,
        with_(checkpoint=inputs / "resnet34.pth"),
        tmp_path / "b",
        r"checkpoint\[0\] .* is not a torchvision resnet18",
    )
    _refused(run, with_(arch="resnet_small"), tmp_path / "c", "arch must name one architecture")
    _refused(run, with_(checkpoint_layers="layer9.0"), tmp_path / "d", "unknown layer 'layer9.0'")
    bare = launch.apply_overrides(
        brain_configs.get_config("checkpoint"), [f"--config.nsd_root={inputs / 'nsd'}"]
    )
    _refused(run, bare, tmp_path / "e", "checkpoint must give a torchvision file per DNN")


def test_feature_extraction_resumes_after_a_kill_while_writing_its_file(
    inputs, tmp_path, monkeypatch
):
    """Killed after the shards are complete but before the .npz is written: the rerun writes
    the .npz from the shards (the image count is not a multiple of the batch)."""
    cfg = brain_configs.resolve_checkpoints(_config(brain_configs.PRESETS, _brain_args(inputs)))
    cfg = dataclasses.replace(cfg, extract_batch_size=8)
    ids = brain_alignment.seen_images(inputs / "nsd", (1,), 1)[:21]
    variables = brain_alignment.load_checkpoints(cfg)[0]
    real = brain_alignment.run_files.write_atomic

    def killed(path, fn):  # the shards' own index is written as before; the .npz is not
        if str(path).endswith(".npz"):
            raise KeyboardInterrupt("killed while writing")
        return real(path, fn)

    monkeypatch.setattr(brain_alignment.run_files, "write_atomic", killed)
    with pytest.raises(KeyboardInterrupt):
        brain_alignment.extract_features(cfg, 0, variables, inputs / "nsd", ids, tmp_path, False)
    monkeypatch.setattr(brain_alignment.run_files, "write_atomic", real)
    path = brain_alignment.extract_features(cfg, 0, variables, inputs / "nsd", ids, tmp_path, False)
    with np.load(path) as f:
        np.testing.assert_array_equal(f["image_ids"], ids)
        assert f["activations"].shape[0] == len(ids)
