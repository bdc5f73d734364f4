"""Contrastive training on Ray Train (2 DDP workers, 2 CPUs, a real catalog slice): checkpoints,
resume at the saved step, export, and `train.init_from`."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file, save_file

from moon_ray.config import load_config
from moon_ray.configlib import ConfigError
from moon_ray.train.driver import run_train


def contrastive_cfg(tiny_dir, real_slice, out, *extra):
    return load_config(None, [
        f"model.lm.path={tiny_dir}", "model.vision.name=tiny", "model.vision.pretrained=false", "model.embed_dim=32",
        "model.matryoshka=[16,32]", "model.lm.embed_layers=2", "train.batch_size=4", "train.warmup_steps=0",
        "train.lr=0.01", f"data.output_dir={real_slice}", f"train.output_dir={out}", "train.log_every=1",
        "train.checkpoint_every=2", "train.cpus_per_worker=0.5", "train.num_workers=2", "ray.progress=false",
        "train.eval_every=0", "serve.index_after_export=false", *extra,
    ])


def test_train_resumes_at_the_saved_step_and_init_from_starts_at_zero(ray_local, real_slice, tmp_path):
    from tests.train.tiny_lm import write_tiny_lm

    tiny = write_tiny_lm(tmp_path / "tiny-lm", scale=2.0)
    first = run_train(contrastive_cfg(tiny, real_slice, tmp_path / "run", "train.steps=2"))
    assert first["resumed_from_step"] == 0 and [h["step"] for h in first["history"]] == [1, 2]
    export = tmp_path / "run" / "export"
    exported = load_file(str(export / "trainable.safetensors"))

    snapshot = tmp_path / "step-2"
    snapshot.mkdir()
    save_file(exported, str(snapshot / "trainable.safetensors"))  # the run's export moves on to step 3

    resumed = run_train(contrastive_cfg(tiny, real_slice, tmp_path / "run", "train.steps=3"))
    assert resumed["resumed_from_step"] == 2 and [h["step"] for h in resumed["history"]] == [3]
    assert json.loads((export / "MOON_MODEL").read_text())["step"] == 3

    # a new run from the step-2 weights: step 0, fresh optimizer; with lr 0 the weights stay the snapshot's
    init = run_train(contrastive_cfg(tiny, real_slice, tmp_path / "init", "train.steps=1", "train.lr=0.0",
                                     "train.learn_temperature=false", f"train.init_from={snapshot}"))
    assert init["resumed_from_step"] == 0 and init["init_from"] == str(snapshot.resolve())
    after = load_file(str(tmp_path / "init" / "export" / "trainable.safetensors"))
    assert after.keys() == exported.keys()
    assert all(float((after[k] - exported[k]).abs().max()) < 1e-6 for k in after)


def test_init_from_must_name_a_checkpoint(tmp_path):
    cfg = load_config(None, [f"train.init_from={tmp_path}", f"train.output_dir={tmp_path / 'out'}"])
    with pytest.raises(ConfigError, match="init_from"):
        run_train(cfg)


def test_validation_keeps_the_best_val_checkpoint_and_exports_it(ray_local, real_slice, tmp_path):
    """eval_every=1: every step scores the val split; the export is the step with the best select_metric,
    recorded in best.json and the summary, and the val metrics reach the history."""
    from tests.train.tiny_lm import write_tiny_lm

    tiny = write_tiny_lm(tmp_path / "tiny-lm", scale=2.0)
    out = tmp_path / "run"
    summary = run_train(contrastive_cfg(tiny, real_slice, out, "train.steps=3", "train.eval_every=1",
                                        "train.select_metric=image_same/R@10", "train.lr=0.05"))
    history = summary["history"]
    values = [h["val/image_same/R@10"] for h in history]
    best = json.loads((out / "best.json").read_text())
    assert best["metric"] == "image_same/R@10" and best["value"] == max(values)
    assert best["step"] == history[values.index(max(values))]["step"]  # the first step reaching the max
    assert summary["selected"]["step"] == best["step"]
    assert json.loads((out / "export" / "MOON_MODEL").read_text())["step"] == best["step"]
    assert all("val/text_unseen/nDCG@10" in h and "time_val" in h for h in history)
    with pytest.raises(Exception, match="select_metric"):
        run_train(contrastive_cfg(tiny, real_slice, tmp_path / "bad", "train.steps=1", "train.eval_every=1",
                                  "train.select_metric=text/nope"))
