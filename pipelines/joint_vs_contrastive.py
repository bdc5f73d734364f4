"""Joint training (InfoNCE + GRPO on vLLM rollouts) vs contrastive-only, at equal steps, same start.

    python pipelines/joint_vs_contrastive.py --init outputs/train/export --steps 40 [--results DIR ...] [key.sub=value ...]

Both arms load pipelines/configs/joint.yaml, start from the weights in --init (`train.init_from`: step
0, fresh optimizer), and train the same number of steps on the same data order and seed; the
contrastive arm only sets `rollout.enabled=false`. The evaluation harness then scores the start model,
both arms and the frozen baseline on the held-out split, side by side, and the joint arm's reward
curve is plotted. Writes under --out (default outputs/joint-vs-contrastive):

    contrastive/ joint/        the two training runs (summary.json, export/)
    eval/<model>/              each model's results.json
    compare/compare.md         the side-by-side table (and compare.json, plots)
    reward_curve.png           reward mean ± std, GRPO loss and KL of the joint arm per logged step
    summary.json               steps, wall times, the two arms' histories and the table's metrics
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from moon_ray.config import load_config
from moon_ray.eval.evaluate import run_eval
from moon_ray.eval.report import compare, model_slug
from moon_ray.infrastructure.timing import timed
from moon_ray.train.driver import run_train

# this pipeline compares models and serves none: no catalog index after each export (9,583 products,
# and a trace per product for a reasoning model)
NO_INDEX = "serve.index_after_export=false"

JOINT_YAML = Path(__file__).parent / "configs" / "joint.yaml"


def arm_config(name: str, args, overrides: list[str]):
    common = [f"train.init_from={args.init}", f"train.steps={args.steps}", f"train.output_dir={args.out / name}",
              f"train.checkpoint_every={args.steps}", "train.resume=false", f"eval.output_dir={args.out / 'eval'}",
              NO_INDEX]
    arm = [] if name == "joint" else ["rollout.enabled=false"]
    return load_config(JOINT_YAML, [*common, *args.arm_defaults, *overrides, *arm])


def plot_rewards(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [h for h in history if "reward_mean" in h]
    if not rows:
        return
    steps = [h["step"] for h in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    mean = [h["reward_mean"] for h in rows]
    std = [h.get("reward_std", 0.0) for h in rows]
    axes[0].plot(steps, mean, marker="o")
    axes[0].fill_between(steps, [m - s for m, s in zip(mean, std, strict=True)],
                         [m + s for m, s in zip(mean, std, strict=True)], alpha=0.2)
    axes[0].set_title("reward (log-softmax of the positive) mean ± std")
    for ax, key in zip(axes[1:], ("grpo_loss", "grpo_kl"), strict=True):
        ax.plot(steps, [h.get(key, float("nan")) for h in rows], marker="o")
        ax.set_title(key)
    for ax in axes:
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--init", type=Path, required=True, help="checkpoint or export both arms start from")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("outputs/joint-vs-contrastive"))
    parser.add_argument("--skip-train", action="store_true", help="re-evaluate existing runs under --out")
    parser.add_argument("--reuse", action="store_true",
                        help="keep an arm whose run under --out already finished --steps (train only the others) "
                             "and a model already evaluated under --out/eval")
    parser.add_argument("--results", type=Path, action="append", default=[],
                        help="an existing eval result directory to put in the table instead of re-evaluating "
                             "the frozen baseline and the start model (same split); repeat for several")
    parser.add_argument("overrides", nargs="*", help="key.sub=value, applied to both arms")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.arm_defaults = ["train.lr=0.0001", "train.warmup_steps=4", "train.log_every=2"]
    summary: dict = {"init": str(args.init), "steps": args.steps, "seconds": {}, "history": {}}
    for name in ("contrastive", "joint"):
        cfg = arm_config(name, args, args.overrides)
        done = args.out / name / "summary.json"
        keep = args.skip_train or (args.reuse and done.exists() and json.loads(done.read_text()).get("steps") == args.steps)
        with timed("train") as phase:
            run = json.loads(done.read_text()) if keep else run_train(cfg)
        summary["seconds"][f"train_{name}"] = run["seconds"] if keep else round(phase.seconds, 1)
        summary["history"][name] = run["history"]
    dirs = list(args.results)
    models = [] if args.results else ["frozen", str(args.init)]
    for model in (*models, str(args.out / "contrastive" / "export"), str(args.out / "joint" / "export")):
        done = args.out / "eval" / model_slug(model)
        if args.reuse and (done / "results.json").exists():
            dirs.append(done)
            continue
        cfg = arm_config("joint", args, args.overrides)
        with timed("eval") as phase:
            results = run_eval(dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, model=model)))
        summary["seconds"][f"eval_{results['name']}"] = round(phase.seconds, 1)
        dirs.append(Path(results["output_dir"]))
    table = compare(dirs, args.out / "compare")
    plot_rewards(summary["history"]["joint"], args.out / "reward_curve.png")
    summary["table"] = json.loads((args.out / "compare" / "compare.json").read_text())
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(table)
    print(f"results: {(args.out / 'compare' / 'compare.md').resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
