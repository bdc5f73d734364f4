"""The rollout pool with torch-engine actors on a tiny LM: an actor process killed mid-generation (its
chunk re-queued on a replacement synced to the current weights, the same tokens as without the kill),
the restart budget, live scaling and its refusals, and the pool found by name as `moon-ray rollout` does."""

from __future__ import annotations

import os
import signal
import time

import pytest
import ray
import torch

from moon_ray.infrastructure.resources import placement_limit
from moon_ray.rollout.base import SamplingConfig
from moon_ray.rollout.control import ControlError, control, create_pool, find_pool, list_pools, pool_name
from moon_ray.rollout.pool import RolloutPool
from moon_ray.weight_sync.object_store import ObjectStoreTransport
from tests.train.tiny_lm import write_tiny_lm


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_lm(tmp_path_factory.mktemp("tiny-lm"), scale=20.0)


def new_weights(tiny_dir, factor: float) -> list[tuple[str, torch.Tensor]]:
    """The tiny LM's layer weights scaled: generation with them differs from the base model's."""
    from safetensors.torch import load_file

    state = load_file(str(tiny_dir / "model.safetensors"))
    return [(k, v * factor) for k, v in state.items() if ".layers." in k and "norm" not in k]


def start_pool(tiny_dir, workers: int, **kwargs):
    return RolloutPool.remote("torch", {"model_dir": str(tiny_dir), "threads": 1}, workers, 0.25, **kwargs)


def tokens(groups) -> list[list[int]]:
    return [r.token_ids for g in groups for r in g]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_placement_limit_counts_node_by_node():
    nodes = [{"Alive": True, "Resources": {"CPU": 2.0, "moon_rollout": 3.0}},
             {"Alive": True, "Resources": {"CPU": 1.0}},
             {"Alive": False, "Resources": {"CPU": 64.0, "moon_rollout": 64.0}}]
    assert placement_limit({"CPU": 0.5, "GPU": 0.0}, nodes) == 6  # 4 + 2; the dead node holds nothing
    assert placement_limit({"CPU": 0.5, "moon_rollout": 1.0}, nodes) == 3  # only the first node has the resource
    assert placement_limit({"CPU": 0.0, "GPU": 0.0}, nodes) is None


def test_actor_killed_mid_generation_is_replaced_synced_and_its_prompts_requeued(ray_local, tiny_dir):
    pool = start_pool(tiny_dir, 2, max_restarts=1)
    try:
        ObjectStoreTransport().send(new_weights(tiny_dir, 1.5), [pool], version=3)
        torch.manual_seed(0)
        prompts = [torch.randn(5, 128) for _ in range(4)]
        sampling = SamplingConfig(n=1, max_tokens=256, temperature=1.0, seed=11)
        reference = ray.get(pool.generate.remote(prompts, sampling))  # same weights, seed, chunks: same tokens

        running = pool.generate.remote(prompts, sampling)
        deadline = time.monotonic() + 60
        while True:  # kill the first actor seen generating, from outside Ray: SIGKILL to its process
            busy = [a for a in ray.get(pool.status.remote())["actors"] if a["inflight_groups"] > 0]
            if busy or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert busy, "no actor was seen generating"
        victim = busy[0]["pid"]
        os.kill(victim, signal.SIGKILL)
        out = ray.get(running)

        status = ray.get(pool.status.remote())
        assert len(out) == len(prompts) and all(len(g) == 1 for g in out)
        assert all(r.version == 3 for g in out for r in g)  # the replacement loaded version 3 before it generated
        assert tokens(out) == tokens(reference)  # nothing lost, nothing generated with other weights
        assert status["restarts"] == 1 and status["requeued_groups"] == 2 and status["workers"] == 2
        assert victim not in [a["pid"] for a in status["actors"]] and not alive(victim)
        assert [e["event"] for e in status["events"]] == ["start", "restart"]

        # the budget (rollout.max_restarts=1) is spent: the next death fails the call, with the limit named
        os.kill(status["actors"][0]["pid"], signal.SIGKILL)
        with pytest.raises(Exception, match=r"restart budget \(rollout.max_restarts=1\) is spent"):
            ray.get(pool.generate.remote(prompts, sampling))
    finally:
        ray.get(pool.shutdown.remote())
        ray.kill(pool)


