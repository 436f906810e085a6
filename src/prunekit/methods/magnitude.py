"""``magnitude``: one-shot (or iterative) filter-norm channel pruning to a MACs target.

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
(:func:`~prunekit.methods.uniform.legal_width`). Because the bisection evaluates the exact MACs *after* rounding
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
from collections.abc import Iterable, Mapping
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field

from prunekit import importance as _importance
from prunekit.cost.macs import CostModel
from prunekit.errors import PrunekitError
from prunekit.methods.base import (
    ImportanceName,
    MethodContext,
    MethodResult,
    RoundTo,
    TagList,
    require_target,
)
from prunekit.methods.uniform import fit_uniform, legal_width
from prunekit.search.bisect import bisect_monotone
from prunekit.space import ChannelSpace, GroupChoice, Plan, apply, build_masks, mask, select_channels
from prunekit.train.masking import MaskCallback

__all__ = [
    "Config",
    "MagnitudeConfig",
    "alive_counts",
    "min_widths",
    "prune_to_target",
    "run",
    "scored_protected",
    "step_targets",
]

log = logging.getLogger(__name__)


class MagnitudeConfig(BaseModel):
    """Options of the ``magnitude`` method.

    Attributes:
        name: ``"magnitude"`` (the discriminator in run configs).
        importance: criterion name in :data:`prunekit.importance.CRITERIA` (default ``l1``, Li et al. §3.1).
        ranking: ``global`` (normalised scores ranked across groups) or ``per_layer`` (same ratio everywhere).
        round_to: kept channels rounded to a multiple of this; 1 = no rounding.
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
    round_to: RoundTo = 1
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


def alive_counts(space: ChannelSpace, alive: Mapping[str, torch.Tensor] | None) -> np.ndarray:
    """Channels still present per group, shape ``[G]`` (int64, space order); ``alive=None`` = all of them."""
    return np.array(
        [
            int(alive[g.name].sum()) if alive is not None and g.name in alive else g.channels
            for g in space.groups
        ],
        dtype=np.int64,
    )


def min_widths(
    space: ChannelSpace,
    *,
    protected: Iterable[str] = (),
    alive: Mapping[str, torch.Tensor] | None = None,
    round_to: int = 1,
    min_channels: int = 1,
) -> np.ndarray:
    """The smallest reachable widths, shape ``[G]``: every unprotected group at its minimum legal width (see
    :func:`~prunekit.methods.uniform.legal_width`), protected groups at their current (alive) width."""
    protected = set(protected)
    n_alive = alive_counts(space, alive)
    return np.array(
        [
            n_alive[i]
            if g.name in protected
            else min(n_alive[i], legal_width(g, 0, round_to=round_to, min_channels=min_channels))
            for i, g in enumerate(space.groups)
        ],
        dtype=np.int64,
    )


def _unreachable(
    target: float, smallest: float, round_to: int, min_channels: int, protected: set[str]
) -> str:
    prot = f", {len(protected)} protected group(s) whole" if protected else ""
    return (
        f"MACs target {target:,.0f} is below the smallest reachable model ({smallest:,.0f} MACs with every group at "
        f"min_channels={min_channels}, round_to={round_to}{prot}); raise the target or lower "
        "min_channels/round_to/protect"
    )


def scored_protected(
    space: ChannelSpace, scores: Mapping[str, torch.Tensor], protected: Iterable[str]
) -> set[str]:
    """Names of the groups never pruned: those in ``protected`` and those without ``scores``."""
    given = set(protected)
    return {g.name for g in space.groups if g.name in given or g.name not in scores}


