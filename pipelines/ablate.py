"""Ablations: the full MOON model against each module switched off (and each training switch that is off
by default switched on), at equal steps, seed and data.

    python pipelines/ablate.py --steps 60 [--arms full no_fusion ...] [--reuse] [key.sub=value ...]
    python pipelines/ablate.py --steps 120 --arms full attr_align --results-json bench/results/switches.json

Every arm trains from the packaged (untrained) heads with the same config, seed and step budget, and
chooses its checkpoint on the **val** split (`train.eval_every`, `train.select_metric`); the chosen
export is then evaluated once on the **test** split, which is only reported. The table puts the full
model first and marks every other arm against it (≈: the bootstrap 95 % intervals overlap, so no
clear difference; ▲/▼: above/below with separate intervals). Writes under --out (default
outputs/ablate):

    <arm>/                     the training run (summary.json with the val choice, export/)
    eval/<arm>/                its test results (results.json)
    compare/compare.md         the side-by-side table (compare.json, plots)
and bench/results/ablations.json (--results-json): per arm its overrides, the val choice, test
metrics with intervals, training seconds, and whether each metric's interval overlaps the full model's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from moon_ray.config import load_config
from moon_ray.eval.arms import train_or_reuse, with_model
from moon_ray.eval.evaluate import run_eval
from moon_ray.eval.report import compare, overlap

# this pipeline compares models and serves none: no catalog index after each export (9,583 products,
# and a trace per product for a reasoning model)
NO_INDEX = "serve.index_after_export=false"

ARMS: dict[str, list[str]] = {
    "full": [],
    "no_fusion": ["model.fusion=false"],
    "no_residual": ["model.residual=false"],
    "no_moe": ["model.moe=false"],
    "no_visual_skip": ["model.visual_skip=false"],
    # issue 20's training switches, off by default until val shows a gain: each switched *on*
    "attr_align": ["train.attr_weight=0.5", "train.title_image_weight=0.5"],  # image<->attribute, title->image
    "shop_views": ["train.shop_view_p=0.3"],  # image queries as shops serve them (60x80 ... 180x240)
    "coaug_views": ["train.coaugment=true"],  # MOON2.0 visual expansions (and stored enriched titles, if any)
    "lowercase": ["train.query_lowercase_p=0.5"],  # half the text queries in lowercase, as users type
    "paraphrase": ["train.query_paraphrase_p=0.3"],  # text queries in marker wordings ("a photo of a ...")
    # switches together: the two with a val gain at 120 steps (switches.json), and those plus paraphrases
    "lower_attr": ["train.query_lowercase_p=0.5", "train.attr_weight=0.5", "train.title_image_weight=0.5"],
    "lower_attr_para": ["train.query_lowercase_p=0.5", "train.attr_weight=0.5", "train.title_image_weight=0.5",
                        "train.query_paraphrase_p=0.3"],
}


def arm_config(name: str, args):
    common = [f"train.steps={args.steps}", f"train.output_dir={args.out / name}", "train.resume=false",
              f"train.checkpoint_every={args.steps}", f"train.eval_every={args.eval_every or args.steps}",
              f"eval.output_dir={args.out / 'eval'}", "eval.split=test", NO_INDEX]
    return load_config(args.config, [*common, *args.overrides, *ARMS[name]])


def eval_arm(name: str, args) -> Path:
    """Test results of the arm's val-chosen export, in eval/<name> (reused with --reuse)."""
    out = args.out / "eval" / name
    if args.reuse and (out / "results.json").exists():
        return out
    results = run_eval(with_model(arm_config(name, args), str(args.out / name / "export")))
    produced = Path(results["output_dir"])
    if produced != out:  # the report names its directory after the model; keep one per arm
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            import shutil

            shutil.rmtree(out)
        produced.rename(out)
    return out


def summarise(arms: list[str], runs: dict, dirs: list[Path], args) -> dict:
    results = {a: json.loads((d / "results.json").read_text()) for a, d in zip(arms, dirs, strict=True)}
    full = results[arms[0]]
    return {
        "benchmark": "ablations", "steps": args.steps, "overrides": args.overrides, "reference": arms[0],
        "selection": "checkpoint chosen on val by train.select_metric; metrics on test (reported only)",
        "arms": {a: {"overrides": ARMS[a], "selected": runs[a].get("selected"), "train_s": runs[a].get("seconds"),
                     "metrics": results[a]["metrics"], "ci95": results[a].get("ci95", {}),
                     "overlaps_reference": {k: overlap(results[a], full, k) for k in results[a]["metrics"]}}
                 for a in arms},
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="training steps per arm (equal for all)")
    parser.add_argument("--eval-every", type=int, default=0, help="val scoring interval (default: --steps // 2)")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS), help="first = reference")
    parser.add_argument("--config", default=None, help="YAML config every arm starts from")
    parser.add_argument("--out", type=Path, default=Path("outputs/ablate"))
    parser.add_argument("--results-json", type=Path, default=Path("bench/results/ablations.json"))
    parser.add_argument("--reuse", action="store_true", help="keep finished arms and evaluations under --out")
    parser.add_argument("overrides", nargs="*", help="key.sub=value, applied to every arm")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.eval_every = args.eval_every or max(1, args.steps // 2)
    runs, dirs = {}, []
    for arm in args.arms:
        runs[arm] = train_or_reuse(arm_config(arm, args), args.out / arm, args.reuse, steps=args.steps)
        dirs.append(eval_arm(arm, args))
        print(f"[ablate] {arm}: trained and evaluated", flush=True)
    print(compare(dirs, args.out / "compare"))
    summary = summarise(args.arms, runs, dirs, args)
    args.results_json.parent.mkdir(parents=True, exist_ok=True)
    args.results_json.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nwritten: {args.out / 'compare' / 'compare.md'}, {args.results_json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
