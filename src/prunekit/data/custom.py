"""``data: {name: custom, factory: path/to/file.py:make_loaders, options: {...}}``: the user's own loaders.

The factory is called as ``factory(**options)``, plus ``rank=`` / ``world_size=`` where its signature takes them
(named, or ``**kwargs``), and returns a dict (or an object with these attributes)::

    {"train": loader, "val": loader or None, "test": loader,   # required: train, test
     "num_classes": int, "class_names": [str, ...],            # optional
     "loss_fn": loss_fn, "eval_fn": eval_fn}                   # optional: the user's objective

A loader is any iterable with ``len()`` (batches per epoch) yielding ``(x, y)`` batches: ``x`` float
``[N, C, H, W]`` with ``H == W``, ``y`` int64 class indices ``[N]``; a ``torch.utils.data.DataLoader`` is one.
prunekit applies no normalisation, augmentation or splitting of its own. ``in_chans`` / ``input_size`` come from
the first train batch; ``num_classes`` from the return value (``num_classes``, else ``len(class_names)``), else
from the largest label of the val and test loaders (logged).

The objective: ``loss_fn(model, batch) -> scalar tensor`` replaces cross-entropy in every training phase (baseline,
method, finetune; the batch as the loader yields it, moved to the device), ``eval_fn(model, loader) -> float``
(higher is better; the model in eval mode, no grad) replaces top-1 wherever the run evaluates (best-epoch
selection, the methods' validation, the report's ``top1`` fields, which then hold this score: ``report.json``'s
``score`` says ``eval_fn``). With both, ``y`` may be anything (a mask, a regression target): only ``x`` is checked,
and ``num_classes`` (the model's output size) must be returned.

Under torchrun the factory must shard the train loader itself (it gets ``rank`` / ``world_size``; e.g. a ``DistributedSampler``); val and test are used whole on every
rank. A loader's ``set_epoch(e)``, where it has one, is called at each epoch start (e.g. to forward to a
``DistributedSampler``).
"""

from __future__ import annotations

import inspect
import itertools
import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from prunekit.data.bundle import BundleFields
from prunekit.errors import PrunekitError
from prunekit.userfile import load_file_callable, one_line, split_file_ref

if TYPE_CHECKING:
    from prunekit.data import DataConfig

__all__ = ["CUSTOM_KEYS", "CustomDataBundle", "UserLoader", "build_custom"]

log = logging.getLogger(__name__)

CUSTOM_KEYS = ("train", "val", "test", "num_classes", "class_names", "loss_fn", "eval_fn")
"""The keys (or attributes) of a data factory's return value."""

_RETURN_HINT = "return {'train': loader, 'val': loader or None, 'test': loader}"


class UserLoader:
    """A view of a user's loader: at most ``max_batches`` batches per pass (``--smoke``), and with ``unsharded``
    a ``world_size`` of 1 (a whole split on every rank: :func:`prunekit.train.evaluate` then all-reduces nothing).
    Every other attribute (``set_epoch``, ``dataset``, ...) is the loader's own."""

    def __init__(self, loader: Any, *, max_batches: int | None = None, unsharded: bool = False):
        self.loader = loader
        self.max_batches = max_batches
        if unsharded:
            self.world_size = 1

    def __len__(self) -> int:
        n = len(self.loader)
        return n if self.max_batches is None else min(n, self.max_batches)

    def __iter__(self) -> Iterator[Any]:
        it = iter(self.loader)
        return it if self.max_batches is None else itertools.islice(it, self.max_batches)

    def __getattr__(self, name: str) -> Any:
        if name == "loader":  # not set yet (copy / unpickle): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __repr__(self) -> str:
        return f"UserLoader({self.loader!r}, max_batches={self.max_batches})"


