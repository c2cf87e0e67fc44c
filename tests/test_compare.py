"""superalign.compare and its command line, on planted data where SAEs must help.

Planted data: 64 sparse nonnegative features (each active with probability 0.03, uniform
magnitude), seen by two "networks" through different random Gaussian mixings to 24 units with a
ReLU. Both networks superpose the same features differently, so their units align poorly while
SAE latents that recover the features align well.
"""

from __future__ import annotations

import json
import re
import sys
import warnings

import h5py
import jax
import numpy as np
import pytest

import superalign
from superalign import matching, regression, sae
from superalign.compare import (
    SEED_CONDITIONS,
    TrainedSAE,
    check_metrics,
    default_epochs,
    default_k,
    default_sae_config,
    encode,
    main,
    null_permutation,
    sae_key,
    score_conditions,
    split_rows,
    train_saes,
)

compare_module = sys.modules["superalign.compare"]

N_ROWS, UNITS, FEATURES, PROB = 4000, 24, 64, 0.03
EPOCHS, K = 120, 3  # 2,000 training rows: 31 steps per epoch, about 3,700 steps


def planted(n_rows, seed=0, mixing_seed=0):
    """``(X, Y)``: the same sparse features (``seed``) through two fixed mixings."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(0, 1, (n_rows, FEATURES)) * (rng.uniform(size=(n_rows, FEATURES)) < PROB)
    mix = np.random.default_rng(1000 + mixing_seed)
    A, B = mix.normal(size=(2, FEATURES, UNITS))
    return (np.maximum(z @ A, 0).astype(np.float32), np.maximum(z @ B, 0).astype(np.float32))


def config(**overrides):
    return default_sae_config(UNITS, **(dict(k=K, n_epochs=EPOCHS) | overrides))


@pytest.fixture(scope="module")
def data():
    return planted(N_ROWS)


@pytest.fixture(scope="module")
def result(data):
    X, Y = data
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        c = superalign.compare(X, Y, sae_x=config(), sae_y=config(), sae_seeds=2)
    return c, [w for w in caught if issubclass(w.category, UserWarning)]


def test_neuron_neuron_is_the_metric_called_directly(data, result):
    c, _ = result
    X, Y = (a[c.scoring_rows] for a in data)
    assert np.array_equal(c.scoring_rows, split_rows(N_ROWS, 0)[1])
    assert np.array_equal(c.training_rows, split_rows(N_ROWS, 0)[0])
    direct = {
        "soft_matching": matching.soft_matching(X, Y, keep_plans=False),
        "semi_matching": matching.semi_matching(X, Y),
        "ridge": regression.ridge_regression(X, Y),
    }
    for metric, ref in direct.items():
        got = c.scores[metric]["neuron_neuron"]
        np.testing.assert_allclose(got.folds, ref.folds, rtol=0, atol=1e-6)
        assert got.mean == pytest.approx(ref.mean, abs=1e-6)
        assert got.sem == pytest.approx(ref.sem, abs=1e-6)


def test_sae_conditions_are_the_metric_on_the_latents(data, result):
    """Seed s of a seed condition is the metric on SAE s's latents (the documented layout)."""
    c, _ = result
    X, Y = (a[c.scoring_rows] for a in data)
    lx, ly = encode(c.saes["x"], X)[0], encode(c.saes["y"], Y)[0]
    lr = encode(c.saes["random"], X)[0][0]
    for s in range(2):
        got = c.scores["semi_matching"]["sae_sae"][s]
        np.testing.assert_allclose(got.folds, matching.semi_matching(lx[s], ly[s]).folds, atol=1e-6)
        got = c.scores["ridge"]["sae_neuron"][s]
        np.testing.assert_allclose(
            got.folds, regression.ridge_regression(lx[s], Y).folds, atol=1e-6
        )
        got = c.scores["soft_matching"]["randsae_sae"][s]
        ref = matching.soft_matching(lr, ly[s], keep_plans=False)
        np.testing.assert_allclose(got.folds, ref.folds, atol=1e-6)
    for conds in c.scores.values():
        for cond, res in conds.items():
            if cond in SEED_CONDITIONS:
                assert isinstance(res, tuple) and len(res) == 2
                assert all(hasattr(r, "folds") for r in res)
            else:
                assert hasattr(res, "folds")
    assert list(c.scores["ridge"]) == ["neuron_neuron", "sae_neuron", "sae_sae", "randsae_neuron"]


