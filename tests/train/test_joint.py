"""Joint training pieces with tiny models: rollout pool (torch engine), GRPO step, weight sync."""

from __future__ import annotations

import random

import pytest
import ray
import torch

from moon_ray.config import load_config
from moon_ray.rollout.ahead import split_evenly
from moon_ray.rollout.base import SamplingConfig
from moon_ray.rollout.pool import RolloutPool
from moon_ray.train.joint import JointTrainingModule, generate_phase, sync_phase
from moon_ray.train.task import make_batch
from moon_ray.train.worker import build_training, train_step
from moon_ray.weight_sync.base import merged_weights
from moon_ray.weight_sync.transport import create_transport
from tests.models.batches import rows
from tests.train.tiny_lm import write_tiny_lm


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_lm(tmp_path_factory.mktemp("tiny-lm"), scale=20.0)


def joint_cfg(tiny_dir, *extra):
    return load_config(None, [
        f"model.lm.path={tiny_dir}", "model.vision.name=tiny", "model.vision.pretrained=false", "model.embed_dim=32",
        "model.matryoshka=[16,32]", "model.lm.embed_layers=2", "train.batch_size=4", "train.warmup_steps=0", "train.lr=0.01",
        "rollout.enabled=true", "rollout.engine=torch", "rollout.group_size=3", "rollout.max_tokens=6",
        "rollout.cpus_per_worker=0.25", "rollout.num_workers=2", "serve.index_after_export=false", *extra,
    ])


@pytest.fixture(scope="module")
def diverse_dir(tmp_path_factory):
    """Flatter next-token distributions: sampled traces differ, so GRPO advantages are non-zero."""
    return write_tiny_lm(tmp_path_factory.mktemp("tiny-lm-diverse"), seed=1, scale=2.0)


@pytest.fixture(scope="module")
def pool(ray_local, tiny_dir):
    handle = RolloutPool.remote("torch", {"model_dir": str(tiny_dir), "threads": 1}, 2, 0.25)
    yield handle
    ray.get(handle.shutdown.remote())


def test_split_evenly():
    assert [list(r) for r in split_evenly(5, 2)] == [[0, 1, 2], [3, 4]]
    assert [len(r) for r in split_evenly(2, 4)] == [1, 1]


def joint_step_inputs(model_dir, *extra):
    """What one joint step takes: a joint config on model_dir (8-token traces), its model, temperature,
    optimizer and schedule, a batch of 4 rows, and that batch's rollouts from a fresh one-worker pool."""
    cfg = joint_cfg(model_dir, "rollout.max_tokens=8", *extra)
    model, temperature, opt, sched = build_training(cfg, torch.device("cpu"))
    batch = make_batch(rows(4), random.Random(0), 224)
    pool = RolloutPool.remote("torch", {"model_dir": str(model_dir), "threads": 1}, 1, 0.25)
    try:
        rollouts = generate_phase(model, pool, batch, cfg, trainer_version=0, seed=1)
    finally:
        ray.get(pool.shutdown.remote())
    return cfg, (model, temperature, opt, sched), batch, rollouts


def test_joint_step_generates_rewards_and_updates(ray_local, diverse_dir):
    cfg, (model, temperature, opt, sched), batch, rollouts = joint_step_inputs(diverse_dir)
    assert [len(g) for g in rollouts.traces] == [3, 3, 3, 3]
    assert all(r.version == 0 and len(r.logprobs) == len(r.token_ids) > 0 for g in rollouts.traces for r in g)
    texts = [[r.text for r in g] for g in rollouts.traces]
    assert any(len(set(g)) > 1 for g in texts), texts  # diverse groups: non-zero advantages
    module = JointTrainingModule(model, temperature, cfg)
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    metrics = train_step(module, opt, sched, batch, cfg, rollouts)
    for key in ("grpo_loss", "text_loss", "reward_mean", "reward_std", "grpo_kl", "trace_len", "version_lag", "time_reward"):
        assert key in metrics, key
    assert metrics["kept_rollouts"] == 1.0 and metrics["version_lag"] == 0.0
    after = dict(model.named_parameters())
    # adapters of layer 3 get gradient only from GRPO (the embedding pools after the first 2 layers)
    upper = [n for n in lora_before if ".layers.3." in n]
    assert upper and any(not torch.equal(lora_before[n], after[n]) for n in upper)


