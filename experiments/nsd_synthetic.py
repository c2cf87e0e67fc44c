"""A miniature Natural Scenes Dataset in the release's exact layout and file formats.

The files, their paths and formats are those :mod:`superalign.brain.nsd` documents (sources: the
NSD Data Manual at cvnlab.slite.page, pages "Functional data (NSD)", "ROIs", "Experiments",
"Technical notes"). What is real-sized and what is miniature:

- ``nsddata/experiments/nsd/nsd_expdesign.mat`` (MATLAB v5, doubles, as MATLAB saves them):
  ``masterordering`` [1, 30000] and ``subjectim`` [8, 10000] at their real sizes and with the
  real structure (every 10k-id shown 3 times over the 30,000 trials; ``subjectim[:, :1000]`` the
  1,000 shared images, listed in ``sharedix`` [1, 1000]; the other 72,000 73k-ids split over the
  8 subjects, 9,000 each). The first ``n_sessions x 750`` trials show ``n_sessions x 250``
  images 3 times each, so a subject is complete after ``n_sessions`` sessions. (The release's
  file has further fields, e.g. ``basiccnt`` and ``stimpattern``, that nothing here reads.)
- ``nsddata_betas/ppdata/subjAA/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_sessionNN.nii.gz``:
  int16 NIfTI, ``X x Y x Z x 750`` (750 trials per session as in the release; a small grid),
  percent signal change times 300, zero outside the brain, 1.8 mm voxels.
- ``nsddata/ppdata/subjAA/func1pt8mm/roi/streams.nii.gz``: int16 volume on the same grid, -1
  off cortex, 0 unlabelled cortex, 1..7 the streams labels.
- ``nsddata/freesurfer/subjAA/label/streams.mgz.ctab``: ``value name`` lines, by default the
  release's table (0 Unknown, 1 early, 2 midventral, 3 midlateral, 4 midparietal, 5 ventral,
  6 lateral, 7 parietal). Assumption: the release's file has no colour columns; the reader
  accepts both.
- ``nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5``: ``imgBrick`` [73000, S, S, 3] uint8 (the
  release has S = 425), chunked per image so only the images used take disk space.
- ``nsddata/ppdata/subjAA/func1pt8mm/T1_to_func1pt8mm.nii.gz``: float32 volume on the functional
  grid (the release's T1 resampled to 1.8 mm): an ellipsoidal "brain" brighter towards its
  centre, with noise, for the gain maps to be drawn over. Drawn from its own generator
  (``seed + 1``), so every other file is what it was before the T1 was added.

Generative model. Every image has ``F`` sparse non-negative features ``z`` (each active with
probability ``feature_prob``, active values U[0, 1]). Every brain voxel ``v`` responds to image
``i`` with ``sqrt(1 - e_v) u_iv + sqrt(e_v) eps`` on every trial, where ``u_v`` = ``z B_v``
standardised over the subject's images (a linear map of the known features), ``eps`` is
standard normal trial noise and ``e_v`` the chosen repetition (noise) variance, drawn uniformly
from ``noise_var``. Each session then applies its own baseline and gain to every voxel
(percent signal change = ``offset + gain x response``), which per-session z-scoring undoes. The
closed-form noise ceiling of voxel ``v`` is ``100 (1 - e_v) / (1 - e_v + e_v / 3)``.

Activation files (the documented format the experiment reads, see
``experiments/brain_alignment.py``): ``features.npz`` holds the known features ``z`` and
``mixed.npz`` a superposed version ``z A`` (``A`` a Gaussian [F, N] map, N < F), both with
``image_ids`` (0-based 73k-ids) for every image any subject saw; ``features_train.npz`` and
``mixed_train.npz`` the same maps of ``n_train_rows`` fresh feature draws, for the SAEs to train
on (as the paper's SAEs train on ImageNet, not on the NSD images).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

import numpy as np

from experiments import brain_maps
from superalign.brain import noise_ceiling as _nc
from superalign.brain import nsd

STREAMS = {
    "Unknown": 0,
    "early": 1,
    "midventral": 2,
    "midlateral": 3,
    "midparietal": 4,
    "ventral": 5,
    "lateral": 6,
    "parietal": 7,
}
"""The release's streams colour table."""


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    subjects: tuple = (1, 2, 5, 7)
    n_sessions: int = 3  # 750 images x 3 repetitions per subject
    shape: tuple = (14, 16, 12)  # the 1.8 mm grid (the release's subject 1: 81 x 104 x 83)
    n_features: int = 32
    feature_prob: float = 0.05
    mixed_neurons: int = 16
    n_train_rows: int = 20_000  # fresh draws for the SAEs to train on (the paper: ImageNet)
    noise_var: tuple = (0.3, 0.9)  # range of the voxels' repetition variance e_v
    n_dropout_voxels: int = 1  # ROI voxels zeroed in the last session (edge-of-volume dropout)
    image_size: int = 16
    seed: int = 0


