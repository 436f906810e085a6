"""Timing one layer on its own, in the runtime that will run the model: the measuring half of a latency table.

A :class:`LayerConfig` is one conv / transposed conv / linear at given kept channels, group count and weight
density, at the input size it runs at in the model (BatchNorm folded: a conv with a bias, as on export). Each
runtime builds a runnable for it and times it:

* ``ort`` (default): a one-node ONNX graph (``Conv`` / ``ConvTranspose`` / ``Gemm``) built with :mod:`onnx.helper`
  (no exporter round trip: milliseconds per configuration), run by ONNX Runtime on the CPU with ``threads``
  intra-op threads.
* ``torch``: the ``nn.Conv2d`` / ``nn.Linear`` module in eager mode (``torch.set_num_threads``). glibc malloc page
  faults made eager timings up to 2x slower at batch 16 (``shared/reference/cpu-runtimes.md``): the measuring
  process must run with :data:`GLIBC_TUNABLES` in its environment (``prunekit lut build`` re-executes itself with it).
* ``cuda``: the torch module on a CUDA device, timed with CUDA events (needs a GPU; not measured on the CI machine).

:func:`time_interleaved` times many runnables in rotated rounds (median of the per-round medians, warm-up
excluded), so a shared machine's changing load spreads over all of them instead of biasing some.
"""

from __future__ import annotations

import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from prunekit.errors import PrunekitError

RUNTIMES = ("ort", "torch", "cuda", "deepsparse")
GLIBC_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296:glibc.malloc.top_pad=67108864"


