"""Rollout engines: an abstract engine plus a registry of backends imported only when chosen.

    engine = create_engine("torch", model_dir="…", …)       # or "vllm"
    groups = engine.generate(prompts, SamplingConfig(n=4, max_tokens=48))
    engine.update_weights(iter([(name, tensor), …]), version=3)

A prompt is its embeddings (L, H): visual tokens and chat-template tokens, made by the trainer's
model (`models/reasoning.py`), so images never travel to the engines — only vectors. `generate`
returns, per prompt, `n` rollouts with the sampled token ids, text, per-token log-probs and the
policy version that produced them.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch

ENGINES: dict[str, str] = {
    "torch": "moon_ray.rollout.torch_engine:TorchEngine",
    "vllm": "moon_ray.rollout.vllm_engine:VLLMEngine",
    "simulated": "moon_ray.rollout.simulated:SimulatedEngine",  # a fixed sleep per token (benches, tests)
}


@dataclass(frozen=True)
class SamplingConfig:
    n: int = 4
    max_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class Rollout:
    token_ids: list[int]
    text: str
    logprobs: list[float]  # log-prob of each sampled token under the sampling distribution
    version: int  # policy version of the weights that generated it
    finished: bool = True  # ended with EOS (False: cut at max_tokens)
    meta: dict = field(default_factory=dict)


class RolloutEngine(abc.ABC):
    """Generates reasoning traces from prompt embeddings; takes weight updates in place."""

    version: int = 0

    @abc.abstractmethod
    def generate(self, prompts: Sequence[torch.Tensor], sampling: SamplingConfig) -> list[list[Rollout]]:
        """prompts: (L_i, H) float tensors -> for each prompt, `sampling.n` rollouts."""

    @abc.abstractmethod
    def update_weights(self, weights: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Load (name, tensor) pairs (Hugging Face causal-LM names) and set the policy version."""

    def update_adapter(self, weights: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Load LoRA tensors ('<weight name>::A', A), ('::B', B·scale) into live adapters, no merge.
        Engines that hold unmerged adapters set `supports_adapter`; the others get merged weights."""
        raise NotImplementedError(f"{type(self).__name__} does not hold LoRA adapters")

    supports_adapter: bool = False

    def info(self) -> dict:
        return {"engine": type(self).__name__, "version": self.version, "adapter": self.supports_adapter}


def register_engine(name: str, target: str) -> None:
    """Register 'module:Class' under `name` (imported when first created)."""
    ENGINES[name] = target


def engine_class(name: str) -> Callable[..., RolloutEngine]:
    if name not in ENGINES:
        raise ValueError(f"unknown rollout engine {name!r}; registered: {sorted(ENGINES)}")
    module, _, cls = ENGINES[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def create_engine(name: str, **kwargs) -> RolloutEngine:
    return engine_class(name)(**kwargs)
