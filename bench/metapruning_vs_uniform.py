"""MetaPruning vs uniform width at the same MACs, both trained from scratch with the same budget (issue #6 evidence).

Usage:
    python bench/metapruning_vs_uniform.py [--config configs/mobilenet_v1-metapruning.yaml] [--ratios 0.5 0.25]
                                           [--out bench/results/metapruning] [--no-init-pruningnet] [--smoke]

For every MACs ratio ``r`` (fraction of the reference model's MACs):

* ``metapruning``: the config's method (PruningNet, evolutionary search in the window around ``r``), the best
  encoding trained from scratch with ``method.final_train``. The PruningNet is trained once (first ratio) and reused
  for the other ratios (its training ignores the target: the checkpoint is copied into each run); the reference
  baseline is trained once (first run, the config's recipe) and loaded by the others.
* ``uniform``: one width multiplier for every group (same ``round_to`` / ``min_channels``), first-k channels, from the
  model spec's initialisation (no baseline training), trained with the same recipe as ``finetune``.
* ``metapruning, init pruningnet`` (first ratio, unless ``--no-init-pruningnet``): the same searched encoding (search
  state copied) trained from the PruningNet's generated weights instead of from scratch.

Reported per run: test top-1, MACs, params, ONNX Runtime latency (batch 1); per MetaPruning search: wall time,
candidates evaluated per minute; and the PruningNet's training time per epoch relative to the plain reference network
(``train_s`` per epoch of the two phases of the first run: same data, batch size and machine).
JSON goes to ``<out>/results.json``; a markdown table is printed and written to ``<out>/results.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

from _study import config_tree
from prunekit.config import load_config, parse_config
from prunekit.io import write_json, write_text
from prunekit.pipeline import run


def _copy(src: Path, dst: Path) -> None:
    if src.is_file() and not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def _epoch_s(rows: list[dict]) -> float | None:
    """Median training seconds per full epoch of a phase's history (partial epochs scaled up)."""
    prev, vals = 0.0, []
    for r in rows:
        done = r.get("epochs_done") or 0.0
        if r.get("train_s") and done > prev:
            vals.append(r["train_s"] / (done - prev))
        prev = max(prev, done)
    return statistics.median(vals) if vals else None


