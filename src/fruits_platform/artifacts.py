"""Builds what a Spark step needs to run anywhere: entry scripts, the fruits_spark zip, the bootstrap.

One copy of the Spark code: the zip is the ``fruits_spark`` package this process imports (its
``__file__``), the one that also builds the steps' command lines, so Airflow and the jobs always share one
contract. The entry scripts are generated from the step records (``contract.STEPS``).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import zipfile
from pathlib import Path

import fruits_spark
from fruits_platform.pipeline import LOCAL_APP, PY_FILES_ZIP
from fruits_spark import contract

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# a fixed timestamp keeps the zip, hence the artifacts' content hash, identical across builds
_ZIP_DATE = (2020, 1, 1, 0, 0, 0)

STEP_SCRIPT = '''"""spark-submit entry point of the {name} step (generated from its record): the code is
{module}, shipped with --py-files."""
{plugins}
from {module} import main

if __name__ == "__main__":
    main()
'''
LOCAL_APP_SCRIPT = '''"""spark-submit entry point of local runs: several steps in one Spark application
(fruits_spark.local_app)."""
{plugins}
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


def plugin_sources() -> dict[str, Path]:
    """The files of the plugin modules this process loaded and of the modules their records name, by
    their path in the zip (with their packages' ``__init__.py``): the steps' code, wherever it runs, has
    every record its caller has."""
    names = [
        *contract.PLUGINS,
        *(record.module for record in (*contract.STEPS, *contract.ENGINES)),
    ]
    sources: dict[str, Path] = {}
    for name in names:
        if name.split(".")[0] == fruits_spark.__name__:
            continue
        module = importlib.import_module(name)
        parts = name.split(".")
        root = Path(module.__file__).resolve().parents[len(parts) - 1]
        sources["/".join(parts) + ".py"] = Path(module.__file__)
        for depth in range(1, len(parts)):
            init = root / Path(*parts[:depth]) / "__init__.py"
            if init.exists():
                sources["/".join(parts[:depth]) + "/__init__.py"] = init
    return sources


def build_zip(package: Path, destination: Path) -> Path:
    files = {source.relative_to(package.parent).as_posix(): source for source in package.rglob("*.py")}
    files.update(plugin_sources())
    with zipfile.ZipFile(destination, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, _ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, files[name].read_bytes())
    return destination


def _plugins_line() -> str:
    """What an entry script runs first: the plugins of this build, so that its process has their records."""
    if not contract.PLUGINS:
        return ""
    listed = ", ".join(repr(name) for name in contract.PLUGINS)
    return f"\nfrom fruits_spark import contract\n\ncontract.load_plugins({listed})\n"


def build_artifacts(destination: Path) -> Path:
    """Entry scripts + ``fruits_spark.zip`` (+ bootstrap files when present) in ``destination``."""
    destination.mkdir(parents=True, exist_ok=True)
    # one entry script per step record, and local_app.py, which runs several steps in one application
    plugins = _plugins_line()
    for step in contract.STEPS:
        script = STEP_SCRIPT.format(name=step.name, module=step.module, plugins=plugins)
        (destination / f"{step.name}.py").write_text(script)
    (destination / LOCAL_APP).write_text(LOCAL_APP_SCRIPT.format(plugins=plugins))
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
