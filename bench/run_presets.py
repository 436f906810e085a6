"""Run presets in full, sharing one trained baseline between presets that train the same one, and print the
``measured`` block each preset's header states.

Usage:
    python bench/run_presets.py CONFIG [CONFIG ...] [--out bench/results/presets] [--note TEXT] [--smoke]

Presets whose ``seed``, ``model``, ``data`` and ``baseline`` sections are equal (e.g. the three ResNet-20 GConv
presets) train that baseline once (``prunekit train`` into ``OUT/baseline-<hash>``); each preset then runs with
``baseline.checkpoint`` set to it, which is the same network its own ``prunekit run`` would train (same recipe,
same seed). The header's wall time is the baseline's training time plus the run's own. Every step resumes: a
finished run (``report.json`` of the same config) is skipped, a killed one continues where it stopped.

Output: ``OUT/<preset>/`` run directories and ``OUT/headers.md`` (one block per preset, the lines of
``bench/preset_header.py`` with the shared baseline's time added), also printed. ``--smoke`` runs every step as
``prunekit run --smoke`` (tiny data, one epoch per phase) and prints the blocks without the refusal of
``preset_header``: its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from _study import config_tree, run_cached
from preset_header import header
from prunekit.config import load_config, parse_config
from prunekit.errors import PrunekitError
from prunekit.io import write_text
from prunekit.pipeline import train_only


def _baseline_key(tree: dict) -> str:
    """What decides the trained baseline: the seed, the model, the data and the baseline sections."""
    part = {k: tree.get(k) for k in ("seed", "model", "data", "baseline")}
    return hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()[:12]


def _baseline(tree: dict, out: Path, command: str, smoke: bool) -> tuple[Path, float]:
    """The shared baseline checkpoint of ``tree`` (trained once) and its training wall time (s)."""
    d = out / f"baseline-{_baseline_key(tree)}"
    state = d / "state.json"
    done = json.loads(state.read_text())["phases"].get("baseline") if state.is_file() else None
    if not (done and (d / "baseline.pt").is_file()):
        print(f"baseline -> {d}", flush=True)
        train_only(parse_config({**tree, "target": None}), d, smoke=smoke, command=command)
        done = json.loads(state.read_text())["phases"]["baseline"]
    return d / "baseline.pt", float(done["wall_s"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("configs", nargs="+")
    ap.add_argument("--out", default="bench/results/presets")
    ap.add_argument("--note", default=None, help="a last line for every block (e.g. what else ran)")
    ap.add_argument(
        "--smoke", action="store_true", help="tiny data, one epoch per phase (the numbers mean nothing)"
    )
    args = ap.parse_args(argv)
    out = Path(args.out)
    command = "python bench/run_presets.py " + " ".join(argv or sys.argv[1:])
    blocks = []
    try:
        for path in args.configs:
            cfg = load_config(path)
            tree = config_tree(cfg)
            base_s = 0.0
            if tree["baseline"].get("train") and not tree["baseline"].get("checkpoint"):
                ckpt, base_s = _baseline(tree, out, command, args.smoke)
                tree["baseline"] = {"checkpoint": str(ckpt), "train": None}
            rep, _, _ = run_cached(
                tree, out / cfg.name, cfg.name, overwrite=False, smoke=args.smoke, command=command
            )
            if base_s:  # the run loaded the shared baseline: add its training time to the wall
                w = rep["wall_s"]
                w["baseline"] = round(w.get("baseline", 0.0) + base_s, 2)
                w["total"] = round(w.get("total", 0.0) + base_s, 2)
            lines = header(rep) + [
                f"  (baseline trained once for the presets that share it: {base_s:.0f} s)"
            ] * (base_s > 0)
            lines += [args.note] if args.note else []
            blocks.append(f"## {path}\n\n" + "\n".join(f"#   {x}" for x in lines))
    except PrunekitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = "\n\n".join(blocks) + "\n"
    write_text(out / "headers.md", f"`{command}`\n\n" + text)
    print(text)
    return 0


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    sys.exit(main())
