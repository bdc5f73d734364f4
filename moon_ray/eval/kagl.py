"""`moon-ray eval --protocol kagl`: Marqo's public fashion benchmark protocol, on our split.

    moon-ray eval --protocol kagl --model frozen      # -> <eval.output_dir>/frozen-kagl/results.{json,md}

Marqo evaluates Marqo-FashionCLIP / Marqo-FashionSigLIP on "KAGL", the same Kaggle/Myntra catalog we
train on (repository marqo-ai/marqo-FashionCLIP: configs/KAGL.json, eval.py, utils/metrics.py,
utils/retrieval.py; numbers from LEADERBOARD.md). This module runs their protocol on `eval.split`
so our numbers can be printed beside theirs:

| task (Marqo's name)          | query                  | documents                              | metrics         |
| ---------------------------- | ---------------------- | -------------------------------------- | --------------- |
| text-to-image                | product title          | image embedding                        | R@1, R@10, MRR  |
| category-to-product          | master category label  | normalize(0.9·image + 0.1·title)       | P@1, P@10, MRR  |
| sub-category-to-product      | sub category label     | same                                   | P@1, P@10, MRR  |
| fine-category-to-product     | article type label     | same                                   | P@1, P@10, MRR  |
| color-to-product             | colour label           | same                                   | P@1, P@10, MRR  |
| season-to-product            | season label           | same                                   | P@1, P@10, MRR  |
| usage-to-product             | usage label            | same                                   | P@1, P@10, MRR  |

Relevant = every product of the split with exactly that title / label. Queries: every distinct value,
or a seeded sample of 2,000 when there are more (Marqo: "randomly sampled queries (up to 2000)").
Metrics as Marqo computes them (BEIR → trec_eval for P and R, their own MRR): the top 10 are retrieved
(max of Ks = 1, 10); P@k = relevant in top k / k; R@k = relevant in top k / all relevant; MRR = 1/rank
of the first relevant within those 10, else 0. Each comes with a bootstrap 95 % interval over queries.
Image, title and label embeddings all come from `Encoder.encode` (image only / text only), on the
Ray Data actor pool of embed.py. Differences from Marqo's run, stated in the report: our corpus is
one split (theirs is all 44,434 products), our titles and labels are the cleaned preprocessed ones.

With `eval.low_res` (default on) every task runs a second time on documents embedded from the product
images shrunk to 60×80 shop thumbnails (moon_ray/eval/degrade.py `low_res`), reported as
`<task>-lowres/<metric>` and printed in a column beside the full-resolution numbers.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa

from moon_ray.config import Config, to_dict
from moon_ray.eval import metrics as M
from moon_ray.eval.data import EvalSet


@dataclasses.dataclass(frozen=True)
class KaglTask:
    name: str  # Marqo's task name
    field: str  # product column of the query text
    docs: str  # "image" or "image+text"
    metrics: tuple[str, ...]
    published: tuple[tuple[float, ...], ...]  # per PUBLISHED_MODELS, one number per metric


# Marqo's published KAGL numbers (the `published` column): marqo-ai/marqo-FashionCLIP LEADERBOARD.md
# (updated 2024-08-09), section "KAGL"; corpus = the Marqo/KAGL dataset (Hugging Face), split "data".
PUBLISHED_SOURCE = "marqo-ai/marqo-FashionCLIP LEADERBOARD.md (2024-08-09), KAGL section"
PUBLISHED_CORPUS = 44_434
PUBLISHED_MODELS = ("Marqo-FashionSigLIP", "Marqo-FashionCLIP")
RETRIEVAL, LABEL = ("R@1", "R@10", "MRR"), ("P@1", "P@10", "MRR")
TASKS = (  # name, field, documents, metrics, published (FashionSigLIP, FashionCLIP)
    KaglTask("text-to-image", "title", "image", RETRIEVAL, ((0.179, 0.489, 0.293), (0.159, 0.446, 0.265))),
    KaglTask("category-to-product", "master_category", "image+text", LABEL,
             ((0.571, 0.686, 0.643), (0.714, 0.571, 0.714))),
    KaglTask("sub-category-to-product", "sub_category", "image+text", LABEL,
             ((0.711, 0.687, 0.756), (0.667, 0.613, 0.691))),
    KaglTask("fine-category-to-product", "article_type", "image+text", LABEL,
             ((0.704, 0.629, 0.763), (0.725, 0.613, 0.772))),
    KaglTask("color-to-product", "colour", "image+text", LABEL, ((0.587, 0.502, 0.664), (0.500, 0.496, 0.614))),
    KaglTask("season-to-product", "season", "image+text", LABEL, ((0.500, 0.350, 0.500), (0.250, 0.425, 0.542))),
    KaglTask("usage-to-product", "usage", "image+text", LABEL, ((0.375, 0.400, 0.438), (0.250, 0.263, 0.354))),
)
PUBLISHED: dict[str, dict[str, float]] = {
    model: {f"{t.name}/{m}": t.published[j][i] for t in TASKS for i, m in enumerate(t.metrics)}
    for j, model in enumerate(PUBLISHED_MODELS)
}
DOC_WEIGHTS = (0.9, 0.1)  # image, title (configs/KAGL.json "doc_weights")
MAX_QUERIES = 2000
DEPTH = 10  # Marqo retrieves max(Ks) = 10 documents per query; MRR only sees those
METRIC_FNS = {"R@1": (M.recall_at_k, 1), "R@10": (M.recall_at_k, 10), "P@1": (M.precision_at_k, 1),
              "P@10": (M.precision_at_k, 10), "MRR": (M.mrr_at_k, DEPTH)}


def kagl_queries(data: EvalSet, task: KaglTask, seed: int) -> tuple[list[str], list[list[int]]]:
    """The task's queries (distinct values of its field, sorted; a seeded sample of MAX_QUERIES when
    there are more) and, per query, the indices of every product with exactly that value."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, value in enumerate(data.products[task.field]):
        if value:
            groups[value].append(i)
    texts = sorted(groups)
    if len(texts) > MAX_QUERIES:
        rng = np.random.default_rng([seed, TASKS.index(task)])
        texts = [texts[i] for i in sorted(rng.choice(len(texts), MAX_QUERIES, replace=False))]
    return texts, [groups[t] for t in texts]


