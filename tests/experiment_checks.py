"""What the experiment tests share: their command lines, and checks of figures and scores."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def command(module: str, *args) -> list[str]:
    """``python -m experiments.<module> ARGS --no-progress`` (run with ``cwd=ROOT``)."""
    return [sys.executable, "-m", f"experiments.{module}", *map(str, args), "--no-progress"]


def raise_if_failed(proc: subprocess.CompletedProcess, what: str) -> None:
    """For a job that needs another job's subprocess: fail with its error output unless it
    exited with status 0."""
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{proc.stderr[-3000:]}")


def kill_once_checkpointed(cmd, checkpoints: Path, timeout: float) -> bool:
    """Start ``cmd`` (with ``cwd=ROOT``) and kill it with SIGKILL as soon as ``checkpoints`` holds
    a checkpoint (a folder named by its step), or after ``timeout`` seconds; False if it finished
    before."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir()):
            break
        time.sleep(0.01)
    if proc.poll() is not None:
        return False
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return True


def devices_env(n: int) -> dict:
    """The environment of a process that sees ``n`` simulated CPU devices."""
    flags = [os.environ.get("XLA_FLAGS"), f"--xla_force_host_platform_device_count={n}"]
    return dict(os.environ, XLA_FLAGS=" ".join(filter(None, flags)))


def command_job(module: str, folder: str, *args, devices: int | None = None):
    """A background job (see conftest.py): the experiment run into ``<new folder>/run``, on
    ``devices`` simulated CPU devices if given."""

    def spec(factory):
        out = factory.mktemp(folder) / "run"
        job = dict(args=command(module, "--out", out, *args), cwd=ROOT)
        return out, job if devices is None else dict(job, env=devices_env(devices))

    return spec


def job_fixture(name: str, spec):
    """A fixture ``name`` for background job ``spec``: ``(info, printed output)`` of its run.

    The test module also lists the job in its ``BACKGROUND`` under the same name, so that it
    starts with the session (see conftest.py).
    """

    @pytest.fixture(name=name)
    def fixture(request, background, tmp_path_factory):
        return background.stdout(request.module.__name__, name, spec, tmp_path_factory)

    return fixture


# The tiny preset of the toy experiment (two sizes, 400 steps in checkpointed segments of 40, so
# that a run can be killed inside a stage), saving its activations: 80 held-out batches of 64
# rows, so each of 3 folds tests about 1,707 stimuli and RSA subsamples them to
# rsa_max_stimuli = 1,000. One run of it serves test_toy_experiment and test_toy_metrics; the toy
# notebook's test run uses the same preset, so one of the two loads the other's compiled programs
# from the session's compilation cache.
TINY_TOY_ARGS = ("--config", "tiny")
tiny_toy_job = command_job("toy_models", "tiny_toy", *TINY_TOY_ARGS, "--save-activations")


def check_figures(folder: Path, stems) -> None:
    """Every figure was written as a PNG and a PDF of some substance."""
    for stem in stems:
        for ext in ("png", "pdf"):
            assert (Path(folder) / f"{stem}.{ext}").stat().st_size > 1000, f"{stem}.{ext}"


def check_record(record: dict, n_folds: int) -> None:
    """A score record holds every fold and their mean and standard error."""
    folds = record["folds"]
    assert len(folds) == n_folds and np.isfinite(folds).all()
    assert record["mean"] == pytest.approx(np.mean(folds))
    assert record["sem"] == pytest.approx(np.std(folds, ddof=1) / np.sqrt(n_folds))


def check_alignment(scores: dict, n_folds: int) -> None:
    """Every metric and condition of ``experiments.toy_models.alignment`` (toy and DNN runs)."""
    from experiments.toy_models import MATCHING, RIDGE

    for metric, conds in (
        ("soft_matching", MATCHING),
        ("semi_matching", MATCHING),
        ("ridge", RIDGE),
    ):
        assert sorted(scores[metric]) == sorted(conds)
        for cond in conds:
            check_record(scores[metric][cond], n_folds)


# The tiny seed sweep (two pairs at N = 4, k in {2, 3}) on 4 simulated CPU devices, its SAE
# training checkpointed every 80 steps: test_seed_sweep checks it end to end, and
# test_distributed resumes it over two processes.
TINY_SWEEP_ARGS = ("--config", "tiny", "--config.segment_steps=80")
tiny_sweep_job = command_job("seed_sweep", "tiny_sweep", *TINY_SWEEP_ARGS, devices=4)
