"""Measured CPU latency: ONNX Runtime (deployment) and eager PyTorch (reference).

All times are wall-clock **milliseconds per forward pass of one batch** (not per image).

ONNX Runtime is what prunekit reports as deployment latency: on a small CPU it is typically 5-15x faster
than eager PyTorch at batch 1, so eager timings would mostly measure Python/dispatcher overhead and
misjudge which pruned layers actually matter.

Time bounding (:func:`measure_ort_latency`): for every batch size, warm-up stops early once it has used a
quarter of ``max_time_s``; the median warm-up run estimates the cost ``t`` of one run, and the number of
timed runs is ``repeats`` raised to fill ``min_time_s`` (tiny models: more samples, less noise) and lowered to
fit ``max_time_s`` (big models at batch 64: fewer samples), but never below ``min_repeats``. So one batch size
costs at most about ``1.25 * max_time_s`` unless a single run is slower than ``max_time_s / min_repeats``.

The timing loop :func:`_time_session` takes any ONNX Runtime session and input feed, so a per-layer lookup
table (time one conv configuration exported on its own) can reuse it.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.export import eval_mode, export_onnx, ort_session

__all__ = ["LatencyStats", "interleaved_ort_latency", "measure_eager_latency", "measure_ort_latency"]

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one forward pass of one batch, in milliseconds.

    Attributes:
        median_ms, p10_ms, p90_ms, mean_ms: statistics over the timed runs (ms per batch).
        repeats: number of timed runs the statistics are computed from.
        batch: batch size N of the input ``(N, C, H, W)``.
        threads: intra-op threads used.
        backend: ``"onnxruntime"`` or ``"torch-eager"``.
    """

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    repeats: int
    batch: int
    threads: int
    backend: str = "onnxruntime"

    @property
    def per_image_ms(self) -> float:
        """Median milliseconds per image (``median_ms / batch``)."""
        return self.median_ms / self.batch

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of the fields."""
        return asdict(self)


def _stats(times_ms: Sequence[float], batch: int, threads: int, backend: str, repeats: int | None = None):
    a = np.asarray(times_ms, dtype=np.float64)
    p10, med, p90 = np.percentile(a, [10, 50, 90])
    return LatencyStats(
        median_ms=float(med),
        p10_ms=float(p10),
        p90_ms=float(p90),
        mean_ms=float(a.mean()),
        repeats=int(repeats if repeats is not None else a.size),
        batch=int(batch),
        threads=int(threads),
        backend=backend,
    )


def _chw(input_shape: Sequence[int]) -> tuple[int, int, int]:
    """``(C, H, W)`` from ``(C, H, W)`` or ``(N, C, H, W)`` (N is ignored)."""
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) == 4:
        shape = shape[1:]
    if len(shape) != 3 or any(s <= 0 for s in shape):
        raise PrunekitError(
            f"input_shape must be (C, H, W) or (N, C, H, W) positive ints, got {input_shape!r} (e.g. (3, 32, 32))"
        )
    return shape  # type: ignore[return-value]


def _check_batches(batch_sizes: Iterable[int]) -> list[int]:
    batches = [int(b) for b in batch_sizes]
    if not batches or any(b <= 0 for b in batches):
        raise PrunekitError(f"batch_sizes must be positive ints, got {list(batch_sizes)!r}")
    return list(dict.fromkeys(batches))


def _time_session(
    session: Any,
    feed: Mapping[str, np.ndarray],
    warmup: int = 10,
    repeats: int = 50,
    *,
    min_time_s: float = 0.0,
    max_time_s: float = float("inf"),
    min_repeats: int = 5,
) -> list[float]:
    """Time ``session.run(None, feed)``; return the per-run wall times in milliseconds.

    At least one warm-up run is made; warm-up stops early after ``max_time_s / 4``. The number of timed runs
    is ``repeats`` adjusted to take about ``[min_time_s, max_time_s]`` seconds, and at least ``min_repeats``
    (see the module docstring). Reusable for any session (e.g. a single conv layer for a lookup table).
    """
    warm: list[int] = []
    budget_ns = max_time_s * 1e9
    start = time.perf_counter_ns()
    for _ in range(max(1, warmup)):
        t0 = time.perf_counter_ns()
        session.run(None, feed)
        warm.append(time.perf_counter_ns() - t0)
        if time.perf_counter_ns() - start > budget_ns / 4:
            break
    # The first run (allocations, kernel selection) is not representative when there are others.
    est_ns = max(float(np.median(warm[1:] if len(warm) > 1 else warm)), 1.0)
    n = max(int(repeats), math.ceil(min_time_s * 1e9 / est_ns))
    if math.isfinite(budget_ns):
        n = min(n, int(budget_ns / est_ns))
    n = max(n, int(min_repeats), 1)

    times: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        session.run(None, feed)
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return times


def _session_batch(session: Any) -> int | None:
    """The fixed batch size of the session's first input, or ``None`` if it is symbolic."""
    dim0 = session.get_inputs()[0].shape[0]
    return dim0 if isinstance(dim0, int) and dim0 > 0 else None


