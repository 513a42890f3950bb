"""Where every file of a run lives under its output root: the output contract's paths, in one place.

Each dataset is partitioned by upload date (``dt=YYYY-MM-DD``) so that rerunning a date overwrites exactly
that partition and leaves the other dates alone. Pure Python: the Airflow side (local paths, S3 keys) and
the Spark jobs (Hadoop URIs) share it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fruits_spark.contract import DATASETS, DT_PATTERN

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"


@dataclass(frozen=True)
class Layout:
    output: str
    dt: str

    def __post_init__(self) -> None:
        if not re.match(DT_PATTERN, self.dt):
            raise ValueError(f"dt must look like YYYY-MM-DD, got {self.dt!r}")
        object.__setattr__(self, "output", str(self.output).rstrip("/"))

    def root(self, name: str) -> str:
        if name not in DATASETS:
            raise ValueError(f"unknown dataset {name!r}; datasets are {', '.join(DATASETS)}")
        return f"{self.output}/{name}"

    def dataset(self, name: str) -> str:
        return f"{self.root(name)}/dt={self.dt}"

    def rejected(self, stage: str) -> str:
        return f"{self.dataset('rejected')}/stage={stage}"

    def stats(self, step: str) -> str:
        return f"{self.output}/_stats/dt={self.dt}/{step}.json"

    def staging(self, name: str) -> str:
        """Scratch space of this date's run: Spark's readers skip paths starting with "_", so no dataset
        root ever lists it."""
        return f"{self.output}/_staging/{name}/dt={self.dt}"

    def logs(self) -> str:
        """Where the local runner writes each step's Spark log."""
        return f"{self.output}/_logs/dt={self.dt}"

    def report_folders(self) -> tuple[str, str]:
        """The latest run's report (top level) and this date's copy, which every later run keeps."""
        return self.output, f"{self.output}/reports/dt={self.dt}"

    def report(self, name: str = REPORT_JSON) -> str:
        """This date's report file: the one a run's caller reads, whatever ran since."""
        return f"{self.report_folders()[1]}/{name}"

    @property
    def pca_models(self) -> str:
        return f"{self.output}/pca_model"
