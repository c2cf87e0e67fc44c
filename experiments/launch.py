"""One command line for every experiment.

An experiment module declares its configs and its work; this module does the rest (the command
line, ``--config NAME``, ``--config.FIELD=VALUE`` overrides, the output folder, logging, the
persistent compilation cache and the summary). An experiment module holds

- ``PRESETS``: ``{name: () -> config}``, its config module's presets: ``paper`` (the default),
  ``quick``, ``tiny`` and any others (``digits_small``, ``synthetic``, ...);
- ``run(config, out, *, progress) -> results``: the whole experiment, resumable in ``out``;
- ``summary(results) -> str``: what the command prints at the end;
- optionally ``FLAGS``: ``{name: help}``, switches that change what is written but not the
  results (``--save-activations``); they reach ``run`` as keyword arguments;

and ends with ``if __name__ == "__main__": launch.cli(__name__)``. Then::

    python -m experiments.toy_models                              # the paper's setting
    python -m experiments.toy_models --config quick --out runs/q  # a preset, another folder
    python -m experiments.toy_models --config.sizes="(16,)" --config.sae.k=5
    python -m experiments.launch toy_models --config tiny          # the same, by name

Several processes (hosts): ``--coordinator HOST:PORT --num-processes P --process-id I`` (or the
environment variables ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``),
or ``--distributed`` for JAX's own cluster detection (SLURM, Open MPI, Cloud TPU), join the run
through :func:`superalign.sharding.initialize` before any other JAX call; only process 0 prints
the summary. Without them nothing changes.

Override values are Python literals (``32``, ``1e-3``, ``(8, 16)``, ``True``, ``None``); anything
else is a string. A dotted name reaches into a nested config (``--config.toy.n_steps=1000``).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import importlib
import logging
import os
import sys
import time
import traceback
from pathlib import Path

from tqdm.auto import tqdm

from superalign import io, training

log = logging.getLogger("experiments")

CACHE_ENV = "SUPERALIGN_CACHE"


# ---------------------------------------------------------------------------------------------
# Configs: presets and overrides.


def preset(presets: dict, name: str):
    """The config of preset ``name``; ``ValueError`` listing the presets for an unknown one."""
    if name not in presets:
        raise ValueError(f"unknown config {name!r}; --config must be one of {sorted(presets)}")
    return presets[name]()


def _parse(raw: str, current, name: str):
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    if isinstance(current, str) and value is not None and not isinstance(value, str):
        value = raw  # a str field takes the text as written: --config.cache_dir=2024
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)  # [1, 2] as (1, 2)
    elif isinstance(current, tuple) and not isinstance(value, tuple):
        value = (value,)
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if current is not None and value is not None and type(value) is not type(current):
        raise ValueError(f"--config.{name} must be a {type(current).__name__}, got {raw!r}")
    return value


def _replace(config, path: str, raw: str, prefix: str = ""):
    head, _, rest = path.partition(".")
    fields = {f.name for f in dataclasses.fields(config)}
    if head not in fields:
        where = f" of {prefix[:-1]}" if prefix else ""
        raise ValueError(
            f"unknown config field {prefix + head!r}; fields{where} are {sorted(fields)}"
        )
    current = getattr(config, head)
    if rest:
        if not dataclasses.is_dataclass(current):
            raise ValueError(
                f"--config.{prefix}{head} is a {type(current).__name__}, it has no field {rest!r}"
            )
        value = _replace(current, rest, raw, f"{prefix}{head}.")
    else:
        if dataclasses.is_dataclass(current):
            raise ValueError(
                f"--config.{prefix}{head} is a {type(current).__name__}: override its fields "
                f"(--config.{prefix}{head}.FIELD=VALUE)"
            )
        value = _parse(raw, current, prefix + head)
    if not prefix:
        return dataclasses.replace(config, **{head: value})
    try:  # a library config checks its own fields: say which config refused the value
        return dataclasses.replace(config, **{head: value})
    except ValueError as err:
        raise ValueError(f"--config.{prefix}{head}={raw}: {err}") from None


def apply_overrides(config, overrides: list[str]):
    """Apply ``--config.a.b=value`` overrides to a frozen dataclass config, returning a new one.

    Nested configs (``sae``, ``toy``, ``data``) are replaced along the path, so their own checks
    run. Unknown fields, wrong types and values a config refuses raise ``ValueError``.
    """
    for item in overrides:
        if not item.startswith("--config.") or "=" not in item:
            raise ValueError(f"override must look like --config.field=value, got {item!r}")
        path, raw = item[len("--config.") :].split("=", 1)
        config = _replace(config, path, raw)
    return config


def positive_int(name: str, value) -> int:
    """``value`` if it is an integer >= 1, else ``ValueError`` naming the field."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def per_run(name: str, config, **fields: str) -> None:
    """Refuse a value in a template config's field that the experiment sets for each run.

    An experiment config holds a library config as a template (``sae``) whose per-run fields
    (``n_inputs``: each layer's width) hold the placeholder 1; ``fields`` maps each such field to
    the config field that sets it. An override there would be silently replaced, so it is refused.
    """
    for field, source in fields.items():
        value = getattr(config, field)
        if value != 1:
            raise ValueError(
                f"{name}.{field} is set for each run from {source}; leave it at 1, got {value!r}"
            )


# ---------------------------------------------------------------------------------------------
# Running: stages, progress bars.


