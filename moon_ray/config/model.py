"""Config sections of the embedder: vision tower, LoRA, language model, fusion."""

from __future__ import annotations

from dataclasses import dataclass

from moon_ray.configlib import ConfigError, opt


# -------------------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class VisionConfig:
    name: str = opt(
        "efficientnet_lite0", "Vision tower: efficientnet_lite0, open_clip or tiny (random, tests)."
    )
    pretrained: bool = opt(True, "Load the tower's pretrained weights.")
    image_size: int = opt(224, "Input resolution of the tower.")
    pool_grid: int = opt(3, "Patch grid pooled to pool_grid×pool_grid visual tokens (+1 global token).")
    trainable: bool = opt(False, "Fine-tune the tower (False: frozen, features computed without grad).")
    trainable_blocks: int = opt(
        0,
        "arch=moon: fine-tune only the top N blocks of a frozen tower (EfficientNet-Lite0: of its 16 "
        "MBConv blocks, plus the head conv; batch norm keeps its statistics). 0: frozen (or all, "
        "with vision.trainable). Off by default: no gain measured on val yet.",
    )
    open_clip_model: str = opt("ViT-B-32", "open_clip model name (vision.name=open_clip).")
    open_clip_pretrained: str | None = opt(None, "Local open_clip checkpoint file (no download).")
    tiny_dim: int = opt(32, "Feature width of the tiny test tower.")


@dataclass(frozen=True)
class LoraConfig:
    enabled: bool = opt(True, "Train LoRA adapters (PEFT) instead of the full LM (which stays frozen).")
    r: int = opt(16, "LoRA rank.")
    alpha: int = opt(32, "LoRA alpha.")
    dropout: float = opt(0.05, "LoRA dropout.")
    targets: tuple[str, ...] = opt(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        "Modules that get adapters.",
    )


@dataclass(frozen=True)
class LMConfig:
    path: str | None = opt(
        None, "Hugging Face causal-LM directory; None: the packaged SmolLM2-135M-Instruct."
    )
    tiny: bool = opt(False, "A tiny random Llama built from config (tests; no weights).")
    embed_layers: int | None = opt(
        12,
        "Pool the hidden states after the first N decoder layers for the embedding (None or more than "
        "the LM has: all, as MOON). SmolLM2-135M has 30; 12 keeps CPU training fast. Generation "
        "(reasoning) always runs the full LM.",
    )
    lora: LoraConfig = opt(LoraConfig(), "LoRA adapters.")
    max_text_tokens: int = opt(40, "Title / query tokens kept.")
    max_reasoning_tokens: int = opt(64, "Reasoning-trace tokens kept in the embedding input.")
    query_prefix: str = opt("query: ", "Text put before a search query.")
    product_prefix: str = opt("product: ", "Text put before a product title.")


@dataclass(frozen=True)
class ModelConfig:
    arch: str = opt(
        "moon",
        "Embedder architecture: moon (vision tower -> projector -> LM with LoRA -> fusion/residual/"
        "MoE heads) | dual (the fine-tuned dual-encoder baseline, moon_ray/models/dual.py: frozen "
        "MiniLM text tower + this vision tower, small trained heads into one space; no reasoning).",
    )
    vision: VisionConfig = opt(VisionConfig(), "Vision tower.")
    lm: LMConfig = opt(LMConfig(), "Language model.")
    embed_dim: int = opt(256, "Embedding size D.")
    matryoshka: tuple[int, ...] = opt(
        (64, 128, 256), "Prefix sizes trained together (Matryoshka); the last is D."
    )
    pooling: str = opt("mean", "Pool the last layer's states: mean (MOON) or last (last token).")
    fusion: bool = opt(
        True, "MOON3.0 multi-head modality fusion over raw image/title signals and the pooled state."
    )
    fusion_heads: int = opt(4, "Fusion heads.")
    residual: bool = opt(True, "MOON3.0 fine-grained residual enhancement of visual tokens in LM layers.")
    residual_every: int = opt(4, "Inject projected patch features after every N-th decoder layer.")
    residual_grid: int | None = opt(
        None,
        "Feed the residual enhancement a finer patch grid: the tower's grid pooled to N×N (7: "
        "EfficientNet-Lite0's full 7×7), which each visual token reads by attention over its own "
        "region. None: re-add the pooled visual tokens themselves. Off by default: no gain measured "
        "on val yet.",
    )
    visual_skip: bool = opt(
        True,
        "Add the image's global tower feature to the embedding through a "
        "zero-initialised linear map (keeps fine image detail for image search).",
    )
    moe: bool = opt(True, "MOON2.0 modality-driven MoE embedding head.")
    moe_experts: int = opt(4, "MoE experts.")
    moe_top_k: int = opt(2, "Experts used per input.")
    moe_aux_weight: float = opt(0.01, "Weight of the MoE sparsity/entropy loss.")
    dual_head_hidden: int = opt(
        512, "arch=dual: hidden width of the image and text heads (two-layer MLPs; 0: a single linear map)."
    )
    dual_text_trainable_layers: int = opt(
        0, "arch=dual: fine-tune the top N of MiniLM's 6 layers (0: frozen)."
    )
    dual_image_trainable_blocks: int = opt(
        0,
        "arch=dual: fine-tune the top N of EfficientNet-Lite0's 16 blocks "
        "and its head conv (0: frozen; batch norm keeps its statistics).",
    )

    def validate(self) -> None:
        if self.arch not in ("moon", "dual"):
            raise ConfigError(f"model.arch: expected moon or dual, got {self.arch!r}")
        if (
            self.dual_head_hidden < 0
            or self.dual_text_trainable_layers < 0
            or self.dual_image_trainable_blocks < 0
        ):
            raise ConfigError(
                "model.dual_head_hidden, dual_text_trainable_layers and dual_image_trainable_blocks "
                "must be >= 0"
            )
        if self.dual_image_trainable_blocks and self.vision.name != "efficientnet_lite0":
            raise ConfigError("model.dual_image_trainable_blocks needs model.vision.name=efficientnet_lite0")
        if self.arch == "dual" and self.vision.trainable:
            raise ConfigError(
                "model.arch=dual keeps its vision tower frozen (model.vision.trainable=false); fine-tune "
                "its top blocks with model.dual_image_trainable_blocks=N"
            )
        if self.vision.trainable_blocks < 0 or (self.vision.trainable_blocks and self.vision.trainable):
            raise ConfigError("model.vision.trainable_blocks must be >= 0, and 0 when model.vision.trainable=true "
                              "(which already trains every block)")
        if self.vision.trainable_blocks and self.arch == "dual":
            raise ConfigError("model.vision.trainable_blocks is for arch=moon; the dual baseline uses "
                              "model.dual_image_trainable_blocks")
        if self.residual_grid is not None and self.residual_grid < self.vision.pool_grid:
            raise ConfigError(f"model.residual_grid={self.residual_grid} must be >= model.vision.pool_grid="
                              f"{self.vision.pool_grid} (a finer grid than the visual tokens), or null")
        if self.pooling not in ("mean", "last"):
            raise ConfigError(f"model.pooling: expected mean or last, got {self.pooling!r}")
        if (
            not self.matryoshka
            or self.matryoshka[-1] != self.embed_dim
            or list(self.matryoshka) != sorted(self.matryoshka)
        ):
            raise ConfigError(f"model.matryoshka must be increasing and end at embed_dim={self.embed_dim}")
        if self.moe and not 1 <= self.moe_top_k <= self.moe_experts:
            raise ConfigError("model.moe_top_k must be between 1 and moe_experts")
