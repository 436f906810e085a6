"""What the multi-seed evidence scripts in ``bench/`` share: config trees, per-seed copies, mean ± std.

Imported by the scripts as ``from _study import ...`` (they run as ``python bench/<script>.py``, so ``bench/`` is
on the path).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
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


def finished(cfg: Any, d: Path, smoke: bool) -> dict | None:
    """The report of a finished run of ``cfg`` in ``d`` (same config hash as ``prunekit run`` computes), else None."""
    from prunekit.pipeline import config_hash, same_config, smoke_config

    rep, state = d / "report.json", d / "state.json"
    if not (rep.is_file() and state.is_file()):
        return None
    want = config_hash(smoke_config(cfg) if smoke else cfg)
    if not same_config(d, json.loads(state.read_text()).get("config_hash"), want):
        return None  # a different config: run() refuses it with the usual message
    return json.loads(rep.read_text())


def run_cached(
    tree: dict, d: Path, label: str, *, overwrite: bool, smoke: bool, command: str
) -> tuple[dict, float, bool]:
    """Run the config ``tree`` into ``d`` (``prunekit run``) unless a finished run of the same config is there:
    ``(report, wall seconds, ran now)``."""
    from prunekit.config import parse_config
    from prunekit.pipeline import run

    cfg = parse_config(tree)
    if not overwrite:
        rep = finished(cfg, d, smoke)
        if rep is not None:
            print(f"  {label}: finished, skipped ({d})", flush=True)
            return rep, float(rep["wall_s"].get("total", 0.0)), False
    print(f"  {label}: running -> {d}", flush=True)
    t0 = time.perf_counter()
    rep = run(cfg, d, smoke=smoke, overwrite=overwrite, command=command).report
    return rep, time.perf_counter() - t0, True


def load_avg() -> float | None:
    """The 1-minute load average (latency measured on a busy machine is noisy), None where unknown."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def compare(a: dict[int, float], b: dict[int, float], name_a: str, name_b: str) -> dict:
    """``a - b`` over seeds (``{seed: value}``): mean of each, paired difference, seed spread (the larger of the two
    standard deviations over seeds) and a verdict; a difference not larger than the spread is noise."""
    seeds = sorted(set(a) & set(b))
    ma, sa = mean_std([a[s] for s in seeds])
    mb, sb = mean_std([b[s] for s in seeds])
    dm, ds = mean_std([a[s] - b[s] for s in seeds])
    spread = max(sa, sb)
    if not seeds:
        verdict = "no data"
    elif len(seeds) < 2:
        side = "equal" if dm == 0 else f"{name_a} {'higher' if dm > 0 else 'lower'}"
        verdict = f"one seed: no spread, cannot tell ({side})"
    elif abs(dm) <= spread:
        verdict = "noise (|Δ| ≤ seed spread)"
    else:
        verdict = f"{name_a if dm > 0 else name_b} higher"
    return {
        "a": name_a,
        "b": name_b,
        "n": len(seeds),
        "a_mean": ma,
        "b_mean": mb,
        "diff_mean": dm,
        "diff_std": ds,
        "spread": spread,
        "noise": len(seeds) >= 2 and abs(dm) <= spread,
        "verdict": verdict,
    }
