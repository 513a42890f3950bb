"""The notebook approach, kept only as the benchmark's reference point (spark-submit this file).

It mirrors the course notebook this project replaced: binaryFile read, ``repartition(20)``, a SCALAR_ITER
pandas UDF that rebuilds the model from broadcast weights in every task and calls ``model.predict`` on
per-row PIL-resized images, features written and read back, a Python UDF to vectors, PCA k=100.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import pandas as pd
from pyspark.ml.feature import PCA
from pyspark.ml.linalg import Vectors, VectorUDT
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from fruits_spark.contract import PARAMS


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--weights", required=True)
    PARAMS["k"].add_argument(parser)
    args = parser.parse_args()
    started = time.monotonic()
    spark = SparkSession.builder.appName("notebook-reference").getOrCreate()

    from keras.applications.mobilenet_v2 import preprocess_input

    from fruits_spark.model import build_backbone

    driver_model = build_backbone(224)
    driver_model.load_weights(args.weights)
    broadcast = spark.sparkContext.broadcast(driver_model.get_weights())

    def model_fn():
        model = build_backbone(224)
        model.set_weights(broadcast.value)
        return model

    def preprocess(content):
        from PIL import Image

        image = Image.open(io.BytesIO(content)).convert("RGB").resize([224, 224])
        return preprocess_input(np.asarray(image, dtype=np.float32))

    @F.pandas_udf("array<float>", F.PandasUDFType.SCALAR_ITER)
    def featurize_udf(content_series_iter):
        model = model_fn()
        for content_series in content_series_iter:
            batch = np.stack(content_series.map(preprocess))
            yield pd.Series(list(model.predict(batch, verbose=0)))

    images = (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .option("pathGlobFilter", "*.jpg")
        .load(args.input)
        .withColumn("label", F.element_at(F.split("path", "/"), -2))
    )
    features = images.repartition(20).select("path", "label", featurize_udf("content").alias("features"))
    features.write.mode("overwrite").parquet(f"{args.output}/features")
    read_back = spark.read.parquet(f"{args.output}/features")
    to_vector = F.udf(lambda values: Vectors.dense(values), VectorUDT())
    vectors = read_back.withColumn("vector", to_vector("features"))
    pca = PCA(k=args.k, inputCol="vector", outputCol="pca").fit(vectors)
    pca.transform(vectors).select("path", "label", "pca").write.mode("overwrite").parquet(
        f"{args.output}/pca"
    )
    print(f"notebook reference: {read_back.count()} images in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
