"""Read the Natural Scenes Dataset (NSD) as it is distributed, for one subject at a time.

Layout, relative to the NSD root (the folder holding ``nsddata``, ``nsddata_betas`` and
``nsddata_stimuli``; sources: the NSD Data Manual, cvnlab.slite.page, pages "Functional data
(NSD)", "ROIs", "Experiments" and "Technical notes"):

- ``nsddata_betas/ppdata/subjAA/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_sessionNN.nii.gz``:
  single-trial betas, version 3 (b3), 1.8 mm volume, one 4-D NIfTI per scan session,
  ``X x Y x Z x 750`` int16 holding percent signal change times 300 (divide by 300 on load), with
  non-brain voxels set to zero. The 750 trials are in chronological order.
- ``nsddata/ppdata/subjAA/func1pt8mm/roi/streams.nii.gz``: the "streams" atlas on the same grid;
  a voxel's value is its label (0: no label; negative values such as -1 mark voxels off cortex).
- ``nsddata/freesurfer/subjAA/label/streams.mgz.ctab``: the atlas's colour table, one
  ``value name`` line per label (FreeSurfer colour tables may add R G B A columns; they are
  ignored). The label's value is read from here, never hard-coded ("ventral" is 5 in the
  release: 0 Unknown, 1 early, 2 midventral, 3 midlateral, 4 midparietal, 5 ventral, 6 lateral,
  7 parietal).
- ``nsddata/experiments/nsd/nsd_expdesign.mat`` (MATLAB v5, ``scipy.io.loadmat``):
  ``masterordering`` [1, 30000], the 10k-id (1-based, 1..10000) of every trial in chronological
  order, 750 per session; ``subjectim`` [8, 10000], the 73k-id (1-based) of every subject's
  10k-ids. Trial ``t`` (0-based) of subject ``s`` showed 73k image
  ``subjectim[s - 1, masterordering[t] - 1]``.
- ``nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5``: dataset ``imgBrick``,
  ``[73000, 425, 425, 3]`` uint8, row ``i`` is the image with 0-based 73k-id ``i``.

Image ids in this package are **0-based 73k-ids** (the 1-based ids of the design file minus 1,
i.e. rows of ``imgBrick``).

Subjects completed 40, 40, 32, 30, 40, 32, 40 and 30 sessions (subjects 1 to 8); only subjects
1, 2, 5 and 7 saw each of their 10,000 images 3 times. :func:`load_subject` reads every session,
masks the ROI, z-scores every voxel within each session, keeps the images with all repetitions,
averages them and computes NSD's noise ceiling (:mod:`superalign.brain.noise_ceiling`); the
result is cached in one ``.npz`` per subject so the NIfTI work runs once.

This module does file I/O (it is the package's data-set reader) but prints nothing; progress is
reported through a callback. It needs nibabel (``pip install 'superalign[brain]'``); reading the
stimuli needs h5py (imported when they are read): :func:`load_stimuli` reads a selection at once,
:func:`iter_stimuli` in chunks (``superalign.datasets`` reads them this way, ``name="nsd"``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from superalign import checks
from superalign.brain import noise_ceiling as _nc

TRIALS_PER_SESSION = 750
N_REPETITIONS = 3
BETA_SCALE = 300.0
"""int16 betas are percent signal change times this."""
BETAS_VERSION = "betas_fithrf_GLMdenoise_RR"
SESSIONS = {1: 40, 2: 40, 3: 32, 4: 30, 5: 40, 6: 32, 7: 40, 8: 30}
"""NSD core sessions completed by each subject (NSD Data Manual, "Technical notes")."""
CACHE_FORMAT = 1


def _subj(subject: int) -> str:
    return f"subj{subject:02d}"


def betas_path(root, subject: int, session: int, version: str = BETAS_VERSION) -> Path:
    """Path of one session's single-trial betas (1.8 mm volume NIfTI)."""
    return (
        Path(root)
        / "nsddata_betas"
        / "ppdata"
        / _subj(subject)
        / "func1pt8mm"
        / version
        / f"betas_session{session:02d}.nii.gz"
    )


