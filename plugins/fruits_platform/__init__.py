"""Fruits! platform code shared by the DAGs and the ``fruits`` command (Airflow adds plugins/ to sys.path)."""
