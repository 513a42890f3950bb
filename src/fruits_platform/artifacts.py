"""Builds what a Spark step needs to run anywhere: entry scripts, the fruits_spark zip, the bootstrap.

One copy of the Spark code: the zip is the ``fruits_spark`` package this process imports (its
``__file__``), the one that also builds the steps' command lines, so Airflow and the jobs always share one
contract. The entry scripts are generated from the step records (``contract.STEPS``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from pathlib import Path

import fruits_spark
from fruits_platform.pipeline import LOCAL_APP, PY_FILES_ZIP
from fruits_spark.contract import STEPS

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# a fixed timestamp keeps the zip, hence the artifacts' content hash, identical across builds
_ZIP_DATE = (2020, 1, 1, 0, 0, 0)

STEP_SCRIPT = '''"""spark-submit entry point of the {name} step (generated from its record): the code is
{module}, shipped with --py-files."""

from {module} import main

if __name__ == "__main__":
    main()
'''
LOCAL_APP_SCRIPT = '''"""spark-submit entry point of local runs: several steps in one Spark application
(fruits_spark.local_app)."""

import sys

from fruits_spark.local_app import main

if __name__ == "__main__":
    sys.exit(main())
'''


def package_dir() -> Path:
    """The installed fruits_spark (in the image: site-packages; in a checkout: spark_jobs/fruits_spark)."""
    return Path(fruits_spark.__file__).resolve().parent


def bootstrap_dir() -> Path:
    """The EMR bootstrap files: ``$FRUITS_BOOTSTRAP_DIR`` (compose mounts bootstrap/ there), else the
    checkout's bootstrap/ next to an editable install. A plain ``pip install`` carries no bootstrap files:
    staging then refuses with the missing names (``staging.stage_artifacts``)."""
    return Path(os.environ.get("FRUITS_BOOTSTRAP_DIR", PROJECT_ROOT / "bootstrap"))


def build_zip(package: Path, destination: Path) -> Path:
    with zipfile.ZipFile(destination, "w", zipfile.ZIP_DEFLATED) as archive:
        for source in sorted(package.rglob("*.py")):
            info = zipfile.ZipInfo(str(source.relative_to(package.parent)), _ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, source.read_bytes())
    return destination


def build_artifacts(destination: Path) -> Path:
    """Entry scripts + ``fruits_spark.zip`` (+ bootstrap files when present) in ``destination``."""
    destination.mkdir(parents=True, exist_ok=True)
    # one entry script per step record, and local_app.py, which runs several steps in one application
    for step in STEPS:
        (destination / f"{step.name}.py").write_text(STEP_SCRIPT.format(name=step.name, module=step.module))
    (destination / LOCAL_APP).write_text(LOCAL_APP_SCRIPT)
    build_zip(package_dir(), destination / PY_FILES_ZIP)
    if bootstrap_dir().is_dir():
        for source in sorted(bootstrap_dir().iterdir()):
            if source.is_file():
                shutil.copyfile(source, destination / source.name)
    return destination


def content_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
