"""Image data sets behind one interface: ImageNet (tensorflow-datasets), upscaled digits, a folder
of images and the NSD stimuli.

``batches(config, split, batch_size, train=..., seed=..., epoch=...)`` yields :class:`Batch`
tuples of numpy arrays: images ``[B, S, S, 3]`` float32 (normalised, NHWC), labels ``[B]`` int32,
image ids ``[B]`` int64 and a ``valid`` mask ``[B]`` (evaluation passes pad their last batch).
Extracting features from a model is one loop::

    cfg = DataConfig(name="folder", path="my_images")
    for batch in batches(cfg, "validation", 64):
        feats = model(batch.images)[batch.valid]   # ids: batch.image_ids[batch.valid]

- ``imagenet2012``: tensorflow-datasets' ``imagenet2012`` builder, prepared once from the two
  archives of the manual download (``ILSVRC2012_img_train.tar``, ``ILSVRC2012_img_val.tar``) in
  ``manual_dir``. Evaluation: resize the shorter side to ``resize_size`` (256; bilinear with
  antialiasing, in tensorflow), centre crop ``image_size`` (224), ImageNet mean/std
  normalisation. Training: random resized crop (scale 0.08-1, aspect 3/4-4/3) and horizontal
  flip. Image ids: :func:`imagenet_file_id` (``ILSVRC2012_val_00000001.JPEG`` -> 1;
  ``n01440764_10026.JPEG`` -> ``1440764 * 10**7 + 10026``). tensorflow and tensorflow-datasets
  are imported only here, when ImageNet is used.
- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes; no
  download), upscaled by pixel repetition to ``image_size`` and repeated over RGB, split once
  into train and validation by a seeded permutation (``val_fraction``); normalised with the train
  split's mean and std. Training: random translations of up to one original pixel. Image ids:
  the row in scikit-learn's array.
- ``folder``: the JPEG and PNG files of the folder ``path`` (:func:`image_files`), either flat
  (labels -1) or one subfolder per class (labels: the class folder's index in sorted order, as
  torchvision's ``ImageFolder``). Image ids: ImageNet ids (:func:`imagenet_file_id`) when every
  file has an ImageNet name, otherwise the position in the sorted list of files.
- ``nsd``: the Natural Scenes Dataset stimuli in ``<path>/nsddata_stimuli/stimuli/nsd/
  nsd_stimuli.hdf5`` (``path`` is the NSD root), all 73,000 or the 0-based 73k-ids
  ``image_ids``, in that order, read in chunks (:func:`superalign.brain.nsd.iter_stimuli`).
  Image ids: the 73k-ids; labels -1.

A folder and the NSD stimuli are one split each, read for evaluation: ``split`` must be
``"validation"`` and ``train`` False (feature extraction; there is nothing to train on). Both
use :func:`eval_transform`, torchvision's ImageNet evaluation transform (Pillow), so features of
torchvision checkpoints match those computed with torchvision's own transforms.

Training passes are a pure function of ``(seed, epoch)``: all models trained with one data seed
see the same batches, and a resumed run can skip to any batch (``start``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import numbers
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from superalign import checks

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
"""File extensions read from an image folder (compared in lower case)."""
DECODE_THREADS = 4
"""Threads decoding and resizing a folder's or the NSD stimuli's images (Pillow releases the
GIL while it decodes and resamples)."""
IMAGENET_ARCHIVES = {
    "train": "ILSVRC2012_img_train.tar",
    "validation": "ILSVRC2012_img_val.tar",
}


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data set and how to read it.

    Attributes:
      name: ``"imagenet2012"``, ``"digits"``, ``"folder"`` or ``"nsd"``.
      image_size: side of the square model input (ImageNet 224).
      resize_size: evaluation transform: the shorter side before the centre crop (256).
      data_dir: tensorflow-datasets' data directory (None: its default, ~/tensorflow_datasets).
      manual_dir: folder holding the ImageNet archives (None: ``<data_dir>/downloads/manual``).
      val_fraction: digits: the share of images held out for validation.
      split_seed: digits: seed of the train/validation split.
      shuffle_buffer: ImageNet training: tf.data shuffle buffer (examples).
      path: ``folder``: the image folder; ``nsd``: the NSD root (the folder holding
        ``nsddata_stimuli``). Required by these two, refused by the others.
      image_ids: ``nsd`` only: the 0-based 73k-ids to read, in this order (any 1-D integer
        sequence, stored as a tuple; unique); None: all stimuli.
    """

    name: Literal["imagenet2012", "digits", "folder", "nsd"] = "imagenet2012"
    image_size: int = 224
    resize_size: int = 256
    data_dir: str | None = None
    manual_dir: str | None = None
    val_fraction: float = 0.45
    split_seed: int = 0
    shuffle_buffer: int = 10_000
    path: str | None = None
    image_ids: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.name not in ("imagenet2012", "digits", "folder", "nsd"):
            raise ValueError(
                f"name must be 'imagenet2012', 'digits', 'folder' or 'nsd', got {self.name!r}"
            )
        checks.positive_int("image_size", self.image_size)
        checks.positive_int("resize_size", self.resize_size)
        if self.resize_size < self.image_size:
            raise ValueError(
                f"resize_size={self.resize_size} must be >= image_size={self.image_size}"
            )
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        checks.positive_int("shuffle_buffer", self.shuffle_buffer)
        if self.name == "digits" and self.image_size % 8:
            raise ValueError(f"digits: image_size must be a multiple of 8, got {self.image_size}")
        if self.name in ("folder", "nsd"):
            if self.path is None:
                what = "the image folder" if self.name == "folder" else "the NSD root"
                raise ValueError(f"name={self.name!r} needs path ({what}), got None")
            if not isinstance(self.path, (str, os.PathLike)):
                raise ValueError(f"path must be a str or os.PathLike, got {self.path!r}")
            object.__setattr__(self, "path", os.fspath(self.path))
        elif self.path is not None:
            raise ValueError(
                f"path is read only by name='folder' or 'nsd', got path={self.path!r} with "
                f"name={self.name!r}"
            )
        if self.image_ids is not None:
            if self.name != "nsd":
                raise ValueError(f"image_ids is read only by name='nsd', got name={self.name!r}")
            object.__setattr__(self, "image_ids", _id_tuple(self.image_ids))


