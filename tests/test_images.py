"""Image inputs: the evaluation transform against torchvision, image folders, the NSD stimuli."""

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets as tv_datasets
from torchvision import transforms as T

from superalign import datasets
from superalign.brain import nsd

TORCHVISION_EVAL = T.Compose(
    [
        T.Resize(256),
        T.CenterCrop(224),
        T.ToTensor(),
        T.Normalize(datasets.IMAGENET_MEAN, datasets.IMAGENET_STD),
    ]
)
# (width, height): smaller and larger than 256, portrait, landscape, square, odd; (300, 257) and
# (257, 300) resize to a long side of 298.8 (truncated to 298, not rounded to 299); (297, 256)
# and (256, 297) need no resize and crop at offset 36.5 (Python rounds it to 36).
SIZES = [
    (64, 64),
    (100, 37),
    (37, 100),
    (255, 255),
    (256, 256),
    (300, 257),
    (257, 300),
    (297, 256),
    (256, 297),
    (500, 375),
    (375, 500),
    (640, 427),
    (517, 519),
    (224, 224),
    (613, 231),
]
MODES = ["RGB", "L", "RGBA", "P", "CMYK"]


def _picture(width: int, height: int, seed: int) -> Image.Image:
    """Smooth gradients plus noise and a sharp square: edges and texture for the resampler."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:height, :width] / max(width, height)
    base = np.stack([x, y, 1 - x * y], -1) * 200 + rng.normal(0, 25, (height, width, 3))
    base[height // 4 : height // 2, width // 4 : width // 2] = rng.integers(0, 256, 3)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """torchvision's small tensor ops are slower with many threads on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _torchvision(image: Image.Image) -> np.ndarray:
    """torchvision's transform of what its image loader returns (``convert("RGB")``), HWC."""
    return TORCHVISION_EVAL(image.convert("RGB")).permute(1, 2, 0).numpy()


def _cases(tmp_path):
    """(description, PIL image) pairs: every size in RGB and two other modes (each mode on six
    sizes), and a JPEG or PNG file of it read back."""
    for i, (w, h) in enumerate(SIZES):
        image = _picture(w, h, i)
        mode = MODES[i % len(MODES)]
        for m in ("RGB", MODES[1 + i % 4], MODES[1 + (i + 1) % 4]):
            yield f"{w}x{h} {m}", image.convert(m)
        fmt = "JPEG" if mode in ("RGB", "L", "CMYK") else "PNG"
        path = tmp_path / f"{i}.{fmt.lower()}"
        image.convert(mode).save(path, fmt)
        yield f"{w}x{h} {mode} {fmt} file", tv_datasets.folder.pil_loader(path)


def test_eval_transform_matches_torchvision(tmp_path):
    diffs = []
    for name, image in _cases(tmp_path):
        ours = datasets.eval_transform(image)
        assert ours.shape == (224, 224, 3) and ours.dtype == np.float32, name
        diffs.append(np.abs(ours - _torchvision(image)))
    assert len(diffs) == len(SIZES) * 4 == 60
    mean, worst = float(np.mean([d.mean() for d in diffs])), float(max(d.max() for d in diffs))
    print(f"vs torchvision, {len(diffs)} images: mean |diff| {mean:.3g}, max {worst:.3g}")
    # Both resize, crop and convert with the same Pillow calls and scale in float32; the only
    # admissible difference is float32 rounding of (x / 255 - mean) / std (measured: 0 exactly).
    assert mean <= 1e-7 and worst <= 1e-6


