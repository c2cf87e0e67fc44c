"""Thin I/O for experiments: atomic files, versions, command-line overrides, checkpoints."""

from __future__ import annotations

import ast
import dataclasses
import importlib.metadata
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def _atomic(path: Path, write) -> Path:
    """Write through a temporary file in the same folder, then rename: never a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
    text = json.dumps(_jsonable(data), indent=2, allow_nan=False) + "\n"
    return _atomic(Path(path), lambda f: f.write(text.encode()))


def read_json(path):
    with open(path) as f:
        return json.load(f)


def save_npy(path, array) -> Path:
    return _atomic(Path(path), lambda f: np.save(f, np.asarray(array)))


def save_figure(fig, stem) -> list[Path]:
    """Save a matplotlib figure as ``stem.png`` and ``stem.pdf``, each atomically."""
    paths = []
    for ext in ("png", "pdf"):
        path = Path(f"{stem}.{ext}")
        paths.append(_atomic(path, lambda f, ext=ext: fig.savefig(f, format=ext, dpi=200)))
    return paths


def check_out(cfg, out: Path) -> None:
    """A run directory belongs to one config: refuse to resume or overwrite a different one.

    Writes ``out/config.json`` (atomically) for a new directory; raises ``ValueError`` if it
    already holds another config.
    """
    out = Path(out)
    path = out / "config.json"
    tmp = out / ".config.json"
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


def apply_overrides(config, overrides: list[str]):
    """Apply ``--config.field=value`` overrides to a frozen dataclass, returning a new one.

    Values are parsed as Python literals (``32``, ``1e-3``, ``(8, 16)``, ``True``); anything else
    stays a string. Unknown fields and wrong types raise ``ValueError``.
    """
    fields = {f.name: f for f in dataclasses.fields(config)}
    changes = {}
    for item in overrides:
        if not item.startswith("--config.") or "=" not in item:
            raise ValueError(f"override must look like --config.field=value, got {item!r}")
        name, raw = item[len("--config.") :].split("=", 1)
        if name not in fields:
            raise ValueError(f"unknown config field {name!r}; fields are {sorted(fields)}")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        current = getattr(config, name)
        if isinstance(current, tuple) and not isinstance(value, tuple):
            value = (value,)
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if current is not None and type(value) is not type(current):
            raise ValueError(f"--config.{name} must be a {type(current).__name__}, got {raw!r}")
        changes[name] = value
    return dataclasses.replace(config, **changes)


class Checkpoints:
    """Orbax checkpoints of one training state, keyed by step; resumes from the latest."""

    def __init__(self, directory, max_to_keep: int = 2):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.manager = ocp.CheckpointManager(
            Path(directory).absolute(),
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep),
        )

    def latest(self, abstract_state):
        """``(step, state)`` of the latest checkpoint, or ``(0, None)``."""
        step = self.manager.latest_step()
        if step is None:
            return 0, None
        state = self.manager.restore(step, args=self._ocp.args.StandardRestore(abstract_state))
        return step, state

    def save(self, step: int, state) -> None:
        self.manager.save(step, args=self._ocp.args.StandardSave(state))
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
