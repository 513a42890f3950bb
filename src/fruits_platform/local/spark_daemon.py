"""The local Spark daemon: one long-lived local Spark application that local runs hand their steps to.

A ``spark-submit`` pays, on every run, what does not depend on the photos: a JVM and a session, the first
jobs' class loading and code generation, the Python workers' start. On 600 thumbnails that is about half of
the run (docs/BENCHMARKS.md). The daemon pays it once: ``fruits run-local`` and the local DAG's
``spark_steps`` (``runner.run_steps``) connect to its Unix socket in the machine cache, start it (detached)
where none answers, and send the plan ``spark-submit`` would have run (``fruits_spark.local_app``), whose
printed lines come back as they are printed.

- One run at a time, each in a new SparkSession of the daemon's SparkContext: a run's SQL settings are its
  own. A client that finds it busy waits its turn.
- It serves only the code it started with: a caller whose steps' content hash differs (an upgrade, an edit)
  is told ``stale``, the daemon exits and the caller starts a new one.
- It exits after ``IDLE_SECONDS`` without a request, or on ``fruits daemon stop``. Its Spark log is
  ``daemon.log`` beside the socket (the previous daemon's: ``daemon.log.1``).
- A client that goes away (Ctrl-C) cancels its run's Spark jobs.

Only this user can connect: the socket's folder is private (0700).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gc
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

from fruits_spark.contract import machine_cache

# 15 minutes: a day's runs, a backfill, a demo then a UI run share one; an idle laptop gets its ~1.8 GB back
IDLE_SECONDS = 15 * 60
# a JVM, a session and the first imports: ~5 s here, far less than this on any machine that can run Spark
START_SECONDS = 120
EXIT = "=== fruits daemon exit"
STALE = "stale"


class DaemonUnavailable(RuntimeError):
    """No daemon could take the run (it would not start, or died): the caller runs its own spark-submit."""


def daemon_dir() -> Path:
    folder = machine_cache("daemon")
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    return folder


def socket_path() -> Path:
    return daemon_dir() / "spark.sock"


def log_path() -> Path:
    return daemon_dir() / "daemon.log"


def _connect(timeout: float | None = None) -> socket.socket | None:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(str(socket_path()))
    except OSError:
        client.close()
        return None
    client.settimeout(timeout)
    return client


def _request(message: dict, timeout: float | None = None) -> Iterator[str]:
    """The daemon's reply lines to one request (its exit line included); nothing when none answers."""
    client = _connect(timeout)
    if client is None:
        return
    with client, client.makefile("r", encoding="utf-8", errors="replace") as replies:
        client.sendall((json.dumps(message) + "\n").encode())
        yield from replies


def _start() -> None:
    """A new daemon, detached from this process (its own session: it outlives an Airflow task); returns
    once it answers. DaemonUnavailable, with its log's last lines, if it exits or stays silent instead."""
    from fruits_platform.local.runner import spark_env

    socket_path().unlink(missing_ok=True)
    # one log per daemon, and the one before it (what a crashed daemon said stays until the next start)
    if log_path().exists():
        os.replace(log_path(), log_path().with_suffix(".log.1"))
    with log_path().open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "fruits_platform.local.spark_daemon"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=spark_env(),
            start_new_session=True,
        )
    # reaped whenever it exits, so that a long-lived caller (a test session) keeps no zombie
    threading.Thread(target=process.wait, daemon=True).start()
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        if running():
            return
        time.sleep(0.1)
    if process.poll() is None:
        process.kill()
    tail = log_path().read_text(errors="replace").splitlines()[-5:]
    raise DaemonUnavailable(f"the local Spark daemon did not start ({' | '.join(tail)}; log: {log_path()})")


