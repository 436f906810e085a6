"""Measured latency (prunekit.cost.latency)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.cost.latency import (
    LatencyStats,
    _time_session,
    interleaved_ort_latency,
    measure_eager_latency,
    measure_ort_latency,
)
from prunekit.errors import PrunekitError
from prunekit.export import export_onnx, ort_session


def cnn(width: int) -> nn.Module:
    """Three 3x3 conv-bn-relu layers of ``width`` channels + linear head."""
    layers: list[nn.Module] = []
    cin = 3
    for _ in range(3):
        layers += [nn.Conv2d(cin, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        cin = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))


FAST = {"warmup": 3, "repeats": 20, "min_time_s": 0.05, "max_time_s": 1.0}


def _check(stats: dict[int, LatencyStats], batches: tuple[int, ...], backend: str) -> None:
    assert list(stats) == list(batches)
    for b, s in stats.items():
        assert s.batch == b and s.backend == backend and s.threads == 1
        assert s.median_ms > 0 and s.mean_ms > 0 and s.repeats >= 5
        assert s.p10_ms <= s.median_ms <= s.p90_ms


def test_ort_latency_from_module_and_path(tmp_path) -> None:
    model = cnn(8)
    stats = measure_ort_latency(model, (3, 32, 32), batch_sizes=(1, 4), **FAST)
    _check(stats, (1, 4), "onnxruntime")
    assert model.training, "measuring must not change the model's mode"

    path = tmp_path / "m.onnx"
    export_onnx(model, path, (1, 3, 32, 32))
    from_path = measure_ort_latency(path, (1, 3, 32, 32), batch_sizes=(1, 4), **FAST)
    _check(from_path, (1, 4), "onnxruntime")
    assert from_path[4].median_ms > 0


def test_wider_model_is_slower() -> None:
    # 8x wider -> ~64x the MACs of the inner convs; timing noise cannot hide that.
    small = measure_ort_latency(cnn(8), (3, 32, 32), batch_sizes=(4,), **FAST)[4]
    big = measure_ort_latency(cnn(64), (3, 32, 32), batch_sizes=(4,), **FAST)[4]
    assert big.median_ms > 3 * small.median_ms, (small, big)


def test_time_bound_limits_repeats() -> None:
    path_model = cnn(64)
    stats = measure_ort_latency(
        path_model, (3, 32, 32), batch_sizes=(16,), warmup=2, repeats=10_000, min_time_s=0, max_time_s=0.3
    )[16]
    # each run is >> 0.3 s / 10_000, so the repeat count must have been cut to fit the budget
    assert 5 <= stats.repeats < 10_000
    assert stats.repeats * stats.median_ms < 0.3e3 * 5  # generous: other processes may share the CPU


def test_time_session_min_time_adds_repeats(tmp_path) -> None:
    path = tmp_path / "tiny.onnx"
    export_onnx(cnn(4), path, (1, 3, 8, 8), verify=False)
    sess = ort_session(path)
    feed = {sess.get_inputs()[0].name: torch.randn(1, 3, 8, 8).numpy()}
    times = _time_session(sess, feed, warmup=2, repeats=5, min_time_s=0.05)
    assert len(times) > 5 and all(t > 0 for t in times)
    # (no wall-clock assertion here: timing goals live in bench/, and a loaded CI machine would make it flaky)
    assert len(_time_session(sess, feed, warmup=2, repeats=5, min_time_s=0.0)) == 5


def test_fixed_batch_file_rejects_other_batches(tmp_path) -> None:
    path = tmp_path / "fixed.onnx"
    export_onnx(cnn(4), path, (1, 3, 8, 8), dynamic_batch=False, verify=False)
    assert measure_ort_latency(path, (3, 8, 8), batch_sizes=(1,), **FAST)[1].median_ms > 0
    with pytest.raises(PrunekitError, match="fixed batch"):
        measure_ort_latency(path, (3, 8, 8), batch_sizes=(1, 2), **FAST)


def test_bad_arguments(tmp_path) -> None:
    with pytest.raises(PrunekitError, match="input_shape"):
        measure_ort_latency(cnn(4), (32, 32))
    with pytest.raises(PrunekitError, match="batch_sizes"):
        measure_ort_latency(cnn(4), (3, 8, 8), batch_sizes=(0,))
    with pytest.raises(PrunekitError, match="not found"):
        measure_ort_latency(tmp_path / "nope.onnx", (3, 8, 8))


def test_eager_latency_positive_and_restores_threads() -> None:
    model = cnn(8)
    before = torch.get_num_threads()
    stats = measure_eager_latency(model, (1, 3, 32, 32), batch_sizes=(1, 2), threads=1, min_run_time_s=0.1)
    _check(stats, (1, 2), "torch-eager")
    assert torch.get_num_threads() == before
    assert model.training


def test_interleaved_rounds_time_every_model_each_round():
    models = [(cnn(8), (3, 32, 32)), (cnn(64), (3, 32, 32))]
    times = interleaved_ort_latency(models, batch_sizes=(1, 4), rounds=2, **FAST)
    assert len(times) == 2
    for t in times:
        assert list(t) == [1, 4]
        assert all(len(v) == 2 and all(x > 0 for x in v) for v in t.values())
    # per round, the 8x wider net is slower at batch 4
    assert all(big > small for small, big in zip(times[0][4], times[1][4], strict=True))
    with pytest.raises(PrunekitError, match="rounds must be >= 1"):
        interleaved_ort_latency(models, rounds=0)
