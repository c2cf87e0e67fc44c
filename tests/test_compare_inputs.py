"""What superalign.compare and its file readers accept and refuse, on small data.

Image ids across file formats and integer types, unreadable files, SAE settings that cannot
train (a chunk smaller than a batch, batch size 0, per-sample normalisation of one unit), fold
counts against the 50/50 split, and the command line's results folder across reruns.
"""

from __future__ import annotations

import json
import re
import sys

import h5py
import jax
import numpy as np
import pytest

import superalign
from superalign import io, sae
from superalign.compare import (
    default_epochs,
    default_sae_config,
    main,
    score_conditions,
    train_saes,
)

compare_module = sys.modules["superalign.compare"]

ROWS, UNITS = 200, 6


@pytest.fixture(scope="module")
def data():
    """``(X, Y)``: two ReLU mixings of the same sparse features."""
    rng = np.random.default_rng(0)
    z = rng.uniform(0, 1, (ROWS, 16)) * (rng.uniform(size=(ROWS, 16)) < 0.2)
    A, B = rng.normal(size=(2, 16, UNITS))
    return np.maximum(z @ A, 0).astype(np.float32), np.maximum(z @ B, 0).astype(np.float32)


def small_config(n_inputs=UNITS, **overrides):
    return default_sae_config(n_inputs, **(dict(k=1, n_epochs=1, batch_size=16) | overrides))


@pytest.fixture
def no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("trained before validating")

    monkeypatch.setattr(compare_module, "train_saes", refuse)


# ---------------------------------------------------------------------------------------------
# Image ids.


def test_signed_and_unsigned_ids_are_compared_exactly(tmp_path):
    """Ids above 2**53 that differ only in their last bits: int64 against uint64."""
    x = np.zeros((4, 2), np.float32)
    base = 2**60
    np.savez(tmp_path / "a.npz", activations=x, image_ids=np.arange(base, base + 4, dtype=np.int64))
    np.savez(
        tmp_path / "b.npz", activations=x, image_ids=np.arange(base + 2, base + 6, dtype=np.uint64)
    )
    np.savez(
        tmp_path / "c.npz",
        activations=x,
        image_ids=np.arange(base + 10, base + 14, dtype=np.uint64),
    )
    a, b, c = (io.read_activations(tmp_path / f"{n}.npz") for n in "abc")
    got = io.align_rows(a, b)
    assert got.rows_a.tolist() == [2, 3] and got.rows_b.tolist() == [0, 1]
    assert got.image_ids.dtype == np.int64 and got.image_ids.tolist() == [base + 2, base + 3]
    got = io.align_rows(b, a)
    assert got.rows_a.tolist() == [0, 1] and got.rows_b.tolist() == [2, 3]
    with pytest.raises(ValueError, match="have no image_id in common"):
        io.align_rows(a, c)


def test_unsigned_ids_beyond_int64_against_signed_ids_are_refused(tmp_path):
    x = np.zeros((2, 2), np.float32)
    big = np.array([2**63, 2**63 + 1], np.uint64)
    np.savez(tmp_path / "a.npz", activations=x, image_ids=np.array([1, 2], np.int64))
    np.savez(tmp_path / "b.npz", activations=x, image_ids=big)
    a, b = io.read_activations(tmp_path / "a.npz"), io.read_activations(tmp_path / "b.npz")
    want = (
        f"image_ids of {a.path} (int64) and {b.path} (uint64) cannot be compared exactly: "
        f"{b.path} has ids above the int64 maximum (up to {2**63 + 1}); store both as the same "
        "integer type"
    )
    with pytest.raises(ValueError, match=re.escape(want)):
        io.align_rows(a, b)


IDS = ["café_1", "naïve", "img_3", "Ωmega"]


def _write_ids(path, x, kind):
    encoded = np.array([s.encode() for s in IDS])  # fixed-length UTF-8 bytes, dtype |S
    if kind == "npz str":
        np.savez(path, activations=x, image_ids=np.array(IDS))
    elif kind == "npz bytes":
        np.savez(path, activations=x, image_ids=encoded)
    else:
        with h5py.File(path, "w") as f:
            f["activations"] = x
            if kind == "h5 variable-length":
                f.create_dataset("image_ids", data=IDS, dtype=h5py.string_dtype())
            else:
                f["image_ids"] = encoded


ID_KINDS = {
    "npz str": "a.npz",
    "npz bytes": "b.npz",
    "h5 variable-length": "c.h5",
    "h5 fixed-length": "d.h5",
}