def _id_tuple(image_ids) -> tuple[int, ...]:
    ids = np.asarray(image_ids)
    if (
        ids.ndim != 1
        or ids.size == 0
        or not all(
            isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in ids.tolist()
        )
    ):
        raise ValueError(
            f"image_ids must be a non-empty 1-D sequence of integers (0-based 73k-ids), got "
            f"{ids.dtype} {ids.shape}"
        )
    if ids.min() < 0:
        raise ValueError(f"image_ids must be >= 0 (0-based 73k-ids), got min {ids.min()}")
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"image_ids must be unique, got repeated ids {unique[counts > 1][:10]}")
    return tuple(int(i) for i in ids)


class Batch(NamedTuple):
    images: np.ndarray  # [B, S, S, 3] float32, normalised
    labels: np.ndarray  # [B] int32
    image_ids: np.ndarray  # [B] int64
    valid: np.ndarray  # [B] bool: False for padding rows of an evaluation pass


def num_classes(config: DataConfig) -> int:
    """Classes of the labels (a flat folder and the NSD stimuli have none: 0, labels -1)."""
    if config.name == "folder":
        return len(folder_classes(config.path))
    return {"digits": 10, "imagenet2012": 1000, "nsd": 0}[config.name]


def _check_split(config: DataConfig, split: str, train: bool = False) -> str:
    if config.name in ("folder", "nsd"):
        if split != "validation" or train:
            raise ValueError(
                f"name={config.name!r} is one split read for evaluation: split must be "
                f"'validation' and train False, got split={split!r}, train={train!r}"
            )
    elif split not in ("train", "validation"):
        raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
    return split


