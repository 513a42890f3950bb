"""The toy step, between features and pca: the features rows of each label with at least --toy-min-rows of
them, written to its own dataset, with real Spark."""

from pyspark.sql import SparkSession

from fruits_spark import contract, storage
from fruits_spark.layout import Layout


def parser():
    return contract.step_parser("toy", "Count the features rows of each label.")


def main(argv=None):
    args = parser().parse_args(argv)
    spark = SparkSession.builder.getOrCreate()
    layout = Layout(args.output, args.dt, staged=True)
    per_label = spark.read.parquet(layout.dataset("features")).groupBy("label").count()
    kept = per_label.filter(per_label["count"] >= args.toy_min_rows)
    kept.write.mode("overwrite").parquet(layout.dataset("toy"))
    labels = kept.count()
    storage.write_stats(spark, layout, "toy", {"step": "toy", "toy_labels": labels, "seconds": 0.0})
    print(f"toy: {labels} labels with at least {args.toy_min_rows} rows")
