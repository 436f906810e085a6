"""ImageFolder datasets (``root/train/<class>/*.jpg``, ``root/val/<class>/...``) decoded lazily with Pillow.

Train images get RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3)) + optional horizontal flip; eval
images get resize(shorter side = size / 0.875, i.e. 256 for 224) + center crop. The dataset returns ``uint8``
tensors; :class:`ImageFolderLoader` converts and normalises whole batches where they are collated (in the worker
processes when ``workers > 0``, as torchvision's pipelines do, so the main process only copies batches to the
device) and can pin them for asynchronous host-to-GPU copies. Per-sample randomness is seeded from ``(seed, epoch,
index)``, so augmentation is reproducible whatever the number of workers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from prunekit.data.loaders import epoch_indices, shard_size
from prunekit.data.transforms import Normalize, to_float
from prunekit.errors import PrunekitError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


def list_classes(split_dir: Path) -> list[str]:
    """Sorted class folder names under ``split_dir``.

    Raises:
        PrunekitError: the folder is missing or has no class sub-folders.
    """
    if not split_dir.is_dir():
        raise PrunekitError(
            f"ImageFolder split not found: {split_dir} (expected <data_dir>/train/<class>/*.jpg and "
            "<data_dir>/val/<class>/*.jpg)"
        )
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise PrunekitError(f"no class folders in {split_dir} (expected {split_dir}/<class>/<image files>)")
    return classes


def scan_split(split_dir: Path, classes: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """All image files under ``split_dir/<class>/`` (recursive, sorted) and their ``int64`` class indices.

    Class folders absent from ``split_dir`` are allowed (no samples); unknown folders raise.

    Raises:
        PrunekitError: a class folder not in ``classes``, or no images at all.
    """
    present = list_classes(split_dir)
    unknown = sorted(set(present) - set(classes))
    if unknown:
        raise PrunekitError(
            f"{split_dir} has class folders not in train: {unknown[:5]} (they must match train/)"
        )
    paths: list[str] = []
    labels: list[int] = []
    for ci, cname in enumerate(classes):
        cdir = split_dir / cname
        if not cdir.is_dir():
            continue
        files = []
        for dirpath, _dirs, names in os.walk(cdir, followlinks=True):
            files += [os.path.join(dirpath, n) for n in names if n.lower().endswith(IMG_EXTENSIONS)]
        files.sort()
        paths += files
        labels += [ci] * len(files)
    if not paths:
        raise PrunekitError(f"no images ({', '.join(IMG_EXTENSIONS)}) found under {split_dir}")
    return paths, np.asarray(labels, dtype=np.int64)


def random_resized_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """Crop box ``(left, top, right, bottom)`` sampled like torchvision's RandomResizedCrop."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