@dataclass(frozen=True)
class LayerConfig:
    """One layer to time. ``kind``: ``conv``, ``conv_transpose`` or ``linear``; ``c_in`` / ``c_out``: kept channels
    (features); ``groups``: conv groups (``c_in`` for a depthwise conv); ``kernel``, ``stride``, ``padding``,
    ``dilation``, ``output_padding``: as the module's; ``in_spatial``: the input's ``(H, W)`` (``(rows,)`` or ``()``
    for a linear); ``density``: fraction of non-zero weights (zeros in 4x1 blocks; runtimes that do not skip zeros
    time it like a dense layer); ``bias``."""

    kind: str
    c_in: int
    c_out: int
    groups: int = 1
    kernel: tuple[int, ...] = (1, 1)
    stride: tuple[int, ...] = (1, 1)
    padding: tuple[int, ...] = (0, 0)
    dilation: tuple[int, ...] = (1, 1)
    output_padding: tuple[int, ...] = (0, 0)
    in_spatial: tuple[int, ...] = ()
    density: float = 1.0
    bias: bool = True

    def input_shape(self, batch: int) -> tuple[int, ...]:
        if self.kind == "linear":
            return (batch, *self.in_spatial, self.c_in)
        return (batch, self.c_in, *self.in_spatial)

    def weight(self, seed: int = 0) -> np.ndarray:
        """A random float32 weight in PyTorch's layout, with ``1 - density`` of it zero in 4x1 blocks."""
        rng = np.random.default_rng(seed)
        if self.kind == "linear":
            shape = (self.c_out, self.c_in)
        elif self.kind == "conv_transpose":
            shape = (self.c_in, self.c_out // self.groups, *self.kernel)
        else:
            shape = (self.c_out, self.c_in // self.groups, *self.kernel)
        w = rng.standard_normal(shape).astype(np.float32) * 0.05
        if self.density < 1.0:
            flat = w.reshape(shape[0], -1)
            rows = shape[0] // 4 * 4
            blocks = flat[:rows].reshape(rows // 4, 4, -1)
            keep = rng.random((rows // 4, 1, blocks.shape[2])) < self.density
            flat[:rows] = (blocks * keep).reshape(rows, -1)
        return w


def machine_signature(runtime: str, threads: int) -> dict:
    """What a latency table is only valid for: runtime and version, thread count, CPU model and ISA."""
    cpu, isa = platform.processor() or platform.machine(), []
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="ignore")
        names = [line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")]
        cpu = names[0] if names else cpu
        flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
        isa = [f for f in ("avx512f", "avx512_vnni", "avx2", "fma", "amx_tile", "neon") if f" {f}" in flags]
    except OSError:
        pass
    if runtime == "ort":
        import onnxruntime

        version = f"onnxruntime {onnxruntime.__version__}"
    elif runtime == "deepsparse":
        from prunekit.cost.deepsparse import probe

        found = probe()
        version = f"deepsparse {found['deepsparse']}"
        isa = [found["isa"]] if found.get("isa") else isa
    else:
        version = f"torch {torch.__version__}"
        if runtime == "cuda" and torch.cuda.is_available():
            cpu = torch.cuda.get_device_name(0)
    return {"runtime": runtime, "version": version, "threads": int(threads), "cpu": cpu, "isa": isa}


# ---------------------------------------------------------------------------------------------- runnables
def onnx_model(cfg: LayerConfig, batch: int) -> bytes:
    """``cfg`` as a one-node ONNX model (serialised) with a fixed input ``[batch, c_in, *in_spatial]``: ``Conv`` /
    ``ConvTranspose`` with a bias (BN folded), ``Gemm`` (or ``MatMul`` + ``Add`` on ``[N, rows, C]``) for a linear;
    weights from :meth:`LayerConfig.weight` (its density's zeros included)."""
    from onnx import TensorProto, helper, numpy_helper

    w = cfg.weight()
    inits = [numpy_helper.from_array(w, "W")]
    inputs = ["x", "W"]
    if cfg.bias:
        inits.append(numpy_helper.from_array(np.zeros(cfg.c_out, dtype=np.float32), "B"))
        inputs.append("B")
    in_shape = list(cfg.input_shape(batch))
    if cfg.kind == "linear":
        node = helper.make_node("Gemm", inputs, ["y"], transB=1) if len(in_shape) == 2 else None
        if node is None:  # a linear on [N, rows, C]: MatMul + Add
            inits[0] = numpy_helper.from_array(np.ascontiguousarray(w.T), "W")
            nodes = [helper.make_node("MatMul", ["x", "W"], ["m"])]
            nodes.append(
                helper.make_node("Add", ["m", "B"], ["y"])
                if cfg.bias
                else helper.make_node("Identity", ["m"], ["y"])
            )
        else:
            nodes = [node]
    else:
        pads = [*cfg.padding, *cfg.padding]
        attrs = dict(
            kernel_shape=list(cfg.kernel), strides=list(cfg.stride), pads=pads, dilations=list(cfg.dilation)
        )
        attrs["group"] = int(cfg.groups)
        op = "Conv"
        if cfg.kind == "conv_transpose":
            op, attrs["output_padding"] = "ConvTranspose", list(cfg.output_padding)
        nodes = [helper.make_node(op, inputs, ["y"], **attrs)]
    graph = helper.make_graph(
        nodes,
        "layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _torch_module(cfg: LayerConfig) -> nn.Module:
    if cfg.kind == "linear":
        mod: nn.Module = nn.Linear(cfg.c_in, cfg.c_out, bias=cfg.bias)
    else:
        conv = {1: (nn.Conv1d, nn.ConvTranspose1d), 2: (nn.Conv2d, nn.ConvTranspose2d)}[len(cfg.kernel)]
        kw = dict(
            stride=cfg.stride, padding=cfg.padding, dilation=cfg.dilation, groups=cfg.groups, bias=cfg.bias
        )
        if cfg.kind == "conv_transpose":
            mod = conv[1](cfg.c_in, cfg.c_out, cfg.kernel, output_padding=cfg.output_padding, **kw)
        else:
            mod = conv[0](cfg.c_in, cfg.c_out, cfg.kernel, **kw)
    with torch.no_grad():
        mod.weight.copy_(torch.from_numpy(cfg.weight()))
    return mod.eval()


def runnable(cfg: LayerConfig, batch: int, runtime: str, threads: int) -> Callable[[], None]:
    """A zero-argument callable running ``cfg`` once at ``batch`` in ``runtime``.

    Raises:
        PrunekitError: unknown runtime, or ``cuda`` without a GPU.
    """
    if runtime == "ort":
        from prunekit.export import ort_session

        sess = ort_session(onnx_model(cfg, batch), threads=threads)
        feed = {"x": np.random.default_rng(1).standard_normal(cfg.input_shape(batch)).astype(np.float32)}
        return lambda: sess.run(None, feed)
    if runtime in ("torch", "cuda"):
        device = "cuda" if runtime == "cuda" else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise PrunekitError(
                "runtime cuda needs a CUDA GPU; this machine has none (use --runtime ort or torch)"
            )
        mod = _torch_module(cfg).to(device)
        x = torch.randn(cfg.input_shape(batch), device=device)

        def run() -> None:
            with torch.no_grad():
                mod(x)

        return run
    raise PrunekitError(f"unknown runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")


def _time_once(fn: Callable[[], None], runtime: str, runs: int) -> float:
    """Median ms of ``runs`` calls (CUDA: events around each call)."""
    times = []
    for _ in range(runs):
        if runtime == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter_ns()
            fn()
            times.append((time.perf_counter_ns() - t0) / 1e6)
    return float(statistics.median(times))


def time_interleaved(
    fns: Sequence[Callable[[], None]],
    runtime: str,
    *,
    rounds: int = 3,
    warmup: int = 2,
    min_time_s: float = 0.01,
    min_runs: int = 3,
    max_runs: int = 50,
    on_round: Callable[[], None] | None = None,
) -> list[float]:
    """Median over ``rounds`` rotated rounds of each runnable's per-round median (ms); ``warmup`` untimed calls
    first. The runs per round are sized from the warm-up to last about ``min_time_s`` (between ``min_runs`` and
    ``max_runs``)."""
    runs = []
    for fn in fns:
        t0 = time.perf_counter()
        for _ in range(max(1, warmup)):
            fn()
        est = max((time.perf_counter() - t0) / max(1, warmup), 1e-6)
        runs.append(int(min(max_runs, max(min_runs, math.ceil(min_time_s / est)))))
    per: list[list[float]] = [[] for _ in fns]
    order = list(range(len(fns)))
    for r in range(rounds):
        rotated = order[r % len(order) :] + order[: r % len(order)] if order else []
        for i in rotated:
            per[i].append(_time_once(fns[i], runtime, runs[i]))
        if on_round is not None:
            on_round()
    return [float(statistics.median(p)) for p in per]