def test_scale_up_syncs_new_actors_and_refusals_change_nothing(ray_local, tiny_dir):
    pool = start_pool(tiny_dir, 1)
    try:
        ObjectStoreTransport().send(new_weights(tiny_dir, 1.5), [pool], version=7)
        prompts = [torch.randn(4, 128) for _ in range(2)]
        sampling = SamplingConfig(n=2, max_tokens=6, temperature=1.0, seed=5)
        limit = ray.get(pool.placement_limit.remote())
        assert limit == 8  # 2 CPUs / 0.25 per actor
        for bad, message in ((0, "at least 1 actor"), (-3, "at least 1 actor"), (limit + 1, f"at most {limit} rollout")):
            with pytest.raises(Exception, match=message):
                ray.get(pool.scale.remote(bad))
        assert ray.get(pool.status.remote())["workers"] == 1

        assert ray.get(pool.scale.remote(2)) == {"workers": 2, "before": 1, "limit": limit}
        status = ray.get(pool.status.remote())
        assert [a["version"] for a in status["actors"]] == [7, 7]  # the new actor loaded the current weights
        handles = ray.get(pool.worker_handles.remote())
        one, two = (ray.get(h.generate.remote(prompts, sampling)) for h in handles)
        assert tokens(one) == tokens(two) and all(r.version == 7 for g in two for r in g)

        assert ray.get(pool.scale.remote(1))["workers"] == 1
        assert len(ray.get(pool.generate.remote(prompts, sampling))) == 2
        assert [e["event"] for e in ray.get(pool.status.remote())["events"]] == ["start", "scale", "scale"]
    finally:
        ray.get(pool.shutdown.remote())
        ray.kill(pool)


def test_the_pool_is_found_by_its_run_key_and_refusals_are_control_errors(ray_local, tiny_dir):
    args = ("torch", {"model_dir": str(tiny_dir), "threads": 1}, 1, 0.25)
    pool = create_pool(args, {}, "moon-ray-test", key="job-a")
    try:
        assert {"key": "job-a", "name": pool_name("job-a"), "namespace": "moon-ray-test"} in list_pools()
        handle, key = find_pool("job-a")
        assert key == "job-a" and ray.get(handle.status.remote())["workers"] == 1
        assert control("status")["status"]["workers"] == 1  # the only pool on the cluster
        with pytest.raises(ControlError, match="no rollout pool for job 'job-b'"):
            control("status", "job-b")
        with pytest.raises(ControlError, match="at least 1 actor"):
            control("scale", "job-a", 0)
        with pytest.raises(ControlError, match="the cluster can place at most 8"):
            control("scale", "job-a", 9)
        assert control("scale", "job-a", 2)["status"]["workers"] == 2
    finally:
        ray.get(pool.shutdown.remote())
        ray.kill(pool)
    with pytest.raises(ControlError, match="no rollout pool runs"):
        for _ in range(50):  # the name is freed once the kill reaches the GCS
            if not list_pools():
                break
            time.sleep(0.1)
        find_pool()


def test_simulated_engine_costs_a_sleep_per_decoding_step():
    from moon_ray.rollout.simulated import SimulatedEngine

    engine = SimulatedEngine(token_s=0.01, batch_size=4)
    start = time.perf_counter()
    groups = engine.generate([torch.zeros(2, 8)] * 3, SamplingConfig(n=2, max_tokens=5, seed=1))
    assert time.perf_counter() - start >= 2 * 5 * 0.01  # ceil(3·2 / 4) = 2 steps of 5 tokens
    assert [len(g) for g in groups] == [2, 2, 2] and all(len(r.token_ids) == 5 == len(r.logprobs) for g in groups for r in g)
    assert all(r.meta["simulated"] and r.version == 0 for g in groups for r in g)
    engine.update_weights(iter([("w", torch.zeros(1))]), version=4)
    assert engine.version == 4 and engine.info()["busy_s"] >= 0.1
    with pytest.raises(ValueError, match="no tensors"):
        engine.update_weights(iter([]), version=5)