def test_a_subset_of_conditions_scores_only_those(data, result):
    """``conditions=`` skips the others; the ones scored equal those of a full call."""
    c, _ = result
    X, Y = (a[c.scoring_rows] for a in data)
    lx, ly = encode(c.saes["x"], X)[0], encode(c.saes["y"], Y)[0]
    lr = encode(c.saes["random"], X)[0][0]
    got = score_conditions(
        X, Y, lx, ly, lr, metrics=("semi_matching",), conditions=("sae_sae", "sae_neuron")
    )
    assert list(got["semi_matching"]) == ["sae_sae"]  # sae_neuron is ridge's alone
    for s in range(2):
        np.testing.assert_array_equal(
            got["semi_matching"]["sae_sae"][s].folds, c.scores["semi_matching"]["sae_sae"][s].folds
        )
    for bad in ("sae_sae", ("neuron_sae",)):
        with pytest.raises(ValueError, match="conditions must be"):
            score_conditions(X, Y, lx, ly, lr, metrics=("semi_matching",), conditions=bad)


def test_metric_calls_side_by_side_equal_one_at_a_time(data, result):
    """``workers=2``: every result bitwise that of the calls made in turn, progress counted for
    every call, and the host BLAS back on its own number of threads afterwards."""
    from threadpoolctl import threadpool_info

    c, _ = result
    X, Y = (a[c.scoring_rows] for a in data)
    lx, ly = encode(c.saes["x"], X)[0], encode(c.saes["y"], Y)[0]
    lr = encode(c.saes["random"], X)[0][0]
    threads = [i["num_threads"] for i in threadpool_info()]
    ticks = []
    got = score_conditions(
        X, Y, lx, ly, lr, workers=2, callback=lambda done, total: ticks.append((done, total))
    )
    assert [i["num_threads"] for i in threadpool_info()] == threads
    # Soft + semi as one call per condition and seed (1 + 2 + 2), ridge 1 + 2 + 2 + 1.
    assert ticks == [(i, 11) for i in range(1, 12)]
    for metric, conds in c.scores.items():
        for cond, res in conds.items():
            pairs = (
                zip(got[metric][cond], res, strict=True)
                if cond in SEED_CONDITIONS
                else [(got[metric][cond], res)]
            )
            for a, b in pairs:
                np.testing.assert_array_equal(a.folds, b.folds)
    with pytest.raises(ValueError, match="workers must be a positive integer, got 0"):
        score_conditions(X, Y, lx, ly, lr, workers=0)


def test_seeds_are_a_vmap_axis_equal_to_training_each_seed_alone(data, result):
    """The 2 SAE seeds trained in one vmapped run equal sae.make_train run per seed."""
    c, _ = result
    rows = data[0][c.training_rows]
    train = jax.jit(sae.make_train(config()))
    for s, key in enumerate(jax.random.split(sae_key(0, "x"), 2)):
        ref, _ = train(key, rows)
        for got, want in zip(c.saes["x"].params, ref, strict=True):
            np.testing.assert_allclose(got[s], want, rtol=1e-4, atol=1e-5)


