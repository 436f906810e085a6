"""How ONNX Runtime's conv cost depends on the channel count (issue #16): one ``c -> c`` conv per count, timed alone.

Usage::

    OMP_NUM_THREADS=1 python bench/ort_channel_sweep.py [--kernel 3] [--size 28] [--max 48] [--batch 1]

Prints one markdown row of ms per count (median of interleaved rounds, prunekit's own one-node graphs and timer,
:func:`prunekit.cost.runtimes.time_interleaved`) and, per count, whether ONNX Runtime runs it blocked (NCHWc) by
prunekit's rule (:mod:`prunekit.cost.ort_layout`). Results go to BENCHMARKS.md by hand, with the date and load.
"""

from __future__ import annotations

import argparse

from prunekit.cost.latency import channel_multiple
from prunekit.cost.ort_layout import input_alignment
from prunekit.cost.runtimes import LayerConfig, runnable, time_interleaved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernel", type=int, default=3)
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--max", type=int, default=48)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    k, pad = args.kernel, args.kernel // 2
    counts = list(range(4, args.max + 1))
    cfgs = [
        LayerConfig(
            kind="conv", c_in=c, c_out=c, kernel=(k, k), padding=(pad, pad), in_spatial=(args.size, args.size)
        )
        for c in counts
    ]
    ms = time_interleaved(
        [runnable(c, args.batch, "ort", 1) for c in cfgs], "ort", rounds=args.rounds, min_time_s=0.05
    )
    block, align = channel_multiple(), input_alignment(channel_multiple())
    print(
        f"block {block}, input alignment {align}; {k}x{k} conv c -> c at {args.size}x{args.size}, batch {args.batch}"
    )
    print("| c | " + " | ".join(map(str, counts)) + " |")
    print("|---|" + "---|" * len(counts))
    print("| ms | " + " | ".join(f"{t:.3f}" for t in ms) + " |")
    blocked = ["B" if (c < block or c % align == 0) else "n" for c in counts]
    print("| blocked | " + " | ".join(blocked) + " |")


if __name__ == "__main__":
    main()
