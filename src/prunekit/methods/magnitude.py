"""``magnitude``: one-shot (or iterative) filter-norm channel pruning to a budget (MACs, params, latency).

Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017: channels are ranked by the L1 norm of their filters
(§3.1; here any criterion of :mod:`prunekit.importance`, summed over every layer producing the group), the
lowest-ranked are removed, and the network is retrained, once ("prune once and retrain") or alternately
("prune and retrain iteratively", §3.5). Instead of hand-picked per-layer ratios we bisect to a MACs budget:

* ``ranking: per_layer`` — the same pruning ratio ``r`` for every group (relative to its original width); ``r`` is
  bisected to the largest model within the target; each group keeps its top-``k`` channels.
* ``ranking: global`` — scores are normalised per group, **divided by the mean score of the group's (still alive)
  channels**, so every group has mean 1 and groups with different fan-in, initialisation or number of producers
  (residual groups sum several convs) are comparable; a raw global ranking would strip the low-norm layers entirely.
  Normalisation is scale invariant: multiplying a group's weights by a constant changes nothing (cf. the layer-wise
  normalisation of Molchanov et al., "Pruning Convolutional Neural Networks for Resource Efficient Inference",
  ICLR 2017). The globally lowest normalised channels are removed first; the number of channels removed is bisected
  (integer bisection) to the largest model within the target.

Rounding: a group's kept count is rounded to the *nearest* multiple of ``round_to`` (ties up), clamped to
``[min_channels, current width]`` and, for groups touching a grouped conv, floored to a multiple of ``blocks``
(:func:`~prunekit.space.widths.legal_width`). Because the bisection evaluates the exact MACs *after* rounding
(rounding is monotone, so the cost stays monotone in the bisected knob), the result never exceeds the target: a
removal count (or ratio) whose rounded model exceeds the budget is simply infeasible and the bisection moves past it.

Iterative (``steps > 1``): intermediate targets are geometric between the baseline and the target MACs
(``base * (target / base) ** (k / steps)``). Every step's plan lives in the original channel space: the model is a
masked copy of ``ctx.model`` (:func:`~prunekit.space.mask`), channels pruned by earlier steps get score ``-inf`` and
are excluded from the ranking (they stay pruned), and between steps the masked model is finetuned with
``ctx.finetune(..., callbacks=[MaskCallback(masks)], tag="magnitude-step{k}")`` so its pruned weights stay exactly
zero. Every step is deterministic given the model, so a killed run re-running the method resumes the finetunes from
their checkpoints. The final model is ``apply(masked_model, final_plan, ctx.space)``.

Config (YAML)::

    method: {name: magnitude, importance: l1, ranking: global, round_to: 8, steps: 3, step_epochs: 2,
             protect: [first]}
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace
from typing import Literal

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field

from prunekit import importance as _importance
from prunekit.cost.budget import Budget
from prunekit.cost.latency import resolve_round_to
from prunekit.errors import PrunekitError
from prunekit.methods.base import (
    ImportanceName,
    MethodContext,
    MethodResult,
    TableRoundTo,
    TagList,
    require_budget,
)
from prunekit.search.fit import min_widths, prune_to_target, require_reachable
from prunekit.search.snap import require_table
from prunekit.space import ChannelSpace, Plan, apply, build_masks, mask
from prunekit.train.masking import MaskCallback

__all__ = ["Config", "MagnitudeConfig", "run", "step_targets"]

log = logging.getLogger(__name__)

BUDGET_METRICS = ("macs", "params", "latency_ms")
"""The budget metrics this method prunes to (the pipeline refuses others before the run starts)."""


class MagnitudeConfig(BaseModel):
    """Options of the ``magnitude`` method.

    Attributes:
        name: ``"magnitude"`` (the discriminator in run configs).
        importance: criterion name in :data:`prunekit.importance.CRITERIA` (default ``l1``, Li et al. §3.1).
        ranking: ``global`` (normalised scores ranked across groups) or ``per_layer`` (same ratio everywhere).
        round_to: kept channels rounded to a multiple of this; 1 = no rounding; ``auto`` = this CPU's ONNX Runtime
            channel block; ``lut`` = fitted unrounded, then each group rounded up only where the latency table
            (``target.latency_lut``) predicts it free (:func:`~prunekit.search.snap.snap_to_table`).
        min_channels: every pruned group keeps at least this many channels.
        steps: number of prune steps (1 = one-shot; > 1 = iterative with finetuning between steps).
        step_epochs: finetune epochs between iterative steps (fractional allowed; 0 = no finetuning).
        protect: group tags never pruned (``first``, ``last``, ``strided``, ``residual``, ``depthwise``,
            ``expansion``, ``grouped``; see ``prunekit inspect``).
    """

    model_config = ConfigDict(extra="forbid")
    name: Literal["magnitude"] = "magnitude"
    importance: ImportanceName = "l1"
    ranking: Literal["global", "per_layer"] = "global"
    round_to: TableRoundTo = 1
    min_channels: int = Field(1, ge=1)
    steps: int = Field(1, ge=1)
    step_epochs: float = Field(1.0, ge=0)
    protect: TagList = Field(default_factory=list)


Config = MagnitudeConfig


# ---------------------------------------------------------------------------------------------- building blocks
def step_targets(base_macs: float, target_macs: float, steps: int) -> list[float]:
    """MACs targets of ``steps`` prune steps, geometric from ``base_macs`` to ``target_macs`` (the last one is
    exactly ``target_macs``): ``base * (target / base) ** (k / steps)`` for ``k = 1..steps``."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    ratio = float(target_macs) / float(base_macs)
    return [float(base_macs) * ratio ** (k / steps) for k in range(1, steps)] + [float(target_macs)]


