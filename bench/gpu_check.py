"""GPU checks of issue #15 for a lent CUDA machine: mixed precision, channels_last, and `prunekit run` on nccl.

Usage (on the GPU machine, from the repository root; ``bench/gpu_check.sh`` installs the missing packages first):
    python bench/gpu_check.py --out DIR

1. **Training step precision and layout.** ResNet-20 (Fashion-MNIST shape, 1x28x28, random labels) trained for
   ``--steps`` steps at batch 256 by :func:`prunekit.train.fit` with ``amp: none | bf16 | fp16`` and ``channels_last``
   off / on: images per second, the final loss, the parameters' dtype (float32 whatever the autocast dtype), and
   under fp16 the loss scale of the GradScaler.
2. **`prunekit run` under torchrun on nccl.** A tiny magnitude run on scikit-learn's digits (bundled, no download),
   ``device: cuda``, the baseline and finetune in bf16 with channels_last, launched with ``torchrun --nproc_per_node
   N`` (N = the visible GPUs): it must finish, rank 0 writing the report.

Writes ``DIR/gpu_check.json`` and prints it. Exit status 1 when a check fails; 2 without a CUDA device.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


class _Loader:
    """``steps`` batches of random images and labels on the CPU (pinned where CUDA is), with ``len()``."""

    def __init__(self, steps: int, batch: int):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(batch, 1, 28, 28, generator=g)
        self.y = torch.randint(0, 10, (batch,), generator=g)
        if torch.cuda.is_available():
            self.x, self.y = self.x.pin_memory(), self.y.pin_memory()
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            yield self.x, self.y


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def precision_checks(steps: int, device: str = "cuda") -> list[dict]:
    from prunekit.models import create_model
    from prunekit.train import Callback, TrainConfig, fit

    class Scale(Callback):
        value = None

        def on_step_end(self, state):
            if state.scaler is not None:
                self.value = float(state.scaler.get_scale())

    rows = []
    for amp in ("none", "bf16", "fp16") if device.startswith("cuda") else ("none", "bf16"):
        for cl in (False, True):
            torch.manual_seed(0)
            model = create_model("resnet20", num_classes=10, in_chans=1)
            cb = Scale()
            cfg = TrainConfig(epochs=1, lr=0.05, amp=amp, channels_last=cl, log_every=10_000)
            _sync(device)
            t0 = time.perf_counter()
            res = fit(model, _Loader(steps, 256), cfg, device=device, callbacks=[cb])
            _sync(device)
            rows.append(
                {
                    "amp": amp,
                    "channels_last": cl,
                    "img_s": steps * 256 / (time.perf_counter() - t0),
                    "final_loss": res.history[-1]["train_loss"],
                    "param_dtypes": sorted({str(p.dtype) for p in model.parameters()}),
                    "loss_scale": cb.value,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def torchrun_check(out: Path) -> dict:
    gpus = torch.cuda.device_count()
    tree = {
        "model": "resnet20:width_mult=0.5",
        "device": "cuda",
        "data": {"name": "digits", "batch_size": 64},
        "baseline": {"train": {"epochs": 2, "lr": 0.1, "amp": "bf16", "channels_last": True}},
        "target": {"macs_ratio": 0.5},
        "method": {"name": "magnitude"},
        "finetune": {"epochs": 1, "lr": 0.01, "amp": "bf16", "channels_last": True},
        "export": {"onnx": True, "latency": False},
    }
    cfg = Path(tempfile.mkdtemp()) / "gpu.yaml"
    cfg.write_text(yaml.safe_dump(tree))
    run_dir = out / "torchrun-run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(gpus), "-m", "prunekit.cli"]
    cmd += ["run", str(cfg), "--out", str(run_dir), "--overwrite"]
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "PRUNEKIT_NO_PROGRESS": "1"}
    )
    row = {"gpus": gpus, "returncode": proc.returncode, "wall_s": time.perf_counter() - t0}
    if proc.returncode == 0:
        rep = json.loads((run_dir / "report.json").read_text())
        row.update(baseline_top1=rep["baseline"]["top1"], pruned_top1=rep["pruned"]["top1"])
        row["macs_ratio"] = rep["pruned"]["macs"] / rep["baseline"]["macs"]
    else:
        row["stderr_tail"] = proc.stderr[-3000:]
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("error: no CUDA device visible; run this on the lent GPU machine", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "precision": precision_checks(args.steps),
        "torchrun": torchrun_check(out),
    }
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2))
    ok = result["torchrun"]["returncode"] == 0 and all(
        r["param_dtypes"] == ["torch.float32"] and r["final_loss"] == r["final_loss"]
        for r in result["precision"]
    )
    print("all checks passed" if ok else "a check FAILED", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
