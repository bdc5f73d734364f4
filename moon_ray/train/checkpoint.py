"""Checkpoints: trainable weights (safetensors) + PEFT adapter + config + optimizer/scheduler state.

    <dir>/trainable.safetensors   every parameter with requires_grad (LoRA, projector, fusion, …)
    <dir>/adapter/                the LM's PEFT adapter (PeftModel.from_pretrained loads it)
    <dir>/optimizer.pt            AdamW + LR-scheduler state
    <dir>/config.yaml             the full run config
    <dir>/moon_state.json         {"step": N}
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from moon_ray.config import Config, to_dict

STATE = "moon_state.json"


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def trainable_state(model: nn.Module, temperature: nn.Module) -> dict[str, torch.Tensor]:
    state = {f"model.{n}": p.detach().cpu().contiguous() for n, p in unwrap(model).named_parameters() if p.requires_grad}
    state["temperature.log_tau"] = temperature.log_tau.detach().cpu().reshape(1)
    return state


def save_checkpoint(path: Path, model, temperature, optimizer, scheduler, step: int, cfg: Config) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    save_file(trainable_state(model, temperature), str(path / "trainable.safetensors"))
    lm = unwrap(model).lm
    if hasattr(lm, "save_pretrained") and hasattr(lm, "peft_config"):
        lm.save_pretrained(str(path / "adapter"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, path / "optimizer.pt")
    (path / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    (path / STATE).write_text(json.dumps({"step": step}))
    return path


def load_trainable(path: Path, model, temperature) -> None:
    """Load trainable weights into model/temperature; every saved tensor must find its parameter."""
    state = load_file(str(path / "trainable.safetensors"))
    params = dict(unwrap(model).named_parameters())
    for key, value in state.items():
        if key == "temperature.log_tau":
            with torch.no_grad():
                temperature.log_tau.copy_(value.reshape(()))
            continue
        name = key.removeprefix("model.")
        if name not in params:
            raise KeyError(f"checkpoint {path}: parameter {name!r} does not exist in the model")
        with torch.no_grad():
            params[name].copy_(value)


def load_checkpoint(path: Path, model, temperature, optimizer=None, scheduler=None) -> int:
    """Restore weights (and optimizer/scheduler when given); returns the saved step."""
    load_trainable(path, model, temperature)
    if optimizer is not None:
        opt = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False)
        optimizer.load_state_dict(opt["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(opt["scheduler"])
    return int(json.loads((path / STATE).read_text())["step"])


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint directory under `root` with the highest step, or None."""
    best, best_step = None, -1
    for state in Path(root).rglob(STATE):
        step = int(json.loads(state.read_text())["step"])
        if step > best_step:
            best, best_step = state.parent, step
    return best