def test_training_reads_chunks_from_files_like_arrays(data, tmp_path):
    """Several chunks per epoch, read from an h5py dataset: the same SAEs as from the array.

    Chunks of 640 rows (700 rounded down to whole batches of 64): 640, 640 and 120 rows, so
    every epoch takes the 1400 // 64 steps of training in memory.
    """
    rows = np.sort(np.random.default_rng(0).choice(N_ROWS, 1400, replace=False))
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["x"] = data[0]
    cfg = config(n_epochs=2)
    key = jax.random.key(1)
    ref, metrics = train_saes(cfg, data[0], key, rows=rows, chunk_rows=700)
    assert metrics.mse.shape == (1, 2 * (1400 // 64))
    with h5py.File(tmp_path / "x.h5", "r") as f:
        got, _ = train_saes(cfg, f["x"], key, rows=rows, chunk_rows=700)
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_array_equal(a, b)


def test_planted_sae_sae_beats_neuron_neuron_and_the_random_control(result):
    c, caught = result
    assert not caught, [str(w.message) for w in caught]
    soft = c.scores["soft_matching"]
    for s in range(2):
        assert soft["sae_sae"][s].mean > soft["neuron_neuron"].mean + 0.1
        assert soft["sae_sae"][s].mean > soft["randsae_sae"][s].mean + 0.1
    for side in ("x", "y"):
        q = c.sae_quality[side]
        assert q.fve.shape == (2,) and (q.fve > 0.75).all(), q
        assert (q.l0 <= K).all() and (q.l0 > 1).all()
        assert q.n_latents == 4 * UNITS and (q.dead >= 0).all()
    for metric, g in c.gain.items():
        base = c.scores[metric]["neuron_neuron"].mean
        per_seed = np.array([r.mean for r in c.scores[metric]["sae_sae"]])
        want = 100 * (per_seed - base) / abs(base)
        np.testing.assert_allclose(g.percent, want, rtol=1e-12)
        assert g.mean == pytest.approx(want.mean()) and g.std == pytest.approx(want.std(ddof=1))
    assert c.gain["soft_matching"].mean > 20


def test_sae_quality_against_numpy(data, result):
    """FVE, L0 and dead latents recomputed in float64 numpy from the SAE's own arrays."""
    c, _ = result
    cfg, params = c.saes["x"]
    x = data[0][c.scoring_rows].astype(np.float64)
    xn = (x - x.mean(1, keepdims=True)) / np.maximum(x.std(1, keepdims=True), 1e-8)
    p = jax.tree.map(lambda a: np.asarray(a[0], np.float64), params)
    pre = xn @ p.W_enc + p.b_enc
    kth = np.sort(pre, axis=1)[:, -cfg.k][:, None]
    latents = np.where(pre >= kth, np.maximum(pre, 0), 0)
    err = ((latents @ p.W_dec + p.b_dec - xn) ** 2).sum()
    fve = 1 - err / ((xn - xn.mean(0)) ** 2).sum()
    q = c.sae_quality["x"]
    assert q.fve[0] == pytest.approx(fve, abs=1e-4)
    assert q.l0[0] == pytest.approx((latents != 0).sum(1).mean(), abs=1e-3)
    assert q.dead[0] == int(((latents != 0).sum(0) == 0).sum())


def test_undertrained_sae_warns(data, result):
    """SAEs trained on 64 rows (one step per epoch): the warning, and X_train / Y_train used."""
    c, _ = result
    X, Y = (a[c.scoring_rows] for a in data)
    kw = dict(sae_x=config(), sae_y=config(), sae_seeds=2, metrics=("semi_matching",))
    with pytest.warns(UserWarning, match="explains too little"):
        weak = superalign.compare(X, Y, X_train=data[0][:64], Y_train=data[1][:64], **kw)
    assert (weak.sae_quality["x"].fve < 0.5).all() and (weak.sae_quality["y"].fve < 0.5).all()
    assert weak.training_rows is None and np.array_equal(weak.scoring_rows, np.arange(len(X)))


def test_permutation_null(data, result):
    c, _ = result
    one = [TrainedSAE(t.config, jax.tree.map(lambda a: a[:1], t.params)) for t in c.saes.values()]
    n = 9
    kw = dict(sae_x=one[0], sae_y=one[1], metrics=("semi_matching",), null_permutations=n)
    # Related: the planted pair's scoring rows; p-values at their minimum 1 / (n + 1).
    X, Y = (a[c.scoring_rows] for a in data)
    related = superalign.compare(X, Y, **kw)
    for cond in ("neuron_neuron", "sae_sae", "randsae_sae"):
        assert np.all(related.null["semi_matching"][cond].p_value == pytest.approx(1 / (n + 1)))
    # The null's first draw is the metric on Y in that shuffled order; the p-value its formula.
    perm = null_permutation(len(Y), 0, 0)
    null = related.null["semi_matching"]["neuron_neuron"]
    assert null.scores.shape == (n,)
    assert null.scores[0] == pytest.approx(matching.semi_matching(X, Y[perm]).mean, abs=1e-6)
    obs = related.scores["semi_matching"]["neuron_neuron"].mean
    assert null.p_value == (1 + (null.scores >= obs).sum()) / (1 + n)
    assert related.null["semi_matching"]["sae_sae"].scores.shape == (1, n)
    # Unrelated: the same networks shown independent stimuli; scores near 0, p-values spread.
    Xu, _ = planted(len(X), seed=1)
    _, Yu = planted(len(X), seed=2)
    unrelated = superalign.compare(Xu, Yu, **kw)
    ps = []
    for cond, res in unrelated.scores["semi_matching"].items():
        mean = res[0].mean if cond in SEED_CONDITIONS else res.mean
        assert abs(mean) < 0.05, (cond, mean)
        nulls = unrelated.null["semi_matching"][cond]
        assert np.abs(nulls.scores).max() < 0.05
        ps.append(np.ravel(nulls.p_value))
    assert np.mean(np.concatenate(ps)) > 0.2


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(X=np.zeros(10)), "X must have rank 2"),
        (dict(Y="short"), "same number of rows"),
        (dict(X="nan"), r"X has NaN or Inf in 2 row\(s\) of 4000; first rows: \[3, 17\]"),
        (dict(Y_train="inf"), r"Y_train has NaN or Inf in 1 row\(s\)"),
        (dict(X_train="given"), "Y_train is required"),
        (dict(metrics=("soft_matching", "cosine")), r"unknown metric\(s\) \['cosine'\]"),
        (dict(metrics=("ridge", "ridge")), "must not repeat"),
        (dict(metrics="ridge"), "sequence of metric names"),
        (dict(sae_seeds=0), "sae_seeds must be a positive integer"),
        (dict(null_permutations=-1), "null_permutations must be an integer >= 0"),
        (dict(seed=-1), "seed must be an integer"),
        (dict(n_folds=1), "n_folds must be an integer >= 2"),
        (
            dict(rows=12),
            r"n_folds=5 needs at least 10 scoring rows \(2 per fold\), but the 12 rows of X and Y "
            "are split into 6 SAE training rows and 6 scoring rows; need at least 19 rows",
        ),
        (dict(sae_x="wide"), "sae_x is for n_inputs=25 units but its activations have 24"),
        (dict(sae_x="seeds"), r"sae_x params must be one SAE or \[sae_seeds=3"),
        (dict(sae_x="batch"), "at least batch_size=64 SAE training rows, got 50"),
    ],
)
def test_bad_input_is_refused_before_training(data, monkeypatch, change, match):
    def no_training(*args, **kwargs):
        raise AssertionError("trained before validating")

    monkeypatch.setattr(compare_module, "train_saes", no_training)
    X, Y = data
    kw = dict(X=X, Y=Y, sae_x=None, sae_y=None)
    rows = change.pop("rows", None)
    if rows is not None:
        kw["X"], kw["Y"] = X[:rows], Y[:rows]
        kw["sae_x"] = kw["sae_y"] = config(batch_size=2)
    for name, value in change.items():
        if not isinstance(value, str):
            pass
        elif value == "nan":
            value = X.copy()
            value[[3, 17], 5] = np.nan
        elif value == "inf":
            value = Y[:100].copy()
            value[7, 0] = np.inf
        elif value == "short":
            value = Y[:-1]
        elif value == "given":
            value = X[:100]
        elif value == "wide":
            value = sae.SAEConfig(n_inputs=25)
        elif value == "seeds":
            kw["sae_seeds"] = 3
            one = sae.init(config(), jax.random.key(0))
            value = jax.tree.map(lambda a: np.stack([a, a]), one)
        elif value == "batch":
            kw["X"], kw["Y"] = X[:100], Y[:100]
            value = config()
        kw[name] = value
    with pytest.raises(ValueError, match=match):
        superalign.compare(kw.pop("X"), kw.pop("Y"), **kw)


