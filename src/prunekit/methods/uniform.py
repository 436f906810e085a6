"""``uniform``: one width multiplier for every channel group, chosen so the model fits the MACs target.

The classic baseline of width-multiplier networks (Howard et al., "MobileNets", 2017, §3.3 "Width multiplier"):
every prunable group of ``C`` channels keeps ``round_width(m * C)`` channels, with ``m`` in ``(0, 1]`` the largest
multiplier whose model's MACs do not exceed ``ctx.target_macs`` (found by bisection, :mod:`prunekit.search.bisect`;
groups may round up or down independently so equal-width groups can cross a rounding step one at a time, see
:func:`fit_uniform`).
Kept channels are the first ``k`` (``importance: first``, for training from scratch: "uniform scratch" baselines of
Liu et al., "Rethinking the Value of Network Pruning", ICLR 2019) or the top-``k`` by an importance criterion when
starting from a trained model. The pipeline then trains / finetunes the returned model (``trained=False``).

Config (YAML)::

    method: {name: uniform, importance: first, round_to: 8, min_channels: 8}
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from prunekit import importance as _importance
from prunekit.cost.macs import CostModel
from prunekit.errors import PrunekitError
from prunekit.methods.base import MethodContext, MethodResult, RoundTo, require_target
from prunekit.search.bisect import bisect_monotone
from prunekit.space import ChannelGroup, ChannelSpace, apply, plan_from_widths, round_width

__all__ = ["Config", "UniformConfig", "fit_uniform", "legal_width", "run", "uniform_widths"]

log = logging.getLogger(__name__)


class UniformConfig(BaseModel):
    """Options of the ``uniform`` method.

    Attributes:
        name: ``"uniform"`` (the discriminator in run configs).
        importance: ``"first"`` keeps the first ``k`` channels of each group; any criterion name of
            :data:`prunekit.importance.CRITERIA` (``l1``, ``l2``, ``bn_scale``, ``l1_bn``, ``random``) keeps the
            top-``k`` by that criterion on ``ctx.model``.
        round_to: kept channels are rounded to a multiple of this (hardware-friendly widths); 1 = no rounding.
        min_channels: every group keeps at least this many channels (or all of them when it has fewer).
    """

    model_config = ConfigDict(extra="forbid")
    name: Literal["uniform"] = "uniform"
    importance: str = "first"
    round_to: RoundTo = 1
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


Rounding = Literal["nearest", "floor", "ceil"]


def legal_width(
    group: ChannelGroup, width: float, *, round_to: int = 1, min_channels: int = 1, mode: Rounding = "nearest"
) -> int:
    """The kept-channel count of ``group`` for a (fractional) target ``width``, exactly as a plan realises it.

    ``width`` is rounded to a multiple of ``round_to`` (``mode``: ``nearest`` with ties up, as
    :func:`~prunekit.space.round_width`; ``floor``; ``ceil``) and clamped to ``[min(max(min_channels, multiple), C), C]``. Groups
    touching a grouped conv (``group.blocks > 1``) are rounded to a multiple of ``lcm(round_to, blocks)`` and then
    down to a multiple of ``blocks`` (at least one channel per block), which is what
    :func:`~prunekit.space.select_channels` keeps. The map is non-decreasing in ``width`` (so costs built on it are
    monotone and can be bisected).
    """
    b, c = int(group.blocks), int(group.channels)
    multiple = int(np.lcm(max(1, round_to), b)) if b > 1 else max(1, int(round_to))
    if mode == "nearest":
        w = round_width(width, c, multiple=multiple, min_channels=min_channels)
    else:
        q = width / multiple
        k = math.floor(q + 1e-9) if mode == "floor" else math.ceil(q - 1e-9)
        w = min(c, max(min(max(1, min_channels, multiple), c), k * multiple))
    if b > 1:
        w = max(b, (w // b) * b)  # C is a multiple of b (ChannelSpace), so this never exceeds C
    return int(w)


def uniform_widths(
    space: ChannelSpace,
    mult: float,
    *,
    round_to: int = 1,
    min_channels: int = 1,
    mode: Rounding = "nearest",
    cap: np.ndarray | None = None,
    fixed: Mapping[int, int] | None = None,
) -> np.ndarray:
    """Kept channels per group, shape ``[G]`` (int64, space order), for width multiplier ``mult`` in ``[0, 1]``:
    ``legal_width(g, mult * C_g)`` for every group (``mult = 0``: every group at its minimum), capped at ``cap``
    (shape ``[G]``, e.g. channels still alive), with ``fixed`` ``{group index: width}`` overriding (protected groups).
    """
    w = np.array(
        [
            legal_width(g, mult * g.channels, round_to=round_to, min_channels=min_channels, mode=mode)
            for g in space.groups
        ],
        dtype=np.int64,
    )
    if cap is not None:
        w = np.minimum(w, np.asarray(cap, dtype=np.int64))
    for i, v in (fixed or {}).items():
        w[i] = v
    return w


def fit_uniform(
    space: ChannelSpace,
    cost: CostModel,
    target_macs: float,
    *,
    round_to: int = 1,
    min_channels: int = 1,
    cap: np.ndarray | None = None,
    fixed: Mapping[int, int] | None = None,
) -> tuple[float, np.ndarray]:
    """The largest uniform-width model within ``target_macs``: ``(multiplier m, widths [G])``.

    Every group ``g`` keeps a width within one rounding step of ``m * C_g`` (see :func:`uniform_widths` for
    ``cap`` / ``fixed``). Two candidates are bisected (MACs are monotone in ``m``) and the larger one within the
    target wins: (a) nearest rounding with the largest feasible ``m``; (b) floor rounding with the largest feasible
    ``m``, then groups are rounded *up* one by one (largest fractional part ``m * C_g / round_to`` first) while the
    MACs stay within the target. (b) lets groups of equal width cross a rounding step one at a time, which matters
    for small groups (8 channels: one channel is 12.5% of the width). Widths are MACs-checked after rounding, so the
    result never exceeds the target.

    Raises:
        PrunekitError: even ``m = 0`` (every group at ``min_channels``) exceeds the target.
    """
    target = float(target_macs)
    opts = {"round_to": round_to, "min_channels": min_channels, "cap": cap, "fixed": fixed}

    def macs(w: np.ndarray) -> float:
        return float(np.rint(cost.macs(w)))

    near = bisect_monotone(
        lambda m: macs(uniform_widths(space, m, mode="nearest", **opts)),
        0.0,
        1.0,
        target,
        tol_rel=0.0,
        max_iter=64,
        what="MACs",
    )
    best_m, best = float(near.x), uniform_widths(space, float(near.x), mode="nearest", **opts)
    low = bisect_monotone(
        lambda m: macs(uniform_widths(space, m, mode="floor", **opts)),
        0.0,
        1.0,
        target,
        tol_rel=0.0,
        max_iter=64,
        what="MACs",
    )
    m = float(low.x)
    w = uniform_widths(space, m, mode="floor", **opts)
    up = uniform_widths(space, m, mode="ceil", **opts)
    frac = [
        (m * g.channels / max(1, round_to)) % 1.0 if up[i] > w[i] else -1.0
        for i, g in enumerate(space.groups)
    ]
    for i in sorted(range(len(w)), key=lambda i: -frac[i]):
        if up[i] > w[i]:
            trial = w.copy()
            trial[i] = up[i]
            if macs(trial) <= target:
                w = trial
    if macs(w) > macs(best):
        best_m, best = m, w
    return best_m, best


def run(ctx: MethodContext, cfg: UniformConfig) -> MethodResult:
    """Prune every group by the same width multiplier to fit ``ctx.target_macs`` (MACs per sample).

    The multiplier ``m`` is bisected on ``[0, 1]`` (MACs are non-decreasing in ``m``) to the largest model whose
    analytic MACs (``ctx.cost``, after rounding) do not exceed the target (:func:`fit_uniform`: every group within one
    rounding step of ``m * C``); a target at or above the baseline keeps the model whole. ``ctx.model`` is not
    modified.

    Returns:
        :class:`MethodResult` with the plan (``meta``: method, width multiplier), the applied (physically smaller)
        model, one history row ``{"step", "macs", "params", "width_mult"}``, ``trained=False`` and ``extra``
        ``{"width_mult", "target_macs", "macs", "base_macs"}``.

    Raises:
        PrunekitError: the target is below the smallest reachable model (every group at ``min_channels``); the
            message gives that model's MACs.
    """
    space, cm = ctx.space, ctx.cost
    target = require_target(ctx, "uniform")

    smallest = float(
        np.rint(cm.macs(uniform_widths(space, 0.0, round_to=cfg.round_to, min_channels=cfg.min_channels)))
    )
    if smallest > target:
        raise PrunekitError(
            f"MACs target {target:,.0f} is below the smallest model uniform can reach ({smallest:,.0f} MACs with "
            f"every group at min_channels={cfg.min_channels}, round_to={cfg.round_to}); raise the target or lower "
            "min_channels/round_to"
        )
    mult, widths = fit_uniform(space, cm, target, round_to=cfg.round_to, min_channels=cfg.min_channels)
    crit = None if cfg.importance == "first" else _importance.get(cfg.importance)
    plan = plan_from_widths(space, widths, model=ctx.model, importance=crit, spec=ctx.spec)
    plan.meta.update({"method": "uniform", "width_mult": mult, "importance": cfg.importance})
    cost = cm.cost(plan)
    base = cm.cost()
    log.info(
        "uniform: width multiplier %.4f -> %s MACs (target %s, baseline %s)",
        mult,
        f"{cost.macs:,}",
        f"{target:,.0f}",
        f"{base.macs:,}",
    )
    model = apply(ctx.model, plan, space)
    return MethodResult(
        plan=plan,
        model=model,
        history=[{"step": 1, "macs": cost.macs, "params": cost.params, "width_mult": mult}],
        trained=False,
        extra={"width_mult": mult, "target_macs": target, "macs": cost.macs, "base_macs": base.macs},
    )
