"""Per-stage bookkeeping of multistage pruning (Tu et al., IJCNN 2020, §III-C / §IV): what happens to the masked
model once a stage's training ended.

* :func:`finish_stage` — the stage's plan (every channel pruned so far), its physical export
  (:func:`~prunekit.space.apply`), the masked-vs-exported check (:func:`check_equivalent`), the measurement
  (:func:`stage_row`) and the files (:func:`save_stage`), in that order;
* :func:`stage_row` — one row of the per-stage table (val/test top-1, MACs, params, ONNX Runtime latency);
* :func:`tradeoff_points` — the rows as points of the report's MACs / top-1 trade-off plot.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from prunekit.cost.macs import count_params
from prunekit.methods.base import MethodContext
from prunekit.methods.multistage.agp import AGPCallback
from prunekit.space import Plan, apply

if TYPE_CHECKING:
    from prunekit.methods.multistage import MultistageConfig

__all__ = ["check_equivalent", "finish_stage", "latency_ms", "save_stage", "stage_row", "tradeoff_points"]

log = logging.getLogger("prunekit.methods.multistage")


@torch.no_grad()
def check_equivalent(
    masked: nn.Module, applied: nn.Module, input_shape: tuple[int, ...], *, atol: float = 1e-4, seed: int = 0
) -> float:
    """Check that the masked model and its physically pruned export compute the same logits (eval mode).

    Both models run on a seeded ``N(0, 1)`` batch of 4 inputs of shape ``input_shape[1:]`` on the masked model's
    device; their train/eval modes are restored afterwards.

    Returns:
        the largest absolute logit difference.

    Raises:
        RuntimeError: a difference above ``atol + 1e-4 * |logit|`` (the masks and the export disagree: a bug).
    """
    dev = next(masked.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((4, *tuple(input_shape)[1:]), generator=gen).to(dev)
    modes = [(m, m.training) for m in (masked, applied)]
    try:
        masked.eval()
        applied.eval()
        a, b = masked(x), applied.to(dev)(x)
    finally:
        for m, t in modes:
            m.train(t)
    diff = float((a - b).abs().max())
    if not torch.allclose(a, b, atol=atol, rtol=1e-4):
        raise RuntimeError(
            f"masked and exported models disagree (max |logit difference| {diff:.3g} > {atol:g}); the masks do not "
            "cover every pruned slot"
        )
    return diff


def latency_ms(ctx: MethodContext, cfg: MultistageConfig, model: nn.Module, last: bool) -> float | None:
    """Median ONNX Runtime latency (ms, batch 1, ``cfg.latency_threads`` threads) of ``model`` on the CPU.

    None when ``cfg.latency`` is off, and for every stage but the baseline and the last one (``last``) of a
    ``--smoke`` run (each export takes seconds); smoke runs also measure with fewer repeats.
    """
    if not cfg.latency or (ctx.smoke and not last):
        return None
    from prunekit.cost.latency import measure_ort_latency

    kw: dict[str, Any] = {"batch_sizes": (1,), "threads": cfg.latency_threads}
    if ctx.smoke:
        kw.update(warmup=2, repeats=5, max_time_s=1.0, min_time_s=0.05)
    net = copy.deepcopy(model).cpu() if ctx.device != "cpu" else model
    return float(measure_ort_latency(net, ctx.space.input_shape, **kw)[1].median_ms)


def stage_row(
    ctx: MethodContext,
    cfg: MultistageConfig,
    k: int,
    ratio: float,
    model: nn.Module,
    plan: Plan,
    last: bool = True,
) -> dict[str, Any]:
    """One row of the per-stage table: ``{"stage": k, "ratio", "val_top1", "test_top1" (fractions), "macs" (per
    sample, of ``plan``), "params" (of ``model``), "latency_ms" (see :func:`latency_ms`)}``.

    Evaluates ``model`` on the validation split, then on the test split (``ctx.evaluate``), in that order.
    """
    return {
        "stage": k,
        "ratio": ratio,
        "val_top1": float(ctx.evaluate(model, "val")["top1"]),
        "test_top1": float(ctx.evaluate(model, "test")["top1"]),
        "macs": int(ctx.cost.cost(plan).macs),
        "params": int(count_params(model)),
        "latency_ms": latency_ms(ctx, cfg, model, last),
    }


def save_stage(ctx: MethodContext, k: int, plan: Plan, model: nn.Module, *, weights: bool) -> None:
    """Write stage ``k``'s plan to ``stages/stage{k}.plan.json`` under ``ctx.out_dir`` and, with ``weights``, the
    applied model's weights to ``stages/stage{k}.safetensors`` (metadata: the model spec and the plan's file name;
    :func:`prunekit.space.rebuild` turns both back into the stage model)."""
    stages_dir = Path(ctx.out_dir) / "stages"
    plan.save(stages_dir / f"stage{k}.plan.json")
    if weights:
        from prunekit.io import save_safetensors

        save_safetensors(
            model.state_dict(),
            stages_dir / f"stage{k}.safetensors",
            metadata={"spec": str(ctx.spec), "plan": f"stage{k}.plan.json"},
        )


def finish_stage(
    ctx: MethodContext,
    cfg: MultistageConfig,
    k: int,
    n_stages: int,
    cb: AGPCallback,
    work: nn.Module,
) -> tuple[Plan, nn.Module, dict[str, Any]]:
    """Close stage ``k`` of ``n_stages`` after its training: plan, export, check, measure, save.

    Args:
        ctx, cfg: the method's context and config.
        k: the 1-based stage index; n_stages: how many stages the schedule has (the last one measures latency
            even in ``--smoke`` runs).
        cb: the stage's :class:`AGPCallback` (its plan is every channel pruned so far, at ratio ``cb.r_end``).
        work: the full-size masked model, holding the stage's best (masked) weights.

    Returns:
        ``(plan, applied model, row)``: the stage's plan (``meta`` ``{"method": "multistage", "stage": k,
        "ratio"}``), the physically smaller model, and its :func:`stage_row`.

    Raises:
        RuntimeError: the ramp did not reach ``cb.r_end`` (internal), or the exported model does not reproduce the
            masked one beyond ``cfg.check_atol`` (see :func:`check_equivalent`).
    """
    space, r_end = ctx.space, cb.r_end
    if not cb.done:
        raise RuntimeError(f"internal: stage {k} ended before its ramp reached ratio {r_end}")
    plan = cb.plan.model_copy(deep=True)
    plan.model, plan.input_shape = ctx.spec, list(space.input_shape)
    plan.meta.update({"method": "multistage", "stage": k, "ratio": r_end})
    cb.masks.apply_(work)  # the best state was saved masked; re-applying is a no-op safeguard
    final = apply(work, plan, space)
    diff = check_equivalent(work, final, space.input_shape, atol=cfg.check_atol)
    row = stage_row(ctx, cfg, k, r_end, final, plan, last=k == n_stages)
    save_stage(ctx, k, plan, final, weights=cfg.save_weights)
    log.info(
        "multistage stage %d/%d: ratio %.4g, %s MACs, val top1 %.4f, test top1 %.4f (masked = exported, max diff "
        "%.2g)",
        k,
        n_stages,
        r_end,
        f"{row['macs']:,}",
        row["val_top1"],
        row["test_top1"],
        diff,
    )
    return plan, final, row


def tradeoff_points(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One ``{"label": "r=<ratio>", "macs", "top1" (test, fraction), "latency_ms"}`` per :func:`stage_row`, for
    the report's trade-off plot."""
    return [
        {
            "label": f"r={h['ratio']:.3g}",
            "macs": h["macs"],
            "top1": h["test_top1"],
            "latency_ms": h["latency_ms"],
        }
        for h in history
    ]
