"""Validation during training: the val split scored exactly as `moon-ray eval` scores a split, on the
live model, and the best checkpoint kept by one named val metric.

    validator = Validator(cfg)                     # loads the val split and its requests once
    metrics = validator(model)                     # {"val/text_unseen/nDCG@10": 0.61, ...}
    keeper = BestKeeper(cfg)                       # output_dir/best/ + best.json
    keeper.offer(step, metrics, save=lambda path: save_checkpoint(path, ...))

Splits have roles: train to learn, val to choose, test only to report. This module is what training
chooses with: every `train.eval_every` steps (and at the last step) rank 0 embeds the val products and
queries with the current weights (eval mode, no grad), scores them with `eval.evaluate.score`, and
when `train.select_metric` improves writes the checkpoint to `train.output_dir/best`. The export is
made from that checkpoint. Nothing here reads the test split.

Products are embedded without reasoning traces here even for a joint model: generating a trace per
val product costs minutes per validation on CPU. The final evaluation embeds them with the policy.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from moon_ray.config import Config

BEST_DIR, BEST_FILE = "best", "best.json"


class Validator:
    """Val metrics of a live model, with the evaluation's own requests and scoring."""

    def __init__(self, cfg: Config):
        from moon_ray.eval.data import build_requests, load_split

        t = cfg.train
        self.cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, split="val", limit=t.val_limit))
        self.data = load_split(self.cfg)
        self.requests, self.parts = build_requests(self.data, cfg.eval.zero_shot)

    def __call__(self, model) -> dict[str, float]:
        """`val/<metric>` for every metric `moon-ray eval` reports (product embeddings without traces)."""
        import torch

        from moon_ray.eval.embed import embed_batch
        from moon_ray.eval.evaluate import score
        from moon_ray.infrastructure.index import build_index
        from moon_ray.models.export import MoonEncoder

        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                encoder = MoonEncoder.over(model, self.cfg, name="val")
                vecs = embed_batch(encoder, self.requests, self.cfg.eval.seed)
        finally:
            model.train(was_training)
        index = build_index(vecs[self.parts["product"]], "flat", use_gpu=False)
        results = score(self.data, {name: vecs[s] for name, s in self.parts.items()}, index, self.cfg.eval.seed)
        return {f"val/{k}": float(v) for k, v in results["metrics"].items() if _finite(v)}


class BestKeeper:
    """Keeps the checkpoint with the best `train.select_metric` (higher is better) in output_dir/best."""

    def __init__(self, cfg: Config, fresh: bool):
        """fresh: a run from step 0, which forgets a best of an earlier run in the same output_dir; a
        resumed run keeps competing with its own best."""
        self.metric = f"val/{cfg.train.select_metric}"
        self.root = Path(cfg.train.output_dir).resolve()
        record = self.root / BEST_FILE
        if fresh:
            record.unlink(missing_ok=True)
            _remove(self.root / BEST_DIR)
        self.best = json.loads(record.read_text()) if record.exists() else None

    def offer(self, step: int, metrics: dict[str, float], save: Callable[[Path], object]) -> bool:
        """Save when `metrics[self.metric]` beats the best so far; True when it did."""
        if self.metric not in metrics:
            known = ", ".join(sorted(k.removeprefix("val/") for k in metrics))
            raise KeyError(f"train.select_metric: {self.metric.removeprefix('val/')!r} is not a val metric "
                           f"(known: {known})")
        value = metrics[self.metric]
        if self.best is not None and value <= self.best["value"]:
            return False
        tmp = self.root / f"{BEST_DIR}.tmp"
        _remove(tmp)
        save(tmp)
        _remove(self.root / BEST_DIR)
        tmp.rename(self.root / BEST_DIR)
        self.best = {"step": step, "metric": self.metric.removeprefix("val/"), "value": value, "val": metrics}
        (self.root / BEST_FILE).write_text(json.dumps(self.best, indent=2))
        return True


def best_checkpoint(output_dir: str | Path) -> tuple[Path, dict] | None:
    """(output_dir/best, its record) when validation chose one, else None."""
    root = Path(output_dir).resolve()
    if (root / BEST_FILE).exists() and (root / BEST_DIR).is_dir():
        return root / BEST_DIR, json.loads((root / BEST_FILE).read_text())
    return None


def _finite(v) -> bool:
    return isinstance(v, int | float | np.floating) and math.isfinite(float(v))


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
