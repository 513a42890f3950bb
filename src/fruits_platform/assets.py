"""The pipeline's outputs as Airflow Assets: what a downstream DAG (training, a search index) waits for.

Where the outputs live is known only at run time (the EMR run's bucket comes from a param or the Variable
``fruits_bucket``, both DAGs take ``output`` as a param), while an Asset's URI is fixed when the DAG file is
parsed. So both DAGs declare an **AssetAlias** per dataset, and each successful run resolves it to the Asset
of the real location, ``s3://<bucket>/<output>/features`` or ``file:///<output>/features``, with one event
per day processed. A consumer schedules on the alias (``schedule=[FEATURES]``): Airflow triggers it on
events of whatever Asset the alias resolved to, and the event's ``extra`` says which partition to read.

A run that fails or is skipped adds no event: only the producing task, once it knows the run succeeded,
adds them (an alias outlet with nothing added emits nothing).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from airflow.sdk import Asset, AssetAlias

from fruits_spark.contract import PROVISIONAL_MODEL
from fruits_spark.layout import REPORT_HTML, Layout

# the datasets published as Assets: the embeddings and their PCA projection (each partitioned by dt=)
PUBLISHED = ("features", "pca")
FEATURES = AssetAlias("fruits_features")
PCA = AssetAlias("fruits_pca")
ALIASES = {"features": FEATURES, "pca": PCA}


def dataset_uri(output: str, dataset: str) -> str:
    """The Asset URI of ``dataset`` under the run's output root: s3:// as is, a local path as file://."""
    root = Layout(output, "1970-01-01").root(dataset)
    return root if "://" in root else Path(root).resolve().as_uri()


def event_extra(report: Mapping, output: str, dataset: str) -> dict:
    """What a consumer needs to read one day of ``dataset`` without listing storage: the day, the partition,
    which embedding and PCA model made the rows, the counts, and the run's report."""
    layout = Layout(output, report["dt"])
    counts = report["counts"]
    return {
        "dt": report["dt"],
        "partition": f"{dataset_uri(output, dataset)}/dt={report['dt']}",
        "embedding": report.get("embedding"),
        # what the pca rows carry: the kept model's version, or provisional (a fit on this day alone)
        "pca_model_version": report.get("pca_model_version") or PROVISIONAL_MODEL,
        "pca_model": report.get("pca_model"),
        "rows": counts["ok"],
        "counts": dict(counts),
        # every dataset the day published (the step records'), for a consumer that reads more than one
        "datasets": {
            name: f"{dataset_uri(output, name)}/dt={report['dt']}" for name in report.get("published") or []
        },
        "report": layout.report(REPORT_HTML),
    }


def emit(outlet_events, output: str, reports: Iterable[Mapping]) -> list[str]:
    """Adds one event per (dataset, day) to the task's alias outlets; returns the partitions announced.

    ``reports`` are the days' report.json, one per day the run processed (a backfill or a range of days
    gives several). Call it only once the run succeeded."""
    announced = []
    for report in reports:
        for dataset in PUBLISHED:
            extra = event_extra(report, output, dataset)
            outlet_events[ALIASES[dataset]].add(Asset(dataset_uri(output, dataset)), extra=extra)
            announced.append(extra["partition"])
    return announced


def triggering_partitions(triggering_asset_events: Mapping) -> list[dict]:
    """The (uri, dt, partition, pca_model_version) of each event that triggered a consumer run, oldest first.

    ``triggering_asset_events`` is the consumer's context entry: events by the alias or Asset it waits for."""
    # an event through an alias is listed under the alias and under its Asset: one partition each
    events = {
        (event.asset.uri, event.timestamp, event.extra["dt"]): event
        for events in triggering_asset_events.values()
        for event in events
    }
    return [
        {
            "uri": event.asset.uri,
            "dt": event.extra["dt"],
            "partition": event.extra["partition"],
            "pca_model_version": event.extra.get("pca_model_version"),
        }
        for _, event in sorted(events.items(), key=lambda item: item[0][1])
    ]
