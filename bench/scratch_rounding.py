"""Same learned gates, pruned with and without hardware-friendly rounding: MACs and ONNX Runtime latency.

Usage:
    python bench/scratch_rounding.py RUN_DIR [--ratio 0.5] [--round-to auto] [--tol-rounded 0.02] [--rounds 3]
                                     [--out bench/results/scratch_rounding]

``RUN_DIR`` is a finished ``scratch`` run (its ``gates.json`` holds the learned gates and the expanded model's spec).
The gates are pruned to ``ratio`` x the reference model's MACs twice with
:func:`prunekit.methods.scratch.prune_to_macs`: as the seed does (``round_to: 1``, ``tol: 0.001``) and with widths
rounded to the CPU's ONNX Runtime channel block (``--round-to``, default ``auto``; ``min_channels`` the same;
``--tol-rounded``: coarse widths cannot hit a 0.1% window). The architectures are timed (random weights: latency does not depend on
them) against the reference model in ``--rounds`` interleaved rounds (ONNX Runtime, one thread, BN folded; median of
the rounds' medians, ms per batch). Accuracy is not measured here.

Output: ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from prunekit.cost import CostModel
from prunekit.cost.latency import interleaved_ort_latency, resolve_round_to
from prunekit.io import write_json, write_text
from prunekit.methods.scratch import prune_to_macs
from prunekit.models import create_model
from prunekit.runs import load_run
from prunekit.space import ChannelSpace, apply


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--round-to", default="auto", help="the rounded variant's round_to (auto or an int)")
    ap.add_argument("--tol-rounded", type=float, default=0.02)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("bench/results/scratch_rounding"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    g = json.loads((args.run / "gates.json").read_text())
    _, plan0, _ = load_run(args.run)
    shape = tuple(plan0.input_shape)
    wide = create_model(g["expanded_spec"]).eval()
    space = ChannelSpace.build(wide, shape)
    cost = CostModel(space)
    ref_spec = json.loads((args.run / "report.json").read_text())["extra"]["reference_spec"]
    reference = create_model(ref_spec).eval()
    ref_macs = float(CostModel(ChannelSpace.build(reference, shape)).cost().macs)
    gates = {k: torch.tensor(v) for k, v in g["gates"].items()}
    nets = {"reference": (reference, ref_macs, None)}
    rounded = args.round_to if args.round_to == "auto" else int(args.round_to)
    for label, rt, tol in (
        ("round_to 1, tol 0.001", 1, 1e-3),
        (f"round_to {rounded}", rounded, args.tol_rounded),
    ):
        r = resolve_round_to(rt)
        plan = prune_to_macs(
            space, cost, gates, args.ratio * ref_macs, tol=tol, round_to=r, min_channels=max(r, 1)
        )
        nets[f"{label} ({r})" if rt == "auto" else label] = (
            apply(wide, plan, space).eval(),
            float(cost.cost(plan).macs),
            plan.meta.get("mode"),
        )
    timed = interleaved_ort_latency(
        [(net, shape) for net, _, _ in nets.values()], batch_sizes=(1, 64), rounds=args.rounds, threads=1
    )
    times = {k: (t[1], t[64]) for k, t in zip(nets, timed, strict=True)}
    cmd = "python bench/scratch_rounding.py " + " ".join(sys.argv[1:])
    rows = []
    lines = [f"`{cmd}`", "", "| widths | MACs | ORT ms b=1 | ORT ms b=64 | speedup b=1 | speedup b=64 |"]
    lines.append("|---|---:|---:|---:|---:|---:|")
    b1r, b64r = (statistics.median(t) for t in times["reference"])
    for k, (_, macs, mode) in nets.items():
        b1, b64 = (statistics.median(t) for t in times[k])
        rows.append({"widths": k, "macs": macs, "mode": mode, "ms_b1": b1, "ms_b64": b64, "rounds": times[k]})
        lines.append(
            f"| {k} | {macs / 1e6:.2f}M | {b1:.3f} | {b64:.2f} | {b1r / b1:.2f}x | {b64r / b64:.2f}x |"
        )
    write_json(args.out.with_suffix(".json"), {"command": cmd, "run": str(args.run), "rows": rows})
    write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
