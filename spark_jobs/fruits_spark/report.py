"""The run report: report.json, three PNG plots and a self-contained report.html, next to the outputs.

Its rendering needs no Spark (the EMR DAG renders the report again with the cluster's cost on the Airflow
worker, whose DAG files must not import Spark); reading a day's datasets does, on demand."""

from __future__ import annotations

import base64
import html
import importlib
import io
import json
from typing import TYPE_CHECKING

from fruits_spark.contract import STEP_NAMES, STEPS
from fruits_spark.layout import REPORT_HTML, REPORT_JSON, Layout

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

PLOTS = ("explained_variance", "pca_scatter", "step_seconds")
SCATTER_MAX_POINTS = 5000
# files listed by name in the report; the rest are in the datasets it links to
LISTED_FILES = 20


# what every file of the input became: the contract's one invariant between the steps' counts
RECONCILED = ("ok", "rejected", "duplicates", "ignored")


def build_summary(dt: str, stats: dict[str, dict]) -> dict:
    """The report of a day from its steps' stats, as their records declare: each step's ``counts`` (a key
    two steps count, as both reject files, adds up), its ``reported`` keys as they are, its seconds."""
    counts: dict[str, int] = {}
    rejected_by_reason: dict[str, int] = {}
    reported: dict = {}
    for record in STEPS:
        own = stats.get(record.name, {})
        for key in record.counts:
            counts[key] = counts.get(key, 0) + int(own.get(key) or 0)
        for reason, number in (own.get("rejected_by_reason") or {}).items():
            rejected_by_reason[reason] = rejected_by_reason.get(reason, 0) + number
        reported.update({key: own.get(key) for key in record.reported})
    variance = reported.get("explained_variance") or []
    cumulative = []
    for value in variance:
        cumulative.append((cumulative[-1] if cumulative else 0.0) + value)
    return {
        "dt": dt,
        **reported,
        "counts": counts,
        "rejected_by_reason": rejected_by_reason,
        "reconciled": counts.get("files_seen", 0) == sum(counts.get(key, 0) for key in RECONCILED),
        "explained_variance": variance,
        "cumulative_explained_variance": cumulative,
        "explained_variance_on_day": reported.get("explained_variance_on_day") or [],
        "pca_model_note": reported.get("pca_model_note") or "",
        "reused_from": reported.get("reused_from") or {},
        "step_seconds": {step: stats.get(step, {}).get("seconds") for step in STEP_NAMES},
    }


def describe_reuse(dt: str, reused_from: dict[str, int]) -> str:
    """Where reused features came from: earlier days, or this day's own previous run (a rerun)."""
    earlier = {day: n for day, n in sorted(reused_from.items()) if day != dt}
    parts = []
    if earlier:
        parts.append(f"{sum(earlier.values())} from earlier days ({', '.join(earlier)})")
    if reused_from.get(dt):
        parts.append(f"{reused_from[dt]} from this day's previous run")
    return ", ".join(parts)


def describe_counts(summary: dict) -> str:
    """The counts in words, the same wherever they are printed (terminal, report.html)."""
    counts = summary["counts"]
    reuse = describe_reuse(summary["dt"], summary.get("reused_from") or {})
    core = ("files_seen", "ok", "featurised", "reused", "rejected", "duplicates", "ignored")
    # the counts of other steps (their records'), by their names
    others = "".join(
        f"; {key.replace('_', ' ')}: {value}" for key, value in counts.items() if key not in core
    )
    return (
        f"{counts['ok']} images ok: {counts['featurised']} featurised now, {counts['reused']} reused"
        + (f" ({reuse})" if reuse else "")
        + f"; {counts['rejected']} rejected, {counts['duplicates']} duplicates, {counts['ignored']} ignored"
        + f" (of {counts['files_seen']} files)"
        + others
    )


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def plot_explained_variance(summary: dict) -> bytes:
    from matplotlib.figure import Figure

    variance, cumulative, k = (
        summary["explained_variance"],
        summary["cumulative_explained_variance"],
        summary.get("k"),
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


def _table(rows: dict) -> str:
    return "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows.items()
    )


def _file_list(title: str, listed: dict | None) -> str:
    """The first files of a dataset, with its location for the rest."""
    if not listed or not listed.get("count"):
        return f"<h3>{title}</h3><p>none</p>"
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row.values()) + "</tr>"
        for row in listed["first"]
    )
    more = listed["count"] - len(listed["first"])
    rest = f"{more} more in " if more > 0 else "all in "
    where = html.escape(listed["dataset"])
    return (
        f"<h3>{title} ({listed['count']})</h3><table>{rows}</table>"
        f'<p>{rest}<a href="{where}"><code>{where}</code></a> (Parquet)</p>'
    )


