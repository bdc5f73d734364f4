"""`moon-ray creative train` stage 1 pieces: CoT-SFT of the creative selector on the reference rationales.
The Ray Train loop both stages share is trainer.py; this module gives it the SFT step and the train pairs.

    moon-ray creative train --config pipelines/configs/creative.yaml [creative.train.steps=200 ...]

Each rank builds the selector (same seed everywhere), reads its shard of the train pairs through Ray Data,
and steps: pairs (each shown with A and B exchanged with probability creative.train.swap_prob, its
rationale re-rendered for the new positions) -> teacher-forced negative log-likelihood of
`<think>rationale</think><answer>X</answer><eos>` after the two-image prompt (`SFTModule`) -> AdamW on
the projector and the LoRA adapter. `SftSide` is the loop's empty rollout half (no generation, no sync);
stage 2's is grpo.py `GrpoSide`.
"""

from __future__ import annotations

import json
import random

import torch
from torch import nn

from moon_ray.config import Config
from moon_ray.creative.model import CreativeSelector
from moon_ray.creative.pairs import read_pairs
from moon_ray.creative.rationale import other_position, target_answer

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
    """forward(batch) -> ({"sft_loss"}, metrics): one forward per backward, so DDP can wrap it; `model` is
    the selector (the shared `train_step` reads it)."""

    def __init__(self, selector: CreativeSelector):
        super().__init__()
        self.model = selector

    def forward(self, batch: dict[str, list]) -> tuple[dict, dict]:
        loss, metrics = self.model.sft_loss(batch["image_a"], batch["image_b"], batch["interest"], batch["answer"])
        return {"sft_loss": loss}, metrics


class SftSide:
    """Stage sft's half of the loop beside the update: no generation, no weight sync (the shape of
    moon_ray/train/joint.py `NoRollouts`; grpo.py `GrpoSide` is the other one)."""

    stage = "sft"

    def step_module(self, selector: CreativeSelector) -> nn.Module:
        return SFTModule(selector)

    def reference(self, selector: CreativeSelector) -> None:
        pass

    def start(self, selector: CreativeSelector, step: int = 0) -> None:
        pass

    def generate(self, selector: CreativeSelector, batch: dict, step: int, timer) -> tuple:
        return ()

    def after_step(self, selector: CreativeSelector, step: int, timer) -> dict:
        return {}


def build_selector(cfg: Config, device: torch.device | str = "cpu") -> CreativeSelector:
    """The selector a run starts from: seeded by creative.train.seed, projector from an embedder when
    creative.train.init_projector_from names one."""
    t = cfg.creative.train
    sel = CreativeSelector(cfg.model, seed=t.seed, max_interest_tokens=cfg.creative.max_interest_tokens)
    if t.init_projector_from:
        sel.init_projector(t.init_projector_from)
    return sel.to(device)


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
