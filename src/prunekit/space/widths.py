"""Width rules: every rule that turns a (fractional) width into a legal kept-channel count, and which channels.

One home for the rounding and legality rules that plans, methods and encodings share:

* :func:`round_width` — nearest multiple of a channel block (ties up), clamped to ``[one multiple, C]``.
* :func:`legal_width` — the kept count of a group exactly as a plan realises it (rounding mode, ``min_channels``,
  and groups touching a grouped conv floored to a multiple of their ``blocks``); monotone in the width.
* :func:`uniform_widths` — one width multiplier for every group (Howard et al., "MobileNets", 2017, §3.3).
* :func:`select_channels` — which channels: top-k by a score, or the first k (slimmable / PruningNet convention).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import numpy as np
import torch

from prunekit.space.channels import ChannelGroup, ChannelSpace

__all__ = ["Rounding", "legal_width", "round_width", "select_channels", "uniform_widths"]

Rounding = Literal["nearest", "floor", "ceil"]


def round_width(width: float, channels: int, *, multiple: int = 1, min_channels: int = 1) -> int:
    """Round a (fractional) width to an int in ``[min(max(min_channels, multiple), C), C]``, to a multiple of
    ``multiple``.

    Rounds to the nearest multiple (ties up); never returns 0; never exceeds C; never goes below one multiple (a
    width of 3 with ``multiple=16`` would run as 16 on a vectorised CPU anyway).
    """
    multiple = max(1, int(multiple))
    w = int(np.floor(width / multiple + 0.5)) * multiple
    lo = min(max(1, min_channels, multiple), channels)
    return int(min(channels, max(lo, w)))


def select_channels(group: ChannelGroup, width: int, scores: torch.Tensor | None) -> list[int]:
    """Choose ``width`` channels of ``group``: top-``width`` by ``scores`` (shape ``[C]``), or the first ``width``
    when ``scores`` is None. Groups touching a grouped conv keep the same local positions in every block (scores
    summed over blocks), so the width is rounded down to a multiple of ``group.blocks`` (at least one per block).
    """
    c, b = group.channels, group.blocks
    width = int(min(max(width, 1), c))
    if b > 1:
        size = c // b
        per = max(1, width // b)
        local = torch.arange(size) if scores is None else scores.reshape(b, size).sum(0)
        chosen = (
            list(range(per))
            if scores is None
            else sorted(torch.topk(local, per, largest=True, sorted=False).indices.tolist())
        )
        return sorted(blk * size + i for blk in range(b) for i in chosen)
    if scores is None:
        return list(range(width))
    idx = torch.topk(scores, width, largest=True, sorted=False).indices
    return sorted(int(i) for i in idx)


def legal_width(
    group: ChannelGroup, width: float, *, round_to: int = 1, min_channels: int = 1, mode: Rounding = "nearest"
) -> int:
    """The kept-channel count of ``group`` for a (fractional) target ``width``, exactly as a plan realises it.

    ``width`` is rounded to a multiple of ``round_to`` (``mode``: ``nearest`` with ties up, as
    :func:`~prunekit.space.round_width`; ``floor``; ``ceil``) and clamped to ``[min(max(min_channels, multiple), C), C]``. Groups
    touching a grouped conv (``group.blocks > 1``) are rounded to a multiple of ``lcm(round_to, blocks)`` and then
    down to a multiple of ``blocks`` (at least one channel per block), which is what
    :func:`~prunekit.space.select_channels` keeps. The map is non-decreasing in ``width`` (so costs built on it are
    monotone and can be bisected).
    """
    b, c = int(group.blocks), int(group.channels)
    multiple = int(np.lcm(max(1, round_to), b)) if b > 1 else max(1, int(round_to))
    if mode == "nearest":
        w = round_width(width, c, multiple=multiple, min_channels=min_channels)
    else:
        q = width / multiple
        k = math.floor(q + 1e-9) if mode == "floor" else math.ceil(q - 1e-9)
        w = min(c, max(min(max(1, min_channels, multiple), c), k * multiple))
    if b > 1:
        w = max(b, (w // b) * b)  # C is a multiple of b (ChannelSpace), so this never exceeds C
    return int(w)


def uniform_widths(
    space: ChannelSpace,
    mult: float,
    *,
    round_to: int = 1,
    min_channels: int = 1,
    mode: Rounding = "nearest",
    cap: np.ndarray | None = None,
    fixed: Mapping[int, int] | None = None,
) -> np.ndarray:
    """Kept channels per group, shape ``[G]`` (int64, space order), for width multiplier ``mult`` in ``[0, 1]``:
    ``legal_width(g, mult * C_g)`` for every group (``mult = 0``: every group at its minimum), capped at ``cap``
    (shape ``[G]``, e.g. channels still alive), with ``fixed`` ``{group index: width}`` overriding (protected groups).
    """
    w = np.array(
        [
            legal_width(g, mult * g.channels, round_to=round_to, min_channels=min_channels, mode=mode)
            for g in space.groups
        ],
        dtype=np.int64,
    )
    if cap is not None:
        w = np.minimum(w, np.asarray(cap, dtype=np.int64))
    for i, v in (fixed or {}).items():
        w[i] = v
    return w
