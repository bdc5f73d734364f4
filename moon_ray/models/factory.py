"""The embedder a config names (`model.arch`): what training and loading an export build.

    model = build_embedder(cfg)     # MoonEmbedder (arch=moon) or DualEncoder (arch=dual), seeded by train.seed

Both expose the interface the trainer, checkpoints, export, evaluation and serving use (see
moon_ray/models/dual.py). `check_arch` holds the rules that span config sections: the dual encoder has
no causal LM, so it cannot train jointly (rollout.enabled: GRPO on reasoning traces).
"""

from __future__ import annotations

from torch import nn

from moon_ray.config import Config, ConfigError

ARCHS = ("moon", "dual")


def check_arch(cfg: Config) -> None:
    """ConfigError when `model.arch` cannot run with the rest of the config."""
    if cfg.model.arch not in ARCHS:
        raise ConfigError(f"model.arch: expected one of {', '.join(ARCHS)}, got {cfg.model.arch!r}")
    if cfg.model.arch == "dual" and cfg.rollout.enabled:
        raise ConfigError("model.arch=dual (the dual-encoder baseline) has no language model to generate reasoning "
                          "traces, so it cannot train jointly with GRPO: set rollout.enabled=false")


def build_embedder(cfg: Config) -> nn.Module:
    """The embedder of `cfg.model`, its random parts seeded by `cfg.train.seed` (so an export rebuilds
    the same model before loading its trained weights)."""
    check_arch(cfg)
    if cfg.model.arch == "dual":
        from moon_ray.models.dual import DualEncoder

        return DualEncoder(cfg.model, seed=cfg.train.seed)
    from moon_ray.models.embedder import MoonEmbedder

    return MoonEmbedder(cfg.model, seed=cfg.train.seed)
