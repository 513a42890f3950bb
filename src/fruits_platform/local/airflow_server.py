"""A local Airflow 3 on loopback, started by one command (`make airflow`):
``python -m fruits_platform.local.airflow_server start``.

Four components (api-server, scheduler, dag-processor, triggerer), each in its own process group, with
the LocalExecutor on a SQLite metadata DB in ``--home`` (default ``<repo>/.airflow``). Airflow 3 has no
SequentialExecutor any more: LocalExecutor is its default and works on SQLite (``airflow standalone``
runs the same pair); SQLite is single-writer, so parallelism stays low (2 by default).

Login: SimpleAuthManager, user ``admin`` with the password ``admin`` (written to
``<home>/simple_auth_manager_passwords.json``): for this machine only, the server listens on 127.0.0.1.

``start`` runs in the foreground until Ctrl-C (or SIGTERM/SIGHUP); ``stop --home H`` stops a stack started
with that home from another shell, through the pid file ``<home>/local_airflow.pid``. Both end every
process of the stack: component groups and all their descendants (tasks run in groups of their own).
The component logs are in ``<home>/logs/local_airflow/<component>.log``.

The scheduler's and triggerer's log servers (ports 8793 and 8794) listen on all interfaces: Airflow 3.3 has
no setting for their address; they serve only requests signed with the stack's secret key.

This module imports no Airflow code: it only drives the ``airflow`` command beside this Python.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

from fruits_platform.artifacts import PROJECT_ROOT
from fruits_platform.local.processes import (
    is_gone,
    process_record,
    recorded_process,
    stop_processes,
    wait_gone,
)

BIN_DIR = Path(sys.executable).parent  # the venv's bin/: the airflow command, spark-submit
DEFAULT_HOME = PROJECT_ROOT / ".airflow"
HOST = "127.0.0.1"
USERNAME, ROLE, PASSWORD = "admin", "admin", "admin"
PID_FILE = "local_airflow.pid"
PASSWORDS_FILE = "simple_auth_manager_passwords.json"
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
# what /api/v2/monitor/health reports for a healthy stack
HEALTH_KEYS = ("metadatabase", "scheduler", "triggerer", "dag_processor")


class StackError(RuntimeError):
    pass


def airflow_env(home: Path) -> dict[str, str]:
    """The environment every project-local Airflow command runs with."""
    return dict(
        os.environ,
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(PROJECT_ROOT / "dags"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(PROJECT_ROOT / "plugins"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )


@dataclass(frozen=True)
class LocalAirflow:
    home: Path = DEFAULT_HOME
    port: int = 8080
    parallelism: int = 2
    worker_log_port: int = 8793
    trigger_log_port: int = 8794

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.home / PID_FILE

    @property
    def log_dir(self) -> Path:
        return self.home / "logs" / "local_airflow"

    def airflow_command(self, *args: str) -> list[str]:
        return [str(BIN_DIR / "airflow"), *args]

    def env(self) -> dict[str, str]:
        """This process's environment with what the local stack needs on top.

        Other inherited ``AIRFLOW__*`` settings pass through; FRUITS_WEIGHTS too (the DAG's default).
        """
        env = airflow_env(self.home)
        env.update(
            AIRFLOW__CORE__UNIT_TEST_MODE="False",
            AIRFLOW__CORE__EXECUTOR="LocalExecutor",
            AIRFLOW__CORE__PARALLELISM=str(self.parallelism),
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{self.home / 'airflow.db'}",
            AIRFLOW__API__HOST=HOST,
            AIRFLOW__API__PORT=str(self.port),
            AIRFLOW__API__BASE_URL=self.url,
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{self.url}/execution/",
            AIRFLOW__CORE__AUTH_MANAGER=(
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=f"{USERNAME}:{ROLE}",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="False",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(self.home / PASSWORDS_FILE),
            AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(self.worker_log_port),
            AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=str(self.trigger_log_port),
            # a new file in dags/ shows up within 30 s instead of 5 min
            AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="30",
        )
        return env

    def prepare(self, env: dict[str, str]) -> None:
        """Home, known password, migrated DB; refuses a busy port or a stack already running there."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if running_pids(self.home):
            raise StackError(
                f"a local Airflow already runs with home {self.home}: stop it first (stop --home)"
            )
        for port in (self.port, self.worker_log_port, self.trigger_log_port):
            if port_in_use(port):
                raise StackError(f"port {port} on {HOST} is in use: choose another (--port / --*-log-port)")
        print(f"local Airflow: home {self.home}, DB migrate (logs in {self.log_dir}) ...", flush=True)
        passwords = self.home / PASSWORDS_FILE
        passwords.write_text(json.dumps({USERNAME: PASSWORD}) + "\n")
        passwords.chmod(0o600)
        migrate_log = self.log_dir / "db-migrate.log"
        with migrate_log.open("w") as log:
            done = subprocess.run(self.airflow_command("db", "migrate"), env=env, stdout=log, stderr=log)
        if done.returncode:
            raise StackError(f"airflow db migrate failed (exit {done.returncode}):\n{tail(migrate_log)}")

    def launch(
        self,
        env: dict[str, str],
        processes: dict[str, subprocess.Popen],
        component_env: Mapping[str, Mapping[str, str]] | None = None,
        supervised: bool = True,
    ) -> None:
        """Starts the components into ``processes`` (filled as they start) and writes the pid file.
        ``component_env`` adds to one component's environment (by its name); ``supervised`` records this
        process as the stack's supervisor, which ``stop --home`` stops too (not so for a test that starts a
        stack from its own process)."""
        for name in COMPONENTS:
            args = (
                ("api-server", "--host", HOST, "--port", str(self.port)) if name == "api-server" else (name,)
            )
            with (self.log_dir / f"{name}.log").open("ab") as log:
                processes[name] = subprocess.Popen(
                    self.airflow_command(*args),
                    env={**env, **(component_env or {}).get(name, {})},
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: Ctrl-C reaches the supervisor only
                )
        self.pid_file.write_text(
            json.dumps(
                {
                    **({"supervisor": process_record(os.getpid())} if supervised else {}),
                    "components": {name: process_record(p.pid) for name, p in processes.items()},
                    "url": self.url,
                },
                indent=2,
            )
        )


def read_pid_file(home: Path) -> dict:
    try:
        return json.loads((home / PID_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def running_pids(home: Path) -> list[int]:
    recorded = read_pid_file(home)
    records = [recorded.get("supervisor", {}), *recorded.get("components", {}).values()]
    return [process.pid for record in records if record and (process := recorded_process(record))]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports on the stack's address (held together while chosen)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex((HOST, port)) == 0


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} absent)"


def health(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=10) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def is_healthy(report: dict | None) -> bool:
    return bool(report) and all((report.get(key) or {}).get("status") == "healthy" for key in HEALTH_KEYS)


def wait_healthy(url: str, timeout: float, alive=lambda: True) -> dict:
    """Polls the health endpoint until every component is healthy; ``alive()`` False ends the wait early."""
    deadline = time.monotonic() + timeout
    report = None
    while time.monotonic() < deadline:
        report = health(url)
        if is_healthy(report):
            return report
        if not alive():
            raise StackError(f"the stack stopped while starting; last health: {report}")
        time.sleep(2)
    raise StackError(f"{url} not healthy after {timeout:.0f} s; last health: {report}")


def start(stack: LocalAirflow, ready_timeout: float = 600) -> int:
    """Runs the stack in the foreground until Ctrl-C / SIGTERM / SIGHUP, or until a component dies."""
    env = stack.env()
    stack.prepare(env)

    def stop_signal(signum, _frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop_signal)
    signal.signal(signal.SIGHUP, stop_signal)
    processes: dict[str, subprocess.Popen] = {}
    status = 0
    try:
        stack.launch(env, processes)
        wait_healthy(
            stack.url, ready_timeout, alive=lambda: all(p.poll() is None for p in processes.values())
        )
        print(
            f"local Airflow is up: {stack.url}  (login {USERNAME} / {PASSWORD}; FRUITS_WEIGHTS="
            f"{env.get('FRUITS_WEIGHTS', '(unset: imagenet)')})\n"
            f"component logs: {stack.log_dir}/<component>.log; Ctrl-C or `make airflow-stop` stops it",
            flush=True,
        )
        while True:
            dead = {name: p.returncode for name, p in processes.items() if p.poll() is not None}
            if dead:
                name, code = next(iter(dead.items()))
                raise StackError(f"{name} exited ({code}):\n{tail(stack.log_dir / f'{name}.log')}")
            time.sleep(2)
    except KeyboardInterrupt:
        print("local Airflow: stopping ...", flush=True)
    except StackError as error:
        print(f"local Airflow: {error}", file=sys.stderr, flush=True)
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not cut the clean-up short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_processes([psutil.Process(p.pid) for p in processes.values() if p.poll() is None])
        stack.pid_file.unlink(missing_ok=True)
        print("local Airflow: stopped", flush=True)
    return status


def stop(home: Path, timeout: float = 90) -> int:
    """Stops the stack of ``home``: asks its supervisor, then ends whatever of it still runs."""
    recorded = read_pid_file(home)
    if not recorded:
        print(f"no local Airflow recorded in {home / PID_FILE}")
        return 0
    supervisor = recorded_process(recorded.get("supervisor", {}))
    if supervisor:
        supervisor.send_signal(signal.SIGTERM)
        wait_gone([supervisor], timeout)
    leftovers = [p for r in recorded.get("components", {}).values() if (p := recorded_process(r))]
    if supervisor and not is_gone(supervisor):
        leftovers.append(supervisor)
    if leftovers:
        stop_processes(leftovers)
    (home / PID_FILE).unlink(missing_ok=True)
    print(f"local Airflow of {home} stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fruits_platform.local.airflow_server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start_parser = commands.add_parser("start", help="start the stack in the foreground (Ctrl-C stops it)")
    stop_parser = commands.add_parser("stop", help="stop the stack started with this home")
    for sub in (start_parser, stop_parser):
        sub.add_argument(
            "--home",
            type=Path,
            default=Path(os.environ.get("FRUITS_AIRFLOW_HOME", DEFAULT_HOME)),
            help="AIRFLOW_HOME of the stack (default $FRUITS_AIRFLOW_HOME or <repo>/.airflow)",
        )
    start_parser.add_argument("--port", type=int, default=8080, help="API server / UI port (default 8080)")
    start_parser.add_argument("--parallelism", type=int, default=2, help="task slots (default 2)")
    start_parser.add_argument("--worker-log-port", type=int, default=8793)
    start_parser.add_argument("--trigger-log-port", type=int, default=8794)
    start_parser.add_argument("--ready-timeout", type=float, default=600, help="seconds to become healthy")
    args = parser.parse_args(argv)
    home = args.home.resolve()
    if args.command == "stop":
        return stop(home)
    stack = LocalAirflow(home, args.port, args.parallelism, args.worker_log_port, args.trigger_log_port)
    try:
        return start(stack, args.ready_timeout)
    except StackError as error:
        print(f"local Airflow: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
