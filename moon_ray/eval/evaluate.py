"""`moon-ray eval`: a model or baseline on the held-out split, end to end.

    moon-ray eval --model frozen                       # or: python pipelines/evaluate.py --model frozen
    moon-ray eval --model outputs/train/export eval.index=hnsw
    moon-ray eval --compare outputs/eval/frozen outputs/eval/random
    moon-ray eval --protocol kagl --model frozen       # Marqo's public KAGL protocol (kagl.py)

load the split → embed every request on a Ray Data actor pool (embed.py) → FAISS index of the
products (index.py) → metrics (metrics.py), each with a bootstrap 95 % interval over queries →
results.json, results.md and plots in `eval.output_dir/<model>` (report.py). The model is used only
through `Encoder.encode`; every phase is timed by one named timer (infrastructure/timing.py).

| task                          | query                               | relevant                          | metrics          |
| ----------------------------- | ----------------------------------- | --------------------------------- | ---------------- |
| text → product, unseen wording (primary) | "navy shirt for gents" (a wording training never writes) | every product with those attributes | nDCG@10, hit@1/10 |
| text → product, training template | "Men Navy Blue Shirts"           | the same                          | nDCG@10, hit@1/10 |
| image → product, same         | degraded product image              | that product                      | R@1, R@10        |
| image → product, similar      | product image (itself left out)     | same gender, colour, article type | nDCG@10          |
| image+text → product          | degraded image + "Navy Blue Shirts" | that product                      | R@1, R@10        |
| zero-shot classification      | product embedding / image only      | nearest label prompt (text)       | accuracy         |
| low-res variants (`eval.low_res`) | the image_same, image_text and text_unseen queries | the same, in an index of the catalog embedded from 60×80 thumbnails | `<task>_lowres/…` |

Zero-shot fields are grouped by whether the trainer saw their values as text queries (article type,
colour, gender: `TRAINING_QUERY_FIELDS`) or never did (season, usage).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from moon_ray.catalog.wording import TRAINING_QUERY_FIELDS
from moon_ray.config import Config, ConfigError, load_config, to_dict
from moon_ray.eval import metrics as M
from moon_ray.eval.data import EvalSet, labels_of

CURVE_KS = (1, 2, 5, 10, 20, 50, 100)
SIMILAR_KEYS = ("gender", "colour", "article_type")


def run_eval(cfg: Config) -> dict:
    """Evaluate `cfg.eval.model` on `cfg.eval.split`; writes the report and returns the results."""
    from moon_ray.eval.data import build_requests, load_split
    from moon_ray.eval.embed import embed_requests
    from moon_ray.eval.report import model_slug, write_results
    from moon_ray.infrastructure.index import build_index, gpu_count
    from moon_ray.infrastructure.runtime import init_ray
    from moon_ray.infrastructure.timing import PhaseTimer

    check_model(cfg.eval.model)
    cfg = resolve_model(cfg)
    ev, ix, timer = cfg.eval, cfg.index, PhaseTimer(prefix="", suffix="_s")
    with timer("load"):
        data = load_split(cfg)
        requests, parts = build_requests(data, ev.zero_shot)
        if ev.low_res:
            requests, parts = with_low_res_products(requests, parts, data)
        requests, traces_note = with_stored_traces(requests, parts, data, ev.model)
    with timer("embed"):
        init_ray(cfg.ray)
        vecs = embed_requests(requests, cfg)
    with timer("index"):
        hnsw = (ix.hnsw_m, ix.hnsw_ef_construction, ix.hnsw_ef_search)
        index = build_index(vecs[parts["product"]], ev.index, *hnsw)
        low = build_index(vecs[parts["product_lowres"]], ev.index, *hnsw) if "product_lowres" in parts else None
    with timer("score"):
        results = score(data, {name: vecs[s] for name, s in parts.items()}, index, ev.seed, low_res_index=low)

    results.update(
        model=ev.model, name=model_slug(ev.model), split=data.split, n_products=data.size,
        dim=int(vecs.shape[1]), index=ev.index, faiss_gpus=gpu_count(), n_requests=requests.num_rows,
        timings_s={k: round(v, 2) for k, v in timer.metrics().items()}, config=to_dict(cfg), traces=traces_note,
    )
    results["output_dir"] = str(write_results(results, Path(ev.output_dir) / results["name"]))
    return results


def with_low_res_products(requests, parts: dict[str, slice], data: EvalSet):
    """The request table plus a `product_lowres` part: every product (image + title) with its image
    shrunk to a 60×80 shop thumbnail (moon_ray/eval/degrade.py `low_res`, made on the embedding actors)."""
    import pyarrow as pa

    from moon_ray.eval.degrade import low_res_key

    p, start = data.products, requests.num_rows
    extra = pa.table({"row": pa.array(range(start, start + data.size), pa.int64()),
                      "image": pa.array(p["image"], pa.binary()), "text": pa.array(p["title"], pa.string()),
                      "degrade": pa.array([low_res_key(i) for i in p["id"]], pa.string()),
                      "product": pa.array([True] * data.size, pa.bool_())})
    table = pa.concat_tables([requests, extra.cast(requests.schema)])
    return table, {**parts, "product_lowres": slice(start, start + data.size)}


def with_stored_traces(requests, parts: dict[str, slice], data: EvalSet, model: str):
    """(the request table with a `trace` column, what it reuses): each product row gets its stored trace
    when that is of the model's policy version (index_artifact.stored_traces), as `moon-ray index` does;
    the other rows None (a model that reasons generates those on the actors). Said on stdout."""
    import pyarrow as pa

    from moon_ray.eval.data import TRACE_COLUMNS
    from moon_ray.eval.index_artifact import model_identity, stored_traces

    table = pa.table({c: data.products[c] for c in ("id", *TRACE_COLUMNS) if c in data.products})
    stored, _, told = stored_traces(table, model_identity(model))
    if told:
        print(f"eval: {told}", flush=True)
    column: list[str | None] = [None] * requests.num_rows
    if stored is not None:
        column[parts["product"]] = stored
    return requests.append_column("trace", pa.array(column, pa.string())), told


def resolve_model(cfg: Config) -> Config:
    """`eval.model` made absolute when it is a directory (Ray workers may not share the driver's cwd)."""
    if Path(cfg.eval.model).is_dir():
        return dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, model=str(Path(cfg.eval.model).resolve())))
    return cfg


