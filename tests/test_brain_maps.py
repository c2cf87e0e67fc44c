"""Voxelwise gain maps: voxel mapping, NSD's voxel order on the grid, figures and refusals."""

from types import SimpleNamespace

import nibabel
import numpy as np
import pytest
from PIL import Image
from sklearn.model_selection import KFold

import superalign
from experiments import brain_maps, run_files
from experiments.nsd_synthetic import AFFINE
from superalign.brain import nsd

SHAPE = (8, 9, 7)


def _fake(unit_r, dead_y):
    return SimpleNamespace(unit_r=np.asarray(unit_r, float), dead_y=np.asarray(dead_y, int))


def test_voxel_r_by_hand():
    # 5 voxels, 1 and 4 dead: the 3 live columns of unit_r are voxels 0, 2, 3.
    result = _fake([[0.1, 0.2, 0.3], [0.3, 0.6, -0.1]], [4, 1])
    want = np.array([0.2, np.nan, 0.4, 0.1, np.nan])
    np.testing.assert_allclose(brain_maps.voxel_r(result, 5), want, rtol=0, atol=1e-15)
    as_mapping = {"unit_r": result.unit_r, "dead_y": result.dead_y}
    np.testing.assert_array_equal(brain_maps.voxel_r(as_mapping, 5), brain_maps.voxel_r(result, 5))


def test_voxel_gain_by_hand():
    neuron = _fake([[0.1, 0.2, 0.3, 0.4], [0.3, 0.0, 0.1, 0.2]], [2])  # live 0, 1, 3, 4
    sae = _fake([[0.5, 0.1, 0.6, 0.0], [0.5, 0.3, 0.2, 0.2]], [0])  # live 1, 2, 3, 4
    # neuron r: [0.2, 0.1, nan, 0.2, 0.3]; sae r: [nan, 0.5, 0.2, 0.4, 0.1]
    want = np.array([np.nan, 0.4, np.nan, 0.2, -0.2])
    np.testing.assert_allclose(brain_maps.voxel_gain(neuron, sae, 5), want, atol=1e-15)
    half = brain_maps.voxel_gain(neuron, sae, 5, noise_ceiling_fraction=0.25)
    np.testing.assert_allclose(half, want / 0.25, atol=1e-14)


def _unit_norm(a, centre):
    a = a - centre
    return a / np.linalg.norm(a, axis=0)


def test_voxel_r_of_ridge_regression():
    """A real result against a float64 reference of the documented protocol, voxel by voxel.

    The reference (superalign.regression's docstring): per scikit-learn KFold fold, train X and Y
    centred and unit norm with train statistics, ridge at the fold's chosen alpha, test X centred
    and unit norm with test statistics, Pearson r per voxel; the folds' mean.
    """
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 4))
    Y = np.stack(
        [
            np.full(60, 3.0),  # dead
            X @ [1.0, -2.0, 0.5, 0.0] + 0.01 * rng.standard_normal(60),
            rng.standard_normal(60),
            np.zeros(60),  # dead
            X @ [0.0, 1.0, 1.0, -1.0] + 0.01 * rng.standard_normal(60),
        ],
        axis=1,
    )
    result = superalign.ridge_regression(X, Y, n_folds=3, seed=0)
    live = [1, 2, 4]
    ref = []
    for k, (tr, te) in enumerate(KFold(3, shuffle=True, random_state=0).split(X)):
        xt, yt = (
            _unit_norm(X[tr], X[tr].mean(0)),
            _unit_norm(Y[tr][:, live], Y[tr][:, live].mean(0)),
        )
        w = np.linalg.solve(xt.T @ xt + result.alpha[k] * np.eye(4), xt.T @ yt)
        pred = _unit_norm(X[te], X[te].mean(0)) @ w
        ref.append([np.corrcoef(pred[:, j], Y[te][:, v])[0, 1] for j, v in enumerate(live)])
    want = np.full(5, np.nan)
    want[live] = np.mean(ref, axis=0)
    r = brain_maps.voxel_r(result, 5)
    np.testing.assert_allclose(r, want, rtol=0, atol=1e-5)  # the regression runs in float32
    # The mean over live voxels is the result's score (a mean of per-fold means).
    assert np.nanmean(r) == pytest.approx(result.mean, abs=1e-6)