@dataclass
class CustomDataBundle(BundleFields):
    """The :class:`~prunekit.data.DataBundle` of ``name: custom``: the same attributes, the user's loaders.

    It has no ``make_loader`` (prunekit cannot rebuild the user's loaders with other options): jcw then uses the
    train / val loaders as its proxy task instead of a proxy split; metapruning recalibrates on ``train``. ``mean`` / ``std`` are
    0 / 1 (prunekit normalises nothing), ``split_indices`` is empty (no provenance), ``sizes`` are samples per
    epoch (``train``: over all ranks): a DataLoader's ``len(sampler)`` (or ``len(dataset)``), else batches x the
    first batch's size; capped by ``--smoke``.
    """

    def train_epoch(self, epoch: int) -> Any:
        """The train loader after its ``set_epoch(epoch)`` (where it has one)."""
        set_epoch = getattr(self.train, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
        return self.train

    def eval_loader(self, split: str) -> Any | None:
        """The user's ``split`` loader (``val`` / ``test``), not sharded: under torchrun every rank evaluates the
        whole split (marked ``world_size`` 1, so nothing is all-reduced). None when the factory gave no val."""
        if split not in ("val", "test"):
            raise PrunekitError(f"no {split!r} evaluation split (have: val, test)")
        return getattr(self, split)

    def summary(self) -> str:
        """One line describing the splits, e.g. for logs."""
        return (
            f"custom ({self.config.factory}): train {self.sizes['train']} / val {self.sizes['val']} / "
            f"test {self.sizes['test']}, {self.num_classes} classes, "
            f"{self.in_chans}x{self.input_size}x{self.input_size}"
        )


def _accepted(factory: Any, names: tuple[str, ...]) -> tuple[set[str], inspect.Signature | None]:
    """Which of ``names`` the factory's signature takes (by name, or through ``**kwargs``), and the signature."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins and some C callables have none: pass nothing extra
        return set(), None
    params = sig.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return set(names), sig
    ok = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {n for n in names if n in ok}, sig


def _call_factory(cfg: DataConfig, rank: int, world_size: int) -> Any:
    ref = cfg.factory
    parts = split_file_ref(ref or "")
    if parts is None:  # DataConfig validates this; a config built without validation lands here
        raise PrunekitError(f"data.factory must look like path/to/file.py:function, got {ref!r}")
    factory = load_file_callable(
        parts[0], parts[1], what="data factory file", module_prefix="prunekit_user_data_"
    )
    kwargs = dict(cfg.options)
    takes, sig = _accepted(factory, ("rank", "world_size"))
    if world_size > 1 and takes != {"rank", "world_size"}:
        raise PrunekitError(
            f"data factory {ref} runs under torchrun ({world_size} ranks) but does not take rank and world_size: "
            "add rank=0, world_size=1 parameters and shard its train loader with them (e.g. "
            "DistributedSampler(dataset, num_replicas=world_size, rank=rank))"
        )
    kwargs.update({k: v for k, v in (("rank", rank), ("world_size", world_size)) if k in takes})
    if sig is not None:
        try:
            sig.bind(**kwargs)
        except TypeError as exc:
            given = ", ".join(sorted(kwargs)) or "none"
            raise PrunekitError(
                f"data factory {ref} does not take the arguments given ({exc}; given: {given}): "
                "fix data.options or the factory's parameters"
            ) from None
    try:
        return factory(**kwargs)
    except PrunekitError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's code may raise anything
        raise PrunekitError(
            f"data factory {ref} failed with {one_line(exc)}: fix the factory or data.options"
        ) from exc


def _parts(out: Any, ref: str) -> dict[str, Any]:
    """The return value's ``CUSTOM_KEYS`` (absent ones None)."""
    if isinstance(out, Mapping):
        unknown = [str(k) for k in out if k not in CUSTOM_KEYS]
        if unknown:
            raise PrunekitError(
                f"data factory {ref} returned unknown key(s) {', '.join(map(repr, unknown))}: "
                f"the keys are {', '.join(CUSTOM_KEYS)}"
            )
        parts = {k: out.get(k) for k in CUSTOM_KEYS}
    elif isinstance(out, (tuple, list, str, bytes)) or out is None or not hasattr(out, "train"):
        raise PrunekitError(
            f"data factory {ref} returned {type(out).__name__}, not a dict of loaders: {_RETURN_HINT}"
        )
    else:
        parts = {k: getattr(out, k, None) for k in CUSTOM_KEYS}
    for split in ("train", "test"):
        if parts[split] is None:
            raise PrunekitError(f"data factory {ref} returned no {split!r} loader: {_RETURN_HINT}")
    for key, sig in (
        ("loss_fn", "loss_fn(model, batch) -> scalar tensor"),
        ("eval_fn", "eval_fn(model, loader) -> float"),
    ):
        if parts[key] is not None and not callable(parts[key]):
            raise PrunekitError(
                f"data factory {ref} returned {key} of type {type(parts[key]).__name__}: give a function {sig}"
            )
    return parts


def _loader_len(loader: Any, split: str, ref: str) -> int:
    if isinstance(loader, torch.Tensor) or not hasattr(loader, "__iter__"):
        raise PrunekitError(
            f"data factory {ref}: {split!r} is a {type(loader).__name__}, not a loader: give an iterable of "
            "(x, y) batches with len(), e.g. a torch.utils.data.DataLoader"
        )
    try:
        n = len(loader)
    except TypeError:
        raise PrunekitError(
            f"data factory {ref}: the {split!r} loader ({type(loader).__name__}) has no len(): give a sized loader "
            "(batches per epoch), e.g. a torch.utils.data.DataLoader over a map-style Dataset"
        ) from None
    if n == 0:
        raise PrunekitError(
            f"data factory {ref}: the {split!r} loader is empty (len() is 0): check its dataset and batch size"
        )
    return int(n)


def _first_batch(loader: Any, split: str, ref: str, labels: bool) -> tuple[torch.Tensor, Any]:
    try:
        batch = next(iter(loader))
    except StopIteration:
        raise PrunekitError(
            f"data factory {ref}: the {split!r} loader yielded no batches: check its dataset and batch size"
        ) from None
    except Exception as exc:  # noqa: BLE001 - the user's dataset may raise anything
        raise PrunekitError(
            f"data factory {ref}: reading the first {split!r} batch failed with {one_line(exc)}: fix the loader"
        ) from exc
    return _check_batch(batch, split, ref, labels)


def _check_batch(batch: Any, split: str, ref: str, labels: bool = True) -> tuple[torch.Tensor, Any]:
    """``(x, y)`` checked: ``x`` float ``[N, C, H, W]`` square; with ``labels`` ``y`` int64 class indices ``[N]``
    (without: the user's loss_fn / eval_fn read ``y``, which may be anything)."""
    where = f"data factory {ref}: {split!r} batches"
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        got = f"a {len(batch)}-tuple" if isinstance(batch, (tuple, list)) else type(batch).__name__
        raise PrunekitError(
            f"{where} must be (x, y) pairs, got {got}: make the loader yield (images, labels)"
        )
    x, y = batch
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4:
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        hint = (
            " (a Dataset instead of a DataLoader?)"
            if isinstance(x, torch.Tensor) and x.dim() == 3
            else " (convert images with .float())"
            if isinstance(x, torch.Tensor) and x.dim() == 4
            else ""
        )
        raise PrunekitError(f"{where} must have x float [N, C, H, W], got {got}{hint}")
    if x.shape[2] != x.shape[3]:
        raise PrunekitError(
            f"{where} are {x.shape[2]}x{x.shape[3]} images: prunekit needs square ones (H == W); resize or crop "
            "them in the loader"
        )
    if not labels:
        return x, y
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.dim() != 1 or len(y) != len(x):
        got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
        raise PrunekitError(
            f"{where} must have y int64 class indices [N={len(x)}], got {got}: e.g. torch.as_tensor(labels, "
            "dtype=torch.int64)"
        )
    if len(y) and int(y.min()) < 0:
        raise PrunekitError(
            f"{where} have a negative label ({int(y.min())}): labels are class indices 0..K-1"
        )
    return x, y


def _max_label(loader: Any, split: str, ref: str) -> int:
    top = -1
    try:
        for batch in loader:
            _, y = _check_batch(batch, split, ref)
            if len(y):
                top = max(top, int(y.max()))
    except PrunekitError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's dataset may raise anything
        raise PrunekitError(
            f"data factory {ref}: reading the {split!r} loader failed with {one_line(exc)}: fix the loader"
        ) from exc
    return top


def _num_classes(parts: dict[str, Any], firsts: dict[str, Any], ref: str, labels: bool) -> tuple[int, bool]:
    """``(num_classes, inferred)``."""
    k, names = parts["num_classes"], parts["class_names"]
    if k is None and names is None and not labels:
        raise PrunekitError(
            f"data factory {ref} returns loss_fn and eval_fn, so its labels are not class indices to count: "
            "return num_classes (the model's output size) too"
        )
    if names is not None and (
        not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names)
    ):
        raise PrunekitError(
            f"data factory {ref} returned class_names of type {type(names).__name__}: give a list of strings"
        )
    if k is not None:
        least = 2 if labels else 1  # with the user's objective one output (a regression) is fine
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < least:
            raise PrunekitError(f"data factory {ref} returned num_classes={k!r}: give an integer >= {least}")
        return int(k), False
    if names is not None:
        return len(names), False
    top = max(_max_label(parts[s], s, ref) for s in ("val", "test") if parts[s] is not None)
    top = max(top, *(int(y.max()) for y in firsts.values()))
    if top < 1:
        raise PrunekitError(
            f"data factory {ref}: every label is {top}, so the number of classes cannot be inferred: return "
            "num_classes"
        )
    return top + 1, True