def export_for_timing(
    model: nn.Module, path: str | os.PathLike, input_shape: Sequence[int], *, exporter: str = "auto"
) -> Path:
    """Export ``model`` to ``path`` the way latency is measured: BatchNorm folded, dynamic batch, not verified.

    ``input_shape``: ``(C, H, W)`` or ``(N, C, H, W)`` (N is ignored); ``exporter``: as
    :func:`prunekit.export.export_onnx` (``"torchscript"`` for DeepSparse 1.8, which reads opset <= 19). Returns
    ``path``.

    Raises:
        prunekit.export.ExportError: the model cannot be exported.
    """
    c, h, w = _chw(input_shape)
    export_onnx(model, path, (1, c, h, w), fold_bn=True, dynamic_batch=True, verify=False, exporter=exporter)
    return Path(path)


def measure_ort_latency(
    model_or_onnx_path: nn.Module | str | os.PathLike,
    input_shape: Sequence[int],
    *,
    batch_sizes: Sequence[int] = (1, 64),
    threads: int = 1,
    warmup: int = 10,
    repeats: int = 50,
    min_time_s: float = 0.25,
    max_time_s: float = 8.0,
    min_repeats: int = 5,
    seed: int = 0,
) -> dict[int, LatencyStats]:
    """Measure ONNX Runtime CPU latency (ms per batch) at each batch size.

    An ``nn.Module`` is first exported (BatchNorm folded, dynamic batch, not verified) to a temporary file
    that is deleted afterwards; a path is loaded as is. The session uses :func:`prunekit.export.ort_session`
    (``threads`` intra-op threads, 1 inter-op thread, all graph optimisations). Input is random
    ``N(0, 1)`` of shape ``(batch, C, H, W)``; each ``session.run`` is timed with ``time.perf_counter_ns``.

    Args:
        model_or_onnx_path: the network, or an ``.onnx`` file (single input ``(N, C, H, W)``).
        input_shape: ``(C, H, W)`` or ``(N, C, H, W)``; N is ignored (``batch_sizes`` sets it).
        batch_sizes: batch sizes to time (each gets its own warm-up).
        threads: ONNX Runtime intra-op threads.
        warmup: warm-up runs per batch size (cut short after ``max_time_s / 4``).
        repeats: target number of timed runs per batch size, adjusted to the time bounds below.
        min_time_s: timed runs are added until they take at least this long (seconds).
        max_time_s: timed runs are dropped so that they take at most about this long (seconds).
        min_repeats: lower bound on timed runs regardless of ``max_time_s``.
        seed: seed of the random input.

    Returns:
        ``{batch: LatencyStats}`` in the order of ``batch_sizes`` (milliseconds).

    Raises:
        PrunekitError: bad shapes / batch sizes, a missing or unloadable ``.onnx`` file, or a file whose
            batch dimension is fixed to a value other than a requested batch size.
        prunekit.export.ExportError: an ``nn.Module`` that cannot be exported.
    """
    c, h, w = _chw(input_shape)
    batches = _check_batches(batch_sizes)
    if isinstance(model_or_onnx_path, nn.Module):
        with tempfile.TemporaryDirectory(prefix="prunekit-lat-") as tmpdir:
            onnx_path = export_for_timing(model_or_onnx_path, Path(tmpdir) / "model.onnx", input_shape)
            session = ort_session(onnx_path, threads=threads)
    else:
        session = ort_session(model_or_onnx_path, threads=threads)

    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise PrunekitError(f"ONNX model has {len(inputs)} inputs; latency measurement needs exactly one")
    fixed = _session_batch(session)
    if fixed is not None and any(b != fixed for b in batches):
        raise PrunekitError(
            f"ONNX model has a fixed batch size {fixed}, cannot time batch sizes {batches} "
            "(re-export with export_onnx(..., dynamic_batch=True))"
        )
    dtype = _ORT_DTYPES.get(inputs[0].type, np.float32)
    rng = np.random.default_rng(seed)
    results: dict[int, LatencyStats] = {}
    for b in batches:
        feed = {inputs[0].name: rng.standard_normal((b, c, h, w)).astype(dtype)}
        try:
            times = _time_session(
                session,
                feed,
                warmup,
                repeats,
                min_time_s=min_time_s,
                max_time_s=max_time_s,
                min_repeats=min_repeats,
            )
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise PrunekitError(
                f"ONNX Runtime failed on input {(b, c, h, w)}: {first} (does input_shape match the model?)"
            ) from None
        results[b] = _stats(times, b, threads, "onnxruntime")
    return results


