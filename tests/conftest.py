"""Subprocess work started when the session starts, on the machine's spare core.

A few tests mostly wait for a subprocess: a notebook kernel, an interpreter with simulated
devices, a whole experiment run from the command line. Run in turn, each would add its full wall
time to the suite while the in-process tests keep about one core busy. Here that work runs in a
background thread (one job at a time) from the start of the session, and the tests that need it
run once it is done: between two other test modules, or after the other tests.

A test module declares its jobs in ``BACKGROUND``: a dict from a fixture name to a function
``spec(factory) -> (info, job)``. ``factory`` is pytest's ``tmp_path_factory``; ``info`` is
anything the fixture needs besides the result (an output folder); ``job`` is a dict, one of

- ``dict(args=..., cwd=..., env=..., timeout=...)``: a subprocess; the result is its
  ``subprocess.CompletedProcess`` (text output captured), whatever its exit status;
- ``dict(notebook=..., cwd=..., out=...)``: a notebook executed top to bottom by nbclient
  (kernel working directory ``cwd``) with the notebooks' tiny settings
  (``SUPERALIGN_NOTEBOOK_TINY=1``, the repository on ``PYTHONPATH``; figures shown inline as in
  Jupyter), written to ``out``; the result as for ``args``;
- ``dict(call=...)``: a function (it starts and watches subprocesses itself) of the
  ``(info, result)`` of each of its ``after`` jobs, in order; the result is what it returns.

Each may also name jobs of the same module that must finish first: ``after=("name", ...)``;
a subprocess or notebook job may then also give ``prepare``, a function of the ``(info, result)``
of each of its ``after`` jobs, in order, called just before its process starts.
A job is identified by its ``spec`` function: modules that list the same function (imported from
``experiment_checks``) share one run of it.

The subprocesses of one session share one persistent JAX compilation cache (a session folder in
``JAX_COMPILATION_CACHE_DIR``, every program kept), so repeated runs of the same tiny config
reuse the programs the first compiled: same programs, same numbers. The test process reads the
same cache (so a test that checks a run's scores by calling the metric on its saved activations
loads the run's programs instead of compiling them again) and adds its own programs that took
over 0.1 s to compile. A program loaded from the cache still counts as a backend compilation
for the tests that count them (JAX reports one event either way).

A job is started only if a selected test uses the fixture of that name (directly or through other
fixtures), or a parametrised fixture as ``name[param]``. The fixture collects it with
``background.result(__name__, name, spec, tmp_path_factory)``, which raises whatever running it
raised (``background.completed`` also fails the test if the subprocess exited non-zero); a job
not started yet is run right there in the test's thread, so no test ever waits for more than its
own work. Which thread runs a job changes nothing in it: the same commands, environments and
working directories as in the test itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# POT (imported by tests and by the library's exact solver) would otherwise load its torch and
# tensorflow backends in every process, seconds each; the library and the tests pass it numpy
# arrays only. Set before any test module imports ot; subprocesses inherit it.
for _lib in ("PYTORCH", "TENSORFLOW", "JAX", "CUPY"):
    os.environ.setdefault(f"POT_BACKEND_DISABLE_{_lib}", "1")

# Executes a notebook with nbclient as the tests did in-process, and writes the executed notebook.
NOTEBOOK_RUNNER = """
import sys
import nbformat
from nbclient import NotebookClient