def _num_samples(loader: Any, batch_rows: int, shards: int) -> int:
    """Samples per epoch over all ``shards``: a DataLoader's ``len(sampler)`` (this rank's samples, also under a
    ``DistributedSampler``) or ``len(dataset)``, else batches x the first batch's size; times ``shards``."""
    for attr in ("sampler", "dataset"):
        try:
            return int(len(getattr(loader, attr, None))) * shards  # type: ignore[arg-type]
        except TypeError:
            continue
    return len(loader) * batch_rows * shards


def build_custom(
    cfg: DataConfig, *, rank: int, world_size: int, max_samples: Mapping[str, int] | None = None
) -> CustomDataBundle:
    """Call ``cfg.factory`` and check what it returns (see the module docstring).

    Args:
        cfg: a ``name: custom`` data config.
        rank, world_size: this process's place under torchrun (passed to the factory where it takes them).
        max_samples: ``{split: n}``: cap each split's loader to the batches that cover about ``n`` samples (over all
            ranks for ``train``); ``--smoke`` runs pass :data:`prunekit.train.SMOKE_DATA`'s caps.

    Raises:
        PrunekitError: one line for the file or the factory missing, the factory raising, a wrong return value,
            a missing train / test loader, an empty or unsized loader, a bad batch (shape, dtype, non-square
            images, labels out of range), a loss_fn / eval_fn that is not callable, no num_classes beside both, or a factory without ``rank`` / ``world_size`` under torchrun.
    """
    ref = str(cfg.factory)
    parts = _parts(_call_factory(cfg, rank, world_size), ref)
    splits = [s for s in ("train", "val", "test") if parts[s] is not None]
    lens = {s: _loader_len(parts[s], s, ref) for s in splits}
    labels = parts["loss_fn"] is None or parts["eval_fn"] is None  # y is class indices unless both are given
    firsts = {s: _first_batch(parts[s], s, ref, labels) for s in splits}
    x0 = firsts["train"][0]
    in_chans, input_size = int(x0.shape[1]), int(x0.shape[2])
    for s in splits[1:]:
        if tuple(firsts[s][0].shape[1:]) != tuple(x0.shape[1:]):
            c, h, w = firsts[s][0].shape[1:]
            raise PrunekitError(
                f"data factory {ref}: {s!r} images are {c}x{h}x{w} but train images are "
                f"{in_chans}x{input_size}x{input_size}: give every split the same image size"
            )
    num_classes, inferred = _num_classes(parts, {s: firsts[s][1] for s in splits}, ref, labels)
    for s in splits if labels else ():
        top = int(firsts[s][1].max()) if len(firsts[s][1]) else -1
        if top >= num_classes:
            raise PrunekitError(
                f"data factory {ref}: a {s!r} label is {top} but num_classes is {num_classes}: labels must be "
                "0..num_classes-1 (return the right num_classes)"
            )
    names = parts["class_names"]
    if names is None:
        names = [str(i) for i in range(num_classes)]
    elif len(names) != num_classes:
        raise PrunekitError(
            f"data factory {ref} returned class_names of length {len(names)} for {num_classes} classes: give one "
            "name per class"
        )
    loaders: dict[str, Any] = {}
    sizes = {"train": 0, "val": 0, "test": 0}
    for s in splits:
        rows, shards = int(firsts[s][0].shape[0]), world_size if s == "train" else 1
        n = _num_samples(parts[s], rows, shards)
        cap = None
        if max_samples is not None and s in max_samples:
            cap = max(1, math.ceil(max_samples[s] / (rows * shards)))
            if cap >= lens[s]:
                cap = None
            else:
                n = min(n, cap * rows * shards)
        unsharded = s != "train" and world_size > 1
        loaders[s] = (
            UserLoader(parts[s], max_batches=cap, unsharded=unsharded) if cap or unsharded else parts[s]
        )
        sizes[s] = n
    if inferred:
        log.warning(
            "custom data: num_classes=%d inferred from the largest label in the %s loader(s) (+1); return "
            "num_classes from the data factory to set it",
            num_classes,
            "/".join(s for s in ("val", "test") if s in loaders),
        )
    return CustomDataBundle(
        name="custom",
        train=loaders["train"],
        val=loaders.get("val"),
        test=loaders["test"],
        num_classes=num_classes,
        in_chans=in_chans,
        input_size=input_size,
        sizes=sizes,
        mean=(0.0,) * in_chans,
        std=(1.0,) * in_chans,
        class_names=list(names),
        config=cfg,
        rank=rank,
        world_size=world_size,
        loss_fn=parts["loss_fn"],
        eval_fn=parts["eval_fn"],
    )