def build_kagl_requests(data: EvalSet, query_texts: list[str],
                        low_res: bool = False) -> tuple[pa.Table, dict[str, slice], dict[str, int]]:
    """Requests for embed.py: every product image alone (and, with `low_res`, every product image as
    a 60×80 thumbnail), then every distinct text (titles and queries) alone. Returns the table, the
    slices of the image rows ("image", "image_lowres") and the row of each distinct text."""
    from moon_ray.eval.degrade import low_res_key

    n_img = data.size
    images = list(data.products["image"]) * (2 if low_res else 1)
    keys = [None] * n_img + ([low_res_key(i) for i in data.products["id"]] if low_res else [])
    texts = list(dict.fromkeys([*data.products["title"], *query_texts]))
    n = len(images) + len(texts)
    table = pa.table({
        "row": pa.array(range(n), pa.int64()),
        "image": pa.array(images + [None] * len(texts), pa.binary()),
        "text": pa.array([None] * len(images) + texts, pa.string()),
        "degrade": pa.array(keys + [None] * len(texts), pa.string()),
        "product": pa.array([False] * n, pa.bool_()),
    })
    slices = {"image": slice(0, n_img)} | ({"image_lowres": slice(n_img, 2 * n_img)} if low_res else {})
    return table, slices, {t: len(images) + i for i, t in enumerate(texts)}


def mixed_documents(image: np.ndarray, title: np.ndarray, weights: tuple[float, float] = DOC_WEIGHTS) -> np.ndarray:
    """normalize(w_image · image + w_title · title), rows of unit norm (Marqo's multi-field documents)."""
    mixed = weights[0] * np.asarray(image, np.float32) + weights[1] * np.asarray(title, np.float32)
    return mixed / np.maximum(np.linalg.norm(mixed, axis=1, keepdims=True), 1e-12)


