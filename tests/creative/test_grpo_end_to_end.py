"""Creative4U train -> eval -> serve, tiny (CI's one end-to-end run of it): pairs from a real catalog slice
(Ray Data; labels, splits and rationales checked), one CoT-SFT step
(Ray Train), two GRPO steps from that SFT selector on a torch-engine rollout pool (weights synced before
each step), evaluation of zero-shot, SFT and SFT+GRPO side by side, and POST /v1/creative/select through
Ray Serve with the GRPO selector beside the embeddings."""

from __future__ import annotations

import dataclasses
import json

import httpx
import torch

from moon_ray.config import load_config
from tests.conftest import real_overrides
from tests.serve.conftest import data_url, free_port
from tests.train.tiny_lm import write_tiny_lm


def test_sft_then_grpo_then_eval_then_serve(tmp_path, shared_data, ray_local):
    import pyarrow.parquet as pq
    from ray import serve

    from moon_ray.catalog.ingest import run_preprocess
    from moon_ray.creative.evaluate import ZERO_SHOT, evaluate
    from moon_ray.creative.model import CreativeSelector
    from moon_ray.creative.pairs import build_pairs
    from moon_ray.creative.sft import build_selector
    from moon_ray.creative.trainer import run_train
    from moon_ray.serve.app import build_app

    catalog, tiny = tmp_path / "catalog", write_tiny_lm(tmp_path / "tiny-lm", seed=1, scale=2.0)
    run_preprocess(load_config(None, real_overrides(shared_data, catalog, 60)))
    base = [f"model.lm.path={tiny}", "model.vision.name=tiny", "model.vision.pretrained=false", "model.lm.lora.r=4",
            "model.lm.lora.dropout=0.0", f"data.output_dir={catalog}", "ray.progress=false",
            f"creative.pairs.output_dir={tmp_path / 'pairs'}", "creative.pairs.limit=16", "creative.pairs.rows_per_block=8",
            "creative.max_answer_tokens=8", "creative.train.log_every=1", "creative.train.warmup_steps=0",
            "creative.train.cpus_per_worker=1", f"creative.eval_output_dir={tmp_path / 'eval'}", "creative.eval_limit=2",
            "creative.report_examples=1"]
    sft_dir, grpo_dir = tmp_path / "sft", tmp_path / "grpo"
    sft = load_config(None, [*base, f"creative.train.output_dir={sft_dir}", "creative.train.steps=1",
                             "creative.train.batch_size=4"])
    stats = build_pairs(sft)
    assert stats["pairs"] == 16 and stats["products_shared_between_splits"] == 0
    train = pq.read_table(tmp_path / "pairs" / "train")
    assert set(train.column("label").to_pylist()) <= {"A", "B"} and train.num_rows >= 4
    row = train.slice(0, 1).to_pylist()[0]
    assert row["image_a"] != row["image_b"] and row["answer"].endswith(f"<answer>{row['label']}</answer>")
    assert "construction" in json.loads((tmp_path / "pairs" / "stats.json").read_text())["labels"]

    assert run_train(sft)["stage"] == "sft"
    before, after = build_selector(sft).trainable_state(), CreativeSelector.load(sft_dir).trainable_state()
    assert set(before) == set(after) and any("lora_B" in n for n in after)
    assert all(not torch.equal(before[n], after[n]) for n in after if "lora_B" in n or "projector" in n)

    grpo = load_config(None, [*base, "creative.train.stage=grpo", f"creative.train.init_from={sft_dir}",
                              f"creative.train.output_dir={grpo_dir}", "creative.train.steps=2",
                              "creative.train.batch_size=2", "creative.train.lr=0.01", "rollout.engine=torch",
                              "rollout.num_workers=1", "rollout.cpus_per_worker=0.25", "rollout.group_size=2",
                              "rollout.grpo_minibatches=1", "rollout.temperature=1.0"])
    summary = run_train(grpo)
    history = summary["history"]
    assert [h["step"] for h in history] == [1, 2] and json.loads((grpo_dir / "history.json").read_text()) == history
    for h in history:
        assert 0.0 <= h["accuracy"] <= 1.0 and 0.0 <= h["well_formed"] <= 1.0 and 0.0 <= h["grpo_clip_frac"] <= 1.0
        assert h["grpo_kl"] >= 0.0 and h["reward_group_std"] >= 0.0 and -0.1 - 1e-6 <= h["reward_mean"] <= 1.1 + 1e-6
    # the pool got the SFT adapter before step 1 and the step's weights after each: answers never lag
    assert [h["synced_version"] for h in history] == [1.0, 2.0] and all(h["version_lag"] == 0.0 for h in history)
    assert [r["step"] for r in summary["reward_curve"]] == [1, 2] and "reward_mean" in summary["reward_curve"][0]
    meta = json.loads((grpo_dir / "creative.json").read_text())
    assert meta["stage"] == "grpo" and meta["init_from"] == str(sft_dir) and meta["steps"] == 2
    # a longer run in the same output_dir resumes the finished one (weights, optimizer, history)
    more = run_train(dataclasses.replace(grpo, creative=dataclasses.replace(
        grpo.creative, train=dataclasses.replace(grpo.creative.train, steps=3))))
    assert more["resumed_from_step"] == 2 and [h["step"] for h in more["history"]] == [1, 2, 3]
    assert more["history"][:2] == history and more["history"][2]["synced_version"] == 3.0
    # the pool got the resumed weights as version 2 before step 3: its answers are not stale
    assert more["history"][2]["version_lag"] == 0.0 and more["history"][2]["kept_rollouts"] == 1.0
    assert json.loads((grpo_dir / "creative.json").read_text())["steps"] == 3

    result = evaluate(grpo, [ZERO_SHOT, str(sft_dir), str(grpo_dir)])
    assert len(result["models"]) == 3 and all(0.0 <= m["accuracy"] <= 1.0 for m in result["models"].values())
    for m in result["models"].values():
        assert 0.0 <= m["swap_consistency"] <= 1.0
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "| " + str(grpo_dir.resolve()) + " |" in report
    assert "Labels come from construction" in report and "swap consistency" in report
    assert len(list((tmp_path / "eval" / "examples").glob("*.jpg"))) == 2 * min(1, result["pairs"])
    assert len((tmp_path / "eval" / "answers.jsonl").read_text().splitlines()) == result["pairs"]

    pair = pq.read_table(tmp_path / "pairs" / "test").slice(0, 1).to_pylist()[0]
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app({"overrides": [f"data.output_dir={catalog}", "serve.model=random", "serve.index_limit=0",
                                           "serve.cpus_per_replica=0.25", "serve.auth=open",
                                           f"serve.creative_model={grpo_dir}", "serve.creative_cpus_per_replica=0.25",
                                           "creative.max_answer_tokens=8"]}),
                  name="creative-e2e", route_prefix="/creative-e2e")
        body = {"image_a": data_url(pair["image_a"]), "image_b": data_url(pair["image_b"]), "interest": pair["interest"]}
        r = httpx.post(f"http://127.0.0.1:{port}/creative-e2e/v1/creative/select", json=body, timeout=300)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["model"] == "grpo" and out["choice"] in ("A", "B", None) and isinstance(out["explanation"], str)
        bad = httpx.post(f"http://127.0.0.1:{port}/creative-e2e/v1/creative/select", json={**body, "image_b": "!!"},
                         timeout=60)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "image_b"
    finally:
        serve.shutdown()
