"""`moon-ray creative eval`: pairwise accuracy, swap consistency, accuracy per defect and on interest pairs,
for the untrained selector (zero-shot) and trained ones, with a Markdown report.

    moon-ray creative eval --model zero-shot --model outputs/creative/sft --model outputs/creative/grpo [creative.eval_limit=400 ...]

Every pair of creative.eval_split is answered twice, greedily: as stored, and with A and B exchanged.
- accuracy: share of answers that choose the label, over both orders (a malformed answer has no choice
  and counts as wrong); accuracy_stored / accuracy_swapped each order alone;
- swap_consistency: share of pairs whose two answers pick the same creative (a malformed answer is
  inconsistent); swap_consistency_valid: the same among pairs with two well-formed answers;
- well_formed: share of answers in the `<think>…</think><answer>X</answer>` format; chose_A: share of
  well-formed answers that say A (position bias); reward: mean `choice_reward` (stage 2's reward);
- per kind (quality/<defect>, interest): accuracy over both orders.
Bootstrap 95 % intervals over pairs for accuracy and swap consistency; `paired`: each model's accuracy
minus the previous one's, with a paired bootstrap interval. Outputs under
creative.eval_output_dir: metrics.json, answers.jsonl, report.md and examples/ (the images it shows).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from moon_ray.config import Config, load_config, with_absolute_paths
from moon_ray.creative.answer import choice_reward, parse_answer
from moon_ray.creative.model import CreativeSelector
from moon_ray.creative.pairs import read_pairs
from moon_ray.creative.rationale import other_position
from moon_ray.eval.metrics import bootstrap_ci
from moon_ray.infrastructure.timing import Stopwatch

ZERO_SHOT = "zero-shot"
EVAL_COLUMNS = ["pair_id", "kind", "defect", "product_a", "product_b", "image_a", "image_b", "interest", "label", "rationale"]


def load_selector(spec: str, cfg: Config) -> CreativeSelector:
    """'zero-shot': the selector before training (creative.train.seed, projector from
    creative.train.init_projector_from when set); else a directory written by `moon-ray creative train`."""
    if spec == ZERO_SHOT:
        from moon_ray.creative.sft import build_selector

        return build_selector(cfg).eval()
    return CreativeSelector.load(spec)


def answer_pairs(sel: CreativeSelector, pairs: pa.Table, cfg: Config, swapped: bool) -> list[str]:
    """Greedy answers for every pair, in batches of creative.eval_batch_size (A/B exchanged when `swapped`)."""
    a, b = pairs.column("image_a").to_pylist(), pairs.column("image_b").to_pylist()
    if swapped:
        a, b = b, a
    interests, bs, out = pairs.column("interest").to_pylist(), cfg.creative.eval_batch_size, []
    for s in range(0, len(a), bs):
        out += sel.generate(a[s:s + bs], b[s:s + bs], interests[s:s + bs], cfg.creative.max_answer_tokens)
    return out


def per_pair_right(labels: list[str], stored: list[str], swapped: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(stored order right, swapped order right) per pair, 0/1."""
    right1 = np.array([parse_answer(t).choice == y for t, y in zip(stored, labels, strict=True)], dtype=float)
    right2 = np.array([parse_answer(t).choice == other_position(y) for t, y in zip(swapped, labels, strict=True)], dtype=float)
    return right1, right2


def paired(labels: list[str], answers: dict) -> dict:
    """Each model against the one before it in the list (zero-shot -> SFT -> SFT+GRPO): the accuracy
    difference with a paired bootstrap 95 % interval (pairs resampled, both models' answers together)."""
    names, out = list(answers), {}
    for a, b in zip(names, names[1:], strict=False):
        diff = np.mean(per_pair_right(labels, *answers[b]), axis=0) - np.mean(per_pair_right(labels, *answers[a]), axis=0)
        out[f"{b} vs {a}"] = {"accuracy_diff": float(diff.mean()), "accuracy_diff_ci": bootstrap_ci(diff)}
    return out


