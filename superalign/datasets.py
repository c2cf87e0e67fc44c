"""Image data sets behind one interface: ImageNet (tensorflow-datasets) and upscaled digits.

``batches(config, split, batch_size, train=..., seed=..., epoch=...)`` yields :class:`Batch`
tuples of numpy arrays: images ``[B, S, S, 3]`` float32 (normalised, NHWC), labels ``[B]`` int32,
image ids ``[B]`` int64 and a ``valid`` mask ``[B]`` (evaluation passes pad their last batch).

- ``imagenet2012``: tensorflow-datasets' ``imagenet2012`` builder, prepared once from the two
  archives of the manual download (``ILSVRC2012_img_train.tar``, ``ILSVRC2012_img_val.tar``) in
  ``manual_dir``. Evaluation: resize the shorter side to ``resize_size`` (256; bilinear with
  antialiasing), centre crop ``image_size`` (224), ImageNet mean/std normalisation. Training:
  random resized crop (scale 0.08-1, aspect 3/4-4/3) and horizontal flip. Image ids: the number of
  a validation file (``ILSVRC2012_val_00000001.JPEG`` -> 1); for training files
  ``n01440764_10026.JPEG`` -> ``1440764 * 10**7 + 10026``. tensorflow and tensorflow-datasets are
  imported only here, when ImageNet is used.
- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes; no
  download), upscaled by pixel repetition to ``image_size`` and repeated over RGB, split once
  into train and validation by a seeded permutation (``val_fraction``); normalised with the train
  split's mean and std. Training: random translations of up to one original pixel. Image ids:
  the row in scikit-learn's array.

Training passes are a pure function of ``(seed, epoch)``: all models trained with one data seed
see the same batches, and a resumed run can skip to any batch (``start``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from superalign import _checks

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_ARCHIVES = {
    "train": "ILSVRC2012_img_train.tar",
    "validation": "ILSVRC2012_img_val.tar",
}


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data set and how to read it.

    Attributes:
      name: ``"imagenet2012"`` or ``"digits"``.
      image_size: side of the square model input (ImageNet 224).
      resize_size: ImageNet evaluation: the shorter side before the centre crop (256).
      data_dir: tensorflow-datasets' data directory (None: its default, ~/tensorflow_datasets).
      manual_dir: folder holding the ImageNet archives (None: ``<data_dir>/downloads/manual``).
      val_fraction: digits: the share of images held out for validation.
      split_seed: digits: seed of the train/validation split.
      shuffle_buffer: ImageNet training: tf.data shuffle buffer (examples).
    """

    name: Literal["imagenet2012", "digits"] = "imagenet2012"
    image_size: int = 224
    resize_size: int = 256
    data_dir: str | None = None
    manual_dir: str | None = None
    val_fraction: float = 0.45
    split_seed: int = 0
    shuffle_buffer: int = 10_000

    def __post_init__(self):
        if self.name not in ("imagenet2012", "digits"):
            raise ValueError(f"name must be 'imagenet2012' or 'digits', got {self.name!r}")
        _checks.positive_int("image_size", self.image_size)
        _checks.positive_int("resize_size", self.resize_size)
        if self.resize_size < self.image_size:
            raise ValueError(
                f"resize_size={self.resize_size} must be >= image_size={self.image_size}"
            )
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        _checks.positive_int("shuffle_buffer", self.shuffle_buffer)
        if self.name == "digits" and self.image_size % 8:
            raise ValueError(f"digits: image_size must be a multiple of 8, got {self.image_size}")


class Batch(NamedTuple):
    images: np.ndarray  # [B, S, S, 3] float32, normalised
    labels: np.ndarray  # [B] int32
    image_ids: np.ndarray  # [B] int64
    valid: np.ndarray  # [B] bool: False for padding rows of an evaluation pass


def num_classes(config: DataConfig) -> int:
    return 10 if config.name == "digits" else 1000


def _check_split(split: str) -> str:
    if split not in ("train", "validation"):
        raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
    return split


def num_examples(config: DataConfig, split: str) -> int:
    """Images in a split (ImageNet: as prepared; the full data set has 1,281,167 and 50,000)."""
    _check_split(split)
    if config.name == "digits":
        return len(_digits_split(config.val_fraction, config.split_seed)[split])
    return int(imagenet_builder(config).info.splits[split].num_examples)


def batches(
    config: DataConfig,
    split: str,
    batch_size: int,
    *,
    train: bool,
    seed: int = 0,
    epoch: int = 0,
    start: int = 0,
) -> Iterator[Batch]:
    """One pass over a split.

    Args:
      config: the data set.
      split: ``"train"`` or ``"validation"``.
      batch_size: rows per batch.
      train: shuffled, augmented, full batches only (the remainder is dropped); otherwise in
        order, evaluation transform, and the last batch padded (``valid`` False).
      seed: data seed of training passes (order and augmentation).
      epoch: training epoch (each epoch has its own order).
      start: skip the first ``start`` batches (resuming).
    """
    _check_split(split)
    batch_size = _checks.positive_int("batch_size", batch_size)
    if config.name == "digits":
        return _digits_batches(config, split, batch_size, train, seed, epoch, start)
    return _imagenet_batches(config, split, batch_size, train, seed, epoch, start)


def _pad(batch: Batch, batch_size: int) -> Batch:
    n = len(batch.labels)
    if n == batch_size:
        return batch
    pad = batch_size - n

    def grow(a):
        return np.concatenate([a, np.zeros((pad, *a.shape[1:]), a.dtype)])

    return Batch(*(grow(a) for a in batch))


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


def _imagenet_file_id(name: bytes) -> int:
    stem = name.decode().rsplit("/", 1)[-1].split(".")[0]
    if stem.startswith("ILSVRC2012_val_"):
        return int(stem[len("ILSVRC2012_val_") :])
    synset, number = stem.split("_")
    return int(synset[1:]) * 10**7 + int(number)


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
        ids = np.array([_imagenet_file_id(n) for n in names], np.int64)
        batch = Batch(
            images.astype(np.float32), labels.astype(np.int32), ids, np.ones(len(ids), bool)
        )
        yield _pad(batch, batch_size)
