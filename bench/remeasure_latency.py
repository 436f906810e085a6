"""Re-time every model of finished runs back to back, on a quiet machine.

Usage:
    python bench/remeasure_latency.py RUN_DIR [RUN_DIR ...] [--stages] [--rounds 3] [--batch 64]
                                      [--out bench/results/latency_remeasured]

Latencies written into run reports were measured when each run finished -- possibly while another job shared the
CPU, which on a 2-core machine moves sub-millisecond medians by up to ~1.7x. This script rebuilds, for every run
directory, the baseline (``baseline.pt``), the pruned model (``plan.json`` + ``model.safetensors``) and with
``--stages`` every multistage stage (``stages/stage{k}.plan.json`` + ``.safetensors``), then times them all with ONNX
Runtime (BatchNorm folded, one intra-op thread, :func:`prunekit.cost.latency.measure_ort_latency`) in ``--rounds``
interleaved rounds and reports the median over rounds of each model's median (ms per batch). Run it with nothing
else on the machine.

With ``--plans`` the arguments are ``plan.json`` files (a committed result whose weights are gone): each is rebuilt
from its plan with freshly initialised weights, beside the unpruned model of the plan's spec, likewise initialised.
ONNX Runtime's dense kernels take the same time whatever the weight values (BENCHMARKS.md: density buys nothing on
it), so this times the architecture the run deployed; a sparse plan's zeros are not reproduced.

Output: ``<out>.json`` and ``<out>.md`` (one row per model: run, model, MACs, ms at batch 1 and ``--batch``).
"""

from __future__ import annotations

import argparse
import functools
import re
import statistics
import sys
from pathlib import Path

import torch

from prunekit.cost.latency import interleaved_ort_latency
from prunekit.cost.macs import measure_macs
from prunekit.errors import PrunekitError
from prunekit.io import load_state, write_json, write_text
from prunekit.runs import load_baseline, load_run
from prunekit.space import Plan, rebuild


def _models(run_dir: Path, stages: bool) -> list[tuple[str, torch.nn.Module, tuple[int, ...]]]:
    """``(label, model, input_shape)`` for the baseline, the pruned model and (optionally) every stage."""
    out = []
    base = run_dir / "baseline.pt"
    if base.is_file():
        model, ck = load_baseline(base)
        out.append(("baseline", model, tuple(ck["input_shape"])))
    model, plan, _ = load_run(run_dir)
    out.append(("pruned", model.eval(), tuple(plan.input_shape)))
    if stages:
        found = sorted(
            (int(m.group(1)), p)
            for p in (run_dir / "stages").glob("stage*.plan.json")
            if (m := re.fullmatch(r"stage(\d+)\.plan\.json", p.name))
        )
        for k, p in found:
            sp = Plan.load(p)
            net = rebuild(sp, load_state(p.with_name(f"stage{k}.safetensors"))).eval()
            out.append((f"stage {k}", net, tuple(sp.input_shape)))
    return out


def _plan_models(plan_path: Path) -> list[tuple[str, torch.nn.Module, tuple[int, ...]]]:
    """``(label, model, input_shape)`` for the unpruned model of a plan's spec and the plan's architecture, both
    with freshly initialised weights (seeded)."""
    from prunekit.models import create_model

    plan = Plan.load(plan_path)
    torch.manual_seed(0)
    base = create_model(plan.model).eval()
    return [
        ("baseline (init)", base, tuple(plan.input_shape)),
        ("plan (init)", rebuild(plan).eval(), tuple(plan.input_shape)),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument(
        "--stages", action="store_true", help="also every stages/stage{k} model (multistage runs)"
    )
    ap.add_argument(
        "--plans", action="store_true", help="the arguments are plan.json files; weights freshly initialised"
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64, help="second batch size (0: batch 1 only)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/latency_remeasured"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    try:
        build = _plan_models if args.plans else functools.partial(_models, stages=args.stages)
        models = [(str(r), label, m, shape) for r in args.runs for label, m, shape in build(r)]
    except PrunekitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    batches = (1, args.batch) if args.batch > 1 else (1,)
    times = interleaved_ort_latency(
        [(m, shape) for _, _, m, shape in models], batch_sizes=batches, rounds=args.rounds, threads=1
    )
    rows = []
    for t, (run, label, m, shape) in zip(times, models, strict=True):
        rows.append(
            {
                "run": run,
                "model": label,
                "macs": measure_macs(m, shape),
                **{f"ms_b{b}": statistics.median(t[b]) for b in batches},
                **{f"ms_b{b}_rounds": t[b] for b in batches},
            }
        )
    cmd = "python bench/remeasure_latency.py " + " ".join(sys.argv[1:])
    head = "| run | model | MACs | " + " | ".join(f"ORT ms b={b}" for b in batches) + " |"
    lines = [f"`{cmd}`", "", head, "|---|---|---:|" + "---:|" * len(batches)]
    for r in rows:
        cells = " | ".join(f"{r[f'ms_b{b}']:.3f}" for b in batches)
        lines.append(f"| {r['run']} | {r['model']} | {r['macs'] / 1e6:.3f}M | {cells} |")
    write_json(args.out.with_suffix(".json"), {"command": cmd, "rounds": args.rounds, "rows": rows})
    write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
