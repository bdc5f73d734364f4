"""Collect a Creative4U run into one results JSON (bench/results/creative.json): the pair stats, both
stages' summaries (loss curve; GRPO reward curve, accuracy of sampled answers, clip fraction, KL, phase
times), and the evaluations (`moon-ray creative eval` metrics.json files), with the commands that made them.

    python pipelines/creative_result.py --pairs outputs/creative/pairs --sft outputs/creative/sft \\
        --grpo outputs/creative/grpo --eval outputs/creative/eval --eval outputs/creative/eval-zero-shot \\
        --commands "moon-ray creative ..." --out bench/results/creative.json

Nothing is computed here beyond what those files hold, apart from the per-stage timing means.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import numpy as np

CURVE = ("step", "loss", "reward_mean", "accuracy", "well_formed", "reward_group_std", "zero_std_groups",
         "update_groups", "grpo_kl", "grpo_clip_frac", "grpo_ratio", "chose_A", "answer_len", "version_lag",
         "time_gen", "time_ref", "time_reward", "time_update", "time_sync", "pairs_per_s")


def stage(path: Path) -> dict:
    """A stage's output dir, or one of its checkpoints (creative_state.json, no summary.json: a run stopped
    there)."""
    if (path / "summary.json").is_file():
        summary = json.loads((path / "summary.json").read_text())
    else:
        summary = {"steps": json.loads((path / "creative_state.json").read_text())["step"], "seconds": None,
                   "init_from": json.loads((path / "creative.json").read_text()).get("init_from"),
                   "history": json.loads((path / "history.json").read_text()), "stopped_at_checkpoint": True}
    curve = [{k: h[k] for k in CURVE if k in h} for h in summary["history"]]
    times = {k: round(float(np.mean([h[k] for h in curve if k in h])), 2)
             for k in CURVE if k.startswith("time_") and any(k in h for h in curve)}
    return {"output_dir": str(path), "steps": summary["steps"], "resumed_from_step": summary.get("resumed_from_step", 0),
            "init_from": summary.get("init_from"), "seconds": summary["seconds"], "mean_seconds_per_step": times,
            "rollout": summary.get("rollout"), "stopped_at_checkpoint": summary.get("stopped_at_checkpoint", False),
            "curve": curve}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=Path, required=True, help="creative.pairs.output_dir (its stats.json)")
    p.add_argument("--sft", type=Path, required=True)
    p.add_argument("--grpo", type=Path, default=None)
    p.add_argument("--eval", type=Path, action="append", default=[], help="a creative.eval_output_dir (repeatable)")
    p.add_argument("--commands", action="append", default=[], help="the commands of the run, in order")
    p.add_argument("--note", action="append", default=[], help="a plain-words finding to keep with the numbers")
    p.add_argument("--out", type=Path, default=Path("bench/results/creative.json"))
    a = p.parse_args(argv)
    result = {
        "benchmark": "creative",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "commands": a.commands,
        "pairs": json.loads((a.pairs / "stats.json").read_text()),
        "sft": stage(a.sft),
        "grpo": stage(a.grpo) if a.grpo else None,
        "evaluations": [json.loads((e / "metrics.json").read_text()) | {"eval_dir": str(e)} for e in a.eval],
        "notes": a.note,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1))
    for ev in result["evaluations"]:
        for name, m in ev["models"].items():
            print(f"{ev['split']} {ev['pairs']:>5} pairs  {Path(name).name:<12} accuracy {m['accuracy']:.3f} "
                  f"[{m['accuracy_ci'][0]:.3f}, {m['accuracy_ci'][1]:.3f}]  swap consistency {m['swap_consistency']:.3f}")
        for label, d in ev.get("paired", {}).items():
            print(f"  {label}: {d['accuracy_diff']:+.3f} [{d['accuracy_diff_ci'][0]:+.3f}, {d['accuracy_diff_ci'][1]:+.3f}]")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
