"""The local side: the runner behind ``fruits run-local`` and ``fruits_features_local``, a project-local
Airflow, and ``make demo``. No AWS."""
