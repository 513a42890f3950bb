"""Code shared by the Spark entry points; shipped to the cluster as ``fruits_spark.zip`` (``--py-files``)."""
