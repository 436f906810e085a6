"""Compare `uniform`, `magnitude` and torch-pruning's MagnitudePruner at the same MACs target and finetune budget.

Usage:
    python bench/compare_methods.py [--config configs/quickstart.yaml] [--ratio 0.5] [--out bench/results/compare]
                                    [--smoke]

One baseline is trained once (the config's recipe) and shared. Each method prunes it to ``ratio`` x baseline MACs and
is finetuned with the config's finetune recipe; torch-pruning's pruner gets the same budget (its pruning ratio is
bisected until its MACs meet the target) and the same finetune loop. Reported per method: test top-1, MACs, params,
ONNX Runtime latency (1 thread, batch 1 and 64, median) and latency speedup / MACs reduction.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import torch
import torch_pruning as tp

from prunekit.config import load_config, parse_config
from prunekit.cost.latency import measure_ort_latency
from prunekit.cost.macs import count_params, measure_macs
from prunekit.data import build_data
from prunekit.io import load_state, write_json, write_text
from prunekit.models import create_model
from prunekit.pipeline import resolved_spec, run, smoke_config, train_only
from prunekit.train import evaluate, fit


def latency(model, shape, batch):
    stats = measure_ort_latency(model, shape, batch_sizes=(1, batch), threads=1)
    return stats[1].median_ms, stats[batch].median_ms


def tp_magnitude(model, shape, target_macs):
    """torch-pruning MagnitudePruner (L1, per-layer ratio), ratio bisected to the largest model <= target MACs."""
    lo, hi, best = 0.0, 0.95, None
    for _ in range(14):
        r = (lo + hi) / 2
        m = copy.deepcopy(model)
        fc = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)]
        pruner = tp.pruner.MagnitudePruner(
            m,
            torch.randn(shape),
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=r,
            ignored_layers=fc,
        )
        pruner.step()
        macs = measure_macs(m, shape)
        if macs <= target_macs:
            best, hi = (m, r), r
        else:
            lo = r
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--out", default="bench/results/compare")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument(
        "--baseline", help="reuse a trained baseline.pt of the same config (e.g. runs/quickstart/baseline.pt)"
    )
    args = ap.parse_args()
    out = Path(args.out)
    cfg = load_config(args.config, [f"target.macs_ratio={args.ratio}"])
    if args.smoke:
        cfg = smoke_config(cfg)
    base_dir = out / "baseline"
    base_ckpt = Path(args.baseline) if args.baseline else base_dir / "baseline.pt"
    if not args.baseline:
        train_only(cfg, base_dir)
    variants = {
        "uniform (round auto)": {"name": "uniform", "importance": "l1", "round_to": "auto"},
        "magnitude global (round 1)": {"name": "magnitude", "importance": "l1", "ranking": "global"},
        "magnitude global (round auto)": {
            "name": "magnitude",
            "importance": "l1",
            "ranking": "global",
            "round_to": "auto",
        },
        "magnitude per-layer (round auto)": {
            "name": "magnitude",
            "importance": "l1",
            "ranking": "per_layer",
            "round_to": "auto",
        },
    }
    rows = []
    batch = cfg.export.latency_batch
    for label, method in variants.items():
        tree = json.loads(cfg.model_dump_json())
        tree["method"] = method
        tree["baseline"] = {"checkpoint": str(base_ckpt)}
        c = parse_config(tree)
        t0 = time.perf_counter()
        res = run(
            c,
            out / label.replace(" ", "_").replace("(", "").replace(")", ""),
            overwrite=True,
            command=f"python bench/compare_methods.py --config {args.config} --ratio {args.ratio}",
        )
        rep = res.report
        rows.append(
            {
                "method": label,
                "top1": rep["pruned"]["top1"],
                "macs": rep["pruned"]["macs"],
                "params": rep["pruned"]["params"],
                "latency_ms": rep["pruned"]["latency_ms"],
                "latency_ms_batch": rep["pruned"]["latency_ms_batch"],
                "wall_s": time.perf_counter() - t0,
                "baseline": rep["baseline"],
            }
        )

    # torch-pruning's own pruner, same baseline, same finetune recipe
    data = build_data(cfg.data)
    spec = resolved_spec(cfg, data)
    shape = (1, data.in_chans, data.input_size, data.input_size)
    model = create_model(spec)
    model.load_state_dict(load_state(base_ckpt))
    base = rows[0]["baseline"]
    t0 = time.perf_counter()
    pruned, r = tp_magnitude(model, shape, args.ratio * base["macs"])
    res = fit(pruned, data.train, cfg.finetune, val_loader=data.val, desc="tp finetune", select="best")
    if res.best_state is not None:
        pruned.load_state_dict(res.best_state)
    lat1, latb = latency(pruned, shape, batch)
    rows.append(
        {
            "method": f"torch-pruning MagnitudePruner (ratio {r:.3f})",
            "top1": evaluate(pruned, data.test)["top1"],
            "macs": measure_macs(pruned, shape),
            "params": count_params(pruned),
            "latency_ms": lat1,
            "latency_ms_batch": latb,
            "wall_s": time.perf_counter() - t0,
            "baseline": base,
        }
    )

    lines = [
        f"| method | top-1 | MACs | params | ORT ms (b=1) | ORT ms (b={batch}) | MACs reduction | "
        f"speedup b=1 | speedup b={batch} | speedup/MACs-red. b=1 | b={batch} |",
        "|---" * 11 + "|",
    ]
    lines.append(
        f"| baseline | {base['top1']:.4f} | {base['macs'] / 1e6:.2f}M | {base['params'] / 1e3:.1f}K | "
        f"{base['latency_ms']:.3f} | {base['latency_ms_batch']:.2f} | 1.00x | 1.00x | 1.00x | – | – |"
    )
    for r_ in rows:
        red = base["macs"] / r_["macs"]
        s1, sb = base["latency_ms"] / r_["latency_ms"], base["latency_ms_batch"] / r_["latency_ms_batch"]
        r_.update({"macs_reduction": red, "speedup_b1": s1, "speedup_batch": sb})
        lines.append(
            f"| {r_['method']} | {r_['top1']:.4f} | {r_['macs'] / 1e6:.2f}M | {r_['params'] / 1e3:.1f}K | "
            f"{r_['latency_ms']:.3f} | {r_['latency_ms_batch']:.2f} | {red:.2f}x | {s1:.2f}x | {sb:.2f}x | "
            f"{s1 / red:.2f} | {sb / red:.2f} |"
        )
    table = "\n".join(lines)
    print(table)
    write_json(
        out / "compare.json", {"config": args.config, "ratio": args.ratio, "smoke": args.smoke, "rows": rows}
    )
    write_text(out / "compare.md", table + "\n")


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))  # 2 cores unless told
    main()
