"""Voxelwise maps of the DNN->brain experiment: where SAE features predict a voxel better.

The experiment scores every NSD subject's ROI voxels with :func:`superalign.ridge_regression`,
whose result keeps the test Pearson r of every live voxel per fold (``unit_r`` [K, live]) and the
voxels it removed as dead (``dead_y``). This module turns a pair of such results (Neuron->Voxel
and SAE->Voxel of one DNN and subject) into one gain per voxel, puts the gains back on the
subject's 1.8 mm functional grid as a NIfTI image, and draws them over the subject's anatomy with
nilearn:

- :func:`voxel_r`: fold-mean test r per voxel, NaN for dead voxels, in the data's voxel order;
- :func:`voxel_gain`: SAE->Voxel minus Neuron->Voxel r per voxel, optionally divided by the
  subject's noise-ceiling fraction as the experiment normalises its scores;
- :func:`data_mask` and :func:`to_volume`: the grid's mask of the voxels a
  :class:`superalign.brain.nsd.SubjectData` holds, and the values unmasked onto the grid by
  ``nilearn.masking.unmask``;
- :func:`anatomy_path`, :func:`mean_path`, :func:`background`: the subject's T1 resampled to the
  functional grid (``nsddata/ppdata/subjAA/func1pt8mm/T1_to_func1pt8mm.nii.gz``), or else the
  mean functional volume (``mean.nii.gz`` in the same folder), or else no background;
- :func:`gain_figure` and :func:`save_gain_maps`: ``nilearn.plotting.plot_stat_map`` with a
  diverging colour map centred at 0, written as PNG and PDF per subject.

Voxel order. :func:`superalign.brain.nsd.read_session` takes a session's ROI voxels as
``betas[mask]`` (numpy boolean indexing of the [X, Y, Z] grid: C order, the last axis fastest),
and :func:`~superalign.brain.nsd.load_subject` keeps that order, dropping the voxels that are
constant in some session (``voxel_ijk`` are the rows of ``np.argwhere(mask)`` that remain).
``nilearn.masking.apply_mask`` and ``unmask`` index the same way (``data[mask]``), so the values
of column ``v`` of the responses land on voxel ``voxel_ijk[v]``; ``tests/test_brain_maps.py``
checks this against the order ``read_session`` returns. ``unmask`` keeps NaN (dead voxels);
``apply_mask`` replaces NaN by 0 (its default ``ensure_finite=True``), so read dead voxels back
from the image's data, not through ``apply_mask``.

nilearn is imported when a function needs it (it takes seconds to import); figure functions
return a matplotlib figure and never choose the backend.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np

from experiments import run_files
from superalign import checks
from superalign.brain import nsd

GAIN_LABEL = "SAE->Voxel minus Neuron->Voxel r"
"""Colour-bar label of a gain map."""
CMAP = "RdBu_r"
"""Diverging colour map: red where SAE latents predict a voxel better, blue where worse."""


def _field(result, name: str):
    """``result.name`` of a ``RidgeResult`` (or any object with it), or ``result[name]``."""
    if isinstance(result, Mapping):
        if name in result:
            return result[name]
    elif hasattr(result, name):
        return getattr(result, name)
    raise ValueError(
        f"result must be a ridge_regression result (or a mapping) holding {name!r}, got "
        f"{type(result).__name__}"
    )


def voxel_r(result, n_voxels: int) -> np.ndarray:
    """Fold-mean test Pearson r of every voxel, in the order of the regression's target columns.

    Args:
      result: a :class:`superalign.regression.RidgeResult` of ``ridge_regression(X, Y)``, or a
        mapping with its ``unit_r`` [K, n_live] and ``dead_y`` [n_dead] (e.g. read back from an
        ``.npz``).
      n_voxels: the number of columns of ``Y`` (``n_live + n_dead``).

    Returns:
      [n_voxels] float64: voxel ``v``'s test r averaged over the K folds; NaN where ``v`` is in
      ``dead_y`` (removed before fitting, so it has no score). Its mean over the live voxels is
      the result's ``mean``.
    """
    n_voxels = checks.positive_int("n_voxels", n_voxels)
    unit_r = checks.array("result.unit_r", np.asarray(_field(result, "unit_r")), ndim=2)
    dead = np.asarray(_field(result, "dead_y"))
    if dead.ndim != 1 or not (dead.size == 0 or np.issubdtype(dead.dtype, np.integer)):
        raise ValueError(
            f"result.dead_y must be a 1-D array of column indices, got {dead.dtype} {dead.shape}"
        )
    if dead.size and (dead.min() < 0 or dead.max() >= n_voxels or np.unique(dead).size < dead.size):
        raise ValueError(
            f"result.dead_y must hold distinct column indices in [0, n_voxels={n_voxels}), got "
            f"values in [{dead.min()}, {dead.max()}] ({dead.size - np.unique(dead).size} repeated)"
        )
    if unit_r.shape[0] < 1 or unit_r.shape[1] != n_voxels - dead.size:
        raise ValueError(
            f"result.unit_r must be [K >= 1, n_voxels - len(dead_y)] = [K, {n_voxels} - "
            f"{dead.size}], got {unit_r.shape}; is n_voxels={n_voxels} the width of the Y the "
            "regression was given?"
        )
    out = np.full(n_voxels, np.nan)
    # ridge_regression's live columns are the others in ascending order (superalign.folds).
    out[np.setdiff1d(np.arange(n_voxels), dead)] = unit_r.astype(np.float64).mean(axis=0)
    return out


def voxel_gain(
    neuron_result, sae_result, n_voxels: int, *, noise_ceiling_fraction: float | None = None
) -> np.ndarray:
    """SAE->Voxel minus Neuron->Voxel test r of every voxel.

    Args:
      neuron_result: ``ridge_regression(neurons, Y)`` of a DNN layer's units.
      sae_result: ``ridge_regression(latents, Y)`` of its SAE latents, on the same ``Y``.
      n_voxels: the number of columns of ``Y``.
      noise_ceiling_fraction: None for raw r; else the divisor the experiment normalises scores
        with, the subject's mean noise ceiling as a fraction
        (``float(data.noise_ceiling.mean() / 100)``).

    Returns:
      [n_voxels] float64 gains; NaN where either regression removed the voxel as dead.
    """
    n_voxels = checks.positive_int("n_voxels", n_voxels)
    if noise_ceiling_fraction is not None:
        noise_ceiling_fraction = checks.positive_float(
            "noise_ceiling_fraction", noise_ceiling_fraction
        )
    neuron = voxel_r(neuron_result, n_voxels)
    sae = voxel_r(sae_result, n_voxels)
    gain = sae - neuron
    return gain if noise_ceiling_fraction is None else gain / noise_ceiling_fraction


def _check_mask(mask) -> np.ndarray:
    mask = checks.array("mask", mask, ndim=3)
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        if not np.isin(mask, (0, 1)).all():
            raise ValueError(
                f"mask must be a boolean [X, Y, Z] volume (or 0/1), got dtype {mask.dtype} with "
                f"values {np.unique(mask)[:5].tolist()}..."
            )
        mask = mask.astype(bool)
    if not mask.any():
        raise ValueError(f"mask must select at least one voxel, got an empty {mask.shape} mask")
    return mask


def _check_affine(affine) -> np.ndarray:
    affine = np.asarray(checks.array("affine", affine, ndim=2), np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be a [4, 4] voxel-to-world matrix, got {affine.shape}")
    return affine


def data_mask(voxel_ijk, shape) -> np.ndarray:
    """[X, Y, Z] bool mask of the voxels a ``SubjectData`` holds, so that ``mask`` order is theirs.

    Args:
      voxel_ijk: [V, 3] grid indices of the data's voxels (``SubjectData.voxel_ijk``), in C order
        (rows of ``np.argwhere``), as :func:`superalign.brain.nsd.load_subject` gives them.
      shape: the grid's shape (e.g. ``nsd.roi_mask(root, subject).mask.shape``).

    Raises ``ValueError`` if the indices fall off the grid, repeat, or are not in C order (then
    boolean-mask order would not be the data's order).
    """
    ijk = checks.array("voxel_ijk", np.asarray(voxel_ijk), ndim=2, width=3)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be a 3-D grid shape (X, Y, Z), got {shape}")
    if not np.issubdtype(ijk.dtype, np.integer) or ijk.shape[0] < 1:
        raise ValueError(f"voxel_ijk must be [V >= 1, 3] integers, got {ijk.dtype} {ijk.shape}")
    if (ijk < 0).any() or (ijk >= np.asarray(shape)).any():
        raise ValueError(
            f"voxel_ijk must lie on the grid {shape}, got indices from {ijk.min(0).tolist()} to "
            f"{ijk.max(0).tolist()}"
        )
    flat = np.ravel_multi_index(tuple(ijk.T), shape)
    if (np.diff(flat) <= 0).any():
        raise ValueError(
            "voxel_ijk must be distinct and in C order (rows of np.argwhere(mask)), as "
            "nsd.load_subject writes them"
        )
    mask = np.zeros(shape, bool)
    mask[tuple(ijk.T)] = True
    return mask


def to_volume(values, mask, affine):
    """Values of the ROI's voxels on the 3-D grid: ``nilearn.masking.unmask``.

    Args:
      values: [V] one value per voxel of ``mask`` in numpy boolean-mask order (C order), the order
        of the responses' columns; NaN allowed (dead voxels).
      mask: [X, Y, Z] bool, True at the ``V`` voxels (for a ``SubjectData``, :func:`data_mask`:
        the ROI minus the voxels dropped as constant).
      affine: [4, 4] the grid's voxel-to-world transform.

    Returns:
      A float32 ``nibabel.Nifti1Image`` [X, Y, Z], 0 outside ``mask``.
    """
    mask = _check_mask(mask)
    affine = _check_affine(affine)
    values = checks.array("values", values, ndim=1, finite=False)
    if values.shape[0] != mask.sum():
        raise ValueError(
            f"values must have one entry per voxel of mask ({int(mask.sum())} voxels of "
            f"{mask.shape}), got {values.shape[0]}; with a SubjectData, build the mask with "
            "data_mask(data.voxel_ijk, shape), which leaves out the voxels dropped as constant"
        )
    import nibabel
    from nilearn import masking

    mask_img = nibabel.Nifti1Image(mask.astype(np.uint8), affine)
    return masking.unmask(np.asarray(values, np.float32), mask_img)


def _func_dir(root, subject: int) -> Path:
    if isinstance(subject, bool) or not isinstance(subject, (int, np.integer)):
        raise ValueError(f"subject must be an NSD subject 1..8, got {subject!r}")
    if subject not in nsd.SESSIONS:
        raise ValueError(f"subject must be an NSD subject 1..8, got {subject!r}")
    return Path(root) / "nsddata" / "ppdata" / f"subj{int(subject):02d}" / "func1pt8mm"


def anatomy_path(root, subject: int) -> Path:
    """Path of the subject's T1 resampled to the 1.8 mm functional grid (it may not exist)."""
    return _func_dir(root, subject) / "T1_to_func1pt8mm.nii.gz"


def mean_path(root, subject: int) -> Path:
    """Path of the mean of the subject's pre-processed 1.8 mm volumes over all NSD sessions."""
    return _func_dir(root, subject) / "mean.nii.gz"


class Background(NamedTuple):
    """What a map is drawn over.

    Attributes:
      path: the file, or None when neither the T1 nor the mean volume exists.
      kind: ``"T1"``, ``"mean functional volume"`` or ``"none"``.
      note: text for the figure's title; empty for the T1.
    """

    path: Path | None
    kind: str
    note: str


def background(root, subject: int) -> Background:
    """The subject's T1 on the functional grid, else its mean functional volume, else none."""
    t1 = anatomy_path(root, subject)
    if t1.is_file():
        return Background(t1, "T1", "")
    mean = mean_path(root, subject)
    if mean.is_file():
        return Background(mean, "mean functional volume", "over the mean functional volume (no T1)")
    return Background(None, "none", "no anatomical background (no T1 or mean volume found)")


def gain_figure(img, anat, *, title: str, threshold: float | None = None, label: str = GAIN_LABEL):
    """A gain map drawn by ``nilearn.plotting.plot_stat_map`` into a new figure.

    Args:
      img: 3-D NIfTI image of gains (:func:`to_volume`); 0 outside the ROI, NaN at dead voxels.
      anat: background image or path on ``img``'s grid (same shape and affine; :func:`background`
        finds one), or None for none (never nilearn's default MNI template: NSD maps are in each
        subject's native space).
      title: the figure's title.
      threshold: None shows every ROI voxel (only exact zeros, i.e. the voxels outside the ROI or
        dead, are transparent); a value >= 0 hides voxels with ``|gain| <= threshold``.
      label: the colour bar's label.

    Returns:
      The matplotlib figure: three orthogonal slices cut through the map's largest cluster, a
      diverging colour map centred at 0 with the symmetric range ``[-m, m]``, ``m`` the largest
      ``|gain|``.
    """
    import matplotlib.pyplot as plt
    import nibabel
    from nilearn import plotting

    if not isinstance(img, nibabel.Nifti1Image) or len(img.shape) != 3:
        raise ValueError(
            f"img must be a 3-D nibabel.Nifti1Image (to_volume), got {type(img).__name__} "
            f"{getattr(img, 'shape', '')}"
        )
    if not isinstance(title, str):
        raise ValueError(f"title must be a string, got {title!r}")
    if threshold is not None:
        threshold = checks.nonnegative_float("threshold", threshold)
    if isinstance(anat, (str, Path)):
        anat = nibabel.load(anat)
    if anat is not None:
        if not isinstance(anat, nibabel.spatialimages.SpatialImage):
            raise ValueError(
                f"anat must be a NIfTI image, a path or None, got {type(anat).__name__}"
            )
        if tuple(anat.shape) != tuple(img.shape) or not np.allclose(
            anat.affine, img.affine, atol=1e-3
        ):
            raise ValueError(
                f"anat must lie on img's grid (shape {tuple(img.shape)}, affine "
                f"{np.round(img.affine, 3).tolist()}), got shape {tuple(anat.shape)}, affine "
                f"{np.round(anat.affine, 3).tolist()}"
            )
    data = np.asarray(img.get_fdata(), np.float64)
    finite = np.isfinite(data)
    vmax = float(np.abs(data[finite]).max()) if finite.any() else 0.0
    vmax = vmax if vmax > 0 else 1.0  # an all-zero map still needs a colour range
    # plot_stat_map would replace NaN (dead voxels) by 0 with a warning; 0 is transparent below.
    shown = nibabel.Nifti1Image(np.where(finite, data, 0.0).astype(np.float32), img.affine)

    fig = plt.figure(figsize=(9.0, 3.4))
    before = set(fig.axes)
    display = plotting.plot_stat_map(
        shown,
        bg_img=anat,
        figure=fig,
        axes=(0.0, 0.0, 0.9, 0.88),  # room for the title above, the bar's label to the right
        cmap=CMAP,
        symmetric_cbar=True,
        vmax=vmax,
        threshold=0.0 if threshold is None else threshold,
        colorbar=True,
        resampling_interpolation="nearest",  # the grid's values as they are, no smoothing
        black_bg=False,
        draw_cross=False,
        annotate=True,
    )
    drawn = {display.frame_axes, *(ax.ax for ax in display.axes.values())}
    for ax in set(fig.axes) - before - drawn:  # the colour bar's axes
        ax.yaxis.set_label_position("right")
        ax.set_ylabel(label)
    fig.suptitle(title)
    return fig


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower()


def save_gain_maps(
    maps: Mapping[int, object],
    root,
    directory,
    *,
    name: str,
    threshold: float | None = None,
    label: str = GAIN_LABEL,
) -> dict[int, list[Path]]:
    """Draw every subject's gain map over its anatomy; write ``gain_map_<name>_subjAA.{png,pdf}``.

    Args:
      maps: ``{subject: 3-D NIfTI image}`` of gains (:func:`to_volume`).
      root: the NSD root, where each subject's background is looked up (:func:`background`).
      directory: the output folder (created).
      name: what the map shows, e.g. the DNN's name (in the title and the file names).
      threshold: as in :func:`gain_figure`.
      label: the colour bar's label (say so when the gains are noise-ceiling normalised).

    Returns:
      ``{subject: [png path, pdf path]}``, each written atomically.
    """
    import matplotlib.pyplot as plt

    if not isinstance(name, str) or not _slug(name):
        raise ValueError(f"name must be a non-empty string with letters or digits, got {name!r}")
    backgrounds = {s: background(root, s) for s in maps}  # checks every subject before drawing
    paths = {}
    for subject, img in maps.items():
        bg = backgrounds[subject]
        title = f"{name}, subject {subject}: {label}"
        if bg.note:
            title += f"\n{bg.note}"
        fig = gain_figure(img, bg.path, title=title, threshold=threshold, label=label)
        try:
            stem = Path(directory) / f"gain_map_{_slug(name)}_subj{int(subject):02d}"
            paths[subject] = run_files.save_figure(fig, stem)
        finally:
            plt.close(fig)
    return paths
