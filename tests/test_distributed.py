"""The seed sweep over two processes (2 simulated CPU devices each, coordinated over 127.0.0.1)
equals the same sweep in one process with 4 devices (the tiny sweep of test_seed_sweep), score
for score, and resumes from a checkpoint that the single process wrote."""

import json
import shutil
import socket
import subprocess
import time

import numpy as np
import pytest
from experiment_checks import ROOT, TINY_SWEEP_ARGS, command, devices_env, tiny_sweep_job

from experiments import launch, seed_sweep
from superalign.compare import conditions_of

TIMEOUT = 300  # seconds per run; a run that takes longer fails the test


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(commands, env, timeout=TIMEOUT) -> list[dict]:
    """Start every command at once and wait for all; on the first failure, kill the others.

    A process that exits non-zero (or a run past ``timeout``) would leave its peers waiting in a
    collective until JAX's own timeouts, so they are killed at once. Returns per process its
    ``returncode`` (None if killed), ``stdout`` and ``stderr``.
    """
    procs = []
    for args in commands:
        procs.append(
            subprocess.Popen(
                args,
                cwd=ROOT,
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    out = []
    for p in procs:
        stdout, stderr = p.communicate()
        killed = p.returncode is not None and p.returncode < 0
        out.append(dict(returncode=None if killed else p.returncode, stdout=stdout, stderr=stderr))
    return out


def _sweep(out, *args) -> list[str]:
    return command("seed_sweep", *TINY_SWEEP_ARGS, "--out", out, *args)


def _two_process_job(factory):
    """Two 2-device processes resuming the 4-device tiny sweep's SAE training from step 80."""
    folder = factory.mktemp("distributed")

    def job(single_run):
        single, proc = single_run
        one = dict(returncode=proc.returncode, stdout=proc.stdout, stderr=proc.stderr)
        if one["returncode"] != 0:
            return {"single": one}
        # The same folder, cut back to the checkpoint after 80 of 160 SAE steps.
        shared = folder / "shared"
        shutil.copytree(single, shared)
        shutil.copy(shared / "results.json", folder / "single_results.json")
        shutil.rmtree(shared / "sizes")
        (shared / "results.json").unlink()
        shutil.rmtree(shared / "checkpoints" / "sae_N4" / "160")
        port = _free_port()
        started = time.time()
        flags = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id"]
        two = run_processes([_sweep(shared, *flags, i) for i in (0, 1)], devices_env(2))
        return {"single": one, "two": two, "folder": folder, "started": started}

    return folder, dict(call=job, after=("tiny_sweep",))


def _fails_fast_job(factory):
    """Process 1 refuses its arguments at once; process 0 would wait for it at the coordinator."""
    out = factory.mktemp("fails_fast")

    def job():
        flags = ["--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes", "2"]
        bad = ["--config.n_pairs=1"]  # refused by validation, before any work
        t0 = time.monotonic()
        procs = run_processes(
            [
                _sweep(out / "a", *flags, "--process-id", "0"),
                _sweep(out / "b", *flags, "--process-id", "1", *bad),
            ],
            devices_env(2),
            timeout=240,
        )
        return procs, time.monotonic() - t0

    return out, dict(call=job)


BACKGROUND = {
    "tiny_sweep": tiny_sweep_job,  # the single process (see experiment_checks.py)
    "two_processes": _two_process_job,
    "fails_fast": _fails_fast_job,
}


@pytest.fixture(scope="module")
def two_processes(background, tmp_path_factory):
    _, res = background.result(__name__, "two_processes", _two_process_job, tmp_path_factory)
    assert res["single"]["returncode"] == 0, res["single"]["stderr"][-3000:]
    return res


def _scores(tree, path=""):
    """Every value of a results tree except timings, by path."""
    if isinstance(tree, dict):
        return {
            key: value
            for k, v in tree.items()
            if k not in ("wall_seconds", "stage_seconds")
            for key, value in _scores(v, f"{path}/{k}").items()
        }
    if isinstance(tree, list):
        return {key: v for i, x in enumerate(tree) for key, v in _scores(x, f"{path}[{i}]").items()}
    return {path: tree}


def test_two_processes_exit_cleanly_and_only_process_0_reports(two_processes):
    for i, proc in enumerate(two_processes["two"]):
        assert proc["returncode"] == 0, f"process {i}: {proc['stderr'][-3000:]}"
    p0, p1 = two_processes["two"]
    assert "soft gain" in p0["stdout"] and "soft gain" not in p1["stdout"]


def test_every_score_equals_one_process_with_four_devices(two_processes):
    folder = two_processes["folder"]
    single = json.loads((folder / "single_results.json").read_text())
    two = json.loads((folder / "shared" / "results.json").read_text())
    assert len(single["devices"]) == len(two["devices"]) == 4
    assert (single["processes"], two["processes"]) == (1, 2)
    a, b = _scores(single["sizes"]), _scores(two["sizes"])
    assert a.keys() == b.keys()
    # Every fold of every metric and condition is compared (2 pairs x 3 folds each).
    for k in ("2", "3"):
        for metric in ("soft_matching", "semi_matching", "ridge"):
            for cond in conditions_of(metric):
                at = (
                    "neuron_neuron/" + metric
                    if cond == "neuron_neuron"
                    else f"k/{k}/{metric}/{cond}"
                )
                assert sum(key.startswith(f"/4/{at}/folds[") for key in a) == 6, at
    different = {key: (a[key], b[key]) for key in a if a[key] != b[key]}
    assert not different, list(different.items())[:5]  # bitwise: the same values in the JSON
    assert single["findings"] == two["findings"]
    rec = two["sizes"]["4"]["neuron_neuron"]["soft_matching"]
    assert np.shape(rec["folds"]) == (2, 3) and rec["mean"] == pytest.approx(np.mean(rec["pairs"]))


def test_resumed_from_the_single_process_checkpoint(two_processes):
    ckpt = two_processes["folder"] / "shared" / "checkpoints" / "sae_N4"
    assert sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) == [80, 160]
    # Step 80 is the copy of the single process's; 160 was written by the two processes.
    assert (
        (ckpt / "80").stat().st_mtime < two_processes["started"] <= (ckpt / "160").stat().st_mtime
    )


def test_a_failing_process_fails_the_run_without_hanging(background, tmp_path_factory):
    _, (procs, seconds) = background.result(
        __name__, "fails_fast", _fails_fast_job, tmp_path_factory
    )
    # Process 1 stops at validation and exits at once (launch does not wait for its peers at
    # exit); process 0, blocked in its next collective, is then killed (or fails on gloo's
    # timeout): no process succeeds and nothing hangs.
    assert procs[1]["returncode"] == 1 and "n_pairs must be an integer >= 2" in procs[1]["stderr"]
    assert procs[0]["returncode"] != 0  # None: killed
    assert seconds < 200  # did not wait for the 240 s deadline (nor JAX's 300 s timeouts)


def test_process_flags_default_to_the_environment(monkeypatch):
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    args, _ = launch.parser(seed_sweep).parse_known_args([])
    assert (args.coordinator, args.num_processes, args.process_id) == ("10.0.0.1:1234", 4, 3)
    args, _ = launch.parser(seed_sweep).parse_known_args(["--process-id", "1"])
    assert args.process_id == 1 and not args.distributed
