"""The creative selector: the embedder's vision tower + projector + causal LM (+ LoRA), prompted with two
creatives as visual tokens (A then B), the shopper's interests and an instruction; it answers
`<think>…</think><answer>A</answer>`.

    sel = CreativeSelector(cfg.model, seed=0)                           # model.vision / model.lm settings
    prompts = sel.prompt_embeds(images_a, images_b, interests)          # PromptBatch, left-padded
    texts = sel.generate(images_a, images_b, interests, max_new_tokens=80)
    logp = sel.sequence_logprobs(prompts, ids, mask)                    # (N, T): SFT, GRPO policy and reference
    sel.save(dir, meta); CreativeSelector.load(dir)                     # creative.safetensors + creative.json

Its adapter is its own: the LoRA weights and projector live in creative.safetensors, apart from any
embedder checkpoint (the projector may start from one: `init_projector`). The tower is frozen. The LM is
the same PEFT-wrapped causal LM the embedder builds (moon_ray/models/language.py), so the rollout pool's
engines and the weight transports take its weights by the same names.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from moon_ray.config import ModelConfig, build
from moon_ray.models.language import causal_lm, decoder, load_language_model
from moon_ray.models.precision import compute_weights
from moon_ray.models.projector import Projector
from moon_ray.models.reasoning import PromptBatch
from moon_ray.models.vision import build_tower, pool_patches

IMAGE = "<image>"
SYSTEM = "You review ad creatives for an online fashion store."
INSTRUCTION = (
    "Image A: {image}\nImage B: {image}\nShopper: {interest}\n"
    "Which image is the better creative for this shopper? Compare them briefly, then answer as "
    "<think>reasoning</think><answer>A or B</answer>."
)
WEIGHTS, META = "creative.safetensors", "creative.json"


class CreativeSelector(nn.Module):
    def __init__(self, cfg: ModelConfig, seed: int = 0, max_interest_tokens: int = 32):
        super().__init__()
        self.cfg, self.max_interest_tokens = cfg, max_interest_tokens
        torch.manual_seed(seed)
        self.tower = build_tower(cfg.vision).freeze()
        self.lm, self.tokenizer = load_language_model(cfg.lm, seed=seed)
        torch.manual_seed(seed)
        self.projector = Projector(self.tower.feature_dim, self.lm.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return self.projector.mlp[0].weight.device

    compute_dtype = torch.float32  # the selector trains in fp32 (its LM, tower and adapters)

    def compute_weights(self):
        """Context of one training step's compute weights, as the embedder has it
        (moon_ray/models/precision.py): in fp32 nothing is cast, so the shared step
        (moon_ray/train/worker.py `train_step`) runs the selector's weights as they are."""
        return compute_weights(self, self.compute_dtype)

    # ------------------------------------------------------------------------------------- prompts
    def image_tokens(self, images: Sequence[bytes]) -> torch.Tensor:
        """Encoded images -> visual tokens (B, 1 + pool_grid², H): frozen tower, trainable projector."""
        pixels = self.tower.to_tensor(images, self.cfg.vision.image_size).to(self.device)
        self.tower.eval()
        with torch.no_grad():
            grid = self.tower(self.tower.input_format(pixels))
        return self.projector(pool_patches(grid, self.cfg.vision.pool_grid).float())

    def _interest(self, text: str) -> str:
        ids = self.tokenizer(text or "(none)", add_special_tokens=False)["input_ids"][: self.max_interest_tokens]
        return self.tokenizer.decode(ids)

    def prompt_text(self, interest: str) -> str:
        user = INSTRUCTION.format(image=IMAGE, interest=self._interest(interest))
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _embed_text(self, text: str) -> torch.Tensor:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return decoder(self.lm).embed_tokens(torch.tensor(ids, dtype=torch.long, device=self.device))

    def prompt_embeds(self, images_a: Sequence[bytes], images_b: Sequence[bytes], interests: Sequence[str]) -> PromptBatch:
        """Chat prompts with image A's then image B's visual tokens at the placeholders; left-padded
        (B, L, H) embeddings and mask, as batched generation and the rollout engines take them."""
        if not len(images_a) == len(images_b) == len(interests):
            raise ValueError("images_a, images_b and interests must have the same length")
        vis = self.image_tokens([*images_a, *images_b])
        n = len(images_a)
        rows = []
        for i, interest in enumerate(interests):
            before, middle, after = self.prompt_text(interest).split(IMAGE)
            rows.append(torch.cat([self._embed_text(before), vis[i], self._embed_text(middle), vis[n + i],
                                   self._embed_text(after)]))
        longest = max(r.shape[0] for r in rows)
        embeds = rows[0].new_zeros(n, longest, rows[0].shape[1])
        mask = torch.zeros(n, longest, dtype=torch.long, device=self.device)
        for i, r in enumerate(rows):
            embeds[i, longest - r.shape[0]:] = r
            mask[i, longest - r.shape[0]:] = 1
        return PromptBatch(embeds=embeds, mask=mask)

    def answer_ids(self, answers: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Target answers -> right-padded token ids (N, T) ending in EOS, and their mask."""
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        seqs = [self.tokenizer(a, add_special_tokens=False)["input_ids"] + [eos] for a in answers]
        t = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), t), pad, dtype=torch.long, device=self.device)
        mask = torch.zeros(len(seqs), t, dtype=torch.long, device=self.device)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s, device=self.device)
            mask[i, :len(s)] = 1
        return ids, mask

    # ------------------------------------------------------------------------------ scoring, SFT
    def sequence_logprobs(self, prompts: PromptBatch, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Log-probs (N, T) of answer tokens `ids` (right-padded, `mask`) after the left-padded prompts,
        under the LM with its adapters as set: the SFT loss, GRPO's policy and reference terms."""
        from moon_ray.losses.grpo import token_logprobs

        embeds = torch.cat([prompts.embeds, decoder(self.lm).embed_tokens(ids)], dim=1)
        full = torch.cat([prompts.mask, mask], dim=1)
        positions = (full.cumsum(1) - 1).clamp(min=0)
        hidden = decoder(self.lm)(inputs_embeds=embeds, attention_mask=full, position_ids=positions,
                                  use_cache=False).last_hidden_state
        p = prompts.embeds.shape[1]
        logits = causal_lm(self.lm).lm_head(hidden[:, p - 1: p - 1 + ids.shape[1]])
        return token_logprobs(logits, ids)

    def sft_loss(self, images_a, images_b, interests, answers) -> tuple[torch.Tensor, dict]:
        """Mean token negative log-likelihood of the reference answers (CoT-SFT), and metrics."""
        prompts = self.prompt_embeds(images_a, images_b, interests)
        ids, mask = self.answer_ids(answers)
        logp = self.sequence_logprobs(prompts, ids, mask)
        m = mask.float()
        loss = -(logp * m).sum() / m.sum()
        return loss, {"answer_tokens": float(m.sum() / len(answers))}

    # ---------------------------------------------------------------------------------- generate
    @torch.no_grad()
    def generate(self, images_a, images_b, interests, max_new_tokens: int = 80) -> list[str]:
        """Greedy answers (one per pair), special tokens dropped."""
        prompts = self.prompt_embeds(images_a, images_b, interests)
        out = causal_lm(self.lm).generate(inputs_embeds=prompts.embeds, attention_mask=prompts.mask, do_sample=False,
                                          max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id)
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    # ---------------------------------------------------------------------------------- weights
    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().contiguous() for n, p in self.named_parameters() if p.requires_grad}

    def save(self, path: str | Path, meta: dict) -> Path:
        """creative.safetensors (the trainable weights: projector, LoRA) + creative.json (model config, meta)."""
        from moon_ray.config import to_dict

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        save_file(self.trainable_state(), str(out / WEIGHTS))
        (out / META).write_text(json.dumps({"model": to_dict(self.cfg), "max_interest_tokens": self.max_interest_tokens,
                                            **meta}, indent=2))
        return out

    def load_trainable(self, path: str | Path) -> None:
        """Load creative.safetensors; every tensor must find a trainable parameter of the same shape."""
        state = load_file(str(Path(path) / WEIGHTS))
        params = dict(self.named_parameters())
        for name, value in state.items():
            if name not in params or params[name].shape != value.shape:
                raise KeyError(f"{path}/{WEIGHTS}: {name!r} {tuple(value.shape)} matches no parameter of the selector")
            with torch.no_grad():
                params[name].copy_(value)

    @classmethod
    def load(cls, path: str | Path) -> CreativeSelector:
        """The selector saved in `path` (its own model config), in eval mode."""
        path = Path(path)
        if not (path / META).is_file() or not (path / WEIGHTS).is_file():
            raise FileNotFoundError(f"{path} is not a creative selector (needs {META} and {WEIGHTS})")
        meta = json.loads((path / META).read_text())
        sel = cls(build(ModelConfig, meta["model"]), seed=meta.get("seed", 0), max_interest_tokens=meta["max_interest_tokens"])
        sel.load_trainable(path)
        return sel.eval()

    def init_projector(self, checkpoint: str | Path) -> int:
        """Copy an embedder checkpoint's or export's projector ("model.projector.*" in its
        trainable.safetensors) into this projector; returns the tensors copied."""
        file = Path(checkpoint) / "trainable.safetensors"
        if not file.is_file():
            raise FileNotFoundError(f"creative.train.init_projector_from: {file} does not exist")
        state = {k.removeprefix("model.projector."): v for k, v in load_file(str(file)).items() if k.startswith("model.projector.")}
        own = self.projector.state_dict()
        if not state or set(state) != set(own) or any(own[k].shape != v.shape for k, v in state.items()):
            raise ValueError(f"{file}: its projector does not fit this selector's (tower {self.cfg.vision.name}, "
                             f"LM width {self.lm.config.hidden_size})")
        self.projector.load_state_dict(state)
        return len(state)
