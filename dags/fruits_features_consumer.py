"""
### fruits_features_consumer: an example of a DAG that waits for the features

Scheduled on the features Asset (`fruits_platform.assets.FEATURES`, an alias that each successful run of
`fruits_features_local` or `fruits_features_emr` resolves to the real location): Airflow starts it once per
day published, and its task reads which partition (`dt=`) to use from the triggering event. A training or
indexing DAG would start the same way, then read `partition` instead of printing it.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, get_current_context, task

from fruits_platform import assets

with DAG(
    dag_id="fruits_features_consumer",
    schedule=[assets.FEATURES],
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    doc_md=__doc__,
    tags=["fruits", "example"],
    default_args={"owner": "fruits", "retries": 0},
) as dag:

    @task
    def read_partition() -> list[dict]:
        """The partitions the triggering events announce: what a consumer would read."""
        partitions = assets.triggering_partitions(get_current_context()["triggering_asset_events"])
        for partition in partitions:
            print(f"features of dt={partition['dt']}: {partition['partition']}")
        return partitions

    read_partition()
