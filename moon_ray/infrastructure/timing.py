"""Named phase timers: the one place in moon_ray that reads the clock for measurements.

    timer = PhaseTimer()                 # one per step (or per job)
    with timer("gen"):
        rollouts = generate(...)
    with timer("update"):
        step(...)
    metrics |= timer.metrics()           # {"time_gen": 12.1, "time_update": 110.4}

A phase entered twice adds up. `timed(key, into)` is the same for a single phase written into a
plain dict under an exact key (`timed("embed_s", timings)`), and `Stopwatch` measures spans that are
not a block (throughput windows, totals of a job).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


def now() -> float:
    """A monotonic clock in seconds (for differences only)."""
    return time.perf_counter()


@dataclass
class Phase:
    """The running (then final) duration of one timed block."""

    start: float
    seconds: float = 0.0


@contextmanager
def timed(key: str, into: dict | None = None) -> Iterator[Phase]:
    """Time a block; add its seconds to `into[key]` (when given) on exit, exceptions included."""
    phase = Phase(start=now())
    try:
        yield phase
    finally:
        phase.seconds = now() - phase.start
        if into is not None:
            into[key] = into.get(key, 0.0) + phase.seconds


class PhaseTimer:
    """Named phases of one step or job: `with timer("gen"): …`, then `timer.metrics()`."""

    def __init__(self, prefix: str = "time_", suffix: str = ""):
        self.prefix, self.suffix = prefix, suffix
        self.totals: dict[str, float] = {}

    def __call__(self, name: str):
        return timed(f"{self.prefix}{name}{self.suffix}", self.totals)

    def metrics(self) -> dict[str, float]:
        """Seconds per phase under its metric key (prefix + name + suffix)."""
        return dict(self.totals)

    def pop(self) -> dict[str, float]:
        """`metrics()`, then start afresh (one timer reused across steps)."""
        out, self.totals = self.totals, {}
        return out


class Stopwatch:
    """Elapsed time since start, and laps (time since the previous lap)."""

    def __init__(self):
        self.start = self._last = now()

    def elapsed(self) -> float:
        return now() - self.start

    def lap(self) -> float:
        t = now()
        out, self._last = t - self._last, t
        return out
