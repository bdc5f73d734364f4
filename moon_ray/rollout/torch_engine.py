"""The plain-transformers rollout engine: HF `generate` from `inputs_embeds`. The fallback backend and
the reference for the vLLM benchmark.

With `lora={"r", "alpha", "targets"}` the model carries unmerged PEFT LoRA adapters (B = 0 at start,
so it begins as the base model): an adapter-only sync copies the trainer's A/B matrices into them
(tens of MB, no merge), and a merged sync loads the base matrices and zeroes the adapters.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from moon_ray.rollout.base import Rollout, RolloutEngine, SamplingConfig


class TorchEngine(RolloutEngine):
    def __init__(self, model_dir: str, threads: int | None = None, dtype: str = "float32", batch_size: int = 16,
                 lora: dict | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
        self.supports_adapter = bool(lora)
        if lora:
            from peft import LoraConfig, get_peft_model

            self.model = get_peft_model(self.model, LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=0.0,
                                                               target_modules=list(lora["targets"]))).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.batch_size = batch_size
        self.version = 0

    @torch.no_grad()
    def generate(self, prompts: Sequence[torch.Tensor], sampling: SamplingConfig) -> list[list[Rollout]]:
        out: list[list[Rollout]] = []
        per_call = max(1, self.batch_size // max(1, sampling.n))
        for s in range(0, len(prompts), per_call):
            out.extend(self._generate_chunk(prompts[s : s + per_call], sampling))
        return out

    def _generate_chunk(self, prompts: Sequence[torch.Tensor], sampling: SamplingConfig) -> list[list[Rollout]]:
        dtype = next(self.model.parameters()).dtype
        longest = max(p.shape[0] for p in prompts)
        hidden = prompts[0].shape[1]
        embeds = torch.zeros(len(prompts), longest, hidden, dtype=dtype)
        mask = torch.zeros(len(prompts), longest, dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding
            embeds[i, longest - p.shape[0] :] = p.to(dtype)
            mask[i, longest - p.shape[0] :] = 1
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        gen = self.model.generate(
            inputs_embeds=embeds, attention_mask=mask, max_new_tokens=sampling.max_tokens, do_sample=True,
            temperature=sampling.temperature, top_p=sampling.top_p, num_return_sequences=sampling.n,
            pad_token_id=self.pad_id, output_scores=True, return_dict_in_generate=True,
        )
        scores = torch.stack(gen.scores, dim=1).float().log_softmax(-1)  # (B*n, T, V) processed dist.
        seqs = gen.sequences  # only new tokens when generating from embeddings
        groups: list[list[Rollout]] = [[] for _ in prompts]
        eos = self.tokenizer.eos_token_id
        for row in range(seqs.shape[0]):
            ids = seqs[row].tolist()
            end = next((i + 1 for i, t in enumerate(ids) if t == eos), len(ids))
            ids = ids[:end]
            lps = scores[row, torch.arange(len(ids)), torch.tensor(ids)].tolist() if ids else []
            text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
            groups[row // sampling.n].append(Rollout(ids, text, lps, self.version, finished=end < seqs.shape[1] or (ids and ids[-1] == eos)))
        return groups

    def update_weights(self, weights: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        params = {_hf_name(n): p for n, p in self.model.named_parameters() if "lora_" not in n}
        loaded = 0
        with torch.no_grad():
            for name, tensor in weights:
                if name not in params:
                    raise KeyError(f"weight {name!r} is not a parameter of the rollout model")
                params[name].copy_(tensor.to(params[name].dtype))
                loaded += 1
            if loaded and self.supports_adapter:  # merged weights already hold the adapters' delta
                for layer in _lora_modules(self.model).values():
                    layer.lora_B["default"].weight.zero_()
        if loaded == 0:
            raise ValueError("update_weights received no tensors")
        self.version = version

    def update_adapter(self, weights: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        if not self.supports_adapter:
            return super().update_adapter(weights, version)
        layers = _lora_modules(self.model)
        loaded = 0
        with torch.no_grad():
            for key, tensor in weights:
                name, _, part = key.rpartition("::")
                if name not in layers or part not in ("A", "B"):
                    raise KeyError(f"adapter tensor {key!r} matches no LoRA layer of the rollout model")
                layer = layers[name]
                if part == "A":
                    layer.lora_A["default"].weight.copy_(tensor)
                else:  # B arrives pre-scaled (merge is W + B @ A); PEFT applies `scaling` itself
                    layer.lora_B["default"].weight.copy_(tensor / layer.scaling["default"])
                loaded += 1
        if loaded == 0:
            raise ValueError("update_adapter received no tensors")
        self.version = version


def _hf_name(name: str) -> str:
    """PEFT parameter name -> the Hugging Face causal-LM name (`base_model.model.` and `.base_layer` gone)."""
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def _lora_modules(model) -> dict:
    """'<HF weight name>' -> PEFT LoRA layer."""
    return {f"{_hf_name(n)}.weight": m for n, m in model.named_modules()
            if hasattr(m, "lora_A") and hasattr(m, "base_layer") and "default" in m.lora_A}
