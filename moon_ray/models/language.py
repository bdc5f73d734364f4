"""The language model: a Hugging Face causal LM (default: the packaged SmolLM2-135M-Instruct) with LoRA.

`load_language_model(cfg)` returns (model, tokenizer). The model is the causal LM (so rollouts and
exports use the same weights), wrapped
with PEFT LoRA adapters; `decoder(model)` is the inner transformer that gives hidden states without the
LM head.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F
from torch import nn

from moon_ray.config import LMConfig

# head_dim 64: the smallest that vLLM's CPU attention kernels accept, so tests share one tiny model.
TINY_LLAMA = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=512, tie_word_embeddings=True)


def load_tokenizer(cfg: LMConfig):
    from transformers import AutoTokenizer

    from moon_ray.models.weights import smollm2_dir

    tok = AutoTokenizer.from_pretrained(cfg.path or smollm2_dir())
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def load_language_model(cfg: LMConfig, seed: int = 0) -> tuple[nn.Module, object]:
    """(causal LM, tokenizer); LoRA-wrapped when cfg.lora.enabled (base weights then frozen)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from moon_ray.models.weights import smollm2_dir

    tok = load_tokenizer(cfg)
    if cfg.tiny:
        torch.manual_seed(seed)
        config = LlamaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **TINY_LLAMA)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(cfg.path or smollm2_dir(), dtype=torch.float32)
    if cfg.lora.enabled:
        model = add_lora(model, cfg)
    return model, tok


@contextlib.contextmanager
def first_layers(model: nn.Module, n: int | None):
    """Run the decoder with only its first n layers inside the block (all when n is None or too big).

    Used for embeddings pooled from an intermediate layer: the full LM (and its adapters) stays in
    place for generation; forward passes inside the block skip the upper layers entirely.
    """
    inner = decoder(model)
    full = inner.layers
    if n is not None and n < 1:
        raise ValueError(f"model.lm.embed_layers must be >= 1, got {n}")
    if n is None or n >= len(full):
        yield
        return
    inner.layers = full[:n]
    try:
        yield
    finally:
        inner.layers = full


def add_lora(model: nn.Module, cfg: LMConfig) -> nn.Module:
    """PEFT LoRA on `cfg.lora.targets`, with `cfg.lora.dropout` applied in the adapter's rank-r
    bottleneck (`B · drop(A · x)`) rather than on its input (`B · A · drop(x)`, PEFT's placement).

    Why: PEFT draws a fresh mask over every adapter's full input: 7 adapters a layer, each as wide
    as the layer's input (576, or 1536 for down_proj), so the Bernoulli draws and mask products cost
    18 % of a training step (more than some of the matmuls they perturb: a dropout over 1536 wide
    rows took longer than the 576×1536 projection itself). In the bottleneck the mask is r wide,
    ~40-100× fewer draws, and it still regularises exactly the adapter (it only ever perturbs the
    LoRA update, never the frozen base path). Parameter names are unchanged, so adapters save,
    load and sync as before.
    """
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=0.0,
                      target_modules=list(cfg.lora.targets), task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    if cfg.lora.dropout > 0:
        for module in model.modules():
            if hasattr(module, "lora_A") and hasattr(module, "base_layer"):
                for adapter in module.lora_A:
                    module.lora_A[adapter].register_forward_hook(functools.partial(_bottleneck_dropout, cfg.lora.dropout))
    return model


def _bottleneck_dropout(p: float, module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
    """Forward hook on a LoRA `A` projection: dropout on its r-wide output while training."""
    return F.dropout(output, p, module.training)


def causal_lm(model: nn.Module) -> nn.Module:
    """The transformers causal LM inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder(model: nn.Module) -> nn.Module:
    """The decoder stack (LlamaModel & co.): hidden states, no LM head."""
    return causal_lm(model).model


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return decoder(model).layers