def _to_uint8_chw(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def train_transform(img: Image.Image, size: int, hflip: bool, rng: np.random.Generator) -> torch.Tensor:
    """RandomResizedCrop to ``size`` + optional random flip; returns ``uint8 [3, size, size]``."""
    box = random_resized_crop_box(img.width, img.height, rng)
    out = img.resize((size, size), Image.Resampling.BILINEAR, box=box)
    if hflip and rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return _to_uint8_chw(out)


def eval_transform(img: Image.Image, size: int) -> torch.Tensor:
    """Resize the shorter side to ``int(size / 0.875)``, center-crop ``size``: uint8 ``[3, size, size]``."""
    resize = int(size / 0.875)
    w, h = img.size
    if w <= h:
        nw, nh = resize, max(1, int(resize * h / w))
    else:
        nw, nh = max(1, int(resize * w / h)), resize
    img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    top = int(round((nh - size) / 2.0))
    left = int(round((nw - size) / 2.0))
    return _to_uint8_chw(img.crop((left, top, left + size, top + size)))


class ImageFolderDataset(Dataset):
    """Lazily decoded images; ``ds[i]`` is ``(uint8 [3, size, size], int label)``.

    Args:
        paths, labels: image files and their ``int64`` labels (see :func:`scan_split`).
        size: output side length.
        train: random-resized-crop (+ flip) if True, resize + center crop otherwise.
        hflip: random horizontal flip (train only).
        seed: base seed; sample ``i`` of epoch ``e`` uses ``numpy.random.default_rng([seed, e, i])``.
    """

    def __init__(
        self,
        paths: Sequence[str],
        labels: np.ndarray,
        size: int,
        train: bool,
        hflip: bool = True,
        seed: int = 0,
    ):
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.size = int(size)
        self.train = train
        self.hflip = hflip
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path = self.paths[i]
        try:
            with Image.open(path) as img:
                if not self.train:
                    img.draft(
                        "RGB", (int(self.size / 0.875),) * 2
                    )  # JPEG DCT downscale, never below the resize
                img = img.convert("RGB")
        except (OSError, UnidentifiedImageError) as e:
            raise PrunekitError(f"cannot decode image {path}: {e} (remove or replace the file)") from None
        if self.train:
            x = train_transform(img, self.size, self.hflip, np.random.default_rng([self.seed, self.epoch, i]))
        else:
            x = eval_transform(img, self.size)
        return x, int(self.labels[i])


class NormalizedCollate:
    """``collate_fn``: stack ``(uint8 [3, S, S], label)`` samples into ``(float32 [B, 3, S, S] normalised, int64
    [B])``. A class rather than a closure so that worker processes can be started by spawn as well as fork."""

    def __init__(self, normalize: Normalize):
        self.normalize = normalize

    def __call__(self, samples: list) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = default_collate(samples)
        return self.normalize(to_float(x)), y.to(torch.int64)


class ImageFolderLoader:
    """Epoch-aware wrapper of a ``torch.utils.data.DataLoader`` over an :class:`ImageFolderDataset`.

    Yields ``(float32 [B, 3, S, S] normalised, int64 [B])``. Shuffling is seeded by ``(seed, epoch)``; with
    ``world_size > 1`` a ``DistributedSampler(drop_last=True)`` gives each rank a disjoint equal-size shard
    (``whole``: rank ``r`` takes samples ``r, r + world_size, ...``, none dropped or repeated, for sharded
    evaluation).
    ``workers`` worker processes decode, convert and normalise images (0 = in the main process);
    ``pin_memory`` returns batches in page-locked memory (``DataLoader(pin_memory=True)``), so the training
    loop's ``.to(device, non_blocking=True)`` overlaps the host-to-GPU copy with compute (only useful with CUDA).
    """

    def __init__(
        self,
        dataset: ImageFolderDataset,
        *,
        batch_size: int,
        normalize: Normalize,
        shuffle: bool = False,
        drop_last: bool = False,
        workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        whole: bool = False,
    ):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.normalize = normalize
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.workers = int(workers)
        self.pin_memory = bool(pin_memory)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0
        self.sampler: DistributedSampler | None = None
        if world_size > 1 and not whole:
            self.sampler = DistributedSampler(
                dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=True
            )

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration produces."""
        self.epoch = int(epoch)
        if self.sampler is not None:
            self.sampler.set_epoch(self.epoch)

    @property
    def dataset_size(self) -> int:
        """Samples in the whole split (all ranks)."""
        return len(self.dataset)

    @property
    def num_samples(self) -> int:
        """Samples this rank visits per epoch (before ``drop_last``)."""
        if self.sampler is not None:
            return len(self.sampler)
        return shard_size(len(self.dataset), self.rank, self.world_size, whole=True)  # whole, or one rank

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def indices(self) -> list[int]:
        """The sample indices this rank visits in the current epoch, in order."""
        if self.sampler is not None:
            return list(self.sampler)
        return epoch_indices(
            len(self.dataset),
            shuffle=self.shuffle,
            seed=self.seed,
            epoch=self.epoch,
            rank=self.rank,
            world_size=self.world_size,
            whole=True,
        ).tolist()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.dataset.epoch = self.epoch  # forked workers copy the dataset when the iterator starts
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=self.indices(),
            num_workers=self.workers,
            collate_fn=NormalizedCollate(self.normalize),
            pin_memory=self.pin_memory,
            drop_last=self.drop_last,
            persistent_workers=False,
        )
        yield from loader

    def __repr__(self) -> str:
        return (
            f"ImageFolderLoader(n={self.dataset_size}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"workers={self.workers}, pin_memory={self.pin_memory}, rank={self.rank}/{self.world_size})"
        )