def roi_path(root, subject: int, atlas: str = "streams") -> Path:
    """Path of an ROI atlas volume in the subject's 1.8 mm functional space."""
    return (
        Path(root)
        / "nsddata"
        / "ppdata"
        / _subj(subject)
        / "func1pt8mm"
        / "roi"
        / f"{atlas}.nii.gz"
    )


def ctab_path(root, subject: int, atlas: str = "streams") -> Path:
    """Path of an ROI atlas's colour table (label values and names)."""
    return Path(root) / "nsddata" / "freesurfer" / _subj(subject) / "label" / f"{atlas}.mgz.ctab"


def expdesign_path(root) -> Path:
    """Path of the NSD experiment design file."""
    return Path(root) / "nsddata" / "experiments" / "nsd" / "nsd_expdesign.mat"


def stimuli_path(root) -> Path:
    """Path of the NSD stimulus images (HDF5)."""
    return Path(root) / "nsddata_stimuli" / "stimuli" / "nsd" / "nsd_stimuli.hdf5"


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(2, f"{what} not found; expected the file {path}", str(path))
    return path


def _nibabel():
    try:
        import nibabel
    except ImportError as err:  # nibabel is an optional dependency (extra "brain")
        raise ImportError(
            "reading NSD needs nibabel: pip install 'superalign[brain]' (or pip install nibabel)"
        ) from err
    return nibabel


def _check_subject(subject) -> int:
    if (
        isinstance(subject, bool)
        or not isinstance(subject, (int, np.integer))
        or subject not in SESSIONS
    ):
        raise ValueError(f"subject must be an NSD subject 1..8, got {subject!r}")
    return int(subject)


def read_ctab(path) -> dict[str, int]:
    """``{label name: value}`` of a FreeSurfer-style colour table (``value name [R G B A]``)."""
    table = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        try:
            value = int(words[0])
        except ValueError:
            raise ValueError(
                f"{path} line {number} must start with an integer label value, got {line!r}"
            ) from None
        if len(words) < 2:
            raise ValueError(f"{path} line {number} has no label name: {line!r}")
        table[words[1]] = value
    return table


class RoiMask(NamedTuple):
    """An ROI on the 1.8 mm functional grid.

    Attributes:
      mask: [X, Y, Z] bool, True inside the ROI.
      value: the label's value in the atlas (from the colour table).
      affine: [4, 4] voxel-to-world transform of the grid.
    """

    mask: np.ndarray
    value: int
    affine: np.ndarray


def roi_mask(root, subject: int, atlas: str = "streams", label: str = "ventral") -> RoiMask:
    """The voxels of one atlas label; the label's value is read from the atlas's colour table.

    Raises ``FileNotFoundError`` naming the expected path of a missing file and ``ValueError``
    listing the colour table's labels if ``label`` is not among them.
    """
    subject = _check_subject(subject)
    table = read_ctab(_require(ctab_path(root, subject, atlas), f"colour table of atlas {atlas!r}"))
    if label not in table:
        raise ValueError(
            f"label {label!r} is not in the colour table {ctab_path(root, subject, atlas)}; its "
            f"labels are {sorted(table, key=table.get)} (values {sorted(table.values())})"
        )
    img = _nibabel().load(
        _require(roi_path(root, subject, atlas), f"ROI volume of atlas {atlas!r}")
    )
    values = np.asanyarray(img.dataobj)
    if values.ndim != 3:
        raise ValueError(
            f"{roi_path(root, subject, atlas)} must be a 3-D volume, got {values.shape}"
        )
    mask = np.rint(values) == table[label]
    if not mask.any():
        raise ValueError(
            f"label {label!r} (value {table[label]}) labels no voxel of "
            f"{roi_path(root, subject, atlas)} "
            f"(values present: {np.unique(np.rint(values)).tolist()})"
        )
    return RoiMask(mask, table[label], np.asarray(img.affine, np.float64))


