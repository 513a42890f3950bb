"""The quality step's part of the run report, and what its driver computes from the few rows it collects.

Pure Python (numpy and Pillow, no Spark): the report is rendered again from report.json alone where Spark is
absent (the EMR DAG adds the cluster's cost on the Airflow worker), so its section reads the summary only.
The quality step's record names this module (``Step.report_section``).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable

import numpy as np

# a thumbnail's longest side in the report (pixels): enough to see the fruit, small enough for report.json
THUMBNAIL_SIDE = 64


def thumbnail(content: bytes | None) -> str:
    """A small PNG data URI of a curated copy (a binary PPM), or "" when there is none."""
    if not content:
        return ""
    from PIL import Image

    image = Image.open(io.BytesIO(content)).convert("RGB")
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def count_groups(pairs: Iterable[dict], dt: str) -> int:
    """Connected components of the flagged pairs: photos linked by any chain of near-duplicate pairs. A
    photo is its day and path (a photo of the day is ``dt``'s; the other's day is its ``other_dt``)."""
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def root(node: tuple[str, str]) -> tuple[str, str]:
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for pair in pairs:
        a, b = root((dt, pair["path"])), root((pair["other_dt"], pair["other_path"]))
        if a != b:
            parent[a] = b
    return len({root(node) for node in list(parent)})


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / norms if norms else 0.0


def drift(day: dict, history: dict, threshold: float, has_history: bool) -> dict:
    """Per label: the day's count, the history's, the cosine distance between the day's centroid and the
    history's, and a status (new, missing, moved, steady). ``day`` and ``history`` are per label the
    number of rows and the sum of their unit vectors (a centroid's direction is the sum's)."""
    labels = []
    for label in sorted(set(day) | set(history)):
        count, total = day.get(label, (0, None))
        before, earlier = history.get(label, (0, None))
        distance = None
        if not has_history:
            status = "first day"
        elif not count:
            status = "missing"
        elif not before:
            status = "new"
        else:
            distance = round(1.0 - _cosine(total, earlier), 6)
            status = "moved" if distance >= threshold else "steady"
        labels.append(
            {"label": label, "count": count, "history_count": before, "distance": distance, "status": status}
        )
    return {"threshold": threshold, "has_history": has_history, "labels": labels}


def drift_words(drift: dict) -> list[str]:
    """The drift in sentences: what is missing, new or moved, or that nothing is."""
    if not drift["has_history"]:
        return ["No earlier day of this embedding: nothing to compare the day's labels with yet."]
    by_status: dict[str, list[dict]] = {}
    for row in drift["labels"]:
        by_status.setdefault(row["status"], []).append(row)
    words = []
    if by_status.get("missing"):
        names = ", ".join(f"{r['label']} ({r['history_count']} earlier photos)" for r in by_status["missing"])
        words.append(f"Missing today: {names}.")
    if by_status.get("new"):
        names = ", ".join(f"{r['label']} ({r['count']} photos)" for r in by_status["new"])
        words.append(f"New today, never seen on an earlier day: {names}.")
    if by_status.get("moved"):
        names = ", ".join(f"{r['label']} ({r['distance']:.3f})" for r in by_status["moved"])
        words.append(
            f"Moved beyond the threshold ({drift['threshold']:.3f} cosine distance from the history's "
            f"centroid): {names}."
        )
    return words or [
        f"Every label of the history is here, none is new, none moved beyond {drift['threshold']:.3f}."
    ]


def _off(name: str, param: str) -> str:
    return f"<p>{name}: off (<code>{param}</code> 0).</p>"


def _near_duplicates_html(found: dict | None) -> str:
    if found is None:
        return _off("Near-duplicates", "near_duplicate_similarity")
    where = html.escape(found["dataset"])
    return (
        f"<p>{found['pairs']} pairs of different photos ({found['within_day']} within the day, "
        f"{found['against_history']} against earlier days) in {found['groups']} groups, at cosine "
        f"similarity &ge; {found['min_similarity']:.3f} of their embeddings (chosen on re-encoded, resized "
        f"and slightly cropped copies: docs/BENCHMARKS.md, round 4). Pairs in "
        f'<a href="{where}"><code>{where}</code></a> (Parquet).</p>'
    )


def _label_audit_html(audit: dict | None) -> str:
    if audit is None:
        return _off("Suspicious labels", "label_margin")
    where = html.escape(audit["dataset"])
    text = (
        f"<p>{audit['flagged']} photos nearer to another label's centroid than to their own by a cosine "
        f'margin &ge; {audit["margin"]:.3f}. All in <a href="{where}"><code>{where}</code></a> (Parquet)'
    )
    if not audit["photos"]:
        return text + ".</p>"
    rows = "".join(
        "<tr>"
        + (f'<td><img alt="" src="{photo["thumbnail"]}"></td>' if photo.get("thumbnail") else "<td></td>")
        + "".join(f"<td>{html.escape(str(photo[key]))}</td>" for key in ("path", "label", "nearest_label"))
        + f"<td>{photo['margin']:.3f}</td></tr>"
        for photo in audit["photos"]
    )
    return (
        text
        + f"; the worst {len(audit['photos'])} here.</p><table><tr><th></th><th>path</th><th>label</th>"
        + f"<th>nearest label</th><th>margin</th></tr>{rows}</table>"
    )


def _drift_html(found: dict | None) -> str:
    if found is None:
        return _off("Drift", "drift_threshold")
    words = "".join(f"<p>{html.escape(sentence)}</p>" for sentence in drift_words(found))
    rows = "".join(
        f"<tr><td>{html.escape(row['label'])}</td><td>{row['count']}</td><td>{row['history_count']}</td>"
        f"<td>{'' if row['distance'] is None else format(row['distance'], '.4f')}</td>"
        f"<td>{html.escape(row['status'])}</td></tr>"
        for row in found["labels"]
    )
    return (
        f"{words}<table><tr><th>label</th><th>today</th><th>earlier days</th>"
        f"<th>cosine distance of the centroids</th><th>status</th></tr>{rows}</table>"
    )


def report_html(summary: dict) -> str:
    """The quality section of report.html, from the report's ``quality`` entry ("" when it has none)."""
    quality = summary.get("quality")
    if not quality:
        return ""
    days = quality.get("history_days") or []
    history = f"{len(days)} earlier day(s), {days[0]} to {days[-1]}" if days else "no earlier day"
    return (
        f"<h2>Data quality</h2><p>History: {html.escape(history)} of the same embedding.</p>"
        f"<h3>Near-duplicates</h3>{_near_duplicates_html(quality.get('near_duplicates'))}"
        f"<h3>Suspicious labels</h3>{_label_audit_html(quality.get('label_audit'))}"
        f"<h3>Drift between days</h3>{_drift_html(quality.get('drift'))}"
    )
