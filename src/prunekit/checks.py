"""``prunekit check``: prove, on one model, that the core machinery is right.

For a plan pruning ``ratio`` of every channel group by L1 importance, verify on random input that

1. the pruned model runs forward and backward (finite gradients);
2. pruned and masked models give the same outputs in eval mode (BN statistics are randomised first so that a wrong
   channel mapping cannot hide behind identity BN layers), ``max|diff| <= 1e-4 * max(1, max|y|)``;
3. analytic MACs / params (:class:`~prunekit.cost.macs.CostModel`) equal those measured on the pruned model
   (:func:`torch.utils.flop_counter` MACs = FLOPs / 2; parameter count);
4. the pruned model exports to ONNX and ONNX Runtime reproduces its outputs.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

from prunekit import importance
from prunekit.cost.macs import CostModel, count_params, measure_macs
from prunekit.space import ChannelSpace, apply, mask, plan_from_ratio


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str


def randomize_bn_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random running statistics and affine parameters (in place; returns ``model``)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d) and m.running_mean is not None:
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return model


def run_checks(
    model: nn.Module,
    input_shape: tuple[int, int, int, int],
    ratio: float = 0.5,
    *,
    onnx: bool = True,
    seed: int = 0,
) -> tuple[list[CheckResult], dict]:
    """Run the four checks; returns ``(results, facts)`` with facts = group count, MACs/params before and after.

    Raises:
        PrunekitError: the model cannot be traced on ``input_shape``, or ratio is outside [0, 1).
    """
    torch.manual_seed(seed)
    model = randomize_bn_stats(model, seed).eval()
    space = ChannelSpace.build(model, input_shape)
    plan = plan_from_ratio(space, ratio, model=model, importance=importance.l1)
    cm = CostModel(space)
    before, after = cm.cost(), cm.cost(plan)
    pruned = apply(model, plan, space)
    masked, _ = mask(model, plan, space)
    results: list[CheckResult] = []
    x = torch.randn(2, *input_shape[1:])

    try:
        trainee = copy.deepcopy(
            pruned
        ).train()  # a train-mode forward moves BN statistics: keep `pruned` intact
        trainee(x).float().sum().backward()
        bad = [n for n, p in trainee.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
        results.append(
            CheckResult(
                "forward/backward", not bad, "ok" if not bad else f"missing/non-finite grads: {bad[:3]}"
            )
        )
    except Exception as exc:  # any failure is a failed check, reported as one line
        results.append(CheckResult("forward/backward", False, f"{type(exc).__name__}: {str(exc)[:160]}"))

    try:
        with torch.no_grad():
            yp, ym = pruned(x), masked.eval()(x)
        scale = max(1.0, ym.abs().max().item())
        diff = (yp - ym).abs().max().item()
        results.append(
            CheckResult("pruned == masked", diff <= 1e-4 * scale, f"max|diff| {diff:.2e} (scale {scale:.2f})")
        )
    except Exception as exc:
        results.append(CheckResult("pruned == masked", False, f"{type(exc).__name__}: {str(exc)[:160]}"))

    measured_macs, measured_params = measure_macs(pruned, input_shape), count_params(pruned)
    ok = measured_macs == after.macs and measured_params == after.params
    results.append(
        CheckResult(
            "analytic == measured cost",
            ok,
            f"MACs {after.macs:,} vs {measured_macs:,}; params {after.params:,} vs {measured_params:,}",
        )
    )

    if onnx:
        from prunekit.export import export_onnx

        try:
            with tempfile.TemporaryDirectory() as tmp:
                info = export_onnx(pruned, Path(tmp) / "pruned.onnx", (1, *input_shape[1:]), verify=True)
            results.append(
                CheckResult(
                    "ONNX Runtime == PyTorch",
                    True,
                    f"max|diff| {info.max_abs_diff:.2e} ({info.exporter} exporter)",
                )
            )
        except Exception as exc:
            results.append(
                CheckResult("ONNX Runtime == PyTorch", False, f"{type(exc).__name__}: {str(exc)[:200]}")
            )

    facts = {
        "groups": len(space),
        "ratio": ratio,
        "baseline": before.as_dict(),
        "pruned": after.as_dict(),
        "dropped_groups": list(space.dropped),
    }
    return results, facts


def results_json(results: list[CheckResult], facts: dict) -> dict:
    return {"ok": all(r.ok for r in results), "checks": [asdict(r) for r in results], **facts}
