"""The fine-tuned dual-encoder baseline (`model.arch=dual`): the honest peer of the MOON embedder.

    model = DualEncoder(cfg.model)          # or moon_ray.models.factory.build_embedder(cfg)
    out = model(pixels=x, texts=titles)                              # a product (image + title)
    out = model(texts=["Men Navy Blue Shirts"], modality="text", is_query=True)
    out.embedding  # (B, D), unit rows;  out.raw  # (B, D);  out.aux_loss  # 0

Two pretrained towers, frozen, each followed by a small trained head into one D-dimensional space:

    image  -> vision tower (model.vision: EfficientNet-Lite0) -> global average pool (C) -> image head -> i
    text   -> all-MiniLM-L6-v2 (mean pooled over the mask, 384) ----------------------> text head  -> t
    image + text  ->  α · i/|i| + (1 − α) · t/|t|,   α = sigmoid(a learned scalar, starts at 0.5)

Each head is LayerNorm -> Linear(., model.dual_head_hidden) -> GELU -> Linear(., D) (a single Linear
when dual_head_hidden=0). The multimodal vector mixes the two *unit* head outputs, so the gate alone
decides how much image and title count; mixing is linear, so every Matryoshka prefix of `raw` is the
same mix of the heads' prefixes. Texts get the same query / product prefixes (model.lm.query_prefix,
product_prefix) and token budget (model.lm.max_text_tokens, plus MiniLM's [CLS]/[SEP]) as MOON's.

It exposes what the trainer, checkpoints, export, evaluation and serving use of `MoonEmbedder` —
`pixels`, `visual_features`, `forward(pixels=, texts=, reasoning=, modality=, is_query=, features=)`,
`device`, `tokenizer`, `lm` (here the MiniLM tower: no PEFT adapter, so checkpoints save none),
`set_precision`, `compute_weights`, `enable_gradient_checkpointing`, `trainable_parameters` — and
trains with the same InfoNCE objectives (moon_ray/train/task.py). It has no causal LM, so it neither
generates nor takes reasoning traces: `can_reason` is False and `rollout.enabled` is refused
(moon_ray/models/factory.py). The towers stay in eval mode (no dropout, fixed batch-norm statistics)
even when their top layers are fine-tuned (model.dual_text_trainable_layers,
model.dual_image_trainable_blocks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from moon_ray.config import ConfigError, ModelConfig
from moon_ray.models.embedder import EmbedOutput
from moon_ray.models.precision import compute_weights, store_frozen
from moon_ray.models.vision import build_tower

TEXT_SPECIAL_TOKENS = 2  # MiniLM's [CLS] and [SEP] on top of model.lm.max_text_tokens


def load_text_tokenizer():
    """all-MiniLM-L6-v2's tokenizer, from the packaged weights."""
    from transformers import AutoTokenizer

    from moon_ray.models.weights import minilm_dir

    return AutoTokenizer.from_pretrained(minilm_dir())


def load_text_tower() -> tuple[nn.Module, object]:
    """(all-MiniLM-L6-v2 BertModel in eval mode, its tokenizer), from the packaged weights."""
    from transformers import AutoModel

    from moon_ray.models.weights import minilm_dir

    return AutoModel.from_pretrained(minilm_dir()).eval(), load_text_tokenizer()


def head(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    """(B, in_dim) -> (B, out_dim): LayerNorm then a two-layer MLP (or one Linear when hidden=0)."""
    if hidden == 0:
        return nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, out_dim))
    return nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))