class SubjectTruth(NamedTuple):
    image_ids: np.ndarray  # [I] 0-based 73k-ids with 3 repetitions, ascending
    roi: np.ndarray  # [X, Y, Z] bool, the ventral label
    dropped_ijk: np.ndarray  # [D, 3] ROI voxels zeroed in one session
    noise_var: np.ndarray  # [V] e_v of the ROI voxels kept, in np.argwhere(roi) order
    noise_ceiling: np.ndarray  # [V] closed form for e_v


class Truth(NamedTuple):
    subjects: dict  # subject -> SubjectTruth
    image_ids: np.ndarray  # [n] every image any subject saw (0-based 73k-ids), ascending
    features: np.ndarray  # [n, F] the known features z
    activation_files: dict  # name -> path of an activation file


AFFINE = np.array(
    [[1.8, 0, 0, -72.0], [0, 1.8, 0, -90.0], [0, 0, 1.8, -72.0], [0, 0, 0, 1.0]], np.float64
)


def streams_volume(shape) -> np.ndarray:
    """[X, Y, Z] int16 labels: -1 off an ellipsoidal cortex, 0 its midline, 1..7 by position."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    brain = x**2 + y**2 + z**2 <= 1.0
    yq = np.digitize(y, [-0.5, 0.0])  # 0 posterior, 1 middle, 2 anterior
    zq = np.digitize(z, [-1 / 3, 1 / 3])  # 0 inferior, 1 middle, 2 superior
    labels = np.where(yq == 0, 1, np.where(yq == 1, 2 + zq, 5 + zq))
    labels = np.where(np.abs(x) < 1.0 / shape[0], 0, labels)  # the medial wall: no label
    return np.where(brain, labels, -1).astype(np.int16)


def _design(spec: SyntheticSpec, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    per = nsd.TRIALS_PER_SESSION // nsd.N_REPETITIONS
    n_used = spec.n_sessions * per
    used = rng.choice(np.arange(1, 10_001), n_used, replace=False)
    rest = np.setdiff1d(np.arange(1, 10_001), used)
    order = np.concatenate(
        [
            rng.permutation(np.repeat(used, nsd.N_REPETITIONS)),
            rng.permutation(np.repeat(rest, nsd.N_REPETITIONS)),
        ]
    )
    shared = np.sort(rng.choice(np.arange(1, 73_001), 1000, replace=False))
    others = rng.permutation(np.setdiff1d(np.arange(1, 73_001), shared)).reshape(8, 9000)
    subjectim = np.concatenate([np.broadcast_to(shared, (8, 1000)), others], axis=1)
    return order, subjectim, shared


def _write_nifti(path: Path, data: np.ndarray) -> None:
    import nibabel

    path.parent.mkdir(parents=True, exist_ok=True)
    img = nibabel.Nifti1Image(data, AFFINE)
    img.header.set_data_dtype(data.dtype)
    img.header.set_xyzt_units("mm", "sec")
    nibabel.save(img, path)


def _write_ctab(path: Path, labels: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{v} {k}\n" for k, v in sorted(labels.items(), key=lambda kv: kv[1])))


def build(root, spec: SyntheticSpec = SyntheticSpec(), *, labels: dict | None = None) -> Truth:
    """Write the miniature NSD under ``root`` and its activation files under ``root/activations``.

    Args:
      root: the folder to become the NSD root.
      spec: sizes and the generative model.
      labels: the streams colour table to write (``{name: value}``); None for the release's.
        The ROI volume follows it: the "ventral" region carries ``labels["ventral"]``.

    Returns:
      The :class:`Truth` the files were drawn from.
    """
    import h5py
    import scipy.io

    root = Path(root)
    labels = dict(STREAMS if labels is None else labels)
    rng = np.random.default_rng(spec.seed)
    order, subjectim, shared = _design(spec, rng)
    path = nsd.expdesign_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(
        path,
        {
            "masterordering": order[None].astype(np.float64),
            "subjectim": subjectim.astype(np.float64),
            "sharedix": shared[None].astype(np.float64),
        },
    )
    n_trials = spec.n_sessions * nsd.TRIALS_PER_SESSION
    design = nsd.Design(order, subjectim)
    trial_ids = {s: nsd.trial_image_ids(design, s, n_trials) for s in spec.subjects}
    all_ids = np.unique(np.concatenate(list(trial_ids.values())))
    features = (rng.random((all_ids.size, spec.n_features)) < spec.feature_prob) * rng.random(
        (all_ids.size, spec.n_features)
    )
    features = features.astype(np.float32)

    # Streams atlas: the release's values, remapped to the table written.
    streams = streams_volume(spec.shape)
    remap = {STREAMS[name]: labels[name] for name in STREAMS if name in labels}
    atlas = streams.copy()
    for old, new in remap.items():
        atlas[streams == old] = new
    brain = streams >= 0
    ventral = streams == STREAMS["ventral"]
    ventral_ijk = np.argwhere(ventral)

    truth = {}
    for subject in spec.subjects:
        _write_nifti(nsd.roi_path(root, subject), atlas)
        _write_ctab(nsd.ctab_path(root, subject), labels)
        ids = trial_ids[subject]
        reps = _nc.repetitions(ids, nsd.N_REPETITIONS)
        n_vox = int(brain.sum())
        e = rng.uniform(*spec.noise_var, n_vox)
        weights = rng.standard_normal((spec.n_features, n_vox))
        rows = np.searchsorted(all_ids, reps.image_ids)
        u = features[rows].astype(np.float64) @ weights  # [I, n_vox]
        u = (u - u.mean(0)) / u.std(0)
        signal = np.sqrt(1.0 - e) * u  # per image
        image_row = np.searchsorted(reps.image_ids, ids)  # every trial's image (all complete)
        drop = ventral_ijk[rng.choice(len(ventral_ijk), spec.n_dropout_voxels, replace=False)]
        for s in range(spec.n_sessions):
            t = slice(s * nsd.TRIALS_PER_SESSION, (s + 1) * nsd.TRIALS_PER_SESSION)
            resp = signal[image_row[t]] + np.sqrt(e) * rng.standard_normal((750, n_vox))
            offset = rng.normal(0.0, 2.0, n_vox)
            gain = rng.uniform(0.5, 2.0, n_vox)
            vol = np.zeros((*spec.shape, nsd.TRIALS_PER_SESSION), np.int16)
            vol[brain] = np.rint(nsd.BETA_SCALE * (offset + gain * resp)).T.astype(np.int16)
            if s == spec.n_sessions - 1:
                vol[tuple(drop.T)] = 0
            _write_nifti(nsd.betas_path(root, subject, s + 1), vol)
        in_roi = ventral[brain]  # brain voxels (C order) that are in the ROI, same order as ijk
        keep = ~np.isin(
            np.ravel_multi_index(ventral_ijk.T, spec.shape),
            np.ravel_multi_index(drop.T, spec.shape),
        )
        e_roi = e[in_roi][keep]
        truth[subject] = SubjectTruth(
            reps.image_ids.astype(np.int64),
            ventral,
            drop,
            e_roi,
            _nc.closed_form_noise_ceiling(e_roi, nsd.N_REPETITIONS),
        )

    # Stimuli: a fixed rendering of each image's features.
    size = spec.image_size
    proj = rng.standard_normal((spec.n_features, size * size * 3)) / np.sqrt(spec.n_features)
    pixels = np.clip(128 + 96 * features @ proj, 0, 255).astype(np.uint8)
    path = nsd.stimuli_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        brick = f.create_dataset(
            "imgBrick", shape=(73_000, size, size, 3), dtype=np.uint8, chunks=(1, size, size, 3)
        )
        brick[all_ids] = pixels.reshape(-1, size, size, 3)

    mixing = rng.standard_normal((spec.n_features, spec.mixed_neurons)) / np.sqrt(spec.n_features)
    files = activation_files(root)
    files["features"].parent.mkdir(parents=True, exist_ok=True)
    np.savez(files["features"], image_ids=all_ids.astype(np.int64), activations=features)
    np.savez(
        files["mixed"],
        image_ids=all_ids.astype(np.int64),
        activations=(features @ mixing).astype(np.float32),
    )
    n, f = spec.n_train_rows, spec.n_features
    train = ((rng.random((n, f)) < spec.feature_prob) * rng.random((n, f))).astype(np.float32)
    np.savez(files["features_train"], activations=train)
    np.savez(files["mixed_train"], activations=(train @ mixing).astype(np.float32))

    t1_rng = np.random.default_rng(spec.seed + 1)  # not rng: the draws above stay as they were
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in spec.shape], indexing="ij")
    radius2 = x**2 + y**2 + z**2
    for subject in spec.subjects:
        t1 = np.where(brain, 400.0 + 500.0 * (1.0 - radius2), 40.0)
        t1 = t1 + 30.0 * t1_rng.standard_normal(spec.shape)
        _write_nifti(brain_maps.anatomy_path(root, subject), t1.astype(np.float32))
    return Truth(truth, all_ids.astype(np.int64), features, files)


def activation_files(root) -> dict:
    """Paths of the activation files :func:`build` writes: NSD images and SAE training rows."""
    folder = Path(root) / "activations"
    names = ("features", "mixed", "features_train", "mixed_train")
    return {name: folder / f"{name}.npz" for name in names}
