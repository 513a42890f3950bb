"""Progress lines of long steps: what a person watching `fruits run-local` or a task log reads."""

from __future__ import annotations

import itertools
import time

from fruits_spark.progress import Progress, progress_line


def test_progress_line_gives_count_rate_and_time_left():
    assert progress_line("features", 500, 2000, 10.0) == (
        "features: 500/2000 images (25 %), 50.0 img/s, ~30 s left"
    )
    assert progress_line("features", 2000, 2000, 40.0).endswith("finishing")
    assert progress_line("features", 0, 2000, 5.0).endswith("0.0 img/s, finishing")


def test_progress_prints_while_the_work_runs_and_stops_after():
    lines: list[str] = []
    counter = itertools.count(0, 100)
    with Progress("features", 1000, lambda: next(counter), interval=0.05, echo=lines.append):
        time.sleep(0.4)
    printed = len(lines)
    time.sleep(0.2)
    assert printed >= 3
    assert len(lines) == printed  # nothing after the block
    assert all(line.startswith("features: ") and "/1000 images" in line for line in lines)
    assert lines[0] != lines[1]  # the count moves


def test_no_progress_for_an_empty_batch():
    lines: list[str] = []
    with Progress("features", 0, lambda: 0, interval=0.01, echo=lines.append):
        time.sleep(0.05)
    assert lines == []
