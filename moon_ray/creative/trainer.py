"""`moon-ray creative train`: the Ray Train loop of both stages of the creative selector (Reason-to-Select).

    moon-ray creative train --config pipelines/configs/creative.yaml                       # stage sft
    moon-ray creative train --config pipelines/configs/creative.yaml creative.train.stage=grpo \\
        creative.train.init_from=outputs/creative/sft creative.train.output_dir=outputs/creative/grpo

`TorchTrainer` with creative.train.num_workers DDP ranks (gloo on CPU, NCCL on GPU). Each rank builds the
selector (stage sft: fresh, seeded; stage grpo: the SFT selector in creative.train.init_from), reads its
shard of the train pairs through Ray Data and steps the way joint training's worker loop does
(moon_ray/train/worker.py): the stage's side generates what the step needs (sft.py `SftSide`: nothing;
grpo.py `GrpoSide`: answers from the rollout pool, reference log-probs) -> `train.worker.train_step`
(prepare, the optimizer passes, metrics merged over passes, phase times) -> the side's after-step (grpo:
weight sync to the pool). Pairs are shown with A and B exchanged with probability creative.train.swap_prob.

Rank 0 reports the mean metrics every creative.train.log_every steps and, every
creative.train.checkpoint_every steps and at the end, a Ray Train checkpoint: creative.safetensors,
creative.json (model config, stage, steps, where it started), history.json (one row per report: the
loss; for grpo the reward curve, accuracy, KL, clip fraction), the AdamW and LR-scheduler state and
creative_state.json (the step). A worker restart continues from the latest one (ray.train.get_checkpoint);
a new run in the same output_dir resumes it (creative.train.resume; a run with more steps continues a
finished one; stage grpo's KL reference stays the SFT selector). The driver copies the final selector to
creative.train.output_dir with summary.json. Stage grpo starts the
rollout pool (the rollout section: engine, actors, GRPO settings) before the trainers and stops it after.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from moon_ray.config import Config, ConfigError, ModelConfig, build, to_dict, with_absolute_paths
from moon_ray.creative.model import META, WEIGHTS, CreativeSelector
from moon_ray.creative.sft import SftSide, build_selector, train_dataset, training_view
from moon_ray.infrastructure.timing import PhaseTimer, Stopwatch

HISTORY_KEYS = ("step", "loss", "reward_mean", "accuracy", "well_formed", "reward_group_std", "grpo_kl",
                "grpo_clip_frac")


def start_selector(cfg: Config, device) -> CreativeSelector:
    """Stage sft: a fresh selector (build_selector); stage grpo: the SFT selector it continues."""
    if cfg.creative.train.stage == "grpo":
        return CreativeSelector.load(cfg.creative.train.init_from).to(device)
    return build_selector(cfg, device)


def stage_side(cfg: Config, pool, rank: int):
    if cfg.creative.train.stage == "grpo":
        from moon_ray.creative.grpo import GrpoSide

        return GrpoSide(pool, cfg, rank)
    return SftSide()


def step_config(cfg: Config) -> Config:
    """The config `train.worker.train_step` reads (train.grad_clip) carrying creative.train's clip."""
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, grad_clip=cfg.creative.train.grad_clip))


