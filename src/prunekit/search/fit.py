"""Fit a plan to a budget: the largest uniform-width model, or the largest model removing the lowest-scored channels.

:func:`fit_uniform` bisects the width multiplier of :func:`prunekit.space.widths.uniform_widths` (MACs are
monotone in it) to the largest model within a budget (Howard et al., "MobileNets", 2017, §3.3; the "uniform"
baselines of Liu et al., "Rethinking the Value of Network Pruning", ICLR 2019).

:func:`prune_to_target` removes the lowest-ranked channels (Li et al., "Pruning Filters for Efficient ConvNets",
ICLR 2017, §3.1; per-group normalised global ranking or one ratio per group, see its docstring) and bisects how many
to remove. Both evaluate the exact cost after rounding, so the result never exceeds the budget.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import numpy as np
import torch

from prunekit.cost.budget import Budget
from prunekit.cost.macs import CostModel
from prunekit.errors import PrunekitError
from prunekit.search.bisect import bisect_monotone
from prunekit.search.snap import snap_to_table
from prunekit.space import ChannelGroup, ChannelSpace, GroupChoice, Plan
from prunekit.space.widths import legal_width, select_channels, uniform_widths

__all__ = [
    "alive_counts",
    "fit_uniform",
    "min_widths",
    "prune_to_target",
    "as_budget",
    "require_reachable",
    "scored_protected",
]


def fit_uniform(
    space: ChannelSpace,
    cost: CostModel,
    target: Budget | float,
    *,
    round_to: int = 1,
    min_channels: int = 1,
    cap: np.ndarray | None = None,
    fixed: Mapping[int, int] | None = None,
) -> tuple[float, np.ndarray]:
    """The largest uniform-width model within ``target`` (a :class:`Budget`, or a MACs limit): ``(multiplier m,
    widths [G])``.

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
    budget = as_budget(target, cost)
    target = budget.load_limit
    opts = {"round_to": round_to, "min_channels": min_channels, "cap": cap, "fixed": fixed}
    macs, what = budget.load, _what(budget)

    def largest_mult(mode: str) -> float:
        res = bisect_monotone(
            lambda m: macs(uniform_widths(space, m, mode=mode, **opts)),
            0.0,
            1.0,
            target,
            tol_rel=0.0,
            max_iter=64,
            what=what,
        )
        return float(res.x)

    best_m = largest_mult("nearest")
    best = uniform_widths(space, best_m, mode="nearest", **opts)
    m = largest_mult("floor")
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
    :func:`~prunekit.space.widths.legal_width`), protected groups at their current (alive) width."""
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


def as_budget(target: Budget | float, cost: CostModel) -> Budget:
    """``target`` as a :class:`Budget`: a number is a MACs limit (conv + linear MACs per sample)."""
    return target if isinstance(target, Budget) else Budget.of_macs(cost, float(target))


def _what(budget: Budget) -> str:
    if len(budget.constraints) > 1:
        return "budget load (largest value / limit)"
    return {"macs": "MACs", "params": "params", "latency_ms": "latency (ms)"}[budget.constraints[0].metric]


def require_reachable(
    budget: Budget,
    smallest: np.ndarray,
    *,
    who: str,
    round_to: int,
    min_channels: int,
    protected: Iterable[str] = (),
) -> None:
    """:meth:`Budget.require_reachable` for a method whose smallest model is ``smallest`` (widths ``[G]``: every
    unprotected group at ``min_channels`` rounded to ``round_to``).

    Raises:
        PrunekitError: a constraint is below that model (one line: the constraint, the model's value, the fix).
    """
    n = len(set(protected))
    prot = f", {n} protected group(s) whole" if n else ""
    budget.require_reachable(
        smallest,
        who=who,
        how=f"every group at min_channels={min_channels}, round_to={round_to}{prot}",
        fix="raise the target or lower min_channels/round_to" + ("/protect" if n else ""),
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
    target: Budget | float,
    *,
    ranking: Literal["global", "per_layer"] = "global",
    alive: Mapping[str, torch.Tensor] | None = None,
    protected: Iterable[str] = (),
    round_to: int = 1,
    min_channels: int = 1,
    spec: str | None = None,
    who: str = "magnitude",
    snap: bool = False,
) -> Plan:
    """The largest plan within ``target`` (a :class:`Budget`, or a MACs limit) that removes the lowest-scored
    channels.

    Args:
        space, cost: the channel space and its :class:`CostModel` (MACs are conv + linear MACs per sample).
        scores: ``{group name: Tensor[C]}`` importance (higher = more important) for every unprotected group;
            a group without scores is treated as protected.
        target: the budget (:class:`Budget`; a number is a MACs limit, conv + linear MACs per sample).
        ranking: ``per_layer`` — one ratio ``r`` of each group's original width, top-``k`` per group (bisection on
            ``r``, :func:`fit_uniform`); ``global`` — scores divided by the mean of the group's alive scores,
            globally lowest removed first (integer bisection on the number of channels removed,
            :func:`_global_widths`), then, for an analytic budget, the budget rounding left unused is given back
            best next channel first (:func:`_fill`). Either way the widths' top-scored alive channels are kept
            (:func:`_plan_from_widths_and_scores`). See the module docstring.
        alive: ``{group name: bool Tensor[C]}`` channels still present (earlier iterative steps); dead channels are
            never kept again (score ``-inf``) and widths never grow. ``None`` = every channel alive.
        protected: group names never pruned further.
        round_to, min_channels: rounding / floor of every kept count (see :func:`legal_width`).
        spec: model spec stored in the plan. who: the method named in an unreachable-target error.
        snap: ``round_to: lut`` -- after fitting (unrounded), each unprotected group is rounded up where the budget's
            latency table predicts it free (:func:`prunekit.search.snap.snap_to_table`; never beyond the alive
            channels); ``plan.meta["snapped"]`` lists the groups raised.

    Returns:
        a :class:`Plan` over ``space`` (every pruned channel, earlier steps' included), within the budget.

    Raises:
        PrunekitError: the target is below the smallest reachable model (message gives its MACs), or a group's
            scores are not finite.
    """
    groups = space.groups
    protected = scored_protected(space, scores, protected)
    n_alive = alive_counts(space, alive)
    masked = _masked_scores(space, scores, alive)
    prunable = [i for i, g in enumerate(groups) if g.name not in protected]
    budget = as_budget(target, cost)
    require_reachable(
        budget,
        min_widths(space, protected=protected, alive=alive, round_to=round_to, min_channels=min_channels),
        who=who,
        round_to=round_to,
        min_channels=min_channels,
        protected=protected,
    )
    info: dict[str, float | int]
    if ranking == "per_layer":
        fixed = {i: int(n_alive[i]) for i, g in enumerate(groups) if g.name in protected}
        mult, widths = fit_uniform(
            space, cost, budget, round_to=round_to, min_channels=min_channels, cap=n_alive, fixed=fixed
        )
        info = {"ratio": 1.0 - mult}
    elif ranking == "global":
        norm = _normalised_scores(masked, groups, prunable)
        widths, removed = _global_widths(
            space, budget, masked, norm, prunable, n_alive, round_to=round_to, min_channels=min_channels
        )
        # only for analytic budgets: a measured latency is checked by an ONNX export per trial, and its noise is
        # larger than what one channel changes
        if budget.analytic:
            widths = _fill(space, budget, widths, norm, prunable, n_alive, round_to=round_to)
        info = {"removed_by_threshold": removed}
    else:
        raise ValueError(f"ranking must be 'global' or 'per_layer', got {ranking!r}")
    snapped: dict[str, tuple[int, int]] = {}
    if snap:
        frozen = [i for i, g in enumerate(groups) if g.name in protected]
        widths, snapped = snap_to_table(space, widths, budget, cap=n_alive, frozen=frozen, who=who)
    plan = _plan_from_widths_and_scores(space, widths, masked, alive, spec)
    plan.meta.update(info)
    if snap:
        plan.meta["snapped"] = {k: list(v) for k, v in snapped.items()}
    return plan


def _masked_scores(
    space: ChannelSpace, scores: Mapping[str, torch.Tensor], alive: Mapping[str, torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    """``{group name: float64 Tensor[C]}`` on the CPU for every group of ``space``: its scores (zeros without
    any), dead channels (``alive`` False) at ``-inf`` so they are never kept again.

    Raises:
        ValueError: a group's scores have the wrong length.
        PrunekitError: an alive channel's score is not finite.
    """
    masked: dict[str, torch.Tensor] = {}
    for g in space.groups:
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
    return masked


def _normalised_scores(
    masked: Mapping[str, torch.Tensor], groups: Sequence[ChannelGroup], prunable: Sequence[int]
) -> dict[int, torch.Tensor]:
    """``{group index: float64 Tensor[C]}`` for the ``prunable`` groups: the masked scores divided by the mean of
    the group's alive scores (Li et al.'s per-layer normalisation, so groups compare globally); a group whose mean
    is not positive scores 0 throughout. Dead channels stay ``-inf``."""
    norm: dict[int, torch.Tensor] = {}
    for i in prunable:
        s = masked[groups[i].name]
        live = torch.isfinite(s)
        mean = float(s[live].mean()) if live.any() else 0.0
        norm[i] = s / mean if mean > 0 else torch.where(live, 0.0, float("-inf")).to(torch.float64)
    return norm


def _global_widths(
    space: ChannelSpace,
    budget: Budget,
    masked: Mapping[str, torch.Tensor],
    norm: Mapping[int, torch.Tensor],
    prunable: Sequence[int],
    n_alive: np.ndarray,
    *,
    round_to: int,
    min_channels: int,
) -> tuple[np.ndarray, int]:
    """Global ranking: remove the alive channels (finite ``masked`` score) of the ``prunable`` groups lowest
    normalised score (``norm``) first, ties by group then channel, and bisect the number ``k`` removed (integer;
    the budget load is monotone in it) to the largest model within ``budget``. Each group keeps the legal width
    (:func:`legal_width`, at most its alive count) of what is left of it.

    Returns:
        ``(widths int64 [G], k)``.
    """
    groups = space.groups
    cand_group, cand_chan, cand_score = [], [], []
    for i in prunable:
        idx = torch.nonzero(torch.isfinite(masked[groups[i].name])).flatten()  # the alive channels
        cand_group.append(np.full(len(idx), i, dtype=np.int64))
        cand_chan.append(idx.numpy())
        cand_score.append(norm[i][idx].numpy())
    grp = np.concatenate(cand_group) if cand_group else np.zeros(0, dtype=np.int64)
    chan = np.concatenate(cand_chan) if cand_chan else np.zeros(0, dtype=np.int64)
    val = np.concatenate(cand_score) if cand_score else np.zeros(0)
    order_grp = grp[np.lexsort((chan, grp, val))]  # ascending normalised score, ties by (group, channel)

    def widths_after(k: int) -> np.ndarray:
        removed = np.bincount(order_grp[:k], minlength=len(groups))
        w = n_alive.copy()
        for i in prunable:
            left = float(n_alive[i] - removed[i])
            w[i] = min(
                int(n_alive[i]), legal_width(groups[i], left, round_to=round_to, min_channels=min_channels)
            )
        return w

    res = bisect_monotone(
        lambda k: budget.load(widths_after(int(k))),
        0,
        len(order_grp),
        budget.load_limit,
        increasing=False,
        tol_rel=0.0,
        integer=True,
        what=_what(budget),
    )
    return widths_after(int(res.x)), int(res.x)


def _fill(
    space: ChannelSpace,
    budget: Budget,
    widths: np.ndarray,
    norm: Mapping[int, torch.Tensor],
    prunable: Sequence[int],
    n_alive: np.ndarray,
    *,
    round_to: int,
) -> np.ndarray:
    """Give back the budget rounding left unused: repeatedly grow, by one rounding step (at most to its alive
    count), the prunable group whose best next channel (normalised score) is highest among those that still fit
    within ``budget``; stop when none fits. Returns the new widths (``widths`` is not modified)."""
    groups = space.groups
    desc = {i: np.sort(norm[i].numpy())[::-1] for i in prunable}  # descending; dead channels (-inf) last
    limit = budget.load_limit
    while True:
        cands = []
        for i in prunable:
            nxt = min(int(n_alive[i]), legal_width(groups[i], widths[i] + 1, round_to=round_to, mode="ceil"))
            if nxt > widths[i]:
                cands.append((-float(desc[i][widths[i]]), i, nxt))
        for _, i, nxt in sorted(cands):
            trial = widths.copy()
            trial[i] = nxt
            if budget.load(trial) <= limit:
                widths = trial
                break
        else:
            return widths


def _plan_from_widths_and_scores(
    space: ChannelSpace,
    widths: np.ndarray,
    masked: Mapping[str, torch.Tensor],
    alive: Mapping[str, torch.Tensor] | None,
    spec: str | None,
) -> Plan:
    """The :class:`Plan` keeping, in every group narrower than its original width, its ``widths[g]`` top-scored
    channels (:func:`select_channels` on the masked scores, so never a dead one)."""
    plan = Plan(model=spec, input_shape=list(space.input_shape))
    for i, g in enumerate(space.groups):
        w = int(widths[i])
        if w >= g.channels:
            continue
        keep = select_channels(g, w, masked[g.name])
        if len(keep) != w or (alive is not None and g.name in alive and not bool(alive[g.name][keep].all())):
            raise AssertionError(f"internal: group {g.name} kept {len(keep)} channels for width {w}")
        plan.groups[g.name] = GroupChoice(channels=g.channels, keep=keep)
    return plan