@pytest.fixture(scope="module")
def nsd_order(tmp_path_factory):
    """A mask, and its voxels' flat grid indices in the order nsd.read_session returns them."""
    rng = np.random.default_rng(1)
    mask = rng.random(SHAPE) < 0.3
    index = np.arange(np.prod(SHAPE)).reshape(SHAPE) + 1  # every voxel holds its own index + 1
    betas = np.repeat(index[..., None], nsd.TRIALS_PER_SESSION, axis=3).astype(np.int16)
    path = tmp_path_factory.mktemp("betas") / "betas_session01.nii.gz"
    nibabel.save(nibabel.Nifti1Image(betas, AFFINE), path)
    values = nsd.read_session(path, mask, AFFINE)[0].astype(np.float64) * nsd.BETA_SCALE - 1
    return mask, np.rint(values)


def test_round_trip_in_nsd_order(nsd_order):
    from nilearn import masking

    mask, flat = nsd_order
    ijk = np.argwhere(mask)
    keep = np.ones(len(ijk), bool)
    keep[[2, len(ijk) // 2]] = False  # voxels load_subject drops as constant
    voxel_ijk = ijk[keep]  # SubjectData.voxel_ijk
    values = flat[keep] + 0.5  # column v of the data: any value per voxel
    dmask = brain_maps.data_mask(voxel_ijk, SHAPE)
    assert dmask.sum() == keep.sum() and not dmask[tuple(ijk[~keep].T)].any()

    img = brain_maps.to_volume(values, dmask, AFFINE)
    grid = np.asarray(img.get_fdata())
    assert img.shape == SHAPE and np.allclose(img.affine, AFFINE)
    # Column v lands on voxel voxel_ijk[v], the voxel whose own flat index nsd read there.
    np.testing.assert_array_equal(grid[tuple(voxel_ijk.T)], values)
    np.testing.assert_array_equal(np.ravel_multi_index(tuple(voxel_ijk.T), SHAPE), flat[keep])
    assert (grid[~dmask] == 0).all()
    mask_img = nibabel.Nifti1Image(dmask.astype(np.uint8), AFFINE)
    np.testing.assert_array_equal(masking.apply_mask(img, mask_img), values)

    with_dead = values.copy()
    with_dead[[0, 3]] = np.nan  # dead voxels stay NaN on the grid, in place
    grid = np.asarray(brain_maps.to_volume(with_dead, dmask, AFFINE).get_fdata())
    np.testing.assert_array_equal(grid[tuple(voxel_ijk.T)], with_dead)


def _gain_volume():
    rng = np.random.default_rng(2)
    mask = np.zeros(SHAPE, bool)
    mask[2:6, 2:7, 1:5] = True
    gains = rng.uniform(-0.3, 0.2, mask.sum())
    gains[5] = np.nan  # a dead voxel
    gains[7] = 0.4  # the largest |gain|
    return brain_maps.to_volume(gains, mask, AFFINE)


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(nibabel.Nifti1Image(data.astype(np.float32), AFFINE), path)


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """save_gain_maps over a T1 (subject 1) and over nothing (subject 5); what each figure held."""
    root = tmp_path_factory.mktemp("nsd")
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    _write(brain_maps.anatomy_path(root, 1), 1000.0 * (x**2 + y**2 + z**2 <= 1))
    seen = {}
    save = run_files.save_figure

    def spy(fig, stem):
        cbar = [ax for ax in fig.axes if ax.get_ylabel() == brain_maps.GAIN_LABEL]
        seen[stem.name] = (fig.get_suptitle(), [ax.get_ylim() for ax in cbar])
        return save(fig, stem)

    img = _gain_volume()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_files, "save_figure", spy)
        paths = brain_maps.save_gain_maps(
            {1: img, 5: img}, root, tmp_path_factory.mktemp("figures"), name="ResNet-18 layer4"
        )
    return root, paths, seen


def test_figures_written(drawn):
    _, paths, seen = drawn
    assert sorted(paths) == [1, 5]
    for subject, (png, pdf) in paths.items():
        assert png.name == f"gain_map_resnet_18_layer4_subj0{subject}.png"
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 5_000
        rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
        r, b = rgb[..., 0], rgb[..., 2]
        # Voxels of both signs are drawn: strong reds and strong blues, beyond the colour bar's.
        assert ((r > 150) & (b < 100)).sum() > 500 and ((b > 150) & (r < 100)).sum() > 500
        assert np.unique((r << 16) + (rgb[..., 1] << 8) + b).size > 100  # distinct colours
    # One colour bar per figure, labelled, symmetric about 0 at the largest |gain|.
    for _, bars in seen.values():
        assert len(bars) == 1
        np.testing.assert_allclose(bars[0], (-0.4, 0.4), rtol=1e-6)


def test_background_fallback(drawn):
    root, _, seen = drawn
    t1 = brain_maps.background(root, 1)
    assert t1.kind == "T1" and t1.path == brain_maps.anatomy_path(root, 1)
    assert t1.path.as_posix().endswith("nsddata/ppdata/subj01/func1pt8mm/T1_to_func1pt8mm.nii.gz")
    none = brain_maps.background(root, 5)
    assert none.kind == "none" and none.path is None
    assert seen["gain_map_resnet_18_layer4_subj01"][0].count("\n") == 0
    assert none.note in seen["gain_map_resnet_18_layer4_subj05"][0]

    _write(brain_maps.mean_path(root, 7), np.ones(SHAPE))
    mean = brain_maps.background(root, 7)
    assert mean.kind == "mean functional volume" and mean.path.name == "mean.nii.gz"
    assert "mean functional volume" in mean.note


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: brain_maps.voxel_r(_fake([[0.1, 0.2]], [0]), 4), "result.unit_r"),
        (lambda: brain_maps.voxel_r(_fake([[0.1, 0.2]], [3]), 3), "result.dead_y"),
        (lambda: brain_maps.voxel_r(_fake([[0.1, 0.2]], []), 0), "n_voxels"),
        (lambda: brain_maps.voxel_r(np.zeros((2, 3)), 3), "result"),
        (
            lambda: brain_maps.voxel_gain(_fake([[0.1]], []), _fake([[0.2, 0.1]], []), 1),
            "result.unit_r",
        ),
        (
            lambda: brain_maps.voxel_gain(
                _fake([[0.1]], []), _fake([[0.2]], []), 1, noise_ceiling_fraction=0.0
            ),
            "noise_ceiling_fraction",
        ),
        (lambda: brain_maps.to_volume(np.zeros(3), np.ones(SHAPE, bool), AFFINE), "values"),
        (lambda: brain_maps.to_volume(np.zeros(4), np.ones((2, 2), bool), AFFINE), "mask"),
        (lambda: brain_maps.to_volume(np.zeros(8), np.ones((2, 2, 2), bool), np.eye(3)), "affine"),
        (lambda: brain_maps.data_mask([[0, 0, 9]], SHAPE), "voxel_ijk"),
        (lambda: brain_maps.data_mask([[1, 0, 0], [0, 0, 1]], SHAPE), "voxel_ijk"),
        (lambda: brain_maps.anatomy_path("/nsd", 9), "subject"),
        (
            lambda: brain_maps.gain_figure(
                _gain_volume(), nibabel.Nifti1Image(np.ones((4, 4, 4)), AFFINE), title="t"
            ),
            "anat",
        ),
        (lambda: brain_maps.gain_figure(_gain_volume(), None, title="t", threshold=-1), "thresh"),
        (lambda: brain_maps.gain_figure(np.zeros(SHAPE), None, title="t"), "img"),
    ],
)
def test_refusals(call, name):
    with pytest.raises(ValueError, match=name):
        call()
