"""scikit-learn's bundled ``digits`` (1797 8x8 grey images, 10 classes) upsampled to 28x28 for offline
smoke runs.

No download is needed. There is no official test split, so a fixed (seed-independent) stratified 20% of the
images is the test split; the val split is carved from the remaining 80% like for every other dataset.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from prunekit.data.splits import STREAM_FIXED_TEST, stratified_split
from prunekit.data.transforms import channel_stats

TEST_FRACTION = 0.2
TEST_SEED = 0  # fixed: the test split never changes with the run's seed
SIZE = 28


@functools.lru_cache(maxsize=1)
def load_digits28() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Load sklearn digits upsampled (bilinear) to 28x28, split 80/20 stratified with a fixed seed.

    Cached in-process; do not modify the returned tensors in place.

    Returns:
        ``(train_x, train_y, test_x, test_y)``: images ``uint8 [N, 1, 28, 28]`` (1438 train, 359 test), labels
        ``int64 [N]`` in 0..9.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(np.asarray(d.images, dtype=np.float32) / 16.0).unsqueeze(
        1
    )  # [1797, 1, 8, 8] in [0,1]
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    x = (x * 255.0).round_().clamp_(0, 255).to(torch.uint8).contiguous()
    y = torch.from_numpy(np.asarray(d.target, dtype=np.int64))
    train_idx, test_idx = stratified_split(y, TEST_FRACTION, TEST_SEED, STREAM_FIXED_TEST)
    tr, te = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return x[tr], y[tr], x[te], y[te]


@functools.lru_cache(maxsize=1)
def digits_stats() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of the upsampled digits train split, pixel values in [0, 1]."""
    return channel_stats(load_digits28()[0])
