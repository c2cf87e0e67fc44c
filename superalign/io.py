"""Thin I/O for the command line: activation files, row alignment, atomic writes, checkpoints.

Activation files hold ``[n, units]`` activations and, optionally, ``image_ids [n]`` (one
integer or string per row, the stimulus of the row; strings stored as bytes, fixed-length or
variable-length, are read as UTF-8 text, so the same ids match in every format):

- ``.npy``: the activations only; memory-mapped, so files larger than memory are read in chunks.
- ``.npz``: ``activations`` and optional ``image_ids`` (the format ``experiments/`` writes);
  an uncompressed member (``np.savez``) is memory-mapped, a compressed one is read whole.
- ``.h5`` / ``.hdf5``: the dataset ``key`` (default ``activations``) and optional dataset
  ``image_ids``; read lazily by h5py slicing.

A file that cannot be read (damaged, not of its suffix's format, or holding Python objects,
which are never unpickled) raises ``ValueError`` naming the file.

Nothing here computes a score: :mod:`superalign.compare` does.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib
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


_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error)
"""What numpy, zipfile and h5py raise on a damaged or unexpected file."""


def _npz_member(path: Path, name: str):
    """A member of an .npz: memory-mapped when stored uncompressed, else read whole.

    Raises:
      ValueError: naming the file and the member, when it cannot be read (a damaged file, or
        Python objects, which are never unpickled).
    """
    try:
        return _read_npz_member(path, name)
    except _READ_ERRORS as err:
        raise ValueError(
            f"{path}: cannot read the array {name!r} ({err}); expected an array of numbers or "
            "strings as numpy writes it (np.savez)"
        ) from None


def _read_npz_member(path: Path, name: str):
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


def _ids_as_str(path: Path, ids: np.ndarray) -> np.ndarray:
    """Byte-string ids decoded as UTF-8, so they match the same ids stored as text."""
    if ids.dtype.kind != "S":
        return ids
    try:
        return np.char.decode(ids, "utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: image_ids are bytes that are not UTF-8 text ({err})") from None


def _h5_ids(path: Path, f) -> np.ndarray:
    """The ``image_ids`` dataset of an open HDF5 file; strings (any storage) as str."""
    import h5py

    ds = f["image_ids"]
    if not isinstance(ds, h5py.Dataset):
        raise ValueError(
            f"{path}: image_ids must be a dataset of one id per row, got a {type(ds).__name__}"
        )
    try:
        if h5py.check_string_dtype(ds.dtype) is not None:
            return np.asarray(ds.asstr("utf-8")[()]).astype(str)
        ids = np.asarray(ds[()])
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: image_ids are strings that are not UTF-8 text ({err})") from None
    if ids.dtype.kind not in "biufSU":
        raise ValueError(f"{path}: image_ids must be integers or strings, got dtype {ids.dtype}")
    return _ids_as_str(path, ids)


def read_activations(path, *, key: str = "activations") -> Activations:
    """Open an activation file (see the module docstring) and check its layout.

    Args:
      path: a ``.npy``, ``.npz``, ``.h5`` or ``.hdf5`` file.
      key: the activations' name in an ``.npz`` or HDF5 file.

    Raises:
      ValueError: naming the file: an unknown suffix, a file that cannot be read as its suffix's
        format, a missing key, activations that are not ``[n, units]``, or ``image_ids`` that
        are not one distinct value per row. FileNotFoundError: no file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: unknown file type {suffix!r}; expected one of {SUFFIXES}")
    if not path.is_file():
        raise FileNotFoundError(2, "activation file not found", str(path))
    ids = None
    if suffix == ".npy":
        try:
            values = np.load(path, mmap_mode="r", allow_pickle=False)
        except _READ_ERRORS as err:
            raise ValueError(
                f"{path}: cannot read it as a .npy array ({err}); expected an array of numbers "
                "as numpy writes it (np.save)"
            ) from None
        if not isinstance(values, np.ndarray):
            values.close()  # an .npz archive under a .npy name
            raise ValueError(f"{path}: expected one array (.npy), got {type(values).__name__}")
    elif suffix == ".npz":
        try:
            with zipfile.ZipFile(path) as zf:
                names = sorted(n[:-4] for n in zf.namelist() if n.endswith(".npy"))
        except _READ_ERRORS as err:
            raise ValueError(
                f"{path}: cannot read it as an .npz file ({err}); expected a zip archive of "
                ".npy arrays (np.savez)"
            ) from None
        if key not in names:
            raise ValueError(f"{path} has no array {key!r} (--key); it holds {names}")
        values = _npz_member(path, key)
        if "image_ids" in names:
            ids = _ids_as_str(path, np.asarray(_npz_member(path, "image_ids")))
    else:
        import h5py

        try:
            f = h5py.File(path, "r")
        except _READ_ERRORS as err:
            raise ValueError(
                f"{path}: cannot read it as an HDF5 file ({err}); expected an HDF5 file "
                "(h5py) holding datasets"
            ) from None
        try:
            if key not in f or not isinstance(f[key], h5py.Dataset):
                raise ValueError(
                    f"{path} has no dataset {key!r} (--key); it holds {sorted(f.keys())}"
                )
            values = f[key]  # keeps the file open while referenced
            if "image_ids" in f:
                ids = _h5_ids(path, f)
        except ValueError:
            f.close()
            raise
        except _READ_ERRORS as err:
            f.close()
            raise ValueError(f"{path}: cannot read it ({err}); expected an HDF5 file") from None
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

    Ids are compared exactly: strings as text, integers as integers (signed ids against
    unsigned ones as int64).

    Raises:
      ValueError: no common id, ids of kinds that cannot match (text against numbers, or
        unsigned ids above the int64 maximum against signed ones), or (by position) different
        row counts.
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
    ids_a, ids_b = a.image_ids, b.image_ids
    if {ids_a.dtype.kind, ids_b.dtype.kind} == {"i", "u"}:
        # numpy would compare signed with unsigned 64-bit integers as float64, where ids above
        # 2**53 collide; compare both as int64 instead, which holds every id when it fits.
        unsigned = a if ids_a.dtype.kind == "u" else b
        if unsigned.image_ids.size and unsigned.image_ids.max() > np.iinfo(np.int64).max:
            raise ValueError(
                f"image_ids of {a.path} ({ids_a.dtype}) and {b.path} ({ids_b.dtype}) cannot be "
                f"compared exactly: {unsigned.path} has ids above the int64 maximum (up to "
                f"{unsigned.image_ids.max()}); store both as the same integer type"
            )
        ids_a, ids_b = ids_a.astype(np.int64), ids_b.astype(np.int64)
    common, rows_a, rows_b = np.intersect1d(ids_a, ids_b, assume_unique=True, return_indices=True)
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