src, cwd, dst = sys.argv[1:]
nb = nbformat.read(src, as_version=4)
client = NotebookClient(
    nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": cwd}}
)
client.execute()
nbformat.write(nb, dst)
"""


class _Entry:
    def __init__(self, info, job: dict):
        self.info = info
        job = dict(job)
        self.after = job.pop("after", ())
        self.prepare = job.pop("prepare", None)
        if "notebook" in job:
            args = [sys.executable, "-c", NOTEBOOK_RUNNER]
            env = {
                **os.environ,
                "SUPERALIGN_NOTEBOOK_TINY": "1",
                "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            }
            job = dict(args=args + [str(job[k]) for k in ("notebook", "cwd", "out")], env=env)
        self.job = job
        self.claimed = False  # started, by the worker or by a test
        self.done = threading.Event()
        self.result = self.error = None


class Background:
    def __init__(self):
        self._entries: dict = {}  # spec -> _Entry
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen] = set()
        self._closing = False
        self._thread = threading.Thread(target=self._work, name="background-jobs", daemon=True)

    def add(self, module: str, name: str, spec, factory) -> None:
        if spec not in self._entries:
            entry = _Entry(*spec(factory))
            jobs = sys.modules[module].BACKGROUND
            for n in entry.after:  # the jobs it waits for come first in the queue
                self.add(module, n, jobs[n], factory)
            entry.after = [jobs[n] for n in entry.after]
            self._entries[spec] = entry

    def start(self) -> None:
        self._queue = list(self._entries.values())
        if self._queue:
            self._thread.start()

    def result(self, module: str, name: str, spec, factory):
        """``(info, result)`` of a job, run here if no one started it yet."""
        self.add(module, name, spec, factory)
        entry = self._entries[spec]
        if self._claim(entry):
            self._run(entry)
        entry.done.wait()
        if entry.error is not None:
            raise entry.error
        return entry.info, entry.result

    def completed(self, module: str, name: str, spec, factory):
        """:meth:`result` of a subprocess job that must have exited with status 0."""
        info, proc = self.result(module, name, spec, factory)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return info, proc

    def stdout(self, module: str, name: str, spec, factory):
        """``(info, printed output)`` of a :meth:`completed` subprocess job."""
        info, proc = self.completed(module, name, spec, factory)
        return info, proc.stdout

    def ready(self, item) -> bool:
        """Whether every background job that ``item`` waits for has finished."""
        jobs = item.module.BACKGROUND
        entries = [self._entries.get(jobs[name]) for name in _jobs(item)]
        return all(e is not None and e.done.is_set() for e in entries)

    def close(self) -> None:
        with self._lock:
            self._closing = True
            for proc in self._procs:
                proc.kill()
        if self._thread.is_alive():
            self._thread.join(timeout=60)

    def _claim(self, entry) -> bool:
        with self._lock:
            if entry.claimed or self._closing:
                return False
            entry.claimed = True
            return True

    def _work(self) -> None:
        for entry in self._queue:
            if self._claim(entry):
                self._run(entry)

    def _run(self, entry) -> None:
        try:
            firsts = [self._entries[key] for key in entry.after]
            for first in firsts:
                if self._claim(first):
                    self._run(first)
                first.done.wait()
            done = [(e.info, e.result) for e in firsts]
            if "call" in entry.job:
                entry.result = entry.job["call"](*done)
            else:
                if entry.prepare is not None:
                    entry.prepare(*done)
                entry.result = self._subprocess(**entry.job)
        except BaseException as err:  # handed to the test that asks for the result
            entry.error = err
        finally:
            entry.done.set()

    def _subprocess(self, args, cwd=None, env=None, timeout=None):
        with self._lock:
            if self._closing:
                raise RuntimeError("the test session is closing")
            proc = subprocess.Popen(
                args, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            self._procs.add(proc)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        finally:
            with self._lock:
                self._procs.discard(proc)
        return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


def _jobs(item) -> list[str]:
    """The background jobs a test waits for."""
    jobs = getattr(getattr(item, "module", None), "BACKGROUND", {})
    params = getattr(getattr(item, "callspec", None), "params", {})
    names = set(item.fixturenames) | {f"{k}[{v}]" for k, v in params.items()}
    return [name for name in jobs if name in names]


def pytest_collection_modifyitems(session, config, items):
    """Tests that wait for background jobs run last (in their order): the jobs have the whole
    session to finish. A module's waiting tests run earlier, between two other modules, once
    their jobs are done (:func:`pytest_runtestloop`)."""
    items[:] = [i for i in items if not _jobs(i)] + [i for i in items if _jobs(i)]


_SESSION: dict = {}  # "background": the session's Background once it started


def _waiting_groups(items) -> list[list]:
    """The waiting tests in their order, as runs of consecutive tests of one module."""
    groups: list[list] = []
    for item in items:
        if groups and groups[-1][0].module is item.module:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session):
    """pytest's loop over the tests, except where the tests that wait for background jobs run.

    At each boundary between two modules of the other tests, every module's group of waiting
    tests whose jobs are all done runs next, while the remaining jobs still run in the
    background; the groups not done by the last of the other tests follow it, in their order.
    So the waiting tests' own work overlaps the background jobs instead of following them.
    """
    if session.testsfailed and not session.config.option.continue_on_collection_errors:
        n = session.testsfailed
        raise session.Interrupted(f"{n} error{'s' if n != 1 else ''} during collection")
    if session.config.option.collectonly:
        return True
    order = [i for i in session.items if not _jobs(i)]
    waiting = _waiting_groups([i for i in session.items if _jobs(i)])
    if not order:  # only waiting tests were selected
        order, waiting = [t for g in waiting for t in g], []
    i = 0
    while i < len(order):
        item = order[i]
        following = order[i + 1] if i + 1 < len(order) else None
        bg = _SESSION.get("background")
        boundary = following is None or following.module is not item.module
        if waiting and bg is not None and boundary:
            done = [all(bg.ready(t) for t in g) for g in waiting]
            order[i + 1 : i + 1] = [t for g, d in zip(waiting, done, strict=True) if d for t in g]
            waiting = [g for g, d in zip(waiting, done, strict=True) if not d]
        if i + 1 == len(order):
            order.extend(t for g in waiting for t in g)
            waiting = []
        nextitem = order[i + 1] if i + 1 < len(order) else None
        item.config.hook.pytest_runtest_protocol(item=item, nextitem=nextitem)
        if session.shouldfail:
            raise session.Failed(session.shouldfail)
        if session.shouldstop:
            raise session.Interrupted(session.shouldstop)
        i += 1
    return True


@pytest.fixture(scope="session", autouse=True)
def background(request, tmp_path_factory):
    """The session's :class:`Background`, with the jobs of every selected test started."""
    cache = tmp_path_factory.getbasetemp() / "jax_cache"
    os.environ.update(
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    from superalign.io import enable_compilation_cache

    enable_compilation_cache(cache, min_compile_seconds=0.1)
    bg = Background()
    for item in request.session.items:
        for name in _jobs(item):
            bg.add(item.module.__name__, name, item.module.BACKGROUND[name], tmp_path_factory)
    bg.start()
    _SESSION["background"] = bg
    yield bg
    _SESSION.pop("background", None)
    bg.close()
