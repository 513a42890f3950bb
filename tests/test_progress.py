"""Progress lines of long steps: what a person watching `fruits run-local` or a task log reads."""

from __future__ import annotations

import threading

from fruits_spark.progress import Progress, progress_line


def test_progress_line_gives_count_rate_and_time_left():
    assert progress_line("features", 500, 2000, 10.0) == (
        "features: 500/2000 images (25 %), 50.0 img/s, ~30 s left"
    )
    assert progress_line("features", 2000, 2000, 40.0).endswith("finishing")
    assert progress_line("features", 0, 2000, 5.0).endswith("0.0 img/s, finishing")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_line_each_time_the_count_moves_timed_from_the_start():
    lines: list[str] = []
    clock, count = FakeClock(), [0]
    # an interval no test waits for: the ticks below are the only ones
    with Progress("features", 1000, lambda: count[0], interval=3600, echo=lines.append, clock=clock) as p:
        clock.now, count[0] = 110.0, 250
        p.tick()
        p.tick()  # unchanged: no second line
        clock.now, count[0] = 120.0, 500
        p.tick()
    assert lines == [
        "features: 250/1000 images (25 %), 25.0 img/s, ~30 s left",
        "features: 500/1000 images (50 %), 25.0 img/s, ~20 s left",
    ]


def test_the_thread_prints_while_in_the_block_and_nothing_after():
    lines: list[str] = []
    calls: list[int] = []
    three = threading.Event()

    def done() -> int:
        calls.append(1)
        if len(calls) == 3:
            three.set()
        return 100 * len(calls)  # moves at every look

    with Progress("features", 1000, done, interval=0.001, echo=lines.append, clock=FakeClock()):
        assert three.wait(timeout=60)
    looked = len(calls)
    assert len(lines) == looked >= 3  # every look at a moved count printed, before the block ended
    assert all(line.startswith("features: ") and "/1000 images" in line for line in lines)
    three.clear()
    assert not three.wait(timeout=0.05)
    assert len(calls) == looked  # the thread stopped with the block


def test_no_progress_for_an_empty_batch():
    lines: list[str] = []
    looked: list[int] = []
    with Progress("features", 0, lambda: looked.append(1) or 0, interval=0.001, echo=lines.append):
        pass
    assert lines == []
    assert looked == []