def prune_to_target(
    space: ChannelSpace,
    cost: CostModel,
    scores: Mapping[str, torch.Tensor],
    target_macs: float,
    *,
    ranking: Literal["global", "per_layer"] = "global",
    alive: Mapping[str, torch.Tensor] | None = None,
    protected: Iterable[str] = (),
    round_to: int = 1,
    min_channels: int = 1,
    spec: str | None = None,
) -> Plan:
    """The largest plan (in MACs) within ``target_macs`` that removes the lowest-scored channels.

    Args:
        space, cost: the channel space and its :class:`CostModel` (MACs are conv + linear MACs per sample).
        scores: ``{group name: Tensor[C]}`` importance (higher = more important) for every unprotected group;
            a group without scores is treated as protected.
        target_macs: the budget.
        ranking: ``per_layer`` — one ratio ``r`` of each group's original width, top-``k`` per group (bisection on
            ``r``); ``global`` — scores divided by the mean of the group's alive scores, globally lowest removed
            first (integer bisection on the number of channels removed). See the module docstring.
        alive: ``{group name: bool Tensor[C]}`` channels still present (earlier iterative steps); dead channels are
            never kept again (score ``-inf``) and widths never grow. ``None`` = every channel alive.
        protected: group names never pruned further.
        round_to, min_channels: rounding / floor of every kept count (see :func:`legal_width`).
        spec: model spec stored in the plan.

    Returns:
        a :class:`Plan` over ``space`` (every pruned channel, earlier steps' included), with MACs ``<= target_macs``.

    Raises:
        PrunekitError: the target is below the smallest reachable model (message gives its MACs), or a group's
            scores are not finite.
    """
    groups = space.groups
    protected = scored_protected(space, scores, protected)
    n_alive = alive_counts(space, alive)
    masked: dict[str, torch.Tensor] = {}
    for g in groups:
        s = (
            scores[g.name].detach().to("cpu", torch.float64).reshape(-1).clone()
            if g.name in scores
            else torch.zeros(g.channels, dtype=torch.float64)
        )
        if s.numel() != g.channels:
            raise ValueError(f"scores of group {g.name!r} have {s.numel()} entries, the group {g.channels}")
        live = alive[g.name].to("cpu", torch.bool) if alive is not None and g.name in alive else None
        if not torch.isfinite(s if live is None else s[live]).all():
            raise PrunekitError(
                f"importance scores of channel group {g.name!r} are not finite (NaN/inf weights?); check the model"
            )
        if live is not None:
            s[~live] = float("-inf")
        masked[g.name] = s
    prunable = [i for i, g in enumerate(groups) if g.name not in protected]

    def lw(i: int, w: float) -> int:
        return min(int(n_alive[i]), legal_width(groups[i], w, round_to=round_to, min_channels=min_channels))

    def macs(widths: np.ndarray) -> float:
        return float(np.rint(cost.macs(widths)))

    smallest = macs(
        min_widths(space, protected=protected, alive=alive, round_to=round_to, min_channels=min_channels)
    )
    if smallest > target_macs:
        raise PrunekitError(_unreachable(target_macs, smallest, round_to, min_channels, protected))

    if ranking == "per_layer":
        fixed = {i: int(n_alive[i]) for i, g in enumerate(groups) if g.name in protected}
        mult, widths = fit_uniform(
            space, cost, target_macs, round_to=round_to, min_channels=min_channels, cap=n_alive, fixed=fixed
        )
        info = {"ratio": 1.0 - mult}
    elif ranking == "global":
        norm = {}
        cand_group, cand_chan, cand_score = [], [], []
        for i in prunable:
            s = masked[groups[i].name]
            live = torch.isfinite(s)
            mean = float(s[live].mean()) if live.any() else 0.0
            ns = s / mean if mean > 0 else torch.where(live, 0.0, float("-inf")).to(torch.float64)
            norm[i] = np.sort(ns.numpy())[::-1]  # descending; dead channels (-inf) last
            idx = torch.nonzero(live).flatten()
            cand_group.append(np.full(len(idx), i, dtype=np.int64))
            cand_chan.append(idx.numpy())
            cand_score.append(ns[idx].numpy())
        grp = np.concatenate(cand_group) if cand_group else np.zeros(0, dtype=np.int64)
        chan = np.concatenate(cand_chan) if cand_chan else np.zeros(0, dtype=np.int64)
        val = np.concatenate(cand_score) if cand_score else np.zeros(0)
        order_grp = grp[np.lexsort((chan, grp, val))]  # ascending normalised score, ties by (group, channel)

        def widths_after(k: int) -> np.ndarray:
            removed = np.bincount(order_grp[:k], minlength=len(groups))
            w = n_alive.copy()
            for i in prunable:
                w[i] = lw(i, float(n_alive[i] - removed[i]))
            return w

        res = bisect_monotone(
            lambda k: macs(widths_after(int(k))),
            0,
            len(order_grp),
            target_macs,
            increasing=False,
            tol_rel=0.0,
            integer=True,
            what="MACs",
        )
        widths = widths_after(int(res.x))
        removed_by_threshold = int(res.x)
        # fill: rounding leaves budget unused; give it back, best next channel (normalised score) first
        while True:
            cands = []
            for i in prunable:
                nxt = min(
                    int(n_alive[i]), legal_width(groups[i], widths[i] + 1, round_to=round_to, mode="ceil")
                )
                if nxt > widths[i]:
                    cands.append((-float(norm[i][widths[i]]), i, nxt))
            for _, i, nxt in sorted(cands):
                trial = widths.copy()
                trial[i] = nxt
                if macs(trial) <= target_macs:
                    widths = trial
                    break
            else:
                break
        info = {"removed_by_threshold": removed_by_threshold}
    else:
        raise ValueError(f"ranking must be 'global' or 'per_layer', got {ranking!r}")

    plan = Plan(model=spec, input_shape=list(space.input_shape))
    for i, g in enumerate(groups):
        w = int(widths[i])
        if w >= g.channels:
            continue
        keep = select_channels(g, w, masked[g.name])
        if len(keep) != w or (alive is not None and g.name in alive and not bool(alive[g.name][keep].all())):
            raise AssertionError(f"internal: group {g.name} kept {len(keep)} channels for width {w}")
        plan.groups[g.name] = GroupChoice(channels=g.channels, keep=keep)
    plan.meta.update(info)
    return plan


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


