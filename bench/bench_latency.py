"""Benchmark ONNX Runtime vs eager PyTorch CPU latency of one model.

Times ONNX Runtime (BatchNorm folded, ``ORT_ENABLE_ALL``) at batch 1 and 64 and eager PyTorch at batch 1, prints
a table and writes JSON (atomically). All times are milliseconds per batch.

Examples::

    python bench/bench_latency.py --model resnet20:in_chans=1,num_classes=10
    python bench/bench_latency.py --model tiny_cnn --threads 2 --out bench/results/latency.json

``--model`` takes a prunekit model spec (see ``prunekit.models.registry``) when the model zoo is importable,
or one of the local fallback networks defined here (``tiny_cnn``, ``small_resnet``).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from prunekit.cost.latency import measure_eager_latency, measure_ort_latency
from prunekit.errors import PrunekitError
from prunekit.export import export_onnx
from prunekit.io import write_json

# ----------------------------------------------------------------------------------------- local fallback nets


def _conv_bn(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class _Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.a = _conv_bn(c, c)
        self.b = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.b(self.a(x)))


def tiny_cnn(in_chans: int = 3, num_classes: int = 10) -> nn.Module:
    """Three conv-bn-relu layers (16-32-64 channels) + linear head."""
    return nn.Sequential(
        _conv_bn(in_chans, 16),
        _conv_bn(16, 32, 2),
        _conv_bn(32, 64, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, num_classes),
    )


def small_resnet(in_chans: int = 3, num_classes: int = 10) -> nn.Module:
    """ResNet-20-like: three stages of 3 basic blocks (16/32/64 channels)."""
    layers: list[nn.Module] = [_conv_bn(in_chans, 16)]
    c = 16
    for i, width in enumerate((16, 32, 64)):
        if i:
            layers.append(_conv_bn(c, width, 2))
            c = width
        layers += [_Block(c) for _ in range(3)]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


LOCAL_MODELS: dict[str, Callable[..., nn.Module]] = {"tiny_cnn": tiny_cnn, "small_resnet": small_resnet}


def _parse_local(spec: str) -> nn.Module:
    name, _, opts = spec.partition(":")
    if name not in LOCAL_MODELS:
        raise PrunekitError(f"unknown local model {name!r}: choose one of {', '.join(LOCAL_MODELS)}")
    kwargs = {}
    for item in filter(None, opts.split(",")):
        key, _, value = item.partition("=")
        kwargs[key.strip()] = int(value)
    return LOCAL_MODELS[name](**kwargs)


def build_model(spec: str) -> tuple[nn.Module, str]:
    """Model from a local fallback name, else from the prunekit model zoo; returns (model, source)."""
    if spec.partition(":")[0] in LOCAL_MODELS:
        return _parse_local(spec), "bench-local"
    try:
        from prunekit.models import create_model
    except ImportError:
        try:
            from prunekit.models.registry import create_model
        except ImportError:
            raise PrunekitError(
                f"prunekit.models is not importable; use a local model: {', '.join(LOCAL_MODELS)}"
            ) from None
    return create_model(spec), "prunekit.models"


def first_in_channels(model: nn.Module) -> int:
    """``in_channels`` of the first Conv2d (the input's C)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    raise PrunekitError("model has no Conv2d; give --input-shape C,H,W")


# ------------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny_cnn", help="model spec, e.g. resnet20:in_chans=1,num_classes=10")
    p.add_argument("--input-shape", default=None, help="C,H,W (default: first conv's in_channels,32,32)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads for both backends")
    p.add_argument("--batch-sizes", default="1,64", help="ONNX Runtime batch sizes (comma separated)")
    p.add_argument("--repeats", type=int, default=50, help="target timed runs per batch size")
    p.add_argument(
        "--max-time", type=float, default=8.0, help="seconds of timed runs per batch size, at most"
    )
    p.add_argument("--out", default="bench/results/latency.json", help="JSON output path")
    args = p.parse_args(argv)

    try:
        model, source = build_model(args.model)
        if args.input_shape:
            try:
                chw = tuple(int(s) for s in args.input_shape.split(","))
            except ValueError:
                raise PrunekitError(f"--input-shape must be C,H,W ints, got {args.input_shape!r}") from None
        else:
            chw = (first_in_channels(model), 32, 32)
        batches = [int(b) for b in args.batch_sizes.split(",")]
        model.eval()

        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            info = export_onnx(model, Path(d) / "model.onnx", (1, *chw))
            export_s = time.perf_counter() - t0
            ort = measure_ort_latency(
                info.path,
                chw,
                batch_sizes=batches,
                threads=args.threads,
                repeats=args.repeats,
                max_time_s=args.max_time,
            )
        eager = measure_eager_latency(model, chw, batch_sizes=(1,), threads=args.threads)
    except PrunekitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    speedup = eager[1].median_ms / ort[1].median_ms if 1 in ort else None
    n_params = sum(p.numel() for p in model.parameters())
    result = {
        "model": args.model,
        "model_source": source,
        "params": n_params,
        "input_shape_chw": list(chw),
        "threads": args.threads,
        "onnx": {k: v for k, v in info.to_dict().items() if k != "path"} | {"export_s": round(export_s, 2)},
        "ort": {str(b): s.to_dict() for b, s in ort.items()},
        "eager": {str(b): s.to_dict() for b, s in eager.items()},
        "speedup_ort_vs_eager_b1": speedup,
        "env": {
            "torch": torch.__version__,
            "onnxruntime": __import__("onnxruntime").__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "processor": platform.processor() or None,
            "cpu_count": os.cpu_count(),
        },
    }

    print(f"{args.model} ({source}), {n_params / 1e6:.3f} M params, input {chw}, {args.threads} thread(s)")
    print(
        f"  ONNX: {info.exporter} exporter, opset {info.opset}, {info.size_bytes / 1024:.1f} KiB, {export_s:.1f} s"
    )
    print(f"  {'backend':<12} {'batch':>5} {'median ms':>10} {'p10':>9} {'p90':>9} {'ms/img':>9} {'runs':>5}")
    for stats in [*ort.values(), *eager.values()]:
        print(
            f"  {stats.backend:<12} {stats.batch:>5} {stats.median_ms:>10.3f} {stats.p10_ms:>9.3f} "
            f"{stats.p90_ms:>9.3f} {stats.per_image_ms:>9.4f} {stats.repeats:>5}"
        )
    if speedup is not None:
        print(f"  ORT vs eager speedup at batch 1: {speedup:.1f}x")
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
