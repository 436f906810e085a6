"""Multistage gradual pruning vs one-shot `magnitude` pruning at the same final ratios and finetuning epochs.

Usage:
    python bench/multistage_vs_oneshot.py [--config configs/mobilenet_v1-8stage-magnitude.yaml] [--ratios 0.5 0.75]
        [--seeds 0 1 2] [--out bench/results/multistage] [--set KEY=VALUE ...] [--overwrite] [--smoke]

Tu et al. (IJCNN 2020) claim that pruning in many small stages keeps more accuracy than pruning to the final ratio
at once. For every seed this script:

1. trains **one baseline** with the config's recipe (``prunekit train``) and shares it, through
   ``baseline.checkpoint``, with every pruned run of that seed;
2. runs ``multistage`` once to the largest ratio of ``--ratios`` (the config's schedule, stopped there, with every
   requested ratio inserted as a stage end if the schedule lacks it). Its stage ``k`` *is* the multistage result at
   the ratio it ends at: the run to 0.75 passes through exactly the run to 0.5 (same stages, same seed), so one run
   answers every ratio;
3. for every ratio ``r``, runs one-shot ``magnitude`` (same importance criterion, ``ranking: per_layer`` = the same
   ratio in every group, like multistage; ``--oneshot-ranking global`` for the other variant) to the MACs of the
   multistage model at ``r``, then finetunes it with the multistage stage recipe for ``k * stage.epochs`` epochs,
   where ``k`` is the number of stages multistage needed to reach ``r``: the same total finetuning epochs (the
   multistage ramp epochs count as finetuning). Both select their model on the validation split; the table reports
   test top-1.

Seeds set ``seed``, ``data.seed`` (split, shuffling, augmentation) and every recipe's ``seed``. Because ``data.seed``
also picks the validation split, each seed gets its own baseline (a baseline trained on another seed's split would
have seen that split's validation images). ``--smoke`` shrinks everything (``prunekit run --smoke``: tiny subsets, at
most one epoch per phase and per stage) to prove the script runs; its numbers mean nothing.

Output: ``<out>/multistage_vs_oneshot.json`` (every run's numbers) and ``.md`` (the table printed at the end: per ratio
and method, mean and standard deviation over seeds of test top-1, MACs, params, ONNX Runtime batch-1 latency).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from _study import config_tree, mean_std, seeded
from prunekit.config import load_config, parse_config
from prunekit.io import write_json, write_text
from prunekit.methods.multistage.schedules import stage_ratios
from prunekit.pipeline import run, smoke_config, train_only


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/mobilenet_v1-8stage-magnitude.yaml")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.75])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--oneshot-ranking", choices=["per_layer", "global"], default="per_layer")
    ap.add_argument("--out", default="bench/results/multistage")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--overwrite", action="store_true", help="start every run afresh (default: resume)")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    command = "python bench/multistage_vs_oneshot.py " + " ".join(
        shlex.quote(a) for a in (argv or sys.argv[1:])
    )

    cfg = load_config(args.config, args.overrides)
    if cfg.method.name != "multistage":
        ap.error(f"{args.config} must configure method: multistage (it has {cfg.method.name})")
    if args.smoke:
        cfg = smoke_config(cfg)
    ratios = sorted(set(args.ratios))
    if not all(0.0 < r < 1.0 for r in ratios):
        ap.error(f"--ratios must be in (0, 1), got {ratios}")
    ms = cfg.method
    schedule = sorted(set(stage_ratios(ms.schedule, max(ratios))) | set(ratios))
    stage_of = {r: schedule.index(r) + 1 for r in ratios}  # stages multistage needs to reach r
    out = Path(args.out)
    base_tree = config_tree(cfg)
    rows: list[dict] = []
    t_all = time.perf_counter()
    for seed in args.seeds:
        tree = seeded(base_tree, seed)
        base_dir = out / f"seed{seed}" / "baseline"
        t0 = time.perf_counter()
        train_only(parse_config(tree), base_dir, smoke=args.smoke, overwrite=args.overwrite, command=command)
        base_s = time.perf_counter() - t0
        ckpt = str(base_dir / "baseline.pt")

        # multistage, once, to the largest ratio
        mtree = json.loads(json.dumps(tree))
        mtree["baseline"] = {"checkpoint": ckpt}
        mtree["method"]["schedule"] = schedule
        mtree["method"]["final_ratio"] = None
        mtree["name"] = f"multistage-seed{seed}"
        t0 = time.perf_counter()
        res = run(
            parse_config(mtree),
            out / f"seed{seed}" / "multistage",
            smoke=args.smoke,
            overwrite=args.overwrite,
            command=command,
        )
        ms_s = time.perf_counter() - t0
        rep = res.report
        stage_epochs = float(rep["extra"]["stage_epochs"])
        by_ratio = {round(h["ratio"], 9): h for h in rep["history"]["method"]}
        baseline = rep["baseline"]
        for r in ratios:
            h = by_ratio[round(r, 9)]
            rows.append(
                {
                    "seed": seed,
                    "ratio": r,
                    "method": "multistage",
                    "stages": stage_of[r],
                    "finetune_epochs": stage_of[r] * stage_epochs,
                    "top1": h["test_top1"],
                    "val_top1": h["val_top1"],
                    "macs": h["macs"],
                    "params": h["params"],
                    "latency_ms": h["latency_ms"],
                    "baseline_top1": baseline["top1"],
                    "baseline_macs": baseline["macs"],
                    "wall_s": ms_s,
                    "baseline_wall_s": base_s,
                }
            )

        # one-shot magnitude at the same MACs and the same total finetuning epochs
        for r in ratios:
            epochs = stage_of[r] * stage_epochs
            otree = json.loads(json.dumps(tree))
            otree["baseline"] = {"checkpoint": ckpt}
            otree["target"] = {"macs": int(by_ratio[round(r, 9)]["macs"])}
            otree["method"] = {
                "name": "magnitude",
                "importance": ms.importance,
                "ranking": args.oneshot_ranking,
                "steps": 1,
                "round_to": ms.round_to,
                "min_channels": ms.min_channels,
                "protect": list(ms.protect),
            }
            otree["finetune"] = {**tree["method"]["stage"], "epochs": epochs}
            otree["name"] = f"oneshot-r{r:g}-seed{seed}"
            t0 = time.perf_counter()
            ores = run(
                parse_config(otree),
                out / f"seed{seed}" / f"oneshot-r{r:g}",
                smoke=args.smoke,
                overwrite=args.overwrite,
                command=command,
            )
            orep = ores.report
            rows.append(
                {
                    "seed": seed,
                    "ratio": r,
                    "method": f"one-shot magnitude ({args.oneshot_ranking})",
                    "stages": 1,
                    "finetune_epochs": float(orep["history"]["finetune"][-1]["epochs_done"])
                    if orep["history"].get("finetune")
                    else 0.0,
                    "top1": orep["pruned"]["top1"],
                    "val_top1": orep["pruned"].get("val_top1"),
                    "macs": orep["pruned"]["macs"],
                    "params": orep["pruned"]["params"],
                    "latency_ms": orep["pruned"].get("latency_ms"),
                    "baseline_top1": orep["baseline"]["top1"],
                    "baseline_macs": orep["baseline"]["macs"],
                    "wall_s": time.perf_counter() - t0,
                    "baseline_wall_s": base_s,
                }
            )

    # ---- summary table: per ratio and method, mean ± std over seeds
    lines = [
        f"Multistage vs one-shot ({cfg.model}, {cfg.data.name}; seeds {args.seeds}; schedule {schedule}; "
        f"{'SMOKE, numbers meaningless' if args.smoke else 'full run'})",
        "",
        "| ratio | method | finetune epochs | test top-1 (mean ± std) | Δ vs baseline | MACs | params | "
        "ORT latency b1 | n |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    summary = []
    for r in ratios:
        for method in dict.fromkeys(row["method"] for row in rows):
            sel = [row for row in rows if row["ratio"] == r and row["method"] == method]
            if not sel:
                continue
            m, s = mean_std([row["top1"] for row in sel])
            b, _ = mean_std([row["baseline_top1"] for row in sel])
            lat, _ = mean_std([row["latency_ms"] for row in sel])
            entry = {
                "ratio": r,
                "method": method,
                "n": len(sel),
                "top1_mean": m,
                "top1_std": s,
                "baseline_top1_mean": b,
                "macs": sel[0]["macs"],
                "params": sel[0]["params"],
                "latency_ms_mean": lat,
                "finetune_epochs": sel[0]["finetune_epochs"],
            }
            summary.append(entry)
            lines.append(
                f"| {r:g} | {method} | {entry['finetune_epochs']:g} | {100 * m:.2f}% ± {100 * s:.2f} | "
                f"{100 * (m - b):+.2f} pp | {entry['macs'] / 1e6:.2f}M | {entry['params'] / 1e3:.1f}K | "
                f"{lat:.3f} ms | {len(sel)} |"
            )
    table = "\n".join(lines)
    print(table)
    write_json(
        out / "multistage_vs_oneshot.json",
        {
            "command": command,
            "config": args.config,
            "overrides": args.overrides,
            "ratios": ratios,
            "seeds": args.seeds,
            "schedule": schedule,
            "smoke": args.smoke,
            "wall_s": time.perf_counter() - t_all,
            "summary": summary,
            "rows": rows,
        },
    )
    write_text(out / "multistage_vs_oneshot.md", table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