def test_sync_changes_actor_outputs_and_versions(pool, tiny_dir):
    prompts = [torch.randn(5, 128), torch.randn(7, 128)]
    sampling = SamplingConfig(n=2, max_tokens=6, temperature=1.0, seed=7)
    before = ray.get(pool.generate.remote(prompts, sampling))
    model = perturbed_model(tiny_dir)  # adapters far from zero, so the merged weights differ
    info = sync_phase(model, pool, 5, create_transport("object_store", mode="merged"))
    after = ray.get(pool.generate.remote(prompts, sampling))
    assert info["actors"] == 2 and all(r.version == 5 for g in after for r in g)
    assert [r.token_ids for g in before for r in g] != [r.token_ids for g in after for r in g]
    # adapter-only sync gives the actors the same weights as the merged one
    sync_phase(model, pool, 6, create_transport("object_store", mode="adapter"))
    again = ray.get(pool.generate.remote(prompts, sampling))
    assert [r.token_ids for g in again for r in g] == [r.token_ids for g in after for r in g]


def test_pool_resize_and_restart(pool):
    prompts = [torch.randn(4, 128) for _ in range(3)]
    sampling = SamplingConfig(n=1, max_tokens=3, seed=0)
    assert ray.get(pool.resize.remote(3)) == 3
    victim = ray.get(pool.worker_handles.remote())[0]
    ray.kill(victim)
    out = ray.get(pool.generate.remote(prompts, sampling))
    assert len(out) == 3
    status = ray.get(pool.status.remote())
    assert status["restarts"] == 1 and status["workers"] == 3
    assert ray.get(pool.resize.remote(2)) == 2


def test_joint_training_on_ray_train(real_slice, tiny_dir, tmp_path):
    """A few joint steps on Ray Train (2 DDP workers) with torch-engine rollout actors on a real slice."""
    import json

    from moon_ray.train.driver import run_train

    cfg = joint_cfg(tiny_dir, f"data.output_dir={real_slice}", f"train.output_dir={tmp_path}", "train.steps=2",
                    "train.log_every=1", "train.checkpoint_every=2", "train.cpus_per_worker=0.5", "ray.progress=false",
                    "rollout.num_workers=1", "rollout.group_size=2", "rollout.max_tokens=4")
    summary = run_train(cfg)
    history = summary["history"]
    assert [h["step"] for h in history] == [1, 2]
    for key in ("reward_mean", "grpo_loss", "time_gen", "time_update", "time_sync", "version_lag", "trace_len"):
        assert key in history[-1], key
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 2
    assert (tmp_path / "export" / "trainable.safetensors").exists()


def test_async_rollout_side_generates_ahead_within_the_staleness_bound(ray_local, diverse_dir):
    """The worker loop's calls with rollout.asynchronous=true on one rank (rank 0: it syncs), a torch-engine
    actor and the tiny LM: batch j is submitted at step j-1 and made with version j-1 while step j-1 updates,
    so from the second step on every sample is exactly one version old, importance-weighted and kept."""
    from moon_ray.infrastructure.timing import PhaseTimer
    from moon_ray.train.joint import AsyncRolloutSide, rollout_side

    cfg = joint_cfg(diverse_dir, "rollout.asynchronous=true", "rollout.max_staleness=1", "rollout.max_inflight=2",
                    "rollout.group_size=2", "rollout.max_tokens=4", "rollout.kl_coef=0", "rollout.bank_size=0",
                    "rollout.grpo_minibatches=1", "train.steps=4")
    pool = RolloutPool.remote("torch", {"model_dir": str(diverse_dir), "threads": 1}, 1, 0.25)
    try:
        model, temperature, opt, sched = build_training(cfg, torch.device("cpu"))
        side = rollout_side(pool, cfg, rank=0)
        assert isinstance(side, AsyncRolloutSide)
        side.start(model, 0, False)
        rng, made = random.Random(0), []
        source = ((made.append(i) or rows(4), make_batch(rows(4), rng, 224)) for i in range(100))
        stream, module, history = side.stream(source), JointTrainingModule(model, temperature, cfg), []
        for step in range(cfg.train.steps):
            data, batch = next(stream)
            timer = PhaseTimer()
            extra = side.generate(model, batch, step, timer, data)
            metrics = train_step(module, opt, sched, batch, cfg, *extra, timer=timer)
            history.append(metrics | side.after_step(model, step + 1, timer) | timer.metrics())
    finally:
        ray.get(pool.shutdown.remote())
    assert [h["version_lag_max"] for h in history] == [0.0, 1.0, 1.0, 1.0]
    assert [h["sample_age_1"] for h in history] == [0.0, 8.0, 8.0, 8.0]  # 4 products × 2 samples
    assert all(h["sample_age_over"] == 0.0 and h["kept_rollouts"] == 1.0 for h in history)
    assert [h["queue_depth"] for h in history] == [1.0, 1.0, 1.0, 0.0]  # nothing submitted beyond train.steps
    assert made == [0, 1, 2, 3] and not side.ahead and not side.tickets  # each batch read once, in order
    assert all("time_wait" in h and "rollout_idle" in h for h in history[1:])
    assert all(h["synced_version"] == i + 1 for i, h in enumerate(history))


