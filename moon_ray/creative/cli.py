"""`moon-ray creative pairs|train|eval`: the Creative4U commands, each with --config FILE and overrides.

    moon-ray creative pairs --config pipelines/configs/creative.yaml [--limit N] [key.sub=value ...]
    moon-ray creative train --config pipelines/configs/creative.yaml [creative.train.steps=200 ...]
    moon-ray creative train --config pipelines/configs/creative.yaml creative.train.stage=grpo \
        creative.train.init_from=outputs/creative/sft creative.train.output_dir=outputs/creative/grpo
    moon-ray creative eval  --config pipelines/configs/creative.yaml [--model zero-shot --model SFT_DIR --model GRPO_DIR]
"""

from __future__ import annotations

import argparse
import dataclasses

from moon_ray.config import load_config


def add_creative_args(p: argparse.ArgumentParser) -> None:
    from moon_ray.creative.evaluate import add_eval_args

    sub = p.add_subparsers(dest="creative_command", required=True)
    helps = {"pairs": "build the CreativePair-style dataset from the catalog (Ray Data)",
             "train": "train the creative selector (stage sft: CoT-SFT; stage grpo: GRPO on the rollout pool)",
             "eval": "pairwise accuracy, swap consistency, per-defect accuracy and a Markdown report"}
    for name, text in helps.items():
        q = sub.add_parser(name, help=text)
        q.add_argument("--config", default=None, help="YAML config file (pipelines/configs/creative.yaml)")
        q.add_argument("overrides", nargs="*", help="dotted overrides, e.g. creative.train.steps=20")
        if name == "pairs":
            q.add_argument("--limit", type=int, default=None, help="build at most N pairs (creative.pairs.limit)")
        if name == "eval":
            add_eval_args(q)


def cli_creative(args) -> int:
    if args.creative_command == "eval":
        from moon_ray.creative.evaluate import cli_eval

        return cli_eval(args)
    cfg = load_config(args.config, list(args.overrides))
    if args.creative_command == "pairs":
        from moon_ray.creative.pairs import build_pairs

        if args.limit is not None:
            pairs = dataclasses.replace(cfg.creative.pairs, limit=args.limit)
            pairs.validate()
            cfg = dataclasses.replace(cfg, creative=dataclasses.replace(cfg.creative, pairs=pairs))
        stats = build_pairs(cfg)
        print(f"{stats['pairs']} pairs {stats['splits']} defects {stats['defects']} in {stats['seconds']} s: "
              f"{stats['output_dir']}")
        print(stats["labels"])
        return 0
    from moon_ray.creative.trainer import run_train

    summary = run_train(cfg)
    last = summary["history"][-1] if summary["history"] else {}
    extra = "".join(f", {k} {last[k]:.3f}" for k in ("reward_mean", "accuracy", "grpo_kl") if k in last)
    print(f"{summary['stage']}: {summary['steps']} steps in {summary['seconds']} s, "
          f"last loss {last.get('loss', float('nan')):.4f}{extra}: {summary['output_dir']}")
    return 0
