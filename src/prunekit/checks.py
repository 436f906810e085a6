"""``prunekit check``: prove, on one model, that the core machinery is right.

For a plan pruning ``ratio`` of every channel group by L1 importance -- optionally with a block weight density
(``density``, ``block``) and group convolutions (``conv_groups``, with random channel permutations) on every
eligible layer (:func:`~prunekit.space.plan.add_weight_choices`) -- verify on random input that

0. something is pruned: the space has prunable groups and the plan removes channels or weights (a check that passes
   because nothing was pruned proves nothing), reporting how many groups were dropped and why;
1. the pruned model runs forward and backward (finite gradients) and its outputs have the original model's shapes
   (channels reaching an output, e.g. class logits, are never pruned);
2. pruned and masked models give the same outputs in eval mode (BN statistics are randomised first so that a wrong
   channel mapping cannot hide behind identity BN layers), ``max|diff| <= 1e-4 * max(1, max|y|)``;
3. analytic MACs / params (:class:`~prunekit.cost.macs.CostModel`) equal those measured on the pruned model
   (:func:`torch.utils.flop_counter` MACs = FLOPs / 2; parameter count), and so do the effective (non-zero) counts
   (non-zero weights x output positions, :func:`~prunekit.cost.macs.measure_effective`);
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
from prunekit.cost.macs import CostModel, count_params, measure_effective, measure_macs
from prunekit.errors import PrunekitError
from prunekit.space import ChannelSpace, Plan, add_weight_choices, apply, mask, plan_from_ratio
from prunekit.space.channels import _all_tensors


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str


def randomize_bn_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every norm layer random running statistics (BatchNorm, tracked InstanceNorm) and affine parameters
    (also GroupNorm / LayerNorm), in place; returns ``model``. Identity-like norms could hide a wrong channel
    mapping."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if not isinstance(m, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm):
                continue
            if getattr(m, "running_mean", None) is not None:
                n = m.running_mean.numel()
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            if getattr(m, "weight", None) is not None:
                shape = m.weight.shape
                m.weight.copy_(torch.rand(shape, generator=gen) + 0.5)
            if getattr(m, "bias", None) is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    return model


def fill_exact_zeros(model: nn.Module, value: float = 1e-6) -> nn.Module:
    """Replace exact zeros in conv / linear weights by ``value`` (in place; returns ``model``).

    The effective-cost check counts non-zero weights; a weight that happens to be exactly zero (a float32 random
    init gives one in ~2^24 draws; a previously pruned model has many) would look pruned.
    """
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv1d | nn.Conv2d | nn.ConvTranspose1d | nn.ConvTranspose2d | nn.Linear):
                m.weight.masked_fill_(m.weight == 0, value)
    return model


def dropped_by_reason(space: ChannelSpace) -> dict[str, list[str]]:
    """``{reason: [group names]}`` for the groups left out of ``space`` (``space.dropped`` is ``"name: reason"``)."""
    out: dict[str, list[str]] = {}
    for entry in space.dropped:
        name, _, reason = entry.partition(": ")
        out.setdefault(reason or "unknown", []).append(name)
    return out


def _prunable_check(space: ChannelSpace, pruned_channels: int, ratio: float, plan: Plan) -> CheckResult:
    reasons = dropped_by_reason(space)
    why = "; ".join(f"{r}: {', '.join(n)}" for r, n in reasons.items())
    if not len(space):
        if space.dropped:
            detail = f"nothing to prune: every channel group was dropped (reasons: {why})"
        else:
            detail = "nothing to prune: the space has no prunable groups"
        return CheckResult("something to prune", False, detail)
    total = int(space.channels.sum())
    detail = f"{len(space)} groups, {pruned_channels} of {total} channels pruned at ratio {ratio}"
    sparse = sum(lc.sparse for lc in plan.layers.values())
    grouped = sum(lc.grouped for lc in plan.layers.values())
    if plan.layers:
        detail += f"; {sparse} layers sparse, {grouped} grouped"
    detail += f"; {len(space.dropped)} dropped" + (f" ({why})" if why else "")
    if pruned_channels == 0 and not (sparse or grouped):
        return CheckResult(
            "something to prune", False, f"nothing to prune: the plan keeps every channel ({detail})"
        )
    return CheckResult("something to prune", True, detail)


def _shapes(y) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in _all_tensors(y)]


def run_checks(
    model: nn.Module,
    input_shape: tuple[int, int, int, int],
    ratio: float = 0.5,
    *,
    density: float | None = None,
    block: tuple[int, int] | None = None,
    conv_groups: int | None = None,
    onnx: bool = True,
    seed: int = 0,
) -> tuple[list[CheckResult], dict]:
    """Run the checks; returns ``(results, facts)``: facts = group count, dropped groups (and by reason), pruned
    channels, sparse / grouped layers (and the convs that could not take ``conv_groups``, with why), output
    shapes, dense and effective MACs/params before and after.

    Raises:
        PrunekitError: the model cannot be traced on ``input_shape``, ratio is outside [0, 1), or the density /
            block / group count is invalid.
    """
    torch.manual_seed(seed)
    model = fill_exact_zeros(randomize_bn_stats(model, seed)).eval()
    space = ChannelSpace.build(model, input_shape)
    plan = plan_from_ratio(space, ratio, model=model, importance=importance.l1)
    plan, no_groups = add_weight_choices(
        plan, space, density=density, block=block, conv_groups=conv_groups, seed=seed
    )
    cm = CostModel(space)
    before, after = cm.cost(), cm.cost(plan)
    pruned_channels = sum(len(plan.pruned(g)) for g in space)
    results: list[CheckResult] = [_prunable_check(space, pruned_channels, ratio, plan)]
    x = torch.randn(2, *input_shape[1:])
    with torch.no_grad():
        want = _shapes(model(x))
    got: list[tuple[int, ...]] = []
    facts = {
        "groups": len(space),
        "ratio": ratio,
        "baseline": before.as_dict(),
        "pruned": after.as_dict(),
        "dropped_groups": list(space.dropped),
        "dropped_by_reason": dropped_by_reason(space),
        "channels": int(space.channels.sum()) if len(space) else 0,
        "channels_pruned": pruned_channels,
        "density": density,
        "block": list(block) if block else None,
        "conv_groups": conv_groups,
        "sparse_layers": sorted(n for n, lc in plan.layers.items() if lc.sparse),
        "grouped_layers": sorted(n for n, lc in plan.layers.items() if lc.grouped),
        "not_grouped": no_groups,
        "output_shape": [list(t) for t in want],
        "pruned_output_shape": [],
    }
    try:
        pruned = apply(model, plan, space)
        masked, _ = mask(model, plan, space)
    except Exception as exc:  # a user's model never gets a traceback: the failure is a failed check
        results.append(CheckResult("apply / mask", False, f"{type(exc).__name__}: {str(exc)[:200]}"))
        return results, facts

    try:
        with torch.no_grad():
            got = _shapes(pruned(x))
        results.append(
            CheckResult(
                "output shape == original",
                got == want,
                f"{_fmt_shapes(got)}"
                if got == want
                else f"pruned {_fmt_shapes(got)} != original {_fmt_shapes(want)}",
            )
        )
    except Exception as exc:
        results.append(
            CheckResult("output shape == original", False, f"{type(exc).__name__}: {str(exc)[:160]}")
        )

    try:
        trainee = copy.deepcopy(
            pruned
        ).train()  # a train-mode forward moves BN statistics: keep `pruned` intact
        sum(t.float().sum() for t in _all_tensors(trainee(x)) if t.is_floating_point()).backward()
        bad = [n for n, p in trainee.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
        results.append(
            CheckResult(
                "forward/backward", not bad, "ok" if not bad else f"missing/non-finite grads: {bad[:3]}"
            )
        )
    except Exception as exc:  # any failure is a failed check, reported as one line
        results.append(CheckResult("forward/backward", False, f"{type(exc).__name__}: {str(exc)[:160]}"))

    try:
        with torch.no_grad():  # leaf by leaf: a model may return a tuple or a dict of tensors
            yp, ym = _all_tensors(pruned(x)), _all_tensors(masked.eval()(x))
        if len(yp) != len(ym):
            raise PrunekitError(f"the pruned model returns {len(yp)} tensors, the masked one {len(ym)}")
        scale = max([1.0] + [m.abs().max().item() for m in ym if m.numel()])
        diff = max([0.0] + [(p - m).abs().max().item() for p, m in zip(yp, ym, strict=True) if m.numel()])
        results.append(
            CheckResult(
                "pruned == masked",
                diff <= 1e-4 * scale,
                f"max|diff| {diff:.2e} (scale {scale:.2f}, {len(ym)} output tensor(s))",
            )
        )
    except Exception as exc:
        results.append(CheckResult("pruned == masked", False, f"{type(exc).__name__}: {str(exc)[:160]}"))

    results.append(_cost_check(pruned, input_shape, after))

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

    facts["pruned_output_shape"] = [list(t) for t in got]
    return results, facts


def _cost_check(pruned: nn.Module, input_shape: tuple[int, ...], after) -> CheckResult:
    """Dense counts against flop_counter / the parameter count; with densities also the effective counts against
    the non-zero weights (only then: a dense model may hold exact zeros of its own)."""
    try:
        measured_macs, measured_params = measure_macs(pruned, input_shape), count_params(pruned)
    except Exception as exc:
        return CheckResult("analytic == measured cost", False, f"{type(exc).__name__}: {str(exc)[:160]}")
    ok = (measured_macs, measured_params) == (after.macs, after.params)
    detail = f"MACs {after.macs:,} vs {measured_macs:,}; params {after.params:,} vs {measured_params:,}"
    if (after.effective_macs, after.effective_params) != (after.macs, after.params):
        eff_macs, eff_params = measure_effective(pruned, input_shape)
        ok = ok and (eff_macs, eff_params) == (after.effective_macs, after.effective_params)
        detail += (
            f"; effective MACs {after.effective_macs:,} vs {eff_macs:,}, "
            f"effective params {after.effective_params:,} vs {eff_params:,}"
        )
    return CheckResult("analytic == measured cost", ok, detail)


def _fmt_shapes(shapes: list[tuple[int, ...]]) -> str:
    return ", ".join(str(tuple(s)) for s in shapes) or "no tensor output"


def results_json(results: list[CheckResult], facts: dict) -> dict:
    return {"ok": all(r.ok for r in results), "checks": [asdict(r) for r in results], **facts}
