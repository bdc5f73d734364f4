"""`moon-ray creative train` stage 1: CoT-SFT of the creative selector on the reference rationales, on Ray
Train (`TorchTrainer`, DDP: gloo on CPU, NCCL on GPU).

    moon-ray creative train --config pipelines/configs/creative.yaml [creative.train.steps=200 ...]

Each rank builds the selector (same seed everywhere), reads its shard of the train pairs through Ray Data,
and steps: pairs (each shown with A and B exchanged with probability creative.train.swap_prob, its
rationale re-rendered for the new positions) -> teacher-forced negative log-likelihood of
`<think>rationale</think><answer>X</answer><eos>` after the two-image prompt -> AdamW on the projector and
the LoRA adapter. Rank 0 reports its metrics every creative.train.log_every steps and, at the end, the
selector as a Ray Train checkpoint, which the driver copies to creative.train.output_dir (creative.safetensors,
creative.json, history.json, summary.json).

Stage 2 (GRPO) plugs in beside this loop, not into it: its step module takes the same selector, sends
`prompt_embeds` (unpadded rows) to the rollout pool, scores answers with `answer.choice_reward`, and
computes policy and reference log-probs with `CreativeSelector.sequence_logprobs` (see the package docstring).
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from moon_ray.config import Config, build, to_dict, with_absolute_paths
from moon_ray.creative.model import CreativeSelector
from moon_ray.creative.pairs import read_pairs
from moon_ray.creative.rationale import other_position, target_answer
from moon_ray.infrastructure.timing import Stopwatch

TRAIN_COLUMNS = ["pair_id", "image_a", "image_b", "interest", "label", "reason", "answer"]


def training_view(rows: dict, rng: random.Random, swap_prob: float) -> dict[str, list]:
    """A batch of pairs as the model sees them in training: each exchanged (images, label, answer
    re-rendered from its reason) with probability `swap_prob`."""
    out: dict[str, list] = {"image_a": [], "image_b": [], "interest": [], "label": [], "answer": []}
    for i in range(len(rows["label"])):
        a, b, label, answer = rows["image_a"][i], rows["image_b"][i], str(rows["label"][i]), str(rows["answer"][i])
        if rng.random() < swap_prob:
            a, b, label = b, a, other_position(label)
            answer = target_answer(json.loads(str(rows["reason"][i])), label)
        for key, value in (("image_a", bytes(a)), ("image_b", bytes(b)), ("interest", str(rows["interest"][i])),
                           ("label", label), ("answer", answer)):
            out[key].append(value)
    return out


class SFTModule(nn.Module):
    """forward(batch) -> (loss, metrics): one forward per backward, so DDP can wrap it."""

    def __init__(self, selector: CreativeSelector):
        super().__init__()
        self.selector = selector

    def forward(self, batch: dict[str, list]):
        return self.selector.sft_loss(batch["image_a"], batch["image_b"], batch["interest"], batch["answer"])


def build_selector(cfg: Config, device: torch.device | str = "cpu") -> CreativeSelector:
    """The selector a run starts from: seeded by creative.train.seed, projector from an embedder when
    creative.train.init_projector_from names one."""
    t = cfg.creative.train
    sel = CreativeSelector(cfg.model, seed=t.seed, max_interest_tokens=cfg.creative.max_interest_tokens)
    if t.init_projector_from:
        sel.init_projector(t.init_projector_from)
    return sel.to(device)


def sft_loop_per_worker(config: dict) -> None:
    import ray.train
    from ray.train import Checkpoint
    from ray.train.torch import get_device, prepare_model

    from moon_ray.train.worker import lr_lambda

    cfg: Config = build(Config, config["cfg"])
    t = cfg.creative.train
    torch.set_num_threads(max(1, int(t.cpus_per_worker)))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    selector = build_selector(cfg, get_device()).train()
    params = [p for p in selector.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(t.warmup_steps, t.steps))
    module = SFTModule(selector)
    if world > 1:
        module = prepare_model(module, move_to_device=False)
    shard, rng = ray.train.get_dataset_shard("train"), random.Random(t.seed * 1000 + rank)
    step, window, history, clock = 0, [], [], Stopwatch()
    while step < t.steps:
        for rows in shard.iter_batches(batch_size=t.batch_size, batch_format="numpy", drop_last=True,
                                       local_shuffle_buffer_size=4 * t.batch_size, local_shuffle_seed=t.seed + rank + step):
            loss, metrics = module(training_view(rows, rng, t.swap_prob))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if t.grad_clip > 0:
                metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, t.grad_clip))
            optimizer.step()
            scheduler.step()
            step += 1
            window.append(metrics | {"loss": float(loss.detach()), "lr": scheduler.get_last_lr()[0]})
            if step % t.log_every == 0 or step == t.steps:
                row = {k: float(np.mean([m[k] for m in window])) for k in window[0]} | {
                    "step": step, "pairs_per_s": len(window) * t.batch_size * world / clock.lap()}
                history.append(row)
                window = []
                if step < t.steps:
                    ray.train.report(row)
            if step >= t.steps:
                break
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            selector.save(tmp, {"stage": "sft", "steps": step, "seed": t.seed,
                                "init_projector_from": t.init_projector_from})
            (Path(tmp) / "history.json").write_text(json.dumps(history, indent=2))
            checkpoint = Checkpoint.from_directory(tmp)
        ray.train.report(history[-1], checkpoint=checkpoint)


def train_dataset(cfg: Config):
    """The train pairs as a materialised Ray Dataset (no read task competes with the trainers)."""
    import ray

    t = cfg.creative.train
    table = read_pairs(cfg.creative.pairs.output_dir, "train", t.limit, columns=TRAIN_COLUMNS)
    need = t.batch_size * t.num_workers
    if table.num_rows < need:
        raise ValueError(f"{table.num_rows} train pairs, fewer than one global batch "
                         f"(creative.train.batch_size × num_workers = {need})")
    return ray.data.from_arrow(table).materialize()


def run_sft(cfg: Config) -> dict:
    """CoT-SFT; returns a summary (also written to creative.train.output_dir/summary.json)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from moon_ray.infrastructure.runtime import init_ray

    cfg = with_absolute_paths(cfg, ["creative.pairs.output_dir", "creative.train.output_dir",
                                    "creative.train.init_projector_from"])
    t, clock = cfg.creative.train, Stopwatch()
    if t.init_projector_from and not (Path(t.init_projector_from) / "trainable.safetensors").is_file():
        raise FileNotFoundError(f"creative.train.init_projector_from: {t.init_projector_from} has no trainable.safetensors")
    init_ray(cfg.ray)
    out = Path(t.output_dir)
    trainer = TorchTrainer(
        sft_loop_per_worker, train_loop_config={"cfg": to_dict(cfg)},
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                     resources_per_worker={"CPU": t.cpus_per_worker}),
        run_config=RunConfig(name="run", storage_path=str(out / "ray")),
        datasets={"train": train_dataset(cfg)},
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"creative SFT finished without a checkpoint under {out / 'ray'}")
    with result.checkpoint.as_directory() as d:
        for name in ("creative.safetensors", "creative.json", "history.json"):
            shutil.copy2(Path(d) / name, out / name)
    history = json.loads((out / "history.json").read_text())
    summary = {"stage": "sft", "steps": t.steps, "output_dir": str(out), "history": history,
               "seconds": round(clock.elapsed(), 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