def test_defaults():
    assert default_k(2048) == 82 and default_k(1024) == 41 and default_k(10) == 1
    assert default_epochs(50_000) == 6 and default_epochs(100) == 300
    cfg = default_sae_config(1024, 50_000)
    assert (cfg.n_latents, cfg.k, cfg.n_epochs, cfg.batch_size) == (4096, 41, 6, 64)
    assert cfg.normalize_inputs and cfg.init == "kaiming_uniform"
    assert set(check_metrics(("ridge",))) == {"ridge"}
    train, score = split_rows(11, 0)
    assert len(train) == 5 and np.array_equal(np.sort(np.r_[train, score]), np.arange(11))
    assert not np.array_equal(sae_key(0, "x"), sae_key(0, "y"))


# ---------------------------------------------------------------------------------------------
# Command line.


CLI_FLAGS = ["--k", str(K), "--epochs", str(EPOCHS), "--sae-seeds", "2", "--no-progress"]


@pytest.fixture(scope="module")
def cli_run(data, tmp_path_factory):
    """Source as .npz, target as .h5, each with its rows in its own shuffled order and ids."""
    X, Y = data
    root = tmp_path_factory.mktemp("cli")
    ids = np.arange(N_ROWS) * 7 + 100
    pa, pb = (
        np.random.default_rng(5).permutation(N_ROWS),
        np.random.default_rng(6).permutation(N_ROWS),
    )
    np.savez(root / "a.npz", activations=X[pa], image_ids=ids[pa])
    with h5py.File(root / "b.h5", "w") as f:
        f["activations"] = Y[pb]
        f["image_ids"] = ids[pb]
    argv = [str(root / "a.npz"), str(root / "b.h5"), "--out", str(root / "out"), *CLI_FLAGS]
    argv += ["--cache-dir", str(root / "cache")]
    assert main(argv) == 0
    return root, argv


