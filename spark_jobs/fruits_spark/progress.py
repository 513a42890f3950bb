"""Progress of a long step, printed while Spark works: images done out of the total, img/s, time left.

Spark merges accumulators on the driver as tasks finish, so a background thread can read one while the
step's action runs. Lines start with ``<step>: `` so that ``fruits run-local`` echoes them and the Airflow
task log shows them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def progress_line(step: str, done: int, total: int, seconds: float) -> str:
    rate = done / seconds if seconds > 0 else 0.0
    left = f"~{(total - done) / rate:.0f} s left" if rate > 0 and done < total else "finishing"
    percent = 100 * done / total if total else 100.0
    return f"{step}: {done}/{total} images ({percent:.0f} %), {rate:.1f} img/s, {left}"


class Progress:
    """Prints ``progress_line`` every ``interval`` seconds while in the ``with`` block, when it changed."""

    def __init__(
        self,
        step: str,
        total: int,
        done: Callable[[], int],
        interval: float = 10.0,
        echo: Callable[[str], None] = print,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.step, self.total, self.done, self.interval, self.echo = step, total, done, interval, echo
        self.clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{step}-progress", daemon=True)
        self._started = 0.0
        self._last = -1

    def tick(self) -> None:
        """One look at the count: a line if it moved since the last one."""
        done = self.done()
        if done != self._last:
            self.echo(progress_line(self.step, done, self.total, self.clock() - self._started))
            self._last = done

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.tick()

    def __enter__(self) -> Progress:
        self._started = self.clock()
        if self.total:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