def check_model(model: str) -> None:
    """Fail on the driver, before Ray starts, when `model` is neither a known name nor a directory."""
    from moon_ray.models.encoder import registered

    if model not in registered() and not Path(model).is_dir():
        raise ConfigError(f"eval.model: {model!r} is not a registered encoder ({', '.join(registered())}) "
                          "nor an existing model directory")


def score(data: EvalSet, vecs: dict[str, np.ndarray], index, seed: int = 0, low_res_index=None) -> dict:
    """Every metric (with its bootstrap 95 % interval over queries) from the embedded parts (see
    build_requests) and the product index; with `low_res_index` (the products embedded from 60×80
    thumbnails) also the `<task>_lowres` variants of image_same, image_text and text_unseen."""
    from moon_ray.infrastructure.index import search

    n = data.size
    depth = min(n, max(CURVE_KS))
    ks = [k for k in CURVE_KS if k <= n]
    out: dict[str, dict] = {"metrics": {}, "ci95": {}, "counts": {}, "curves": {}, "zero_shot_tie_fraction": {}}

    def record(key: str, per_query: np.ndarray) -> None:
        out["metrics"][key] = M.mean_defined(per_query)
        out["ci95"][key] = list(M.bootstrap_ci(per_query, seed=seed))

    def ranked(queries: np.ndarray, k: int, idx=index) -> np.ndarray:
        return M.sort_hits(*search(idx, queries, k))

    def retrieval(task: str, queries: np.ndarray, relevant: list, wanted: dict, idx=index) -> None:
        r = ranked(queries, depth, idx)
        for key, (fn, k) in wanted.items():
            record(f"{task}/{key}", fn(r, relevant, k))
        out["counts"][task] = len(relevant)
        out["curves"][task] = {"k": ks, "recall": M.recall_curve(r, relevant, ks)}

    own = [[i] for i in range(n)]
    text_metrics = {"nDCG@10": (M.ndcg_at_k, 10), "hit@1": (M.hit_at_k, 1), "hit@10": (M.hit_at_k, 10)}
    if "text_unseen" in vecs and len(data.unseen_queries):
        retrieval("text_unseen", vecs["text_unseen"], data.query_relevant, text_metrics)
    retrieval("text", vecs["text_query"], data.query_relevant, text_metrics)
    retrieval("image_same", vecs["image_degraded"], own, {"R@1": (M.recall_at_k, 1), "R@10": (M.recall_at_k, 10)})
    retrieval("image_text", vecs["image_text"], own, {"R@1": (M.recall_at_k, 1), "R@10": (M.recall_at_k, 10)})
    if low_res_index is not None:
        recall = {"R@1": (M.recall_at_k, 1), "R@10": (M.recall_at_k, 10)}
        retrieval("image_same_lowres", vecs["image_degraded"], own, recall, low_res_index)
        retrieval("image_text_lowres", vecs["image_text"], own, recall, low_res_index)
        if "text_unseen" in vecs and len(data.unseen_queries):
            retrieval("text_unseen_lowres", vecs["text_unseen"], data.query_relevant, text_metrics, low_res_index)

    similar = similar_relevant(data)
    r = M.exclude(ranked(vecs["image"], min(n, 11)), range(n), 10)
    record("image_similar/nDCG@10", M.ndcg_at_k(r, similar, 10))
    out["counts"]["image_similar"] = sum(1 for s in similar if s)
    zero_shot(data, vecs, out, record)
    return out


