"""Datasets and loaders: ``DataConfig`` -> :func:`build_data` -> :class:`DataBundle` (train/val/test).

Splits:
    * ``train`` - the training pool: the dataset's train split minus ``val`` (optionally a stratified subset).
    * ``val``   - a seeded stratified ``val_fraction`` held out from the train split. Search methods
      select on it.
    * ``test``  - the dataset's official test split; only for final reports.

In-memory datasets (``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``, ``digits``) use the fast
:class:`TensorLoader`; ``imagefolder`` uses a ``torch.utils.data.DataLoader`` with worker processes. Every
loader yields ``(images float32 [B, C, H, W] normalised, labels int64 [B])``, has ``len()`` = batches per
epoch and a ``set_epoch(e)`` that makes epoch ``e``'s order and augmentation a pure function of ``(seed, e)``.

``custom`` calls the user's ``factory`` (``path/to/file.py:function``) for its own train / val / test loaders
and uses them as they are (:mod:`prunekit.data.custom`, a :class:`~prunekit.data.custom.CustomDataBundle`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from prunekit.data.bundle import BundleFields
from prunekit.data.cifar import cifar_class_names, load_cifar
from prunekit.data.custom import CustomDataBundle, build_custom
from prunekit.data.digits import digits_stats, load_digits28
from prunekit.data.idx import FASHION_MNIST_CLASSES, load_idx_dataset, read_idx
from prunekit.data.imagefolder import ImageFolderDataset, ImageFolderLoader, list_classes, scan_split
from prunekit.data.loaders import TensorLoader, epoch_indices, make_generator
from prunekit.data.splits import (
    STREAM_SUBSET_TEST,
    STREAM_SUBSET_TRAIN,
    STREAM_SUBSET_VAL,
    select_classes,
    stratified_split,
    stratified_subset,
)
from prunekit.data.transforms import DATASET_STATS, BatchAugment, Normalize, channel_stats
from prunekit.errors import PrunekitError
from prunekit.userfile import split_file_ref

__all__ = [
    "DATASET_NAMES",
    "NO_VAL_FIX",
    "BatchAugment",
    "CustomDataBundle",
    "DataBundle",
    "DataConfig",
    "ImageFolderLoader",
    "Loader",
    "Normalize",
    "TensorLoader",
    "build_data",
    "channel_stats",
    "epoch_indices",
    "load_cifar",
    "load_digits28",
    "load_idx_dataset",
    "make_generator",
    "read_idx",
    "stratified_split",
    "stratified_subset",
]

DatasetName = Literal["fashion_mnist", "mnist", "cifar10", "cifar100", "imagefolder", "digits", "custom"]
DATASET_NAMES: tuple[str, ...] = (
    "fashion_mnist",
    "mnist",
    "cifar10",
    "cifar100",
    "imagefolder",
    "digits",
    "custom",
)

NO_VAL_FIX = "set data.val_fraction > 0 (custom data: return a 'val' loader from data.factory)"
"""The fix named by every error of a run that needs a validation split and has none."""

Loader = TensorLoader | ImageFolderLoader

# Dataset defaults used when crop_padding / hflip are left as None. Flipping changes the meaning of digits.
_DEFAULT_PADDING = {
    "fashion_mnist": 2,
    "mnist": 2,
    "digits": 2,
    "cifar10": 4,
    "cifar100": 4,
    "imagefolder": 0,
    "custom": 0,
}
_DEFAULT_HFLIP = {
    "fashion_mnist": True,
    "mnist": False,
    "digits": False,
    "cifar10": True,
    "cifar100": True,
    "imagefolder": True,
    "custom": False,
}
TEST_SUBSET_SEED = 0  # subset_test never depends on the run's seed: reports across seeds see the same images


class DataConfig(BaseModel):
    """Which dataset to load and how to split, batch and augment it.

    ``crop_padding`` / ``hflip`` left as None take the dataset default (padding 2 for 28x28 sets, 4 for CIFAR;
    flip on for fashion_mnist / CIFAR / imagefolder, off for mnist / digits whose classes are not
    mirror-invariant). ``workers`` and ``pin_memory`` only affect imagefolder (in-memory loaders run in the main
    process); ``pin_memory`` None pins batches when CUDA is available.
    ``subset_val`` is an optional stratified cap on the val split (the val split itself never depends on
    ``subset_train``).

    ``name: custom`` uses the user's own loaders: ``factory: path/to/file.py:function`` (a relative path starts
    at the working directory) is called as ``function(**options)``, plus ``rank=`` / ``world_size=`` where it
    takes them, and returns ``{"train": loader, "val": loader or None, "test": loader}`` (optionally
    ``num_classes`` and ``class_names``); see :mod:`prunekit.data.custom`. Every other field decides splitting,
    batching or augmentation, which the factory's loaders do themselves: set to anything but its default with
    ``custom`` it is an error. ``factory`` and ``options`` only apply to ``custom`` (and are left out of the
    config's hash otherwise, so existing runs keep theirs). ``--smoke`` caps a custom loader's batches instead of
    subsetting it.
    """

    model_config = ConfigDict(extra="forbid")

    name: DatasetName
    factory: str | None = Field(
        None,
        description="custom: path/to/file.py:function returning the train / val / test loaders",
        exclude_if=lambda v: v is None,
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="custom: keyword arguments of the factory",
        exclude_if=lambda v: not v,
    )
    data_dir: str | None = None
    val_fraction: float = 0.1
    subset_train: int | None = None
    subset_val: int | None = None
    subset_test: int | None = None
    classes: list[int] | None = None
    batch_size: int = 128
    eval_batch_size: int = 256
    augment: bool = True
    crop_padding: int | None = None
    hflip: bool | None = None
    image_size: int | None = None
    workers: int = 0
    # None (auto) is left out of the config's hash, so runs written before the field existed still resume
    pin_memory: bool | None = Field(
        None,
        description="imagefolder: page-locked batches for asynchronous host-to-GPU copies (None: when CUDA is "
        "available)",
        exclude_if=lambda v: v is None,
    )
    seed: int = 0

    @field_validator("val_fraction")
    @classmethod
    def _check_fraction(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {v}")
        return v

    @field_validator(
        "subset_train", "subset_val", "subset_test", "batch_size", "eval_batch_size", "image_size"
    )
    @classmethod
    def _check_positive(cls, v: int | None, info: Any) -> int | None:
        if v is not None and v <= 0:
            raise ValueError(f"{info.field_name} must be a positive integer, got {v}")
        return v

    @field_validator("crop_padding", "workers")
    @classmethod
    def _check_non_negative(cls, v: int | None, info: Any) -> int | None:
        if v is not None and v < 0:
            raise ValueError(f"{info.field_name} must be >= 0, got {v}")
        return v

    @field_validator("classes")
    @classmethod
    def _check_classes(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        if len(v) < 2:
            raise ValueError(f"classes must list at least 2 class ids, got {v}")
        if len(set(v)) != len(v):
            raise ValueError(f"classes has duplicates: {v}")
        if min(v) < 0:
            raise ValueError(f"classes must be >= 0, got {v}")
        return v

    @model_validator(mode="after")
    def _check_combination(self) -> DataConfig:
        if self.name == "custom":
            return self._check_custom()
        for key in ("factory", "options"):
            if getattr(self, key):
                raise ValueError(
                    f"{key} only applies to name: custom (got name={self.name!r}); remove it or set name: custom"
                )
        if self.image_size is not None and self.name != "imagefolder":
            raise ValueError(f"image_size only applies to imagefolder (got name={self.name!r}); remove it")
        if self.name == "imagefolder" and not self.data_dir:
            raise ValueError("imagefolder needs data_dir (a folder with train/<class>/ and val/<class>/)")
        if self.subset_val is not None and self.val_fraction == 0:
            raise ValueError("subset_val needs val_fraction > 0")
        return self

    def _check_custom(self) -> DataConfig:
        if not self.factory:
            raise ValueError(
                "name: custom needs factory: path/to/file.py:function (returning {'train': loader, 'val': loader "
                "or None, 'test': loader})"
            )
        if split_file_ref(self.factory) is None:
            raise ValueError(f"factory must look like path/to/file.py:function, got {self.factory!r}")
        fields = type(self).model_fields
        fixed = [
            k for k in _CUSTOM_FIXED if getattr(self, k) != fields[k].get_default(call_default_factory=True)
        ]
        if fixed:
            keys = ", ".join(fixed)
            raise ValueError(
                f"{keys} {'does' if len(fixed) == 1 else 'do'} not apply to name: custom (the factory's loaders do "
                f"their own splitting, batching and augmentation): remove {'it' if len(fixed) == 1 else 'them'}, "
                "or pass what the factory needs in data.options"
            )
        reserved = sorted({"rank", "world_size"} & set(self.options))
        if reserved:
            raise ValueError(
                f"options may not set {', '.join(reserved)}: prunekit passes rank / world_size to the factory itself"
            )
        return self

    @property
    def resolved_crop_padding(self) -> int:
        return _DEFAULT_PADDING[self.name] if self.crop_padding is None else self.crop_padding

    @property
    def resolved_hflip(self) -> bool:
        return _DEFAULT_HFLIP[self.name] if self.hflip is None else self.hflip


# Fields with no meaning for name: custom (its loaders are the user's): refused unless at their defaults.
_CUSTOM_FIXED = tuple(k for k in DataConfig.model_fields if k not in ("name", "factory", "options"))


@dataclass
class DataBundle(BundleFields):
    """Loaders and metadata returned by :func:`build_data`.

    Attributes:
        train: shuffled, augmented (if enabled), sharded over ranks; ``drop_last`` when the pool has at
            least one full batch per rank.
        val: unshuffled, unaugmented, not sharded; None when ``val_fraction == 0``.
        test: unshuffled, unaugmented, not sharded.
        num_classes, in_chans, input_size: model input/output description (``input_size`` = H = W).
        name: dataset name; sizes: ``{"train": n, "val": n, "test": n}`` global split sizes.
        mean, std: per-channel normalisation applied by every loader; class_names: after ``classes``
        filtering.
        split_indices: ``int64`` indices of each split's samples in the dataset's original train split
            (``train``, ``val``) or test split (``test``), in loader order - the provenance of every split.
    """

    _splits: dict[str, Any] = field(default_factory=dict, repr=False)

    def train_epoch(self, epoch: int) -> Loader:
        """The train loader set to ``epoch`` (deterministic order + augmentation for that epoch)."""
        self.train.set_epoch(epoch)
        return self.train

    def make_loader(
        self,
        split: Literal["train", "val", "test"],
        *,
        batch_size: int | None = None,
        shuffle: bool = False,
        augment: bool = False,
        drop_last: bool = False,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        indices: np.ndarray | None = None,
        whole: bool = False,
    ) -> Loader:
        """A fresh loader over ``split`` with explicit options, e.g. an unaugmented ordered pass over the
        train pool for calibration / BN statistics: ``bundle.make_loader("train", batch_size=64)``.

        ``batch_size`` defaults to ``eval_batch_size`` (``batch_size`` if ``augment``). ``augment`` uses the
        config's crop/flip (imagefolder: random-resized-crop instead of resize + center crop). ``indices``
        restricts the loader to those samples of the split (e.g. :func:`~prunekit.data.splits.proxy_split`).
        ``whole`` shards over ``world_size`` ranks without dropping the remainder (see :meth:`eval_loader`).

        Raises:
            PrunekitError: unknown split, or ``val`` when ``val_fraction == 0``.
        """
        if split not in self._splits:
            raise PrunekitError(
                f"no {split!r} split (have: {', '.join(self._splits)}); val needs val_fraction > 0"
            )
        cfg = self.config
        bs = batch_size or (cfg.batch_size if augment else cfg.eval_batch_size)
        norm = Normalize(self.mean, self.std)
        if cfg.name == "imagefolder":
            paths, labels = self._splits[split]
            if indices is not None:
                paths, labels = [paths[int(i)] for i in indices], labels[indices]
            ds = ImageFolderDataset(
                paths, labels, self.input_size, train=augment, hflip=cfg.resolved_hflip, seed=cfg.seed
            )
            loader: Loader = ImageFolderLoader(
                ds,
                batch_size=bs,
                normalize=norm,
                shuffle=shuffle,
                drop_last=drop_last,
                workers=cfg.workers,
                pin_memory=torch.cuda.is_available() if cfg.pin_memory is None else cfg.pin_memory,
                seed=cfg.seed,
                rank=rank,
                world_size=world_size,
                whole=whole,
            )
        else:
            images, labels = self._splits[split]
            if indices is not None:
                sel = torch.as_tensor(np.asarray(indices, dtype=np.int64))
                images, labels = images[sel], labels[sel]
            aug = BatchAugment(cfg.resolved_crop_padding, cfg.resolved_hflip) if augment else None
            loader = TensorLoader(
                images,
                labels,
                batch_size=bs,
                normalize=norm,
                shuffle=shuffle,
                drop_last=drop_last,
                augment=aug,
                seed=cfg.seed,
                rank=rank,
                world_size=world_size,
                whole=whole,
            )
        loader.set_epoch(epoch)
        return loader

    def eval_loader(self, split: Literal["val", "test"]) -> Loader | None:
        """``split`` for evaluation by every rank at once: with ``world_size > 1`` each rank gets every
        ``world_size``-th sample (none dropped, none repeated), so :func:`prunekit.train.evaluate` all-reduces the
        sums into the whole split's metrics at 1 / world_size of the work per rank. Every rank must then evaluate
        the same model at the same time (a collective); a rank evaluating alone, or ranks scoring different
        candidates, use :attr:`val` / :attr:`test` (whole on every rank). None when the split is absent.
        One rank: the bundle's own loader."""
        if self.world_size == 1 or split not in self._splits:
            return getattr(self, split)
        return self.make_loader(split, rank=self.rank, world_size=self.world_size, whole=True)

    def split_labels(self, split: Literal["train", "val", "test"]) -> np.ndarray:
        """The int64 labels of ``split``'s samples, in the split's order (what ``indices`` of :meth:`make_loader`
        index)."""
        if split not in self._splits:
            raise PrunekitError(f"no {split!r} split (have: {', '.join(self._splits)})")
        return np.asarray(self._splits[split][1], dtype=np.int64)

    def summary(self) -> str:
        """One line describing the splits, e.g. for logs."""
        cfg = self.config
        aug = "off"
        if cfg.augment:
            aug = "rrc" if cfg.name == "imagefolder" else f"crop{cfg.resolved_crop_padding}"
            aug += "+flip" if cfg.resolved_hflip else ""
        return (
            f"{self.name}: train {self.sizes['train']} / val {self.sizes['val']} / "
            f"test {self.sizes['test']}, "
            f"{self.num_classes} classes, {self.in_chans}x{self.input_size}x{self.input_size}, augment {aug}"
        )


def _resolve_dist(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None or world_size is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            rank = dist.get_rank() if rank is None else rank
            world_size = dist.get_world_size() if world_size is None else world_size
    rank, world_size = rank or 0, world_size or 1
    if world_size < 1 or not 0 <= rank < world_size:
        raise PrunekitError(f"bad distributed setup: rank {rank}, world_size {world_size}")
    return rank, world_size


def _plan_splits(
    cfg: DataConfig, train_labels: np.ndarray, test_labels: np.ndarray, num_classes: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (indices into the original train/test split, relabelled int64 labels)}``."""
    train_labels = np.asarray(train_labels, dtype=np.int64)
    test_labels = np.asarray(test_labels, dtype=np.int64)
    if cfg.classes is not None:
        keep_tr, lab_tr = select_classes(train_labels, cfg.classes, num_classes, f"{cfg.name} train split")
        keep_te, lab_te = select_classes(test_labels, cfg.classes, num_classes, f"{cfg.name} test split")
    else:
        keep_tr, lab_tr = np.arange(len(train_labels), dtype=np.int64), train_labels
        keep_te, lab_te = np.arange(len(test_labels), dtype=np.int64), test_labels
    pool, val = stratified_split(lab_tr, cfg.val_fraction, cfg.seed)
    if cfg.val_fraction > 0 and len(val) == 0:
        raise PrunekitError(
            f"val_fraction={cfg.val_fraction} of {len(lab_tr)} train samples gives an empty val split: "
            "raise it"
        )
    if cfg.subset_train is not None:
        pool = pool[
            stratified_subset(lab_tr[pool], cfg.subset_train, cfg.seed, STREAM_SUBSET_TRAIN, "subset_train")
        ]
    if cfg.subset_val is not None:
        val = val[stratified_subset(lab_tr[val], cfg.subset_val, cfg.seed, STREAM_SUBSET_VAL, "subset_val")]
    test = np.arange(len(lab_te), dtype=np.int64)
    if cfg.subset_test is not None:
        test = stratified_subset(lab_te, cfg.subset_test, TEST_SUBSET_SEED, STREAM_SUBSET_TEST, "subset_test")
    plan = {"train": (keep_tr[pool], lab_tr[pool])}
    if cfg.val_fraction > 0:
        plan["val"] = (keep_tr[val], lab_tr[val])
    plan["test"] = (keep_te[test], lab_te[test])
    return plan


def _load_in_memory(
    cfg: DataConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str], Any]:
    if cfg.name in ("fashion_mnist", "mnist"):
        tx, ty, vx, vy = load_idx_dataset(cfg.name, cfg.data_dir)
        names = list(FASHION_MNIST_CLASSES) if cfg.name == "fashion_mnist" else [str(i) for i in range(10)]
        return tx, ty, vx, vy, names, DATASET_STATS[cfg.name]
    if cfg.name in ("cifar10", "cifar100"):
        tx, ty, vx, vy = load_cifar(cfg.name, cfg.data_dir)
        return tx, ty, vx, vy, cifar_class_names(cfg.name, cfg.data_dir), DATASET_STATS[cfg.name]
    if cfg.name == "digits":
        tx, ty, vx, vy = load_digits28()
        return tx, ty, vx, vy, [str(i) for i in range(10)], digits_stats()
    raise PrunekitError(f"unknown dataset {cfg.name!r}: choose one of {', '.join(DATASET_NAMES)}")


def build_data(
    cfg: DataConfig,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    max_samples: dict[str, int] | None = None,
) -> DataBundle | CustomDataBundle:
    """Load ``cfg.name``, split it and build the train / val / test loaders (``custom``: call the user's factory
    and check its loaders, see :func:`prunekit.data.custom.build_custom`).

    Order of operations: keep ``classes`` (relabelled to ``0..k-1`` in the order given) -> hold out a seeded
    stratified ``val_fraction`` of the train split -> ``subset_train`` / ``subset_val`` (stratified,
    seeded) -> ``subset_test`` (stratified, fixed seed). Loaders yield ``(float32 [B, C, H, W], int64 [B])``.

    Args:
        cfg: the data config.
        rank, world_size: shard the train loader for distributed training; default: from ``torch.distributed``
            when it is initialised, else ``0`` / ``1``. Val and test are never sharded. (``custom``: passed to the
            factory, which shards its own train loader.)
        max_samples: ``custom`` only: ``{split: n}`` caps each loader to the batches covering about ``n`` samples
            (``--smoke``; the other datasets are subset through the config's ``subset_*`` instead).

    Raises:
        PrunekitError: dataset files missing or corrupt, ``classes`` out of range, a subset larger than its
            split, an empty val split, or fewer train samples than ranks; ``custom``: the factory's file or
            function missing, the factory raising, or a bad return value / loader / batch (one line each).
    """
    rank, world_size = _resolve_dist(rank, world_size)
    if cfg.name == "custom":
        return build_custom(cfg, rank=rank, world_size=world_size, max_samples=max_samples)
    if cfg.name == "imagefolder":
        return _build_imagefolder(cfg, rank, world_size)

    tx, ty, vx, vy, names, (mean, std) = _load_in_memory(cfg)
    plan = _plan_splits(cfg, ty.numpy(), vy.numpy(), len(names))
    splits: dict[str, Any] = {}
    for split, (idx, labels) in plan.items():
        images = tx if split != "test" else vx
        splits[split] = (images[torch.from_numpy(idx)], torch.from_numpy(labels))
    if cfg.classes is not None:
        names = [names[c] for c in cfg.classes]
    return _assemble(
        cfg,
        splits,
        plan,
        names,
        mean,
        std,
        in_chans=tx.shape[1],
        input_size=tx.shape[2],
        rank=rank,
        world_size=world_size,
    )


def _build_imagefolder(cfg: DataConfig, rank: int, world_size: int) -> DataBundle:
    root = Path(cfg.data_dir).expanduser()  # type: ignore[arg-type]
    if not root.is_dir():
        raise PrunekitError(f"imagefolder data_dir not found: {root} (expected {root}/train/<class>/*.jpg)")
    classes = list_classes(root / "train")
    test_dir = root / "test" if (root / "test").is_dir() else root / "val"
    tpaths, tlabels = scan_split(root / "train", classes)
    vpaths, vlabels = scan_split(test_dir, classes)
    plan = _plan_splits(cfg, tlabels, vlabels, len(classes))
    splits: dict[str, Any] = {}
    for split, (idx, labels) in plan.items():
        paths = tpaths if split != "test" else vpaths
        splits[split] = ([paths[i] for i in idx], labels)
    names = [classes[c] for c in cfg.classes] if cfg.classes is not None else list(classes)
    mean, std = DATASET_STATS["imagefolder"]
    return _assemble(
        cfg,
        splits,
        plan,
        names,
        mean,
        std,
        in_chans=3,
        input_size=cfg.image_size or 224,
        rank=rank,
        world_size=world_size,
    )


def _assemble(
    cfg: DataConfig,
    splits: dict[str, Any],
    plan: dict[str, tuple[np.ndarray, np.ndarray]],
    names: list[str],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    *,
    in_chans: int,
    input_size: int,
    rank: int,
    world_size: int,
) -> DataBundle:
    sizes = {s: len(splits[s][1]) if s in splits else 0 for s in ("train", "val", "test")}
    per_rank = sizes["train"] // world_size
    if per_rank == 0:
        raise PrunekitError(f"{sizes['train']} train samples cannot be split over {world_size} ranks")
    bundle = DataBundle(
        name=cfg.name,
        train=None,  # type: ignore[arg-type]
        val=None,
        test=None,  # type: ignore[arg-type]
        num_classes=len(names),
        in_chans=int(in_chans),
        input_size=int(input_size),
        sizes=sizes,
        mean=tuple(mean),
        std=tuple(std),
        class_names=names,
        config=cfg,
        rank=rank,
        world_size=world_size,
        split_indices={k: v[0] for k, v in plan.items()},
        _splits=splits,
    )
    bundle.train = bundle.make_loader(
        "train",
        batch_size=cfg.batch_size,
        shuffle=True,
        augment=cfg.augment,
        drop_last=per_rank >= cfg.batch_size,  # never a 1-sample BatchNorm batch; never an empty epoch
        rank=rank,
        world_size=world_size,
    )
    if "val" in splits:
        bundle.val = bundle.make_loader("val")
    bundle.test = bundle.make_loader("test")
    return bundle
