"""Where every dataset of a run lives: the output contract, in one place.

Each dataset is partitioned by upload date (``dt=YYYY-MM-DD``) so that rerunning a date overwrites exactly
that partition and leaves the other dates alone.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from pyspark.sql import SparkSession

from fruits_spark import storage

DT_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class Layout:
    output: str
    dt: str

    def __post_init__(self) -> None:
        if not DT_PATTERN.match(self.dt):
            raise ValueError(f"--dt must look like YYYY-MM-DD, got {self.dt!r}")
        object.__setattr__(self, "output", self.output.rstrip("/"))

    def dataset(self, name: str) -> str:
        return f"{self.output}/{name}/dt={self.dt}"

    def root(self, name: str) -> str:
        return f"{self.output}/{name}"

    def rejected(self, stage: str) -> str:
        return f"{self.output}/rejected/dt={self.dt}/stage={stage}"

    def stats(self, step: str) -> str:
        return f"{self.output}/_stats/dt={self.dt}/{step}.json"

    @property
    def pca_models(self) -> str:
        return f"{self.output}/pca_model"


def write_stats(spark: SparkSession, layout: Layout, step: str, stats: dict) -> None:
    storage.write_bytes(spark, layout.stats(step), json.dumps(stats, indent=2, sort_keys=True).encode())


def read_stats(spark: SparkSession, layout: Layout, step: str) -> dict:
    if not storage.exists(spark, layout.stats(step)):
        return {}
    return json.loads(storage.read_bytes(spark, layout.stats(step)))
