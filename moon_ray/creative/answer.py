"""Reading the selector's answer, and the verifiable reward of a choice (what GRPO, stage 2, optimises;
evaluation reports its mean too).

    parse_answer("<think>A is blurred.</think><answer>B</answer>")  # Parsed(choice="B", reasoning="A is blurred.")
    parse_answer("B is better")                                      # Parsed(choice=None, …): malformed, no choice
    choice_reward("<think>…</think><answer>B</answer>", "B", format_weight=0.1)   # 1.1

The format is strict: optional whitespace, one <think>…</think> with some text in it, then
<answer>A</answer> or <answer>B</answer>, then nothing but whitespace. Anything else is malformed and
carries no choice (a malformed answer is never counted as right).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ANSWER = re.compile(r"^\s*<think>(?P<think>(?:(?!</?think>).)*)</think>\s*"
                    r"<answer>\s*(?P<choice>[AB])\s*</answer>\s*$", re.DOTALL)


@dataclass(frozen=True)
class Parsed:
    choice: str | None  # "A", "B", or None when the answer is malformed
    reasoning: str  # the text inside <think> (the raw text when malformed)

    @property
    def well_formed(self) -> bool:
        return self.choice is not None


def parse_answer(text: str) -> Parsed:
    match = ANSWER.match(text or "")
    if match is None or not match["think"].strip():
        return Parsed(choice=None, reasoning=(text or "").strip())
    return Parsed(choice=match["choice"], reasoning=match["think"].strip())


def choice_reward(text: str, label: str, format_weight: float = 0.1) -> float:
    """1 for the right choice, 0 otherwise, plus +format_weight when well formed, -format_weight when not."""
    if label not in ("A", "B"):
        raise ValueError(f"label must be A or B, got {label!r}")
    parsed = parse_answer(text)
    correct = 1.0 if parsed.choice == label else 0.0
    return correct + (format_weight if parsed.well_formed else -format_weight)
