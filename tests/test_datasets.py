"""Data sets: the digits set against scikit-learn, ImageNet through tensorflow-datasets."""

import io
import tarfile

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from superalign import datasets

DIGITS = datasets.DataConfig(name="digits", image_size=16)


def test_digits_split_pixels_and_normalisation():
    raw = load_digits()
    train = list(datasets.batches(DIGITS, "validation", 500, train=False))
    ids = np.concatenate([b.image_ids[b.valid] for b in train])
    train_ids = np.concatenate(
        [b.image_ids for b in datasets.batches(DIGITS, "train", 1000, train=False)]
    )[:988]
    assert len(ids) == datasets.num_examples(DIGITS, "validation") == 809
    assert datasets.num_examples(DIGITS, "train") == 988
    assert np.intersect1d(ids, train_ids).size == 0
    assert np.union1d(ids, train_ids).size == len(raw.target)
    b = train[0]
    assert b.images.shape == (500, 16, 16, 3) and b.images.dtype == np.float32
    assert b.labels.dtype == np.int32 and b.image_ids.dtype == np.int64
    np.testing.assert_array_equal(b.labels, raw.target[b.image_ids])
    # Pixels: the 8x8 image repeated 2x2 and over RGB, affinely normalised.
    expected = np.kron(raw.images[b.image_ids] / 16.0, np.ones((2, 2)))
    got = b.images[..., 0]
    slope = np.polyfit(expected.ravel(), got.ravel(), 1)
    np.testing.assert_allclose(got, np.polyval(slope, expected), atol=1e-5)
    np.testing.assert_array_equal(b.images[..., 0], b.images[..., 2])
    # The last evaluation batch is padded and flagged.
    assert train[1].valid.sum() == 309 and not train[1].valid[309:].any()


def test_digits_training_passes_are_seeded_and_resumable():
    a = list(datasets.batches(DIGITS, "train", 64, train=True, seed=3, epoch=2))
    b = list(datasets.batches(DIGITS, "train", 64, train=True, seed=3, epoch=2, start=5))
    c = list(datasets.batches(DIGITS, "train", 64, train=True, seed=3, epoch=3))
    assert len(a) == 988 // 64 and len(b) == len(a) - 5
    for x, y in zip(a[5:], b, strict=True):
        np.testing.assert_array_equal(x.images, y.images)
        np.testing.assert_array_equal(x.image_ids, y.image_ids)
    assert not np.array_equal(a[0].image_ids, c[0].image_ids)
    assert all(x.valid.all() for x in a)


def _jpeg(h, w, seed):
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255.0 / w, y * 255.0 / h, np.full(x.shape, 40.0 + 50 * seed)], -1)
    buf = io.BytesIO()
    Image.fromarray(img.astype(np.uint8)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _write_imagenet_archives(manual):
    """The two archives of ImageNet's manual download, in their real layout, with 4 + 3 images."""
    manual.mkdir(parents=True)
    with tarfile.open(manual / "ILSVRC2012_img_train.tar", "w") as outer:
        for synset in ("n01440764", "n01443537"):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as inner:
                for j in range(2):
                    _add(inner, f"{synset}_{j + 10}.JPEG", _jpeg(300 + 10 * j, 260, j))
            _add(outer, f"{synset}.tar", buf.getvalue())
    with tarfile.open(manual / "ILSVRC2012_img_val.tar", "w") as t:
        for j in range(1, 4):
            _add(t, f"ILSVRC2012_val_{j:08d}.JPEG", _jpeg(280, 320 + 20 * j, j))


def _reference_eval(data: bytes) -> np.ndarray:
    """torchvision's evaluation transform with PIL: resize 256 (bilinear), centre crop 224."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    s = 256 / min(w, h)
    img = img.resize((round(w * s), round(h * s)), Image.BILINEAR)
    w, h = img.size
    left, top = (w - 224) // 2, (h - 224) // 2
    x = np.asarray(img.crop((left, top, left + 224, top + 224)), np.float32) / 255.0
    return (x - np.array(datasets.IMAGENET_MEAN)) / np.array(datasets.IMAGENET_STD)


def test_imagenet_pipeline_on_a_tiny_manual_download(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    manual = tmp_path / "manual"
    _write_imagenet_archives(manual)
    cfg = datasets.DataConfig(data_dir=str(tmp_path / "tfds"), manual_dir=str(manual))
    val = list(datasets.batches(cfg, "validation", 2, train=False))
    assert datasets.num_examples(cfg, "validation") == 3
    ids = np.concatenate([b.image_ids[b.valid] for b in val])
    labels = np.concatenate([b.labels[b.valid] for b in val])
    images = np.concatenate([b.images[b.valid] for b in val])
    assert sorted(ids) == [1, 2, 3] and images.shape == (3, 224, 224, 3)
    assert images.dtype == np.float32 and not val[-1].valid[-1]
    # Labels from tensorflow-datasets' validation label file (val image 1 is class 65).
    assert dict(zip(ids.tolist(), labels.tolist(), strict=True))[1] == 65
    for i, image in zip(ids, images, strict=True):
        ref = _reference_eval(_jpeg(280, 320 + 20 * int(i), int(i)))
        # Resampling kernels differ slightly between TF and PIL on these smooth gradients.
        assert np.abs(image - ref).mean() < 0.02
        np.testing.assert_allclose(image, ref, atol=0.1)
    train = list(datasets.batches(cfg, "train", 2, train=True, seed=1))
    again = list(datasets.batches(cfg, "train", 2, train=True, seed=1))
    assert len(train) == 2
    for x, y in zip(train, again, strict=True):
        np.testing.assert_array_equal(x.images, y.images)
    tids = np.sort(np.concatenate([b.image_ids for b in train]))
    np.testing.assert_array_equal(
        tids,
        [1440764 * 10**7 + 10, 1440764 * 10**7 + 11, 1443537 * 10**7 + 10, 1443537 * 10**7 + 11],
    )
    assert {int(x) for b in train for x in b.labels} == {0, 1}


def test_missing_imagenet_says_what_to_download_and_where(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    cfg = datasets.DataConfig(data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match=r"ILSVRC2012_img_train\.tar.*image-net\.org.*nope"):
        next(datasets.batches(cfg, "validation", 8, train=False))


def test_bad_arguments():
    with pytest.raises(ValueError, match="split must be"):
        datasets.batches(DIGITS, "test", 8, train=False)
    with pytest.raises(ValueError, match="name must be"):
        datasets.DataConfig(name="cifar10")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        datasets.batches(DIGITS, "train", 0, train=True)