class DualEncoder(nn.Module):
    can_reason = False

    def __init__(self, cfg: ModelConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        torch.manual_seed(seed)  # random parts (a tiny tower, the heads) are rebuilt identically from the seed
        self.tower = build_tower(cfg.vision)
        self.text_tower, self.tokenizer = load_text_tower()
        self.compute_dtype = torch.float32
        self._freeze_towers()
        torch.manual_seed(seed)
        self.image_head = head(self.tower.feature_dim, cfg.dual_head_hidden, cfg.embed_dim)
        self.text_head = head(self.text_tower.config.hidden_size, cfg.dual_head_hidden, cfg.embed_dim)
        self.mix_logit = nn.Parameter(torch.zeros(()))  # α = sigmoid(mix_logit): the image's share

    def _freeze_towers(self) -> None:
        n_text, n_image = self.cfg.dual_text_trainable_layers, self.cfg.dual_image_trainable_blocks
        layers = self.text_tower.encoder.layer
        if n_text > len(layers):
            raise ConfigError(f"model.dual_text_trainable_layers={n_text}, but MiniLM has {len(layers)} layers")
        self.text_tower.requires_grad_(False)
        for layer in layers[len(layers) - n_text:]:
            layer.requires_grad_(True)
        if not n_image:
            self.tower.freeze()  # EfficientNet: batch norm folded into the convolutions, channels-last
            return
        net = self.tower.net
        if n_image > len(net._blocks):
            raise ConfigError(f"model.dual_image_trainable_blocks={n_image}, but the tower has {len(net._blocks)} blocks")
        self.tower.eval().requires_grad_(False)
        for module in (*net._blocks[len(net._blocks) - n_image:], net._conv_head, net._bn1):
            module.requires_grad_(True)

    def train(self, mode: bool = True) -> DualEncoder:
        """Heads follow `mode`; the towers stay in eval mode (no dropout, fixed batch-norm statistics)."""
        super().train(mode)
        self.tower.eval()
        self.text_tower.eval()
        return self

    # ---------------------------------------------------------------------------------- precision
    def set_precision(self, dtype: torch.dtype) -> DualEncoder:
        """Compute in `dtype` (moon_ray/models/precision.py): frozen tower weights are stored in it, the
        heads (and any fine-tuned tower layers) stay fp32 master weights cast per step. A partly trained
        vision tower keeps fp32 throughout (its batch norm); its features are cast."""
        self.compute_dtype = dtype
        store_frozen(self.text_tower, dtype)
        if not self.cfg.dual_image_trainable_blocks:
            self.tower.freeze(dtype)
        return self

    def compute_weights(self):
        """Context: trainable weights as `compute_dtype` copies (a no-op in fp32, or when nested)."""
        keep = self.tower if self.cfg.dual_image_trainable_blocks else None
        return compute_weights(self, self.compute_dtype, keep=keep)

    # ------------------------------------------------------------------------------------- inputs
    @property
    def device(self) -> torch.device:
        return self.mix_logit.device

    @property
    def lm(self) -> nn.Module:
        """The text tower, where checkpoints look for a PEFT adapter (MiniLM carries none)."""
        return self.text_tower

    def pixels(self, images) -> torch.Tensor:
        """Encoded images -> the tower's normalised input tensor (B, 3, S, S) on the model's device."""
        return self.tower.to_tensor(images, self.cfg.vision.image_size).to(self.device)

    def visual_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> globally pooled tower features (B, C) in the compute dtype; without grad when
        the tower is frozen, so one call may feed several forward passes (`forward(features=...)`)."""
        x = self.tower.input_format(pixels)
        self.tower.eval()
        with torch.set_grad_enabled(torch.is_grad_enabled() and bool(self.cfg.dual_image_trainable_blocks)):
            grid = self.tower(x)  # frozen lower blocks build no graph: nothing there requires grad
        return grid.mean(dim=(2, 3)).to(self.compute_dtype)

    def text_features(self, texts: list[str]) -> torch.Tensor:
        """Texts -> MiniLM's last hidden states mean-pooled over the attention mask (B, 384)."""
        enc = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt",
                             max_length=self.cfg.lm.max_text_tokens + TEXT_SPECIAL_TOKENS).to(self.device)
        self.text_tower.eval()
        hidden = self.text_tower(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)

    def visual_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("model.arch=dual has no causal LM: it cannot generate reasoning traces")

    # ------------------------------------------------------------------------------------ forward
    def forward(self, pixels: torch.Tensor | None = None, texts: list[str] | None = None,
                reasoning: list[str] | None = None, modality: str = "multimodal",
                is_query: bool = False, features: torch.Tensor | None = None) -> EmbedOutput:
        """Embeds one batch: image only, text only, or image + text (the gated mix). `modality` is
        implied by the inputs (MOON routes its MoE with it; the dual has none). Returns fp32."""
        if reasoning is not None:
            raise ValueError("model.arch=dual embeds image and text only; it takes no reasoning traces")
        if features is None and pixels is None and texts is None:
            raise ValueError("DualEncoder needs pixels or texts")
        with self.compute_weights():
            img = txt = None
            if features is None and pixels is not None:
                features = self.visual_features(pixels)
            if features is not None:
                img = self.image_head(features.to(self.compute_dtype)).float()
            if texts is not None:
                prefix = self.cfg.lm.query_prefix if is_query else self.cfg.lm.product_prefix
                pooled = self.text_features([prefix + t for t in texts]).to(self.compute_dtype)
                txt = self.text_head(pooled).float()
            if img is not None and txt is not None:
                alpha = torch.sigmoid(self.mix_logit.float())
                raw = alpha * F.normalize(img, dim=-1) + (1 - alpha) * F.normalize(txt, dim=-1)
            else:
                raw = img if img is not None else txt
        return EmbedOutput(embedding=F.normalize(raw, dim=-1), raw=raw, aux_loss=raw.new_zeros(()))

    def enable_gradient_checkpointing(self) -> None:
        """A no-op: the towers run in eval mode and are frozen or trained only in their top layers, so
        there are no large activations to recompute."""

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]