def score_kagl(data: EvalSet, queries: dict[str, tuple[list[str], list[list[int]]]], image: np.ndarray,
               text_vec, index_kind: str = "flat", seed: int = 0, n_boot: int = 1000, hnsw: tuple = ()) -> dict:
    """Every KAGL metric, its bootstrap interval, query counts and tie fractions.

    image: (N, D) image-only embeddings of the products; text_vec(str) -> (D,) text-only embedding;
    queries: task name -> (texts, relevant) from `kagl_queries`; hnsw: (M, efConstruction, efSearch)."""
    from moon_ray.infrastructure.index import build_index, search

    title = np.stack([text_vec(t) for t in data.products["title"]]) if data.size else image
    docs = {"image": image, "image+text": mixed_documents(image, title)}
    indexes = {kind: build_index(vecs, index_kind, *hnsw) for kind, vecs in docs.items()}
    metrics, ci, counts, ties = {}, {}, {}, {}
    for task in TASKS:
        texts, relevant = queries[task.name]
        counts[task.name] = len(texts)
        if not texts:
            continue
        q = np.stack([text_vec(t) for t in texts])
        scores, ids = search(indexes[task.docs], q, DEPTH)
        ranked = M.sort_hits(scores, ids)
        ties[task.name] = M.tie_fraction(scores[:, :2]) if scores.shape[1] > 1 else 0.0
        for name in task.metrics:
            fn, k = METRIC_FNS[name]
            per_query = fn(ranked, relevant, k)
            metrics[f"{task.name}/{name}"] = M.mean_defined(per_query)
            ci[f"{task.name}/{name}"] = list(M.bootstrap_ci(per_query, n=n_boot, seed=seed))
    return {"metrics": metrics, "ci95": ci, "counts": counts, "top1_tie_fraction": ties}


def merge_low_res(results: dict, low: dict) -> None:
    """Adds the scores of a low-resolution run to `results` as `<task>-lowres/<metric>` (metrics,
    intervals, query counts, tie fractions)."""
    for part in ("metrics", "ci95"):
        results[part].update({f"{k.partition('/')[0]}-lowres/{k.partition('/')[2]}": v for k, v in low[part].items()})
    for part in ("counts", "top1_tie_fraction"):
        results[part].update({f"{k}-lowres": v for k, v in low[part].items()})


def run_kagl(cfg: Config) -> dict:
    """The KAGL protocol for `cfg.eval.model` on `cfg.eval.split`; writes <output_dir>/<slug>-kagl."""
    from moon_ray.eval.data import load_split
    from moon_ray.eval.embed import embed_requests
    from moon_ray.eval.evaluate import check_model, resolve_model
    from moon_ray.eval.report import model_slug, to_json
    from moon_ray.infrastructure.runtime import init_ray
    from moon_ray.infrastructure.timing import PhaseTimer

    check_model(cfg.eval.model)
    cfg = resolve_model(cfg)
    ev, timer = cfg.eval, PhaseTimer(prefix="", suffix="_s")
    with timer("load"):
        data = load_split(cfg)
        queries = {t.name: kagl_queries(data, t, ev.seed) for t in TASKS}
        requests, image_rows, text_row = build_kagl_requests(data, [x for t, _ in queries.values() for x in t],
                                                             low_res=ev.low_res)
    with timer("embed"):
        init_ray(cfg.ray)
        vecs = embed_requests(requests, cfg)
    with timer("score"):
        ix = cfg.index
        kw = dict(index_kind=ev.index, seed=ev.seed, hnsw=(ix.hnsw_m, ix.hnsw_ef_construction, ix.hnsw_ef_search))
        results = score_kagl(data, queries, vecs[image_rows["image"]], lambda t: vecs[text_row[t]], **kw)
        if "image_lowres" in image_rows:
            low = score_kagl(data, queries, vecs[image_rows["image_lowres"]], lambda t: vecs[text_row[t]], **kw)
            merge_low_res(results, low)
    results.update(
        protocol="kagl", model=ev.model, name=f"{model_slug(ev.model)}-kagl", split=data.split,
        n_products=data.size, dim=int(vecs.shape[1]), index=ev.index, n_requests=requests.num_rows,
        published=PUBLISHED, published_corpus=PUBLISHED_CORPUS, published_source=PUBLISHED_SOURCE,
        timings_s={k: round(v, 2) for k, v in timer.metrics().items()}, config=to_dict(cfg),
    )
    out = Path(ev.output_dir) / results["name"]
    out.mkdir(parents=True, exist_ok=True)
    results["output_dir"] = str(out)
    (out / "results.json").write_text(to_json(results))
    (out / "results.md").write_text(kagl_markdown(results) + "\n")
    return results