def _row(label: str, ratio: float, report: dict) -> dict:
    ex = report.get("extra", {})
    search = ex.get("search", {})
    return {
        "run": label,
        "target_ratio": ratio,
        "test_top1": report["pruned"]["top1"],
        "macs": report["pruned"]["macs"],
        "macs_ratio": report["target"]["achieved_macs_ratio"],
        "params": report["pruned"]["params"],
        "latency_ms": report["pruned"].get("latency_ms"),
        "search_wall_s": search.get("eval_seconds"),
        "candidates": search.get("evaluated"),
        "candidates_per_min": search.get("candidates_per_min"),
        "fitness_val_top1": ex.get("chosen", {}).get("fitness_val_top1"),
        "method_wall_s": report["wall_s"].get("method"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/mobilenet_v1-metapruning.yaml")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.25])
    ap.add_argument("--out", default="bench/results/metapruning")
    ap.add_argument("--no-init-pruningnet", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    base_cfg = load_config(args.config)
    if base_cfg.method.name != "metapruning":
        sys.exit(f"error: {args.config} is not a metapruning config")
    mcfg = base_cfg.method
    recipe = mcfg.final_train or base_cfg.finetune
    if recipe is None:
        sys.exit("error: the config needs method.final_train (the from-scratch recipe both methods share)")
    cmd = " ".join(sys.argv)
    rows, first_dir = [], None
    timing: dict = {}
    for ratio in args.ratios:
        # ---- MetaPruning
        tree = config_tree(base_cfg)
        tree["name"] = f"{base_cfg.name}-r{ratio}"
        tree["target"] = {"macs_ratio": ratio}
        d = out / f"metapruning-r{ratio}"
        if first_dir is not None:
            tree["baseline"] = {"checkpoint": str(first_dir / "baseline.pt"), "train": None}
            _copy(first_dir / "ckpt" / "pruningnet.ckpt", d / "ckpt" / "pruningnet.ckpt")
        rep = run(parse_config(tree), d, smoke=args.smoke, command=cmd).report
        rows.append(_row("metapruning", ratio, rep))
        if first_dir is None:
            first_dir = d
            hist = rep["history"]
            timing = {
                "baseline_epoch_s": _epoch_s(hist.get("baseline", [])),
                "pruningnet_epoch_s": _epoch_s(hist.get("pruningnet", [])),
                "reference_top1": rep["baseline"]["top1"],
                "reference_macs": rep["baseline"]["macs"],
                "generator_params": rep["extra"]["pruningnet"]["generator_params"],
                "reference_params": rep["extra"]["pruningnet"]["reference_params"],
            }
            if timing["baseline_epoch_s"] and timing["pruningnet_epoch_s"]:
                timing["pruningnet_vs_reference_epoch_time"] = (
                    timing["pruningnet_epoch_s"] / timing["baseline_epoch_s"]
                )
            if not args.no_init_pruningnet:
                t2 = dict(tree)
                t2["name"] = f"{base_cfg.name}-r{ratio}-initpn"
                t2["method"] = {**tree["method"], "init": "pruningnet"}
                t2["baseline"] = {"checkpoint": str(d / "baseline.pt"), "train": None}
                d2 = out / f"metapruning-r{ratio}-initpn"
                _copy(d / "ckpt" / "pruningnet.ckpt", d2 / "ckpt" / "pruningnet.ckpt")
                _copy(d / "metapruning" / "search_state.json", d2 / "metapruning" / "search_state.json")
                rep2 = run(parse_config(t2), d2, smoke=args.smoke, command=cmd).report
                rows.append(_row("metapruning, init pruningnet", ratio, rep2))
        # ---- uniform, same budget from the spec's initialisation
        ut = config_tree(base_cfg)
        ut["name"] = f"{base_cfg.name}-uniform-r{ratio}"
        ut["target"] = {"macs_ratio": ratio}
        ut["baseline"] = {"checkpoint": None, "train": None}
        ut["method"] = {
            "name": "uniform",
            "importance": "first",
            "round_to": mcfg.round_to,
            "min_channels": mcfg.min_channels,
        }
        ut["finetune"] = json.loads(recipe.model_dump_json())
        rep = run(parse_config(ut), out / f"uniform-r{ratio}", smoke=args.smoke, command=cmd).report
        rows.append(_row("uniform", ratio, rep))

    results = {"command": cmd, "config": args.config, "smoke": args.smoke, "rows": rows, "timing": timing}
    write_json(out / "results.json", results)

    def pct(x):
        return "–" if x is None else f"{100 * x:.2f}%"

    def num(x, f="{:.2f}"):
        return "–" if x is None else f.format(x)

    lines = [
        f"`{cmd}`",
        "",
        "| run | target | MACs (ratio) | params | test top-1 | PruningNet val top-1 | latency b1 | search s | cand./min |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['target_ratio']:.2f} | {r['macs'] / 1e6:.2f}M ({r['macs_ratio']:.3f}) | "
            f"{r['params']:,} | {pct(r['test_top1'])} | {pct(r['fitness_val_top1'])} | "
            f"{num(r['latency_ms'], '{:.3f} ms')} | {num(r['search_wall_s'], '{:.0f}')} | "
            f"{num(r['candidates_per_min'], '{:.1f}')} |"
        )
    lines += [
        "",
        f"Reference: top-1 {pct(timing.get('reference_top1'))}, {timing.get('reference_macs', 0) / 1e6:.2f}M MACs. "
        f"PruningNet epoch {num(timing.get('pruningnet_epoch_s'), '{:.1f} s')} vs reference network epoch "
        f"{num(timing.get('baseline_epoch_s'), '{:.1f} s')} "
        f"(x{num(timing.get('pruningnet_vs_reference_epoch_time'))}); generators hold "
        f"{timing.get('generator_params', 0):,} parameters for a {timing.get('reference_params', 0):,}-parameter "
        "network.",
    ]
    text = "\n".join(lines)
    write_text(out / "results.md", text + "\n")
    print(text)


if __name__ == "__main__":
    main()
