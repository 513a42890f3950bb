"""The AWS side: the EMR cluster and its steps, S3 staging, the GDPR and cost guards, prices, the cost report.

Imported by ``dags/fruits_features_emr.py`` and ``dags/fruits_features_emr_backfill.py`` in Airflow's task
processes; never by the Spark jobs.
"""
