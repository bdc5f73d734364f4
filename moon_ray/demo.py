"""`moon-ray demo`, the README's main job: the whole system on one machine, real data, real weights.

    moon-ray demo [--fast] [key.sub=value ...]

preprocess (Ray Data, the shared catalog) -> joint training on a short budget (Ray Train DDP workers,
vLLM rollout actors, InfoNCE + GRPO) -> evaluation of the trained model and the frozen baseline on a
held-out slice -> catalog index + Ray Serve -> example searches over HTTP -> report (Markdown + plots),
whose path is printed at the end. `--fast` is a smoke version (300 products, 2 steps) for CI.
The terminal shows one line per phase, the training progress bar and the results; Ray's and the
workers' own messages go to outputs/demo/demo.log (`--verbose`: everything on the terminal).
"""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path

from moon_ray.config import Config, load_config
from moon_ray.infrastructure.console import QuietConsole, say
from moon_ray.infrastructure.timing import PhaseTimer, Stopwatch

OUT = "outputs/demo"
COMMON = [
    f"data.output_dir={OUT}/catalog", f"train.output_dir={OUT}/train", f"eval.output_dir={OUT}/eval",
    "train.resume=false", "train.num_workers=2", "train.cpus_per_worker=0.75", "rollout.enabled=true",
    "rollout.engine=vllm", "rollout.num_workers=1", "rollout.cpus_per_worker=0.5", "rollout.group_size=2",
    "eval.num_actors=2", "eval.cpus_per_actor=0.5", "serve.index_split=test", "serve.cpus_per_replica=0.5",
    "serve.port=8321", "ray.progress=false", "serve.reasoning=false", "train.val_limit=100",
]
FULL = ["train.steps=12", "train.batch_size=4", "train.log_every=2", "train.checkpoint_every=12",
        "rollout.max_tokens=16", "eval.limit=300", "serve.index_limit=300"]
FAST = ["data.limit=300", "train.steps=2", "train.batch_size=4", "train.log_every=1", "train.checkpoint_every=2",
        "rollout.max_tokens=8", "eval.limit=48", "serve.index_limit=48"]


def demo_config(fast: bool, overrides: list[str]) -> Config:
    return load_config(None, [*COMMON, *(FAST if fast else FULL), *overrides])


def banner(text: str) -> None:
    say(f"=== {text} ===")


def run_demo(fast: bool = False, overrides: list[str] | None = None, verbose: bool = False) -> Path:
    """The demo; unless `verbose`, the terminal gets one line per phase, the progress bar and the
    results, and everything else (Ray's and the workers' messages) goes to outputs/demo/demo.log."""
    cfg = demo_config(fast, list(overrides or []))
    log = Path(OUT) / "demo.log"
    if not verbose:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
        say(f"moon-ray demo{' --fast' if fast else ''}: Ray's and the workers' messages go to {log.resolve()}")
    with QuietConsole(log, enabled=not verbose):
        return _run(cfg, fast)


def _run(cfg: Config, fast: bool) -> Path:
    from moon_ray.catalog.ingest import run_preprocess
    from moon_ray.eval.evaluate import run_eval
    from moon_ray.eval.report import compare
    from moon_ray.train.driver import run_train

    timer, total = PhaseTimer(prefix=""), Stopwatch()  # seconds per step, under the step's name

    banner("1/5 preprocess the catalog (Ray Data)")
    with timer("preprocess"):
        stats = run_preprocess(cfg)
    say(f"input {stats['input']} = ok {stats['ok']} + rejected {stats['rejected']}; splits {stats['splits']}")

    banner(f"2/5 joint training: {cfg.train.steps} steps, {cfg.train.num_workers} DDP workers, "
           f"{cfg.rollout.num_workers} {cfg.rollout.engine} rollout actor(s)")
    with timer("train"):
        summary = run_train(cfg)

    banner("3/5 evaluate the trained model and the frozen baseline on the held-out split")
    with timer("eval"):
        results = {}
        for model in (summary["export"], "frozen"):
            results[model] = run_eval(dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, model=model)))
        table = compare([Path(r["output_dir"]) for r in results.values()], Path(cfg.eval.output_dir) / "compare")
    say(table)

    banner("4/5 index the catalog and serve it (Ray Serve); example searches over HTTP")
    with timer("serve"):
        served = dataclasses.replace(cfg, serve=dataclasses.replace(cfg.serve, model=summary["export"]))
        searches = serve_and_search(served)

    banner("5/5 report")
    times = {**timer.metrics(), "total": total.elapsed()}
    path = write_report(cfg, stats, summary, table, searches, times, fast)
    say(f"demo finished in {times['total'] / 60:.1f} min\nreport: {path.resolve()}")
    return path