def test_string_ids_are_utf8_text_in_every_format(tmp_path):
    """The same ids as str, bytes, and h5 variable- or fixed-length strings all match."""
    x = np.arange(8, dtype=np.float32).reshape(4, 2)
    acts = {}
    for kind, name in ID_KINDS.items():
        _write_ids(tmp_path / name, x, kind)
        acts[kind] = io.read_activations(tmp_path / name)
        assert acts[kind].image_ids.dtype.kind == "U", kind
        assert acts[kind].image_ids.tolist() == IDS, kind
    for first in acts.values():
        for second in acts.values():
            got = io.align_rows(first, second)
            assert got.image_ids.tolist() == sorted(IDS)
            np.testing.assert_array_equal(got.rows_a, got.rows_b)
            np.testing.assert_array_equal(np.sort(got.rows_a), np.arange(4))


# ---------------------------------------------------------------------------------------------
# Unreadable files.


# Damaged files: name, bytes, what the reader tried and what it expected (regexes).
_CORRUPT = {
    "corrupt npz": (
        "a.npz",
        b"not a zip archive",
        r"an \.npz file",
        r"a zip archive of \.npy arrays \(np\.savez\)",
    ),
    "corrupt h5": (
        "a.h5",
        b"not an HDF5 file",
        r"an HDF5 file",
        r"an HDF5 file \(h5py\) holding datasets",
    ),
    "corrupt npy": (
        "a.npy",
        b"\x93NUMPY garbage",
        r"a \.npy array",
        r"an array of numbers as numpy writes it \(np\.save\)",
    ),
}


def _unreadable(tmp_path, case):
    """``(path, message regex, key)`` of a file the readers must refuse."""
    x = np.zeros((3, 2), np.float32)
    if case in _CORRUPT:
        name, content, tried, expected = _CORRUPT[case]
        path = tmp_path / name
        path.write_bytes(content)
        want = rf"{re.escape(str(path))}: cannot read it as {tried} \(.+\); expected {expected}"
    elif case == "h5 ids group":
        path = tmp_path / "a.h5"
        with h5py.File(path, "w") as f:
            f["activations"] = x
            f.create_group("image_ids")
        want = re.escape(f"{path}: image_ids must be a dataset of one id per row, got a Group")
    elif case == "h5 key group":
        path = tmp_path / "a.h5"
        with h5py.File(path, "w") as f:
            f.create_group("activations")
        want = re.escape(f"{path} has no dataset 'activations' (--key); it holds ['activations']")
    elif case == "npz object ids":
        path = tmp_path / "a.npz"
        np.savez(path, activations=x, image_ids=np.arange(3).astype(object))
        want = re.escape(
            f"{path}: cannot read the array 'image_ids' (Object arrays cannot be loaded when "
            "allow_pickle=False); expected an array of numbers or strings as numpy writes it "
            "(np.savez)"
        )
    elif case == "npz compressed object ids":
        path = tmp_path / "a.npz"
        np.savez_compressed(path, activations=x, image_ids=np.arange(3).astype(object))
        want = re.escape(f"{path}: cannot read the array 'image_ids' (Object arrays cannot")
    return path, want


UNREADABLE = [
    "corrupt npz",
    "corrupt h5",
    "corrupt npy",
    "h5 ids group",
    "h5 key group",
    "npz object ids",
    "npz compressed object ids",
]


@pytest.mark.parametrize("case", UNREADABLE)
def test_unreadable_files_raise_value_errors_naming_them(tmp_path, case):
    path, want = _unreadable(tmp_path, case)
    with pytest.raises(ValueError, match=want):
        io.read_activations(path)


@pytest.mark.parametrize("case", UNREADABLE)
def test_cli_reports_unreadable_files(tmp_path, data, capsys, no_training, case):
    path, want = _unreadable(tmp_path, case)
    other = tmp_path / "other.npy"
    np.save(other, data[1][:3])
    with pytest.raises(SystemExit) as err:
        main([str(path), str(other), "--out", str(tmp_path / "out"), "--no-progress"])
    assert err.value.code == 2
    assert re.search("error: " + want, capsys.readouterr().err), case


# ---------------------------------------------------------------------------------------------
# SAE settings and fold counts.


def test_batch_size_zero_is_refused():
    for call in (
        lambda: default_epochs(100, 0),
        lambda: default_sae_config(8, 100, batch_size=0),
    ):
        with pytest.raises(ValueError, match=r"^batch_size must be a positive integer, got 0$"):
            call()