def _cli_means(out):
    results = json.loads((out / "results.json").read_text())
    return results, {
        (m, c): np.ravel([r["mean"] for r in (rec if isinstance(rec, list) else [rec])])
        for m, conds in results["scores"].items()
        for c, rec in conds.items()
    }


def test_cli_aligns_rows_by_image_ids(result, cli_run):
    c, _ = result
    root, _ = cli_run
    results, means = _cli_means(root / "out")
    assert results["matched_rows"] == N_ROWS and results["sae_source"] == {
        "a": "trained",
        "b": "trained",
    }
    for metric, conds in c.scores.items():
        for cond, res in conds.items():
            want = [r.mean for r in res] if cond in SEED_CONDITIONS else [res.mean]
            np.testing.assert_allclose(means[metric, cond], want, rtol=1e-6, atol=1e-7)
    for name in ("config.json", "table.md", "figure.png", "figure.pdf"):
        assert (root / "out" / name).stat().st_size > 0
    config_json = json.loads((root / "out" / "config.json").read_text())
    assert config_json["sae"]["a"]["k"] == K and config_json["sae_seeds"] == 2


def test_cli_rerun_restores_the_saes(cli_run, monkeypatch):
    root, argv = cli_run
    first = _cli_means(root / "out")[1]

    def no_training(*args, **kwargs):
        raise AssertionError("retrained on a rerun")

    monkeypatch.setattr(compare_module, "train_saes", no_training)
    assert main(argv) == 0
    results, means = _cli_means(root / "out")
    assert results["sae_source"] == {"a": "checkpoint", "b": "checkpoint"}
    for key, value in first.items():
        np.testing.assert_array_equal(means[key], value)


