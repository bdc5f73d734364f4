"""Cold start for the reasoning policy: CoT-SFT on attribute-grounded rationales before GRPO.

For the first `rollout.sft_steps` steps of a joint run, each product's rationale is rendered from its
catalog fields (catalog/rationales.py: type, colour, gender, season, usage, material where known, in
varied wordings) and the LM is trained to write it after the same reasoning prompt generation uses
(models/reasoning.py: visual tokens + title): next-token loss on the rationale tokens and the end
token, none on the prompt. InfoNCE keeps training the embedding beside it (products embedded without a
trace: the rationales state catalog answers and must not leak into the embedding). No rollouts are
generated during these steps; the actors get the SFT weights when GRPO starts.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from moon_ray.catalog.rationales import render_rationale
from moon_ray.models.reasoning import build_prompt_embeds
from moon_ray.train.policy import trace_logprobs


@dataclass
class SftBatch:
    rationales: list[str]  # one per product of the batch


def rationale_batch(fields: Sequence[dict], rng: random.Random) -> SftBatch:
    return SftBatch(rationales=[render_rationale(f, rng) for f in fields])


def rationale_tokens(tokenizer, rationales: Sequence[str], max_tokens: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, T) of each rationale followed by the end token (the LM learns to stop), cut
    to max_tokens (+1 for the end token), and their 0/1 mask."""
    end = tokenizer.eos_token_id
    rows = [tokenizer(r, add_special_tokens=False)["input_ids"][:max_tokens] + [end] for r in rationales]
    t = max(len(r) for r in rows)
    ids = torch.full((len(rows), t), tokenizer.pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros(len(rows), t, dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r, device=device), 1
    return ids, mask


def sft_loss(model, pixels: torch.Tensor, titles: Sequence[str], rationales: Sequence[str],
             max_tokens: int) -> tuple[torch.Tensor, dict]:
    """Mean next-token NLL of the rationales (and their end token) given the reasoning prompts."""
    prompts = build_prompt_embeds(model, pixels, titles)
    ids, mask = rationale_tokens(model.tokenizer, rationales, max_tokens, prompts.embeds.device)
    logp = trace_logprobs(model, prompts.embeds, prompts.mask, ids, mask)
    m = mask.to(logp.dtype)
    nll = -(logp * m).sum() / m.sum().clamp(min=1.0)
    return nll, {"sft_nll": float(nll.detach()), "sft_tokens": float(m.sum(1).mean())}
