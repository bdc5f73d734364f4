"""Evaluation reports: results.json + results.md + plots per model, and side-by-side comparisons.

    write_results(results, Path("outputs/eval/frozen"))     # results.json, results.md, *.png
    compare([Path("outputs/eval/frozen"), Path("outputs/eval/random")], Path("outputs/eval/compare"))

Plots (matplotlib, Agg backend): metrics.png has one bar chart per metric with a bar per model;
recall_at_k.png has one recall@k curve per model for each retrieval task.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from moon_ray.catalog.wording import TRAINING_QUERY_FIELDS

FIELD_NAMES = {"article_type": "articleType", "colour": "baseColour"}
TASK_NAMES = {
    "text_unseen": "text → product, unseen wording",
    "text": "text → product, training template",
    "image_same": "image → product (same, degraded)",
    "image_similar": "image → product (similar)",
    "image_text": "image+text → product",
    "image_same_lowres": "image → product (same, degraded), 60×80 catalog",
    "image_text_lowres": "image+text → product, 60×80 catalog",
    "text_unseen_lowres": "text → product, unseen wording, 60×80 catalog",
}
ORDER = ["text_unseen/nDCG@10", "text_unseen/hit@1", "text_unseen/hit@10", "text/nDCG@10", "text/hit@1",
         "text/hit@10", "image_same/R@1", "image_same/R@10", "image_similar/nDCG@10", "image_text/R@1",
         "image_text/R@10"]
PRIMARY = "text_unseen/nDCG@10"
ZERO_SHOT_SOURCES = ("zero_shot_multimodal", "zero_shot_image")
SEEN_FIELDS = TRAINING_QUERY_FIELDS  # fields whose values the trainer writes as text queries


def model_slug(model: str) -> str:
    """The result-directory name of a model: a baseline's name, or an exported directory's name (its
    run directory's name for `<run>/export`, so two runs' exports do not overwrite each other)."""
    path = Path(model)
    name = model
    if path.is_dir():
        path = path.resolve()
        name = path.parent.name if path.name == "export" and path.parent.name else path.name
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "model"


def label(key: str) -> str:
    """'text/nDCG@10' -> 'text → product nDCG@10 (primary)'; 'zero_shot_image/colour' -> …"""
    group, _, metric = key.partition("/")
    if group.startswith("zero_shot_"):
        seen = "label seen as a training query" if metric in SEEN_FIELDS else "label never a training query"
        return f"zero-shot {FIELD_NAMES.get(metric, metric)} ({group.removeprefix('zero_shot_')}; {seen})"
    text = f"{TASK_NAMES.get(group, group)} {metric}"
    return text + " (primary)" if key == PRIMARY else text


def metric_keys(results: list[dict]) -> list[str]:
    """The metrics of all results, in the report order (extra keys after, in their own order)."""
    seen = list(dict.fromkeys(k for r in results for k in r["metrics"]))
    zero = [k for k in seen if k.partition("/")[0] in ZERO_SHOT_SOURCES]
    zero.sort(key=lambda k: (ZERO_SHOT_SOURCES.index(k.partition("/")[0]), k.partition("/")[2] not in SEEN_FIELDS))
    rest = [k for k in seen if k not in ORDER and k not in zero]
    return [k for k in ORDER if k in seen] + zero + rest


def _fmt(value: float | None) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _cell(result: dict, key: str) -> str:
    """'0.743 [0.712, 0.771]': the value and its bootstrap 95 % interval, when the result has one."""
    lo, hi = (result.get("ci95", {}).get(key) or (None, None))
    value = _fmt(result["metrics"].get(key))
    return value if lo is None or value == "—" else f"{value} [{_fmt(lo)}, {_fmt(hi)}]"


def overlap(a: dict, b: dict, key: str) -> bool | None:
    """Whether the bootstrap 95 % intervals of `key` in results a and b overlap (None: one has none)."""
    ia, ib = a.get("ci95", {}).get(key), b.get("ci95", {}).get(key)
    if not ia or not ib or any(v is None or math.isnan(v) for v in (*ia, *ib)):
        return None
    return ia[0] <= ib[1] and ib[0] <= ia[1]


def _mark(result: dict, reference: dict, key: str) -> str:
    """' ≈' when the interval overlaps the reference column's, ' ▲' / ' ▼' when it lies above / below."""
    same = overlap(result, reference, key)
    if same is None or result is reference:
        return ""
    if same:
        return " ≈"
    return " ▲" if result["metrics"][key] > reference["metrics"][key] else " ▼"