def score(labels: list[str], kinds: list[str], stored: list[str], swapped: list[str], format_weight: float) -> dict:
    """Metrics of one model from its answers in both orders (see the module docstring)."""
    c1 = [parse_answer(t).choice for t in stored]
    c2 = [parse_answer(t).choice for t in swapped]
    right1, right2 = per_pair_right(labels, stored, swapped)
    both = (right1 + right2) / 2
    same = np.array([x is not None and y is not None and x == other_position(y) for x, y in zip(c1, c2, strict=True)], dtype=float)
    valid = np.array([x is not None and y is not None for x, y in zip(c1, c2, strict=True)])
    chosen = [c for c in c1 + c2 if c is not None]
    rewards = [choice_reward(t, y, format_weight) for t, y in zip(stored, labels, strict=True)]
    rewards += [choice_reward(t, other_position(y), format_weight) for t, y in zip(swapped, labels, strict=True)]
    m = {
        "pairs": len(labels),
        "accuracy": float(both.mean()), "accuracy_ci": bootstrap_ci(both),
        "accuracy_stored": float(right1.mean()), "accuracy_swapped": float(right2.mean()),
        "swap_consistency": float(same.mean()), "swap_consistency_ci": bootstrap_ci(same),
        "swap_consistency_valid": float(same[valid].mean()) if valid.any() else None,
        "well_formed": (sum(c is not None for c in c1) + sum(c is not None for c in c2)) / (2 * len(labels)),
        "chose_A": chosen.count("A") / len(chosen) if chosen else None,
        "reward": float(np.mean(rewards)),
    }
    for kind in sorted(set(kinds)):
        rows = np.array([k == kind for k in kinds])
        m[f"accuracy/{kind}"] = float(both[rows].mean())
        m[f"pairs/{kind}"] = int(rows.sum())
    return m


