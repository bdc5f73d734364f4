"""Asynchronous rollouts' bookkeeping without Ray: the look-ahead plan and its staleness requirement, the
pool's queue (oldest admissible first, requeue to the front), tickets, the age histogram, idle fractions,
and the config's refusals."""

from __future__ import annotations

import pytest

from moon_ray.config import ConfigError, load_config
from moon_ray.rollout.ahead import Chunk, ChunkQueue, LookAhead, Ticket, age_histogram, rollout_idle


def plan(**kw) -> LookAhead:
    args = dict(max_inflight=2, max_staleness=1, sync_interval=1, first_grpo_step=0, start_step=0, steps=10) | kw
    return LookAhead(**args)


def test_look_ahead_depth_is_bounded_by_staleness_and_the_run():
    assert plan().depth == 1 and plan().wanted(0) == [1]
    assert plan().wanted(0, {1}) == []  # already out
    assert plan(max_staleness=3).wanted(4) == [5, 6]  # max_inflight=2 bounds it
    assert plan(max_inflight=4, max_staleness=3).wanted(4, {5}) == [6, 7]
    assert plan(max_inflight=4, max_staleness=3).wanted(8) == [9]  # nothing at or beyond train.steps
    assert plan().wanted(9) == []
    assert plan(first_grpo_step=3).wanted(0) == [] and plan(first_grpo_step=3).wanted(2) == [3]  # SFT steps


def test_min_version_keeps_the_lag_within_bound_and_never_waits_for_a_sync_that_will_not_come():
    p = plan(max_staleness=2, max_inflight=2)
    assert [p.min_version(j) for j in range(5)] == [0, 0, 0, 1, 2]  # j - max_staleness, never below 0
    # syncs every 3 steps: batch 4 can only count on version 3 (synced after step 2), batch 6 on 6
    p = plan(max_staleness=1, sync_interval=3)
    assert [p.min_version(j) for j in (3, 4, 5, 6, 7)] == [2, 3, 3, 5, 6]
    assert all(p.min_version(j) <= p.synced_by(j) for j in range(20))
    # GRPO starts after 5 SFT steps with a sync at 5; a restart at 7 synced version 7
    p = plan(first_grpo_step=5, sync_interval=4)
    assert p.synced_by(5) == 5 and p.synced_by(7) == 5 and p.synced_by(8) == 8
    assert plan(start_step=7, sync_interval=4).synced_by(7) == 7
    with pytest.raises(ValueError, match="max_inflight"):
        plan(max_inflight=0)


def test_queue_gives_the_oldest_admissible_chunk_and_requeues_to_the_front():
    q = ChunkQueue()
    for t, need in [(0, 3), (1, 1), (2, 2)]:
        q.push(Chunk(ticket=t, index=0, payload=f"p{t}", min_version=need, size=2))
    assert len(q) == 3 and q.groups() == 6 and q.blocked(1) == 2
    assert q.take(0) is None  # nothing may be made with version 0
    assert q.take(2).ticket == 1  # ticket 0 waits for version 3; the oldest admissible is 1
    first = q.take(5)
    assert first.ticket == 0
    q.requeue(first)  # its actor died: it goes first again
    assert q.take(5).ticket == 0 and q.take(5).ticket == 2 and q.take(5) is None
    q.push(Chunk(4, 0, None))
    q.push(Chunk(5, 0, None))
    assert q.cancel({4}) == 1 and q.take(0).ticket == 5


def test_ticket_assembles_chunks_in_order_or_raises():
    t = Ticket(parts=2)
    t.results[1] = ["c", "d"]
    assert not t.done
    with pytest.raises(RuntimeError, match="1 of 2"):
        t.assemble()
    t.results[0] = ["a", "b"]
    assert t.done and t.assemble() == ["a", "b", "c", "d"]
    t = Ticket(parts=3, error=ValueError("actor budget spent"))
    assert t.done
    with pytest.raises(ValueError, match="budget"):
        t.assemble()
    assert Ticket(parts=0).assemble() == []


def test_age_histogram_and_idle_fraction():
    assert age_histogram([0, 1, 1, 3], max_staleness=1) == {"sample_age_0": 1.0, "sample_age_1": 2.0,
                                                          "sample_age_over": 1.0}
    before = {"uptime_s": 10.0, "busy_s": 4.0, "actors": 2}
    assert rollout_idle(before, {"uptime_s": 12.0, "busy_s": 7.0, "actors": 2}) == pytest.approx(0.25)
    assert rollout_idle(before, {"uptime_s": 10.0, "busy_s": 4.0, "actors": 2}) is None
    assert rollout_idle(before, {"uptime_s": 11.0, "busy_s": 9.0, "actors": 2}) == 0.0  # clamped


@pytest.mark.parametrize("override, message", [
    ("rollout.max_inflight=0", "max_inflight must be >= 1"),
    ("rollout.stale_weight_cap=0", "stale_weight_cap must be > 0"),
    ("rollout.max_staleness=-1", "max_staleness must be >= 0"),
])
def test_config_refuses_bad_values(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize("override, message", [
    ("rollout.max_staleness=0", "max_staleness must be >= 1"),
    ("rollout.stale_policy=drop", "would drop them all"),
    ("rollout.sync_backend=nccl", "sync_backend=object_store"),
])
def test_config_refuses_async_settings_that_cannot_work(override, message):
    extra = ["rollout.sync_mode=merged", "rollout.gpus_per_worker=1"] if "nccl" in override else []
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["rollout.asynchronous=true", override, *extra])
    load_config(None, ["rollout.asynchronous=true"])  # the defaults work
