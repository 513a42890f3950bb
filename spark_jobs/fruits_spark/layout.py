"""Where every file of a run lives under its output root: the output contract's paths, in one place.

Each dataset is partitioned by upload date (``dt=YYYY-MM-DD``) so that rerunning a date overwrites exactly
that partition and leaves the other dates alone. Pure Python: the Airflow side (local paths, S3 keys) and
the Spark jobs (Hadoop URIs) share it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fruits_spark.contract import DATASETS, check_date

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"


@dataclass(frozen=True)
class Layout:
    output: str
    dt: str
    # True for the steps of a run: this date's datasets are written to, and read back from, its staging
    # area, and the last step publishes them together (fruits_spark.publish): a run that fails half-way
    # leaves the day's published datasets as they were, never half old and half new
    staged: bool = False

    def __post_init__(self) -> None:
        try:
            check_date(self.dt)
        except ValueError as error:
            raise ValueError(f"dt {error}") from None
        object.__setattr__(self, "output", str(self.output).rstrip("/"))

    def root(self, name: str) -> str:
        if name not in DATASETS:
            raise ValueError(f"unknown dataset {name!r}; datasets are {', '.join(DATASETS)}")
        return f"{self.output}/{name}"

    def dataset(self, name: str) -> str:
        published = f"{self.root(name)}/dt={self.dt}"
        return self.staging(name) if self.staged else published

    @property
    def published(self) -> Layout:
        return replace(self, staged=False)

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
