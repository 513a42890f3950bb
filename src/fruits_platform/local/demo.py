"""``make demo``: a real Airflow run of ``fruits_features_local`` on the bundled sample.

The metadata DB lives in a project-local AIRFLOW_HOME (``.airflow/``), so nothing outside the checkout is
touched.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

from fruits_platform.artifacts import PROJECT_ROOT
from fruits_platform.local.airflow_server import airflow_env
from fruits_platform.pipeline import default_weights
from fruits_spark.contract import DATASETS
from fruits_spark.layout import REPORT_HTML, REPORT_JSON, Layout
from fruits_spark.report import describe_counts

DAG_ID = "fruits_features_local"
# the errors a local run explains itself with, as a task log prints them (module path and class first)
REASON = re.compile(r"(?:[\w.]+\.)?(?:StepFailed|BadRun|LeaseHeld): (.*)")


def airflow(*args: str, env: dict[str, str], log: Path | None = None) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "airflow"), *args]
    if log is None:
        return subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    with log.open("w") as handle:
        return subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT, check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input", default=str(PROJECT_ROOT / "data" / "sample"))
    parser.add_argument("--output", default=str(PROJECT_ROOT / "out" / "demo"))
    parser.add_argument("--airflow-home", default=str(PROJECT_ROOT / ".airflow"))
    args = parser.parse_args(argv)
    home, output = Path(args.airflow_home).resolve(), Path(args.output).resolve()
    home.mkdir(parents=True, exist_ok=True)
    env = airflow_env(home)

    print(f"Airflow home: {home} (SQLite metadata DB)")
    migrated = airflow("db", "migrate", env=env)
    if migrated.returncode != 0:
        print(migrated.stdout[-2000:] + migrated.stderr[-2000:], file=sys.stderr)
        return 1
    conf = {"input": str(Path(args.input).resolve()), "output": str(output), "weights": default_weights()}
    log = home / "demo-dags-test.log"
    print(f"airflow dags test {DAG_ID} on {conf['input']} (weights: {conf['weights']}) ...")
    airflow("dags", "test", DAG_ID, "--conf", json.dumps(conf), env=env, log=log)
    text = log.read_text()
    finished = re.findall(r"DagRun Finished: .*?state=(\w+)", text)
    if finished[-1:] != ["success"]:
        print(f"task logs: {log}", file=sys.stderr)
        # the last line says why, in the run's own words: a refused param, a failed step, a day being written
        reasons = REASON.findall(text)
        print(
            f"the run did not succeed ({finished[-1] if finished else 'no final state'}): "
            + (reasons[-1].strip() if reasons else "see the task logs"),
            file=sys.stderr,
        )
        return 1
    report = json.loads((output / REPORT_JSON).read_text())  # the latest run's: this one
    layout = Layout(str(output), report["dt"])
    print(f"run succeeded: {describe_counts(report)}")
    print(f"outputs:   {output}/{{{','.join(DATASETS)}}}/dt={report['dt']}/")
    print(f"report:    {layout.report(REPORT_HTML)} (and report.json, report_*.png)")
    print(f"task logs: {log} (Airflow), {layout.logs()}/pipeline.log (the steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