def test_chunk_smaller_than_a_batch_is_refused(data, no_training):
    X, Y = data
    cfg = default_sae_config(UNITS, k=1, n_epochs=1)  # batch 64
    want = (
        "chunk_rows=32 is smaller than the batch_size=64 of the SAE: no chunk would hold one "
        "batch; need at least 64 rows per chunk"
    )
    with pytest.raises(ValueError, match=re.escape(want)):
        train_saes(cfg, X, jax.random.key(0), chunk_rows=32)
    with pytest.raises(ValueError, match=re.escape(want.replace("the SAE", "sae_x"))):
        superalign.compare(X, Y, sae_x=cfg, sae_y=small_config(), chunk_rows=32)
    with pytest.raises(ValueError, match=re.escape(want.replace("the SAE", "sae_y"))):
        superalign.compare(X, Y, sae_x=small_config(), sae_y=cfg, chunk_rows=32)


@pytest.mark.parametrize("chunk_rows", [64, 100, 150, 199])
def test_chunked_training_takes_every_step(data, chunk_rows):
    """Every chunking takes the in-memory training's n_epochs * (n // batch_size) steps."""
    cfg = default_sae_config(UNITS, k=1, n_epochs=3)  # batch 64: 3 steps per epoch of 200 rows
    _, metrics = train_saes(cfg, data[0], jax.random.key(0), chunk_rows=chunk_rows)
    _, ref = sae.make_train(cfg)(jax.random.key(0), data[0])
    assert metrics.mse.shape == (1, 9) and ref.mse.shape == (9,)


