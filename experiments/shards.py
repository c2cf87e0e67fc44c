"""Activations on disk in shards: written atomically, resumable, streamed back in chunks.

Layout of one shard directory (one model, seed, layer and split)::

    index.json                 {"units", "dtype", "shard_rows", "shards": [[name, rows], ...],
                                "rows", "complete"}
    00000.activations.npy      [rows, units] float32
    00000.image_ids.npy        [rows] int64
    00001.activations.npy ...

Each shard's two files are written atomically (temporary file, then rename) before the index
names them, and the index itself is replaced atomically, so a killed writer leaves only whole
shards. A new :class:`ShardWriter` on the same directory continues after the rows already
committed (``rows``); :meth:`ShardWriter.truncate` drops shards past a common row count (writers
of several layers that must stay in lockstep). :class:`ShardReader` memory-maps the shards and
yields chunks, optionally in a seeded shard order, so 1.28 M x 2048 activations never need to be
in memory at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from experiments import run_files


class _Shards:
    """A shard directory's index: what both the writer and the reader know."""

    directory: Path
    index: dict

    @property
    def rows(self) -> int:
        """Rows committed to disk (whole shards)."""
        return self.index["rows"]

    @property
    def units(self) -> int:
        return self.index["units"]

    @property
    def complete(self) -> bool:
        return self.index["complete"]


class ShardWriter(_Shards):
    """Append ``[n, units]`` activations with their image ids; flush every ``shard_rows`` rows."""

    def __init__(self, directory, units: int, shard_rows: int):
        if units < 1 or shard_rows < 1:
            raise ValueError(f"units and shard_rows must be >= 1, got {units}, {shard_rows}")
        self.directory = Path(directory)
        index = self.directory / "index.json"
        if index.exists():
            self.index = run_files.read_json(index)
            if self.index["units"] != units or self.index["shard_rows"] != shard_rows:
                raise ValueError(
                    f"{self.directory} holds shards of {self.index['units']} units and "
                    f"{self.index['shard_rows']} rows per shard, not {units} and {shard_rows}"
                )
        else:
            self.index = {
                "units": units,
                "dtype": "float32",
                "shard_rows": shard_rows,
                "shards": [],
                "rows": 0,
                "complete": False,
            }
        self._acts: list[np.ndarray] = []
        self._ids: list[np.ndarray] = []
        self._buffered = 0

    def truncate(self, rows: int) -> None:
        """Forget committed shards past ``rows`` (a shard boundary) and any buffered rows."""
        kept, total = [], 0
        for name, n in self.index["shards"]:
            if total + n > rows:
                break
            kept.append([name, n])
            total += n
        if total != rows:
            raise ValueError(f"rows={rows} is not a shard boundary of {self.directory}")
        self.index.update(shards=kept, rows=total, complete=False)
        self._acts, self._ids, self._buffered = [], [], 0
        self._write_index()

    def append(self, activations, image_ids) -> None:
        acts = np.asarray(activations, np.float32)
        ids = np.asarray(image_ids, np.int64)
        if acts.ndim != 2 or acts.shape[1] != self.index["units"] or ids.shape != acts.shape[:1]:
            raise ValueError(
                f"activations must be [n, {self.index['units']}] with image_ids [n], got "
                f"{acts.shape} and {ids.shape}"
            )
        if self.complete:
            raise ValueError(f"{self.directory} is complete; truncate it to append")
        self._acts.append(acts)
        self._ids.append(ids)
        self._buffered += len(acts)
        while self._buffered >= self.index["shard_rows"]:
            self._flush(self.index["shard_rows"])

    def _flush(self, n: int) -> None:
        acts, ids = np.concatenate(self._acts), np.concatenate(self._ids)
        name = f"{len(self.index['shards']):05d}"
        run_files.save_npy(self.directory / f"{name}.activations.npy", acts[:n])
        run_files.save_npy(self.directory / f"{name}.image_ids.npy", ids[:n])
        self.index["shards"].append([name, n])
        self.index["rows"] += n
        self._write_index()
        self._acts, self._ids = [acts[n:]], [ids[n:]]
        self._buffered = len(acts) - n

    def _write_index(self) -> None:
        run_files.write_json(self.directory / "index.json", self.index)

    def close(self) -> None:
        """Flush the remainder and mark the directory complete."""
        if self._buffered:
            self._flush(self._buffered)
        self.index["complete"] = True
        self._write_index()


class ShardReader(_Shards):
    """Read a complete shard directory."""

    def __init__(self, directory):
        self.directory = Path(directory)
        path = self.directory / "index.json"
        if not path.exists():
            raise ValueError(f"{self.directory} holds no activation shards (no index.json)")
        self.index = run_files.read_json(path)
        if not self.index["complete"]:
            raise ValueError(f"{self.directory}: the shards are incomplete (writer not closed)")

    def _load(self, name: str, what: str) -> np.ndarray:
        return np.load(self.directory / f"{name}.{what}.npy", mmap_mode="r")

    def image_ids(self) -> np.ndarray:
        """``[rows]`` int64 image ids in stored order."""
        parts = [self._load(n, "image_ids") for n, _ in self.index["shards"]]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def read(self) -> np.ndarray:
        """All activations, ``[rows, units]`` float32 (only for what fits in memory)."""
        parts = [self._load(n, "activations") for n, _ in self.index["shards"]]
        return np.concatenate(parts) if parts else np.zeros((0, self.units), np.float32)

    def chunks(self, chunk_rows: int, *, seed: int | None = None) -> Iterator[np.ndarray]:
        """Consecutive ``[chunk_rows, units]`` chunks (the last may be shorter).

        With ``seed``, shards are visited in a permutation drawn from ``seed`` (readers of
        several seeds' directories with the same ``seed`` stay row-aligned).
        """
        shards = [n for n, _ in self.index["shards"]]
        if seed is not None:
            shards = [shards[i] for i in np.random.default_rng(seed).permutation(len(shards))]
        buffer, buffered = [], 0
        for name in shards:
            buffer.append(np.asarray(self._load(name, "activations")))
            buffered += len(buffer[-1])
            while buffered >= chunk_rows:
                data = np.concatenate(buffer)
                yield data[:chunk_rows]
                buffer, buffered = [data[chunk_rows:]], buffered - chunk_rows
        if buffered:
            yield np.concatenate(buffer)
