"""Where the test suite's time goes: XLA compilation per test (a pytest plugin, run by hand).

Run from the repository root::

    python -m pytest -p benchmarks.compile_time [pytest arguments]

After the session it writes a report (``compile_time.txt``, or the path in
``$SUPERALIGN_COMPILE_REPORT``): one line per test with the seconds JAX spent in backend
compilation during it, the number of programs compiled (a program loaded from the persistent
cache counts, with its short load time), the seconds spent tracing functions and lowering them
to MLIR before that, and the test's wall and CPU seconds (setup, call and teardown), the tests
sorted by compilation time; then the totals of the test process. Only the
test process is counted: the experiment runs and notebook kernels that some tests start as
subprocesses are not.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import pytest

_EVENT = "/jax/core/compile/backend_compile_duration"
_TRACE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
)
_totals = {"seconds": 0.0, "programs": 0, "tracing": 0.0}
_rows: list[tuple[float, int, float, float, float, str]] = []


def _listener(event: str, duration: float, **_) -> None:
    if event == _EVENT:
        _totals["seconds"] += duration
        _totals["programs"] += 1
    elif event in _TRACE_EVENTS:
        _totals["tracing"] += duration


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pytest_configure(config):
    from jax import monitoring

    monitoring.register_event_duration_secs_listener(_listener)
    config._compile_time_start = (time.perf_counter(), _cpu())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    seconds, programs, tracing = _totals["seconds"], _totals["programs"], _totals["tracing"]
    wall, cpu = time.perf_counter(), _cpu()
    yield
    _rows.append(
        (
            _totals["seconds"] - seconds,
            _totals["programs"] - programs,
            _totals["tracing"] - tracing,
            time.perf_counter() - wall,
            _cpu() - cpu,
            item.nodeid,
        )
    )


def pytest_sessionfinish(session):
    wall, cpu = session.config._compile_time_start
    path = Path(os.environ.get("SUPERALIGN_COMPILE_REPORT", "compile_time.txt"))
    lines = ["compile_s programs trace_s wall_s cpu_s test"]
    for seconds, programs, tracing, w, c, nodeid in sorted(_rows, reverse=True):
        lines.append(f"{seconds:9.2f} {programs:8d} {tracing:7.2f} {w:6.2f} {c:6.2f} {nodeid}")
    lines.append(
        f"total: {_totals['seconds']:.1f} s compiling {_totals['programs']} programs, "
        f"{_totals['tracing']:.1f} s tracing and lowering; "
        f"test process {time.perf_counter() - wall:.1f} s wall, {_cpu() - cpu:.1f} s CPU"
    )
    path.write_text("\n".join(lines) + "\n")
