"""Batched tensor augmentation and normalisation for in-memory datasets.

Everything works on a whole batch at once (no per-sample Python loop): a ``[B, C, H, W]`` float batch is
randomly cropped with zero padding (one offset per sample, done with a single ``gather``) and randomly
flipped. All randomness comes from an explicit ``torch.Generator`` so an epoch can be replayed exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# Per-channel mean/std of the train split (pixel values in [0, 1]).
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet
}


def channel_stats(images: torch.Tensor, chunk: int = 8192) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of ``uint8 [N, C, H, W]`` images scaled to [0, 1] (float64 accumulation)."""
    if images.dim() != 4:
        raise ValueError(f"images must be [N, C, H, W], got {tuple(images.shape)}")
    c = images.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for i in range(0, len(images), chunk):
        x = images[i : i + chunk].to(torch.float64).div_(255.0)
        s += x.sum(dim=(0, 2, 3))
        s2 += x.square().sum(dim=(0, 2, 3))
    n = max(1, images.numel() // c)
    mean = s / n
    std = (s2 / n - mean.square()).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


class Normalize:
    """``x -> (x - mean) / std`` per channel, in place on a float ``[B, C, H, W]`` batch."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"bad normalisation stats mean={mean} std={std}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._m = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self._s = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self._m.shape[1]:
            raise ValueError(f"batch has {x.shape[1]} channels, stats have {self._m.shape[1]}")
        return x.sub_(self._m).div_(self._s)

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


def to_float(images: torch.Tensor) -> torch.Tensor:
    """``uint8 [B, C, H, W]`` -> ``float32 [B, C, H, W]`` in [0, 1] (new tensor)."""
    return images.to(torch.float32).div_(255.0)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad each side by ``padding`` and take a random ``H x W`` window per sample.

    Args:
        x: ``[B, C, H, W]`` (any dtype).
        padding: pixels of zero padding per side; 0 returns ``x`` unchanged.
        generator: source of the per-sample offsets (``[B]`` integers in ``0..2*padding``).

    Returns:
        ``[B, C, H, W]``, same dtype as ``x``.
    """
    if padding <= 0:
        return x
    b, c, h, w = x.shape
    p = padding
    padded = F.pad(x, (p, p, p, p))
    hp, wp = h + 2 * p, w + 2 * p
    oy = torch.randint(0, 2 * p + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * p + 1, (b,), generator=generator)
    rows = oy[:, None] + torch.arange(h)  # [B, H]
    cols = ox[:, None] + torch.arange(w)  # [B, W]
    flat_idx = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    return padded.reshape(b, c, hp * wp).gather(2, flat_idx).reshape(b, c, h, w)


def random_hflip(x: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each sample of ``x [B, C, H, W]`` left-right with probability ``p``; returns ``[B, C, H, W]``."""
    mask = torch.rand(x.shape[0], generator=generator) < p
    if not bool(mask.any()):
        return x
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(3), x)


class BatchAugment:
    """Random zero-padded crop + random horizontal flip of a float ``[B, C, H, W]`` batch."""

    def __init__(self, crop_padding: int = 2, hflip: bool = True):
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        self.crop_padding = int(crop_padding)
        self.hflip = bool(hflip)

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.hflip

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = random_crop(x, self.crop_padding, generator)
        if self.hflip:
            x = random_hflip(x, 0.5, generator)
        return x

    def __repr__(self) -> str:
        return f"BatchAugment(crop_padding={self.crop_padding}, hflip={self.hflip})"