def test_cli_npy_files_without_ids_need_equal_row_counts(tmp_path, data):
    X, Y = data
    np.save(tmp_path / "a.npy", X)
    np.save(tmp_path / "b.npy", Y[:-1])
    with pytest.raises(SystemExit):
        main([str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--out", str(tmp_path / "o")])


def _write(path, **arrays):
    if path.suffix == ".npz":
        np.savez(path, **arrays)
    elif path.suffix == ".npy":
        np.save(path, arrays["activations"])
    elif path.suffix in (".h5", ".csv"):
        with h5py.File(path, "w") as f:
            for k, v in arrays.items():
                f[k] = v


def _bad_inputs(data):
    X, Y = data
    ids = np.arange(N_ROWS)
    nan = X.copy()
    nan[[10, 20, 30], 0] = np.nan
    dup = ids.copy()
    dup[5] = dup[6]
    return {
        "no common ids": (
            dict(activations=X, image_ids=ids),
            dict(activations=Y, image_ids=ids + N_ROWS),
            "no image_id in common",
        ),
        "duplicate ids": (
            dict(activations=X, image_ids=dup),
            dict(activations=Y, image_ids=ids),
            "image_ids must be distinct, but 1 id",
        ),
        "mismatched ids": (
            dict(activations=X, image_ids=ids[:-1]),
            dict(activations=Y, image_ids=ids),
            "image_ids must be \\[4000\\] \\(one per row",
        ),
        "nan rows": (
            dict(activations=nan, image_ids=ids),
            dict(activations=Y, image_ids=ids),
            "NaN or Inf in .* first file rows: \\[",
        ),
        "fewer rows than folds": (
            dict(activations=X[:8]),
            dict(activations=Y[:8]),
            "--folds=5 needs at least 10 scoring rows \\(2 per fold\\), but the 8 matched rows "
            "of A and B are split into 4 SAE training rows and 4 scoring rows; need at least "
            "19 rows",
        ),
        "1-D": (dict(activations=X[:, 0]), dict(activations=Y[:, 0]), "must be \\[n, units\\]"),
        "missing npz key": (dict(acts=X), dict(activations=Y), "no array 'activations'"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "no common ids",
        "duplicate ids",
        "mismatched ids",
        "nan rows",
        "fewer rows than folds",
        "1-D",
        "missing npz key",
        "missing h5 key",
        "unknown file type",
        "train-a alone",
    ],
)
def test_cli_bad_input(tmp_path, data, capsys, monkeypatch, case):
    monkeypatch.setattr(compare_module, "train_saes", None)  # any training would fail
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    extra = []
    if case == "missing h5 key":
        a, b = tmp_path / "a.h5", tmp_path / "b.h5"
        _write(a, acts=data[0])
        _write(b, activations=data[1])
        match = "no dataset 'activations'"
    elif case == "unknown file type":
        a = tmp_path / "a.csv"
        a.write_text("1,2\n")
        _write(b, activations=data[1])
        match = "unknown file type '.csv'"
    elif case == "train-a alone":
        _write(a, activations=data[0])
        _write(b, activations=data[1])
        extra = ["--train-a", str(a)]
        match = "--train-a and --train-b must be given together"
    else:
        arrays_a, arrays_b, match = _bad_inputs(data)[case]
        if case == "1-D":
            a, b = tmp_path / "a.npy", tmp_path / "b.npy"
        _write(a, **arrays_a)
        _write(b, **arrays_b)
    with pytest.raises(SystemExit) as err:
        main([str(a), str(b), "--out", str(tmp_path / "out"), "--no-progress", *extra])
    assert err.value.code == 2
    assert re.search(match, capsys.readouterr().err), case
