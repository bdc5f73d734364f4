"""`moon-ray eval`: a model or baseline on the held-out split, end to end.

    moon-ray eval --model frozen                       # or: python pipelines/evaluate.py --model frozen
    moon-ray eval --model outputs/train/export eval.index=hnsw
    moon-ray eval --compare outputs/eval/frozen outputs/eval/random

load the split → embed every request on a Ray Data actor pool (embed.py) → FAISS index of the
products (index.py) → metrics (metrics.py) → results.json, results.md and plots in
`eval.output_dir/<model>` (report.py). The model is used only through `Encoder.encode`.

| task                          | query                               | relevant                          | metrics          |
| ----------------------------- | ----------------------------------- | --------------------------------- | ---------------- |
| text → product (primary)      | "Men Navy Blue Shirts"              | every product with those attributes | nDCG@10, hit@1/10 |
| image → product, same         | degraded product image              | that product                      | R@1, R@10        |
| image → product, similar      | product image (itself left out)     | same gender, colour, article type | nDCG@10          |
| image+text → product          | degraded image + "Navy Blue Shirts" | that product                      | R@1, R@10        |
| zero-shot classification      | product embedding / image only      | nearest label prompt (text)       | accuracy         |
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from moon_ray.config import Config, ConfigError, load_config, to_dict
from moon_ray.eval import metrics as M
from moon_ray.eval.data import EvalSet, labels_of

CURVE_KS = (1, 2, 5, 10, 20, 50, 100)
SIMILAR_KEYS = ("gender", "colour", "article_type")


def run_eval(cfg: Config) -> dict:
    """Evaluate `cfg.eval.model` on `cfg.eval.split`; writes the report and returns the results."""
    from moon_ray.eval.data import build_requests, load_split
    from moon_ray.eval.embed import embed_requests
    from moon_ray.infrastructure.index import build_index, gpu_count
    from moon_ray.eval.report import model_slug, write_results
    from moon_ray.infrastructure.runtime import init_ray

    check_model(cfg.eval.model)
    if Path(cfg.eval.model).is_dir():  # Ray workers may not share the driver's working directory
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, model=str(Path(cfg.eval.model).resolve())))
    timings: dict[str, float] = {}
    t = time.perf_counter()
    data = load_split(cfg)
    requests, parts = build_requests(data, cfg.eval.zero_shot)
    timings["load_s"] = time.perf_counter() - t

    t = time.perf_counter()
    init_ray(cfg.ray)
    vecs = embed_requests(requests, cfg)
    timings["embed_s"] = time.perf_counter() - t

    t = time.perf_counter()
    ix = cfg.index
    index = build_index(vecs[parts["product"]], cfg.eval.index, ix.hnsw_m, ix.hnsw_ef_construction, ix.hnsw_ef_search)
    timings["index_s"] = time.perf_counter() - t

    t = time.perf_counter()
    results = score(data, {name: vecs[s] for name, s in parts.items()}, index)
    timings["score_s"] = time.perf_counter() - t

    results.update(
        model=ev.model, name=model_slug(ev.model), split=data.split, n_products=data.size,
        dim=int(vecs.shape[1]), index=ev.index, faiss_gpus=gpu_count(), n_requests=requests.num_rows,
        timings_s={k: round(v, 2) for k, v in timings.items()}, config=to_dict(cfg),
    )
    results["output_dir"] = str(write_results(results, Path(ev.output_dir) / results["name"]))
    return results


def check_model(model: str) -> None:
    """Fail on the driver, before Ray starts, when `model` is neither a known name nor a directory."""
    from moon_ray.models.encoder import registered

    if model not in registered() and not Path(model).is_dir():
        raise ConfigError(f"eval.model: {model!r} is not a registered encoder ({', '.join(registered())}) "
                          "nor an existing model directory")


def score(data: EvalSet, vecs: dict[str, np.ndarray], index) -> dict:
    """Every metric from the embedded parts (see build_requests) and the product index."""
    from moon_ray.infrastructure.index import search

    n = data.size
    depth = min(n, max(CURVE_KS))
    ks = [k for k in CURVE_KS if k <= n]

    def ranked(queries: np.ndarray, k: int) -> np.ndarray:
        return M.sort_hits(*search(index, queries, k))

    metrics: dict[str, float] = {}
    counts: dict[str, int] = {}
    curves: dict[str, dict] = {}

    def retrieval(task: str, queries: np.ndarray, relevant: list, wanted: dict) -> None:
        r = ranked(queries, depth)
        for key, (fn, k) in wanted.items():
            metrics[f"{task}/{key}"] = M.mean_defined(fn(r, relevant, k))
        counts[task] = len(relevant)
        curves[task] = {"k": ks, "recall": M.recall_curve(r, relevant, ks)}

    own = [[i] for i in range(n)]
    retrieval("text", vecs["text_query"], data.query_relevant,
              {"nDCG@10": (M.ndcg_at_k, 10), "hit@1": (M.hit_at_k, 1), "hit@10": (M.hit_at_k, 10)})
    retrieval("image_same", vecs["image_degraded"], own, {"R@1": (M.recall_at_k, 1), "R@10": (M.recall_at_k, 10)})
    retrieval("image_text", vecs["image_text"], own, {"R@1": (M.recall_at_k, 1), "R@10": (M.recall_at_k, 10)})

    similar = similar_relevant(data)
    r = M.exclude(ranked(vecs["image"], min(n, 11)), range(n), 10)
    metrics["image_similar/nDCG@10"] = M.mean_defined(M.ndcg_at_k(r, similar, 10))
    counts["image_similar"] = sum(1 for s in similar if s)

    ties: dict[str, float] = {}
    for name in (p for p in vecs if p.startswith("label/")):
        field = name.split("/", 1)[1]
        values = data.products[field]
        labels = labels_of(values)
        items = [i for i, v in enumerate(values) if v]
        truth = np.array([labels.index(values[i]) for i in items], dtype=np.int64)
        counts[f"zero_shot/{field}"] = len(items)
        for source, part in (("multimodal", "product"), ("image", "image")):
            s = vecs[part][items] @ vecs[name].T
            metrics[f"zero_shot_{source}/{field}"] = M.zero_shot_accuracy(s, truth) if items else float("nan")
            ties[f"zero_shot_{source}/{field}"] = M.tie_fraction(s) if items else float("nan")
        counts[f"labels/{field}"] = len(labels)
    return {"metrics": metrics, "counts": counts, "curves": curves, "zero_shot_tie_fraction": ties}


def similar_relevant(data: EvalSet) -> list[list[int]]:
    """Per product: the *other* products with the same gender, colour and article type."""
    p = data.products
    groups: dict[tuple, list[int]] = defaultdict(list)
    keys = list(zip(*(p[k] for k in SIMILAR_KEYS), strict=True))
    for i, key in enumerate(keys):
        if all(key):
            groups[key].append(i)
    return [[j for j in groups[key] if j != i] if all(key) else [] for i, key in enumerate(keys)]


# ---------------------------------------------------------------------------------------------- CLI
def add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="baseline name (frozen, random) or exported model directory; "
                                                 "shortcut for eval.model=…")
    p.add_argument("--compare", nargs="+", metavar="DIR", default=None,
                   help="write a side-by-side table of existing result directories instead of evaluating")
    p.add_argument("--out", default=None, help="where --compare writes (default: <eval.output_dir>/compare)")


def cli_eval(args) -> int:
    from moon_ray.eval.report import compare, markdown_table

    overrides = list(args.overrides)
    if args.model:
        overrides.append(f"eval.model={json.dumps(args.model)}")
    cfg = load_config(args.config, overrides)
    if args.compare:
        out = Path(args.out) if args.out else Path(cfg.eval.output_dir) / "compare"
        print(compare([Path(d) for d in args.compare], out))
        print(f"\nwritten: {out}/compare.md, compare.json, metrics.png, recall_at_k.png")
        return 0
    results = run_eval(cfg)
    print(markdown_table([results]))
    print(f"\nwritten: {results['output_dir']}/results.md, results.json, metrics.png, recall_at_k.png")
    return 0
