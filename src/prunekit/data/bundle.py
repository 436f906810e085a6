"""The fields every data bundle has (:class:`prunekit.data.DataBundle` of the built-in datasets,
:class:`prunekit.data.custom.CustomDataBundle` of the user's loaders): what the pipeline and the methods read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from prunekit.data import DataConfig

__all__ = ["BundleFields"]


@dataclass
class BundleFields:
    """Loaders (``train`` sharded over ranks, ``val`` / ``test`` whole; ``val`` None without a validation split),
    the model's input / output description (``input_size`` = H = W), split sizes ``{"train", "val", "test"}``, the
    per-channel normalisation the loaders apply, class names, the data config, this process's rank / world size and
    each split's provenance (``split_indices``, empty when unknown), and the user's objective where the data
    factory gave one (``loss_fn(model, batch) -> scalar loss`` replacing cross-entropy, ``eval_fn(model, loader) ->
    score``, higher is better, replacing top-1; None for the built-in datasets)."""

    name: str
    train: Any
    val: Any | None
    test: Any
    num_classes: int
    in_chans: int
    input_size: int
    sizes: dict[str, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str]
    config: DataConfig
    rank: int = 0
    world_size: int = 1
    split_indices: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    loss_fn: Callable[[Any, Any], Any] | None = field(default=None, repr=False)
    eval_fn: Callable[[Any, Any], float] | None = field(default=None, repr=False)