def zero_shot(data: EvalSet, vecs: dict[str, np.ndarray], out: dict, record) -> None:
    """Nearest-label classification of every `label/<field>` part, from the product embedding and from
    the image alone; fields grouped by whether the trainer saw their values as text queries."""
    fields = [p.split("/", 1)[1] for p in vecs if p.startswith("label/")]
    for field in fields:
        values = data.products[field]
        labels = labels_of(values)
        items = [i for i, v in enumerate(values) if v]
        truth = np.array([labels.index(values[i]) for i in items], dtype=np.int64)
        out["counts"][f"zero_shot/{field}"] = len(items)
        out["counts"][f"labels/{field}"] = len(labels)
        for source, part in (("multimodal", "product"), ("image", "image")):
            s = vecs[part][items] @ vecs[f"label/{field}"].T
            key = f"zero_shot_{source}/{field}"
            record(key, M.zero_shot_correct(s, truth) if items else np.array([]))
            out["zero_shot_tie_fraction"][key] = M.tie_fraction(s) if items else float("nan")
    seen = [f for f in fields if f in TRAINING_QUERY_FIELDS]
    out["zero_shot_groups"] = {"seen_as_training_queries": seen, "never_training_queries": [f for f in fields if f not in seen]}


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
    p.add_argument("--protocol", choices=("mbe", "kagl"), default="mbe",
                   help="mbe: our MBE-style evaluation (default); kagl: Marqo's public KAGL protocol, "
                        "written to <eval.output_dir>/<model>-kagl beside Marqo's published numbers")


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
    if getattr(args, "protocol", "mbe") == "kagl":
        from moon_ray.eval.kagl import kagl_markdown, run_kagl

        results = run_kagl(cfg)
        print(kagl_markdown(results))
        print(f"\nwritten: {results['output_dir']}/results.md, results.json")
        return 0
    results = run_eval(cfg)
    print(markdown_table([results]))
    print(f"\nwritten: {results['output_dir']}/results.md, results.json, metrics.png, recall_at_k.png")
    return 0
