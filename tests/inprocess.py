"""Spark steps run inside the test process, on the test session's one SparkSession.

A spark-submit pays a JVM, a SparkSession and fresh Python workers (each importing pandas, pyarrow and the
engine) before the first row: ~15 s a step on this 2-core machine, which made most of the suite's time.
The steps' ``main(argv)`` take ``SparkSession.builder.getOrCreate()``, so here they run on the ``spark``
fixture's session instead, through ``fruits_spark.local_app`` (what ``fruits run-local`` submits), with
the very arguments the runner and the EMR DAG build. What spark-submit itself adds (the staged zip, the
entry scripts, the exit code) keeps its own end-to-end tests: ``tests/test_run_local.py``'s CLI runs and
``test_success_runs_three_steps_and_terminates``.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence

from fruits_platform.pipeline import PipelineParams, pipeline_steps
from fruits_spark import local_app


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


def run_steps(plan: Sequence[tuple[str, Sequence[str]]], sink) -> int:
    """``local_app``'s exit code for ``[(step, args), ...]``; the steps' output (and a failure's one-line
    reason or traceback) is written to ``sink``."""
    with printed_to(sink):
        return local_app.main([json.dumps([[name, list(args)] for name, args in plan])])


def run_pipeline(params: PipelineParams | Mapping) -> tuple[int, str]:
    """Every step of a run, as ``fruits run-local`` would submit them: (exit code, what they printed)."""
    output = io.StringIO()
    code = run_steps([(step.name, step.args) for step in pipeline_steps(params)], output)
    return code, output.getvalue()
