"""The ``measured`` block of a preset's header comment, read from a finished run's ``report.json``.

Usage:
    python bench/preset_header.py RUN_DIR [RUN_DIR ...] [--note TEXT]

Every preset in ``configs/`` states what its full run produced on this machine (wall time per phase, test top-1,
MACs, params, ONNX Runtime latency at batch 1 and at ``export.latency_batch``). This prints those lines, each
starting with ``#``, for pasting under the preset's ``command:`` line, so the numbers in a header are the report's
own, not retyped. The machine line names the CPU (``/proc/cpuinfo``), its core count and whether it has AVX-512,
and the date is the report's ``created`` stamp. A ``--smoke`` report is refused: its numbers mean nothing.

Exit status 2, with one line, when a directory has no finished ``report.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _cpu() -> str:
    """``"2-core AMD EPYC 9B14, AVX-512"``-style description of this machine (no GPU is assumed)."""
    name, avx512 = "unknown CPU", False
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name == "unknown CPU":
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                avx512 = avx512 or " avx512f" in line
    except OSError:
        pass
    return f"{os.cpu_count()}-core {name}, {'AVX-512' if avx512 else 'AVX2'}"


def _si(x: float) -> str:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= div:
            return f"{x / div:.2f}{unit}"
    return f"{x:g}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def header(rep: dict) -> list[str]:
    """The header lines (without the leading ``# ``) for one report."""
    b, p, w = rep["baseline"], rep["pruned"], rep.get("wall_s") or {}
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in w.items() if k != "total")
    total = w.get("total", 0.0)
    lines = [
        f"measured ({_cpu()}; {rep.get('created', '?')[:10]}): wall {int(total // 60)} min {total % 60:.0f} s"
        + (f" ({phases})" if phases else ""),
        f"  top-1 (test)      {b['top1']:.4f} -> {p['top1']:.4f}",
        f"  MACs              {_si(b['macs'])} -> {_si(p['macs'])} ({_ratio(b['macs'], p['macs'])} fewer;"
        " FLOPs = 2 x MACs)",
        f"  params            {_si(b['params'])} -> {_si(p['params'])}",
    ]
    if b.get("latency_ms") and p.get("latency_ms"):
        lb = b.get("latency_batch")
        lines.append(
            f"  ORT latency b=1   {b['latency_ms']:.3f} ms -> {p['latency_ms']:.3f} ms "
            f"({_ratio(b['latency_ms'], p['latency_ms'])})"
            + (
                f"      b={lb}  {b['latency_ms_batch']:.2f} ms -> {p['latency_ms_batch']:.2f} ms "
                f"({_ratio(b['latency_ms_batch'], p['latency_ms_batch'])})"
                if lb and b.get("latency_ms_batch") and p.get("latency_ms_batch")
                else ""
            )
        )
    for c in rep.get("constraints") or []:
        lines.append(
            f"  budget {c.get('metric')}: {c.get('achieved_ratio', float('nan')):.4f} of the baseline "
            f"(limit {c.get('ratio_of_baseline', float('nan')):.4f}, {'met' if c.get('met') else 'NOT met'})"
        )
    for m in (rep.get("extra") or {}).get(
        "members"
    ) or []:  # JCW's method.train: more members of the same front
        lines.append(
            f"  member {m.get('member')} ({m.get('budgets')}{', deployed' if m.get('deployed') else ''}): "
            f"top-1 {m.get('test_top1', float('nan')):.4f}, MACs {_si(m.get('macs') or 0)}, "
            f"predicted {m.get('predicted_ratio', float('nan')):.2f} / measured "
            f"{m.get('measured_ratio', float('nan')):.2f} of the unpruned latency"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="finished run directories")
    ap.add_argument("--note", default=None, help="a last line (e.g. what else ran on the machine)")
    args = ap.parse_args(argv)
    for d in args.runs:
        path = Path(d) / "report.json"
        try:
            rep = json.loads(path.read_text())
        except (OSError, ValueError):
            print(
                f"error: {path} is missing or unreadable; finish the run first (prunekit run ...)",
                file=sys.stderr,
            )
            return 2
        if rep.get("smoke"):
            print(f"error: {path} is a --smoke report; its numbers mean nothing", file=sys.stderr)
            return 2
        if len(args.runs) > 1:
            print(f"== {d}")
        for line in header(rep) + ([args.note] if args.note else []):
            print(f"#   {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
