"""The NSD reader and the noise-ceiling maths, on closed forms and a miniature NSD tree."""

import shutil

import nibabel
import numpy as np
import pytest
import scipy.io
import scipy.stats

import superalign
from experiments import nsd_synthetic as synthetic
from superalign.brain import noise_ceiling as nc
from superalign.brain import nsd

SPEC = synthetic.SyntheticSpec(subjects=(1, 2), n_sessions=3, shape=(12, 14, 10), seed=3)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("nsd")
    return root, synthetic.build(root, SPEC)


# --- pure maths -----------------------------------------------------------------------------


def test_zscore_by_session_matches_scipy():
    rng = np.random.default_rng(0)
    session = np.repeat([3, 1, 2], [40, 50, 30])
    betas = rng.normal(5.0, 3.0, (120, 6)) * rng.uniform(0.5, 2, 6)
    betas[session == 1, 4] = 7.0  # constant in one session
    z, constant = nc.zscore_by_session(betas, session)
    for s in (1, 2, 3):
        live = [0, 1, 2, 3, 5] if s == 1 else list(range(6))
        expected = scipy.stats.zscore(betas[session == s][:, live], axis=0)
        np.testing.assert_allclose(z[session == s][:, live], expected, atol=1e-5)
    np.testing.assert_array_equal(constant, [False, False, False, False, True, False])
    assert np.all(z[session == 1, 4] == 0)


def test_noise_ceiling_equals_closed_form_for_exact_noise():
    # Repetitions s_i + sqrt(e) (-1, 0, 1): every image's across-repetition variance is exactly e.
    rng = np.random.default_rng(1)
    e = np.array([0.05, 0.3, 0.5, 0.8, 1.0])
    n_img = 200
    signal = rng.standard_normal((n_img, 1, e.size))
    reps = signal + np.sqrt(e) * np.array([-1.0, 0.0, 1.0])[None, :, None]
    z = reps.reshape(-1, e.size)
    trials = np.arange(3 * n_img).reshape(n_img, 3)
    out = nc.noise_ceiling(z, trials)
    np.testing.assert_allclose(out.noise_var, e, rtol=1e-6)
    np.testing.assert_allclose(out.noise_ceiling, nc.closed_form_noise_ceiling(e, 3), rtol=1e-5)
    # NSD's formula written out: ncsnr = sqrt(1 - e) / sqrt(e), NC = 100 ncsnr^2 / (ncsnr^2 + 1/3).
    snr2 = (1 - e) / e
    np.testing.assert_allclose(out.noise_ceiling, 100 * snr2 / (snr2 + 1 / 3), rtol=1e-5)
    assert out.noise_ceiling[-1] == 0.0  # pure noise
    single = nc.noise_ceiling(z, trials, n_average=1)  # NC of one trial
    np.testing.assert_allclose(single.noise_ceiling, 100 * snr2 / (snr2 + 1), rtol=1e-5)


def test_repetitions_and_averaging():
    ids = np.array([7, 3, 7, 9, 3, 7, 3, 9])
    reps = nc.repetitions(ids, 3)
    np.testing.assert_array_equal(reps.image_ids, [3, 7])
    np.testing.assert_array_equal(reps.trials, [[1, 4, 6], [0, 2, 5]])
    assert reps.counts == {2: 1, 3: 2}
    z = np.arange(16, dtype=np.float32).reshape(8, 2)
    avg = nc.average_repetitions(z, reps.trials)
    np.testing.assert_allclose(avg, [z[[1, 4, 6]].mean(0), z[[0, 2, 5]].mean(0)])
    with pytest.raises(ValueError, match="more than n_repetitions=2"):
        nc.repetitions(ids, 2)
    with pytest.raises(ValueError, match="trials must index the 8 rows of z"):
        nc.average_repetitions(z, reps.trials + 5)


# --- the miniature NSD ----------------------------------------------------------------------


def test_roi_mask_and_dropped_voxels(tree):
    root, truth = tree
    for s in SPEC.subjects:
        data = nsd.load_subject(root, s, n_sessions=3)
        t = truth.subjects[s]
        assert data.meta["roi_value"] == 5
        expected = np.argwhere(t.roi)
        dropped = np.isin(
            np.ravel_multi_index(expected.T, SPEC.shape),
            np.ravel_multi_index(t.dropped_ijk.T, SPEC.shape),
        )
        np.testing.assert_array_equal(data.voxel_ijk, expected[~dropped])
        np.testing.assert_array_equal(np.sort(data.dropped_ijk, 0), np.sort(t.dropped_ijk, 0))
        np.testing.assert_array_equal(data.image_ids, t.image_ids)
        np.testing.assert_allclose(data.affine, synthetic.AFFINE)
        assert data.responses.shape == (750, len(expected) - len(t.dropped_ijk))


