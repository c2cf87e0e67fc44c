"""The resumable training loop: killed, damaged and resumed runs end bitwise where whole ones do."""

from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superalign import io, training

N_STEPS, EVERY = 12, 3


class State(NamedTuple):
    w: jax.Array  # [4, 3]
    velocity: jax.Array  # [4, 3]
    count: jax.Array  # int32


def _init() -> State:
    w = jax.random.normal(jax.random.key(0), (4, 3))
    return State(w, jnp.zeros_like(w), jnp.zeros((), jnp.int32))


@jax.jit
def _steps(state: State, start, n_steps):
    """Momentum steps on a least-squares loss; step i's batch comes from fold_in(key, i)."""

    def step(st, i):
        x = jax.random.normal(jax.random.fold_in(jax.random.key(1), i), (8, 4))
        grad = jax.grad(lambda w: jnp.mean((x @ w - x[:, :3]) ** 2))(st.w)
        v = 0.9 * st.velocity + grad
        return State(st.w - 0.1 * v, v, st.count + 1), None

    return jax.lax.scan(step, state, start + jnp.arange(EVERY))[0]


def _segment(state, start, n):
    assert n == EVERY  # one compiled shape
    return _steps(state, start, n)


class _Killed(Exception):
    pass


def _killed_after(n_segments):
    """A segment runner that dies (like a SIGKILL) when asked for segment ``n_segments + 1``."""
    calls = []

    def segment(state, start, n):
        if len(calls) == n_segments:
            raise _Killed
        calls.append(start)
        return _segment(state, start, n)

    return segment, calls


def _truncate_largest_file(step_dir: Path) -> Path:
    """Cut the largest file of a checkpoint in half (a full disk or a partial copy)."""
    path = max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    return path


@pytest.fixture(scope="module")
def whole():
    """The uninterrupted run, no checkpoints."""
    return jax.device_get(training.run(_init(), _segment, N_STEPS, every=EVERY))


