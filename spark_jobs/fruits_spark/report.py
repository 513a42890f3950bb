"""The run report: report.json, three PNG plots and a self-contained report.html, next to the outputs."""

from __future__ import annotations

import base64
import html
import io
import json

from pyspark.sql import DataFrame, SparkSession

from fruits_spark import storage
from fruits_spark.contract import STEP_NAMES
from fruits_spark.layout import REPORT_HTML, REPORT_JSON, Layout

PLOTS = ("explained_variance", "pca_scatter", "step_seconds")
SCATTER_MAX_POINTS = 5000


def build_summary(dt: str, stats: dict[str, dict]) -> dict:
    # each step's stats by its name: a step added to contract.STEPS only adds its line to step_seconds
    ingest, features, pca = stats.get("ingest", {}), stats.get("features", {}), stats.get("pca", {})
    variance = pca.get("explained_variance", [])
    cumulative = []
    for value in variance:
        cumulative.append((cumulative[-1] if cumulative else 0.0) + value)
    counts = {
        "files_seen": ingest.get("files_seen", 0),
        "ok": features.get("ok", 0),
        # ok = featurised (the CNN ran now) + reused (copied from an earlier run); older stats lack both
        "featurised": features.get("featurised", features.get("ok", 0)),
        "reused": features.get("reused", 0),
        "rejected": ingest.get("rejected", 0) + features.get("rejected", 0),
        "duplicates": ingest.get("duplicates", 0),
        "ignored": ingest.get("ignored", 0),
    }
    rejected_by_reason = dict(ingest.get("rejected_by_reason", {}))
    if features.get("rejected"):
        rejected_by_reason["featurization_failed"] = features["rejected"]
    return {
        "dt": dt,
        "input": ingest.get("input"),
        "counts": counts,
        "rejected_by_reason": rejected_by_reason,
        "reconciled": counts["files_seen"]
        == counts["ok"] + counts["rejected"] + counts["duplicates"] + counts["ignored"],
        "k": pca.get("k"),
        "explained_variance": variance,
        "cumulative_explained_variance": cumulative,
        "pca_model_version": pca.get("model_version"),
        "pca_model": pca.get("model"),
        "weights": features.get("weights"),
        "input_size": features.get("input_size"),
        "model_builds": features.get("model_builds"),
        "rows_inferred": features.get("rows_inferred"),
        "history": features.get("history"),
        "reused_from": features.get("reused_from", {}),
        "step_seconds": {step: stats.get(step, {}).get("seconds") for step in STEP_NAMES},
    }


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def plot_explained_variance(summary: dict) -> bytes:
    from matplotlib.figure import Figure

    variance, cumulative, k = (
        summary["explained_variance"],
        summary["cumulative_explained_variance"],
        summary["k"],
    )
    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    components = range(1, len(variance) + 1)
    axes.bar(components, variance, color="#4c9a2a", label="per component")
    axes.set_xlabel("principal component")
    axes.set_ylabel("explained variance ratio")
    twin = axes.twinx()
    twin.plot(components, cumulative, color="#d95f02", label="cumulative")
    twin.set_ylim(0, 1)
    twin.set_ylabel("cumulative")
    if cumulative:
        twin.axvline(k, color="grey", linestyle="--")
        twin.annotate(
            f"k={k}: {cumulative[-1]:.1%}", (k, cumulative[-1]), textcoords="offset points", xytext=(-90, -20)
        )
    bars, bar_labels = axes.get_legend_handles_labels()
    lines, line_labels = twin.get_legend_handles_labels()
    axes.legend(bars + lines, bar_labels + line_labels, loc="center right")
    axes.set_title("PCA explained variance")
    return _png(figure)


def plot_scatter(points: list[tuple[str, float, float]]) -> bytes:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 5))
    axes = figure.subplots()
    for label in sorted({p[0] for p in points}):
        xs = [p[1] for p in points if p[0] == label]
        ys = [p[2] for p in points if p[0] == label]
        axes.scatter(xs, ys, s=14, alpha=0.7, label=f"{label} ({len(xs)})")
    axes.set_xlabel("PC 1")
    axes.set_ylabel("PC 2")
    axes.set_title("Images on the first two components")
    if points:
        axes.legend(fontsize="small")
    return _png(figure)


