# Airflow image for docker-compose.yaml: the official image plus what the DAGs' tasks run in-process.
# dags/, plugins/, spark_jobs/, bootstrap/ and data/ are mounted at run time: a code change needs no rebuild.
FROM apache/airflow:3.3.2-python3.11

USER root
# fruits_features_local runs spark-submit in the scheduler's task processes: PySpark 3.5 needs a JVM (8/11/17).
# man1 must exist or the JRE's post-install step fails on the slim Debian base. The JRE is left unpinned on
# purpose: Debian drops superseded security builds from its mirrors, so a pinned version stops building.
# hadolint ignore=DL3008
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && apt-get autoremove -yqq --purge \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* \
    && ln -sfn "$(dirname "$(dirname "$(readlink -f /usr/bin/java)")")" /usr/lib/jvm/fruits-java
# the JRE's directory is named after the CPU architecture; the link keeps one JAVA_HOME for amd64 and arm64
ENV JAVA_HOME=/usr/lib/jvm/fruits-java

USER airflow
# The pins of pyproject.toml. apache-airflow is pinned as well, as the Airflow image docs require, so that
# pip cannot move the Airflow the image was built with while resolving the rest.
RUN pip install --no-cache-dir \
    "apache-airflow==3.3.2" \
    "apache-airflow-providers-amazon==9.39.0" \
    "boto3==1.44.5" \
    "pyspark==3.5.9" \
    "tensorflow-cpu==2.21.0" \
    "keras==3.15.1" \
    "ml-dtypes==0.5.1" \
    "pillow==13.0.0" \
    "numpy==1.26.4" \
    "pandas==2.2.3" \
    "pyarrow==18.1.0" \
    "matplotlib==3.11.2"
