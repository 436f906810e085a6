"""Seeded, stratified index selection on label arrays (val split, subsets, class filtering).

All functions take a 1-D integer label array and return sorted ``int64`` index arrays, so they work the
same for in-memory tensors and for ImageFolder sample lists. Per-class counts are apportioned with the
largest-remainder method: each class gets ``floor`` or ``ceil`` of its exact share, and the total is exactly
the requested size.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from prunekit.errors import PrunekitError

# Separate random streams, so e.g. changing subset_train never changes the val split.
STREAM_VAL = 1
STREAM_SUBSET_TRAIN = 2
STREAM_SUBSET_VAL = 3
STREAM_SUBSET_TEST = 4
STREAM_FIXED_TEST = 5
STREAM_PROXY = 6

log = logging.getLogger(__name__)


def _as_numpy(labels: np.ndarray | torch.Tensor | Sequence[int]) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {arr.shape}")
    return arr.astype(np.int64, copy=False)


def _apportion(counts: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` over classes in proportion to ``counts`` (largest remainder; ties -> lower class)."""
    n = int(counts.sum())
    if total > n:
        raise ValueError(f"cannot take {total} of {n} samples")
    exact = counts * (total / n) if n else np.zeros_like(counts, dtype=np.float64)
    base = np.floor(exact).astype(np.int64)
    base = np.minimum(base, counts)
    rest = total - int(base.sum())
    if rest > 0:
        rem = exact - base
        rem[base >= counts] = -1.0  # a full class cannot take more
        order = np.lexsort((np.arange(len(counts)), -rem))  # largest remainder first, then class id
        base[order[:rest]] += 1
    return base


def _stratified_pick(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a stratified random sample of size ``k``."""
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    take = _apportion(counts, k)
    perm = rng.permutation(len(labels))
    grouped = perm[np.argsort(inverse[perm], kind="stable")]  # random order within each class
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    picked = [grouped[s : s + t] for s, t in zip(starts, take, strict=True)]
    out = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
    return np.sort(out).astype(np.int64)


def stratified_split(
    labels: np.ndarray | torch.Tensor | Sequence[int], fraction: float, seed: int, stream: int = STREAM_VAL
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(len(labels))`` into ``(keep, held_out)`` with ``held_out`` a stratified ``fraction``.

    Args:
        labels: int labels, shape ``[N]``.
        fraction: held-out share in ``[0, 1)``; the held-out size is ``round(fraction * N)``.
        seed: RNG seed; the same ``(labels, fraction, seed, stream)`` always gives the same split.
        stream: independent random stream id (see the ``STREAM_*`` constants).

    Returns:
        ``(keep, held_out)``: disjoint, sorted ``int64`` index arrays covering ``range(N)``. Every class ``c``
        contributes ``floor`` or ``ceil`` of ``fraction * count(c)`` samples to ``held_out``.

    Raises:
        ValueError: ``fraction`` outside ``[0, 1)`` or labels not 1-D.
    """
    lab = _as_numpy(labels)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    n = len(lab)
    k = int(round(fraction * n))
    rng = np.random.default_rng([seed, stream])
    held = _stratified_pick(lab, k, rng)
    mask = np.ones(n, dtype=bool)
    mask[held] = False
    return np.flatnonzero(mask).astype(np.int64), held


def stratified_subset(
    labels: np.ndarray | torch.Tensor | Sequence[int], size: int, seed: int, stream: int, what: str = "subset"
) -> np.ndarray:
    """Sorted ``int64`` indices of a seeded stratified subset of ``min(size, len(labels))`` samples.

    ``size`` is a cap: asking for more samples than exist keeps them all (logged), so ``--smoke`` caps work on small
    datasets too. ``what`` names the option in the log line.
    """
    lab = _as_numpy(labels)
    if size > len(lab):
        log.info("%s=%d exceeds the %d samples available: using all of them", what, size, len(lab))
        return np.arange(len(lab), dtype=np.int64)
    if size == len(lab):
        return np.arange(len(lab), dtype=np.int64)
    return _stratified_pick(lab, size, np.random.default_rng([seed, stream]))


def select_classes(
    labels: np.ndarray | torch.Tensor | Sequence[int], classes: Sequence[int], num_classes: int, dataset: str
) -> tuple[np.ndarray, np.ndarray]:
    """Keep samples whose label is in ``classes`` and relabel them ``classes[i] -> i``.

    Returns:
        ``(indices, new_labels)``: sorted ``int64`` indices into ``labels`` and the relabelled ``int64``
        labels.

    Raises:
        PrunekitError: a class id is outside ``0..num_classes-1`` or has no samples.
    """
    lab = _as_numpy(labels)
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise PrunekitError(
            f"classes {bad} out of range for {dataset} ({num_classes} classes: 0..{num_classes - 1})"
        )
    table = np.full(num_classes, -1, dtype=np.int64)
    table[np.asarray(classes, dtype=np.int64)] = np.arange(len(classes))
    new = table[lab]
    idx = np.flatnonzero(new >= 0).astype(np.int64)
    present = np.unique(new[idx])
    if len(present) != len(classes):
        missing = [c for i, c in enumerate(classes) if i not in set(present.tolist())]
        raise PrunekitError(f"classes {missing} have no samples in {dataset}: remove them from `classes`")
    return idx, new[idx]


def proxy_split(
    labels: np.ndarray | torch.Tensor | Sequence[int],
    *,
    classes: int | None,
    train_per_class: int,
    val_per_class: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded per-class proxy split of a training set: ``classes`` random classes (None = all), and in each
    ``train_per_class`` training and ``val_per_class`` validation samples, disjoint (JCW's ImageNet proxy is
    100 classes x 500 / 50 images, drawn without a seed in the original; here the same ``seed`` gives the same split).

    Returns:
        ``(train, val)``: sorted ``int64`` indices into ``labels`` (labels are not changed).

    Raises:
        PrunekitError: more classes asked than exist, a count below 1, or a chosen class with fewer than
            ``train_per_class + val_per_class`` samples (the message gives the smallest class size).
    """
    lab = _as_numpy(labels)
    present = np.unique(lab)
    n_cls = len(present) if classes is None else int(classes)
    if not 1 <= n_cls <= len(present) or train_per_class < 1 or val_per_class < 1:
        raise PrunekitError(
            f"proxy split: need 1 <= classes <= {len(present)} and per-class counts >= 1, got classes={classes}, "
            f"train_per_class={train_per_class}, val_per_class={val_per_class}"
        )
    rng = np.random.default_rng([seed, STREAM_PROXY])
    chosen = np.sort(rng.choice(present, size=n_cls, replace=False))
    need = train_per_class + val_per_class
    train, val = [], []
    for c in chosen:
        idx = np.flatnonzero(lab == c)
        if len(idx) < need:
            smallest = min(int((lab == k).sum()) for k in chosen)
            raise PrunekitError(
                f"proxy split: class {int(c)} has {len(idx)} samples, fewer than train_per_class + val_per_class "
                f"= {need} (smallest chosen class: {smallest}); lower the per-class counts"
            )
        pick = rng.permutation(idx)[:need]
        train.append(pick[:train_per_class])
        val.append(pick[train_per_class:])
    return np.sort(np.concatenate(train)).astype(np.int64), np.sort(np.concatenate(val)).astype(np.int64)