def plot_step_seconds(summary: dict) -> bytes:
    from matplotlib.figure import Figure

    seconds = {step: s or 0.0 for step, s in summary["step_seconds"].items()}
    figure = Figure(figsize=(6, 2.6))
    axes = figure.subplots()
    axes.barh(list(seconds), list(seconds.values()), color="#1b9e77")
    for y, value in enumerate(seconds.values()):
        axes.annotate(f"{value:.1f} s", (value, y), xytext=(4, -4), textcoords="offset points")
    axes.invert_yaxis()
    axes.set_xlabel("seconds (inside each Spark job)")
    axes.set_title("Time per step")
    return _png(figure)


def render_html(summary: dict, plots: dict[str, bytes]) -> str:
    counts = summary["counts"]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in counts.items())
    reasons = (
        "".join(
            f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>"
            for k, v in summary["rejected_by_reason"].items()
        )
        or "<tr><td colspan=2>none</td></tr>"
    )
    cost = summary.get("cost") or {"note": "local run: no cluster cost"}
    images = "".join(
        f'<figure><img alt="{name}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        f"<figcaption>{name.replace('_', ' ')}</figcaption></figure>"
        for name, png in plots.items()
    )
    cumulative = summary["cumulative_explained_variance"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Fruits! run report {html.escape(summary["dt"])}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}table{{border-collapse:collapse}}
th,td{{border:1px solid #ccc;padding:4px 10px;text-align:left}}img{{max-width:100%}}</style></head>
<body><h1>Fruits! feature pipeline: run of {html.escape(summary["dt"])}</h1>
<p>Input: <code>{html.escape(str(summary["input"]))}</code>. Every file is accounted for:
{"yes" if summary["reconciled"] else "<strong>NO</strong>"}.</p>
<h2>Counts</h2><table>{rows}</table>
<p>Features: {counts.get("featurised", 0)} computed now, {counts.get("reused", 0)} reused from earlier runs
(same photo, same weights and input size); history: {html.escape(str(summary.get("history")))}.</p>
<h2>Rejections by reason</h2><table>{reasons}</table>
<h2>PCA</h2><p>k = {summary["k"]}, cumulative explained variance
{f"{cumulative[-1]:.1%}" if cumulative else "n/a"}, model {html.escape(str(summary["pca_model_version"]))}
({html.escape(str(summary["pca_model"]))}).</p>
<h2>Cost</h2><pre>{html.escape(json.dumps(cost, indent=2))}</pre>
<h2>Plots</h2>{images}
</body></html>
"""


def write_report(spark: SparkSession, layout: Layout, summary: dict, projected: DataFrame | None) -> None:
    points = []
    if projected is not None:
        sample = projected.select("label", "pca").limit(SCATTER_MAX_POINTS).collect()
        points = [
            (row["label"], float(row["pca"][0]), float(row["pca"][1] if len(row["pca"]) > 1 else 0.0))
            for row in sample
        ]
    plots = {
        "explained_variance": plot_explained_variance(summary),
        "pca_scatter": plot_scatter(points),
        "step_seconds": plot_step_seconds(summary),
    }
    files = report_files(summary, plots)
    files.update({plot_file(name): png for name, png in plots.items()})
    # the top-level copy is the latest run's; reports/dt=... keeps every date's
    for folder in layout.report_folders():
        for name, data in files.items():
            storage.write_bytes(spark, f"{folder}/{name}", data)


def plot_file(name: str) -> str:
    return f"report_{name}.png"


def report_files(summary: dict, plots: dict[str, bytes]) -> dict[str, bytes]:
    """report.json and report.html of ``summary``: the one rendering of a report, whoever writes it (the
    pca step, or the EMR DAG once it knows the cluster's cost)."""
    return {
        REPORT_JSON: json.dumps(summary, indent=2).encode(),
        REPORT_HTML: render_html(summary, plots).encode(),
    }