# ---------------------------------------------------------------------------------------------- the method
def run(ctx: MethodContext, cfg: MagnitudeConfig) -> MethodResult:
    """Prune ``ctx.model`` by channel importance to ``ctx.target_macs`` (MACs per sample), one-shot or iteratively.

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
    target = require_target(ctx, "magnitude")
    protected = {g.name for g in space.groups if g.tags & set(cfg.protect)}
    prunable = [g.name for g in space.groups if g.name not in protected]
    base = cm.cost()
    smallest = float(
        np.rint(
            cm.macs(
                min_widths(space, protected=protected, round_to=cfg.round_to, min_channels=cfg.min_channels)
            )
        )
    )
    if smallest > target:
        raise PrunekitError(_unreachable(target, smallest, cfg.round_to, cfg.min_channels, protected))
    steps = cfg.steps if target < base.macs else 1
    targets = step_targets(base.macs, target, steps)
    opts = {
        "ranking": cfg.ranking,
        "protected": protected,
        "round_to": cfg.round_to,
        "min_channels": cfg.min_channels,
        "spec": ctx.spec,
    }

    work: nn.Module = ctx.model
    alive: dict[str, torch.Tensor] | None = None
    history: list[dict] = []
    plan = Plan(model=ctx.spec, input_shape=list(space.input_shape))
    final: nn.Module | None = None
    for k, tk in enumerate(targets, 1):
        last = k == steps
        plan = prune_to_target(space, cm, _scores(crit, work, space, prunable), tk, alive=alive, **opts)
        if last:
            final = apply(work, plan, space)
            evaluated = final
        else:
            if alive is None:
                work, masks = mask(ctx.model, plan, space)  # the masked copy every later step works on
            else:
                masks = build_masks(work, plan, space)
                masks.apply_(work)
            alive = _alive_of(space, plan)
            if cfg.step_epochs > 0:
                ctx.finetune(work, cfg.step_epochs, callbacks=[MaskCallback(masks)], tag=f"magnitude-step{k}")
                masks.apply_(work)
            evaluated = work
        c = cm.cost(plan)
        val = _val_top1(ctx, evaluated)
        history.append({"step": k, "macs": c.macs, "params": c.params, "val_top1": val})
        log.info(
            "magnitude step %d/%d: %s MACs (target %s), val top1 %s",
            k,
            steps,
            f"{c.macs:,}",
            f"{tk:,.0f}",
            val,
        )
    assert final is not None
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
            "step_targets": targets,
            "base_macs": base.macs,
            "target_macs": target,
            "macs": macs_final,
            "protected": sorted(protected),
        },
    )