def interleaved_ort_latency(
    models: Sequence[tuple[nn.Module | str | os.PathLike, Sequence[int]]],
    *,
    batch_sizes: Sequence[int] = (1, 64),
    rounds: int = 3,
    threads: int = 1,
    **kwargs: Any,
) -> list[dict[int, list[float]]]:
    """Time several models with ONNX Runtime in ``rounds`` interleaved rounds (every model once per round).

    Interleaving spreads a slow phase of a shared machine over all models instead of one; take the median over
    rounds of the per-round medians (``statistics.median``) as each model's latency. Each ``nn.Module`` is exported
    once (:func:`export_for_timing`) and its file timed in every round.

    Args:
        models: ``(model or .onnx path, input_shape)`` pairs, as :func:`measure_ort_latency` takes them.
        batch_sizes, threads, kwargs: passed to :func:`measure_ort_latency`.
        rounds: number of rounds (>= 1).

    Returns:
        per model, in order, ``{batch: [median ms per batch of round 1, round 2, ...]}``.

    Raises:
        PrunekitError: ``rounds < 1``, or any error of :func:`measure_ort_latency`.
    """
    if rounds < 1:
        raise PrunekitError(f"rounds must be >= 1, got {rounds}")
    batches = _check_batches(batch_sizes)
    out: list[dict[int, list[float]]] = [{b: [] for b in batches} for _ in models]
    with tempfile.TemporaryDirectory(prefix="prunekit-lat-") as tmpdir:
        files = [  # each module exported once, not once per round
            export_for_timing(m, Path(tmpdir) / f"model{i}.onnx", shape) if isinstance(m, nn.Module) else m
            for i, (m, shape) in enumerate(models)
        ]
        for _ in range(rounds):
            for times, path, (_, shape) in zip(out, files, models, strict=True):
                stats = measure_ort_latency(path, shape, batch_sizes=batches, threads=threads, **kwargs)
                for b in batches:
                    times[b].append(stats[b].median_ms)
    return out


def measure_eager_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_sizes: Sequence[int] = (1,),
    threads: int = 1,
    *,
    warmup: int = 3,
    min_run_time_s: float = 0.5,
    seed: int = 0,
) -> dict[int, LatencyStats]:
    """Measure eager PyTorch CPU latency (ms per batch), eval mode, under ``torch.no_grad()``.

    Uses ``torch.utils.benchmark.Timer.blocked_autorange``: runs are grouped in blocks and each block's mean
    is one sample, so ``p10_ms``/``p90_ms`` are percentiles of block means (narrower than per-run spread) and
    ``repeats`` is the total number of runs. The model is measured as given (no BN folding); its train/eval
    flags and ``torch.get_num_threads()`` are restored afterwards.

    Args:
        model: the network (on CPU).
        input_shape: ``(C, H, W)`` or ``(N, C, H, W)``; N is ignored.
        batch_sizes: batch sizes to time.
        threads: ``torch.set_num_threads`` value during measurement.
        warmup: untimed runs per batch size before measuring.
        min_run_time_s: minimum measured time per batch size (seconds).
        seed: seed of the random input.

    Returns:
        ``{batch: LatencyStats}`` with ``backend="torch-eager"`` (milliseconds).

    Raises:
        PrunekitError: bad shapes, batch sizes or threads.
    """
    from torch.utils import benchmark

    c, h, w = _chw(input_shape)
    batches = _check_batches(batch_sizes)
    if int(threads) < 1:
        raise PrunekitError(f"threads must be >= 1, got {threads}")
    gen = torch.Generator().manual_seed(seed)
    saved_threads = torch.get_num_threads()
    results: dict[int, LatencyStats] = {}
    try:
        torch.set_num_threads(int(threads))
        with eval_mode(model), torch.no_grad():
            for b in batches:
                x = torch.randn((b, c, h, w), generator=gen)
                for _ in range(max(0, warmup)):
                    model(x)
                timer = benchmark.Timer(
                    stmt="model(x)", globals={"model": model, "x": x}, num_threads=int(threads)
                )
                m = timer.blocked_autorange(min_run_time=min_run_time_s)
                times_ms = [t * 1e3 for t in m.times]
                results[b] = _stats(
                    times_ms, b, threads, "torch-eager", repeats=len(m.times) * int(m.number_per_run)
                )
    finally:
        torch.set_num_threads(saved_threads)
    return results


def channel_multiple() -> int:
    """Channel-count multiple that ONNX Runtime's CPU convolutions run without padding waste on this machine.

    ONNX Runtime (MLAS) converts convs to the NCHWc layout with a channel block of 16 floats on AVX-512 CPUs and 8 on
    AVX2; a layer with 11 channels computes as 16. Measured here (AVX-512, ResNet-20 on 28x28, 2x fewer MACs): widths
    rounded to 1 gave no speedup, rounded to 16 gave 1.6x (``BENCHMARKS.md``). Returns 16 (avx512f), 8 (avx2 or
    other CPUs).
    """
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="ignore")
    except OSError:
        return 8
    return 16 if "avx512f" in flags else 8


def resolve_round_to(value: int | str) -> int:
    """``"auto"`` -> :func:`channel_multiple`; ``"lut"`` -> 1 (widths are fitted unrounded, then the latency table
    decides each group's rounding: :func:`prunekit.search.snap.snap_to_table`); an int is returned unchanged."""
    if value == "lut":
        return 1
    return channel_multiple() if value == "auto" else int(value)