class Stages:
    """Runs named stages, logging each one's wall time (``seconds``: name -> seconds)."""

    def __init__(self, prefix: str):
        self.prefix, self.seconds = prefix, {}

    def __call__(self, name, fn, *args, **kwargs):
        import jax

        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args, **kwargs))
        self.seconds[name] = time.perf_counter() - t0
        log.info("%s %s: %.1f s", self.prefix, name, self.seconds[name])
        return out


@contextlib.contextmanager
def progress_bar(desc: str, enabled: bool, total: int | None = None):
    """A progress bar as a callback ``tick(done, total=None)`` (``done``: absolute count)."""
    with tqdm(total=total, desc=desc, disable=not enabled, leave=False) as bar:

        def tick(done, total=None):
            if total is not None:
                bar.total = total
            bar.update(done - bar.n)

        yield tick


def train(
    init, segment, n_steps: int, *, every: int, directory, desc: str, progress: bool, start=0
):
    """:func:`superalign.training.run` with orbax checkpoints in ``directory``, a progress bar."""
    with (
        training.OrbaxCheckpoints(directory) as checkpoints,
        progress_bar(desc, progress) as tick,
    ):
        return training.run(
            init, segment, n_steps, every=every, start=start, checkpoints=checkpoints, callback=tick
        )


# ---------------------------------------------------------------------------------------------
# The command line.


def compilation_cache() -> Path:
    """Turn on JAX's persistent compilation cache, so that a second run compiles nothing.

    The folder is ``$SUPERALIGN_CACHE`` or ``~/.cache/superalign/jax``; every program is kept
    (:func:`superalign.io.enable_compilation_cache`). A cache JAX already has
    (``JAX_COMPILATION_CACHE_DIR``) is kept with its own settings.
    """
    path = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "superalign" / "jax"
    return io.enable_compilation_cache(path)


def _name(module) -> str:
    spec = getattr(module, "__spec__", None)
    return spec.name if spec is not None else module.__name__


def parser(module) -> argparse.ArgumentParser:
    name = _name(module)
    doc = (module.__doc__ or "").strip().split("\n")[0]
    ap = argparse.ArgumentParser(
        prog=f"python -m {name}",
        description=doc,
        epilog="Config fields: --config.FIELD=VALUE, nested ones as --config.sae.k=5 "
        f"(the configs: experiments/configs/). Presets: {', '.join(module.PRESETS)}.",
    )
    ap.add_argument("--config", default="paper", choices=list(module.PRESETS), help="preset")
    ap.add_argument("--out", default=None, help="output folder (default runs/<experiment>)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    for flag, text in getattr(module, "FLAGS", {}).items():
        ap.add_argument("--" + flag.replace("_", "-"), action="store_true", help=text)
    env = os.environ.get
    multi = ap.add_argument_group("several processes (superalign.sharding.initialize)")
    multi.add_argument("--coordinator", default=env("JAX_COORDINATOR_ADDRESS"), help="HOST:PORT")
    multi.add_argument("--num-processes", type=int, default=env("JAX_NUM_PROCESSES"))
    multi.add_argument("--process-id", type=int, default=env("JAX_PROCESS_ID"))
    multi.add_argument(
        "--distributed", action="store_true", help="JAX's cluster detection (SLURM, MPI, TPU)"
    )
    return ap


def single_process() -> bool:
    """Whether this run has one process (JAX not started counts as one)."""
    jax = sys.modules.get("jax")
    return jax is None or not jax.distributed.is_initialized()


def join_processes(args) -> bool:
    """``sharding.initialize`` when the flags ask for several processes; is this process 0?"""
    given = (args.coordinator, args.num_processes, args.process_id)
    if args.distributed or any(v is not None for v in given):
        from superalign import sharding

        sharding.initialize(*given)
        import jax

        return jax.process_index() == 0
    return True


def main(module, argv: list[str] | None = None) -> int:
    """Parse ``argv``, run the experiment, print its summary; the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    ap = parser(module)
    args, overrides = ap.parse_known_args(argv)
    try:
        main_process = join_processes(args)  # before any other JAX call
    except ValueError as err:
        ap.error(str(err))
    try:
        config = apply_overrides(preset(module.PRESETS, args.config), overrides)
    except ValueError as err:
        ap.error(str(err))
    short = _name(module).rsplit(".", 1)[-1]
    out = Path(args.out or f"runs/{short}" + ("" if args.config == "paper" else f"_{args.config}"))
    flags = {flag: getattr(args, flag) for flag in getattr(module, "FLAGS", {})}
    t0 = time.perf_counter()
    try:
        results = module.run(config, out, progress=not args.no_progress, **flags)
    except Exception:
        if not single_process():
            # At exit JAX waits for every process to shut down: a failed process would hang
            # there with its peers blocked in their next collective. Exit now; they then fail.
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)
        raise
    if main_process:
        print(module.summary(results))
        print(f"\nresults: {out}; wall time {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


def cli(module_name: str) -> None:
    """The command-line entry point: the Agg backend, logging, the compilation cache, ``main``."""
    import matplotlib

    matplotlib.use("Agg")
    logging.basicConfig(format="%(asctime)s %(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)  # the stages' wall times; libraries keep their own levels
    compilation_cache()
    raise SystemExit(main(sys.modules[module_name]))


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        raise SystemExit("usage: python -m experiments.launch EXPERIMENT [--config NAME] ...")
    experiment = importlib.import_module(f"experiments.{sys.argv.pop(1)}")
    cli(experiment.__name__)
