"""Throughput of the analytic cost model (plans costed per second), single core.

Usage: python bench/bench_cost.py [--models resnet50 mobilenet_v2 ...] [--out bench/results/cost.json]

Measures two paths for each model at 224x224: ``CostModel.cost(plan)`` (one full Plan object at a time, what a
method reporting costs uses) and ``CostModel.macs(W)`` on a population matrix ``W [N, G]`` (what a search uses).
Target (issue #2): >= 2,000 plans/s for ResNet-50 on one core.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from prunekit.cost import CostModel
from prunekit.io import write_json
from prunekit.models import create_model
from prunekit.space import ChannelSpace, plan_from_widths


def bench(spec: str, n_plans: int, seed: int = 0) -> dict:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    space = ChannelSpace.build(create_model(spec), (1, 3, 224, 224))
    build_s = time.perf_counter() - t0
    cm = CostModel(space)
    rng = np.random.default_rng(seed)
    widths = np.stack([rng.integers(1, space.channels + 1) for _ in range(n_plans)])
    plans = [plan_from_widths(space, w) for w in widths]
    t0 = time.perf_counter()
    for p in plans:
        cm.cost(p)
    single = n_plans / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    reps = 20
    for _ in range(reps):
        cm.macs(widths)
        cm.params(widths)
    batched = reps * n_plans / (time.perf_counter() - t0)
    return {
        "model": spec,
        "groups": len(space),
        "layers": len(space.layers),
        "space_build_s": round(build_s, 3),
        "plans_per_s_single": round(single),
        "plans_per_s_batched": round(batched),
        "n_plans": n_plans,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet50", "resnet18", "mobilenet_v2", "mobilenet_v1"])
    ap.add_argument("--plans", type=int, default=2000)
    ap.add_argument("--out", default="bench/results/cost.json")
    args = ap.parse_args()
    rows = [bench(m, args.plans) for m in args.models]
    for r in rows:
        print(
            f"{r['model']:>14}: {r['groups']:3d} groups, {r['plans_per_s_single']:>8,} plans/s (Plan objects), "
            f"{r['plans_per_s_batched']:>10,} plans/s (batched widths), space built in {r['space_build_s']} s"
        )
    write_json(
        args.out,
        {
            "machine": platform.processor() or platform.machine(),
            "threads": 1,
            "command": "python bench/bench_cost.py",
            "results": rows,
        },
    )


if __name__ == "__main__":
    main()
