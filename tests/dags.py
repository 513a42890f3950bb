"""The one DagBag loader of the tests: a DAG as the dag-processor parses it, from its own file."""

from __future__ import annotations

from pathlib import Path

DAGS_FOLDER = Path(__file__).resolve().parents[1] / "dags"
DAG_FILES = sorted(DAGS_FOLDER.glob("*.py"))
# for a test's local Airflow stack: the DAG files parsed when it starts, not again every 30 s as for someone
# editing them (the idle dag-processor's 3.9 CPU-s a minute went to 0.8)
PARSE_ONCE = {"AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "3600"}


def load_bag(path: Path):
    """The DagBag of one DAG file; fails with the import error where it has one."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(path))
    assert not bag.import_errors, bag.import_errors
    return bag


def load_dag(dag_id: str):
    """The DAG ``dag_id``, parsed from ``dags/<dag_id>.py``."""
    return load_bag(DAGS_FOLDER / f"{dag_id}.py").dags[dag_id]
