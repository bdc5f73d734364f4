"""Command-line parsing of the pipeline scripts that have options of their own."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "pipelines" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_joint_vs_contrastive_keeps_overrides_apart_from_result_dirs():
    parser = load("joint_vs_contrastive").build_parser()
    args = parser.parse_args(["--init", "runs/export", "--results", "eval/frozen", "--results", "eval/train",
                              "train.batch_size=4", "--steps", "8"])
    assert [str(p) for p in args.results] == ["eval/frozen", "eval/train"]
    assert args.overrides == ["train.batch_size=4"] and args.steps == 8 and not args.reuse


def test_ablation_arms_differ_only_in_their_switch(tmp_path):
    ablate = load("ablate")
    args = ablate.build_parser().parse_args(["--steps", "6", "--out", str(tmp_path), "train.batch_size=4"])
    args.eval_every = 3
    full = ablate.arm_config("full", args)
    for arm, switch in (("no_fusion", "fusion"), ("no_residual", "residual"), ("no_moe", "moe"),
                        ("no_visual_skip", "visual_skip")):
        cfg = ablate.arm_config(arm, args)
        assert getattr(full.model, switch) and not getattr(cfg.model, switch)
        assert cfg.model == full.model.__class__(**{**full.model.__dict__, switch: False})
        assert (cfg.train.steps, cfg.train.seed, cfg.train.batch_size, cfg.train.eval_every) == (6, 0, 4, 3)
        assert cfg.eval.split == "test" and cfg.train.output_dir == str(tmp_path / arm)
    on = {"attr_align": {"attr_weight": 0.5, "title_image_weight": 0.5}, "shop_views": {"shop_view_p": 0.3},
          "coaug_views": {"coaugment": True}, "lowercase": {"query_lowercase_p": 0.5},
          "paraphrase": {"query_paraphrase_p": 0.3},
          "lower_attr": {"query_lowercase_p": 0.5, "attr_weight": 0.5, "title_image_weight": 0.5},
          "lower_attr_para": {"query_lowercase_p": 0.5, "attr_weight": 0.5, "title_image_weight": 0.5,
                              "query_paraphrase_p": 0.3}}
    for arm, fields in on.items():  # the switches that are off by default, switched on
        cfg = ablate.arm_config(arm, args)
        assert all(getattr(full.train, f) != v for f, v in fields.items())
        assert cfg.train == full.train.__class__(**{**full.train.__dict__, **fields, "output_dir": cfg.train.output_dir})
        assert cfg.model == full.model


def test_ablation_pipeline_end_to_end(ray_local, real_slice, tmp_path):
    """Two arms of one step each with a tiny model: val choice, test eval, table and JSON."""
    from tests.train.tiny_lm import write_tiny_lm

    tiny = write_tiny_lm(tmp_path / "tiny-lm", scale=2.0)
    out, result = tmp_path / "ablate", tmp_path / "ablations.json"
    code = load("ablate").main([
        "--steps", "1", "--arms", "full", "no_moe", "--out", str(out), "--results-json", str(result),
        f"model.lm.path={tiny}", "model.vision.name=tiny", "model.vision.pretrained=false", "model.embed_dim=32",
        "model.matryoshka=[16,32]", "model.lm.embed_layers=2", "train.batch_size=4", "train.num_workers=1",
        "train.cpus_per_worker=1", f"data.output_dir={real_slice}", "ray.progress=false", "eval.num_actors=1",
    ])
    assert code == 0
    summary = json.loads(result.read_text())
    assert list(summary["arms"]) == ["full", "no_moe"] and summary["arms"]["no_moe"]["overrides"] == ["model.moe=false"]
    for arm in summary["arms"].values():
        assert arm["selected"]["step"] == 1 and "text_unseen/nDCG@10" in arm["metrics"]
        assert set(arm["ci95"]) == set(arm["metrics"])
    assert all(v is True for v in summary["arms"]["full"]["overlaps_reference"].values())
    table = (out / "compare" / "compare.md").read_text()
    assert "| metric | full | no_moe |" in table and any(mark in table for mark in "≈▲▼")


def test_quality_arms_share_the_test_split_and_chain_joint_from_moon(tmp_path):
    quality = load("quality")
    args = quality.build_parser().parse_args(["--out", str(tmp_path), "--joint-steps", "4", "eval.limit=50"])
    frozen, moon, joint = (quality.arm_config(a, args) for a in ("frozen", "moon", "moon_joint"))
    assert frozen.eval.model == "frozen" and all(c.eval.split == "test" and c.eval.limit == 50
                                                 for c in (frozen, moon, joint))
    assert moon.train.eval_every > 0 and moon.model.arch == "moon"
    assert joint.rollout.enabled and joint.train.init_from == str(tmp_path / "moon" / "export")
    assert joint.train.steps == 4 and quality.arm_config("dual", args).model.arch == "dual"
    assert joint.rollout.sft_steps == 4 and joint.train.eval_every == 2 and not joint.eval.low_res
    assert moon.eval.low_res  # only the reasoning arm skips the 60×80 rows
    joint_async = quality.arm_config("moon_joint_async", args)
    assert joint_async.rollout.asynchronous and not joint.rollout.asynchronous
    assert joint_async.train.output_dir == str(tmp_path / "moon_joint_async")
    assert (joint_async.train.init_from, joint_async.train.steps) == (joint.train.init_from, joint.train.steps)


def test_arms_reuse_a_finished_training_only_of_the_asked_steps(tmp_path, monkeypatch):
    """train_or_reuse trains (timed, written to summary.json) unless --reuse finds a run of --steps;
    cached_json keeps what is there only with --reuse."""
    from moon_ray.eval import arms

    trained = []
    monkeypatch.setattr(arms, "run_train", lambda cfg: trained.append(cfg) or {"steps": cfg, "selected": {"step": 1}})
    first = arms.train_or_reuse(6, tmp_path, reuse=True, steps=6)
    assert trained == [6] and first["wall_s"] >= 0
    assert json.loads((tmp_path / "summary.json").read_text()) == first
    assert arms.train_or_reuse(6, tmp_path, reuse=True, steps=6) == first and trained == [6]
    assert arms.train_or_reuse(8, tmp_path, reuse=True, steps=8)["steps"] == 8 and trained == [6, 8]
    assert arms.train_or_reuse(8, tmp_path, reuse=True)["steps"] == 8 and trained == [6, 8]  # no steps: any run
    arms.train_or_reuse(8, tmp_path, reuse=False)
    assert trained == [6, 8, 8]
    path = tmp_path / "arm-mbe.json"
    assert arms.cached_json(path, True, lambda: {"n": 1}) == {"n": 1}
    assert arms.cached_json(path, True, lambda: {"n": 2}) == {"n": 1}
    assert arms.cached_json(path, False, lambda: {"n": 3}) == {"n": 3} == json.loads(path.read_text())


def test_creative_result_collects_a_run_and_a_stopped_checkpoint(tmp_path):
    pairs, sft, ckpt, ev = (tmp_path / n for n in ("pairs", "sft", "ckpt", "eval"))
    for d in (pairs, sft, ckpt, ev):
        d.mkdir()
    (pairs / "stats.json").write_text(json.dumps({"pairs": 8}))
    (sft / "summary.json").write_text(json.dumps({"steps": 2, "seconds": 5.0, "init_from": None, "history": [
        {"step": 1, "loss": 2.0, "time_update": 3.0, "other": 1}, {"step": 2, "loss": 1.0, "time_update": 5.0}]}))
    (ckpt / "creative_state.json").write_text(json.dumps({"step": 4}))
    (ckpt / "creative.json").write_text(json.dumps({"init_from": str(sft)}))
    (ckpt / "history.json").write_text(json.dumps([{"step": 4, "accuracy": 0.5, "grpo_clip_frac": 0.01}]))
    (ev / "metrics.json").write_text(json.dumps({"split": "test", "pairs": 3, "paired": {}, "models": {
        "m": {"accuracy": 0.5, "accuracy_ci": [0.4, 0.6], "swap_consistency": 0.3}}}))
    out = tmp_path / "creative.json"
    assert load("creative_result").main(["--pairs", str(pairs), "--sft", str(sft), "--grpo", str(ckpt), "--eval", str(ev),
                                         "--note", "n", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["sft"]["mean_seconds_per_step"] == {"time_update": 4.0} and "other" not in r["sft"]["curve"][0]
    assert r["grpo"]["stopped_at_checkpoint"] and r["grpo"]["steps"] == 4 and r["grpo"]["init_from"] == str(sft)
    assert r["evaluations"][0]["eval_dir"] == str(ev) and r["notes"] == ["n"] and r["pairs"] == {"pairs": 8}