class Design(NamedTuple):
    """The NSD experiment design.

    Attributes:
      masterordering: [30000] 10k-id (1-based) of every trial, chronological.
      subjectim: [8, 10000] 73k-id (1-based) of every subject's 10k-ids.
    """

    masterordering: np.ndarray
    subjectim: np.ndarray


def _integer_array(path, name, x) -> np.ndarray:
    x = np.asarray(x)
    if (
        not np.issubdtype(x.dtype, np.number)
        or not np.all(np.isfinite(x))
        or np.any(x != np.rint(x))
    ):
        raise ValueError(f"{path} field {name!r} must hold whole numbers, got dtype {x.dtype}")
    return np.rint(x).astype(np.int64)


def read_design(path) -> Design:
    """Read ``masterordering`` and ``subjectim`` from ``nsd_expdesign.mat``."""
    import scipy.io

    path = _require(Path(path), "NSD experiment design file")
    mat = scipy.io.loadmat(path)
    for name in ("masterordering", "subjectim"):
        if name not in mat:
            fields = sorted(k for k in mat if not k.startswith("__"))
            raise ValueError(f"{path} has no field {name!r}; its fields are {fields}")
    order = _integer_array(path, "masterordering", mat["masterordering"]).reshape(-1)
    subjectim = _integer_array(path, "subjectim", mat["subjectim"])
    if subjectim.ndim != 2 or subjectim.shape[0] != 8:
        raise ValueError(f"{path} field 'subjectim' must be [8, 10000], got {subjectim.shape}")
    if order.min() < 1 or order.max() > subjectim.shape[1]:
        raise ValueError(
            f"{path} field 'masterordering' must hold 1-based indices into the "
            f"{subjectim.shape[1]} columns of subjectim, got values in "
            f"[{order.min()}, {order.max()}]"
        )
    return Design(order, subjectim)


def trial_image_ids(design: Design, subject: int, n_trials: int) -> np.ndarray:
    """[n_trials] 0-based 73k-ids of the subject's first ``n_trials`` trials."""
    subject = _check_subject(subject)
    if n_trials > design.masterordering.size:
        raise ValueError(
            f"n_trials={n_trials} exceeds the {design.masterordering.size} trials of the design"
        )
    return design.subjectim[subject - 1, design.masterordering[:n_trials] - 1] - 1


