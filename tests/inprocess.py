"""Spark steps run inside the test process, on the test session's one SparkSession.

A spark-submit pays a JVM, a SparkSession and fresh Python workers (each importing pandas, pyarrow and the
engine) before the first row: ~15 s a step on this 2-core machine, which made most of the suite's time.
The steps' ``main(argv)`` take ``SparkSession.builder.getOrCreate()``, so here they run on the ``spark``
fixture's session instead: a run's plan (``pipeline.plan``) through ``fruits_spark.local_app``, what
``fruits run-local`` submits; an EMR step's entry script as spark-submit would run it (``run_script``); the
local DAG's task, its runner's executor swapped for this session (``in_process_executor``).
What spark-submit itself adds keeps its own tests: the exit code and the class archive in
``tests/test_run_local.py``'s CLI runs; the staged zip, file for file the installed package, and every
EMR step's command line parsed by its job in ``tests/test_records.py``.
"""

from __future__ import annotations

import contextlib
import io
import json
import runpy
import sys
import threading
import traceback
from collections.abc import Iterator, Mapping, Sequence

from fruits_platform.pipeline import PipelineParams, SparkStep, plan
from fruits_spark import local_app
from fruits_spark.contract import QUALITY

# The quality step's checks (near-duplicates, suspicious labels, drift) take 5-15 s of a small in-process run,
# more with history: a test that is not about them turns them off with the step's own params (0: off), as a
# user can. The step itself still runs (and publishes its empty datasets). tests/test_quality.py,
# test_catalog.py and the UI and default-path runs keep them on.
QUALITY_OFF = {param.name: 0 for param in QUALITY.params}
# the same, as `fruits run-local` options
QUALITY_OFF_ARGS = tuple(arg for param in QUALITY.params for arg in (param.flag, "0"))


class _ThreadStdout:
    """``sys.stdout`` that sends what one thread prints to that thread's sink, and the rest on."""

    def __init__(self, default) -> None:
        self.default = default
        self.sinks: dict[int, io.TextIOBase] = {}

    def _target(self):
        return self.sinks.get(threading.get_ident(), self.default)

    def write(self, text: str) -> int:
        return self._target().write(text)

    def flush(self) -> None:
        self._target().flush()

    def __getattr__(self, name: str):
        return getattr(self.default, name)


_SWAP = threading.Lock()


@contextlib.contextmanager
def printed_to(sink) -> Iterator[None]:
    """What the calling thread prints goes to ``sink``; other threads (dag.test's tasks) print as before."""
    with _SWAP:
        previous = sys.stdout
        router = previous if isinstance(previous, _ThreadStdout) else _ThreadStdout(previous)
        router.sinks[threading.get_ident()] = sink
        sys.stdout = router
    try:
        yield
    finally:
        with _SWAP:
            router.sinks.pop(threading.get_ident(), None)
            if sys.stdout is router and not router.sinks:
                sys.stdout = router.default


def run_steps(steps: Sequence[SparkStep], sink) -> int:
    """``local_app``'s exit code for entries of a run's plan, run in order; the steps' output (and a
    failure's one-line reason or traceback) is written to ``sink``."""
    with printed_to(sink):
        return local_app.main([json.dumps([[step.name, list(step.args)] for step in steps])])


def in_process_executor(steps: Sequence[SparkStep], artifacts, master, conf, lines) -> int:
    """``fruits_platform.local.runner.spark_submit``'s stand-in: the same entries of the plan, on this
    process's session (``master`` and ``conf`` are the test session's); what they printed then goes to the
    runner's ``lines``, line by line (after the run: the runner echoes with print, which here would come
    back to the steps' sink); ``local_app``'s exit code."""
    output = io.StringIO()
    code = run_steps(steps, output)
    for line in output.getvalue().splitlines(keepends=True):
        lines(line)
    return code


def run_pipeline(params: PipelineParams | Mapping) -> tuple[int, str]:
    """A run's whole plan, as ``fruits run-local`` submits it: (exit code, what it printed)."""
    output = io.StringIO()
    code = run_steps(plan(params), output)
    return code, output.getvalue()


def run_script(script: str, args: Sequence[str], sink) -> int:
    """What ``spark-submit script args...`` runs, on this process's session: the entry script itself as
    ``__main__``, with ``sys.argv`` as spark-submit gives it; its exit status as a process's."""
    argv = sys.argv
    with printed_to(sink):
        sys.argv = [script, *args]
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as stop:
            if stop.code not in (None, 0):
                print(stop.code if isinstance(stop.code, str) else f"exit {stop.code}", flush=True)
                return stop.code if isinstance(stop.code, int) else 1
        except Exception:
            traceback.print_exc(file=sys.stdout)
            return 1
        finally:
            sys.argv = argv
    return 0