def step_budgets(budget: Budget, steps: int) -> list[Budget]:
    """The budgets of ``steps`` prune steps: every constraint's limit geometric from the baseline's value to its
    final limit (:func:`step_targets`); the last step's budget is ``budget`` itself."""
    if steps == 1:
        return [budget]
    per = [step_targets(c.baseline, c.limit, steps) for c in budget.constraints]
    out = [
        Budget(
            [replace(c, limit=lim[k]) for c, lim in zip(budget.constraints, per, strict=True)],
            budget.cost,
            budget.latency,
        )
        for k in range(steps - 1)
    ]
    return [*out, budget]


def _alive_of(space: ChannelSpace, plan: Plan) -> dict[str, torch.Tensor]:
    alive = {}
    for g in space.groups:
        a = torch.ones(g.channels, dtype=torch.bool)
        if g.name in plan.groups:
            a[:] = False
            a[plan.groups[g.name].keep] = True
        alive[g.name] = a
    return alive


def _scores(crit, model: nn.Module, space: ChannelSpace, names: Iterable[str]) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {n: crit(model, space, space[n]).detach().to("cpu", torch.float64) for n in names}


def _val_top1(ctx: MethodContext, model: nn.Module) -> float | None:
    """Validation top-1 (fraction) of ``model``, or None when the run has no validation split."""
    try:
        return float(ctx.evaluate(model, "val")["top1"])
    except PrunekitError as exc:
        log.info("magnitude: no validation accuracy for the history (%s)", exc)
        return None


def _masked_step(
    ctx: MethodContext,
    cfg: MagnitudeConfig,
    work: nn.Module,
    plan: Plan,
    alive: dict[str, torch.Tensor] | None,
    k: int,
) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """An intermediate step of iterative pruning (Li et al. §3.5): mask ``plan`` into the working copy (the first
    step makes the masked copy of ``ctx.model`` every later step works on), then finetune it with the masks held.
    Returns ``(work, alive)``."""
    space = ctx.space
    if alive is None:
        work, masks = mask(ctx.model, plan, space)
    else:
        masks = build_masks(work, plan, space)
        masks.apply_(work)
    if cfg.step_epochs > 0:
        ctx.finetune(work, cfg.step_epochs, callbacks=[MaskCallback(masks)], tag=f"magnitude-step{k}")
        masks.apply_(work)
    return work, _alive_of(space, plan)


