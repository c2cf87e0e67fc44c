"""Resumable training in segments: one loop for toy models, SAEs and deep networks.

A training run is ``n_steps`` steps (batches, epochs) of a jitted *segment runner*
``segment(state, start, n) -> state`` that advances the state by steps ``start .. start + n - 1``.
:func:`run` calls it segment by segment and hands the state to a *checkpoint hook* after each
one; started again, it resumes from the newest checkpoint that restores. Steps are pure functions
of their index (the data and keys of step ``i`` depend on ``i`` alone), so a resumed run ends with
the same state as an uninterrupted one, bitwise.

The hook is any object with ``restore(like) -> (done, state or None)`` and ``save(done, state)``;
:class:`OrbaxCheckpoints` keeps them on disk with orbax. A damaged checkpoint (a file truncated
by a full disk or a partial copy) is reported with a :class:`DamagedCheckpoint` warning naming
its step, removed, and the next older one is tried; if none restores, the run starts over.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import jax

from superalign import io

State = TypeVar("State")


class DamagedCheckpoint(UserWarning):
    """A checkpoint that does not restore; training resumed from an older one (or restarted)."""


class Checkpoints(Protocol):
    def restore(self, like: Any) -> tuple[int, Any]:
        """``(steps done, state)`` of the newest usable checkpoint, or ``(0, None)``."""

    def save(self, done: int, state: Any) -> None:
        """Keep ``state`` after ``done`` steps."""


def _abstract(like):
    """Shapes, dtypes and shardings of a state (where to restore each array)."""
    return jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=getattr(a, "sharding", None)),
        like,
    )


class OrbaxCheckpoints:
    """Orbax checkpoints of one training state in ``directory``, keyed by steps done.

    Args:
      directory: the folder (created on the first save).
      max_to_keep: how many of the newest checkpoints to keep (two: one can be damaged).
    """

    def __init__(self, directory, max_to_keep: int = 2):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep)
        )

    def steps(self) -> list[int]:
        """Steps of the checkpoints on disk, oldest first."""
        return sorted(self.manager.all_steps())

    def restore(self, like):
        """``(done, state)`` of the newest checkpoint that restores (placed like ``like``).

        Warns (:class:`DamagedCheckpoint`) for each newer one that does not, and removes it so
        that the resumed run can write that step again. ``(0, None)`` if none restores.
        """
        for step in reversed(self.steps()):
            try:
                state = self.manager.restore(
                    step, args=self._ocp.args.StandardRestore(_abstract(like))
                )
            except Exception as err:  # orbax and tensorstore raise many kinds for a bad file
                warnings.warn(
                    f"checkpoint at step {step} in {self.directory} is damaged and is removed "
                    f"({type(err).__name__}: {str(err)[:200]}); trying an older one",
                    DamagedCheckpoint,
                    stacklevel=2,
                )
                self.manager.delete(step)
                continue
            return step, io.placed_like(state, like)
        return 0, None

    def save(self, done: int, state) -> None:
        self.manager.save(done, args=self._ocp.args.StandardSave(state))
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def run(
    state: State,
    segment: Callable[[State, int, int], State],
    n_steps: int,
    *,
    every: int,
    start: int = 0,
    checkpoints: Checkpoints | None = None,
    callback: Callable[[int, int], None] | None = None,
) -> State:
    """Run ``n_steps`` steps in segments of ``every``, checkpointed, resuming where one stopped.

    Args:
      state: the initial state (a pytree of arrays); also tells a restore where arrays live.
      segment: ``segment(state, step, n) -> state`` runs steps ``step .. step + n - 1`` (the
        segment's first step is ``start + done``); usually a jitted ``lax.scan``.
      n_steps: steps in the whole run.
      every: steps per segment; a checkpoint is written after each segment.
      start: index of the run's first step (e.g. the first SAE batch of a split).
      checkpoints: the checkpoint hook (:class:`OrbaxCheckpoints`), or None for none.
      callback: ``callback(done, n_steps)`` before the first segment and after each one
        (progress bars).

    Returns:
      The state after ``n_steps`` steps.
    """
    for name, value in (("n_steps", n_steps), ("every", every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    done = 0
    if checkpoints is not None:
        saved, restored = checkpoints.restore(state)
        if restored is not None:
            if saved > n_steps:
                raise ValueError(
                    f"the newest checkpoint is at step {saved}, past n_steps={n_steps}: it "
                    "belongs to another run"
                )
            done, state = saved, restored
    if callback is not None:
        callback(done, n_steps)
    while done < n_steps:
        n = min(every, n_steps - done)
        state = segment(state, start + done, n)
        done += n
        if checkpoints is not None:
            checkpoints.save(done, state)
        if callback is not None:
            callback(done, n_steps)
    return state
