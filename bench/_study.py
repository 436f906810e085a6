"""What the multi-seed evidence scripts in ``bench/`` share: config trees, per-seed copies, mean ± std.

Imported by the scripts as ``from _study import ...`` (they run as ``python bench/<script>.py``, so ``bench/`` is
on the path).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np


def config_tree(cfg: Any) -> dict:
    """A run config (pydantic) as a plain JSON tree."""
    return json.loads(cfg.model_dump_json())


def seeded(tree: dict, seed: int) -> dict:
    """A copy of a config tree with ``seed`` everywhere a run draws from it: the run, the data split, the finetune
    and baseline recipes, and a method's stage recipe (multistage)."""
    tree = json.loads(json.dumps(tree))
    tree["seed"] = seed
    tree["data"]["seed"] = seed
    if tree.get("finetune"):
        tree["finetune"]["seed"] = seed
    if tree["baseline"].get("train"):
        tree["baseline"]["train"]["seed"] = seed
    if tree["method"].get("stage"):
        tree["method"]["stage"]["seed"] = seed
    return tree


def mean_std(xs: list[float | None]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for one value, NaN for none) of the values that are not None."""
    a = np.asarray([x for x in xs if x is not None], dtype=np.float64)
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0