def _history_row(
    ctx: MethodContext, k: int, steps: int, plan: Plan, budget: Budget, model: nn.Module
) -> dict:
    """``{"step", "macs", "params", "val_top1"}`` of step ``k`` (logged)."""
    c = ctx.cost.cost(plan)
    val = _val_top1(ctx, model)
    log.info(
        "magnitude step %d/%d: %s MACs (budget %s), val top1 %s",
        k,
        steps,
        f"{c.macs:,}",
        budget.describe(),
        val,
    )
    return {"step": k, "macs": c.macs, "params": c.params, "val_top1": val}


# ---------------------------------------------------------------------------------------------- the method
def run(ctx: MethodContext, cfg: MagnitudeConfig) -> MethodResult:
    """Prune ``ctx.model`` by channel importance to the run's budget (``ctx.budget``: MACs per sample, params and/or
    latency, every constraint at once), one-shot or iteratively (each constraint geometric towards its limit).

    See the module docstring for the algorithm (Li et al., ICLR 2017, §3.1 criterion, §3.5 iterative retraining).
    ``ctx.model`` is not modified. Every step appends a history row ``{"step", "macs", "params", "val_top1"}``
    (``val_top1``: ``ctx.evaluate(model, "val")["top1"]`` right after the step's finetuning, or after pruning for the
    last step, which the pipeline finetunes; None when ``evaluate`` raises PrunekitError, i.e. the run has no
    validation split).

    Returns:
        :class:`MethodResult`: the final plan (over ``ctx.space``), the applied model, the history, ``trained=False``
        and ``extra`` ``{"ranking", "importance", "steps", "step_targets", "base_macs", "target_macs", "macs",
        "protected"}``.

    Raises:
        PrunekitError: the target is below the smallest reachable model (every unprotected group at
            ``min_channels``; the message gives its MACs), or an importance criterion fails (e.g. ``bn_scale`` on a
            group without BN).
    """
    crit = _importance.get(cfg.importance)
    space, cm = ctx.space, ctx.cost
    budget = require_budget(ctx, "magnitude")
    round_to = resolve_round_to(cfg.round_to)
    if cfg.round_to == "lut":
        require_table(budget, "magnitude")
    protected = {g.name for g in space.groups if g.tags & set(cfg.protect)}
    prunable = [g.name for g in space.groups if g.name not in protected]
    base = cm.cost()
    smallest = min_widths(space, protected=protected, round_to=round_to, min_channels=cfg.min_channels)
    require_reachable(
        budget,
        smallest,
        who="magnitude",
        round_to=round_to,
        min_channels=cfg.min_channels,
        protected=protected,
    )
    steps = cfg.steps if not budget.satisfied(space.channels) else 1
    targets = step_budgets(budget, steps)
    opts = {
        "ranking": cfg.ranking,
        "protected": protected,
        "round_to": round_to,
        "min_channels": cfg.min_channels,
        "spec": ctx.spec,
        "snap": cfg.round_to == "lut",
    }

    work: nn.Module = ctx.model
    alive: dict[str, torch.Tensor] | None = None
    history: list[dict] = []
    for k, tk in enumerate(targets, 1):
        plan = prune_to_target(space, cm, _scores(crit, work, space, prunable), tk, alive=alive, **opts)
        if k == steps:
            final = evaluated = apply(work, plan, space)
        else:
            work, alive = _masked_step(ctx, cfg, work, plan, alive, k)
            evaluated = work
        history.append(_history_row(ctx, k, steps, plan, tk, evaluated))
    plan.meta.update(
        {"method": "magnitude", "ranking": cfg.ranking, "importance": cfg.importance, "steps": steps}
    )
    macs_final = cm.cost(plan).macs
    return MethodResult(
        plan=plan,
        model=final,
        history=history,
        trained=False,
        extra={
            "ranking": cfg.ranking,
            "importance": cfg.importance,
            "steps": steps,
            "step_targets": [tk.load_limit for tk in targets],
            "base_macs": base.macs,
            "target_macs": budget.limit("macs"),
            "macs": macs_final,
            "protected": sorted(protected),
        },
    )
