"""The Ray Train worker loop: contrastive training of the MOON embedder (one DDP rank).

Each rank: build the model (same seed everywhere), wrap it with DDP (gloo on CPU, NCCL on GPU), read
its shard of the train split, and step: make_batch -> training_forward -> sum of *_loss -> AdamW.
Batches come from `batch_stream` through the rollout side's `stream` (asynchronous rollouts read it ahead
to submit the next batches' prompts early); `trainer_idle` is the step's time waiting for rollouts.
Rank 0 writes TensorBoard events, feeds the driver's progress bar, and saves checkpoints that every
rank reports to Ray Train together.
"""

from __future__ import annotations

import math
import random
import tempfile
from functools import partial
from pathlib import Path

import torch

from moon_ray.config import Config, build
from moon_ray.infrastructure.timing import PhaseTimer, Stopwatch
from moon_ray.models.temperature import Temperature
from moon_ray.models.trainable import load_trainable, unwrap
from moon_ray.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from moon_ray.train.joint import merge_pass_metrics, rollout_side
from moon_ray.train.task import make_batch

# season, usage, material: read by joint training only (rationales, beyond-the-title reward queries)
BATCH_COLUMNS = ["id", "title", "image", "gender", "colour", "article_type", "brand", "season", "usage", "material"]


