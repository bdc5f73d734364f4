"""The arms of a comparison pipeline (pipelines/ablate.py, pipelines/quality.py): each trains once and is
evaluated once, and with `--reuse` a finished training or evaluation under the pipeline's --out is kept.

    summary = train_or_reuse(cfg, Path("outputs/ablate/full"), reuse=True, steps=60)
    results = cached_json(Path("outputs/quality/moon-mbe.json"), True, lambda: run_eval(with_model(cfg, m)))
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

from moon_ray.config import Config
from moon_ray.infrastructure.timing import timed
from moon_ray.train.driver import run_train


def with_model(cfg: Config, model: str) -> Config:
    """`cfg` evaluating `model` (a baseline's name or an exported model directory)."""
    return dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, model=model))


def cached_json(path: Path, reuse: bool, make: Callable[[], dict],
                keep: Callable[[dict], bool] = lambda found: True) -> dict:
    """The JSON at `path` when `reuse` and it is there and `keep` accepts it; otherwise `make()`'s dict,
    written to `path`."""
    if reuse and path.exists():
        found = json.loads(path.read_text())
        if keep(found):
            return found
    made = make()
    path.write_text(json.dumps(made, indent=2))
    return made


def train_or_reuse(cfg: Config, run_dir: Path, reuse: bool, steps: int | None = None) -> dict:
    """The training summary of `run_dir` (its summary.json, with `wall_s`): the finished run there when
    `reuse` (and it ran `steps` steps, when given), otherwise `cfg` trained now."""

    def train() -> dict:
        with timed("train") as phase:
            summary = run_train(cfg)
        summary["wall_s"] = round(phase.seconds, 1)
        return summary

    return cached_json(run_dir / "summary.json", reuse, train,
                       keep=lambda found: steps is None or found.get("steps") == steps)
