"""Thin I/O for experiments: atomic files, the run folder's config, versions."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import platform
from pathlib import Path
from typing import Any

import numpy as np

from superalign.io import write_atomic


def _jsonable(obj: Any):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray) or hasattr(obj, "__array__"):
        return _jsonable(np.asarray(obj).tolist())
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    return obj


def write_json(path, data) -> Path:
    return write_text(path, json.dumps(_jsonable(data), indent=2, allow_nan=False) + "\n")


def read_json(path):
    with open(path) as f:
        return json.load(f)


def save_npy(path, array) -> Path:
    return write_atomic(Path(path), lambda f: np.save(f, np.asarray(array)))


def save_figure(fig, stem) -> list[Path]:
    """Save a matplotlib figure as ``stem.png`` and ``stem.pdf``, each atomically."""
    paths = []
    for ext in ("png", "pdf"):
        path = Path(f"{stem}.{ext}")
        paths.append(write_atomic(path, lambda f, ext=ext: fig.savefig(f, format=ext, dpi=200)))
    return paths


def check_out(cfg, out: Path, name: str = "config.json") -> None:
    """A run directory belongs to one config: refuse to resume or overwrite a different one.

    Writes ``out/<name>`` (atomically) for a new directory; raises ``ValueError`` if it
    already holds another config.
    """
    out = Path(out)
    path = out / name
    tmp = out / f".{name}"
    wanted = read_json(write_json(tmp, dataclasses.asdict(cfg)))
    if path.exists() and read_json(path) != wanted:
        tmp.unlink()
        raise ValueError(
            f"--out {out} holds a run with another config ({path}); use a new --out directory"
        )
    tmp.replace(path)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "machine": platform.machine()}
    for name in ("superalign", "jax", "jaxlib", "optax", "ott-jax", "orbax-checkpoint", "numpy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def header(cfg, devices=None) -> dict:
    """The first entries of every results.json: the config, the versions and the devices."""
    import jax

    devices = jax.devices() if devices is None else devices
    return {
        "config": dataclasses.asdict(cfg),
        "versions": versions(),
        "devices": [str(d) for d in devices],
    }


def write_text(path, text: str) -> Path:
    return write_atomic(Path(path), lambda f: f.write(text.encode()))
