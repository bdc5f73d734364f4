"""Exported model directories, and the `Encoder` that serves them.

    <export>/trainable.safetensors  LoRA + projector + fusion + residual + MoE head (+ temperature);
                                    model.arch=dual: the two heads and the mix gate
    <export>/adapter/               the PEFT LoRA adapter of the LM (PeftModel.from_pretrained loads it
                                    on the base LM named in MOON_MODEL); none for model.arch=dual
    <export>/tokenizer/             the tokenizer (arch=dual: MiniLM's)
    <export>/config.yaml            the run config (model section rebuilds the embedder, model.arch picks it)
    <export>/MOON_MODEL             marker with the architecture and the base LM path (arch=dual: MiniLM's)

`get_encoder("<export>")` returns a `MoonEncoder` over it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from moon_ray.config import Config, load_config
from moon_ray.models.encoder import Encoder, register_encoder

MARKER = "MOON_MODEL"


def export_model(checkpoint: Path, out: Path) -> Path:
    """Copy a checkpoint's model parts into a self-describing export directory."""
    cfg = load_config(checkpoint / "config.yaml")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy2(checkpoint / "trainable.safetensors", tmp / "trainable.safetensors")
    shutil.copy2(checkpoint / "config.yaml", tmp / "config.yaml")
    if (checkpoint / "adapter").exists():
        shutil.copytree(checkpoint / "adapter", tmp / "adapter")
    tokenizer, base = _tokenizer_and_base(cfg)
    tokenizer.save_pretrained(str(tmp / "tokenizer"))
    state = json.loads((checkpoint / "moon_state.json").read_text())
    (tmp / MARKER).write_text(json.dumps({"arch": cfg.model.arch, "base_model": base, "step": state["step"],
                                          "embed_layers": cfg.model.lm.embed_layers}))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _tokenizer_and_base(cfg: Config):
    """(the tokenizer the export ships, the path of its base text model: SmolLM2 / lm.path, or MiniLM)."""
    if cfg.model.arch == "dual":
        from moon_ray.models.dual import load_text_tokenizer
        from moon_ray.models.weights import minilm_dir

        return load_text_tokenizer(), str(minilm_dir())
    from moon_ray.models.language import load_tokenizer
    from moon_ray.models.weights import smollm2_dir

    return load_tokenizer(cfg.model.lm), cfg.model.lm.path or (None if cfg.model.lm.tiny else str(smollm2_dir()))


def load_exported(path: Path, device: str = "cpu"):
    """(the embedder model.arch names — MoonEmbedder or DualEncoder — in eval mode with the exported
    weights, Config)."""
    import torch

    from moon_ray.models.factory import build_embedder
    from moon_ray.models.temperature import Temperature
    from moon_ray.models.trainable import load_trainable

    path = Path(path)
    if not (path / MARKER).exists():
        raise FileNotFoundError(f"{path} is not an exported moon-ray model (no {MARKER})")
    cfg: Config = load_config(path / "config.yaml")
    model = build_embedder(cfg)
    temperature = Temperature(cfg.train.temperature, cfg.train.learn_temperature)
    load_trainable(path, model, temperature)
    return model.to(torch.device(device)).eval(), cfg


@register_encoder("directory")
class MoonEncoder(Encoder):
    """Encoder over an exported MOON model: queries via `encode`, catalog via `encode_products`."""

    def __init__(self, path: Path, device: str = "cpu", batch_size: int = 32, reasoning: bool | None = None):
        """reasoning: embed products with a generated reasoning trace (default: when the model was
        trained jointly, i.e. its config has rollout.enabled)."""
        self.model, self.cfg = load_exported(Path(path), device)
        self.name = Path(path).name if Path(path).name != "export" else Path(path).parent.name
        self.dim = self.cfg.model.embed_dim
        self.batch_size = batch_size
        self.reasoning = self.cfg.rollout.enabled if reasoning is None else reasoning
        if self.reasoning and not getattr(self.model, "can_reason", True):
            raise ValueError(f"{path}: a model.arch={self.cfg.model.arch} export cannot embed with reasoning traces")

    @classmethod
    def over(cls, model, cfg: Config, name: str = "live", batch_size: int = 32, reasoning: bool = False) -> MoonEncoder:
        """The same encoder over a model in memory (a trainer's live model, for validation); the caller
        puts it in eval mode and back."""
        enc = cls.__new__(cls)
        enc.model, enc.cfg, enc.name, enc.dim = model, cfg, name, cfg.model.embed_dim
        enc.batch_size, enc.reasoning = batch_size, reasoning
        return enc

    def encode(self, images: Sequence[bytes | None], texts: Sequence[str | None]) -> np.ndarray:
        return self._encode(images, texts, is_query=True)

    def encode_products(self, images: Sequence[bytes], titles: Sequence[str]) -> np.ndarray:
        return self._encode(images, titles, is_query=False)

    def _encode(self, images, texts, is_query: bool) -> np.ndarray:
        import torch

        from moon_ray.models.reasoning import generate_reasoning

        if len(images) != len(texts):
            raise ValueError(f"images ({len(images)}) and texts ({len(texts)}) differ in length")
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        groups: dict[str, list[int]] = {"multimodal": [], "image": [], "text": []}
        for i, (img, txt) in enumerate(zip(images, texts, strict=True)):
            kind = "multimodal" if img is not None and txt else "image" if img is not None else "text" if txt else None
            if kind is None:
                raise ValueError(f"input {i} has neither an image nor text")
            groups[kind].append(i)
        with torch.no_grad():
            for kind, idx in groups.items():
                for s in range(0, len(idx), self.batch_size):
                    chunk = idx[s : s + self.batch_size]
                    pixels = self.model.pixels([images[i] for i in chunk]) if kind != "text" else None
                    words = [texts[i] for i in chunk] if kind != "image" else None
                    traces = None
                    if self.reasoning and not is_query and kind == "multimodal":
                        traces = generate_reasoning(self.model, pixels, words, max_new_tokens=self.cfg.rollout.max_tokens)
                    emb = self.model(pixels=pixels, texts=words, reasoning=traces, modality=kind, is_query=is_query)
                    out[chunk] = emb.embedding.cpu().numpy()
        return out
