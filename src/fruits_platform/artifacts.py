"""Builds what a Spark step needs to run anywhere: entry scripts, the fruits_spark zip, the bootstrap."""

from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from pathlib import Path

from fruits_platform.pipeline import PY_FILES_ZIP

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# a fixed timestamp keeps the zip, hence the artifacts' content hash, identical across builds
_ZIP_DATE = (2020, 1, 1, 0, 0, 0)


def spark_jobs_dir() -> Path:
    return Path(os.environ.get("FRUITS_SPARK_JOBS_DIR", PROJECT_ROOT / "spark_jobs"))


def bootstrap_dir() -> Path:
    return Path(os.environ.get("FRUITS_BOOTSTRAP_DIR", PROJECT_ROOT / "bootstrap"))


def build_zip(package_dir: Path, destination: Path) -> Path:
    with zipfile.ZipFile(destination, "w", zipfile.ZIP_DEFLATED) as archive:
        for source in sorted(package_dir.rglob("*.py")):
            info = zipfile.ZipInfo(str(source.relative_to(package_dir.parent)), _ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, source.read_bytes())
    return destination


def build_artifacts(destination: Path) -> Path:
    """Entry scripts + ``fruits_spark.zip`` (+ bootstrap files when present) in ``destination``."""
    destination.mkdir(parents=True, exist_ok=True)
    jobs = spark_jobs_dir()
    # the steps' entry scripts, and local_app.py, which runs several of them in one application
    for script in sorted(jobs.glob("*.py")):
        shutil.copyfile(script, destination / script.name)
    build_zip(jobs / "fruits_spark", destination / PY_FILES_ZIP)
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