def lr_lambda(warmup: int, total: int, floor: float = 0.1):
    """Linear warm-up to 1, then cosine decay to `floor` at `total`."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def build_training(cfg: Config, device: torch.device):
    """(model, temperature, optimizer, scheduler) on `device`, not yet DDP-wrapped.

    `train.precision` picks the compute dtype (moon_ray/models/precision.py): in bf16 the frozen
    weights are stored in bf16 while the trainable ones, and so AdamW and its state, stay fp32."""
    from moon_ray.models.factory import build_embedder
    from moon_ray.models.precision import compute_dtype

    torch.manual_seed(cfg.train.seed)
    # .train(): from_pretrained leaves the LM's layers in eval mode, which also turns checkpointing off.
    model = build_embedder(cfg).to(device).train()  # model.arch: moon or the dual-encoder baseline
    model.set_precision(compute_dtype(cfg.train.precision, device))
    if cfg.train.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    temperature = Temperature(cfg.train.temperature, cfg.train.learn_temperature).to(device)
    params = [p for p in model.parameters() if p.requires_grad] + [p for p in temperature.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.train.warmup_steps, cfg.train.steps))
    return model, temperature, optimizer, scheduler


def train_step(step_module, optimizer, scheduler, batch, cfg: Config, *extra, timer: PhaseTimer | None = None) -> dict:
    """One optimizer step; `step_module` is a (possibly DDP-wrapped) Training/JointTrainingModule.

    Phases: reward (the module's `prepare`: joint training scores its rollouts, no grad) -> update
    (forward, backward, optimizer step); their seconds come back as time_reward / time_update.
    Forward and backward run inside the model's `compute_weights` block: in bf16 the trainable
    weights are cast once for the step (not per embedding pass), and recomputed activations see
    the same copies; the optimizer then steps the fp32 weights."""
    timer = timer or PhaseTimer()
    inner = unwrap(step_module)
    if extra:
        with timer("reward"), inner.model.compute_weights():
            extra = inner.prepare(batch, *extra)
    passes = inner.update_passes(*extra) if hasattr(inner, "update_passes") else 1  # GRPO: several per batch
    with timer("update"):
        per_pass = []
        for part in range(passes):
            with inner.model.compute_weights():
                losses_k, metrics = step_module(batch, *extra, *((part,) if part else ()))
                total_k = sum(v for k, v in losses_k.items() if k.endswith("_loss"))
                optimizer.zero_grad(set_to_none=True)
                total_k.backward()
            if cfg.train.grad_clip > 0:
                params = [p for g in optimizer.param_groups for p in g["params"]]
                metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip))
            optimizer.step()
            per_pass.append(metrics)
            if part == 0:
                losses, total = losses_k, total_k
        metrics = merge_pass_metrics(per_pass) if passes > 1 else per_pass[0]
        scheduler.step()
    out = {k: float(v.detach()) for k, v in losses.items()}
    out["loss"] = float(total.detach())
    out["lr"] = scheduler.get_last_lr()[0]
    return {**out, **metrics, **timer.metrics()}


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    from ray.train.torch import get_device, prepare_model

    cfg: Config = build(Config, config["cfg"])
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    device = get_device()
    model, temperature, optimizer, scheduler = build_training(cfg, device)
    step = _restore(config.get("resume_from"), model, temperature, optimizer, scheduler)
    if rank == 0 and config.get("progress") is not None:  # a second start is a restart (train.max_failures),
        config["progress"].started.remote(step)  # from the checkpoint Ray Train had registered, or from scratch
    if config.get("progress") is not None:  # where this rank runs: the run's placement record
        config["progress"].placed.remote(rank, ray.get_runtime_context().get_node_id())
    initialised = step == 0 and bool(cfg.train.init_from)
    if initialised:
        load_trainable(Path(cfg.train.init_from), model, temperature)
    rollouts = rollout_side(config.get("rollout_pool"), cfg, rank)
    step_module = rollouts.step_module(model, temperature, cfg)
    if ctx.get_world_size() > 1:
        step_module = prepare_model(step_module, parallel_strategy_kwargs={"find_unused_parameters": True})
    rollouts.start(model, step, initialised)
    choose = Selection(cfg, fresh=step == 0) if rank == 0 and cfg.train.eval_every > 0 else None
    writer = _tensorboard(cfg) if rank == 0 else None
    progress = config.get("progress")
    rng = random.Random(cfg.train.seed * 1000 + rank)
    stream = rollouts.stream(batch_stream(ray.train.get_dataset_shard("train"), cfg, rng))  # async: reads ahead
    window, clock = [], Stopwatch()
    while step < cfg.train.steps:
        rows, batch = next(stream)
        timer, watch = PhaseTimer(), Stopwatch()
        extra = rollouts.generate(model, batch, step, timer, rows)
        metrics = train_step(step_module, optimizer, scheduler, batch, cfg, *extra, timer=timer)
        step += 1
        metrics |= rollouts.after_step(model, step, timer)
        if "time_wait" in timer.totals:  # waiting for rollouts over the step (validation not counted)
            metrics["trainer_idle"] = timer.totals["time_wait"] / watch.elapsed()
        if choose is not None and choose.due(step):
            save = partial(save_checkpoint, model=model, temperature=temperature, optimizer=optimizer,
                           scheduler=scheduler, step=step, cfg=cfg)
            with timer("val"):
                metrics |= choose(step, model, save)
        metrics |= timer.metrics()
        window.append(metrics)
        if step % cfg.train.log_every == 0 or step == cfg.train.steps or step % cfg.train.checkpoint_every == 0:
            train_s = clock.lap() - sum(m.get("time_val", 0.0) for m in window)  # validation is not training
            report = _mean(window) | {"step": step, "samples_per_s": len(window) * cfg.train.batch_size * ctx.get_world_size() / train_s}
            window = []
            _report(report, step, cfg, rank, model, temperature, optimizer, scheduler, writer, progress)
    if writer is not None:
        writer.close()


def batch_stream(shard, cfg: Config, rng: random.Random):
    """(rows, batch) of this rank's shard, epoch after epoch, made in order as they are read."""
    while True:
        for rows in shard.iter_batches(batch_size=cfg.train.batch_size, batch_format="numpy", drop_last=True,
                                       local_shuffle_buffer_size=4 * cfg.train.batch_size):
            yield rows, make_batch(rows, rng, cfg.model.vision.image_size,
                                   cfg.train.query_lowercase_p, cfg.train.query_paraphrase_p)


class Selection:
    """Rank 0's validation: val metrics every `train.eval_every` steps and at the last; the best
    checkpoint by `train.select_metric` kept in output_dir/best (train/validate.py)."""

    def __init__(self, cfg: Config, fresh: bool):
        from moon_ray.train.validate import BestKeeper, Validator

        self.every, self.last = cfg.train.eval_every, cfg.train.steps
        self.validator, self.keeper = Validator(cfg), BestKeeper(cfg, fresh)

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.last

    def __call__(self, step: int, model, save) -> dict:
        metrics = self.validator(model)
        improved = self.keeper.offer(step, metrics, save)
        return metrics | {"val/best_step": float(self.keeper.best["step"]), "val/improved": float(improved)}


def _restore(resume_from: str | None, model, temperature, optimizer, scheduler) -> int:
    import ray.train

    ckpt = ray.train.get_checkpoint()
    path = None
    if ckpt is not None:
        with ckpt.as_directory() as d:
            path = latest_checkpoint(Path(d))
            return load_checkpoint(path, model, temperature, optimizer, scheduler) if path else 0
    if resume_from:
        return load_checkpoint(Path(resume_from), model, temperature, optimizer, scheduler)
    return 0


def _report(metrics, step, cfg, rank, model, temperature, optimizer, scheduler, writer, progress) -> None:
    import ray.train
    from ray.train import Checkpoint

    if writer is not None:
        for k, v in metrics.items():
            if k != "step":
                writer.add_scalar(f"train/{k}", v, step)
        writer.flush()
    if progress is not None and rank == 0:
        progress.update.remote(step, metrics)
    if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps:
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                save_checkpoint(Path(tmp) / f"step-{step:06d}", model, temperature, optimizer, scheduler, step, cfg)
                checkpoint = Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"checkpoint-{step:06d}")
    else:
        ray.train.report(metrics)


def _mean(rows: list[dict]) -> dict:
    keys = {k for r in rows for k in r}
    return {k: sum(r[k] for r in rows if k in r) / sum(1 for r in rows if k in r) for k in keys}


def _tensorboard(cfg: Config):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(Path(cfg.train.output_dir).resolve() / "tensorboard"))
