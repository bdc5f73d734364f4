"""The reasoning policy's log-probs in the trainer, and the frozen reference GRPO's KL is taken to.

    ids, mask, roll_lp = pack_traces(flat_rollouts, pad_id, device)
    logp = trace_logprobs(model, prompts.embeds, prompts.mask, ids, mask)       # (N, T)
    ref = ReferencePolicy.at_start(model, cfg, step)                            # the policy the run started from
    ref_logp = ref.logprobs(model, pixels, titles, ids, mask, group=G)          # no grad, reference weights

The reference is the policy the run *started* from: a copy of every trainable weight (LoRA, projector,
…) taken when the run starts — after `train.init_from`, that model — not the base LM with its adapters
off. A run resumed from a checkpoint rebuilds the same start: the `train.init_from` weights, or else the
seeded initial weights (`build_training` seeds before building, so a fresh build reproduces them). Its
log-probs are computed by swapping those weights into the live model for one no-grad pass; with
`rollout.kl_coef=0` no reference is made and the pass never runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from moon_ray.config import Config
from moon_ray.losses.grpo import token_logprobs
from moon_ray.models.reasoning import build_prompt_embeds


def pack_traces(flat: Sequence, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rollouts (token_ids, logprobs) -> right-padded ids (N, T), 0/1 mask (N, T) and the sampler's
    per-token log-probs (N, T) (0 where an engine returned fewer)."""
    t = max(1, max((len(x.token_ids) for x in flat), default=1))
    ids = torch.full((len(flat), t), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros(len(flat), t, dtype=torch.long, device=device)
    roll_lp = torch.zeros(len(flat), t, device=device)
    for i, x in enumerate(flat):
        n = len(x.token_ids)
        if n == 0:
            continue
        ids[i, :n], mask[i, :n] = torch.tensor(x.token_ids, device=device), 1
        lp = list(x.logprobs[:n])
        roll_lp[i, :n] = torch.tensor(lp + [0.0] * (n - len(lp)), device=device)
    return ids, mask, roll_lp


@contextlib.contextmanager
def gradients_in_top_layers(layers: nn.ModuleList, k: int):
    """Inside the block a forward pass through `layers` builds autograd's graph only for the top `k`:
    the layers below run with gradients off (nothing saved for the backward pass, which then stops
    there), so a loss reaches the top k layers' adapters and nothing under them (not the prompt's visual
    tokens either). k <= 0, k >= len(layers) or gradients already off: every layer as usual."""
    if k <= 0 or k >= len(layers) or not torch.is_grad_enabled():
        yield
        return
    cut = len(layers) - k

    def grad_mode(on: bool):
        def hook(module, args) -> None:  # returns None: the layer's inputs stay as they are
            torch.set_grad_enabled(on)
        return hook

    handles = [layers[0].register_forward_pre_hook(grad_mode(False)),
               layers[cut].register_forward_pre_hook(grad_mode(True))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        torch.set_grad_enabled(True)


def trace_logprobs(model, prompt_embeds: torch.Tensor, prompt_mask: torch.Tensor, ids: torch.Tensor,
                   mask: torch.Tensor, grad_layers: int = 0) -> torch.Tensor:
    """Log-probs (N, T) of tokens ids (N, T) after the left-padded prompts (N, L, H), full LM (its
    adapters as they are); with grad_layers > 0 only the top grad_layers decoder layers get gradients
    (`gradients_in_top_layers`), the values are the same."""
    from moon_ray.models.language import causal_lm, decoder

    lm = causal_lm(model.lm)
    embeds = torch.cat([prompt_embeds, decoder(model.lm).embed_tokens(ids)], dim=1)
    full_mask = torch.cat([prompt_mask, mask], dim=1)
    positions = (full_mask.cumsum(1) - 1).clamp(min=0)
    with gradients_in_top_layers(decoder(model.lm).layers, grad_layers):
        hidden = decoder(model.lm)(inputs_embeds=embeds, attention_mask=full_mask, position_ids=positions,
                                   use_cache=False).last_hidden_state
    p = prompt_embeds.shape[1]
    logits = lm.lm_head(hidden[:, p - 1 : p - 1 + ids.shape[1]])
    return token_logprobs(logits, ids)


def policy_logprobs(model, pixels: torch.Tensor, titles: Sequence[str], ids: torch.Tensor, mask: torch.Tensor,
                    group: int, grad_layers: int = 0) -> torch.Tensor:
    """Log-probs (B·group, T) of `group` traces per product under the model's current weights."""
    prompts = build_prompt_embeds(model, pixels, titles)
    return trace_logprobs(model, prompts.embeds.repeat_interleave(group, 0), prompts.mask.repeat_interleave(group, 0),
                          ids, mask, grad_layers)


@contextlib.contextmanager
def evaluating(model: nn.Module):
    """The model in eval mode inside the block (no dropout: the trace evaluation would generate, the
    same numbers from the same weights), its previous mode restored after."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


class ReferencePolicy:
    """Frozen copies of the trainable weights the run started from."""

    def __init__(self, state: dict[str, torch.Tensor]):
        self.state = state

    @classmethod
    def snapshot(cls, model: nn.Module) -> ReferencePolicy:
        return cls({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})

    @classmethod
    def at_start(cls, model: nn.Module, cfg: Config, step: int) -> ReferencePolicy:
        """The start of the run: the model as it is at step 0 (after init_from); on a resumed run, the
        init_from weights, or the seeded initial weights of a fresh build."""
        if step == 0:
            return cls.snapshot(model)
        if cfg.train.init_from:
            return cls.from_file(Path(cfg.train.init_from), model)
        from moon_ray.models.factory import build_embedder

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.train.seed)  # as build_training seeds, so the build is the run's start
            fresh = build_embedder(cfg)
        ref = cls.snapshot(fresh)
        wanted = {n: p for n, p in model.named_parameters() if p.requires_grad}
        return cls({n: t.to(wanted[n].device, wanted[n].dtype) for n, t in ref.state.items() if n in wanted})

    @classmethod
    def from_file(cls, path: Path, model: nn.Module) -> ReferencePolicy:
        """The trainable weights of a checkpoint or export directory (trainable.safetensors)."""
        from safetensors.torch import load_file

        from moon_ray.models.trainable import FILE

        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        state = {}
        for key, value in load_file(str(Path(path) / FILE)).items():
            name = key.removeprefix("model.")
            if name in params:
                state[name] = value.to(params[name].device, params[name].dtype)
        return cls(state)

    @contextlib.contextmanager
    def swapped(self, model: nn.Module):
        """Inside the block the model's trainable parameters hold the reference weights."""
        params = dict(model.named_parameters())
        saved = {}
        try:
            for name, value in self.state.items():
                saved[name] = params[name].data
                params[name].data = value
            yield model
        finally:
            for name, data in saved.items():
                params[name].data = data

    @torch.no_grad()
    def logprobs(self, model, pixels: torch.Tensor, titles: Sequence[str], ids: torch.Tensor, mask: torch.Tensor,
                 group: int) -> torch.Tensor:
        """Log-probs (B·group, T) of the traces under the reference (prompts made by it too), in eval
        mode: no dropout, so the same weights give the same numbers."""
        with evaluating(model), self.swapped(model), model.compute_weights():
            return policy_logprobs(model, pixels, titles, ids, mask, group)


def sampling_logprobs(chunks: list[range], epochs: int, logprobs) -> dict[int, torch.Tensor]:
    """The sampling policy's token log-probs of every GRPO mini-batch after the first, fixed before the
    first optimizer step (`logprobs(chunk)` -> (logp, ...)); the first chunk's come from its own forward.
    Empty when the batch gets a single optimizer step."""
    if len(chunks) * epochs <= 1:
        return {}
    with torch.no_grad():
        return {c: logprobs(chunks[c])[0] for c in range(1, len(chunks))}
