"""Fruits! platform: everything around the Spark jobs, laid out by where it runs.

- ``pipeline``, ``artifacts``: the step definitions and what a step needs to run (bottom layer; built on
  ``fruits_spark.contract``, the pipeline contract the Spark jobs share).
- ``aws``: the EMR cluster, S3 staging, guards, prices and the cost report (the EMR DAG's tasks).
- ``local``: the local runner, a project-local Airflow and ``make demo``.
- ``tools``: benchmarks and quality measures.
- ``cli``: the ``fruits`` command.
"""
