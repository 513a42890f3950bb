"""The Python workers' daemon of local runs (``spark.python.daemon.module``): PySpark's own, without the
zip archives' re-read before every task.

Before each task PySpark's worker calls ``importlib.invalidate_caches()``, so that files a job added since
(``addPyFile``) can be imported. On Python 3.11 that makes every zip importer read its archive's whole
directory again, one importer per package imported from the archive: pyspark.zip's 793 entries a dozen
times, ~60 ms of every Python task, a third of the Python workers' CPU in the test suite (docs/BENCHMARKS.md,
round 6). The archives on a worker's path never change while it lives (pyspark.zip, py4j's, the jobs' zip
under its content hash), so their importers keep what they read; a new archive gets a new importer, and
folders' finders are still invalidated, as PySpark means them to be.
"""

from __future__ import annotations

import zipimport


def _keep_directory(self) -> None:
    """An archive's directory stays as its importer first read it."""


def main() -> None:
    zipimport.zipimporter.invalidate_caches = _keep_directory
    from pyspark import daemon

    daemon.manager()


if __name__ == "__main__":
    main()
