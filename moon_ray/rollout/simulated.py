"""A simulated rollout engine: generation costs a fixed sleep per decoding step, nothing else.

    engine = create_engine("simulated", token_s=0.005, batch_size=16)

It exists to measure the rollout pipeline (pool, scaling, weight sync, the loop around them) apart from
this machine's cores: a real engine on 2 cores competes with the trainers for the same CPUs, a sleeping
one does not. Generation of P prompts × n samples takes ceil(P·n / batch_size) × max_tokens × token_s
seconds (an engine that decodes `batch_size` sequences per step); the rollouts carry random token ids
(seeded), log-probs of a uniform distribution over `vocab`, the engine's version, and meta
{"simulated": True}. Weight updates count the tensors and take the version (plus `load_s` of sleep).
Never a training engine: `rollout.engine` accepts vllm or torch only; benches and tests create it.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterable, Sequence

import torch

from moon_ray.infrastructure.timing import Stopwatch
from moon_ray.rollout.base import Rollout, RolloutEngine, SamplingConfig


class SimulatedEngine(RolloutEngine):
    def __init__(self, token_s: float = 0.005, batch_size: int = 16, load_s: float = 0.0, vocab: int = 49152,
                 **_ignored):
        if token_s < 0 or batch_size < 1 or load_s < 0:
            raise ValueError(f"simulated engine: token_s and load_s must be >= 0 and batch_size >= 1, got "
                             f"token_s={token_s}, batch_size={batch_size}, load_s={load_s}")
        self.token_s, self.batch_size, self.load_s, self.vocab = token_s, batch_size, load_s, vocab
        self.version = 0
        self.busy_s = 0.0  # seconds spent generating and loading, for idle fractions

    def generate(self, prompts: Sequence[torch.Tensor], sampling: SamplingConfig) -> list[list[Rollout]]:
        watch = Stopwatch()
        steps = math.ceil(len(prompts) * sampling.n / self.batch_size) * sampling.max_tokens
        time.sleep(steps * self.token_s)
        rng = random.Random(sampling.seed)
        lp = -math.log(self.vocab)
        groups = [[Rollout([rng.randrange(self.vocab) for _ in range(sampling.max_tokens)], "", [lp] * sampling.max_tokens,
                           self.version, finished=False, meta={"simulated": True}) for _ in range(sampling.n)]
                  for _ in prompts]
        self.busy_s += watch.elapsed()
        return groups

    def update_weights(self, weights: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        watch = Stopwatch()
        if sum(1 for _ in weights) == 0:
            raise ValueError("update_weights received no tensors")
        time.sleep(self.load_s)
        self.version = version
        self.busy_s += watch.elapsed()

    def info(self) -> dict:
        return super().info() | {"simulated": True, "busy_s": round(self.busy_s, 4)}
