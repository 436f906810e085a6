"""``uniform``: one width multiplier for every channel group, chosen so the model fits the budget.

The classic baseline of width-multiplier networks (Howard et al., "MobileNets", 2017, §3.3 "Width multiplier"):
every prunable group of ``C`` channels keeps ``round_width(m * C)`` channels, with ``m`` in ``(0, 1]`` the largest
multiplier whose model fits the run's budget (MACs, params and/or latency: ``ctx.budget``), found by bisection
(:mod:`prunekit.search.bisect`); groups may round up or down independently so equal-width groups can cross a
rounding step one at a time (:func:`prunekit.search.fit.fit_uniform`).
Kept channels are the first ``k`` (``importance: first``, for training from scratch: "uniform scratch" baselines of
Liu et al., "Rethinking the Value of Network Pruning", ICLR 2019) or the top-``k`` by an importance criterion when
starting from a trained model. The pipeline then trains / finetunes the returned model (``trained=False``).

Config (YAML)::

    method: {name: uniform, importance: first, round_to: 8, min_channels: 8}
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from prunekit import importance as _importance
from prunekit.cost.latency import resolve_round_to
from prunekit.methods.base import MethodContext, MethodResult, TableRoundTo, require_budget
from prunekit.search.fit import fit_uniform, require_reachable
from prunekit.search.snap import require_table, snap_to_table
from prunekit.space import apply, plan_from_widths
from prunekit.space.widths import uniform_widths

__all__ = ["Config", "UniformConfig", "run"]

log = logging.getLogger(__name__)

BUDGET_METRICS = ("macs", "params", "latency_ms")
"""The budget metrics this method prunes to (the pipeline refuses others before the run starts)."""


class UniformConfig(BaseModel):
    """Options of the ``uniform`` method.

    Attributes:
        name: ``"uniform"`` (the discriminator in run configs).
        importance: ``"first"`` keeps the first ``k`` channels of each group; any criterion name of
            :data:`prunekit.importance.CRITERIA` (``l1``, ``l2``, ``bn_scale``, ``l1_bn``, ``random``) keeps the
            top-``k`` by that criterion on ``ctx.model``.
        round_to: kept channels are rounded to a multiple of this (hardware-friendly widths); 1 = no rounding;
            ``auto`` = this CPU's ONNX Runtime channel block; ``lut`` = fitted unrounded, then each group rounded up
            only where the latency table (``target.latency_lut``) predicts it free
            (:func:`~prunekit.search.snap.snap_to_table`).
        min_channels: every group keeps at least this many channels (or all of them when it has fewer).
    """

    model_config = ConfigDict(extra="forbid")
    name: Literal["uniform"] = "uniform"
    importance: str = "first"
    round_to: TableRoundTo = 1
    min_channels: int = Field(1, ge=1)

    @field_validator("importance")
    @classmethod
    def _known_importance(cls, v: str) -> str:
        if v != "first" and v not in _importance.CRITERIA:
            raise ValueError(
                f"unknown importance {v!r}: choose first or one of {', '.join(_importance.CRITERIA)}"
            )
        return v


Config = UniformConfig


def run(ctx: MethodContext, cfg: UniformConfig) -> MethodResult:
    """Prune every group by the same width multiplier to fit the run's budget (MACs, params and/or latency).

    The multiplier ``m`` is bisected on ``[0, 1]`` (every cost is non-decreasing in ``m``) to the largest model
    within every constraint of the budget (``ctx.budget``; MACs / params analytic, latency measured), after rounding
    (:func:`~prunekit.search.fit.fit_uniform`: every group within one rounding step of ``m * C``); a target at or
    above the baseline keeps the model whole. ``ctx.model`` is not modified.

    Returns:
        :class:`MethodResult` with the plan (``meta``: method, width multiplier), the applied (physically smaller)
        model, one history row ``{"step", "macs", "params", "width_mult"}``, ``trained=False`` and ``extra``
        ``{"width_mult", "target_macs", "macs", "base_macs", "budget"}``.

    Raises:
        PrunekitError: a constraint is below the smallest reachable model (every group at ``min_channels``); the
            message gives that model's value.
    """
    space, cm = ctx.space, ctx.cost
    budget = require_budget(ctx, "uniform")
    round_to = resolve_round_to(cfg.round_to)
    if cfg.round_to == "lut":
        require_table(budget, "uniform")
    smallest = uniform_widths(space, 0.0, round_to=round_to, min_channels=cfg.min_channels)
    require_reachable(budget, smallest, who="uniform", round_to=round_to, min_channels=cfg.min_channels)
    mult, widths = fit_uniform(space, cm, budget, round_to=round_to, min_channels=cfg.min_channels)
    snapped: dict[str, tuple[int, int]] = {}
    if cfg.round_to == "lut":
        widths, snapped = snap_to_table(space, widths, budget, who="uniform")
    crit = None if cfg.importance == "first" else _importance.get(cfg.importance)
    plan = plan_from_widths(space, widths, model=ctx.model, importance=crit, spec=ctx.spec)
    plan.meta.update({"method": "uniform", "width_mult": mult, "importance": cfg.importance})
    if cfg.round_to == "lut":
        plan.meta["snapped"] = {k: list(v) for k, v in snapped.items()}
    cost, base = cm.cost(plan), cm.cost()
    log.info(
        "uniform: width multiplier %.4f -> %s (budget %s)", mult, budget.metrics(widths), budget.describe()
    )
    return MethodResult(
        plan=plan,
        model=apply(ctx.model, plan, space),
        history=[{"step": 1, "macs": cost.macs, "params": cost.params, "width_mult": mult}],
        trained=False,
        extra={
            "width_mult": mult,
            "target_macs": budget.limit("macs"),
            "macs": cost.macs,
            "base_macs": base.macs,
            "budget": budget.metrics(widths),
            **({"snapped_groups": len(snapped)} if cfg.round_to == "lut" else {}),
        },
    )
