"""Latency tables on this machine (issue #16): build time, prediction error, predictor speed.

For each case (model, input size, batch sizes, grid) this runs, one after another and with one thread::

    prunekit lut build MODEL --input-size S --batch B1,B2 --points P --groups G --out bench/results/lut/TAG.lut.json
    prunekit lut eval  MODEL --input-size S --lut ... --batch B --plans N [--weights] --out .../TAG.eval-bB.json

(both resumable: a finished step is skipped; a killed build continues where it stopped), then measures how many
plans per second :meth:`LatencyModel.batch` predicts, and writes ``bench/results/lut/summary.md`` + ``.json``.

Usage::

    OMP_NUM_THREADS=1 python bench/bench_lut.py                  # every case
    OMP_NUM_THREADS=1 python bench/bench_lut.py --cases resnet20-fmnist
    OMP_NUM_THREADS=1 python bench/bench_lut.py --cases resnet20-fmnist --recalibrate   # new overhead, same grids
    OMP_NUM_THREADS=1 python bench/bench_lut.py --out bench/results/lut-avx512   # another machine's results

It does not compare runtimes (ONNX Runtime only) and measures on whatever load the machine has: the eval reports
the measurement noise beside the error, and the ratio error (each plan timed back to back with the unpruned model)
is the one a latency_ratio target depends on.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "lut"
CASES = {
    "resnet20-fmnist": {
        "model": "resnet20:in_chans=1",
        "size": 28,
        "batches": [1, 64],
        "points": 7,
        "plans": 30,
    },
    "mobilenet_v2-224": {"model": "mobilenet_v2", "size": 224, "batches": [1], "points": 5, "plans": 20},
    "resnet50-224": {"model": "resnet50", "size": 224, "batches": [1], "points": 5, "plans": 20},
}


def _run(args: list[str]) -> float:
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PRUNEKIT_NO_PROGRESS": "1"}
    subprocess.run([sys.executable, "-m", "prunekit.cli", *args], check=True, env=env, cwd=ROOT)
    return time.perf_counter() - t0


def _speed(model: str, size: int, lut: Path, n: int = 4000) -> float:
    """Plans per second of LatencyModel.batch on ``n`` random width vectors (best of 3)."""
    from prunekit.cost.lut import load_table
    from prunekit.cost.predict import LatencyModel
    from prunekit.models import create_model
    from prunekit.space import ChannelSpace

    net = create_model(model)
    space = ChannelSpace.build(net, (1, 3 if "in_chans=1" not in model else 1, size, size), quiet=True)
    lm = LatencyModel(load_table(lut, allow_mismatch=True), space)
    rng = np.random.default_rng(0)
    widths = np.stack([rng.integers(1, space.channels + 1) for _ in range(n)])
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        lm.batch(widths)
        best = min(best, time.perf_counter() - t0)
    return n / best


def run_case(
    tag: str, case: dict, weights: bool, recalibrate: bool = False, rounds: int = 3, out: Path = OUT
) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    lut = out / f"{tag}.lut.json"
    if recalibrate and lut.is_file():  # keep the layer grids, measure the overhead and the evals again
        table = json.loads(lut.read_text())
        table["overhead"] = None
        lut.write_text(json.dumps(table, indent=1) + "\n")
        for ev in out.glob(f"{tag}.eval-b*.json"):
            ev.unlink()
    common = [case["model"], "--input-size", str(case["size"])]
    facts: dict = {"tag": tag, **case}
    build = [*common, "--batch", ",".join(map(str, case["batches"])), "--points", str(case["points"])]
    if not lut.is_file() or not json.loads(lut.read_text()).get("overhead"):
        facts["build_wall_s"] = _run(["lut", "build", *build, "--out", str(lut)])
    table = json.loads(lut.read_text())
    facts["build_s"] = table["build_s"]
    facts["signatures"] = len(table["entries"])
    facts["layers"] = len(table["layer_entry"])
    for b in case["batches"]:
        ev = out / f"{tag}.eval-b{b}.json"
        if not ev.is_file():
            extra = ["--weights"] if weights else []
            _run(
                [
                    "lut",
                    "eval",
                    *common,
                    "--lut",
                    str(lut),
                    "--batch",
                    str(b),
                    "--plans",
                    str(case["plans"]),
                    "--rounds",
                    str(rounds),
                    *extra,
                    "--out",
                    str(ev),
                ]
            )
        data = json.loads(ev.read_text())
        facts[f"eval_b{b}"] = {k: v for k, v in data.items() if k != "rows"}
    facts["predictions_per_s"] = _speed(case["model"], case["size"], lut)
    return facts


def _markdown(rows: list[dict]) -> str:
    head = (
        "| case | layers (signatures) | build s | batch | median err | p90 err | within 10% | ratio: median / "
        "p90 / within 10% | noise | plans/s |"
    )
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        for b in r["batches"]:
            e = r[f"eval_b{b}"]
            lines.append(
                f"| {r['tag']} | {r['layers']} ({r['signatures']}) | {r['build_s']:.0f} | {b} | "
                f"{e['median_abs_error']:.1%} | {e['p90_abs_error']:.1%} | {e['within_10pct']:.0%} | "
                f"{e['ratio_median_abs_error']:.1%} / {e['ratio_p90_abs_error']:.1%} / {e['ratio_within_10pct']:.0%} | "
                f"{e['median_noise']:.1%} | {r['predictions_per_s']:,.0f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated case tags")
    ap.add_argument("--weights", action="store_true", help="eval plans with densities and 2-group convs too")
    ap.add_argument(
        "--recalibrate",
        action="store_true",
        help="keep the layer grids; re-measure the overhead and the evals",
    )
    ap.add_argument(
        "--rounds", type=int, default=3, help="interleaved timing rounds of the evals (default 3)"
    )
    ap.add_argument(
        "--out", type=Path, default=OUT, help="results folder (default bench/results/lut; one per machine)"
    )
    args = ap.parse_args()
    rows = []
    summary = args.out / "summary.json"
    old = {r["tag"]: r for r in json.loads(summary.read_text())} if summary.is_file() else {}
    for tag in args.cases.split(","):
        rows.append(run_case(tag, CASES[tag], args.weights, args.recalibrate, args.rounds, args.out))
        old[tag] = rows[-1]
        summary.write_text(json.dumps(list(old.values()), indent=1) + "\n")
        (args.out / "summary.md").write_text(_markdown(list(old.values())))
        print(_markdown(rows[-1:]), flush=True)


if __name__ == "__main__":
    main()
