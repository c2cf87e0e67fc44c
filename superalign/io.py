"""Thin I/O for the command line: activation files, row alignment, atomic writes, checkpoints.

Activation files hold ``[n, units]`` activations and, optionally, ``image_ids [n]`` (one
integer or string per row, the stimulus of the row):

- ``.npy``: the activations only; memory-mapped, so files larger than memory are read in chunks.
- ``.npz``: ``activations`` and optional ``image_ids`` (the format ``experiments/`` writes);
  an uncompressed member (``np.savez``) is memory-mapped, a compressed one is read whole.
- ``.h5`` / ``.hdf5``: the dataset ``key`` (default ``activations``) and optional dataset
  ``image_ids``; read lazily by h5py slicing.

Nothing here computes a score: :mod:`superalign.compare` does.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

SUFFIXES = (".npy", ".npz", ".h5", ".hdf5")

_UMASK = os.umask(0)
os.umask(_UMASK)


class Activations(NamedTuple):
    """One activation file, opened lazily.

    Attributes:
      values: [n, units] array-like (numpy array, memory map or h5py dataset); read rows with
        :func:`superalign.compare.take_rows`.
      image_ids: [n] the stimulus of every row, or None when the file has none.
      path: the file.
    """

    values: Any
    image_ids: np.ndarray | None
    path: Path


def _npz_member(path: Path, name: str):
    """A member of an .npz: memory-mapped when stored uncompressed, else read whole."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(f"{name}.npy")
        if info.compress_type == zipfile.ZIP_STORED:
            with open(path, "rb") as f:
                # The local file header: 30 bytes, then the name and the extra field.
                f.seek(info.header_offset + 26)
                name_len, extra_len = np.frombuffer(f.read(4), "<u2")
                f.seek(info.header_offset + 30 + int(name_len) + int(extra_len))
                version = np.lib.format.read_magic(f)
                read_header = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = read_header(f)
                offset = f.tell()
            if not dtype.hasobject and not fortran:
                return np.memmap(path, dtype=dtype, mode="r", shape=shape, offset=offset)
    with np.load(path, allow_pickle=False) as f:
        return f[name]