def read_session(path, mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """One session's betas inside ``mask``: [750, V] float32 percent signal change.

    The betas must lie on the ROI's grid (same shape and affine) and hold 750 trials.
    """
    img = _nibabel().load(_require(Path(path), "betas of a scan session"))
    if img.shape[:3] != mask.shape or len(img.shape) != 4 or img.shape[3] != TRIALS_PER_SESSION:
        raise ValueError(
            f"{path} must be [{', '.join(map(str, mask.shape))}, {TRIALS_PER_SESSION}] (the ROI's "
            f"grid and {TRIALS_PER_SESSION} trials), got {img.shape}"
        )
    if not np.allclose(img.affine, affine, atol=1e-3):
        raise ValueError(
            f"{path} is not on the ROI's grid: affine {np.asarray(img.affine).tolist()} vs "
            f"{np.asarray(affine).tolist()}"
        )
    # Read the stored int16 (1 GB for a real session) and scale only the ROI's voxels: letting
    # nibabel apply a header scaling first would make a float64 copy of the whole volume.
    proxy = img.dataobj
    raw = np.asarray(proxy.get_unscaled() if hasattr(proxy, "get_unscaled") else proxy)
    values = raw[mask].T.astype(np.float64)  # [750, V]
    slope, inter = getattr(proxy, "slope", 1.0), getattr(proxy, "inter", 0.0)
    if slope != 1.0 or inter != 0.0:
        values = values * slope + inter
    return (values / BETA_SCALE).astype(np.float32)


class SubjectData(NamedTuple):
    """One subject's repetition-averaged ROI responses.

    Attributes:
      responses: [I, V] float32, betas z-scored per voxel within each session, averaged over the
        image's repetitions.
      image_ids: [I] int64 0-based 73k-ids, ascending.
      noise_ceiling: [V] NSD's noise ceiling in percent (for the average of the repetitions).
      ncsnr: [V] noise-ceiling SNR.
      voxel_ijk: [V] voxel indices on the 1.8 mm grid (rows of ``np.argwhere(mask)``).
      affine: [4, 4] the grid's voxel-to-world transform.
      dropped_ijk: [D, 3] ROI voxels left out because they are constant in some session.
      meta: what was read, as a dict (subject, atlas, label, value, sessions, counts...).
    """

    responses: np.ndarray
    image_ids: np.ndarray
    noise_ceiling: np.ndarray
    ncsnr: np.ndarray
    voxel_ijk: np.ndarray
    affine: np.ndarray
    dropped_ijk: np.ndarray
    meta: dict


def _check_sessions(subject: int, n_sessions) -> int:
    if n_sessions is None:
        return SESSIONS[subject]
    n = checks.positive_int("n_sessions", n_sessions)
    if n > max(SESSIONS.values()):
        raise ValueError(f"n_sessions must be at most {max(SESSIONS.values())}, got {n}")
    return n


def cache_path(cache_dir, subject: int, atlas: str, label: str, n_sessions: int) -> Path:
    """Where :func:`load_subject` caches a subject's matrix."""
    return Path(cache_dir) / f"nsd_{_subj(subject)}_{atlas}-{label}_{n_sessions}sessions.npz"


def _wanted_meta(root, subject, atlas, label, n_sessions, require_all) -> dict:
    return {
        "format": CACHE_FORMAT,
        "root": str(Path(root).absolute()),
        "subject": subject,
        "atlas": atlas,
        "label": label,
        "n_sessions": n_sessions,
        "betas": BETAS_VERSION,
        "require_all_repetitions": require_all,
    }


def _read_cache(path: Path, wanted: dict) -> SubjectData | None:
    if not path.is_file():
        return None
    with np.load(path) as f:
        meta = json.loads(str(f["meta"]))
        if {k: meta.get(k) for k in wanted} != wanted:
            return None
        arrays = {k: f[k] for k in SubjectData._fields if k != "meta"}
    return SubjectData(**arrays, meta=meta)


def _write_cache(path: Path, data: SubjectData) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            arrays = {k: getattr(data, k) for k in SubjectData._fields if k != "meta"}
            np.savez(f, **arrays, meta=np.asarray(json.dumps(data.meta)))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_files(root, subject: int, *, atlas: str = "streams", n_sessions=None) -> list[Path]:
    """Raise ``FileNotFoundError`` naming the exact path of the first missing input of a subject.

    Checks the design file, the atlas volume and colour table, and the betas of sessions
    1..``n_sessions`` (None: every session the subject completed). Returns the beta paths.
    """
    subject = _check_subject(subject)
    n_sessions = _check_sessions(subject, n_sessions)
    _require(expdesign_path(root), "NSD experiment design file")
    _require(roi_path(root, subject, atlas), f"ROI volume of atlas {atlas!r}")
    _require(ctab_path(root, subject, atlas), f"colour table of atlas {atlas!r}")
    sessions = [betas_path(root, subject, s) for s in range(1, n_sessions + 1)]
    missing = [p for p in sessions if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            2,
            f"{len(missing)} of the {n_sessions} beta files of subject {subject} are missing; "
            f"expected the file {missing[0]}"
            + (f" (and {len(missing) - 1} more, e.g. {missing[-1]})" if len(missing) > 1 else ""),
            str(missing[0]),
        )
    return sessions


def load_subject(
    root,
    subject: int,
    *,
    atlas: str = "streams",
    label: str = "ventral",
    n_sessions: int | None = None,
    require_all_repetitions: bool = True,
    cache_dir=None,
    progress: Callable[[int, int], None] | None = None,
) -> SubjectData:
    """One subject's ROI responses to the images it saw ``N_REPETITIONS`` times, and their NC.

    Every check runs before any betas are read: every file must exist (``FileNotFoundError``
    naming the exact path expected), the label must be in the atlas's colour table, and with
    ``require_all_repetitions`` every image shown in the first ``n_sessions`` sessions must have
    been shown 3 times (``ValueError`` with the counts found; subjects 3, 4, 6 and 8 fail this,
    as does a subset of sessions). Without it, only the complete images are kept.

    Args:
      root: the NSD root folder.
      subject: NSD subject 1..8.
      atlas: ROI atlas name (files ``<atlas>.nii.gz`` and ``<atlas>.mgz.ctab``).
      label: label name in the atlas's colour table.
      n_sessions: read sessions 1..n; None for every session the subject completed.
      require_all_repetitions: refuse a subject whose images do not all have 3 repetitions.
      cache_dir: folder for the per-subject cache (None: no cache). A cache written with other
        arguments is recomputed.
      progress: called as ``progress(done, total)`` after each session is read.

    Returns:
      A :class:`SubjectData`.
    """
    subject = _check_subject(subject)
    n_sessions = _check_sessions(subject, n_sessions)
    wanted = _wanted_meta(root, subject, atlas, label, n_sessions, bool(require_all_repetitions))
    cache = None if cache_dir is None else cache_path(cache_dir, subject, atlas, label, n_sessions)
    if cache is not None and (cached := _read_cache(cache, wanted)) is not None:
        return cached

    # Every file, before any work.
    sessions = check_files(root, subject, atlas=atlas, n_sessions=n_sessions)
    design = read_design(expdesign_path(root))
    roi = roi_mask(root, subject, atlas, label)
    trial_ids = trial_image_ids(design, subject, n_sessions * TRIALS_PER_SESSION)
    reps = _nc.repetitions(trial_ids, N_REPETITIONS)
    n_images = sum(reps.counts.values())
    if require_all_repetitions and set(reps.counts) != {N_REPETITIONS}:
        raise ValueError(
            f"subject {subject} ({n_sessions} sessions) does not have {N_REPETITIONS} repetitions "
            f"of every image: of {n_images} images, "
            + ", ".join(f"{n} shown {c} time(s)" for c, n in sorted(reps.counts.items()))
            + f". Subjects 1, 2, 5 and 7 with all {SESSIONS[1]} sessions are complete; pass "
            "require_all_repetitions=False to keep only the complete images"
        )
    if reps.image_ids.size == 0:
        raise ValueError(
            f"subject {subject} ({n_sessions} sessions) has no image shown {N_REPETITIONS} times "
            f"(images per number of showings: {reps.counts})"
        )

    n_vox = int(roi.mask.sum())
    z = np.empty((trial_ids.size, n_vox), np.float32)
    constant = np.zeros(n_vox, bool)
    for s, path in enumerate(sessions):
        rows = slice(s * TRIALS_PER_SESSION, (s + 1) * TRIALS_PER_SESSION)
        z[rows], const = _nc.zscore(read_session(path, roi.mask, roi.affine))
        constant |= const
        if progress is not None:
            progress(s + 1, n_sessions)
    ijk = np.argwhere(roi.mask)
    keep = ~constant
    if not keep.any():
        raise ValueError(
            f"every voxel of subject {subject}'s {label!r} ROI is constant in a session"
        )
    z = z[:, keep] if constant.any() else z
    nc = _nc.noise_ceiling(z, reps.trials)
    meta = {
        **wanted,
        "roi_value": roi.value,
        "n_roi_voxels": n_vox,
        "n_voxels": int(keep.sum()),
        "n_dropped_constant": int(constant.sum()),
        "n_trials": int(trial_ids.size),
        "n_images": int(reps.image_ids.size),
        "image_counts": {str(k): v for k, v in reps.counts.items()},
        "image_id_base": 0,
    }
    data = SubjectData(
        responses=_nc.average_repetitions(z, reps.trials),
        image_ids=reps.image_ids.astype(np.int64),
        noise_ceiling=nc.noise_ceiling.astype(np.float32),
        ncsnr=nc.ncsnr.astype(np.float32),
        voxel_ijk=ijk[keep].astype(np.int32),
        affine=roi.affine,
        dropped_ijk=ijk[constant].astype(np.int32),
        meta=meta,
    )
    if cache is not None:
        _write_cache(cache, data)
    return data


def _h5py():
    try:
        import h5py
    except ImportError as err:  # h5py is an optional dependency (extra "brain")
        raise ImportError("reading the NSD stimuli needs h5py: pip install h5py") from err
    return h5py


def _brick(f, path: Path):
    """The ``imgBrick`` dataset of an open stimulus file, checked to be ``[n, H, W, 3]``."""
    if "imgBrick" not in f:
        raise ValueError(f"{path} has no dataset 'imgBrick'; it has {sorted(f)}")
    brick = f["imgBrick"]
    if brick.ndim != 4 or brick.shape[-1] != 3:
        raise ValueError(f"{path}: imgBrick must be [n, H, W, 3] images, got shape {brick.shape}")
    return brick


def _check_stimulus_ids(image_ids, n: int) -> np.ndarray:
    ids = np.asarray(image_ids)
    if ids.ndim != 1 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(f"image_ids must be a 1-D integer array, got {ids.dtype} {ids.shape}")
    ids = ids.astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= n):
        raise ValueError(
            f"image_ids must be 0-based 73k-ids in [0, {n}), got values in "
            f"[{ids.min()}, {ids.max()}]"
        )
    return ids


