"""The arena's external peers (issue #14): torch-pruning 1.6 pruners through prunekit's finetune loop.

Imported by ``bench/arena.py``. The pruned net is torch-pruning's own (its DependencyGraph removes channels from the
module in place); the pretraining, the finetune loop and recipe, the compute ledger, the evaluation and the latency
measurement are prunekit's, the same as for the ``magnitude`` entrant. The global pruning ratio is bisected until
the pruned net's MACs (``torch.utils.flop_counter``) meet the target; the logits layer is never pruned.
"""

from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn


def _pruner(kind: str, model: nn.Module, example: torch.Tensor, ratio: float, batch: Any):
    import torch_pruning as tp

    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    if kind == "tp-magnitude":
        imp = tp.importance.MagnitudeImportance(p=1)
        return tp.pruner.MagnitudePruner(
            model, example, importance=imp, pruning_ratio=ratio, ignored_layers=last, global_pruning=True
        )
    imp = tp.importance.TaylorImportance()
    pruner = tp.pruner.MetaPruner(
        model, example, importance=imp, pruning_ratio=ratio, ignored_layers=last, global_pruning=True
    )
    x, y = batch
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()  # Taylor importance reads the gradients
    return pruner


def prune_to_macs(
    kind: str, model: nn.Module, shape: tuple, target_macs: float, batch: Any, steps: int = 14
) -> tuple[nn.Module, float]:
    """The largest torch-pruning net (global ratio bisected, ``steps`` steps) whose MACs are <= ``target_macs``."""
    from prunekit.cost.macs import measure_macs

    example = torch.randn(*shape)
    lo, hi, best = 0.0, 0.95, None
    for _ in range(steps):
        ratio = (lo + hi) / 2
        m = copy.deepcopy(model)
        m.train()
        _pruner(kind, m, example, ratio, batch).step()
        if measure_macs(m, shape) <= target_macs:
            best, hi = (m, ratio), ratio
        else:
            lo = ratio
    if best is None:
        raise SystemExit(f"{kind}: no pruning ratio up to 0.95 meets {target_macs:.0f} MACs")
    best[0].zero_grad(set_to_none=True)
    return best


def run_tp(
    kind: str, cfg, pretrain_dir: Path, out: Path, target_macs: float, finetune: dict, *, steps: int = 14
) -> dict:
    """Prune the shared pretraining's model with ``kind``, finetune it, evaluate and time it: the report-like dict
    ``{"pruned": {...}, "baseline": {...}, "compute": {...}, "wall_s": {...}}``."""
    from prunekit.cost.latency import interleaved_ort_latency
    from prunekit.cost.macs import count_params, measure_macs
    from prunekit.data import build_data
    from prunekit.io import write_json
    from prunekit.runs import load_baseline
    from prunekit.train import evaluate, fit
    from prunekit.train.compute import Ledger, use_ledger

    t0 = time.perf_counter()
    data = build_data(cfg.data)
    model, _ = load_baseline(pretrain_dir / "baseline.pt")
    shape = (1, data.in_chans, data.input_size, data.input_size)
    batch = next(iter(data.train))
    pruned, ratio = prune_to_macs(kind, model, shape, target_macs, batch, steps)
    out.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(out / "compute.json")
    with use_ledger(ledger), ledger.in_phase("finetune"):
        res = fit(
            pruned,
            data.train,
            finetune,
            val_loader=data.val,
            ckpt_path=out / "finetune.ckpt",
            resume=(out / "finetune.ckpt").is_file(),
            desc=f"{kind} finetune",
            select="best",
        )
    if res.best_state is not None:
        pruned.load_state_dict(res.best_state)
    top1 = evaluate(pruned, data.test)["top1"]
    base_top1 = evaluate(model, data.test)["top1"]
    batch_n = cfg.export.latency_batch
    lat: list[dict] = [{}, {}]
    if cfg.export.latency:
        times = interleaved_ort_latency(
            [(model, shape), (pruned, shape)],
            batch_sizes=(1, batch_n),
            threads=cfg.export.latency_threads,
            rounds=2,
        )
        lat = [
            {"latency_ms": statistics.median(t[1]), "latency_ms_batch": statistics.median(t[batch_n])}
            for t in times
        ]
    base_macs = measure_macs(model, shape)
    report = {
        "baseline": {"top1": base_top1, "macs": base_macs, "params": count_params(model), **lat[0]},
        "pruned": {
            "top1": top1,
            "macs": measure_macs(pruned, shape),
            "params": count_params(pruned),
            **lat[1],
        },
        "compute": ledger.summary(base_macs, data.sizes["train"]),
        "wall_s": {"total": time.perf_counter() - t0},
        "extra": {"pruning_ratio": ratio},
    }
    write_json(out / "report.json", report)
    return report