def test_label_value_is_read_from_the_colour_table(tmp_path):
    labels = dict(synthetic.STREAMS, ventral=2, midventral=5)  # values swapped in the table
    spec = synthetic.SyntheticSpec(subjects=(1,), n_sessions=3, shape=(10, 12, 9), seed=4)
    truth = synthetic.build(tmp_path, spec, labels=labels)
    roi = nsd.roi_mask(tmp_path, 1, "streams", "ventral")
    assert roi.value == 2
    np.testing.assert_array_equal(roi.mask, truth.subjects[1].roi)
    assert nsd.read_ctab(nsd.ctab_path(tmp_path, 1))["midventral"] == 5


def test_zscoring_and_averaging_match_an_independent_pipeline(tree):
    root, _ = tree
    data = nsd.load_subject(root, 2, n_sessions=3)
    # Independently: nibabel + scipy zscore per session, the design through loadmat, a dict.
    design = scipy.io.loadmat(root / "nsddata/experiments/nsd/nsd_expdesign.mat")
    roi = np.asarray(
        nibabel.load(root / "nsddata/ppdata/subj02/func1pt8mm/roi/streams.nii.gz").dataobj
    )
    mask = roi == 5
    trials, ids = [], []
    for s in range(1, 4):
        folder = "nsddata_betas/ppdata/subj02/func1pt8mm/betas_fithrf_GLMdenoise_RR"
        path = root / folder / f"betas_session{s:02d}.nii.gz"
        betas = np.asarray(nibabel.load(path).dataobj)[mask].T / 300.0
        assert betas.shape == (750, mask.sum())
        trials.append(scipy.stats.zscore(betas, axis=0))
    z = np.concatenate(trials)
    live = np.all(np.isfinite(z), axis=0)  # the voxel zeroed in session 3 has no z-score there
    order = design["masterordering"].ravel()[:2250].astype(int)
    ids = design["subjectim"][1, order - 1].astype(int) - 1
    by_image = {}
    for t, i in enumerate(ids):
        by_image.setdefault(i, []).append(z[t, live])
    expected = np.stack([np.mean(by_image[i], axis=0) for i in sorted(by_image)])
    assert all(len(v) == 3 for v in by_image.values())
    np.testing.assert_array_equal(data.image_ids, sorted(by_image))
    np.testing.assert_allclose(data.responses, expected, atol=2e-5)
    # Per-session z-scoring: every session of every kept voxel has mean 0 and variance 1.
    np.testing.assert_allclose(z[:750, live].mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(z[:750, live].std(0), 1, atol=1e-9)


def test_noise_ceiling_matches_the_generative_closed_form(tree):
    # The estimate of e_v is a mean over I images of a variance with 2 degrees of freedom, so its
    # standard error is e_v / sqrt(I); the delta method carries it to NC (dNC/de = -300/(3-2e)^2).
    root, truth = tree
    zs = []
    for s in SPEC.subjects:
        data = nsd.load_subject(root, s, n_sessions=3)
        t = truth.subjects[s]
        e = t.noise_var
        se = 300 / (3 - 2 * e) ** 2 * e / np.sqrt(len(data.image_ids))
        zs.append((data.noise_ceiling - t.noise_ceiling) / se)
    z = np.concatenate(zs)
    assert abs(z.mean()) < 4 / np.sqrt(z.size)  # no bias
    assert np.abs(z).max() < 5
    assert 0.4 < z.std() < 1.2


def test_true_features_beat_a_scrambled_control(tree):
    root, truth = tree
    data = nsd.load_subject(root, 1, n_sessions=3)
    rows = np.searchsorted(truth.image_ids, data.image_ids)
    X = truth.features[rows]
    true = superalign.ridge_regression(X, data.responses)
    perm = np.random.default_rng(0).permutation(len(X))
    scrambled = superalign.ridge_regression(X[perm], data.responses)
    # The features span the signal: per voxel r ~ sqrt(NC / 100) (its explainable share).
    ceiling = np.mean(np.sqrt(data.noise_ceiling / 100))
    assert true.mean == pytest.approx(ceiling, abs=0.05)
    assert abs(scrambled.mean) < 0.05
    assert true.mean > scrambled.mean + 0.5


def test_cache_is_reused_and_keyed_on_arguments(tree, tmp_path, monkeypatch):
    root, _ = tree
    first = nsd.load_subject(root, 1, n_sessions=3, cache_dir=tmp_path)
    calls = []
    real = nsd.read_session
    monkeypatch.setattr(nsd, "read_session", lambda *a: calls.append(a) or real(*a))
    again = nsd.load_subject(root, 1, n_sessions=3, cache_dir=tmp_path)
    assert calls == []
    for field in ("responses", "image_ids", "noise_ceiling", "voxel_ijk"):
        np.testing.assert_array_equal(getattr(again, field), getattr(first, field))
    nsd.load_subject(root, 1, n_sessions=3, require_all_repetitions=False, cache_dir=tmp_path)
    assert len(calls) == 3  # other arguments: read again


def test_stimuli_are_read_by_0_based_id(tree):
    root, truth = tree
    ids = truth.image_ids[[5, 1, 5]]
    images = nsd.load_stimuli(root, ids)
    assert images.shape == (3, SPEC.image_size, SPEC.image_size, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[0], images[2])
    assert images.std() > 0
    unused = np.setdiff1d(np.arange(73_000), truth.image_ids)[0]
    assert nsd.load_stimuli(root, [unused]).max() == 0


# --- bad input ------------------------------------------------------------------------------


def test_a_missing_file_names_the_exact_path(tree, tmp_path):
    root, _ = tree
    expected = nsd.betas_path(root, 1, 4)
    with pytest.raises(FileNotFoundError, match=str(expected).replace(".", r"\.")):
        nsd.load_subject(root, 1, n_sessions=4)
    empty = tmp_path / "empty"
    with pytest.raises(FileNotFoundError, match="nsd_expdesign.mat"):
        nsd.load_subject(
            shutil.copytree(root / "nsddata_betas", empty / "nsddata_betas").parent, 1, n_sessions=3
        )
    with pytest.raises(FileNotFoundError, match=r"subj01/label/streams\.mgz\.ctab"):
        nsd.roi_mask(empty, 1)


def test_incomplete_repetitions_are_refused_with_counts(tree):
    root, _ = tree
    ids = nsd.trial_image_ids(nsd.read_design(nsd.expdesign_path(root)), 1, 1500)
    _, counts = np.unique(np.unique(ids, return_counts=True)[1], return_counts=True)
    with pytest.raises(ValueError, match=r"does not have 3 repetitions") as err:
        nsd.load_subject(root, 1, n_sessions=2)
    for n, c in zip(counts, (1, 2, 3), strict=True):
        assert f"{n} shown {c} time(s)" in str(err.value)
    kept = nsd.load_subject(root, 1, n_sessions=2, require_all_repetitions=False)
    assert len(kept.image_ids) == counts[2]


def test_unknown_label_lists_the_labels(tree):
    root, _ = tree
    with pytest.raises(ValueError, match=r"'fusiform' is not in the colour table .*'ventral'"):
        nsd.load_subject(root, 1, label="fusiform", n_sessions=3)
    with pytest.raises(ValueError, match="subject must be an NSD subject 1..8"):
        nsd.load_subject(root, 9)


def test_read_session_applies_a_header_scaling_to_the_roi_only(tmp_path):
    stored = (np.arange(2 * 3 * 4 * 750).reshape(2, 3, 4, 750) % 97).astype(np.int16)
    img = nibabel.Nifti1Image(stored, synthetic.AFFINE)
    img.header.set_slope_inter(2.0, 1.0)
    nibabel.save(img, tmp_path / "b.nii.gz")
    mask = np.zeros((2, 3, 4), bool)
    mask[1, 2, 3] = mask[0, 1, 0] = True
    got = nsd.read_session(tmp_path / "b.nii.gz", mask, synthetic.AFFINE)
    np.testing.assert_allclose(got, (2.0 * stored[mask].T + 1.0) / 300.0, rtol=1e-6)
    with pytest.raises(ValueError, match=r"must be \[2, 3, 5, 750\]"):
        nsd.read_session(tmp_path / "b.nii.gz", np.zeros((2, 3, 5), bool), synthetic.AFFINE)
    with pytest.raises(ValueError, match="not on the ROI's grid"):
        nsd.read_session(tmp_path / "b.nii.gz", mask, np.eye(4))