def evaluate(cfg: Config, models: list[str]) -> dict:
    """Answers and metrics of each model on the split; writes metrics.json, answers.jsonl, report.md."""
    cfg = with_absolute_paths(cfg, ["creative.pairs.output_dir", "creative.eval_output_dir",
                                    "creative.train.init_projector_from"])
    c = cfg.creative
    pairs = read_pairs(c.pairs.output_dir, c.eval_split, c.eval_limit, columns=EVAL_COLUMNS)
    labels = pairs.column("label").to_pylist()
    kinds = [f"quality/{d}" if k == "quality" else "interest"
             for k, d in zip(pairs.column("kind").to_pylist(), pairs.column("defect").to_pylist(), strict=True)]
    out = Path(c.eval_output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results, answers = {}, {}
    for spec in models:
        clock = Stopwatch()
        sel = load_selector(spec, cfg)
        with torch.inference_mode():
            stored, swapped = answer_pairs(sel, pairs, cfg, False), answer_pairs(sel, pairs, cfg, True)
        name = spec if spec == ZERO_SHOT else str(Path(spec).resolve())
        results[name] = score(labels, kinds, stored, swapped, c.format_weight) | {"seconds": round(clock.elapsed(), 1)}
        answers[name] = (stored, swapped)
        del sel
    summary = {"split": c.eval_split, "pairs": pairs.num_rows, "pairs_dir": c.pairs.output_dir, "models": results,
               "paired": paired(labels, answers)}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    with open(out / "answers.jsonl", "w") as fh:
        for i, pid in enumerate(pairs.column("pair_id").to_pylist()):
            row = {"pair_id": pid, "label": labels[i], "kind": kinds[i]}
            row |= {name: {"stored": s[i], "swapped": w[i]} for name, (s, w) in answers.items()}
            fh.write(json.dumps(row) + "\n")
    (out / "report.md").write_text(report(summary, pairs, kinds, answers, out, c.report_examples))
    return summary


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def report(summary: dict, pairs: pa.Table, kinds: list[str], answers: dict, out: Path, n_examples: int) -> str:
    """The Markdown report: headline table, per-kind table, examples (images, reasoning, verdicts)."""
    models = summary["models"]
    names = list(models)
    lines = [f"# Creative4U evaluation: {summary['split']} split, {summary['pairs']} pairs", "",
             "Labels come from construction (moon_ray/creative/pairs.py), not from human judges. Each pair is "
             "answered as stored and with A/B exchanged; a malformed answer counts as wrong and inconsistent.", "",
             "| model | accuracy (95 % CI) | stored | swapped | swap consistency (95 % CI) | consistent, valid | "
             "well-formed | chose A | reward |", "|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        m = models[n]
        lines.append(f"| {n} | {_pct(m['accuracy'])} ({_pct(m['accuracy_ci'][0])}–{_pct(m['accuracy_ci'][1])}) | "
                     f"{_pct(m['accuracy_stored'])} | {_pct(m['accuracy_swapped'])} | {_pct(m['swap_consistency'])} "
                     f"({_pct(m['swap_consistency_ci'][0])}–{_pct(m['swap_consistency_ci'][1])}) | "
                     f"{_pct(m['swap_consistency_valid'])} | {_pct(m['well_formed'])} | {_pct(m['chose_A'])} | "
                     f"{m['reward']:.3f} |")
    for label, d in summary.get("paired", {}).items():
        lo, hi = d["accuracy_diff_ci"]
        lines += ["", f"Paired: {label}: accuracy {100 * d['accuracy_diff']:+.1f} points (95 % CI {100 * lo:+.1f} to "
                      f"{100 * hi:+.1f})."]
    kinds_sorted = sorted(set(kinds))
    lines += ["", "Accuracy per kind of pair (both orders):", "", "| kind | pairs | " + " | ".join(names) + " |",
              "|---|---|" + "---|" * len(names)]
    for k in kinds_sorted:
        lines.append(f"| {k} | {models[names[0]][f'pairs/{k}']} | " + " | ".join(_pct(models[n][f"accuracy/{k}"]) for n in names) + " |")
    lines += ["", "## Examples", ""]
    lines += _examples(pairs, kinds, answers, out, n_examples)
    return "\n".join(lines) + "\n"


def _examples(pairs: pa.Table, kinds: list[str], answers: dict, out: Path, n: int) -> list[str]:
    """The first pair of each kind, then the next ones, up to `n`; images written under out/examples."""
    firsts = list(dict.fromkeys(kinds))
    picks = [kinds.index(k) for k in firsts][:n]
    picks += [i for i in range(len(kinds)) if i not in picks][: max(0, n - len(picks))]
    (out / "examples").mkdir(exist_ok=True)
    lines = []
    for i in picks:
        row = pairs.slice(i, 1).to_pylist()[0]
        for side in ("a", "b"):
            (out / "examples" / f"{row['pair_id']}_{side}.jpg").write_bytes(row[f"image_{side}"])
        lines += [f"### {row['pair_id']} ({kinds[i]}, label {row['label']})", "",
                  f"![A](examples/{row['pair_id']}_a.jpg) ![B](examples/{row['pair_id']}_b.jpg)", "",
                  f"- images: examples/{row['pair_id']}_a.jpg (A, product {row['product_a']}), "
                  f"examples/{row['pair_id']}_b.jpg (B, product {row['product_b']})",
                  f"- shopper: {row['interest']}", f"- reference: {row['rationale']}"]
        for name, (stored, _) in answers.items():
            p = parse_answer(stored[i])
            verdict = p.choice or "no choice (malformed)"
            lines.append(f"- **{name}** → {verdict}: {p.reasoning[:300]!r}")
        lines.append("")
    return lines


# ------------------------------------------------------------------------------------------------ CLI
def add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", default=None,
                   help=f"'{ZERO_SHOT}' or a directory written by `moon-ray creative train` (repeat for a column "
                        f"each: zero-shot, SFT, SFT+GRPO side by side; default: {ZERO_SHOT}, creative.train.init_from "
                        "and creative.train.output_dir, those that hold a selector)")


def default_models(cfg: Config) -> list[str]:
    """zero-shot, then the SFT selector a grpo stage started from (creative.train.init_from), then
    creative.train.output_dir: those that hold a selector."""
    t = cfg.creative.train
    trained = [d for d in (t.init_from, t.output_dir) if d and (Path(d) / "creative.safetensors").is_file()]
    return [ZERO_SHOT, *dict.fromkeys(trained)]


def cli_eval(args) -> int:
    cfg = load_config(args.config, list(args.overrides))
    models = args.model or default_models(cfg)
    summary = evaluate(cfg, models)
    for name, m in summary["models"].items():
        print(f"{name}: accuracy {_pct(m['accuracy'])} %, swap consistency {_pct(m['swap_consistency'])} %, "
              f"well-formed {_pct(m['well_formed'])} % on {m['pairs']} {summary['split']} pairs")
    print(f"report: {Path(cfg.creative.eval_output_dir) / 'report.md'}")
    return 0