def creative_loop_per_worker(config: dict) -> None:
    import ray.train
    from ray.train.torch import get_device, prepare_model

    from moon_ray.train.worker import lr_lambda, train_step

    cfg: Config = build(Config, config["cfg"])
    t = cfg.creative.train
    torch.set_num_threads(max(1, int(t.cpus_per_worker)))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    selector = start_selector(cfg, get_device()).train()
    params = [p for p in selector.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(t.warmup_steps, t.steps))
    side = stage_side(cfg, config.get("rollout_pool"), rank)
    module = side.step_module(selector)
    if world > 1:
        module = prepare_model(module, move_to_device=False, parallel_strategy_kwargs={"find_unused_parameters": True})
    side.reference(selector)  # stage grpo's KL reference: the SFT selector, also on a resumed run
    step, history = restore(config.get("resume_from"), selector, optimizer, scheduler)
    side.start(selector, step)
    shard, step_cfg = ray.train.get_dataset_shard("train"), step_config(cfg)
    rng, window, clock = random.Random(t.seed * 1000 + rank + 7919 * step), [], Stopwatch()
    while step < t.steps:
        for rows in shard.iter_batches(batch_size=t.batch_size, batch_format="numpy", drop_last=True,
                                       local_shuffle_buffer_size=4 * t.batch_size, local_shuffle_seed=t.seed + rank + step):
            batch, timer = training_view(rows, rng, t.swap_prob), PhaseTimer()
            extra = side.generate(selector, batch, step, timer)
            metrics = train_step(module, optimizer, scheduler, batch, step_cfg, *extra, timer=timer)
            step += 1
            metrics |= side.after_step(selector, step, timer)
            window.append(metrics | timer.metrics())
            save, last = step % t.checkpoint_every == 0, step >= t.steps
            if step % t.log_every == 0 or save or last:
                history.append(_mean(window) | {"step": step, "pairs_per_s": len(window) * t.batch_size * world / clock.lap()})
                window = []
                _report(history, step, selector, optimizer, scheduler, side.stage, t, rank, save or last)
            if last:
                break


STATE = "creative_state.json"


def _report(history, step, selector, optimizer, scheduler, stage, t, rank, save: bool) -> None:
    """Report the newest history row; with a checkpoint (rank 0 writes it) when `save`: the selector as
    stage output (creative.safetensors, creative.json, history.json) plus what a resume needs (the
    AdamW and LR-scheduler state, creative_state.json with the step)."""
    import ray.train

    from moon_ray.train.checkpoint import save_state

    if not save:
        ray.train.report(history[-1])
        return
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            selector.save(tmp, {"stage": stage, "steps": step, "seed": t.seed, "init_from": t.init_from,
                                "init_projector_from": t.init_projector_from})
            (Path(tmp) / "history.json").write_text(json.dumps(history, indent=2))
            save_state(Path(tmp), {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()})
            (Path(tmp) / STATE).write_text(json.dumps({"step": step}))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(history[-1], checkpoint=checkpoint, checkpoint_dir_name=f"checkpoint-{step:06d}")


def restore(resume_from: str | None, selector, optimizer, scheduler) -> tuple[int, list[dict]]:
    """(step, history) to continue from: Ray Train's checkpoint after a worker restart, else `resume_from`
    (the driver's latest checkpoint of an earlier run), else (0, [])."""
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            return load_resumable(Path(d), selector, optimizer, scheduler)
    if resume_from:
        return load_resumable(Path(resume_from), selector, optimizer, scheduler)
    return 0, []


def load_resumable(path: Path, selector, optimizer, scheduler) -> tuple[int, list[dict]]:
    from moon_ray.train.checkpoint import load_state

    selector.load_trainable(path)
    state = load_state(path)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(json.loads((path / STATE).read_text())["step"]), json.loads((path / "history.json").read_text())


def latest_resumable(root: Path) -> Path | None:
    """The checkpoint under `root` (a run's Ray Train storage) with the highest step, or None."""
    from moon_ray.train.checkpoint import latest_checkpoint

    return latest_checkpoint(root, STATE)


def _mean(rows: list[dict]) -> dict:
    keys = {k for r in rows for k in r if isinstance(r[k], (int, float))}
    return {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}


def grpo_config(cfg: Config) -> Config:
    """Stage grpo's config: checked against the SFT selector it starts from, whose model config it takes
    (the trainers load that selector; the rollout actors must hold the same base LM)."""
    t = cfg.creative.train
    start = Path(t.init_from)
    if not (start / WEIGHTS).is_file() or not (start / META).is_file():
        raise ConfigError(f"creative.train.init_from: {start} is not a creative selector (needs {WEIGHTS} and "
                          f"{META}; run stage sft first)")
    if start.resolve() == Path(t.output_dir).resolve():
        raise ConfigError(f"creative.train.output_dir ({t.output_dir}) is the SFT selector grpo starts from; "
                          "write stage grpo elsewhere (e.g. outputs/creative/grpo)")
    model = build(ModelConfig, json.loads((start / META).read_text())["model"])
    if model.lm.tiny:
        raise ConfigError(f"{start} was trained on a random in-memory LM (model.lm.tiny): the rollout actors "
                          "cannot load it; stage grpo needs an LM on disk (model.lm.path, or the packaged SmolLM2)")
    return dataclasses.replace(cfg, model=model)