def num_examples(config: DataConfig, split: str) -> int:
    """Images in a split (ImageNet: as prepared; the full data set has 1,281,167 and 50,000)."""
    _check_split(config, split)
    if config.name == "digits":
        return len(_digits_split(config.val_fraction, config.split_seed)[split])
    if config.name == "folder":
        return len(image_files(config.path).paths)
    if config.name == "nsd":
        return len(config.image_ids or ()) or _nsd().num_stimuli(config.path)
    return int(imagenet_builder(config).info.splits[split].num_examples)


def batches(
    config: DataConfig,
    split: str,
    batch_size: int,
    *,
    train: bool = False,
    seed: int = 0,
    epoch: int = 0,
    start: int = 0,
) -> Iterator[Batch]:
    """One pass over a split.

    The arguments, and for a folder or the NSD stimuli the files, are checked when this is
    called; an image that cannot be decoded raises ``ValueError`` naming it when it is read.

    Args:
      config: the data set.
      split: ``"train"`` or ``"validation"`` (folder, nsd: ``"validation"``).
      batch_size: rows per batch.
      train: shuffled, augmented, full batches only (the remainder is dropped); otherwise in
        order, evaluation transform, and the last batch padded (``valid`` False). Folder and
        nsd: False.
      seed: data seed of training passes (order and augmentation).
      epoch: training epoch (each epoch has its own order).
      start: skip the first ``start`` batches (resuming).
    """
    _check_split(config, split, train)
    batch_size = checks.positive_int("batch_size", batch_size)
    if config.name == "digits":
        return _digits_batches(config, split, batch_size, train, seed, epoch, start)
    if config.name == "folder":
        return _folder_batches(config, batch_size, start)
    if config.name == "nsd":
        return _nsd_batches(config, batch_size, start)
    return _imagenet_batches(config, split, batch_size, train, seed, epoch, start)


def _pad(batch: Batch, batch_size: int) -> Batch:
    n = len(batch.labels)
    if n == batch_size:
        return batch
    pad = batch_size - n

    def grow(a):
        return np.concatenate([a, np.zeros((pad, *a.shape[1:]), a.dtype)])

    return Batch(*(grow(a) for a in batch))


# ---------------------------------------------------------- evaluation transform (torchvision's)


def _pil():
    try:
        from PIL import Image
    except ImportError as err:  # Pillow is an optional dependency (extra "images")
        raise ImportError("reading images needs Pillow: pip install 'superalign[images]'") from err
    return Image


def _as_rgb(image):
    """A PIL RGB image from a PIL image of any mode or a uint8 array [H, W], [H, W, 3|4]."""
    Image = _pil()
    if isinstance(image, Image.Image):
        pil = image
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"image must be a uint8 array, got dtype {image.dtype}")
        if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (3, 4))):
            raise ValueError(
                f"image must be [H, W], [H, W, 3] or [H, W, 4] uint8, got shape {image.shape}"
            )
        pil = Image.fromarray(image)  # mode L, RGB or RGBA
    else:
        raise ValueError(
            f"image must be a PIL image or a uint8 numpy array, got {type(image).__name__}"
        )
    if min(pil.size) < 1:
        raise ValueError(f"image must not be empty, got size (W, H) {pil.size}")
    # torchvision's image loader does the same: RGBA drops alpha, L repeats, P maps its palette,
    # CMYK is converted by Pillow's formula.
    return pil if pil.mode == "RGB" else pil.convert("RGB")


