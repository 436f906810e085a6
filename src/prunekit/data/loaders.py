"""Loaders: :class:`TensorLoader` for in-memory datasets, shared epoch seeding and sharding.

Determinism contract: the order and the augmentation of epoch ``e`` depend only on ``(seed, e, rank,
world_size)`` and the data, never on how many epochs ran before in this process. A training run interrupted
after epoch ``e`` resumes exactly with ``loader.set_epoch(e + 1)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from prunekit.data.transforms import BatchAugment, Normalize, to_float

_STREAM_ORDER = 0
_STREAM_AUGMENT = 1


def make_generator(seed: int, epoch: int, stream: int, rank: int = 0) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``(seed, epoch, stream, rank)`` via numpy's SeedSequence."""
    a, b = np.random.SeedSequence([seed, epoch, stream, rank]).generate_state(2, dtype=np.uint32)
    g = torch.Generator()
    g.manual_seed((int(a) << 31) ^ int(b))
    return g


def epoch_indices(
    n: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    whole: bool = False,
) -> torch.Tensor:
    """This rank's sample indices for one epoch, ``int64 [n // world_size]`` (all ``n`` when world_size is 1).

    With shuffle, the permutation is the same on every rank (seeded by ``(seed, epoch)``); it is truncated
    to a multiple of ``world_size`` and rank ``r`` takes ``perm[r::world_size]`` (like ``DistributedSampler``
    with ``drop_last=True``), so the shards are disjoint and equal-size and DDP ranks run the same number of
    steps. ``whole``: not truncated -- every sample on exactly one rank, shards differing in size by at most
    one (for sharded evaluation, whose ranks meet only once, at the end).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    idx = (
        torch.randperm(n, generator=make_generator(seed, epoch, _STREAM_ORDER))
        if shuffle
        else torch.arange(n)
    )
    if world_size > 1:
        idx = (idx if whole else idx[: (n // world_size) * world_size])[rank::world_size]
    return idx


def shard_size(n: int, rank: int = 0, world_size: int = 1, whole: bool = False) -> int:
    """How many of ``n`` samples :func:`epoch_indices` gives ``rank``: ``n // world_size`` (``whole``: the samples
    ``rank, rank + world_size, ...``, one more on the first ``n % world_size`` ranks); ``n`` with one rank."""
    if world_size == 1:
        return n
    return len(range(rank, n, world_size)) if whole else n // world_size


@contextlib.contextmanager
def limit_threads(n: int | None) -> Iterator[None]:
    """Run the block with at most ``n`` torch intra-op threads (None: unchanged), then restore the setting.

    Batch preparation works on ~100k-element tensors where OpenMP fork/join costs more than it saves, and on a
    loaded 2-core machine it can be 10x slower than one thread; toggling costs about a microsecond.
    """
    old = torch.get_num_threads()
    if n is None or n >= old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class TensorLoader:
    """Fast batch iterator over in-memory ``uint8`` images (no ``torch.utils.data.DataLoader`` overhead).

    Yields ``(images float32 [B, C, H, W] normalised, labels int64 [B])``. Images are kept as ``uint8`` and
    turned into float per batch; if ``augment`` is given, the batch is augmented (random crop / flip) before
    normalisation using a generator seeded from ``(seed, epoch, rank)``.

    Args:
        images: ``uint8 [N, C, H, W]``.
        labels: ``int64 [N]``.
        batch_size: samples per batch (> 0).
        normalize: per-channel normalisation applied to every batch.
        shuffle: reshuffle every epoch (seeded by ``(seed, epoch)``, see :meth:`set_epoch`).
        drop_last: drop the last incomplete batch.
        augment: batched augmentation, or None.
        seed: base seed for order and augmentation.
        rank, world_size: distributed sharding; each rank iterates a disjoint equal-size shard.
        whole: shard without dropping the remainder (every sample on exactly one rank; for evaluation).
        threads: torch intra-op threads used while preparing a batch (restored before it is yielded);
            None keeps the global setting.

    ``len(loader)`` is the number of batches per epoch on this rank. Iterating twice without ``set_epoch``
    replays the same epoch.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        normalize: Normalize,
        shuffle: bool = False,
        drop_last: bool = False,
        augment: BatchAugment | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        whole: bool = False,
        threads: int | None = 1,
    ):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if labels.dim() != 1 or len(labels) != len(images):
            raise ValueError(f"labels must be [N={len(images)}], got {tuple(labels.shape)}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad rank/world_size {rank}/{world_size}")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.batch_size = int(batch_size)
        self.normalize = normalize
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augment = augment if augment is not None and augment.active else None
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.whole = bool(whole)
        self.threads = threads
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration produces."""
        self.epoch = int(epoch)

    @property
    def dataset_size(self) -> int:
        """Samples in the whole split (all ranks)."""
        return len(self.labels)

    @property
    def num_samples(self) -> int:
        """Samples this rank visits per epoch (before ``drop_last``)."""
        return shard_size(self.dataset_size, self.rank, self.world_size, self.whole)

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def indices(self) -> torch.Tensor:
        """The ``int64`` sample indices this rank visits in the current epoch, in order."""
        idx = epoch_indices(
            self.dataset_size,
            shuffle=self.shuffle,
            seed=self.seed,
            epoch=self.epoch,
            rank=self.rank,
            world_size=self.world_size,
            whole=self.whole,
        )
        if self.drop_last:
            idx = idx[: len(self) * self.batch_size]
        return idx

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        with limit_threads(self.threads):
            idx = self.indices()
        gen = make_generator(self.seed, self.epoch, _STREAM_AUGMENT, self.rank) if self.augment else None
        for start in range(0, len(idx), self.batch_size):
            with limit_threads(self.threads):
                b = idx[start : start + self.batch_size]
                x = to_float(self.images.index_select(0, b))
                if self.augment is not None:
                    x = self.augment(x, gen)
                batch = self.normalize(x), self.labels.index_select(0, b)
            yield batch

    def __repr__(self) -> str:
        return (
            f"TensorLoader(n={self.dataset_size}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"drop_last={self.drop_last}, augment={self.augment}, rank={self.rank}/{self.world_size})"
        )
