"""What every benchmark script shares: the machine line, timing, peak memory, the command line."""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import time

import numpy as np


def machine() -> str:
    """The CPU model, its core count and the load average, for the first line of a report."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} cores, load average {os.getloadavg()}"


def timed(fn, *args, **kwargs):
    """``(fn(*args, **kwargs), seconds)``, wall-clock."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def peak_gib() -> float:
    """Peak resident memory of this process so far, GiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def against(ours, reference, *args):
    """Run ``ours`` (a library score) and ``reference`` (its per-fold reference) on ``args``.

    Returns:
      ``(result, seconds, reference_folds, reference_seconds, max_diff)``: the library's result,
      the reference's [K] fold scores, and the largest absolute per-fold difference.
    """
    result, seconds = timed(ours, *args)
    ref, ref_seconds = timed(reference, *args)
    return result, seconds, ref, ref_seconds, np.abs(result.folds - ref).max()


def parser(doc: str, only: list[str] | None = None) -> argparse.ArgumentParser:
    """A benchmark's parser, described by the first line of ``doc``.

    With ``only`` (the script's parts) it has ``--quick`` (a small smoke run) and ``--only``
    (one part).
    """
    out = argparse.ArgumentParser(description=doc.splitlines()[0])
    if only is not None:
        out.add_argument("--quick", action="store_true", help="small smoke run")
        out.add_argument("--only", choices=only, default=None)
    return out


def end() -> None:
    """The last line of a report: the load average at the end."""
    print(f"\nend: load average {os.getloadavg()}")
