# Airflow image for docker-compose.yaml: the official image plus what the DAGs' tasks run in-process.
# The package (src/, spark_jobs/fruits_spark/) is installed in the image; dags/, plugins/, bootstrap/ and
# data/ are mounted at run time.
FROM apache/airflow:3.3.2-python3.11

USER root
# fruits_features_local runs spark-submit in the scheduler's task processes: PySpark 3.5 needs a JVM (8/11/17),
# and Spark ML's PCA uses OpenBLAS's LAPACK when it is installed (faster than its Java fallback).
# man1 must exist or the JRE's post-install step fails on the slim Debian base. The JRE is left unpinned on
# purpose: Debian drops superseded security builds from its mirrors, so a pinned version stops building.
# hadolint ignore=DL3008
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless libopenblas0-pthread \
    && apt-get autoremove -yqq --purge \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* \
    && ln -sfn "$(dirname "$(dirname "$(readlink -f /usr/bin/java)")")" /usr/lib/jvm/fruits-java
# the JRE's directory is named after the CPU architecture; the link keeps one JAVA_HOME for amd64 and arm64
ENV JAVA_HOME=/usr/lib/jvm/fruits-java

USER airflow
# The project itself, as `make setup` installs it: the fruits_platform and fruits_spark packages and every
# runtime dependency, resolved against constraints.txt (the same pins as the dev venv and the tests, the
# Airflow of the base image included). The DAGs then import fruits_platform like any library, as on any
# Airflow. The Spark jobs are shipped from this installed fruits_spark too (artifacts.py zips it), so the
# steps' command lines and the jobs' parsers come from one contract: a change under src/ or spark_jobs/
# needs `docker compose build`; a change under dags/, plugins/ or bootstrap/ does not.
COPY --chown=airflow:0 pyproject.toml constraints.txt README.md /opt/fruits/
COPY --chown=airflow:0 src/ /opt/fruits/src/
COPY --chown=airflow:0 spark_jobs/fruits_spark/ /opt/fruits/spark_jobs/fruits_spark/
RUN pip install --no-cache-dir -c /opt/fruits/constraints.txt /opt/fruits