def eval_transform(image, *, image_size: int = 224, resize_size: int = 256) -> np.ndarray:
    """torchvision's ImageNet evaluation transform, as an HWC float32 array.

    ``Compose([Resize(resize_size), CenterCrop(image_size), ToTensor(), Normalize(IMAGENET_MEAN,
    IMAGENET_STD)])`` applied to ``image.convert("RGB")`` (what torchvision's image loader
    returns), transposed to ``[S, S, 3]``: the shorter side is resized to ``resize_size`` and the
    longer to ``int(resize_size * long / short)`` with Pillow's antialiased bilinear filter, the
    centre crop starts at ``int(round((side - image_size) / 2))``, and pixels are scaled to
    [0, 1] and normalised. The EXIF orientation is not applied (nor does torchvision).

    Args:
      image: a PIL image of any mode (L, P, RGBA, CMYK, ... are converted as
        ``Image.convert("RGB")`` does) or a uint8 array ``[H, W]``, ``[H, W, 3]`` or
        ``[H, W, 4]`` (RGBA: alpha dropped).
      image_size: side of the square crop ``S``.
      resize_size: the shorter side before the crop (``>= image_size``).

    Returns:
      ``[S, S, 3]`` float32, normalised with the ImageNet mean and std.
    """
    image_size = checks.positive_int("image_size", image_size)
    resize_size = checks.positive_int("resize_size", resize_size)
    if resize_size < image_size:
        raise ValueError(f"resize_size={resize_size} must be >= image_size={image_size}")
    pil = _as_rgb(image)
    w, h = pil.size
    # torchvision's _compute_resized_output_size: truncation, not rounding, of the longer side.
    long = int(resize_size * max(w, h) / min(w, h))
    size = (resize_size, long) if w <= h else (long, resize_size)
    if size != (w, h):
        pil = pil.resize(size, _pil().Resampling.BILINEAR)  # Pillow always antialiases
    w, h = size
    top = int(round((h - image_size) / 2.0))
    left = int(round((w - image_size) / 2.0))
    pil = pil.crop((left, top, left + image_size, top + image_size))
    x = np.asarray(pil, np.float32) / np.float32(255.0)
    return (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)


def _transform_all(images, config: DataConfig, pool) -> np.ndarray:
    """``[n, S, S, 3]`` float32 from ``n`` images (PIL, arrays or loader callables)."""

    def one(image):
        image = image() if callable(image) else image
        return eval_transform(image, image_size=config.image_size, resize_size=config.resize_size)

    return np.stack(list(pool.map(one, images)))


def _evaluation_batches(config, batch_size, start, ids, labels, chunks) -> Iterator[Batch]:
    """Batches from ``chunks``, an iterator of lists of images (one list per batch)."""
    with concurrent.futures.ThreadPoolExecutor(DECODE_THREADS) as pool:
        for b, chunk in enumerate(chunks, start):
            rows = slice(b * batch_size, (b + 1) * batch_size)
            images = _transform_all(chunk, config, pool)
            batch = Batch(images, labels[rows], ids[rows], np.ones(len(images), bool))
            yield _pad(batch, batch_size)


# ---------------------------------------------------------------------------------------- folder


class ImageFiles(NamedTuple):
    paths: tuple[Path, ...]  # [n] image files, sorted by their path components
    image_ids: np.ndarray  # [n] int64, unique
    labels: np.ndarray  # [n] int32: class folder index, or -1 in a flat folder


def _is_image(entry: os.DirEntry | Path) -> bool:
    return (
        not entry.name.startswith(".")
        and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
        and entry.is_file()
    )


def _images_under(folder: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(root, f) for f in files if _is_image(Path(root, f))]
    return found