def _assert_bitwise(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_whole_run_is_the_steps_in_order(whole):
    state = _init()
    for start in range(0, N_STEPS, EVERY):
        state = _steps(state, start, EVERY)
    _assert_bitwise(whole, state)
    assert int(whole.count) == N_STEPS


def test_killed_run_with_damaged_newest_checkpoint_resumes_to_the_same_state(whole, tmp_path):
    segment, calls = _killed_after(3)
    with training.OrbaxCheckpoints(tmp_path) as ckpt, pytest.raises(_Killed):
        training.run(_init(), segment, N_STEPS, every=EVERY, checkpoints=ckpt)
    assert calls == [0, 3, 6]
    with training.OrbaxCheckpoints(tmp_path) as ckpt:
        assert ckpt.steps() == [6, 9]  # the newest two are kept
    _truncate_largest_file(tmp_path / "9")

    seen, resumed_from = [], []
    with training.OrbaxCheckpoints(tmp_path) as ckpt:
        with pytest.warns(training.DamagedCheckpoint, match=r"checkpoint at step 9 in .* damaged"):
            state = training.run(
                _init(),
                lambda st, s, n: resumed_from.append(s) or _segment(st, s, n),
                N_STEPS,
                every=EVERY,
                checkpoints=ckpt,
                callback=lambda done, total: seen.append((done, total)),
            )
        assert ckpt.steps() == [9, 12]  # step 9 written again, from step 6
    assert resumed_from == [6, 9]
    assert seen == [(6, N_STEPS), (9, N_STEPS), (12, N_STEPS)]
    _assert_bitwise(state, whole)

    # Started again when done: the newest checkpoint is the result, no step runs.
    with training.OrbaxCheckpoints(tmp_path) as ckpt:
        again = training.run(_init(), _killed_after(0)[0], N_STEPS, every=EVERY, checkpoints=ckpt)
    _assert_bitwise(again, whole)


def test_every_checkpoint_damaged_restarts_the_run(whole, tmp_path):
    segment, _ = _killed_after(2)
    with training.OrbaxCheckpoints(tmp_path) as ckpt, pytest.raises(_Killed):
        training.run(_init(), segment, N_STEPS, every=EVERY, checkpoints=ckpt)
    for step in (3, 6):
        _truncate_largest_file(tmp_path / str(step))
    with training.OrbaxCheckpoints(tmp_path) as ckpt:
        with pytest.warns(training.DamagedCheckpoint) as warned:
            state = training.run(_init(), _segment, N_STEPS, every=EVERY, checkpoints=ckpt)
    assert [str(w.message).split(" in ")[0] for w in warned] == [
        "checkpoint at step 6",
        "checkpoint at step 3",
    ]
    _assert_bitwise(state, whole)


class _Memory:
    """A checkpoint hook in memory: the protocol is all the loop needs."""

    def __init__(self):
        self.saved = {}

    def restore(self, like):
        if not self.saved:
            return 0, None
        step = max(self.saved)
        return step, self.saved[step]

    def save(self, done, state):
        self.saved[done] = state


def test_any_checkpoint_hook_and_offset_steps(whole):
    hook = _Memory()
    segment, calls = _killed_after(1)
    with pytest.raises(_Killed):
        training.run(_init(), segment, N_STEPS, every=EVERY, start=100, checkpoints=hook)
    assert calls == [100] and list(hook.saved) == [EVERY]  # saved by steps done, not index
    state = training.run(_init(), _segment, N_STEPS, every=EVERY, start=100, checkpoints=hook)
    expected = _init()
    for start in range(100, 100 + N_STEPS, EVERY):
        expected = _steps(expected, start, EVERY)
    _assert_bitwise(state, expected)
    assert not np.array_equal(np.asarray(state.w), np.asarray(whole.w))  # other batches


def test_bad_arguments_are_refused():
    for kw, match in (
        (dict(n_steps=0, every=1), "n_steps must be a positive integer, got 0"),
        (dict(n_steps=4, every=2.0), "every must be a positive integer, got 2.0"),
    ):
        with pytest.raises(ValueError, match=match):
            training.run(_init(), _segment, **kw)
    hook = _Memory()
    hook.save(N_STEPS + EVERY, _init())
    with pytest.raises(ValueError, match="step 15, past n_steps=12: it belongs to another run"):
        training.run(_init(), _segment, N_STEPS, every=EVERY, checkpoints=hook)


def test_restored_state_lowers_to_the_programs_of_a_fresh_one(tmp_path):
    """Arrays restored from orbax come back placed like the state they restore into: uncommitted
    where it was, so a resumed run compiles the same programs as an uninterrupted one (and finds
    them in the persistent compilation cache); committed where it was."""
    fresh = _init()
    pinned = jax.device_put(fresh, jax.devices()[0])
    assert not fresh.w.committed and pinned.w.committed
    with training.OrbaxCheckpoints(tmp_path) as ckpt:
        ckpt.save(EVERY, fresh)
        _, restored = ckpt.restore(fresh)
        _, restored_pinned = ckpt.restore(pinned)
    _assert_bitwise(restored, fresh)
    assert not any(a.committed for a in jax.tree.leaves(restored))
    assert all(a.committed for a in jax.tree.leaves(restored_pinned))
    lowered = _steps.lower(fresh, 0, EVERY).as_text()
    assert _steps.lower(restored, 0, EVERY).as_text() == lowered
    assert _steps.lower(restored_pinned, 0, EVERY).as_text() != lowered


def test_loaded_params_lower_to_the_programs_of_fresh_ones(tmp_path):
    """``io.load_params`` (trained SAEs that a rerun of compare reuses) places its arrays as
    ``io.placed_like`` does for an abstract structure: uncommitted, so the rerun compiles the
    programs of the first run."""
    fresh = _init()
    io.save_params(tmp_path / "params", fresh, {"seed": 0})
    loaded = io.load_params(tmp_path / "params", jax.eval_shape(_init), {"seed": 0})
    _assert_bitwise(loaded, fresh)
    assert not any(a.committed for a in jax.tree.leaves(loaded))
    assert _steps.lower(loaded, 0, EVERY).as_text() == _steps.lower(fresh, 0, EVERY).as_text()
