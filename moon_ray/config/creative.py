"""Config section of Creative4U (explainable creative selection): the pairs, the selector, its training and
evaluation. The selector reuses `model.vision` and `model.lm` (tower, LM, LoRA settings) with its own adapter."""

from __future__ import annotations

from dataclasses import dataclass

from moon_ray.configlib import ConfigError, opt

DEFECTS = ("blur", "low_contrast", "cutoff", "tiny", "clutter", "watermark")
STAGES = ("sft", "grpo")


@dataclass(frozen=True)
class CreativePairsConfig:
    output_dir: str = opt("outputs/creative/pairs", "Where `moon-ray creative pairs` writes <split>/*.parquet and stats.json.")
    num_pairs: int = opt(8000, "Pairs in all splits together (split shares follow the catalog's product split).")
    limit: int | None = opt(None, "Build at most N pairs (tests, smoke runs); None: num_pairs.")
    quality_share: float = opt(0.6, "Share of quality pairs (a product's image vs a degraded creative of it); "
                                    "the rest are interest pairs (two products, one matches the user's interests).")
    defects: tuple[str, ...] = opt(DEFECTS, f"Defects a quality pair may carry (drawn uniformly): {', '.join(DEFECTS)}.")
    seed: int = opt(0, "Seed of the pair plan and of every image operation (pairs are reproducible).")
    jpeg_quality: int = opt(90, "JPEG quality of both stored creatives (the same for both, so it tells nothing).")
    rows_per_block: int = opt(256, "Pairs rendered per Ray Data task (one Parquet file each).")

    def validate(self) -> None:
        if self.num_pairs < 1 or (self.limit is not None and self.limit < 1):
            raise ConfigError("creative.pairs.num_pairs and creative.pairs.limit must be >= 1")
        if not 0.0 <= self.quality_share <= 1.0:
            raise ConfigError(f"creative.pairs.quality_share must be in [0, 1], got {self.quality_share}")
        unknown = [d for d in self.defects if d not in DEFECTS]
        if unknown or not self.defects:
            raise ConfigError(f"creative.pairs.defects: unknown {unknown} (choose from {', '.join(DEFECTS)}) or empty")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError("creative.pairs.jpeg_quality must be in 1..100")
        if self.rows_per_block < 1:
            raise ConfigError("creative.pairs.rows_per_block must be >= 1")