def markdown_table(results: list[dict], names: list[str] | None = None, mark_overlap: bool = False) -> str:
    """A Markdown table: one row per metric, one column per result; then the query counts and notes.
    mark_overlap: each column after the first is marked against the first (≈ intervals overlap, ▲/▼ not)."""
    names = names or [r["name"] for r in results]
    head = " | ".join(names)
    lines = [f"| metric | {head} |", "| --- |" + " ---: |" * len(names)]
    for key in metric_keys(results):
        cells = [_cell(r, key) + (_mark(r, results[0], key) if mark_overlap else "") for r in results]
        lines.append(f"| {label(key)} | " + " | ".join(cells) + " |")
    lines += ["", f"| queries / items | {head} |", "| --- |" + " ---: |" * len(names)]
    count_keys = list(dict.fromkeys(k for r in results for k in r["counts"]))
    for key in count_keys:
        lines.append(f"| {key} | " + " | ".join(str(r["counts"].get(key, "—")) for r in results) + " |")
    lines += ["", "| run | " + head + " |", "| --- |" + " ---: |" * len(names)]
    for key in ("split", "n_products", "dim", "index"):
        lines.append(f"| {key} | " + " | ".join(str(r.get(key, "—")) for r in results) + " |")
    notes = ["- [a, b]: bootstrap 95 % interval over queries (1,000 resamples)."] if any("ci95" in r for r in results) else []
    if mark_overlap and len(results) > 1:
        notes.append(f"- against {names[0]}: ≈ the intervals overlap (no clear difference); ▲ / ▼ above / below "
                     "it with non-overlapping intervals.")
    notes += _tie_notes(results, names)
    return "\n".join(lines + ([""] + notes if notes else []))


def _tie_notes(results: list[dict], names: list[str]) -> list[str]:
    notes = []
    for name, r in zip(names, results, strict=True):
        for key, frac in r.get("zero_shot_tie_fraction", {}).items():
            if frac and not math.isnan(frac) and frac >= 0.5:
                notes.append(f"- {name}: {label(key)}: for {frac:.0%} of the items several labels share the best "
                             "score (the model cannot tell them apart); tied items count 1/(number tied), so the "
                             "accuracy is near chance, not a real prediction.")
    return notes


def write_results(results: dict, out_dir: Path) -> Path:
    """results.json, results.md, metrics.png and recall_at_k.png in `out_dir`; returns `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(to_json(results))
    title = (f"# moon-ray eval: {results['name']} on {results['split']} "
             f"({results['n_products']} products)\n\nmodel: `{results['model']}`\n\n")
    (out_dir / "results.md").write_text(title + markdown_table([results]) + "\n")
    plot_metrics([results], [results["name"]], out_dir / "metrics.png")
    plot_curves([results], [results["name"]], out_dir / "recall_at_k.png")
    return out_dir


def load_results(path: Path) -> dict:
    """The results.json of a result directory (or the file itself)."""
    file = path / "results.json" if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"{path} holds no results.json: run `moon-ray eval` to create it")
    return json.loads(file.read_text())


def compare(dirs: list[Path], out_dir: Path) -> str:
    """Side-by-side table of result directories: writes compare.md, compare.json and plots; returns the table."""
    results = [load_results(d) for d in dirs]
    names = [r.get("name", d.name) for r, d in zip(results, dirs, strict=True)]
    if len(set(names)) < len(names):
        names = [str(d) for d in dirs]
    table = markdown_table(results, names, mark_overlap=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "compare.md").write_text("# moon-ray eval: comparison\n\n" + table + "\n")
    summary = {
        "models": names,
        "dirs": [str(d) for d in dirs],
        "metrics": {k: {n: r["metrics"].get(k) for n, r in zip(names, results, strict=True)}
                    for k in metric_keys(results)},
        "ci95": {k: {n: r.get("ci95", {}).get(k) for n, r in zip(names, results, strict=True)}
                 for k in metric_keys(results)},
        "overlaps_first": {k: {n: overlap(r, results[0], k) for n, r in zip(names[1:], results[1:], strict=True)}
                           for k in metric_keys(results)},
        "counts": {n: r["counts"] for n, r in zip(names, results, strict=True)},
    }
    (out_dir / "compare.json").write_text(to_json(summary))
    plot_metrics(results, names, out_dir / "metrics.png")
    plot_curves(results, names, out_dir / "recall_at_k.png")
    return table


def plot_metrics(results: list[dict], names: list[str], path: Path) -> None:
    """One bar chart per metric, a bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = metric_keys(results)
    cols = 4
    rows = max(1, math.ceil(len(keys) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    colours = [plt.get_cmap("tab10")(i % 10) for i in range(len(names))]
    for ax, key in zip(axes.flat, keys, strict=False):
        values = [r["metrics"].get(key) for r in results]
        heights = [0.0 if v is None or math.isnan(v) else v for v in values]
        bars = ax.bar(range(len(names)), heights, color=colours)
        ax.bar_label(bars, labels=[_fmt(v) for v in values], fontsize=7)
        ax.set_title(label(key), fontsize=8)
        ax.set_ylim(0, 1.1)
        ax.set_xticks(range(len(names)), names, fontsize=7, rotation=20)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(results: list[dict], names: list[str], path: Path) -> None:
    """Recall@k against k (log scale) for each retrieval task, a line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(t for r in results for t in r.get("curves", {})))
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(4.5 * max(1, len(tasks)), 3.6), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        for name, r in zip(names, results, strict=True):
            curve = r.get("curves", {}).get(task)
            if curve:
                ax.plot(curve["k"], curve["recall"], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("k")
        ax.set_ylabel("recall@k")
        ax.set_ylim(0, 1.02)
        ax.set_title(TASK_NAMES.get(task, task), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def to_json(value) -> str:
    """Strict JSON (NaN -> null, numpy scalars and arrays -> plain values), indented."""
    return json.dumps(_plain(value), indent=2, allow_nan=False) + "\n"


def _plain(value):
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
