"""The pool's asynchronous path (submit / collect) with simulated-engine actors: batches queued and made in
order, the staleness requirement holding a chunk until the weights arrive, a sync that does not wait for a
busy actor (it loads before its next chunk), an actor killed mid-chunk (requeued on a synced replacement),
and the busy seconds the rollout idle fraction is computed from."""

from __future__ import annotations

import os
import signal
import time

import pytest
import ray
import torch

from moon_ray.rollout.base import SamplingConfig
from moon_ray.rollout.pool import RolloutPool
from moon_ray.weight_sync.object_store import ObjectStoreTransport

WEIGHTS = [("w", torch.zeros(4))]


@pytest.fixture(scope="module")
def pool(ray_local):
    """Two simulated actors: a chunk of P prompts × n samples costs ceil(P·n/8) × max_tokens × 10 ms."""
    handle = RolloutPool.remote("simulated", {"token_s": 0.01, "batch_size": 8}, 2, 0.25, max_restarts=2)
    ray.get(handle.status.remote())
    yield handle
    ray.get(handle.shutdown.remote())
    ray.kill(handle)


def sync(pool, version: int) -> dict:
    payload = ObjectStoreTransport().put(WEIGHTS)
    return ray.get(pool.update_weights.remote(payload, version))


def prompts(n: int) -> list[torch.Tensor]:
    return [torch.full((3, 8), float(i)) for i in range(n)]


def test_submitted_batches_come_back_whole_and_in_order(pool):
    sampling = SamplingConfig(n=2, max_tokens=4, seed=1)
    before = ray.get(pool.stats.remote())
    tickets = [ray.get(pool.submit.remote(prompts(n), sampling)) for n in (5, 3)]
    second, first = ray.get(pool.collect.remote(tickets[1])), ray.get(pool.collect.remote(tickets[0]))
    assert [len(g) for g in first] == [2] * 5 and [len(g) for g in second] == [2] * 3
    stats = ray.get(pool.stats.remote())
    assert stats["busy_s"] - before["busy_s"] >= 2 * 4 * 0.01  # at least two chunks of one decoding step
    assert stats["open_tickets"] == 0 and stats["queued_chunks"] == 0
    with pytest.raises(Exception, match="no rollout ticket"):
        ray.get(pool.collect.remote(tickets[0]))  # collected once only


def test_min_version_holds_a_batch_until_the_weights_arrive(pool):
    version = ray.get(pool.stats.remote())["version"]
    sampling = SamplingConfig(n=1, max_tokens=2, seed=2)
    ticket = ray.get(pool.submit.remote(prompts(2), sampling, version + 1))
    time.sleep(0.3)
    stats = ray.get(pool.stats.remote())
    assert stats["blocked_chunks"] == 2 and stats["running_chunks"] == 0
    with pytest.raises(Exception, match="not done within"):
        ray.get(pool.collect.remote(ticket, 0.2))
    sync(pool, version + 1)
    out = ray.get(pool.collect.remote(ticket))
    assert all(r.version == version + 1 for g in out for r in g)