def read_activations(path, *, key: str = "activations") -> Activations:
    """Open an activation file (see the module docstring) and check its layout.

    Args:
      path: a ``.npy``, ``.npz``, ``.h5`` or ``.hdf5`` file.
      key: the activations' name in an ``.npz`` or HDF5 file.

    Raises:
      ValueError: an unknown suffix, a missing key, activations that are not ``[n, units]``,
        or ``image_ids`` that are not one distinct value per row. FileNotFoundError: no file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: unknown file type {suffix!r}; expected one of {SUFFIXES}")
    if not path.is_file():
        raise FileNotFoundError(2, "activation file not found", str(path))
    ids = None
    if suffix == ".npy":
        values = np.load(path, mmap_mode="r", allow_pickle=False)
    elif suffix == ".npz":
        with zipfile.ZipFile(path) as zf:
            names = sorted(n[:-4] for n in zf.namelist() if n.endswith(".npy"))
        if key not in names:
            raise ValueError(f"{path} has no array {key!r} (--key); it holds {names}")
        values = _npz_member(path, key)
        if "image_ids" in names:
            ids = np.asarray(_npz_member(path, "image_ids"))
    else:
        import h5py

        f = h5py.File(path, "r")
        if key not in f or not isinstance(f[key], h5py.Dataset):
            names = sorted(f.keys())
            f.close()
            raise ValueError(f"{path} has no dataset {key!r} (--key); it holds {names}")
        values = f[key]  # keeps the file open while referenced
        if "image_ids" in f:
            ids = np.asarray(f["image_ids"][()])
            if ids.dtype.kind == "O":  # variable-length strings
                ids = ids.astype(str)
    shape = tuple(values.shape)
    if len(shape) != 2:
        raise ValueError(f"{path}: {key} must be [n, units] (2-D), got shape {shape}")
    if not (np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.integer)):
        raise ValueError(f"{path}: {key} must be numeric, got dtype {values.dtype}")
    if ids is not None:
        if ids.shape != (shape[0],):
            raise ValueError(
                f"{path}: image_ids must be [{shape[0]}] (one per row of {key}), got shape "
                f"{ids.shape}"
            )
        uniq, counts = np.unique(ids, return_counts=True)
        if uniq.size != ids.size:
            dup = uniq[counts > 1]
            raise ValueError(
                f"{path}: image_ids must be distinct, but {dup.size} id(s) repeat, e.g. "
                f"{dup[:5].tolist()}"
            )
    return Activations(values, ids, path)


class Alignment(NamedTuple):
    """Rows of two files that show the same stimuli.

    Attributes:
      rows_a: [n] row indices into the first file.
      rows_b: [n] row indices into the second file; row ``rows_a[i]`` and ``rows_b[i]`` show
        the same stimulus.
      image_ids: [n] the common ids in sorted order, or None when aligned by position.
    """

    rows_a: np.ndarray
    rows_b: np.ndarray
    image_ids: np.ndarray | None


def align_rows(a: Activations, b: Activations) -> Alignment:
    """Match rows by ``image_ids`` when both files have them, else by position.

    Raises:
      ValueError: no common id, or (by position) different row counts.
    """
    na, nb = a.values.shape[0], b.values.shape[0]
    if a.image_ids is None or b.image_ids is None:
        if na != nb:
            which = (
                "neither file has"
                if a.image_ids is None and b.image_ids is None
                else ("only one file has")
            )
            raise ValueError(
                f"{a.path} has {na} rows and {b.path} has {nb}; {which} image_ids, so rows are "
                "matched by position and the counts must be equal"
            )
        return Alignment(np.arange(na), np.arange(nb), None)
    if a.image_ids.dtype.kind != b.image_ids.dtype.kind and not (
        a.image_ids.dtype.kind in "iu" and b.image_ids.dtype.kind in "iu"
    ):
        raise ValueError(
            f"image_ids of {a.path} ({a.image_ids.dtype}) and {b.path} ({b.image_ids.dtype}) "
            "are of different kinds and cannot match"
        )
    common, rows_a, rows_b = np.intersect1d(
        a.image_ids, b.image_ids, assume_unique=True, return_indices=True
    )
    if common.size == 0:
        raise ValueError(
            f"{a.path} and {b.path} have no image_id in common (ids "
            f"{a.image_ids[:3].tolist()}... and {b.image_ids[:3].tolist()}...)"
        )
    return Alignment(rows_a, rows_b, common)


# ---------------------------------------------------------------------------------------------
# Atomic writes.


def write_atomic(path, write) -> Path:
    """Write through a temporary file in the same folder, then rename: never a half file.

    Args:
      path: the file to write; its folder is made if missing.
      write: called with the temporary file, opened for binary writing.

    Returns:
      ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes the file private; keep the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def jsonable(obj: Any):
    """Nested dicts, lists, numpy arrays and scalars as JSON values (NaN and Inf as None)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray) or hasattr(obj, "__array__"):
        return jsonable(np.asarray(obj).tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path, data) -> Path:
    text = json.dumps(jsonable(data), indent=2, allow_nan=False) + "\n"
    return write_atomic(path, lambda f: f.write(text.encode()))


def read_json(path):
    with open(path) as f:
        return json.load(f)


def write_text(path, text: str) -> Path:
    return write_atomic(path, lambda f: f.write(text.encode()))


def save_figure(fig, stem) -> list[Path]:
    """Save a matplotlib figure as ``stem.png`` and ``stem.pdf``, each atomically."""
    return [
        write_atomic(Path(f"{stem}.{ext}"), lambda f, ext=ext: fig.savefig(f, format=ext, dpi=150))
        for ext in ("png", "pdf")
    ]


# ---------------------------------------------------------------------------------------------
# Checkpoints of trained parameters and the compilation cache.


def save_params(directory, params, fingerprint: dict) -> None:
    """Save a pytree of arrays with orbax, then ``fingerprint.json`` (the completion marker).

    A run killed while saving leaves no fingerprint, so :func:`load_params` ignores it.
    """
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    (directory / "fingerprint.json").unlink(missing_ok=True)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(directory / "params", params, force=True)
        ckpt.wait_until_finished()
    write_json(directory / "fingerprint.json", fingerprint)


def placed_like(restored, like):
    """``restored`` (arrays orbax read back) committed to a device only where ``like`` was.

    Orbax returns every array committed to a device, and jit lowers committed arguments with
    sharding annotations, so a run that continues from restored arrays would compile other
    programs than one that did not stop, and miss them in the persistent compilation cache. An
    array whose counterpart in ``like`` is an uncommitted array, or an abstract one
    (``jax.ShapeDtypeStruct``, numpy) with no sharding, is given back uncommitted; the others are
    returned as orbax placed them.
    """
    import jax
    import jax.numpy as jnp

    def place(r, a):
        if isinstance(a, jax.Array):
            uncommitted = not a.committed
        else:
            uncommitted = getattr(a, "sharding", None) is None
        if uncommitted and isinstance(r, jax.Array):
            return jnp.asarray(np.asarray(r))
        return r

    return jax.tree.map(place, restored, like)


def load_params(directory, abstract, fingerprint: dict):
    """The params saved by :func:`save_params` with this fingerprint, or None.

    Args:
      directory: the checkpoint folder.
      abstract: the params' structure (``jax.eval_shape`` of the initialiser).
      fingerprint: what the params were trained from; a different one means retrain.
    """
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    marker = directory / "fingerprint.json"
    if not marker.is_file() or read_json(marker) != jsonable(fingerprint):
        return None
    with ocp.StandardCheckpointer() as ckpt:
        return placed_like(ckpt.restore(directory / "params", abstract), abstract)


def enable_compilation_cache(directory, min_compile_seconds: float = 0.0) -> Path | None:
    """Turn on JAX's persistent compilation cache in ``directory`` (so reruns compile little).

    By default every program is kept: loading a small one from the cache takes milliseconds,
    compiling it again tens of milliseconds on a CPU and more on a GPU, and a run compiles
    hundreds of them (the toy experiment's tiny preset ran a second time in 11.1 s with every
    program kept against 23.3 s keeping only those that took 0.5 s or more, on a 2-core CPU).
    Does nothing and returns the directory in use when the process already has one.
    """
    import jax

    current = jax.config.jax_compilation_cache_dir
    if current:
        return Path(current)
    directory = Path(directory).absolute()
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
    return directory