def test_eval_transform_of_arrays_and_other_sizes():
    rgba = np.asarray(_picture(300, 200, 0).convert("RGBA"))
    for array in (rgba, rgba[..., :3], rgba[..., 0]):
        np.testing.assert_array_equal(
            datasets.eval_transform(array), _torchvision(Image.fromarray(array))
        )
    small = T.Compose([T.Resize(36), T.CenterCrop(32), T.ToTensor()])
    image = _picture(71, 50, 1)
    ours = datasets.eval_transform(image, image_size=32, resize_size=36)
    ref = T.Normalize(datasets.IMAGENET_MEAN, datasets.IMAGENET_STD)(small(image))
    np.testing.assert_allclose(ours, ref.permute(1, 2, 0).numpy(), atol=1e-6)


def test_eval_transform_bad_input():
    with pytest.raises(ValueError, match="uint8 array, got dtype float32"):
        datasets.eval_transform(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[H, W, 4\] uint8, got shape \(8, 8, 2\)"):
        datasets.eval_transform(np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(ValueError, match="got list"):
        datasets.eval_transform([[0]])
    with pytest.raises(ValueError, match="must not be empty"):
        datasets.eval_transform(np.zeros((0, 8), np.uint8))
    with pytest.raises(ValueError, match="resize_size=16 must be >= image_size=32"):
        datasets.eval_transform(np.zeros((8, 8), np.uint8), image_size=32, resize_size=16)


# --- folders ------------------------------------------------------------------------------------


def _save(path, seed, fmt=None, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    _picture(*size, seed).save(path, fmt)
    return path


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory):
    """Two classes, mixed-case extensions, a nested folder and files that are not read."""
    root = tmp_path_factory.mktemp("classes")
    _save(root / "zebra" / "b.JPG", 0, "JPEG")
    _save(root / "zebra" / "a.png", 1)
    _save(root / "ant" / "x.Jpeg", 2, "JPEG")
    _save(root / "ant" / "deeper" / "y.PNG", 3, "PNG")
    _save(root / "ant" / "z.gif", 4, "GIF")  # another format: ignored
    (root / "ant" / "notes.txt").write_text("not an image")
    return root


def test_class_folder_matches_torchvision_image_folder(class_folder):
    files = datasets.image_files(class_folder)
    rel = [p.relative_to(class_folder).as_posix() for p in files.paths]
    assert rel == ["ant/deeper/y.PNG", "ant/x.Jpeg", "zebra/a.png", "zebra/b.JPG"]
    np.testing.assert_array_equal(files.image_ids, [0, 1, 2, 3])  # sorted order
    reference = tv_datasets.ImageFolder(
        class_folder, is_valid_file=lambda p: p.lower().endswith((".jpeg", ".jpg", ".png"))
    )
    assert datasets.folder_classes(class_folder) == tuple(reference.classes) == ("ant", "zebra")
    expected = {p: label for p, label in reference.samples}
    assert {str(p): int(label) for p, label in zip(files.paths, files.labels, strict=True)} == (
        expected
    )
    cfg = datasets.DataConfig(name="folder", path=class_folder, image_size=32, resize_size=36)
    assert datasets.num_classes(cfg) == 2 and datasets.num_examples(cfg, "validation") == 4

    out = list(datasets.batches(cfg, "validation", 3))
    assert len(out) == 2 and all(b.images.shape == (3, 32, 32, 3) for b in out)
    np.testing.assert_array_equal(np.concatenate([b.valid for b in out]), [1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(out[0].labels, [0, 0, 1])
    assert out[1].labels[0] == 1 and out[1].image_ids[0] == 3
    tv = T.Compose(
        [
            T.Resize(36),
            T.CenterCrop(32),
            T.ToTensor(),
            T.Normalize(datasets.IMAGENET_MEAN, datasets.IMAGENET_STD),
        ]
    )
    images = np.concatenate([b.images[b.valid] for b in out])
    for image, path in zip(images, files.paths, strict=True):
        ref = tv(tv_datasets.folder.pil_loader(path)).permute(1, 2, 0).numpy()
        np.testing.assert_allclose(image, ref, atol=1e-6)
    resumed = list(datasets.batches(cfg, "validation", 3, start=1))
    assert len(resumed) == 1
    np.testing.assert_array_equal(resumed[0].images, out[1].images)
    np.testing.assert_array_equal(resumed[0].image_ids, out[1].image_ids)


def test_flat_folder_imagenet_and_sorted_ids(tmp_path):
    flat = tmp_path / "val"
    for i, n in enumerate([12, 3, 50000]):
        _save(flat / f"ILSVRC2012_val_{n:08d}.JPEG", i, "JPEG")
    files = datasets.image_files(flat)
    np.testing.assert_array_equal(files.image_ids, [3, 12, 50000])
    np.testing.assert_array_equal(files.labels, [-1, -1, -1])
    assert datasets.imagenet_file_id("a/ILSVRC2012_val_00000001.JPEG") == 1
    assert datasets.imagenet_file_id(b"n01440764_10026.JPEG") == 1440764 * 10**7 + 10026
    assert datasets.imagenet_file_id("cat.jpg") is None
    # One file with another name: every id is then the position in sorted order.
    _save(flat / "cat.jpg", 5, "JPEG")
    np.testing.assert_array_equal(datasets.image_files(flat).image_ids, [0, 1, 2, 3])
    cfg = datasets.DataConfig(name="folder", path=str(flat), image_size=16, resize_size=16)
    assert datasets.num_classes(cfg) == 0
    (batch,) = datasets.batches(cfg, "validation", 4)
    assert batch.valid.all() and (batch.labels == -1).all()


def test_folder_bad_input(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        datasets.image_files(tmp_path / "missing")
    cfg = datasets.DataConfig(name="folder", path=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="does not exist"):
        datasets.batches(cfg, "validation", 2)
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "readme.txt").write_text("no images")
    with pytest.raises(ValueError, match=r"no images found .*\.jpeg, \.jpg, \.png"):
        datasets.batches(datasets.DataConfig(name="folder", path=str(empty)), "validation", 2)
    mixed = tmp_path / "mixed"
    _save(mixed / "top.png", 0)
    _save(mixed / "cls" / "inner.png", 1)
    with pytest.raises(ValueError, match="both in itself and in subfolders"):
        datasets.image_files(mixed)
    lonely = tmp_path / "lonely"
    _save(lonely / "a" / "1.png", 0)
    (lonely / "b").mkdir()
    with pytest.raises(ValueError, match=r"class folders \['b'\].*hold no images"):
        datasets.image_files(lonely)
    twice = tmp_path / "twice"
    _save(twice / "a" / "ILSVRC2012_val_00000001.JPEG", 0, "JPEG")
    _save(twice / "b" / "ILSVRC2012_val_00000001.JPEG", 1, "JPEG")
    with pytest.raises(ValueError, match="ids must be unique.*ILSVRC2012_val_00000001"):
        datasets.image_files(twice)

    corrupt = tmp_path / "corrupt"
    _save(corrupt / "a_good.png", 0)
    (corrupt / "b_bad.jpg").write_bytes(b"not an image")
    cut = _save(tmp_path / "whole.jpg", 1, "JPEG", size=(300, 300)).read_bytes()
    (corrupt / "c_cut.jpg").write_bytes(cut[: len(cut) // 2])  # truncated
    cfg = datasets.DataConfig(name="folder", path=str(corrupt), image_size=16, resize_size=16)
    stream = datasets.batches(cfg, "validation", 1)
    next(stream)
    with pytest.raises(ValueError, match="cannot read the image .*b_bad.jpg"):
        next(stream)
    with pytest.raises(ValueError, match="cannot read the image .*c_cut.jpg"):
        next(datasets.batches(cfg, "validation", 1, start=2))

    with pytest.raises(ValueError, match="split must be 'validation' and train False"):
        datasets.batches(cfg, "train", 2)
    with pytest.raises(ValueError, match="split must be 'validation' and train False"):
        datasets.batches(cfg, "validation", 2, train=True)
    with pytest.raises(ValueError, match="needs path"):
        datasets.DataConfig(name="folder")
    with pytest.raises(ValueError, match="path is read only by"):
        datasets.DataConfig(name="digits", path="x")


# --- NSD stimuli --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nsd_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("nsd")
    path = nsd.stimuli_path(root)
    path.parent.mkdir(parents=True)
    brick = np.stack([np.asarray(_picture(42, 42, i)) for i in range(10)])
    with h5py.File(path, "w") as f:
        f.create_dataset("imgBrick", data=brick, chunks=(1, 42, 42, 3))
    return root, brick


def test_nsd_stimuli_through_the_data_interface(nsd_root):
    root, brick = nsd_root
    every = datasets.DataConfig(name="nsd", path=root, image_size=32, resize_size=36)
    assert datasets.num_examples(every, "validation") == 10 and datasets.num_classes(every) == 0
    out = list(datasets.batches(every, "validation", 4))
    assert len(out) == 3 and out[-1].valid.tolist() == [True, True, False, False]
    ids = np.concatenate([b.image_ids[b.valid] for b in out])
    np.testing.assert_array_equal(ids, np.arange(10))
    assert all((b.labels[b.valid] == -1).all() for b in out)
    images = np.concatenate([b.images[b.valid] for b in out])
    for i in range(10):
        ref = datasets.eval_transform(brick[i], image_size=32, resize_size=36)
        np.testing.assert_array_equal(images[i], ref)

    chosen = datasets.DataConfig(
        name="nsd", path=str(root), image_size=32, resize_size=36, image_ids=np.array([7, 2, 9])
    )
    assert chosen.image_ids == (7, 2, 9) and datasets.num_examples(chosen, "validation") == 3
    (batch,) = datasets.batches(chosen, "validation", 3)
    np.testing.assert_array_equal(batch.image_ids, [7, 2, 9])
    np.testing.assert_array_equal(batch.images, images[[7, 2, 9]])
    (resumed,) = datasets.batches(chosen, "validation", 2, start=1)
    np.testing.assert_array_equal(resumed.image_ids[resumed.valid], [9])


def test_nsd_stimuli_are_read_in_chunks(nsd_root):
    root, brick = nsd_root
    chunks = list(nsd.iter_stimuli(root, [9, 0, 4, 5, 6], chunk_size=2))
    assert [c[0].tolist() for c in chunks] == [[9, 0], [4, 5], [6]]
    for ids, images in chunks:
        np.testing.assert_array_equal(images, brick[ids])
    assert nsd.num_stimuli(root) == 10
    assert sum(len(c[0]) for c in nsd.iter_stimuli(root, chunk_size=3)) == 10


def test_nsd_bad_input(nsd_root, tmp_path):
    root, _ = nsd_root
    with pytest.raises(ValueError, match=r"image_ids must be unique, got repeated ids \[2\]"):
        datasets.DataConfig(name="nsd", path=root, image_ids=(2, 3, 2))
    with pytest.raises(ValueError, match="image_ids must be >= 0"):
        datasets.DataConfig(name="nsd", path=root, image_ids=(-1,))
    with pytest.raises(ValueError, match="non-empty 1-D sequence of integers"):
        datasets.DataConfig(name="nsd", path=root, image_ids=(1.5,))
    with pytest.raises(ValueError, match="image_ids is read only by name='nsd'"):
        datasets.DataConfig(name="folder", path=root, image_ids=(1,))
    far = datasets.DataConfig(name="nsd", path=root, image_ids=(3, 10))
    with pytest.raises(ValueError, match=r"0-based 73k-ids in \[0, 10\), got values in \[3, 10\]"):
        datasets.batches(far, "validation", 2)  # checked before any image is read
    with pytest.raises(FileNotFoundError, match="NSD stimulus file not found"):
        datasets.batches(datasets.DataConfig(name="nsd", path=tmp_path), "validation", 2)