def test_a_sync_loads_idle_actors_now_and_busy_ones_before_their_next_chunk(pool):
    version = ray.get(pool.stats.remote())["version"]
    slow = SamplingConfig(n=8, max_tokens=60, seed=3)  # 1 prompt × 8 samples: one step of 60 tokens, 0.6 s
    ticket = ray.get(pool.submit.remote(prompts(1), slow))  # one chunk: one actor busy, the other idle
    deadline = time.monotonic() + 30
    while ray.get(pool.stats.remote())["running_chunks"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    start = time.monotonic()
    info = sync(pool, version + 1)
    waited = time.monotonic() - start
    busy = ray.get(pool.collect.remote(ticket))
    assert info["version"] == version + 1 and waited < 0.5, waited  # the sync did not wait for the chunk
    assert {r.version for g in busy for r in g} == {version}  # made with the weights it started with
    after = ray.get(pool.collect.remote(ray.get(pool.submit.remote(prompts(4), SamplingConfig(n=1, max_tokens=2)))))
    assert {r.version for g in after for r in g} == {version + 1}  # both actors hold the new weights
    assert {a["version"] for a in ray.get(pool.status.remote())["actors"]} == {version + 1}


def test_actor_killed_mid_chunk_is_replaced_and_its_chunk_requeued(pool):
    version = ray.get(pool.stats.remote())["version"]
    status = ray.get(pool.status.remote())
    restarts, requeued = status["restarts"], status["requeued_groups"]
    sampling = SamplingConfig(n=8, max_tokens=100, seed=4)  # each chunk is 1 s
    ticket = ray.get(pool.submit.remote(prompts(2), sampling))
    deadline = time.monotonic() + 30
    while True:
        busy = [a for a in ray.get(pool.status.remote())["actors"] if a["inflight_groups"] > 0]
        if busy or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert busy, "no actor was seen generating"
    os.kill(busy[0]["pid"], signal.SIGKILL)
    out = ray.get(pool.collect.remote(ticket))
    status = ray.get(pool.status.remote())
    assert [len(g) for g in out] == [8, 8] and all(r.version == version for g in out for r in g)
    assert status["restarts"] == restarts + 1 and status["requeued_groups"] == requeued + 1
    assert status["workers"] == 2 and busy[0]["pid"] not in [a["pid"] for a in status["actors"]]


def test_abandon_drops_an_owners_open_tickets_and_nobody_elses(pool):
    """A restarted trainer rank abandons what its dead predecessor submitted ahead: queued chunks leave the
    queue, a running one is discarded when it ends; another owner's ticket is made as usual, and so is the
    owner's next one."""
    version = ray.get(pool.stats.remote())["version"]
    sampling = SamplingConfig(n=1, max_tokens=2, seed=5)
    held = [ray.get(pool.submit.remote(prompts(2), sampling, version + 1, "trainer-rank-1")) for _ in range(2)]
    other = ray.get(pool.submit.remote(prompts(2), sampling, version + 1, "trainer-rank-0"))
    assert ray.get(pool.stats.remote())["blocked_chunks"] == 6  # waiting for weights nobody has sent yet
    assert ray.get(pool.abandon.remote("trainer-rank-1")) == {"tickets": 2, "queued_chunks": 4}
    assert ray.get(pool.abandon.remote("trainer-rank-1")) == {"tickets": 0, "queued_chunks": 0}
    stats = ray.get(pool.stats.remote())
    assert (stats["blocked_chunks"], stats["open_tickets"]) == (2, 1)
    for ticket in held:
        with pytest.raises(Exception, match="no rollout ticket"):
            ray.get(pool.collect.remote(ticket, 0.1))
    sync(pool, version + 1)
    assert [len(g) for g in ray.get(pool.collect.remote(other))] == [1, 1]
    events = [e for e in ray.get(pool.status.remote()).get("events", []) if e["event"] == "abandon"]
    assert events and events[-1]["owner"] == "trainer-rank-1" and events[-1]["tickets"] == 2

    # a chunk running when its ticket is abandoned ends, lands nowhere, and the pool goes on
    slow = SamplingConfig(n=8, max_tokens=60, seed=6)  # one chunk of 0.6 s
    running = ray.get(pool.submit.remote(prompts(1), slow, 0, "trainer-rank-1"))
    deadline = time.monotonic() + 30
    while ray.get(pool.stats.remote())["running_chunks"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ray.get(pool.abandon.remote("trainer-rank-1")) == {"tickets": 1, "queued_chunks": 0}
    while ray.get(pool.stats.remote())["running_chunks"] and time.monotonic() < deadline:
        time.sleep(0.01)
    stats = ray.get(pool.stats.remote())
    assert (stats["running_chunks"], stats["open_tickets"], stats["queued_chunks"]) == (0, 0, 0)
    with pytest.raises(Exception, match="no rollout ticket"):
        ray.get(pool.collect.remote(running, 0.1))
    again = ray.get(pool.submit.remote(prompts(2), sampling, 0, "trainer-rank-1"))
    assert [len(g) for g in ray.get(pool.collect.remote(again))] == [1, 1]