def _f(value) -> str:
    return "—" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"


def _cell(results: dict, key: str) -> str:
    """'value | [lo, hi]': two table cells."""
    lo, hi = results["ci95"].get(key, (None, None))
    return f"{_f(results['metrics'].get(key))} | " + (f"[{_f(lo)}, {_f(hi)}]" if lo is not None else "—")


def kagl_markdown(results: dict) -> str:
    """Our numbers (with 95 % intervals) beside Marqo's published KAGL numbers, corpus sizes in the table."""
    ours = f"{results['model']} (ours)"
    low = any(k.partition("/")[0].endswith("-lowres") for k in results["metrics"])
    low_head, low_rule = (" ours, 60×80 images | 95 % CI |", " ---: | --- |") if low else ("", "")
    lines = [f"# moon-ray eval, KAGL protocol: {results['model']} on {results['split']}", "",
             f"| task | queries | metric | {ours} | 95 % CI |{low_head} Marqo-FashionSigLIP | Marqo-FashionCLIP |",
             f"| --- | ---: | --- | ---: | --- |{low_rule} ---: | ---: |",
             f"| corpus (products) | | | {results['n_products']:,} ({results['split']} split) | "
             f"|{' same | |' if low else ''} {PUBLISHED_CORPUS:,} (all KAGL) | {PUBLISHED_CORPUS:,} (all KAGL) |"]
    for task in TASKS:
        n = results["counts"].get(task.name, 0)
        for metric in task.metrics:
            key = f"{task.name}/{metric}"
            cells = [_cell(results, key)] + ([_cell(results, f"{task.name}-lowres/{metric}")] if low else [])
            lines.append(f"| {task.name} | {n} | {metric} | {' | '.join(cells)} | "
                         f"{_f(PUBLISHED['Marqo-FashionSigLIP'][key])} | {_f(PUBLISHED['Marqo-FashionCLIP'][key])} |")
    lines += ["", f"Published numbers: {PUBLISHED_SOURCE}. Protocol: configs/KAGL.json, eval.py, utils/metrics.py "
              "(top 10 retrieved; P@k = relevant in top k / k; R@k = relevant in top k / all relevant; "
              "MRR = 1/rank of the first relevant in the top 10, else 0).",
              f"- Corpus: ours is the {results['split']} split ({results['n_products']:,} products), Marqo's all "
              f"{PUBLISHED_CORPUS:,} KAGL products: a smaller corpus makes retrieval easier, so the columns are "
              "comparable in protocol, not in difficulty.",
              "- Titles and labels are our cleaned, preprocessed ones (NFKC, HTML removed; colour falls back to a "
              "colour phrase of the title when the column is empty); intervals: bootstrap over queries, 1,000 "
              "resamples."]
    if low:
        lines.append("- 60×80 images: the same tasks with every document embedded from the product image shrunk "
                     "to a 60×80 shop thumbnail (JPEG), which the encoder scales back up (`eval.low_res`).")
    for task, frac in results.get("top1_tie_fraction", {}).items():
        if frac >= 0.5:
            lines.append(f"- {task}: for {frac:.0%} of the queries the best document score is tied (e.g. a text "
                         "vector orthogonal to every image vector); ties go to the lower product index, so these "
                         "numbers are arbitrary, not retrieval.")
    return "\n".join(lines)
