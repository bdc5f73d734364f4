"""A tiny random Llama saved as a Hugging Face directory (with the SmolLM2 tokenizer), shared by a
trainer (model.lm.path=…) and rollout engines (torch or vLLM) so that both hold the same weights."""

from __future__ import annotations

from pathlib import Path

import torch


def write_tiny_lm(path: Path, seed: int = 0, scale: float = 1.0) -> Path:
    from transformers import AutoModelForCausalLM, LlamaConfig

    from moon_ray.config import LMConfig
    from moon_ray.models.language import TINY_LLAMA, load_tokenizer

    if (path / "config.json").exists():
        return path
    tok = load_tokenizer(LMConfig())
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **TINY_LLAMA))
    if scale != 1.0:  # sharper next-token distributions, so sampled tokens depend on the weights
        with torch.no_grad():
            model.model.embed_tokens.weight.mul_(scale)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
