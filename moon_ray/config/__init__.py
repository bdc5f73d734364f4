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

from moon_ray.config.creative import CreativeConfig  # noqa: F401
from moon_ray.config.data import ColumnMap, DataConfig, ImageConfig, PreprocessConfig, RayConfig, SplitConfig  # noqa: F401  (the sections, importable from here)
from moon_ray.config.model import LMConfig, LoraConfig, ModelConfig, VisionConfig  # noqa: F401
from moon_ray.config.runs import RolloutConfig, TrainConfig  # noqa: F401
from moon_ray.config.serving import EvalConfig, IndexConfig, ServeConfig  # noqa: F401
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
    creative: CreativeConfig = opt(CreativeConfig(), "Creative4U: pairs, the creative selector, its training and evaluation.")

    def validate(self) -> None:
        if self.model.arch == "dual" and self.rollout.enabled:
            raise ConfigError(
                "model.arch=dual has no language model to generate reasoning traces: "
                "set rollout.enabled=false"
            )


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
