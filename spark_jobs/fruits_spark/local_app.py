"""Several steps in one Spark application: how local runs submit the pipeline.

Each step is the same ``main(argv)`` that EMR submits as its own step, with the same arguments; here they
share one JVM and one SparkSession, which saves a JVM start-up, a session and the Python workers' imports
per step. Markers on stdout tell the runner which step is running, how long it took, and which one failed.
"""

from __future__ import annotations

import json
import sys
import time
import traceback

from fruits_spark import contract

STEP_MARKER = "=== fruits step"


def step_main(name: str):
    # imported on demand: a step's modules load only when it runs
    return contract.step_record(name).load().main


def main(argv: list[str] | None = None) -> int:
    """``argv[0]``: a JSON list of ``[step, [args...]]``, run in order; stops at the first failure."""
    plan = json.loads((argv if argv is not None else sys.argv[1:])[0])
    for name, args in plan:
        print(f"{STEP_MARKER} {name} started", flush=True)
        started = time.monotonic()
        try:
            step_main(name)(list(args))
        except SystemExit as stop:
            if stop.code not in (None, 0):
                # the step's own one-line reason (``features: cannot load weights ...``)
                print(stop.code if isinstance(stop.code, str) else f"{name}: exit {stop.code}", flush=True)
                print(f"{STEP_MARKER} {name} failed", flush=True)
                return 1
        except Exception:
            traceback.print_exc(file=sys.stdout)
            print(f"{STEP_MARKER} {name} failed", flush=True)
            return 1
        print(f"{STEP_MARKER} {name} done {time.monotonic() - started:.2f}", flush=True)
    return 0