def _read_rows(brick, ids: np.ndarray) -> np.ndarray:
    unique, inverse = np.unique(ids, return_inverse=True)
    if unique.size and unique[-1] - unique[0] + 1 == unique.size:  # a contiguous run: one slice
        rows = brick[int(unique[0]) : int(unique[-1]) + 1]
    else:
        rows = brick[unique]  # h5py reads ascending indices
    return rows[inverse.ravel()]


def num_stimuli(root) -> int:
    """Images in the stimulus file (73,000 in the release)."""
    path = _require(stimuli_path(root), "NSD stimulus file")
    with _h5py().File(path, "r") as f:
        return int(_brick(f, path).shape[0])


def load_stimuli(root, image_ids) -> np.ndarray:
    """Stimulus images ``[n, H, W, 3]`` uint8 for 0-based 73k-ids (``imgBrick`` rows).

    Reads all ``n`` images at once; :func:`iter_stimuli` reads a long selection in chunks.
    """
    h5py = _h5py()
    path = _require(stimuli_path(root), "NSD stimulus file")
    with h5py.File(path, "r") as f:
        brick = _brick(f, path)
        return _read_rows(brick, _check_stimulus_ids(image_ids, brick.shape[0]))


def iter_stimuli(
    root, image_ids=None, *, chunk_size: int = 256
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stimulus images in chunks, never the whole ``[73000, 425, 425, 3]`` brick at once.

    The file and the ids are checked when this is called, before the first chunk is read.

    Args:
      root: the NSD root.
      image_ids: ``[n]`` 0-based 73k-ids, in the order wanted (None: every image, in order).
      chunk_size: images per chunk (256 images of 425 x 425 x 3 are 139 MB).

    Yields:
      ``(ids, images)``: ``ids [m]`` int64 and ``images [m, H, W, 3]`` uint8, ``m <= chunk_size``,
      in the order of ``image_ids``.
    """
    chunk_size = checks.positive_int("chunk_size", chunk_size)
    path = _require(stimuli_path(root), "NSD stimulus file")
    n = num_stimuli(root)
    ids = np.arange(n, dtype=np.int64) if image_ids is None else _check_stimulus_ids(image_ids, n)
    return _stimulus_chunks(path, ids, chunk_size)


def _stimulus_chunks(path: Path, ids: np.ndarray, chunk_size: int):
    with _h5py().File(path, "r") as f:
        brick = _brick(f, path)
        for lo in range(0, ids.size, chunk_size):
            chunk = ids[lo : lo + chunk_size]
            yield chunk, _read_rows(brick, chunk)
