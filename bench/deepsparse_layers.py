"""Does weight sparsity buy time? One-node conv graphs in DeepSparse 1.8 at several densities, ONNX Runtime dense as
the reference (issue #16; the BENCHMARKS.md table "DeepSparse (optional backend)").

Each layer of ``LAYERS`` is exported as a one-node ONNX graph (:func:`prunekit.cost.runtimes.onnx_model`; BN folded
as a bias, zeros in 4x1 blocks as :meth:`~prunekit.cost.runtimes.LayerConfig.weight` places them) and timed, one
thread, at every batch size:

- in ONNX Runtime, dense (:func:`prunekit.cost.runtimes.time_interleaved`, median of ``--rounds`` rotated rounds);
- in DeepSparse at each density of ``--densities`` (:func:`prunekit.cost.deepsparse.time_interleaved_onnx`, the
  same rounds, in the DeepSparse interpreter given by ``--deepsparse-python`` or ``PRUNEKIT_DEEPSPARSE_PYTHON``).

Usage::

    OMP_NUM_THREADS=1 python bench/deepsparse_layers.py --deepsparse-python /work/ds-venv/bin/python
    OMP_NUM_THREADS=1 python bench/deepsparse_layers.py --batches 1 --rounds 5        # quicker

Writes ``bench/results/deepsparse/layers.{json,md}`` (ms per batch, and the speed-up over ORT dense) and prints the
table. Without a DeepSparse interpreter it stops with the one-line setup hint. Timings on a shared machine vary: run
it alone, and read differences below the spread of repeated runs as noise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "deepsparse"

# (label, LayerConfig keyword arguments): a ResNet basic-block conv and a bottleneck pointwise conv
LAYERS = {
    "3x3 64→64 @28²": dict(
        kind="conv", c_in=64, c_out=64, kernel=(3, 3), padding=(1, 1), in_spatial=(28, 28)
    ),
    "1x1 256→256 @14²": dict(kind="conv", c_in=256, c_out=256, kernel=(1, 1), in_spatial=(14, 14)),
}


def measure(batches: list[int], densities: list[float], rounds: int, python: str | None) -> list[dict]:
    """One row per (layer, batch): ``ort_dense_ms`` and ``deepsparse_ms`` ``{density: ms}``."""
    import numpy as np
    import onnxruntime as ort

    from prunekit.cost import deepsparse
    from prunekit.cost.runtimes import LayerConfig, onnx_model, time_interleaved

    python = deepsparse.find_python(python)
    rows = []
    for label, kw in LAYERS.items():
        for b in batches:
            dense = LayerConfig(**kw)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = opts.inter_op_num_threads = 1
            sess = ort.InferenceSession(onnx_model(dense, b), opts, providers=["CPUExecutionProvider"])
            x = np.random.default_rng(0).standard_normal(dense.input_shape(b)).astype(np.float32)
            (ort_ms,) = time_interleaved([lambda s=sess, x=x: s.run(None, {"x": x})], "ort", rounds=rounds)
            graphs = [onnx_model(LayerConfig(**kw, density=d), b) for d in densities]
            ds_ms = deepsparse.time_interleaved_onnx(graphs, b, threads=1, rounds=rounds, python=python)
            rows.append(
                {
                    "layer": label,
                    "batch": b,
                    "ort_dense_ms": ort_ms,
                    "deepsparse_ms": {str(d): ms for d, ms in zip(densities, ds_ms, strict=True)},
                }
            )
            print(f"{label} b{b}: ORT {ort_ms:.3f} ms, DeepSparse {rows[-1]['deepsparse_ms']}", flush=True)
    return rows


def markdown(rows: list[dict], densities: list[float]) -> str:
    head = "| layer | batch | ORT dense | " + " | ".join(f"DS d={d:g}" for d in densities) + " |"
    lines = [head, "|---|---:|---:|" + "---:|" * len(densities)]
    for r in rows:
        cells = []
        for d in densities:
            ms = r["deepsparse_ms"][str(d)]
            cells.append(f"{ms:.3f} (x{r['ort_dense_ms'] / ms:.2f})")
        lines.append(f"| {r['layer']} | {r['batch']} | {r['ort_dense_ms']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--deepsparse-python", default=None, help="the DeepSparse environment's interpreter")
    ap.add_argument("--batches", default="1,16", help="comma-separated batch sizes (default 1,16)")
    ap.add_argument("--densities", default="1.0,0.5,0.3,0.1", help="weight densities timed in DeepSparse")
    ap.add_argument("--rounds", type=int, default=9, help="rotated timing rounds (default 9)")
    args = ap.parse_args()
    from prunekit.errors import PrunekitError

    batches = [int(b) for b in args.batches.split(",")]
    densities = [float(d) for d in args.densities.split(",")]
    t0 = time.time()
    try:
        rows = measure(batches, densities, args.rounds, args.deepsparse_python)
    except PrunekitError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    facts = {
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_average": os.getloadavg(),
        "wall_s": time.time() - t0,
        "rounds": args.rounds,
        "rows": rows,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = OUT / "layers.json.tmp"
    tmp.write_text(json.dumps(facts, indent=1) + "\n")
    tmp.replace(OUT / "layers.json")
    md = markdown(rows, densities)
    (OUT / "layers.md").write_text(f"`{facts['command']}` ({facts['date']})\n\n" + md)
    print(md)


if __name__ == "__main__":
    main()