@contextlib.contextmanager
def _start_lock() -> Iterator[None]:
    # two runs that find no daemon start one, not two
    with (daemon_dir() / "start.lock").open("w") as lock:  # released with the file
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _wait_gone(seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while socket_path().exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def submit(
    plan: list,
    code: str,
    env: dict[str, str],
    on_line: Callable[[str], None],
    on_start: Callable[[], None] = lambda: None,
) -> int:
    """Runs ``plan`` (local_app's ``[[step, args], ...]``) on the daemon serving ``code``, in ``env``,
    starting one where needed (``on_start`` is called first); each printed line goes to ``on_line``;
    returns the plan's exit status (0: every step done). DaemonUnavailable when no daemon can run it."""
    for _ in range(2):
        with _start_lock():
            if not running():
                on_start()
                _start()
        for line in _request({"code": code, "plan": plan, "env": env}):
            if not line.startswith(EXIT):
                on_line(line)
            elif line.split()[-1] == STALE:
                # another version of the steps: it exits, the next round starts ours
                _wait_gone()
                break
            else:
                return int(line.split()[-1])
        else:
            raise DaemonUnavailable(f"the local Spark daemon stopped during the run (log: {log_path()})")
    raise DaemonUnavailable("the local Spark daemon kept serving other code")


def running() -> bool:
    """Whether a daemon answers (a busy one too: the kernel queues the connection)."""
    client = _connect()
    if client is not None:
        client.close()
    return client is not None


def status() -> dict | None:
    """The daemon's pid, code, runs and start; ``{"busy": True}`` when a run keeps it from answering."""
    try:
        for line in _request({"status": True}, timeout=10):
            if not line.startswith(EXIT):
                return json.loads(line)
    except TimeoutError:
        return {"busy": True}
    return None


def stop() -> bool:
    """Asks the daemon to exit once its current run ends; False when none was running."""
    answered = any(line.startswith(EXIT) for line in _request({"stop": True}))
    _wait_gone()
    return answered


class _Lines(io.TextIOBase):
    """A run's stdout and stderr, sent to its client; once the client is gone, its Spark jobs are cancelled
    and later lines dropped."""

    def __init__(self, client: socket.socket, spark) -> None:
        self.client, self.spark, self.gone = client, spark, False
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            if not self.gone:
                try:
                    self.client.sendall(text.encode())
                except OSError:
                    self.gone = True
                    self.spark.sparkContext.cancelAllJobs()
        return len(text)


def _session():
    from pyspark.sql import SparkSession

    from fruits_platform.local.runner import LOCAL_MASTER, LOCAL_SPARK_CONF, driver_java_conf

    builder = SparkSession.builder.master(LOCAL_MASTER).appName("fruits-local-daemon")
    for key, value in {**LOCAL_SPARK_CONF, **driver_java_conf()}.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def _own_code(spark, scratch: Path) -> str:
    """The content hash of the steps this daemon runs; its workers get the same code as a zip (built in
    ``scratch``), so that an edit of the sources after its start cannot reach them."""
    from fruits_platform.artifacts import build_artifacts, content_hash
    from fruits_platform.pipeline import PY_FILES_ZIP

    built = build_artifacts(scratch)
    spark.sparkContext.addPyFile(str(built / PY_FILES_ZIP))
    return content_hash(built)


def _run_plan(spark, plan: list, client: socket.socket) -> int:
    """``plan`` in a new SparkSession, which the steps' ``SparkSession.builder.getOrCreate()`` returns."""
    from pyspark.sql import SparkSession

    from fruits_spark import local_app

    session = spark.newSession()
    SparkSession._instantiatedSession = SparkSession._activeSession = session
    session._jvm.SparkSession.setDefaultSession(session._jsparkSession)
    session._jvm.SparkSession.setActiveSession(session._jsparkSession)
    lines = _Lines(client, spark)
    try:
        with contextlib.redirect_stdout(lines), contextlib.redirect_stderr(lines):
            return local_app.main([json.dumps(plan)])
    finally:
        session.catalog.clearCache()
        # the run's broadcasts and shuffle files go with its garbage (Spark's ContextCleaner)
        gc.collect()
        session._jvm.System.gc()


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    """The caller's environment on the driver for its run (a proxy for the ImageNet download, FRUITS_*)."""
    own = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(own)


def _serve_one(spark, state: dict, client: socket.socket) -> bool:
    """Answers one request; False when the daemon must exit after it. ``state``: pid, code, runs, started."""
    line = client.makefile("r").readline()
    if not line:
        # a caller that only checked that a daemon answers
        return True
    request = json.loads(line)
    if request.get("status"):
        shown = {**state, "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(state["started"]))}
        client.sendall(f"{json.dumps(shown)}\n{EXIT} 0\n".encode())
        return True
    if request.get("stop"):
        client.sendall(f"{EXIT} 0\n".encode())
        return False
    if request.get("code") != state["code"]:
        client.sendall(f"{EXIT} {STALE}\n".encode())
        return False
    state["runs"] += 1
    with _environment(request["env"]):
        status = _run_plan(spark, request["plan"], client)
    with contextlib.suppress(OSError):
        client.sendall(f"{EXIT} {status}\n".encode())
    return True


def serve(idle_seconds: float = IDLE_SECONDS) -> None:
    """The daemon itself (``python -m fruits_platform.local.spark_daemon``): a session, then requests one
    at a time until idle, stopped or stale."""
    started = time.time()
    spark = _session()
    path = socket_path()
    with (
        tempfile.TemporaryDirectory(prefix="artifacts-", dir=daemon_dir()) as scratch,
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server,
    ):
        code = _own_code(spark, Path(scratch))
        server.bind(str(path))
        bound = path.stat().st_ino
        server.listen(16)
        server.settimeout(idle_seconds)
        state = {"pid": os.getpid(), "code": code, "runs": 0, "started": started}
        serving = True
        try:
            while serving:
                try:
                    client, _ = server.accept()
                except TimeoutError:
                    break
                with client:
                    client.settimeout(None)
                    try:
                        serving = _serve_one(spark, state, client)
                    except Exception:
                        # one bad request (a client gone mid-sentence) is not the daemon's end
                        traceback.print_exc()
        finally:
            # only our own socket: a daemon that replaced this one owns the path now
            with contextlib.suppress(OSError):
                if path.stat().st_ino == bound:
                    path.unlink()
    spark.stop()


def _daemon_command(args: argparse.Namespace) -> int:
    if args.action == "status":
        state = status()
        print(json.dumps(state) if state else "no local Spark daemon is running")
    else:
        print("stopped" if stop() else "no local Spark daemon was running")
    return 0


def register(commands) -> None:
    parser = commands.add_parser("daemon", help="the local Spark daemon that local runs share (status, stop)")
    parser.add_argument("action", choices=["status", "stop"])
    parser.set_defaults(handler=_daemon_command)


if __name__ == "__main__":
    serve()
