"""DataFrames of rows the driver already holds, built without a Python worker.

``spark.createDataFrame(rows)`` ships the rows as a pickled Python RDD: every action that reads the
DataFrame runs Python tasks to unpickle them again, and on a fresh session the first of them waits for
Python workers to start. Ingest's few hidden or empty files cost ~1 s that way, on every day with a
``.DS_Store``. Sent as Arrow, the rows reach the JVM once and stay there.
"""

from __future__ import annotations

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

ARROW_CONVERSION = "spark.sql.execution.arrow.pyspark.enabled"


def driver_frame(spark: SparkSession, rows: list[tuple], schema: str | T.StructType) -> DataFrame:
    """``rows`` (tuples in ``schema``'s column order) as a DataFrame that lives in the JVM."""
    struct = schema if isinstance(schema, T.StructType) else T._parse_datatype_string(schema)
    spark.conf.set(ARROW_CONVERSION, "true")
    return spark.createDataFrame(pd.DataFrame.from_records(rows, columns=struct.names), struct)