def _fit(cfg: Config, resume_from: Path | None) -> Path:
    """Run the Ray Train loop (stage grpo: beside its rollout pool, stopped after); returns the directory of
    the final checkpoint, which holds the selector, under creative.train.output_dir/ray (kept)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    t, out, pool = cfg.creative.train, Path(cfg.creative.train.output_dir), None
    if t.stage == "grpo":
        from moon_ray.train.driver import start_rollout_pool

        pool = start_rollout_pool(cfg)
    try:
        trainer = TorchTrainer(
            creative_loop_per_worker,
            train_loop_config={"cfg": to_dict(cfg), "rollout_pool": pool,
                               "resume_from": str(resume_from) if resume_from else None},
            scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                         resources_per_worker={"CPU": t.cpus_per_worker}),
            # resume=false: a run of its own (Ray Train would otherwise reload the old run's checkpoints)
            run_config=RunConfig(name="run" if t.resume else f"run-{time.strftime('%Y%m%d-%H%M%S')}",
                                 storage_path=str(out / "ray"), checkpoint_config=CheckpointConfig(num_to_keep=2),
                                 failure_config=FailureConfig(max_failures=t.max_failures)),
            datasets={"train": train_dataset(cfg)},
        )
        result = trainer.fit()
    finally:
        if pool is not None:
            import ray

            ray.get(pool.shutdown.remote())
            ray.kill(pool)
    if result.checkpoint is None:
        raise RuntimeError(f"creative {t.stage} finished without a checkpoint under {out / 'ray'}")
    return Path(result.checkpoint.path)


def run_train(cfg: Config) -> dict:
    """The stage in creative.train.stage; returns a summary (also creative.train.output_dir/summary.json).
    Resumes from the latest checkpoint under creative.train.output_dir/ray (creative.train.resume)."""
    from moon_ray.infrastructure.runtime import init_ray

    cfg = with_absolute_paths(cfg, ["creative.pairs.output_dir", "creative.train.output_dir",
                                    "creative.train.init_projector_from", "creative.train.init_from"])
    t, clock = cfg.creative.train, Stopwatch()
    if t.init_projector_from and not (Path(t.init_projector_from) / "trainable.safetensors").is_file():
        raise FileNotFoundError(f"creative.train.init_projector_from: {t.init_projector_from} has no trainable.safetensors")
    if t.stage == "grpo":
        cfg = grpo_config(cfg)
    init_ray(cfg.ray)
    out = Path(t.output_dir)
    resume_from = latest_resumable(out / "ray") if t.resume else None
    start = int(json.loads((resume_from / STATE).read_text())["step"]) if resume_from else 0
    final = resume_from if start >= t.steps else _fit(cfg, resume_from)
    for name in (WEIGHTS, META, "history.json"):
        shutil.copy2(final / name, out / name)
    history = json.loads((out / "history.json").read_text())
    steps = int(json.loads((final / STATE).read_text())["step"])  # above t.steps when it resumed a longer run
    summary = {"stage": t.stage, "steps": steps, "resumed_from_step": start, "output_dir": str(out),
               "init_from": t.init_from, "history": history, "seconds": round(clock.elapsed(), 1)}
    if t.stage == "grpo":
        r = cfg.rollout
        summary["reward_curve"] = [{k: h[k] for k in HISTORY_KEYS if k in h} for h in history]
        summary["rollout"] = {"engine": r.engine, "actors": r.num_workers, "group_size": r.group_size,
                              "temperature": r.temperature, "kl_coef": r.kl_coef, "clip_eps": r.clip_eps,
                              "grpo_epochs": r.grpo_epochs, "grpo_minibatches": r.grpo_minibatches,
                              "sync": f"{r.sync_backend}/{r.sync_mode} every {r.sync_interval}"}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