def _pca_text(summary: dict) -> str:
    cumulative = summary["cumulative_explained_variance"]
    if not cumulative:
        return "<p>Nothing to show: no PCA model this run.</p>"
    on_day = sum(summary.get("explained_variance_on_day") or [])
    fit_rows = summary.get("pca_fit_rows")
    fit_rows = "?" if fit_rows is None else fit_rows
    note = summary.get("pca_model_note")
    components = summary.get("components")
    # beyond the rank of the rows fitted, components are zeros: the pca step writes only the others
    fewer = (
        f" ({components} carry variance and are written)" if components and components < summary["k"] else ""
    )
    return (
        f"<p>k = {summary['k']}{fewer}; model {html.escape(str(summary['pca_model_version'] or 'not kept'))} "
        f"({html.escape(str(summary['pca_model']))}). Cumulative explained variance: "
        f"{cumulative[-1]:.1%} on the rows it was fitted on ({fit_rows} rows), "
        f"{on_day:.1%} on this day's data.</p>"
        + (f"<p><strong>{html.escape(note)}</strong></p>" if note else "")
    )


def step_sections(summary: dict) -> str:
    """The steps' own sections, from the report alone: each record that names a renderer
    (``Step.report_section``) gets its ``report_html(summary)``, in the plan's order."""
    return "".join(
        importlib.import_module(record.report_section).report_html(summary)
        for record in STEPS
        if record.report_section
    )


def render_html(summary: dict, plots: dict[str, bytes]) -> str:
    reasons = _table(summary["rejected_by_reason"]) or "<tr><td colspan=2>none</td></tr>"
    cost = summary.get("cost")
    cost_html = f"<table>{_table(cost)}</table>" if cost else "<p>local run: no cluster cost</p>"
    model = {
        "weights": summary.get("weights"),
        "engine": summary.get("engine"),
        "embedding": summary.get("embedding"),
        "input size": summary.get("input_size"),
    }
    images = "".join(
        f'<figure><img alt="{name}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        f"<figcaption>{name.replace('_', ' ')}</figcaption></figure>"
        for name, png in plots.items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Fruits! run report {html.escape(summary["dt"])}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}table{{border-collapse:collapse}}
th,td{{border:1px solid #ccc;padding:4px 10px;text-align:left}}img{{max-width:100%}}</style></head>
<body><h1>Fruits! feature pipeline: run of {html.escape(summary["dt"])}</h1>
<p>Input: <code>{html.escape(str(summary.get("input")))}</code>. Every file is accounted for:
{"yes" if summary["reconciled"] else "<strong>NO</strong>"}.</p>
<h2>Counts</h2><p>{html.escape(describe_counts(summary))}.</p><table>{_table(summary["counts"])}</table>
<p>History: {html.escape(str(summary.get("history")))}.</p>
<h2>Model</h2><table>{_table(model)}</table>
<h2>Rejected and ignored files</h2><table>{reasons}</table>
{_file_list("Rejected", summary.get("rejected_files"))}{_file_list("Ignored", summary.get("ignored_files"))}
<h2>PCA</h2>{_pca_text(summary)}
{step_sections(summary)}
<h2>Cost</h2>{cost_html}
<h2>Plots</h2>{images or "<p>Nothing to show: no image was projected.</p>"}
</body></html>
"""


def listed_files(spark: SparkSession, layout: Layout) -> dict:
    """The first rejected and ignored files of the day, their count and where the rest are."""
    from fruits_spark import storage

    found = {}
    for key, name in (("rejected_files", "rejected"), ("ignored_files", "ignored")):
        where = layout.dataset(name)
        if not storage.exists(spark, where):
            found[key] = {"count": 0, "first": [], "dataset": where}
            continue
        table = spark.read.parquet(where)
        first = [row.asDict() for row in table.orderBy("path").limit(LISTED_FILES).collect()]
        found[key] = {"count": table.count(), "first": first, "dataset": where}
    return found


def write_report(spark: SparkSession, layout: Layout, summary: dict) -> None:
    """The report of ``layout``'s published day: ``summary``, the files it lists, its plots."""
    from fruits_spark import storage

    summary = {**summary, **listed_files(spark, layout)}
    points = []
    if storage.exists(spark, layout.dataset("pca")):
        projected = spark.read.parquet(layout.dataset("pca"))
        sample = projected.select("label", "pca").limit(SCATTER_MAX_POINTS).collect()
        points = [
            (row["label"], float(row["pca"][0]), float(row["pca"][1] if len(row["pca"]) > 1 else 0.0))
            for row in sample
        ]
    # a plot of nothing is left out: the report says "nothing to show" instead
    plots = {"step_seconds": plot_step_seconds(summary)}
    if summary["explained_variance"]:
        plots["explained_variance"] = plot_explained_variance(summary)
    if points:
        plots["pca_scatter"] = plot_scatter(points)
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