def serve_and_search(cfg: Config) -> list[dict]:
    """Deploy the trained model with a catalog index; run a text, an image and an image+text search."""
    import httpx
    import pyarrow.parquet as pq
    from ray import serve

    from moon_ray.infrastructure.runtime import init_ray
    from moon_ray.serve.app import absolute_paths, application, start

    cfg = absolute_paths(cfg)
    init_ray(cfg.ray)
    url = start(cfg, application(cfg), name="moon-ray-demo")
    products = pq.read_table(Path(cfg.data.output_dir) / "products", columns=["id", "title", "image", "split"])
    row = next(r for r in products.to_pylist() if r["split"] == "test")
    image = "data:image/jpeg;base64," + base64.b64encode(row["image"]).decode()
    queries = [
        {"label": "text: 'Men Navy Blue Shirts'", "body": {"text": "Men Navy Blue Shirts", "k": 3}},
        {"label": f"image of {row['id']} ({row['title']})", "body": {"image": image, "k": 3}},
        {"label": f"image of {row['id']} + 'Black'", "body": {"image": image, "text": "Black", "k": 3}},
        {"label": "text: 'Women Handbags' filtered to colour Brown", "body": {"text": "Women Handbags", "k": 3, "filters": {"colour": "Brown"}}},
    ]
    out = []
    try:
        with httpx.Client(timeout=300) as client:
            for q in queries:
                resp = client.post(f"{url}/v1/search", json=q["body"])
                resp.raise_for_status()
                hits = [{"id": h["id"], "title": h["title"], "score": round(h["score"], 3)} for h in resp.json()["data"]]
                out.append({"query": q["label"], "hits": hits})
                say(f"{q['label']}\n" + "\n".join(f"   {h['score']:.3f}  {h['id']}  {h['title']}" for h in hits))
    finally:
        serve.shutdown()
    return out


def write_report(cfg: Config, stats: dict, summary: dict, table: str, searches: list[dict], times: dict, fast: bool) -> Path:
    out = Path(OUT)
    out.mkdir(parents=True, exist_ok=True)
    curve = plot_training(summary["history"], out / "training.png")
    lines = [
        f"# moon-ray demo{' (--fast)' if fast else ''}", "",
        f"Wall time: {times['total'] / 60:.1f} min — " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items() if k != "total"), "",
        "## Catalog", "", f"input {stats['input']} = ok {stats['ok']} + rejected {stats['rejected']}; "
        f"splits {stats['splits']}; reject reasons {stats['reject_reasons']}", "",
        "## Joint training", "",
        f"{summary['steps']} steps, {cfg.train.num_workers} workers × batch {cfg.train.batch_size}, "
        f"{cfg.rollout.num_workers} {cfg.rollout.engine} rollout actor(s), G={cfg.rollout.group_size}; "
        f"export: `{summary['export']}`", "", f"![training]({curve.name})", "",
        "| step | loss | reward mean | reward std | grpo loss | text acc | image acc | gen s | update s | sync s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for h in summary["history"]:
        cells = [h.get(k) for k in ("loss", "reward_mean", "reward_std", "grpo_loss", "text_acc", "image_acc",
                                    "time_gen", "time_update", "time_sync")]
        lines.append(f"| {h['step']} | " + " | ".join("" if c is None else f"{c:.3f}" for c in cells) + " |")
    lines += ["", f"## Evaluation ({cfg.eval.split} split, {cfg.eval.limit or 'all'} products)", "", table, "",
              f"Plots: `{cfg.eval.output_dir}/compare/metrics.png`, `recall_at_k.png`.", "", "## Searches over HTTP", ""]
    for s in searches:
        lines.append(f"- {s['query']}: " + "; ".join(f"{h['title']} ({h['score']})" for h in s["hits"]))
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    (out / "report.json").write_text(json.dumps({"times_s": times, "stats": stats, "history": summary["history"],
                                                 "searches": searches}, indent=2, default=str))
    return path


def plot_training(history: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    steps = [h["step"] for h in history]
    axes[0].plot(steps, [h.get("loss", float("nan")) for h in history], marker="o")
    axes[0].set_title("total loss")
    axes[1].plot(steps, [h.get("reward_mean", float("nan")) for h in history], marker="o", color="tab:green")
    axes[1].set_title("GRPO reward (mean)")
    for ax in axes:
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
