"""Named phase timers: phases add up under their metric keys, exceptions still count, and no module
but the timer reads the clock for measurements."""

from __future__ import annotations

from pathlib import Path

import pytest

from moon_ray.infrastructure import timing


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(timing, "now", fake)
    return fake


def test_phases_add_up_under_their_keys(clock):
    timer = timing.PhaseTimer()
    with timer("gen"):
        clock.t += 2.0
    with timer("update"):
        clock.t += 5.0
    with timer("gen"):  # a phase entered twice adds up
        clock.t += 1.5
    assert timer.metrics() == {"time_gen": 3.5, "time_update": 5.0}
    assert timer.pop() == {"time_gen": 3.5, "time_update": 5.0} and timer.metrics() == {}


def test_timed_counts_a_failing_block_and_exposes_its_seconds(clock):
    into: dict = {}
    with pytest.raises(RuntimeError), timing.timed("load_s", into) as phase:
        clock.t += 0.25
        raise RuntimeError("boom")
    assert into == {"load_s": 0.25} and phase.seconds == 0.25
    timer = timing.PhaseTimer(prefix="", suffix="_s")
    with timer("put"):
        clock.t += 1.0
    assert timer.metrics() == {"put_s": 1.0}


def test_stopwatch_laps(clock):
    watch = timing.Stopwatch()
    clock.t += 3.0
    assert watch.lap() == 3.0
    clock.t += 1.0
    assert watch.lap() == 1.0 and watch.elapsed() == 4.0


def test_only_the_timer_reads_the_clock():
    root = Path(timing.__file__).resolve().parents[1]
    readers = [str(p.relative_to(root)) for p in root.rglob("*.py") if "perf_counter" in p.read_text()]
    assert readers == ["infrastructure/timing.py"]