def test_async_joint_training_on_ray_train(real_slice, tiny_dir, tmp_path):
    """rollout.asynchronous=true on Ray Train (2 DDP workers, one torch-engine actor): each rank generates its
    next batch during the update, so later steps train on rollouts one version old (importance-weighted),
    never older than rollout.max_staleness, and the run ends at its step count."""
    from moon_ray.train.driver import run_train

    cfg = joint_cfg(tiny_dir, f"data.output_dir={real_slice}", f"train.output_dir={tmp_path}", "train.steps=3",
                    "train.log_every=1", "train.checkpoint_every=3", "train.cpus_per_worker=0.5", "ray.progress=false",
                    "rollout.num_workers=1", "rollout.group_size=2", "rollout.max_tokens=4",
                    "rollout.asynchronous=true", "rollout.max_inflight=2", "rollout.max_staleness=1")
    history = run_train(cfg)["history"]
    assert [h["step"] for h in history] == [1, 2, 3]
    assert history[0]["version_lag_max"] == 0.0  # the first batch is generated when the run starts
    assert max(h["version_lag_max"] for h in history) == 1.0  # ahead by one step, and never more
    assert all(h["sample_age_over"] == 0.0 for h in history)  # nothing beyond the bound, nothing dropped
    assert history[-1]["sample_age_1"] > 0 and history[-1]["kept_rollouts"] == 1.0
    for key in ("trainer_idle", "rollout_idle", "queue_depth", "time_wait", "grpo_loss"):
        assert key in history[-1], key
    assert 0.0 <= history[-1]["trainer_idle"] <= 1.0 and 0.0 <= history[-1]["rollout_idle"] <= 1.0


def test_adapter_sync_into_unmerged_lora_matches_merged_weights(tiny_dir):
    """A torch engine holding PEFT adapters takes the A/B matrices as they are (no merge) and computes
    what an engine loaded with the merged weights computes; a later merged sync zeroes its adapters."""
    from moon_ray.rollout.torch_engine import TorchEngine
    from moon_ray.weight_sync.base import adapter_weights, merged_weights

    model = perturbed_model(tiny_dir)
    lora = joint_cfg(tiny_dir).model.lm.lora
    live = TorchEngine(str(tiny_dir), threads=1, lora={"r": lora.r, "alpha": lora.alpha, "targets": lora.targets})
    merged = TorchEngine(str(tiny_dir), threads=1)
    x = torch.randn(2, 5, 128)
    base = live.model(inputs_embeds=x).logits
    live.update_adapter(adapter_weights(model.lm), version=3)
    merged.update_weights(merged_weights(model.lm), version=3)
    want = merged.model(inputs_embeds=x).logits
    assert not torch.allclose(base, want, atol=1e-3)
    assert torch.allclose(live.model(inputs_embeds=x).logits, want, atol=1e-4) and live.version == 3
    live.update_weights(merged_weights(model.lm), version=4)  # merged into the base matrices, adapters zeroed
    assert torch.allclose(live.model(inputs_embeds=x).logits, want, atol=1e-4)
    with pytest.raises(KeyError, match="no LoRA layer"):
        live.update_adapter(iter([("model.nope.weight::A", torch.zeros(1))]), version=5)