@pytest.mark.parametrize("n_rows, chunk_rows", [(200, 250), (130, 150)])
def test_rows_within_one_chunk_train_as_in_memory(data, n_rows, chunk_rows):
    """At most chunk_rows rows (a multiple of the batch or not) are one chunk: make_train."""
    cfg = default_sae_config(UNITS, k=1, n_epochs=3)
    rows = np.arange(n_rows)
    key = jax.random.key(2)
    got, metrics = train_saes(cfg, data[0], key, rows=rows, chunk_rows=chunk_rows)
    ref, ref_metrics = jax.jit(sae.make_train(cfg))(jax.random.split(key, 1)[0], data[0][rows])
    assert metrics.mse.shape == (1, 3 * (n_rows // 64))
    np.testing.assert_array_equal(metrics.mse[0], ref_metrics.mse)
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_array_equal(a[0], b)


@pytest.mark.parametrize("side", ["x", "y"])
def test_one_unit_with_per_sample_normalisation_is_refused(data, no_training, side):
    X, Y = data
    kw = dict(sae_x=small_config(), sae_y=small_config())
    if side == "x":
        X, kw["sae_x"] = X[:, :1], small_config(1)
    else:
        Y, kw["sae_y"] = Y[:, :1], None  # the default SAE normalises too
    want = (
        f"sae_{side} normalises every row over its units (normalize_inputs=True), which makes "
        "every row 0 with n_inputs=1; its activations need at least 2 units (columns), or an "
        "SAE with normalize_inputs=False"
    )
    with pytest.raises(ValueError, match=re.escape(want)):
        superalign.compare(X, Y, metrics=("semi_matching",), **kw)


def test_one_unit_without_normalisation_is_accepted(data, monkeypatch):
    """Without per-sample normalisation one unit is valid: validation passes, training starts."""
    monkeypatch.setattr(compare_module, "train_saes", _stop_training)
    X, Y = data
    cfg = small_config(1, normalize_inputs=False)
    with pytest.raises(_TrainingStarted):
        superalign.compare(X[:, :1], Y, sae_x=cfg, sae_y=small_config())


def test_a_condition_failing_the_dead_unit_rule_is_named(data):
    X, Y = data[0][:100], data[1][:100]
    rng = np.random.default_rng(0)
    dead = np.zeros((1, 100, 4), np.float32)  # sae_x's latents never fire
    live = rng.uniform(size=(1, 100, 4)).astype(np.float32)
    want = (
        "sae_sae, SAE seed 0 (semi_matching; X: the latents of sae_x, Y: the latents of sae_y): "
        "X has no live unit"
    )
    for workers in (1, 2):  # raised from a worker thread too
        with pytest.raises(ValueError, match=re.escape(want)):
            score_conditions(X, Y, dead, live, live[0], metrics=("semi_matching",), workers=workers)
    want = (
        "randsae_neuron (ridge; X: the latents of the random SAE of X, Y: the neurons of Y): "
        "X has no live unit"
    )
    with pytest.raises(ValueError, match=re.escape(want)):
        score_conditions(X, Y, live, live, dead[0], metrics=("ridge",))


class _TrainingStarted(Exception):
    pass


def _stop_training(*args, **kwargs):
    raise _TrainingStarted


def test_folds_against_the_split_name_the_rows_needed(data, monkeypatch):
    """40 rows split 20/20 cannot hold 20 folds of 2 scoring rows; 79 rows can."""
    monkeypatch.setattr(compare_module, "train_saes", _stop_training)
    X, Y = data
    kw = dict(sae_x=small_config(), sae_y=small_config(), n_folds=20)
    want = (
        "n_folds=20 needs at least 40 scoring rows (2 per fold), but the 40 rows of X and Y are "
        "split into 20 SAE training rows and 20 scoring rows; need at least 79 rows, or pass "
        "X_train and Y_train (every row of X and Y is then scored)"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(want)}$"):
        superalign.compare(X[:40], Y[:40], **kw)
    with pytest.raises(ValueError, match="the 78 rows of X and Y are split into 39 SAE"):
        superalign.compare(X[:78], Y[:78], **kw)
    with pytest.raises(_TrainingStarted):
        superalign.compare(X[:79], Y[:79], **kw)


# ---------------------------------------------------------------------------------------------
# Command line.


def _cli_files(root, data):
    X, Y = data
    np.savez(root / "a.npz", activations=X, image_ids=np.arange(ROWS))
    np.savez(root / "b.npz", activations=Y, image_ids=np.arange(ROWS))
    return [str(root / "a.npz"), str(root / "b.npz"), "--out", str(root / "out")]


CLI_FLAGS = ["--k", "1", "--epochs", "1", "--batch-size", "16", "--metrics", "semi_matching"]
CLI_FLAGS += ["--no-progress"]


@pytest.mark.parametrize(
    "flags, want",
    [
        (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
        (
            ["--chunk-rows", "8"],
            "--chunk-rows=8 is smaller than the batch_size=16 of the SAE of side A: no chunk "
            "would hold one batch; need at least 16 rows per chunk",
        ),
        (
            ["--folds", "60"],
            "--folds=60 needs at least 120 scoring rows (2 per fold), but the 200 matched rows "
            "of A and B are split into 100 SAE training rows and 100 scoring rows; need at "
            "least 239 rows, or give --train-a and --train-b (every matched row is then scored)",
        ),
        (
            ["one column"],
            "the SAE of side A ({a}) normalises every row over its units "
            "(normalize_inputs=True), which makes every row 0 with n_inputs=1; its activations "
            "need at least 2 units (columns)\n",
        ),
    ],
)
def test_cli_bad_settings(tmp_path, data, capsys, no_training, flags, want):
    argv = _cli_files(tmp_path, data) + CLI_FLAGS
    if flags == ["one column"]:
        np.savez(tmp_path / "a.npz", activations=data[0][:, :1], image_ids=np.arange(ROWS))
        flags = []
    with pytest.raises(SystemExit) as err:
        main(argv + flags + ["--cache-dir", str(tmp_path / "cache")])
    assert err.value.code == 2
    assert "error: " + want.format(a=tmp_path / "a.npz") in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:compare. the SAE of:UserWarning")
def test_cli_results_state_their_settings_and_never_go_stale(tmp_path, data, monkeypatch):
    argv = _cli_files(tmp_path, data) + CLI_FLAGS + ["--cache-dir", str(tmp_path / "cache")]
    out = tmp_path / "out"
    outputs = ("results.json", "table.md", "figure.png", "figure.pdf")
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    results = json.loads((out / "results.json").read_text())
    assert results["config"] == config
    assert (config["seed"], config["folds"], config["metrics"]) == (0, 5, ["semi_matching"])
    assert (config["null_permutations"], config["sae_seeds"]) == (0, 1)
    assert config["sae"]["a"]["batch_size"] == 16 and config["key"] == "activations"
    assert config["a"] == str((tmp_path / "a.npz").absolute())
    before = {name: (out / name).read_bytes() for name in outputs}

    # A rerun with the same settings, stopped after its checks: the results stay.
    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compare_module, "compare", stop)
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    assert {name: (out / name).read_bytes() for name in outputs} == before

    # A rerun with other settings, stopped while training: no results of the old settings.
    monkeypatch.setattr(compare_module, "train_saes", stop)
    with pytest.raises(KeyboardInterrupt):
        main([*argv, "--seed", "3"])
    assert [name for name in outputs if (out / name).exists()] == []
    assert json.loads((out / "config.json").read_text())["seed"] == 3
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
