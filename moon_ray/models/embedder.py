"""The composed MOON embedder: vision tower -> projector -> LM (LoRA, residual enhancement) -> pooling
-> multi-head modality fusion -> MoE head (+ visual skip) -> L2-normalised embedding (Matryoshka
prefixes).

    model = MoonEmbedder(cfg.model)
    out = model(pixels=x, texts=titles, reasoning=traces, modality="multimodal")   # a product
    out = model(texts=["Men Navy Blue Shirts"], modality="text", is_query=True)      # a text query
    out.embedding  # (B, D), unit rows;  out.raw  # (B, D) before normalisation;  out.aux_loss

Input sequence: [visual tokens (1 global + pool_grid² patches)] [prefix + title/query tokens]
[reasoning tokens]. Every module can be switched off in `ModelConfig` (ablations).

The visual skip (`model.visual_skip`) is the residual idea applied at the output: the tower's global
image feature, layer-normed, goes through a zero-initialised linear map straight into the embedding
of every input that has an image. The 3x3+1 visual tokens the LM sees are a coarse summary; the skip
keeps the full 1280-d descriptor that near-duplicate image retrieval depends on, and starts as a no-op.

Options (all off by default): `model.vision.trainable_blocks=N` fine-tunes the tower's top N blocks;
`model.residual_grid=7` gives the residual enhancement the fine 7×7 grid (appended after the visual
tokens in `visual_features`, never put in the LM's sequence) instead of the pooled tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from moon_ray.config import ModelConfig
from moon_ray.models.fusion import ModalityFusion
from moon_ray.models.language import causal_lm, decoder, decoder_layers, first_layers, load_language_model
from moon_ray.models.moe import MODALITIES, ModalityMoE
from moon_ray.models.packing import plan_packing
from moon_ray.models.precision import compute_weights, store_frozen
from moon_ray.models.projector import Projector
from moon_ray.models.residual import ResidualEnhancer
from moon_ray.models.vision import build_tower, cell_mask, pool_patches


@dataclass
class EmbedOutput:
    embedding: torch.Tensor  # (B, D) L2-normalised
    raw: torch.Tensor  # (B, D) before normalisation (Matryoshka prefixes are sliced from it)
    aux_loss: torch.Tensor  # scalar (MoE routing loss; 0 without MoE)


class MoonEmbedder(nn.Module):
    def __init__(self, cfg: ModelConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        torch.manual_seed(seed)  # random parts (tiny tower, heads) are rebuilt identically from the seed
        self.tower = build_tower(cfg.vision)
        self.tower_trains = cfg.vision.trainable or cfg.vision.trainable_blocks > 0
        if cfg.vision.trainable_blocks:
            self.tower.unfreeze_top(cfg.vision.trainable_blocks)
        elif not cfg.vision.trainable:
            self.tower.freeze()
        self.n_visual = 1 + cfg.vision.pool_grid**2  # visual tokens in the LM's sequence
        self.fine_grid = cfg.residual_grid if cfg.residual else None
        self.compute_dtype = torch.float32
        self.lm, self.tokenizer = load_language_model(cfg.lm, seed=seed)
        hidden = self.lm.config.hidden_size
        torch.manual_seed(seed)
        self.projector = Projector(self.tower.feature_dim, hidden)
        self.residual = None
        if cfg.residual:
            used = len(decoder_layers(self.lm)) if cfg.lm.embed_layers is None else min(cfg.lm.embed_layers, len(decoder_layers(self.lm)))
            fine = cell_mask(cfg.vision.pool_grid, self.fine_grid) if self.fine_grid else None
            self.residual = ResidualEnhancer(hidden, used, cfg.residual_every, fine_mask=fine)
            self.residual.attach(decoder_layers(self.lm))
        self.fusion = ModalityFusion(hidden, cfg.fusion_heads) if cfg.fusion else None
        if cfg.moe:
            self.head = ModalityMoE(hidden, cfg.embed_dim, cfg.moe_experts, cfg.moe_top_k)
        else:
            self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, cfg.embed_dim))
        self.visual_skip = VisualSkip(self.tower.feature_dim, cfg.embed_dim) if cfg.visual_skip else None

    # ---------------------------------------------------------------------------------- precision
    def set_precision(self, dtype: torch.dtype) -> MoonEmbedder:
        """Compute in `dtype` (moon_ray/models/precision.py): frozen weights are stored in it, trainable
        ones stay fp32 master weights and are cast per step by `compute_weights`. A trainable tower
        keeps fp32 throughout (its batch norm statistics and updates want it); its features are cast."""
        self.compute_dtype = dtype
        store_frozen(self.lm, dtype)
        # CPU SDPA's bf16 kernel is slower than its fp32 one on these short rows (measured 3.5x
        # slower than eager's matmul + fp32 softmax), so bf16 takes the eager path; fp32 keeps SDPA.
        if dtype == torch.bfloat16 and self.device.type == "cpu":
            causal_lm(self.lm).set_attn_implementation("eager")
        if not self.tower_trains:
            self.tower.freeze(dtype)
        return self

    def compute_weights(self):
        """Context: trainable weights as `compute_dtype` copies (a no-op in fp32, or when nested)."""
        return compute_weights(self, self.compute_dtype, keep=self.tower if self.tower_trains else None)

    # ------------------------------------------------------------------------------------ inputs
    @property
    def device(self) -> torch.device:
        return self.projector.mlp[0].weight.device

    def pixels(self, images) -> torch.Tensor:
        """Encoded images -> the tower's normalised input tensor (B, 3, S, S) on the model's device."""
        return self.tower.to_tensor(images, self.cfg.vision.image_size).to(self.device)

    def visual_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> projected visual tokens (B, 1 + g², H)."""
        with self.compute_weights():
            return self.projector(self.visual_features(pixels)[:, : self.n_visual])

    def visual_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> pooled tower features (B, 1 + g² [+ fine²], C) in the compute dtype: the
        global token first, then the grid, then (model.residual_grid) the fine grid. One call may feed
        several forward passes (`forward(features=...)`); with a frozen tower they carry no graph."""
        x = self.tower.input_format(pixels)
        if self.cfg.vision.trainable:
            grid = self.tower(x)
        elif self.cfg.vision.trainable_blocks:
            self.tower.eval()  # batch norm keeps its statistics; the frozen lower blocks build no graph
            grid = self.tower(x)
        else:
            self.tower.eval()
            with torch.no_grad():
                grid = self.tower(x)
        return pool_patches(grid, self.cfg.vision.pool_grid, self.fine_grid).to(self.compute_dtype)

    def text_tokens(self, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings (B, L, H) and mask (B, L) of texts (no special tokens)."""
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=max_len,
                             add_special_tokens=False, return_tensors="pt")
        ids = enc["input_ids"].to(self.device)
        mask = enc["attention_mask"].to(self.device)
        if ids.shape[1] == 0:  # every text empty: keep one pad position, masked out
            ids = torch.full((len(texts), 1), self.tokenizer.pad_token_id, device=self.device)
            mask = torch.zeros_like(ids)
        return decoder(self.lm).embed_tokens(ids), mask

    # ----------------------------------------------------------------------------------- forward
    def forward(self, pixels: torch.Tensor | None = None, texts: list[str] | None = None,
                reasoning: list[str] | None = None, modality: str = "multimodal",
                is_query: bool = False, features: torch.Tensor | None = None) -> EmbedOutput:
        """Embeds one batch; `features` (from `visual_features`) stands in for `pixels` when several
        passes share one image batch. Embeddings come back fp32 whatever the compute dtype."""
        with self.compute_weights():
            return self._embed(pixels, texts, reasoning, modality, is_query, features)

    def _embed(self, pixels, texts, reasoning, modality, is_query, feats) -> EmbedOutput:
        segments: list[tuple[torch.Tensor, torch.Tensor]] = []
        vis = fine = None
        if feats is None and pixels is not None:
            feats = self.visual_features(pixels)
        if feats is not None:
            vis = self.projector(feats)
            vis, fine = vis[:, : self.n_visual], (vis[:, self.n_visual :] if self.fine_grid else None)
            segments.append((vis, torch.ones(vis.shape[:2], dtype=torch.long, device=vis.device)))
        if texts is not None:
            prefix = self.cfg.lm.query_prefix if is_query else self.cfg.lm.product_prefix
            segments.append(self.text_tokens([prefix + t for t in texts], self.cfg.lm.max_text_tokens))
        raw_signals = list(segments)  # image patches and title tokens, before the LM mixes them
        if reasoning is not None:
            segments.append(self.text_tokens(reasoning, self.cfg.lm.max_reasoning_tokens))
        if not segments:
            raise ValueError("MoonEmbedder needs pixels or texts")
        embeds = torch.cat([e for e, _ in segments], dim=1)
        mask = torch.cat([m for _, m in segments], dim=1)
        hidden = self._decode(embeds, mask, vis, fine)
        pooled = pool(hidden, mask, self.cfg.pooling)
        if self.fusion is not None:
            raw = torch.cat([e for e, _ in raw_signals], dim=1)
            raw_mask = torch.cat([m for _, m in raw_signals], dim=1)
            pooled, _ = self.fusion(pooled, raw, raw_mask)
        if isinstance(self.head, ModalityMoE):
            y, aux, _ = self.head(pooled, MODALITIES[modality])
        else:
            y, aux = self.head(pooled), pooled.new_zeros((), dtype=torch.float32)
        y = y.float()  # InfoNCE logits and normalisation in fp32
        if self.visual_skip is not None and feats is not None:
            y = y + self.visual_skip(feats[:, 0]).float()
        return EmbedOutput(embedding=F.normalize(y, dim=-1), raw=y, aux_loss=aux)

    def _decode(self, embeds: torch.Tensor, mask: torch.Tensor, vis: torch.Tensor | None,
                fine: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (B, L, H) of the (first `embed_layers`) decoder layers. Inputs with much
        padding run packed (moon_ray/models/packing.py): the same per-token results, fewer positions."""
        plan = plan_packing(mask)
        slots = None
        if plan is None:
            x, attn, positions = embeds, mask, (mask.cumsum(1) - 1).clamp(min=0)
        else:
            x, attn, positions = plan.pack(embeds), None, plan.positions
            if vis is not None:
                b, p = vis.shape[:2]
                padded = (torch.arange(b, device=x.device)[:, None] * mask.shape[1] + torch.arange(p, device=x.device))
                slots = plan.slots(padded.flatten())
        if self.residual is not None:
            self.residual.set_patches(vis, slots, fine)
        try:
            with first_layers(self.lm, self.cfg.lm.embed_layers):
                out = decoder(self.lm)(inputs_embeds=x, attention_mask=attn, position_ids=positions, use_cache=False)
        finally:
            if self.residual is not None:
                self.residual.set_patches(None)
        hidden = out.last_hidden_state
        return hidden if plan is None else plan.unpack(hidden)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute LM layer activations in backward (non-reentrant: inputs_embeds, PEFT and DDP work).

        Layers carrying a residual-enhancement hook stay un-checkpointed: the hook reads patches set for
        the current forward pass, which are gone when the backward pass would recompute it.
        """
        causal_lm(self.lm).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.residual is not None:
            layers = decoder_layers(self.lm)
            for idx in self.residual.layer_ids:
                layers[idx].gradient_checkpointing = False

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]


class VisualSkip(nn.Module):
    """(B, C) global image feature -> (B, D) added to the embedding; zero at initialisation."""

    def __init__(self, feature_dim: int, embed_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(feature_dim)
        self.proj = nn.Linear(feature_dim, embed_dim, bias=False)
        nn.init.zeros_(self.proj.weight)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(feature))


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """hidden (B, L, H), mask (B, L) -> (B, H): mean over unmasked positions, or the last unmasked one."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    if how == "mean":
        return torch.where(m > 0, hidden, torch.zeros_like(hidden)).sum(1) / m.sum(1).clamp(min=1.0)
    last = (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