class Sender:
    """Rank 0 of a collective group, as a trainer would be (a Ray actor holding the PEFT LM)."""

    def __init__(self, lm):
        self.lm = lm

    def sync(self, actors: list, version: int, backend: str, group: str) -> dict:
        from moon_ray.weight_sync.collective import CollectiveTransport

        if backend == "nccl":
            self.lm.cuda()
        return CollectiveTransport(backend=backend, prefix=group).send(merged_weights(self.lm), actors, version)

    def sync_pool(self, pool, versions: list[int], backend: str) -> tuple[list[dict], int]:
        """The joint loop's sync_phase over a collective group, once per version; and the groups made."""
        from types import SimpleNamespace

        from moon_ray.train import joint

        transport = create_transport(backend)
        infos = [joint.sync_phase(SimpleNamespace(lm=self.lm), pool, v, transport) for v in versions]
        return infos, transport.groups_made


def perturbed_model(tiny_dir):
    """The joint model with its LoRA B matrices far from zero, so merged weights differ from the base."""
    model, *_ = build_training(joint_cfg(tiny_dir), torch.device("cpu"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    return model


def collective_matches_object_store(tiny_dir, backend: str, gpus: float) -> None:
    """Two fresh rollout actors: one synced through the object store, one through the collective group;
    both then generate the same tokens with the same seed, and both report the new version."""
    from moon_ray.rollout.pool import RolloutWorker

    model = perturbed_model(tiny_dir)
    worker = ray.remote(RolloutWorker).options(num_cpus=0.25, num_gpus=gpus)
    kwargs = {"model_dir": str(tiny_dir), "threads": 1}
    reference, received = worker.remote("torch", kwargs), worker.remote("torch", kwargs)
    sender = ray.remote(Sender).options(num_cpus=0.25, num_gpus=gpus).remote(model.lm)
    try:
        prompts = [torch.randn(5, 128), torch.randn(7, 128)]
        sampling = SamplingConfig(n=2, max_tokens=6, temperature=1.0, seed=7)
        before = ray.get(received.generate.remote(prompts, sampling))
        create_transport("object_store").send(merged_weights(model.lm), [reference], version=4)
        info = ray.get(sender.sync.remote([received], 4, backend, f"test-{backend}"))
        assert info["actor_versions"] == [4] and info["tensors"] > 0 and info["backend"] == backend
        want = ray.get(reference.generate.remote(prompts, sampling))
        got = ray.get(received.generate.remote(prompts, sampling))
        tokens = lambda groups: [r.token_ids for g in groups for r in g]  # noqa: E731
        assert tokens(got) == tokens(want) != tokens(before)
        assert all(r.version == 4 for g in got for r in g)
    finally:
        for actor in (reference, received, sender):
            ray.kill(actor)


def test_collective_weight_sync_over_gloo_matches_object_store(ray_local, tiny_dir):
    """The collective path (weight_sync/collective.py), run here over gloo between CPU actors."""
    collective_matches_object_store(tiny_dir, "gloo", gpus=0)


def test_joint_sync_phase_over_a_collective_group(ray_local, tiny_dir):
    """sync_phase with a collective backend: the group is made once for the pool's actors and reused;
    the actors generate with the synced version."""
    pool = RolloutPool.remote("torch", {"model_dir": str(tiny_dir), "threads": 1}, 1, 0.25)
    sender = ray.remote(Sender).options(num_cpus=0.25).remote(perturbed_model(tiny_dir).lm)
    try:
        infos, groups = ray.get(sender.sync_pool.remote(pool, [4, 5], "gloo"))
        assert groups == 1 and [i["synced_version"] for i in infos] == [4, 5] and infos[0]["actors"] == 1
        out = ray.get(pool.generate.remote([torch.randn(5, 128)], SamplingConfig(n=2, max_tokens=4, seed=3)))
        assert all(r.version == 5 for g in out for r in g)
    finally:
        ray.get(pool.shutdown.remote())
        ray.kill(sender)


@pytest.mark.gpu
def test_collective_weight_sync_over_nccl_matches_object_store(ray_local, tiny_dir):
    """The same over NCCL: rank 0 and the actor each on their own GPU (NCCL needs one GPU per rank)."""
    if torch.cuda.device_count() < 2:
        pytest.skip("NCCL weight sync needs two GPUs (one per rank)")
    collective_matches_object_store(tiny_dir, "nccl", gpus=1)
