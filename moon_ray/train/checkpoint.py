"""Checkpoints: trainable weights (safetensors) + PEFT adapter + config + optimizer/scheduler state.

    <dir>/trainable.safetensors   every parameter with requires_grad (LoRA, projector, fusion, …)
    <dir>/adapter/                the LM's PEFT adapter (PeftModel.from_pretrained loads it)
    <dir>/optimizer.safetensors   the tensors of the AdamW + LR-scheduler state
    <dir>/optimizer.json          the rest of that state, tensors named by their safetensors key
    <dir>/config.yaml             the full run config
    <dir>/moon_state.json         {"step": N}

Nothing here is unpickled: a checkpoint directory from anywhere cannot run code when it is loaded.
Checkpoints written before this format (`optimizer.pt`) load through `torch.load(weights_only=True)`,
which refuses anything but tensors and plain containers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

from moon_ray.config import Config, to_dict
from moon_ray.models.trainable import load_trainable, save_trainable, unwrap

STATE = "moon_state.json"
OPT_TENSORS, OPT_REST, OPT_LEGACY = "optimizer.safetensors", "optimizer.json", "optimizer.pt"


def save_checkpoint(path: Path, model, temperature, optimizer, scheduler, step: int, cfg: Config) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    save_trainable(path, model, temperature)
    lm = unwrap(model).lm
    if hasattr(lm, "save_pretrained") and hasattr(lm, "peft_config"):
        lm.save_pretrained(str(path / "adapter"))
    save_state(path, {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()})
    (path / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    (path / STATE).write_text(json.dumps({"step": step}))
    return path


def load_checkpoint(path: Path, model, temperature, optimizer=None, scheduler=None) -> int:
    """Restore weights (and optimizer/scheduler when given); returns the saved step."""
    load_trainable(path, model, temperature)
    if optimizer is not None:
        opt = load_state(path)
        optimizer.load_state_dict(opt["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(opt["scheduler"])
    return int(json.loads((path / STATE).read_text())["step"])


def latest_checkpoint(root: Path, state_file: str = STATE) -> Path | None:
    """The checkpoint directory under `root` with the highest step (read from its `state_file`, a JSON
    {"step": N}), or None."""
    best, best_step = None, -1
    for state in Path(root).rglob(state_file):
        step = int(json.loads(state.read_text())["step"])
        if step > best_step:
            best, best_step = state.parent, step
    return best


# ------------------------------------------------------------------ optimizer state without pickle
def save_state(path: Path, state: dict) -> None:
    """A nested state dict -> optimizer.safetensors (its tensors) + optimizer.json (everything else)."""
    tensors: dict[str, torch.Tensor] = {}
    rest = _encode(state, tensors)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path / OPT_TENSORS))
    (path / OPT_REST).write_text(json.dumps(rest))


def load_state(path: Path) -> dict:
    """The inverse of `save_state`; an old `optimizer.pt` loads only as tensors and plain containers."""
    if (path / OPT_REST).exists():
        return _decode(json.loads((path / OPT_REST).read_text()), load_file(str(path / OPT_TENSORS)))
    if (path / OPT_LEGACY).exists():
        try:
            return torch.load(path / OPT_LEGACY, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises UnpicklingError (or others) for anything beyond plain data
            raise ValueError(f"{path / OPT_LEGACY}: refusing an optimizer state that is not plain tensors and "
                             f"containers ({type(e).__name__}); resume with train.init_from={path} to keep the "
                             "weights and start a fresh optimizer") from e
    raise FileNotFoundError(f"{path}: no optimizer state ({OPT_REST} + {OPT_TENSORS})")


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value
        return {"__tensor__": key}
    if isinstance(value, dict):
        return {"__dict__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"optimizer state holds a {type(value).__name__}, which has no safe serialisation")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__tuple__" in value:
            return tuple(_decode(v, tensors) for v in value["__tuple__"])
        return {_decode(k, tensors): _decode(v, tensors) for k, v in value["__dict__"]}
    return value
