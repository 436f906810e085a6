"""Pruning from Scratch vs uniform-width-from-scratch vs magnitude pruning, at one MACs target and an equal budget.

Usage:
    python bench/scratch_vs_uniform.py [--config configs/resnet20-scratch.yaml] [--ratio 0.5] [--seeds 0 1 2]
                                       [--magnitude-split 0.5] [--finetune-lr 0.01]
                                       [--out bench/results/scratch_vs_uniform] [--smoke]

The claim under test (Wang et al., "Pruning from Scratch", AAAI 2020, §4): architectures selected by channel gates
learned on random weights beat uniformly narrowed ones trained the same way. Every variant prunes the config's model
to ``ratio`` x the reference model's MACs and gets the same **training budget**: the compute of training the
reference model for ``E`` epochs (``E`` = the config's ``baseline.train.epochs``), counted in reference-model epochs
(an epoch of a model with MACs ratio ``q`` costs ``q``):

* ``scratch``: gates on a wider random model (the config's ``method``), top-k to the target, a fresh init of the
  pruned net trained for ``E / q`` epochs (Scratch-B). Gate training is extra (reported in its own column).
* ``uniform``: every group narrowed by one width multiplier (``uniform``, first-k channels) to the target, trained
  from a random init for ``E / q_nominal`` epochs with the same recipe (``q_nominal = ratio``).
* ``magnitude``: the reference trained for ``split * E`` epochs, pruned by global L1 filter norm (``magnitude``) to
  the target, finetuned for ``(1 - split) * E / ratio`` epochs (recipe with ``lr = --finetune-lr``, no warm-up).

The reference model trained for ``E`` epochs is listed for context. Every run is a normal ``prunekit run`` directory
under ``--out`` (reports, plans, logs). Results: ``scratch_vs_uniform.json`` and ``scratch_vs_uniform.md`` in
``--out``, and the markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from prunekit.config import RunConfig, load_config, parse_config
from prunekit.io import write_json, write_text
from prunekit.methods.scratch import budget_recipe
from prunekit.pipeline import run, smoke_config, train_only
from prunekit.train import TrainConfig


def _tree(cfg: RunConfig) -> dict:
    return json.loads(cfg.model_dump_json())


def _row(label: str, rep: dict, budget: float, epochs: str, extra: str, wall: float) -> dict:
    p = rep["pruned"]
    return {
        "method": label,
        "top1": p["top1"],
        "val_top1": p.get("val_top1"),
        "macs": p["macs"],
        "macs_ratio": rep["target"]["achieved_macs_ratio"],
        "params": p["params"],
        "latency_ms": p.get("latency_ms"),
        "budget_ref_epochs": budget,
        "epochs": epochs,
        "extra_compute": extra,
        "wall_s": wall,
    }


def run_seed(args, base: RunConfig, seed: int, out: Path, cmd: str) -> list[dict]:
    """All variants for one seed; returns one row per variant (reference first)."""
    recipe: TrainConfig = base.baseline.train
    E = recipe.epochs
    rows = []

    # reference model, E epochs (also the scratch run's report baseline)
    t0 = time.perf_counter()
    ref_cfg = base.model_copy(update={"seed": seed}, deep=True)
    ref = train_only(ref_cfg, out / "reference", command=cmd)
    ref_ckpt = ref.out_dir / "baseline.pt"
    rows.append(
        {
            "method": "reference (unpruned)",
            "top1": ref.report["baseline"]["top1"],
            "val_top1": ref.report["baseline"].get("val_top1"),
            "macs": None,
            "macs_ratio": 1.0,
            "params": None,
            "latency_ms": None,
            "budget_ref_epochs": E,
            "epochs": f"{E:g}",
            "extra_compute": "",
            "wall_s": time.perf_counter() - t0,
        }
    )

    # scratch: gates + Scratch-B
    t0 = time.perf_counter()
    tree = _tree(ref_cfg)
    tree["baseline"] = {"checkpoint": str(ref_ckpt), "train": _tree_tc(recipe)}
    res = run(parse_config(tree), out / "scratch", command=cmd)
    rep, ex = res.report, res.report["extra"]
    q = rep["target"]["achieved_macs_ratio"]
    rows.append(
        _row(
            "scratch (gates + Scratch-B)",
            rep,
            ex["train_epochs"] * q,
            f"{ex['train_epochs']:.3g}",
            f"{base.method.gate_epochs:g} gate epochs on the {ex['expansion']:g}x model "
            f"({ex['expanded_macs'] / ex['base_macs']:.2f}x MACs, weights frozen)",
            time.perf_counter() - t0,
        )
    )
    rows[0]["macs"], rows[0]["params"] = rep["baseline"]["macs"], rep["baseline"]["params"]
    rows[0]["latency_ms"] = rep["baseline"].get("latency_ms")

    # uniform width, random init, same budget
    t0 = time.perf_counter()
    tree = _tree(ref_cfg)
    tree["baseline"] = {"checkpoint": None, "train": None}
    tree["method"] = {"name": "uniform", "importance": "first"}
    uni_tc = budget_recipe(recipe, 1.0 / args.ratio)
    tree["finetune"] = _tree_tc(uni_tc)
    res = run(parse_config(tree), out / "uniform", command=cmd)
    q = res.report["target"]["achieved_macs_ratio"]
    rows.append(
        _row(
            "uniform width from scratch",
            res.report,
            uni_tc.epochs * q,
            f"{uni_tc.epochs:.3g}",
            "",
            time.perf_counter() - t0,
        )
    )

    # magnitude: pre-train split * E, prune, finetune the rest of the budget
    t0 = time.perf_counter()
    split = args.magnitude_split
    tree = _tree(ref_cfg)
    pre = recipe.model_copy(
        update={"epochs": split * E, "warmup_epochs": min(recipe.warmup_epochs, split * E / 2)}
    )
    tree["baseline"] = (
        {"checkpoint": str(ref_ckpt), "train": None}
        if split == 1.0
        else {"checkpoint": None, "train": _tree_tc(pre)}
    )
    tree["method"] = {"name": "magnitude", "importance": "l1", "ranking": "global"}
    ft_epochs = (1.0 - split) * E / args.ratio
    ft = (
        recipe.model_copy(update={"epochs": ft_epochs, "lr": args.finetune_lr, "warmup_epochs": 0.0})
        if ft_epochs > 0
        else None
    )
    tree["finetune"] = _tree_tc(ft) if ft is not None else None
    res = run(parse_config(tree), out / "magnitude", command=cmd)
    q = res.report["target"]["achieved_macs_ratio"]
    rows.append(
        _row(
            f"magnitude (L1, pre-train {split:g}E + finetune)",
            res.report,
            split * E + ft_epochs * q,
            f"{split * E:.3g} + {ft_epochs:.3g}",
            "",
            time.perf_counter() - t0,
        )
    )
    for r in rows:
        r["seed"] = seed
    return rows


def _tree_tc(tc: TrainConfig | None) -> dict | None:
    return None if tc is None else json.loads(tc.model_dump_json())


def _fmt(v, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def table(rows: list[dict], seeds: list[int]) -> str:
    """Markdown table; with several seeds top-1 is ``mean ± std`` over seeds."""
    order = list(dict.fromkeys(r["method"] for r in rows))
    lines = [
        "| method | test top-1 | val top-1 | MACs | MACs / reference | params | ORT ms (b=1) | train epochs | "
        "budget (reference epochs) | extra compute |",
        "|---" * 10 + "|",
    ]
    for m in order:
        rs = [r for r in rows if r["method"] == m]
        t = [r["top1"] for r in rs]
        top1 = f"{statistics.mean(t):.4f}" + (f" ± {statistics.stdev(t):.4f}" if len(t) > 1 else "")
        vals = [r["val_top1"] for r in rs if r["val_top1"] is not None]
        val = f"{statistics.mean(vals):.4f}" if vals else "–"
        r0 = rs[0]
        macs = "–" if r0["macs"] is None else f"{r0['macs'] / 1e6:.2f}M"
        params = "–" if r0["params"] is None else f"{r0['params'] / 1e3:.1f}K"
        lines.append(
            f"| {m} | {top1} | {val} | {macs} | {r0['macs_ratio']:.4f} | {params} | {_fmt(r0['latency_ms'], '.3f')} | "
            f"{r0['epochs']} | {r0['budget_ref_epochs']:.3g} | {r0['extra_compute']} |"
        )
    lines.append("")
    lines.append(f"seeds: {', '.join(map(str, seeds))}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/resnet20-scratch.yaml")
    ap.add_argument(
        "--ratio", type=float, default=0.5, help="MACs target as a fraction of the reference model's"
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument(
        "--magnitude-split", type=float, default=0.5, help="fraction of the budget spent pre-training"
    )
    ap.add_argument("--finetune-lr", type=float, default=0.01)
    ap.add_argument("--out", default="bench/results/scratch_vs_uniform")
    ap.add_argument("--smoke", action="store_true", help="tiny data and epochs: checks the script end to end")
    args = ap.parse_args()
    if not 0.0 < args.ratio < 1.0 or not 0.0 < args.magnitude_split <= 1.0:
        ap.error("--ratio must be in (0, 1) and --magnitude-split in (0, 1]")
    cmd = "python bench/scratch_vs_uniform.py " + " ".join(
        [f"--config {args.config}", f"--ratio {args.ratio}", "--seeds " + " ".join(map(str, args.seeds))]
        + (["--smoke"] if args.smoke else [])
    )
    base = load_config(args.config, [f"target.macs_ratio={args.ratio}"])
    if base.method.name != "scratch" or base.baseline.train is None:
        ap.error("--config must be a scratch preset with baseline.train (the budget's base recipe)")
    if args.smoke:
        base = smoke_config(base)
        base.method.gate_epochs = min(base.method.gate_epochs, 1.0)
        base.export.latency = False
    out = Path(args.out)
    rows: list[dict] = []
    for seed in args.seeds:
        rows += run_seed(args, base, seed, out / f"seed{seed}", cmd)
    md = table(rows, args.seeds)
    print(md)
    write_json(
        out / "scratch_vs_uniform.json",
        {
            "command": cmd,
            "config": args.config,
            "ratio": args.ratio,
            "magnitude_split": args.magnitude_split,
            "finetune_lr": args.finetune_lr,
            "smoke": args.smoke,
            "rows": rows,
        },
    )
    write_text(out / "scratch_vs_uniform.md", f"`{cmd}`\n\n{md}\n")


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))  # 2 cores unless told
    main()
