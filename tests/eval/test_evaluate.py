"""End to end on a small real slice: frozen and random baselines through Ray Data, reports, --compare."""

from __future__ import annotations

import json

import pytest

from moon_ray.cli import main
from moon_ray.config import load_config
from moon_ray.eval.data import build_requests, load_split
from moon_ray.eval.evaluate import run_eval
from moon_ray.eval.report import load_results

SMALL = ["ray.progress=false", "eval.num_actors=1", "eval.cpus_per_actor=0.5", "eval.batch_size=32"]


def eval_cfg(catalog, out, model, *extra):
    return load_config(None, [f"data.output_dir={catalog}", f"eval.output_dir={out}", f"eval.model={model}",
                              *SMALL, *extra])


@pytest.fixture(scope="module")
def evaluated(real_slice, tmp_path_factory, ray_local):
    out = tmp_path_factory.mktemp("eval")
    return {m: run_eval(eval_cfg(real_slice, out, m)) for m in ("frozen", "random")}, out


def test_requests_cover_every_task(real_slice):
    data = load_split(eval_cfg(real_slice, "unused", "random"))
    assert data.size > 30 and data.queries
    assert all(all(0 <= i < data.size for i in rel) for rel in data.query_relevant)
    assert len(data.unseen_queries) == len(data.queries)
    assert all(u != q for u, q in zip(data.unseen_queries, data.queries, strict=True))
    table, parts = build_requests(data, ("article_type", "gender"))
    unseen = table.slice(parts["text_unseen"].start, len(data.queries)).column("text").to_pylist()
    assert unseen == data.unseen_queries
    n = data.size
    assert [parts[p].stop - parts[p].start for p in ("product", "image_degraded", "image", "image_text")] == [n] * 4
    assert table.num_rows == parts["label/gender"].stop
    rows = table.slice(parts["image_text"].start, 1).to_pylist()[0]
    assert rows["degrade"] == data.products["id"][0] and rows["text"] and rows["image"]
    limited = load_split(eval_cfg(real_slice, "unused", "random", "eval.limit=10"))
    assert limited.size == 10 and all(max(rel) < 10 for rel in limited.query_relevant)


def test_frozen_beats_random_on_a_real_slice(evaluated):
    results, _ = evaluated
    frozen, random = results["frozen"]["metrics"], results["random"]["metrics"]
    assert set(frozen) == set(random)
    for key, value in frozen.items():
        assert 0.0 <= value <= 1.0, key
    assert frozen["text/nDCG@10"] > 0.5 and frozen["text/nDCG@10"] > random["text/nDCG@10"] + 0.3
    # held-out wordings: harder than the template for a text model, still far above random
    assert frozen["text_unseen/nDCG@10"] > random["text_unseen/nDCG@10"] + 0.2
    for key, value in frozen.items():
        lo, hi = results["frozen"]["ci95"][key]
        assert lo <= value + 1e-9 and value <= hi + 1e-9, key
    assert results["frozen"]["zero_shot_groups"] == {
        "seen_as_training_queries": ["article_type", "colour", "gender"],
        "never_training_queries": ["season", "usage"]}
    assert frozen["image_same/R@10"] > 0.6 > random["image_same/R@10"]
    assert frozen["image_text/R@1"] > random["image_text/R@1"] + 0.3
    assert frozen["image_similar/nDCG@10"] > random["image_similar/nDCG@10"]
    assert frozen["zero_shot_multimodal/article_type"] > 0.5
    # frozen: an image vector is orthogonal to every label prompt -> all labels tie -> chance, flagged
    assert results["frozen"]["zero_shot_tie_fraction"]["zero_shot_image/gender"] == 1.0
    n_labels = results["frozen"]["counts"]["labels/gender"]
    assert frozen["zero_shot_image/gender"] == pytest.approx(1 / n_labels)


def test_report_files_written_and_readable(evaluated):
    results, out = evaluated
    run = out / "frozen"
    for name in ("results.json", "results.md", "metrics.png", "recall_at_k.png"):
        assert (run / name).stat().st_size > 0
    loaded = json.loads((run / "results.json").read_text())
    assert loaded["metrics"]["text/nDCG@10"] == pytest.approx(results["frozen"]["metrics"]["text/nDCG@10"])
    assert loaded["split"] == "test" and loaded["n_products"] == results["frozen"]["n_products"]
    assert loaded["curves"]["image_same"]["k"][0] == 1
    md = (run / "results.md").read_text()
    assert "text → product, unseen wording nDCG@10 (primary)" in md and "text → product, training template" in md
    assert "zero-shot articleType (image; label seen as a training query)" in md
    assert "zero-shot season (multimodal; label never a training query)" in md
    rows = [line.split(" |")[0] for line in md.splitlines() if line.startswith("| zero-shot")]
    assert [r.endswith("never a training query)") for r in rows] == [False] * 3 + [True] * 2 + [False] * 3 + [True] * 2
    assert (run / "metrics.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_cli(evaluated, tmp_path, capsys):
    _, out = evaluated
    code = main(["eval", "--compare", str(out / "frozen"), str(out / "random"), "--out", str(tmp_path)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| metric | frozen | random |" in printed
    summary = json.loads((tmp_path / "compare.json").read_text())
    assert summary["models"] == ["frozen", "random"]
    assert summary["metrics"]["text/nDCG@10"]["frozen"] == load_results(out / "frozen")["metrics"]["text/nDCG@10"]
    assert (tmp_path / "compare.md").exists() and (tmp_path / "metrics.png").exists()


def test_clear_errors(tmp_path, capsys):
    assert main(["eval", "--model", "random", f"data.output_dir={tmp_path}/none"]) == 2
    assert "run `moon-ray preprocess" in capsys.readouterr().err
    assert main(["eval", "--model", "no-such-model"]) == 2
    assert "not a registered encoder" in capsys.readouterr().err
    assert main(["eval", "--compare", str(tmp_path)]) == 2
    assert "no results.json" in capsys.readouterr().err
    assert main(["eval", "eval.index=ivf"]) == 2
    assert "eval.index" in capsys.readouterr().err
