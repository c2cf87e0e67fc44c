"""Where an experiment's wall time goes: its stages, JAX's compilation, every metric call.

    python -m benchmarks.profile_run toy_models --out runs/profile [experiment flags ...]
    python -m benchmarks.profile_run seed_sweep --config quick --out runs/profile_sweep

Runs ``python -m experiments.<name>`` in this process, the same way the command line does (Agg
backend, the persistent compilation cache, the printed summary), and records three things:

- each stage's wall time, from the launcher's stage log lines;
- JAX's compile events: tracing, lowering and XLA backend compilation seconds, programs
  compiled, and hits of the persistent compilation cache;
- a timer around every call of a metric function (its result waited for), with the shapes;
- the process's peak resident memory so far at the end of each stage and call (the first
  row where it jumps is where the run's peak memory is reached).

Compile seconds are attributed to the stage or metric call whose interval holds them. Writes
``<out>/profile.json`` (also when the run fails or is interrupted) and prints a table.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import resource
import sys
import time
from pathlib import Path

EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace_s",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
    "/jax/core/compile/backend_compile_duration": "compile_s",
}
CACHE_HIT = "/jax/compilation_cache/cache_hits"


def _peak_gb() -> float:
    """Peak resident memory of this process so far, GB (Linux reports kilobytes)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)


class Recorder:
    """Timestamps of compile events, stage log records and metric calls (``time.perf_counter``)."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.events: list[tuple[float, str, float]] = []  # (end, key, seconds)
        self.stages: list[dict] = []
        self.calls: list[dict] = []

    def duration(self, name, seconds, **_):
        key = EVENTS.get(name)
        if key is not None:
            self.events.append((time.perf_counter(), key, float(seconds)))

    def event(self, name, **_):
        if name == CACHE_HIT:
            self.events.append((time.perf_counter(), "cache_hits", 1.0))

    def within(self, start: float, end: float) -> dict:
        out = {"trace_s": 0.0, "lower_s": 0.0, "compile_s": 0.0, "programs": 0, "cache_hits": 0}
        for t, key, value in self.events:
            if start <= t <= end:
                if key == "cache_hits":
                    out["cache_hits"] += 1
                else:
                    out[key] += value
                    out["programs"] += key == "compile_s"
        return {k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}

    def stage_handler(self) -> logging.Handler:
        recorder = self

        class Stages(logging.Handler):
            def emit(self, record):
                # launch.Stages logs "<prefix> <name>: <seconds> s" when a stage ends.
                if record.msg == "%s %s: %.1f s" and len(record.args) == 3:
                    prefix, name, seconds = record.args
                    end = time.perf_counter()
                    recorder.stages.append(
                        {
                            "stage": f"{prefix} {name}",
                            "start": end - seconds,
                            "end": end,
                            "peak_gb": _peak_gb(),
                        }
                    )

        return Stages(level=logging.INFO)

    def timed(self, label: str, fn):
        import jax

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            out = jax.block_until_ready(fn(*args, **kwargs))
            shapes = [list(getattr(a, "shape", ())) for a in args[:2]]
            self.calls.append(
                {
                    "call": label,
                    "shapes": shapes,
                    "start": start,
                    "end": time.perf_counter(),
                    "peak_gb": _peak_gb(),
                }
            )
            return out

        return wrapper

    def report(self, wall: float, status: str) -> dict:
        def rows(items, key):
            return [
                {
                    key: it[key],
                    **({"shapes": it["shapes"]} if "shapes" in it else {}),
                    "wall_s": round(it["end"] - it["start"], 2),
                    "peak_gb": it["peak_gb"],
                    **self.within(it["start"], it["end"]),
                }
                for it in items
            ]

        return {
            "status": status,
            "wall_s": round(wall, 2),
            "peak_gb": _peak_gb(),
            "total": self.within(self.t0, float("inf")),
            "stages": rows(self.stages, "stage"),
            "metric_calls": rows(self.calls, "call"),
        }


def _wrap_metrics(recorder: Recorder) -> None:
    """Time every metric call the experiments make (through the library's registry)."""
    import superalign
    from superalign import matching

    compare = importlib.import_module("superalign.compare")  # the module, not the function

    matching.soft_and_semi_matching = recorder.timed(
        "soft+semi_matching", matching.soft_and_semi_matching
    )
    compare.METRICS["ridge"] = recorder.timed("ridge", compare.METRICS["ridge"])
    for name in compare.OPTIONAL_METRICS:
        fn = getattr(superalign, name, None)
        if callable(fn):
            setattr(superalign, name, recorder.timed(name, fn))


def table(report: dict) -> str:
    """Stages in order, then the metric calls summed per metric and shapes (peak: the largest)."""
    keys = ("wall_s", "trace_s", "lower_s", "compile_s", "programs", "cache_hits")
    calls: dict = {}
    for row in report["metric_calls"]:
        agg = calls.setdefault(
            (row["call"], str(row["shapes"])), dict.fromkeys(keys, 0) | {"n": 0, "peak_gb": 0.0}
        )
        agg["n"] += 1
        agg["peak_gb"] = max(agg["peak_gb"], row["peak_gb"])
        for k in keys:
            agg[k] += row[k]
    lines = [
        f"status {report['status']}, wall {report['wall_s']:.1f} s, peak RSS "
        f"{report['peak_gb']} GB; whole run: "
        + ", ".join(f"{k} {v}" for k, v in report["total"].items()),
        "",
        "| stage / metric calls | wall s | trace s | lower s | compile s | programs | cache hits "
        "| peak RSS so far (GB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = [(row["stage"], row) for row in report["stages"]]
    rows += [(f"{n} x{agg['n']} {shapes}", agg) for (n, shapes), agg in calls.items()]
    for name, row in rows:
        cells = [f"{row[k]:.4g}" for k in keys] + [f"{row['peak_gb']:.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        raise SystemExit("usage: python -m benchmarks.profile_run EXPERIMENT [flags ...]")
    name, rest = argv[0], argv[1:]
    out = Path(rest[rest.index("--out") + 1]) if "--out" in rest else Path(f"runs/{name}")
    import matplotlib

    matplotlib.use("Agg")
    import jax

    from experiments import launch

    recorder = Recorder()
    jax.monitoring.register_event_duration_secs_listener(recorder.duration)
    jax.monitoring.register_event_listener(recorder.event)
    logging.basicConfig(format="%(asctime)s %(message)s", stream=sys.stderr)
    launch.log.setLevel(logging.INFO)
    launch.log.addHandler(recorder.stage_handler())
    launch.compilation_cache()
    _wrap_metrics(recorder)
    module = importlib.import_module(f"experiments.{name}")
    status, t0 = "failed", time.perf_counter()
    try:
        code = launch.main(module, rest)
        status = "ok" if code == 0 else f"exit {code}"
        return code
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        report = recorder.report(time.perf_counter() - t0, status)
        out.mkdir(parents=True, exist_ok=True)
        (out / "profile.json").write_text(json.dumps(report, indent=1))
        print(table(report), flush=True)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
