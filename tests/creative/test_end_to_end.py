"""Creative4U end to end on a slice of the real catalog, tiny models: pairs (Ray Data) -> CoT-SFT (Ray Train,
two steps) -> eval (zero-shot and SFT, both orders) -> Markdown report."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import torch

from moon_ray.config import load_config
from tests.conftest import real_overrides

TINY = ["model.vision.name=tiny", "model.vision.pretrained=false", "model.lm.tiny=true", "model.lm.lora.r=4"]


def test_pairs_sft_eval(tmp_path, shared_data, ray_local):
    from moon_ray.catalog.ingest import run_preprocess
    from moon_ray.creative.evaluate import ZERO_SHOT, evaluate
    from moon_ray.creative.model import CreativeSelector
    from moon_ray.creative.pairs import build_pairs
    from moon_ray.creative.sft import build_selector
    from moon_ray.creative.trainer import run_train

    catalog = tmp_path / "catalog"
    run_preprocess(load_config(None, real_overrides(shared_data, catalog, 80)))
    cfg = load_config(None, [
        *TINY, f"data.output_dir={catalog}", "ray.progress=false",
        f"creative.pairs.output_dir={tmp_path / 'pairs'}", "creative.pairs.limit=20", "creative.pairs.rows_per_block=8",
        f"creative.train.output_dir={tmp_path / 'sft'}", "creative.train.steps=2", "creative.train.batch_size=4",
        "creative.train.log_every=1", "creative.train.warmup_steps=1",
        f"creative.eval_output_dir={tmp_path / 'eval'}", "creative.max_answer_tokens=12", "creative.eval_limit=3",
        "creative.report_examples=2",
    ])

    stats = build_pairs(cfg)
    assert stats["pairs"] == 20 and stats["products_shared_between_splits"] == 0
    train = pq.read_table(tmp_path / "pairs" / "train")
    assert set(train.column("label").to_pylist()) <= {"A", "B"} and train.num_rows >= 8
    row = train.slice(0, 1).to_pylist()[0]
    assert row["image_a"] != row["image_b"] and row["answer"].endswith(f"<answer>{row['label']}</answer>")
    assert "construction" in json.loads((tmp_path / "pairs" / "stats.json").read_text())["labels"]

    summary = run_train(cfg)
    assert [h["step"] for h in summary["history"]] == [1, 2]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in summary["history"])
    trained, start = CreativeSelector.load(tmp_path / "sft"), build_selector(cfg)
    before, after = start.trainable_state(), trained.trainable_state()
    assert set(before) == set(after) and any(n for n in after if "lora_B" in n)
    assert all(not torch.equal(before[n], after[n]) for n in after if "lora_B" in n or "projector" in n)

    result = evaluate(cfg, [ZERO_SHOT, str(tmp_path / "sft")])
    assert len(result["models"]) == 2 and result["pairs"] >= 1
    for m in result["models"].values():
        assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["swap_consistency"] <= 1.0
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "Labels come from construction" in report and "swap consistency" in report
    assert len(list((tmp_path / "eval" / "examples").glob("*.jpg"))) == 2 * min(2, result["pairs"])
    answers = (tmp_path / "eval" / "answers.jsonl").read_text().splitlines()
    assert len(answers) == result["pairs"]