def _check_folder(path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path must be a str or os.PathLike, got {path!r}")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise ValueError(f"path must be a folder of images, but {str(folder)!r} {what}")
    return folder


def folder_classes(path) -> tuple[str, ...]:
    """Class names of an image folder: its subfolders, sorted (empty for a flat folder).

    A folder is flat when it holds images itself; otherwise every subfolder not starting with
    ``.`` is a class (as torchvision's ``ImageFolder``, which sorts them the same way).
    """
    folder = _check_folder(path)
    entries = sorted(os.scandir(folder), key=lambda e: e.name)
    if any(_is_image(e) for e in entries):
        return ()
    return tuple(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def image_files(path) -> ImageFiles:
    """The images of a folder, their ids and labels (see :func:`batches`, ``name="folder"``).

    Files with the extensions ``IMAGE_EXTENSIONS`` (any case) are read; names starting with ``.``
    and other files are ignored. Layouts: flat (images in ``path``; labels -1) or one subfolder
    per class (images anywhere below it; label: the index of the class in
    :func:`folder_classes`). Image ids: :func:`imagenet_file_id` when every file has an ImageNet
    name, otherwise the 0-based position in the sorted list of files.

    Raises:
      ValueError: ``path`` is not a folder, holds no images, holds images both in itself and in
        subfolders, has a class folder without images, or two files share an ImageNet id.
    """
    folder = _check_folder(path)
    classes = folder_classes(folder)
    if not classes:
        found = [(Path(e), -1) for e in os.scandir(folder) if _is_image(e)]
        nested = [
            d.name
            for d in os.scandir(folder)
            if d.is_dir() and not d.name.startswith(".") and _images_under(Path(d))
        ]
        if found and nested:
            raise ValueError(
                f"{str(folder)!r} holds images both in itself and in subfolders {nested[:5]}; "
                "use one layout: flat, or one subfolder per class"
            )
    else:
        found, empty = [], []
        for label, name in enumerate(classes):
            files = _images_under(folder / name)
            found += [(f, label) for f in files]
            empty += [] if files else [name]
        if found and empty:
            raise ValueError(
                f"class folders {empty[:5]} of {str(folder)!r} hold no images "
                f"(read: {', '.join(IMAGE_EXTENSIONS)}, any case)"
            )
    if not found:
        raise ValueError(
            f"no images found in {str(folder)!r}; read are files ending in "
            f"{', '.join(IMAGE_EXTENSIONS)} (any case)"
        )
    found.sort(key=lambda f: f[0].relative_to(folder).parts)
    paths = tuple(f for f, _ in found)
    labels = np.array([label for _, label in found], np.int32)
    imagenet = [imagenet_file_id(f.name) for f in paths]
    if None in imagenet:
        return ImageFiles(paths, np.arange(len(paths), dtype=np.int64), labels)
    ids = np.array(imagenet, np.int64)
    unique, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if (counts > 1).any():
        twice = [str(paths[i].relative_to(folder)) for i in first[counts > 1][:5]]
        raise ValueError(
            f"image ids must be unique, but ImageNet names repeat in {str(folder)!r}: {twice}"
        )
    return ImageFiles(paths, ids, labels)


def _read_image(path: Path):
    Image = _pil()
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated or corrupt file fails here
            return img.copy() if img.mode == "RGB" else img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read the image {str(path)!r}: {err}") from err


def _folder_batches(config, batch_size, start):
    files = image_files(config.path)  # checked before the generator starts
    paths = files.paths[start * batch_size :]
    chunks = (
        [functools.partial(_read_image, p) for p in paths[lo : lo + batch_size]]
        for lo in range(0, len(paths), batch_size)
    )
    return _evaluation_batches(config, batch_size, start, files.image_ids, files.labels, chunks)


# ------------------------------------------------------------------------------------------- NSD


def _nsd():
    from superalign.brain import nsd

    return nsd


def _nsd_batches(config, batch_size, start):
    nsd = _nsd()
    ids = config.image_ids
    if ids is None:
        ids = np.arange(nsd.num_stimuli(config.path), dtype=np.int64)
    ids = np.asarray(ids, np.int64)
    # Checks the file and the ids now; reads one batch of the brick at a time.
    stimuli = nsd.iter_stimuli(config.path, ids[start * batch_size :], chunk_size=batch_size)
    chunks = (list(images) for _, images in stimuli)
    labels = np.full(len(ids), -1, np.int32)
    return _evaluation_batches(config, batch_size, start, ids, labels, chunks)


# ----------------------------------------------------------------------------------------- digits


@functools.lru_cache(maxsize=4)
def _digits_split(val_fraction: float, split_seed: int) -> dict:
    from sklearn.datasets import load_digits

    data = load_digits()
    n = len(data.target)
    order = np.random.default_rng(split_seed).permutation(n)
    n_val = int(round(val_fraction * n))
    return {"validation": np.sort(order[:n_val]), "train": np.sort(order[n_val:])}


@functools.lru_cache(maxsize=4)
def _digits_arrays(val_fraction: float, split_seed: int, image_size: int):
    from sklearn.datasets import load_digits

    data = load_digits()
    scale = image_size // 8
    pixels = (data.images / 16.0).astype(np.float32)  # [n, 8, 8] in [0, 1]
    big = np.repeat(np.repeat(pixels, scale, axis=1), scale, axis=2)
    train_rows = _digits_split(val_fraction, split_seed)["train"]
    mean, std = big[train_rows].mean(), big[train_rows].std()
    images = np.repeat(((big - mean) / std)[..., None], 3, axis=-1).astype(np.float32)
    background = np.float32(-mean / std)  # the normalised value of an empty pixel
    return images, data.target.astype(np.int32), background


def _shift(images: np.ndarray, rng: np.random.Generator, max_shift: int, fill) -> np.ndarray:
    """Translate each image by up to ``max_shift`` pixels, filling with the background."""
    n, s = images.shape[:2]
    padded = np.full((n, s + 2 * max_shift, s + 2 * max_shift, 3), fill, np.float32)
    padded[:, max_shift : max_shift + s, max_shift : max_shift + s] = images
    dy, dx = rng.integers(0, 2 * max_shift + 1, size=(2, n))
    return np.stack([padded[i, dy[i] : dy[i] + s, dx[i] : dx[i] + s] for i in range(n)])


def _digits_batches(config, split, batch_size, train, seed, epoch, start):
    images, labels, fill = _digits_arrays(config.val_fraction, config.split_seed, config.image_size)
    rows = _digits_split(config.val_fraction, config.split_seed)[split]
    if train:
        rng = np.random.default_rng([seed, epoch])
        rows = rows[rng.permutation(len(rows))]
        rows = rows[: len(rows) // batch_size * batch_size]
    for b in range(start, -(-len(rows) // batch_size)):
        idx = rows[b * batch_size : (b + 1) * batch_size]
        x = images[idx]
        if train:
            x = _shift(x, np.random.default_rng([seed, epoch, b]), config.image_size // 8, fill)
        batch = Batch(x, labels[idx], idx.astype(np.int64), np.ones(len(idx), bool))
        yield _pad(batch, batch_size)


# --------------------------------------------------------------------------------------- ImageNet


def _manual_dir(config: DataConfig) -> Path:
    if config.manual_dir is not None:
        return Path(config.manual_dir).expanduser()
    data_dir = config.data_dir or os.path.join("~", "tensorflow_datasets")
    return Path(data_dir).expanduser() / "downloads" / "manual"


def imagenet_builder(config: DataConfig, *, prepare: bool = True):
    """The tensorflow-datasets ``imagenet2012`` builder, prepared from the manual download.

    Preparing (once) reads the two archives from ``manual_dir`` and writes TFRecords to
    ``data_dir`` (about 150 GB for the full data set; hours). Raises ``ValueError`` saying what
    to download and where to put it when neither the prepared data nor the archives are there.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:  # an optional dependency (extra "dnn")
        raise ImportError(
            "ImageNet needs tensorflow-datasets and tensorflow: pip install 'superalign[dnn]'"
        ) from err
    data_dir = None if config.data_dir is None else str(Path(config.data_dir).expanduser())
    builder = tfds.builder("imagenet2012", data_dir=data_dir)
    if builder.is_prepared() or not prepare:
        return builder
    manual = _manual_dir(config)
    missing = [name for name in IMAGENET_ARCHIVES.values() if not (manual / name).is_file()]
    if missing:
        raise ValueError(
            f"ImageNet (imagenet2012) is not prepared in data_dir={builder.data_dir_root!s} and "
            f"manual_dir={manual!s} lacks {missing}. Download ILSVRC2012_img_train.tar (138 GB) "
            "and ILSVRC2012_img_val.tar (6.3 GB) from https://image-net.org/download-images "
            f"(free account, 'ILSVRC2012'), put both files in {manual!s} (or point manual_dir, "
            "e.g. --config.manual_dir=/path/to/folder, at the folder holding them) and run "
            "again: the first run prepares the data set once (hours)."
        )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual))
    )
    return builder


_IMAGENET_VAL = re.compile(r"ILSVRC2012_val_(\d+)")
_IMAGENET_TRAIN = re.compile(r"n(\d{8})_(\d+)")


def imagenet_file_id(name: str | bytes | os.PathLike) -> int | None:
    """The image id of an ImageNet file name, or None for any other name.

    ``ILSVRC2012_val_00000001.JPEG`` -> 1 (validation); ``n01440764_10026.JPEG`` ->
    ``1440764 * 10**7 + 10026`` (training). Folders and the extension are ignored.
    """
    if isinstance(name, bytes):
        name = name.decode()
    stem = os.path.basename(os.fspath(name)).split(".")[0]
    if match := _IMAGENET_VAL.fullmatch(stem):
        return int(match[1])
    if match := _IMAGENET_TRAIN.fullmatch(stem):
        return int(match[1]) * 10**7 + int(match[2])
    return None


def _eval_transform(config: DataConfig):
    import tensorflow as tf

    size, resize = config.image_size, config.resize_size

    def transform(image):
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        scale = resize / tf.reduce_min(shape)
        new = tf.cast(tf.round(shape * scale), tf.int32)
        image = tf.image.resize(image, new, method="bilinear", antialias=True)
        top = (new[0] - size) // 2
        left = (new[1] - size) // 2
        return image[top : top + size, left : left + size]

    return transform


def _train_transform(config: DataConfig):
    import tensorflow as tf

    size = config.image_size

    def transform(image, seed):
        begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(image),
            bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
            seed=seed,
            min_object_covered=0.0,
            aspect_ratio_range=(3 / 4, 4 / 3),
            area_range=(0.08, 1.0),
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
        crop = tf.slice(image, begin, extent)
        crop = tf.image.resize(tf.cast(crop, tf.float32), (size, size), method="bilinear")
        return tf.image.stateless_random_flip_left_right(crop, seed=seed + 1)

    return transform


def _imagenet_batches(config, split, batch_size, train, seed, epoch, start):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    builder = imagenet_builder(config)
    mean = tf.constant(IMAGENET_MEAN) * 255.0
    std = tf.constant(IMAGENET_STD) * 255.0
    read = tfds.ReadConfig(shuffle_seed=seed * 100_003 + epoch, interleave_cycle_length=16)
    ds = builder.as_dataset(split=split, shuffle_files=train, read_config=read)
    options = tf.data.Options()
    options.deterministic = True
    ds = ds.with_options(options)
    if train:
        ds = ds.shuffle(config.shuffle_buffer, seed=seed * 100_003 + epoch)
        transform = _train_transform(config)
        ds = ds.enumerate().map(
            lambda i, ex: (
                (transform(ex["image"], tf.stack([seed * 100_003 + epoch, i])) - mean) / std,
                ex["label"],
                ex["file_name"],
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    else:
        transform = _eval_transform(config)
        ds = ds.map(
            lambda ex: (
                (tf.cast(transform(ex["image"]), tf.float32) - mean) / std,
                ex["label"],
                ex["file_name"],
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    ds = ds.batch(batch_size, drop_remainder=train).skip(start).prefetch(tf.data.AUTOTUNE)
    for images, labels, names in tfds.as_numpy(ds):
        ids = np.array([_tfds_file_id(n) for n in names], np.int64)
        batch = Batch(
            images.astype(np.float32), labels.astype(np.int32), ids, np.ones(len(ids), bool)
        )
        yield _pad(batch, batch_size)


def _tfds_file_id(name: bytes) -> int:
    image_id = imagenet_file_id(name)
    if image_id is None:
        raise ValueError(f"imagenet2012 holds a file that is not named as ImageNet's: {name!r}")
    return image_id
