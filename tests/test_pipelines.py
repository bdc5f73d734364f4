"""Command-line parsing of the pipeline scripts that have options of their own."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "pipelines" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_joint_vs_contrastive_keeps_overrides_apart_from_result_dirs():
    parser = load("joint_vs_contrastive").build_parser()
    args = parser.parse_args(["--init", "runs/export", "--results", "eval/frozen", "--results", "eval/train",
                              "train.batch_size=4", "--steps", "8"])
    assert [str(p) for p in args.results] == ["eval/frozen", "eval/train"]
    assert args.overrides == ["train.batch_size=4"] and args.steps == 8 and not args.reuse