@dataclass(frozen=True)
class CreativeTrainConfig:
    stage: str = opt("sft", "Training stage: sft (CoT-SFT on the reference rationales) or grpo (GRPO on the "
                            "rollout pool from the SFT selector in creative.train.init_from; pool and GRPO "
                            "settings from the rollout section).")
    output_dir: str = opt("outputs/creative/sft", "Adapter (creative.safetensors), config and summary of the stage.")
    init_from: str | None = opt(
        None, "Stage grpo: the SFT selector directory it starts from (creative.safetensors and creative.json, "
              "written by stage sft); its adapter is also the frozen KL reference.")
    num_workers: int = opt(1, "Ray Train workers (DDP ranks).")
    cpus_per_worker: float = opt(1.0, "CPUs per worker.")
    use_gpu: bool = opt(False, "Train on GPUs.")
    steps: int = opt(200, "Optimizer steps.")
    batch_size: int = opt(8, "Pairs per worker per step.")
    lr: float = opt(5e-4, "Peak learning rate (AdamW; linear warm-up, cosine decay to 10 %).")
    warmup_steps: int = opt(10, "Linear warm-up steps.")
    weight_decay: float = opt(0.0, "AdamW weight decay.")
    grad_clip: float = opt(1.0, "Clip the gradient norm to this (0: off).")
    swap_prob: float = opt(0.5, "Probability a training pair is shown with A and B exchanged (rationale re-rendered), "
                                "so the position carries no signal.")
    limit: int | None = opt(None, "Train on at most N train pairs (None: all).")
    log_every: int = opt(10, "Report metrics every N steps.")
    checkpoint_every: int = opt(50, "Save a resumable checkpoint (weights, optimizer, step, history) every N steps "
                                    "(and at the end).")
    max_failures: int = opt(1, "Worker failures a run survives, each restart continuing from the latest checkpoint "
                               "(-1: no limit).")
    resume: bool = opt(True, "Resume from the latest checkpoint under output_dir/ray when there is one (a run "
                             "with more steps continues a finished one).")
    skip_uniform_groups: bool = opt(
        True, "Stage grpo: leave out of the update the pairs whose sampled answers all got the same reward (zero "
              "advantage: only their KL term would act), as DAPO's dynamic sampling does; at least "
              "rollout.grpo_minibatches pairs stay so every DDP rank runs the same passes. The logged reward and "
              "accuracy are over every sampled answer.")
    seed: int = opt(0, "Random seed (model's random parts, order, swaps).")
    init_projector_from: str | None = opt(
        None, "Start the projector from an embedder checkpoint or export directory (its trainable.safetensors); "
              "None: a fresh projector. The LM adapter is always the selector's own.")

    def validate(self) -> None:
        if self.stage not in STAGES:
            raise ConfigError(f"creative.train.stage: expected one of {', '.join(STAGES)}, got {self.stage!r}")
        if self.stage == "grpo" and not self.init_from:
            raise ConfigError("creative.train.stage=grpo starts from an SFT selector: set creative.train.init_from "
                              "to the directory stage sft wrote (e.g. outputs/creative/sft)")
        if self.stage == "sft" and self.init_from:
            raise ConfigError("creative.train.init_from is read by stage grpo only (stage sft starts fresh; its "
                              "projector may start from an embedder: creative.train.init_projector_from)")
        if self.steps < 1 or self.batch_size < 1 or self.num_workers < 1 or self.log_every < 1:
            raise ConfigError("creative.train.steps, batch_size, num_workers and log_every must be >= 1")
        if self.max_failures < -1:
            raise ConfigError(f"creative.train.max_failures must be >= -1 (-1: no limit), got {self.max_failures}")
        if self.checkpoint_every < 1:
            raise ConfigError(f"creative.train.checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if not 0.0 <= self.swap_prob <= 1.0:
            raise ConfigError(f"creative.train.swap_prob must be in [0, 1], got {self.swap_prob}")
        if self.lr <= 0:
            raise ConfigError(f"creative.train.lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class CreativeConfig:
    pairs: CreativePairsConfig = opt(CreativePairsConfig(), "CreativePair-style dataset built from the catalog.")
    train: CreativeTrainConfig = opt(CreativeTrainConfig(), "Training of the selector (`moon-ray creative train`).")
    max_answer_tokens: int = opt(80, "Longest generated answer (<think>…</think><answer>X</answer>), in tokens.")
    max_interest_tokens: int = opt(32, "Interest-text tokens kept in the prompt.")
    eval_split: str = opt("test", "Split `moon-ray creative eval` scores (val to choose, test to report).")
    eval_limit: int | None = opt(None, "Score at most N pairs of the split (None: all).")
    eval_batch_size: int = opt(16, "Pairs per generation batch in evaluation.")
    eval_output_dir: str = opt("outputs/creative/eval", "Where `moon-ray creative eval` writes metrics and report.md.")
    report_examples: int = opt(6, "Examples (images, reasoning, verdict) rendered into the Markdown report.")
    format_weight: float = opt(0.1, "Size of the format term of the choice reward (+w well-formed, -w malformed).")

    def validate(self) -> None:
        if self.eval_split not in ("train", "val", "test"):
            raise ConfigError(f"creative.eval_split: expected train, val or test, got {self.eval_split!r}")
        if self.max_answer_tokens < 8 or self.max_interest_tokens < 1:
            raise ConfigError("creative.max_answer_tokens must be >= 8 and max_interest_tokens >= 1")
        if self.eval_batch_size < 1 or (self.eval_limit is not None and self.eval_limit < 1):
            raise ConfigError("creative.eval_batch_size and creative.eval_limit must be >= 1")
        if self.report_examples < 0 or self.format_weight < 0:
            raise ConfigError("creative.report_examples and creative.format_weight must be >= 0")
