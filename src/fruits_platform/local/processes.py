"""Process trees of the local Airflow stack: which recorded processes still run, and how to end a tree
(SIGTERM to each group and stray descendant, SIGKILL after a grace period). Only psutil and os, no Airflow."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import psutil


def process_record(pid: int) -> dict:
    return {"pid": pid, "create_time": psutil.Process(pid).create_time()}


def recorded_process(record: dict) -> psutil.Process | None:
    """The process of a pid-file record if it still runs (a reused pid has another create_time)."""
    try:
        process = psutil.Process(record["pid"])
        if abs(process.create_time() - record["create_time"]) < 0.01 and not is_gone(process):
            return process
    except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError):
        pass
    return None


def is_gone(process: psutil.Process) -> bool:
    """Ended: reaped if it is our child; a zombie (ended, not reaped yet by its parent) counts as ended."""
    try:
        process.wait(timeout=0)
        return True
    except psutil.NoSuchProcess:
        return True
    except psutil.TimeoutExpired:
        pass
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Waits until the processes ended or ``timeout`` passed; returns those still running."""
    deadline = time.monotonic() + timeout
    alive = [p for p in processes if not is_gone(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if not is_gone(p)]
    return alive


def stop_processes(processes: list[psutil.Process], grace: float = 30) -> None:
    """One SIGTERM to each process tree, SIGKILL to what is left of them after ``grace`` seconds.

    A group leader gets it through its group (its workers and log servers are in it); the descendants
    outside those groups (task processes have groups of their own, and their spark-submit) directly.
    """
    tree: dict[int, psutil.Process] = {}
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            tree[process.pid] = process
            tree.update({child.pid: child for child in process.children(recursive=True)})
    groups = set()
    for process in processes:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(process.pid) == process.pid:
                os.killpg(process.pid, signal.SIGTERM)
                groups.add(process.pid)
    for process in tree.values():
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
            if os.getpgid(process.pid) not in groups:
                process.terminate()
    alive = wait_gone(list(tree.values()), grace)
    for process in list(alive):  # with what the survivors started meanwhile
        with contextlib.suppress(psutil.NoSuchProcess):
            alive.extend(process.children(recursive=True))
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    wait_gone(alive, 10)
