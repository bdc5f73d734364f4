"""Creative4U pieces without Ray: defects, interest and rationale text, the answer parser and reward, the
pair plan, the training view (swaps) and the evaluation's scoring, against hand-derived values."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
from PIL import Image

from moon_ray.config.creative import CreativePairsConfig
from moon_ray.configlib import ConfigError, build
from moon_ray.creative.answer import choice_reward, parse_answer
from moon_ray.creative.defects import DEFECTS, apply_defect, foreground, product_box
from moon_ray.creative.evaluate import paired, score
from moon_ray.creative.pairs import plan_pairs, render_pair, split_counts
from moon_ray.creative.rationale import interest_text, render_rationale, target_answer
from moon_ray.creative.sft import training_view


def product_shot(size: int = 224) -> Image.Image:
    """A textured 'product' (stripes) in the middle of a white catalog shot."""
    arr = np.full((size, size, 3), 255, np.uint8)
    y, x = np.mgrid[0:size // 2, 0:size // 2]
    stripes = ((x // 4) % 2 * 180).astype(np.uint8)
    arr[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = np.stack([stripes, stripes // 2, 200 - stripes // 2], -1)
    return Image.fromarray(arr, "RGB")


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_every_defect_worsens_the_shot_in_its_own_way():
    img, rng = product_shot(), np.random.default_rng
    base = np.asarray(img, float)
    out = {name: apply_defect(name, img, rng(3)) for name in DEFECTS}
    assert all(o.size == img.size for o in out.values())
    detail = lambda a: np.abs(np.diff(np.asarray(a, float), axis=1)).mean()  # noqa: E731
    assert detail(out["blur"]) < 0.6 * detail(img)
    assert np.asarray(out["low_contrast"], float).std() < 0.5 * base.std()
    fg = foreground(img).sum()
    assert foreground(out["tiny"]).sum() < 0.2 * fg
    left, top, right, bottom = product_box(out["cutoff"])
    assert min(left, top) == 0 or right == 224 or bottom == 224  # the product runs out of the frame
    background = ~foreground(img)
    assert (np.abs(np.asarray(out["clutter"], float) - base)[background] > 30).mean() > 0.5
    assert np.array_equal(np.asarray(out["clutter"])[~background], np.asarray(img)[~background])  # product kept
    changed = (np.abs(np.asarray(out["watermark"], float) - base).sum(2) > 40).mean()
    assert 0.01 < changed < 0.5
    with pytest.raises(ValueError, match="unknown defect"):
        apply_defect("sepia", img, rng(0))


def test_rationale_renders_either_position_and_the_answer_format():
    q = {"kind": "quality", "defect": "blur", "product": "Men Navy Blue Shirts"}
    assert render_rationale(q, "B").startswith("Both images show the same Men Navy Blue Shirts. Image A is blurred")
    assert target_answer(q, "A").endswith("A is the better creative.</think><answer>A</answer>")
    i = {"kind": "interest", "interest": "prefers red heels", "good": "Women Red Heels", "other": "Women Blue Heels",
         "mismatch": ["colour"], "want": {"colour": "Red"}, "got": {"colour": "Blue"}}
    assert "image A shows Women Blue Heels, the wrong colour (Blue, not Red)" in render_rationale(i, "B")
    text = interest_text({"article_type": "Shirts", "colour": "Navy Blue", "gender": "Men", "usage": "Casual"},
                         np.random.default_rng(0))
    assert "navy blue shirts" in text and "men" in text and "casual" in text


def test_answer_parser_and_reward():
    assert parse_answer(" <think>A is blurred.</think>\n<answer> B </answer> ").choice == "B"
    assert parse_answer("<think>A is blurred.</think><answer>B</answer>").reasoning == "A is blurred."
    for bad in ("B", "<answer>B</answer>", "<think></think><answer>A</answer>", "<think>x</think><answer>C</answer>",
                "<think>x</think><answer>A</answer> and B", "<think>x<think>y</think><answer>A</answer>", ""):
        assert parse_answer(bad).choice is None, bad
    good = "<think>x</think><answer>A</answer>"
    assert choice_reward(good, "A", 0.1) == pytest.approx(1.1)
    assert choice_reward(good, "B", 0.1) == pytest.approx(0.1)
    assert choice_reward("A", "A", 0.1) == pytest.approx(-0.1)


def catalog_rows(n: int = 60) -> list[dict]:
    colours, types, splits = ("Red", "Blue", "Black"), ("Shirts", "Heels", "Watches"), ("train", "train", "train", "val", "test")
    return [{"id": str(i), "title": f"t{i}", "gender": "Men" if i % 2 else "Women", "colour": colours[i % 3],
             "article_type": types[(i // 3) % 3], "usage": "Casual", "split": splits[i % 5]} for i in range(n)]


def test_plan_is_product_disjoint_deterministic_and_labels_are_balanced():
    rows = catalog_rows()
    cfg = CreativePairsConfig(num_pairs=48, quality_share=0.5, seed=1)
    plan = plan_pairs(rows, cfg)
    assert plan == plan_pairs(rows, cfg) and len(plan) == 48
    for p in plan:
        assert rows[p["target"]]["split"] == p["split"]
        if p["kind"] == "interest":
            other, target = rows[p["other"]], rows[p["target"]]
            assert other["split"] == p["split"] and p["reason"]["mismatch"]
            assert all(other[a] != target[a] for a in p["reason"]["mismatch"])
    kinds = {p["kind"] for p in plan}
    assert kinds == {"quality", "interest"}
    assert 0.25 < sum(p["good"] == "A" for p in plan) / len(plan) < 0.75
    assert split_counts({"train": 100, "val": 1, "test": 1}, 3) == {"train": 1, "val": 1, "test": 1}
    assert split_counts({"train": 80, "val": 4, "test": 16}, 50) == {"train": 40, "val": 2, "test": 8}


def test_render_puts_the_winner_at_its_position():
    img = jpeg(product_shot())
    row = {"pair_id": "test-00000", "split": "test", "kind": "quality", "defect": "tiny", "interest": "likes shirts",
           "good": "B", "seed": 5, "reason": json.dumps({"kind": "quality", "defect": "tiny", "product": "Men Shirts"}),
           "id_good": "7", "id_other": "", "image_good": img, "image_other": img}
    out = render_pair(row, 90)
    fg = lambda b: foreground(Image.open(io.BytesIO(b))).sum()  # noqa: E731
    assert out["label"] == "B" and fg(out["image_a"]) < 0.3 * fg(out["image_b"])
    assert out["answer"].endswith("<answer>B</answer>") and "Image A shows the product tiny" in out["rationale"]


def test_training_view_swaps_images_label_and_rationale():
    reason = {"kind": "quality", "defect": "blur", "product": "Men Shirts"}
    rows = {"image_a": [b"a"], "image_b": [b"b"], "interest": ["likes shirts"], "label": ["A"],
            "reason": [json.dumps(reason)], "answer": [target_answer(reason, "A")]}
    kept = training_view(rows, random.Random(0), 0.0)
    swapped = training_view(rows, random.Random(0), 1.0)
    assert kept["image_a"] == [b"a"] and kept["answer"] == [target_answer(reason, "A")]
    assert swapped["image_a"] == [b"b"] and swapped["label"] == ["B"] and swapped["answer"] == [target_answer(reason, "B")]


def test_score_by_hand():
    a, b, bad = ("<think>x</think><answer>A</answer>", "<think>x</think><answer>B</answer>", "no idea")
    # pair 1 label A: right, and right swapped (says B) -> consistent; pair 2 label B: says A (wrong), swapped
    # says A (right) -> inconsistent; pair 3 label A: malformed, swapped B (right) -> inconsistent
    m = score(["A", "B", "A"], ["quality/blur", "interest", "interest"], [a, a, bad], [b, a, b], format_weight=0.1)
    assert m["accuracy_stored"] == pytest.approx(1 / 3) and m["accuracy_swapped"] == pytest.approx(1.0)
    assert m["accuracy"] == pytest.approx(2 / 3) and m["swap_consistency"] == pytest.approx(1 / 3)
    assert m["swap_consistency_valid"] == pytest.approx(1 / 2) and m["well_formed"] == pytest.approx(5 / 6)
    assert m["accuracy/quality/blur"] == 1.0 and m["accuracy/interest"] == pytest.approx(0.5)
    assert m["chose_A"] == pytest.approx(3 / 5)
    assert m["reward"] == pytest.approx((1.1 + 0.1 - 0.1 + 1.1 + 1.1 + 1.1) / 6)
    # paired: a second model right in both orders everywhere: per pair (1, 1, 1) - (1, 0.5, 0.5)
    d = paired(["A", "B", "A"], {"m1": ([a, a, bad], [b, a, b]), "m2": ([a, b, a], [b, a, b])})["m2 vs m1"]
    assert d["accuracy_diff"] == pytest.approx(1 / 3) and d["accuracy_diff_ci"][0] >= 0.0


def test_config_rejects_bad_values_by_name():
    with pytest.raises(ConfigError, match="creative.pairs.defects"):
        build(CreativePairsConfig, {"defects": ["sepia"]})
    with pytest.raises(ConfigError, match="quality_share"):
        build(CreativePairsConfig, {"quality_share": 1.5})


def test_selector_projector_from_an_embedder_and_its_own_adapter(tmp_path):
    import torch
    from safetensors.torch import save_file

    from moon_ray.config import load_config
    from moon_ray.creative.model import CreativeSelector
    from moon_ray.models.projector import Projector

    cfg = load_config(None, ["model.vision.name=tiny", "model.vision.pretrained=false", "model.lm.tiny=true",
                             "model.lm.lora.r=4"])
    sel = CreativeSelector(cfg.model)
    torch.manual_seed(9)
    other = Projector(sel.tower.feature_dim, sel.lm.config.hidden_size)
    save_file({f"model.projector.{k}": v for k, v in other.state_dict().items()} | {"model.head.w": torch.zeros(2)},
              str(tmp_path / "trainable.safetensors"))
    assert sel.init_projector(tmp_path) == len(other.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(sel.projector.state_dict().values(), other.state_dict().values(), strict=True))
    names = set(sel.trainable_state())
    assert names and all(n.startswith("projector.") or "lora_" in n for n in names)  # no embedder head, no tower
    wrong = Projector(8, sel.lm.config.hidden_size)
    save_file({f"model.projector.{k}": v for k, v in wrong.state_dict().items()}, str(tmp_path / "trainable.safetensors"))
    with pytest.raises(ValueError, match="does not fit"):
        sel.init_projector(tmp_path)
