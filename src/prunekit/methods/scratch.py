"""``scratch``: Pruning from Scratch — channel gates learned on random weights, global top-k to a MACs target,
then the pruned architecture trained from a fresh initialisation with the Scratch-B budget.

Wang, Zhang, Xie, Zhou, Su, Zhang, Hu, "Pruning from Scratch", AAAI 2020 (its sections are unnumbered; they are
named below). :func:`run` is the algorithm, one call per step:

1. **Expansion** (section "Pruning from Scratch", "Solution Space"; the original's ``-e``,
   ``script/learn_gates.py``): build the network wider than the reference, at random initialisation (no pretrained
   weights): the model spec's ``width_mult`` option is multiplied by ``expansion`` (builtin models; other models need
   ``expansion: 1``). Every prunable channel group of the expanded model is a candidate. See
   :func:`build_expanded`.
2. **Gates** (section "Empirical Investigation", "Problem Formulation": channel-importance learning; ``gate.py``,
   ``learn_gates.py``): one scalar gate per channel of every channel group (one vector shared by a whole residual
   group), applied after the group's normalisation layers, initialised to 1. Only the gates train (Adam, weights
   frozen at their random values) on ``CE + lambda * (mean|g| - r) ** 2``; gates are clamped to ``[0, 1]`` after
   every step. The gates of the epoch with the best validation top-1 among the epochs whose fraction of non-zero
   gates is at most ``r`` are kept (else the last epoch's). See :func:`gate_recipe` (the method's recipe) and
   :func:`prunekit.supernets.gates.learn_gates` (the procedure).
3. **Pruning to a MACs target** (same section: a global threshold on the gates; ``script/prune_model.py``):
   channels are ranked by gate value over the whole network and the number ``k`` of top channels kept (equivalently
   the gate threshold) is bisected until the pruned model's MACs are within ``tol`` (relative) of the target. The
   target is relative to the **reference-width** model (``ctx.target_macs``, e.g. 50% of the unexpanded network's
   MACs), as in the original (its "full" model is the standard-width one); MACs are those of the
   expanded-then-pruned model (:class:`~prunekit.cost.macs.CostModel` over the expanded space). Every group keeps at
   least ``min_channels`` (optionally rounded to a multiple of ``round_to``). See :func:`prune_to_macs`.
4. **Budget** (section "Pruning from Scratch", "Budget Training"; ``script/train_pruned.py --budget_train``;
   "Scratch-B" of Liu et al., "Rethinking the Value of Network Pruning", ICLR 2019): the base recipe trained for
   ``epochs / (1 - p)`` epochs, ``p`` the achieved MACs reduction against the reference model (the same compute as
   training the reference for ``epochs``); ``budget: scratch-e`` keeps ``epochs``. See :func:`scratch_budget`.
5. **Training from scratch** (same section): the plan is applied to a *freshly initialised* expanded model, which
   is trained with that recipe. See :func:`train_from_scratch`.

Differences from the original code (``frankwang345/pruning-from-scratch``, see ``shared/reference/seed-methods.md``
§3): gates go on every channel group the traced :class:`~prunekit.space.ChannelSpace` finds (residual and stage
widths included) instead of modules matched by class name; for depthwise chains the gate sits on the last BN of the
group (after the depthwise conv) rather than the expansion BN; groups keep ``min_channels`` (the original can reach
0 channels); ties between equal gates (many gates end exactly at 0) are spread evenly over their groups instead of
left to ``topk``'s arbitrary order; when no top-``k`` prefix lands within ``tol`` (one channel of a wide residual
group can move the MACs by several percent), the remaining budget is filled with the next best channels that still
fit, then at most two one-channel swaps are tried (:func:`prune_to_macs`), and when even that cannot reach the
tolerance the run fails with a clear message instead of saving an off-target plan; the tolerance is on the MACs
(``|MACs - target| <= tol * target``; the original's is on the reduction ratio, the same at 50%); Scratch-B epochs
are not truncated to an integer and the recipe's LR milestones are stretched with them.

The plan is over the **expanded** model: ``plan.model`` is the expanded spec (``plan.meta["reference_spec"]`` the
run's), so ``rebuild(plan)`` gives the pruned architecture. Artefacts in ``ctx.out_dir``: ``gates.json`` (the kept
gate values per group) and ``gates.png`` (sorted gate values per group with the cut line); see
:func:`save_gate_artefacts`. All MACs here are multiply-accumulates of convolutions and linear layers **per
sample** (batch 1, the run's input shape).

``--smoke`` runs shrink both training phases with the shared rule :func:`prunekit.train.smoke_recipe` (at most one
epoch, warm-up at most half of it, later milestones dropped); the Scratch-B stretch then applies to the shrunk
recipe.

Config (YAML)::

    method: {name: scratch, expansion: 1.25, gate_epochs: 10, gate_lr: 0.01, lam: 0.5, sparsity: 0.2,
             tol: 0.001, min_channels: 1, round_to: 1, budget: scratch-b}
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field

from prunekit.cost.budget import Budget
from prunekit.cost.latency import resolve_round_to
from prunekit.cost.macs import CostModel
from prunekit.errors import PrunekitError
from prunekit.methods.base import MethodContext, MethodResult, RoundTo, require_target, require_train
from prunekit.search.bisect import bisect_monotone
from prunekit.space import ChannelSpace, GroupChoice, Plan, apply, select_channels
from prunekit.space.widths import legal_width
from prunekit.supernets.gates import LearnedGates, learn_gates
from prunekit.train import TrainConfig, smoke_recipe

__all__ = [
    "Config",
    "ExpandedNet",
    "ScratchConfig",
    "budget_recipe",
    "build_expanded",
    "channel_order",
    "check_reachable",
    "expand_spec",
    "gate_recipe",
    "plot_gates",
    "prune_to_macs",
    "pruned_recipe",
    "run",
    "save_gate_artefacts",
    "scratch_budget",
    "train_from_scratch",
]

log = logging.getLogger(__name__)


class ScratchConfig(BaseModel):
    """Options of the ``scratch`` method (defaults: the original's CIFAR settings).

    Attributes:
        name: ``"scratch"``.
        expansion: width multiplier of the searched model over the reference (``>= 1``; 1.25 is the original's
            CIFAR default, 80 channels over VGG's 64); needs a model spec with a ``width_mult`` option unless 1.
        gate_epochs: epochs of gate training (CIFAR 10; ImageNet 1). gate_lr: Adam learning rate (0.01).
        lam: weight ``lambda`` of the sparsity term (CIFAR 0.5; ImageNet 0.05).
        sparsity: target mean gate ``r`` of the sparsity term, and the largest fraction of non-zero gates an epoch
            may have to be selected (CIFAR 0.2; ImageNet 0.5).
        tol: accepted relative MACs error of the pruned model against the target (0.001 = 0.1%).
        min_channels: every group keeps at least this many channels. round_to: kept counts rounded to a multiple.
        budget: ``scratch-b`` (epochs / (1 - p), p the MACs reduction) or ``scratch-e`` (the recipe's epochs).
        train: recipe of the from-scratch training of the pruned model; None = the run's ``baseline.train``.
        select: ``best`` keeps the epoch with the best validation top-1 (``last`` when the run has no validation
            split), ``last`` the final weights.
    """

    model_config = ConfigDict(extra="forbid")
    name: Literal["scratch"] = "scratch"
    expansion: float = Field(1.25, ge=1.0, le=16.0)
    gate_epochs: float = Field(10.0, gt=0)
    gate_lr: float = Field(0.01, gt=0)
    lam: float = Field(0.5, ge=0)
    sparsity: float = Field(0.2, gt=0, le=1)
    tol: float = Field(1e-3, gt=0, lt=1)
    min_channels: int = Field(1, ge=1)
    round_to: RoundTo = 1
    budget: Literal["scratch-b", "scratch-e"] = "scratch-b"
    train: TrainConfig | None = None
    select: Literal["best", "last"] = "best"


Config = ScratchConfig


# ---------------------------------------------------------------------------------------------- expansion
def expand_spec(spec: str, expansion: float) -> str:
    """The spec of the model ``expansion`` times wider: the ``width_mult`` option multiplied (canonical string).

    ``expansion == 1`` returns ``spec`` unchanged (any model).

    Raises:
        PrunekitError: ``expansion != 1`` and the model has no ``width_mult`` option (timm / torchvision / file
            models, or a builtin without one).
    """
    from prunekit.models import parse_spec
    from prunekit.models.registry import model_options

    if expansion == 1.0:
        return spec
    ms = parse_spec(spec)
    if ms.source != "builtin" or "width_mult" not in model_options(ms.name):
        raise PrunekitError(
            f"scratch: expansion {expansion} needs a model with a width_mult option (a builtin such as resnet20 or "
            f"mobilenet_v2), but {spec!r} has none; set method.expansion: 1"
        )
    current = float(ms.kwargs.get("width_mult", model_options(ms.name)["width_mult"]))
    return ms.with_options(width_mult=current * float(expansion)).to_string()


def _build(spec: str, seed: int) -> nn.Module:
    """A fresh random initialisation of ``spec``: :func:`prunekit.models.create_model` under ``torch.manual_seed(seed)``."""
    from prunekit.models import create_model

    torch.manual_seed(seed)
    return create_model(spec)


@dataclass
class ExpandedNet:
    """The searched network of :func:`run`: the reference widened ``expansion`` times, at random initialisation.

    Attributes:
        spec: its model spec (``width_mult`` multiplied, :func:`expand_spec`). model: the network (seed ``ctx.seed``).
        space: its :class:`~prunekit.space.ChannelSpace` (same group names as the reference's, more channels).
        cost: the :class:`~prunekit.cost.macs.CostModel` over ``space``. macs: MACs per sample of the whole model.
    """

    spec: str
    model: nn.Module
    space: ChannelSpace
    cost: CostModel
    macs: float


def build_expanded(ctx: MethodContext, expansion: float) -> ExpandedNet:
    """Step 1 (Wang et al. 2020, "Solution Space"): the reference model ``ctx.spec`` made ``expansion`` times wider,
    freshly initialised with seed ``ctx.seed`` (``ctx.model`` is neither used nor modified), traced on the run's
    input shape ``ctx.space.input_shape`` (``(1, C, H, W)``).

    Raises:
        PrunekitError: ``expansion != 1`` on a model without ``width_mult`` (:func:`expand_spec`); the expanded
            model's channel groups differ from the reference's (the plan must name the same groups).
    """
    spec = expand_spec(ctx.spec, expansion)
    model = _build(spec, ctx.seed)
    space = ChannelSpace.build(model, tuple(ctx.space.input_shape), quiet=True)
    if space.names() != ctx.space.names():
        raise PrunekitError(
            f"scratch: the expanded model {spec} has different channel groups than {ctx.spec} "
            f"({len(space.groups)} vs {len(ctx.space.groups)}); use method.expansion: 1 for this model"
        )
    cost = CostModel(space)
    return ExpandedNet(spec=spec, model=model, space=space, cost=cost, macs=float(cost.cost().macs))


# ---------------------------------------------------------------------------------------------- gates
def gate_recipe(cfg: ScratchConfig, *, seed: int, smoke: bool = False) -> TrainConfig:
    """Step 2's recipe (the original's ``learn_gates.py``): Adam at ``cfg.gate_lr``, no weight decay, constant LR,
    ``cfg.gate_epochs`` epochs (``--smoke``: :func:`prunekit.train.smoke_recipe`, at most one)."""
    tc = TrainConfig(
        epochs=cfg.gate_epochs,
        optimizer="adam",
        lr=cfg.gate_lr,
        weight_decay=0.0,
        schedule="constant",
        seed=seed,
    )
    return smoke_recipe(tc) if smoke else tc


# ---------------------------------------------------------------------------------------------- pruning
def channel_order(
    space: ChannelSpace, gates: dict[str, torch.Tensor]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Global ranking of every channel of ``space`` by gate value (largest first).

    Ties (equal gate values, typically the many gates clamped at exactly 0) are spread evenly over the groups that
    hold them: among tied channels, a group's ``j``-th (by channel index) of ``n`` sorts at ``(j + 0.5) / n``, so
    keeping any prefix of a tie keeps about the same fraction of each group's tied channels (the original leaves the
    order to ``topk``). Remaining ties: group index, then channel index.

    Args:
        gates: ``{group name: Tensor[C]}`` for every group of ``space``.

    Returns:
        ``(order_group [N], rank)``: ``order_group[i]`` is the group index of the ``i``-th best channel (N = total
        channels); ``rank[name]`` (int64 ``[C]``) is each channel's position in its group's ranking (0 = best),
        consistent with the global order.

    Raises:
        PrunekitError: a group without gate values, of the wrong length, or with non-finite values.
    """
    val, spread, grp, chan = [], [], [], []
    for g in space.groups:
        if g.name not in gates:
            raise PrunekitError(f"no gate values for channel group {g.name!r}")
        v = torch.as_tensor(gates[g.name]).detach().to("cpu", torch.float64).reshape(-1).numpy()
        if v.size != g.channels or not np.isfinite(v).all():
            raise PrunekitError(f"gate values of group {g.name!r} are not {g.channels} finite numbers")
        _, inv, cnt = np.unique(v, return_inverse=True, return_counts=True)
        by_value = np.lexsort((np.arange(v.size), inv))  # equal values together, ascending channel index
        starts = np.cumsum(cnt) - cnt
        j = np.empty(v.size)
        j[by_value] = np.arange(v.size) - starts[inv[by_value]]  # position among the channels of equal value
        sp = (j + 0.5) / cnt[inv]
        val.append(v)
        spread.append(sp)
        grp.append(np.full(v.size, g.index, dtype=np.int64))
        chan.append(np.arange(v.size, dtype=np.int64))
    v, s, gi, ci = (np.concatenate(a) for a in (val, spread, grp, chan))
    order = np.lexsort((ci, gi, s, -v))
    order_group = gi[order]
    rank: dict[str, np.ndarray] = {}
    pos_in_group = np.zeros(v.size, dtype=np.int64)
    counts = np.zeros(len(space.groups), dtype=np.int64)
    for o in order:
        pos_in_group[o] = counts[gi[o]]
        counts[gi[o]] += 1
    start = 0
    for g in space.groups:
        rank[g.name] = pos_in_group[start : start + g.channels].copy()
        start += g.channels
    return order_group, rank


def check_reachable(
    space: ChannelSpace,
    cost: CostModel,
    target_macs: float,
    *,
    tol: float = 1e-3,
    min_channels: int = 1,
    round_to: int = 1,
) -> tuple[float, float]:
    """MACs per sample ``(smallest, largest)`` of the plans :func:`prune_to_macs` can produce on ``space``: every
    group at its minimum legal width, and the whole model. Run before gate training so an impossible target fails at
    once (``round_to``: an int, already resolved).

    Raises:
        PrunekitError: ``target_macs`` is below ``smallest`` or above ``largest`` by more than ``tol`` (relative).
    """
    target = float(target_macs)
    lows = np.array(
        [legal_width(g, 0, round_to=round_to, min_channels=min_channels) for g in space.groups],
        dtype=np.int64,
    )
    smallest, largest = float(np.rint(cost.macs(lows))), float(np.rint(cost.macs(space.channels)))
    Budget.of_macs(cost, target).require_reachable(
        lows,
        who="scratch",
        how=f"every group at min_channels={min_channels}, round_to={round_to}",
        fix="raise the target or lower method.min_channels/round_to",
        tol=tol,
    )
    if largest < target * (1 - tol):
        raise PrunekitError(
            f"MACs target {target:,.0f} is above the whole searched model ({largest:,.0f} MACs); raise "
            "method.expansion or lower the target"
        )
    return smallest, largest


class _RankedCounts:
    """Bookkeeping of :func:`prune_to_macs`: plans given as per-group kept counts along a global channel ranking.

    A plan is ``counts`` (int64 ``[G]``, ``G`` = number of groups): group ``i`` keeps its ``counts[i]`` best-ranked
    channels. Its widths are the counts made legal (rounded to ``round_to``, at least ``min_channels``:
    :func:`~prunekit.space.widths.legal_width`) and its MACs (per sample, rounded to an integer) those of the widths
    under ``cost``.

    Attributes:
        groups: ``space.groups``. order_group: int64 ``[N]``, the group index of the ``i``-th best channel
            (:func:`channel_order`); n: ``N``, the number of channels. target: the MACs budget; tol: relative.
    """

    def __init__(
        self,
        space: ChannelSpace,
        cost: CostModel,
        order_group: np.ndarray,
        target: float,
        *,
        tol: float,
        min_channels: int,
        round_to: int,
    ) -> None:
        self.groups, self.cost, self.order_group = space.groups, cost, order_group
        self.n = int(order_group.size)
        self.target, self.tol, self.min_channels, self.round_to = target, tol, min_channels, round_to

    def widths(self, counts: np.ndarray) -> np.ndarray:
        """Legal widths (int64 ``[G]``) of ``counts``."""
        return np.array(
            [
                legal_width(g, int(counts[i]), round_to=self.round_to, min_channels=self.min_channels)
                for i, g in enumerate(self.groups)
            ],
            dtype=np.int64,
        )

    def after(self, k: int) -> np.ndarray:
        """Counts (int64 ``[G]``) of the top-``k`` prefix of the global ranking."""
        return np.bincount(self.order_group[:k], minlength=len(self.groups)).astype(np.int64)

    def macs(self, counts: np.ndarray) -> float:
        """MACs per sample of the plan ``counts`` (an integer, as a float)."""
        return float(np.rint(self.cost.macs(self.widths(counts))))

    def within(self, m: float) -> bool:
        """``|m - target| <= tol * target``."""
        return abs(m - self.target) <= self.tol * self.target


def prune_to_macs(
    space: ChannelSpace,
    cost: CostModel,
    gates: dict[str, torch.Tensor],
    target_macs: float,
    *,
    tol: float = 1e-3,
    min_channels: int = 1,
    round_to: int = 1,
    spec: str | None = None,
) -> Plan:
    """Keep the globally highest-gated channels so the pruned model's MACs are within ``tol`` of ``target_macs``.

    Step 3 of the method (Wang et al. 2020, a global threshold on the learned gates; the original's
    ``prune_model.py``). With the channels in :func:`channel_order`, a group keeps the channels of its own that fall
    in the top ``k``, its width that count made legal (:func:`~prunekit.space.widths.legal_width`):

    1. ``k`` (the gate threshold) is bisected (:func:`_top_k_prefix`; MACs are non-decreasing in ``k``) to the
       largest prefix within the target; if it, or the next prefix, is within ``tol`` it is the answer
       (``meta["mode"] = "top-k"``);
    2. otherwise (one channel of a group touching many layers can cost more than ``tol``) the next channels in gate
       order are added while they fit under the target (:func:`_fill`, ``"top-k+fill"``);
    3. if the gap is still larger than ``tol`` but smaller than one channel, the best plan within ``tol`` at most
       two one-channel moves away is taken (:func:`_repair`, ``"top-k+fill+swap"``).

    Within a group the kept channels are always its best-ranked, so the plan is a per-group top-k of the gates.

    Args:
        space, cost: channel space of the model being pruned (here the expanded one) and its cost model (MACs =
            conv + linear multiply-accumulates per sample).
        gates: ``{group name: Tensor[C]}`` importance per channel (higher = keep).
        target_macs: the budget (MACs per sample); tol: accepted ``|MACs - target| / target``.
        min_channels, round_to: per-group floor and rounding (an int) of kept counts. spec: stored as ``plan.model``.

    Returns:
        a :class:`Plan` over ``space`` whose MACs are within ``tol`` of the target; ``plan.meta`` holds ``k`` (top-k
        prefix), ``filled`` (channels added after it), ``macs``, ``target_macs``, ``rel_err``, ``threshold`` (gate
        value of the last channel of the prefix) and ``mode``.

    Raises:
        PrunekitError: gates missing, of the wrong length or non-finite (:func:`channel_order`); the target is below
            the smallest reachable model (every group at its minimum) or above the whole model by more than ``tol``
            (:func:`check_reachable`); no plan within ``tol`` exists along the gate ranking (the message gives the
            closest MACs found and suggests a larger ``tol`` or ``round_to: 1``).
    """
    order_group, rank = channel_order(space, gates)
    target = float(target_macs)
    rc = _RankedCounts(
        space, cost, order_group, target, tol=tol, min_channels=min_channels, round_to=round_to
    )
    smallest, _ = check_reachable(space, cost, target, tol=tol, min_channels=min_channels, round_to=round_to)
    k, counts, m = _top_k_prefix(rc, smallest)
    threshold = _kth_largest_gate(space, gates, k)
    mode, filled = "top-k", 0
    if not rc.within(m):
        mode = "top-k+fill"
        counts, m, filled = _fill(rc, counts, m, k)
    if not rc.within(m):
        mode = "top-k+fill+swap"
        found = _repair(rc, counts, _gates_by_rank(space, gates, rank))
        if found is not None:
            counts, m = found
    if not rc.within(m):
        raise _off_tolerance(rc, counts, m)
    plan = _plan_of(space, rc.widths(counts), rank, spec)
    final = float(cost.cost(plan).macs)
    if not rc.within(final):  # the realised plan is what gets saved: never an off-target one
        raise AssertionError(f"internal: plan has {final:,.0f} MACs, target {target:,.0f} (tol {tol})")
    plan.meta.update(
        {
            "k": k,
            "filled": filled,
            "macs": final,
            "target_macs": target,
            "rel_err": (final - target) / target,
            "threshold": threshold,
            "mode": mode,
        }
    )
    return plan


def _top_k_prefix(rc: _RankedCounts, smallest: float) -> tuple[int, np.ndarray, float]:
    """Step 3.1 of :func:`prune_to_macs`: bisect the length ``k`` of the kept top-``k`` prefix (equivalently the gate
    threshold) to the largest prefix with MACs <= target (:func:`~prunekit.search.bisect.bisect_monotone` over the
    integers ``0..N``), then take ``k + 1`` if that one is within ``tol`` and ``k`` is not. ``smallest`` is the MACs of
    the minimum model (:func:`check_reachable`): when it is above the target (only it fits within ``tol``) ``k = 0``.

    Returns ``(k, counts [G], MACs)``.
    """
    if smallest > rc.target:  # only the minimum model fits within tol (above the target)
        return 0, rc.after(0), smallest
    res = bisect_monotone(
        lambda x: rc.macs(rc.after(int(x))), 0, rc.n, rc.target, tol_rel=0.0, integer=True, what="MACs"
    )
    k = int(res.x)
    counts, m = rc.after(k), float(res.value)
    if not rc.within(m) and k < rc.n and rc.within(rc.macs(rc.after(k + 1))):
        k += 1
        counts, m = rc.after(k), rc.macs(rc.after(k))
    return k, counts, m


def _fill(rc: _RankedCounts, counts: np.ndarray, m: float, k: int) -> tuple[np.ndarray, float, int]:
    """Step 3.2 of :func:`prune_to_macs`: walk the ranking past the prefix ``k`` and add each channel whose plan still
    has MACs <= target, until within ``tol``; a group whose next channel does not fit is skipped from then on (its
    marginal MACs only grow). Returns ``(counts [G], MACs, channels added)``."""
    full: set[int] = set()
    filled = 0
    for pos in range(k, rc.n):
        i = int(rc.order_group[pos])
        if i in full:
            continue
        trial = counts.copy()
        trial[i] += 1
        mt = rc.macs(trial)
        if mt <= rc.target:
            counts, m, filled = trial, mt, filled + 1
            if rc.within(m):
                break
        else:
            full.add(i)
    return counts, m, filled


def _repair(
    rc: _RankedCounts, counts: np.ndarray, by_rank: list[np.ndarray]
) -> tuple[np.ndarray, float] | None:
    """Step 3.3 of :func:`prune_to_macs`: the best plan within tolerance reachable from ``counts`` by one or two
    moves, each adding a group's next-ranked channel (``+i``) or dropping its last kept one (``-i``); best = largest
    net gate value gained (added gates minus dropped ones, from ``by_rank``: per group, float64 ``[C]`` in rank
    order), then smallest MACs error. Returns ``(counts [G], MACs)`` or None."""
    channels = [g.channels for g in rc.groups]
    g = len(counts)
    moves = [(i, +1) for i in range(g)] + [(i, -1) for i in range(g)]

    def gain(c, i, d):
        if d > 0:
            return by_rank[i][c[i]] if c[i] < channels[i] else None
        return -by_rank[i][c[i] - 1] if c[i] > 0 else None

    best = None
    for a in range(len(moves)):
        for b in range(a, len(moves) + 1):  # b == len(moves): a single move
            c = counts.copy()
            score = 0.0
            ok = True
            for i, d in [moves[a]] + ([moves[b]] if b < len(moves) else []):
                v = gain(c, i, d)
                if v is None:
                    ok = False
                    break
                score += v
                c[i] += d
            if not ok or (c == counts).all():
                continue
            mt = rc.macs(c)
            if rc.within(mt):
                key = (score, -abs(mt - rc.target))
                if best is None or key > best[0]:
                    best = (key, c, mt)
    return None if best is None else (best[1], best[2])


def _gate_array(v: torch.Tensor) -> np.ndarray:
    """A gate vector as a flat float64 NumPy array ``[C]`` (CPU copy)."""
    return torch.as_tensor(v).detach().cpu().double().reshape(-1).numpy()


def _gates_by_rank(space: ChannelSpace, gates: dict[str, torch.Tensor], rank: dict[str, np.ndarray]) -> list:
    """Per group (space order): its gate values (float64 ``[C]``) sorted by its channel ranking (best first)."""
    out = []
    for g in space.groups:
        v = _gate_array(gates[g.name])
        r = np.empty_like(v)
        r[rank[g.name]] = v
        out.append(r)
    return out


def _kth_largest_gate(space: ChannelSpace, gates: dict[str, torch.Tensor], k: int) -> float | None:
    """The ``k``-th largest gate of the network (the gate threshold of the top-``k`` prefix); None when ``k = 0``."""
    ranked = np.sort(np.concatenate([_gate_array(gates[g.name]) for g in space.groups]))[::-1]
    return float(ranked[k - 1]) if k > 0 else None


def _off_tolerance(rc: _RankedCounts, counts: np.ndarray, m: float) -> PrunekitError:
    """The error of :func:`prune_to_macs` when the closest plan ``counts`` (``m`` MACs) is off by more than ``tol``:
    it names the gap and the smallest MACs step one more channel makes."""
    target, eye = rc.target, np.eye(len(rc.groups), dtype=np.int64)
    steps = [rc.macs(counts + eye[i]) - m for i in range(len(rc.groups))]
    step = min((d for d in steps if d > 0), default=float("nan"))
    return PrunekitError(
        f"scratch cannot prune to {target:,.0f} MACs within tol={rc.tol:g}: the closest plan along the gate "
        f"ranking has {m:,.0f} MACs ({100 * (m - target) / target:+.3f}%) and one more channel adds at least "
        f"{step:,.0f} MACs ({100 * step / target:.2f}%); raise method.tol"
        + (" or set method.round_to: 1" if rc.round_to > 1 else "")
    )


def _plan_of(space: ChannelSpace, widths: np.ndarray, rank: dict[str, np.ndarray], spec: str | None) -> Plan:
    """The :class:`Plan` keeping, in every group, its ``widths[i]`` best-ranked channels (``rank``: per group, int64
    ``[C]``, 0 = best). Every group is listed, whole ones too, so ``plan.widths`` reads the widths of the expanded
    model even against the reference space (which has fewer channels)."""
    plan = Plan(model=spec, input_shape=list(space.input_shape))
    for i, g in enumerate(space.groups):
        w = int(widths[i])
        keep = (
            list(range(g.channels))
            if w >= g.channels
            else select_channels(g, w, torch.as_tensor(-rank[g.name], dtype=torch.float64))
        )
        plan.groups[g.name] = GroupChoice(channels=g.channels, keep=keep)
    return plan


# ---------------------------------------------------------------------------------------------- budget
def budget_recipe(recipe: TrainConfig, factor: float) -> TrainConfig:
    """``recipe`` stretched ``factor`` times (Scratch-B: ``factor = 1 / (1 - p)``): epochs, LR milestones and
    ``step_size`` scaled by ``factor``, ``exp_decay`` raised to ``1 / factor``; warm-up unchanged (capped at the
    new epochs). ``factor = 1`` returns the recipe unchanged."""
    if factor == 1.0:
        return recipe
    upd: dict[str, Any] = {
        "epochs": recipe.epochs * factor,
        "milestones": [m * factor for m in recipe.milestones],
        "exp_decay": recipe.exp_decay ** (1.0 / factor),
        "warmup_epochs": min(recipe.warmup_epochs, recipe.epochs * factor),
    }
    if recipe.step_size is not None:
        upd["step_size"] = recipe.step_size * factor
    return TrainConfig.model_validate({**recipe.model_dump(), **upd})


def scratch_budget(recipe: TrainConfig, reduction: float, budget: str) -> TrainConfig:
    """Step 4 (Wang et al. 2020, "Budget Training"): the recipe of the from-scratch training. ``scratch-b``: ``recipe``
    stretched by ``1 / (1 - reduction)`` (:func:`budget_recipe`), ``reduction`` = ``p`` = 1 - pruned MACs / reference
    MACs (per sample); ``scratch-e``: ``recipe`` itself.

    Raises:
        PrunekitError: ``scratch-b`` with ``reduction > 1`` or not finite (no valid stretch factor; ``reduction = 1``,
            a model without MACs, cannot occur since every group keeps at least one channel).
    """
    factor = 1.0 / (1.0 - reduction) if budget == "scratch-b" else 1.0
    if not math.isfinite(factor) or factor <= 0:
        raise PrunekitError(
            f"scratch: MACs reduction {reduction:.3f} gives no valid Scratch-B budget; use budget: scratch-e"
        )
    tc = budget_recipe(recipe, factor)
    log.info(
        "scratch: %.1f%% MACs reduction vs reference; %s: %.3g epochs (base %.3g)",
        100 * reduction,
        budget,
        tc.epochs,
        recipe.epochs,
    )
    return tc


# ---------------------------------------------------------------------------------------------- training
def pruned_recipe(ctx: MethodContext, cfg: ScratchConfig) -> TrainConfig:
    """The base recipe of the from-scratch training (before the Scratch-B stretch): ``method.train``, else the run's
    ``baseline.train``; in ``--smoke`` runs shrunk by :func:`prunekit.train.smoke_recipe`.

    Raises:
        PrunekitError: neither recipe is set.
    """
    recipe = cfg.train or ctx.baseline_train
    if recipe is None:
        raise PrunekitError(
            "scratch trains the pruned model from scratch: set method.train (a training recipe) or baseline.train "
            "(its epochs are the Scratch-B base budget)"
        )
    return smoke_recipe(recipe) if ctx.smoke else recipe


def train_from_scratch(
    ctx: MethodContext,
    train: Any,
    net: ExpandedNet,
    plan: Plan,
    tc: TrainConfig,
    select: str,
) -> tuple[nn.Module, dict[str, Any]]:
    """Step 5 (Wang et al. 2020, "Budget Training"; the original's ``train_pruned.py``): apply ``plan`` to a fresh
    initialisation of the expanded model (seed ``ctx.seed + 1``) and train it with ``tc`` through
    ``train(..., tag="scratch-train")`` (checkpointed; with ``select="best"``, which falls back to ``"last"`` when the
    run has no validation split, the trainer loads the best epoch's weights).

    Returns:
        ``(pruned model, history row {"step": "scratch-train", "epochs", "val_top1"})``.
    """
    pruned = apply(_build(net.spec, ctx.seed + 1), plan, net.space)
    select = select if getattr(ctx.data, "val", None) is not None else "last"
    tr = train(pruned, tc, tag="scratch-train", select=select)
    top1 = tr.best_top1 if select == "best" else (tr.final or {}).get("val_top1")
    return pruned, {"step": "scratch-train", "epochs": tc.epochs, "val_top1": top1}


# ---------------------------------------------------------------------------------------------- artefacts
def save_gate_artefacts(
    out_dir: str | Path, net: ExpandedNet, learned: LearnedGates, plan: Plan, kept: float
) -> None:
    """Write ``gates.json`` (expanded spec, gate selection, threshold, kept width per group, every gate value rounded
    to 6 digits) and ``gates.png`` (:func:`plot_gates`) into ``out_dir``; ``kept`` = pruned / reference MACs (for
    the plot's title)."""
    from prunekit.io import write_json

    out = Path(out_dir)
    write_json(
        out / "gates.json",
        {
            "expanded_spec": net.spec,
            "selection": learned.choice,
            "threshold": plan.meta["threshold"],
            "kept": {g.name: int(w) for g, w in zip(net.space.groups, plan.widths(net.space), strict=True)},
            "gates": {k: [round(float(x), 6) for x in v.tolist()] for k, v in learned.values.items()},
        },
    )
    plot_gates(
        net.space,
        learned.values,
        plan,
        out / "gates.png",
        threshold=plan.meta["threshold"],
        title=f"scratch: gates of {net.spec} ({learned.choice['rule']}), kept {kept:.1%} of reference MACs",
    )


def plot_gates(
    space: ChannelSpace,
    gates: dict[str, torch.Tensor],
    plan: Plan,
    path: str | Path,
    *,
    threshold: float | None = None,
    title: str = "",
) -> None:
    """Write a PNG of every group's gate values, sorted (largest first) side by side, kept channels in colour,
    pruned in grey, group boundaries as thin lines and the top-k cut (``threshold``) as a dashed line. Written
    atomically (matplotlib Agg, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from prunekit.io import atomic_path

    total = sum(g.channels for g in space.groups)
    fig = Figure(figsize=(min(24.0, max(8.0, total / 60.0)), 4.2), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    widths = plan.widths(space)
    x0, ticks, labels = 0, [], []
    for i, g in enumerate(space.groups):
        v = np.sort(torch.as_tensor(gates[g.name]).detach().to("cpu", torch.float64).numpy())[::-1]
        w = int(widths[i])
        xs = np.arange(x0, x0 + g.channels)
        ax.bar(xs[:w], v[:w], width=1.0, color="tab:blue", linewidth=0)
        ax.bar(xs[w:], v[w:], width=1.0, color="0.75", linewidth=0)
        ax.axvline(x0 - 0.5, color="0.5", lw=0.4)
        ticks.append(x0 + g.channels / 2)
        labels.append(f"{i}")
        x0 += g.channels
    if threshold is not None:
        ax.axhline(threshold, color="tab:red", ls="--", lw=1.0, label=f"cut (gate {threshold:.3g})")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xlim(-0.5, total - 0.5)
    ax.set_ylim(0, 1.05)
    ax.set_xticks(ticks)
    ax.set_xticklabels(labels, fontsize=6 if len(ticks) > 30 else 8)
    ax.set_xlabel("channel group (index in `prunekit inspect`), channels sorted by gate; blue = kept")
    ax.set_ylabel("gate value")
    ax.set_title(title or "learned channel gates", fontsize=10)
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


# ---------------------------------------------------------------------------------------------- the method
def run(ctx: MethodContext, cfg: ScratchConfig) -> MethodResult:
    """Expand, learn gates on random weights, prune to ``ctx.target_macs``, train the pruned net from scratch.

    The steps of the module docstring (Wang et al., "Pruning from Scratch", AAAI 2020), one helper each.
    ``ctx.model`` is not used (nor modified): the expanded model is a fresh random initialisation (seed ``ctx.seed``)
    and the pruned model another one (seed ``ctx.seed + 1``). Gate training runs through ``ctx.train(...,
    tag="scratch-gates")`` (Adam over the gates only: every other parameter is frozen) and the final training through
    ``ctx.train(..., tag="scratch-train")``, both checkpointed, so a killed run re-run with the same command resumes
    and makes the same choices. ``cfg.round_to`` (an int or ``"auto"``) is resolved once here.

    Returns:
        :class:`MethodResult` with the plan over the expanded model (``plan.model`` = expanded spec), the trained
        pruned model, ``trained=True``, history rows (one per gate epoch, one for the pruning, one for the
        training) and ``extra`` (expansion, specs, reference / expanded / target / achieved MACs per sample,
        reduction ``p``, budget and epochs, gate selection, ``gates_plot`` / ``gates_file`` file names).

    Raises:
        PrunekitError: no target; expansion on a model without ``width_mult``; the expanded model's channel groups
            differ from the reference's; no training recipe (neither ``method.train`` nor ``baseline.train``); the
            target cannot be met within ``tol`` (see :func:`check_reachable`, :func:`prune_to_macs`).
    """
    target = require_target(ctx, "scratch")
    train = require_train(ctx, "scratch")
    round_to = resolve_round_to(cfg.round_to)
    recipe = pruned_recipe(ctx, cfg)
    base_macs = float(ctx.cost.cost().macs)
    fit_kw = {"tol": cfg.tol, "min_channels": cfg.min_channels, "round_to": round_to}

    # 1. expanded model at random init; an unreachable target fails before any training
    net = build_expanded(ctx, cfg.expansion)
    check_reachable(net.space, net.cost, target, **fit_kw)
    log.info(
        "scratch: expanded %s (%.2fx): %s MACs; reference %s MACs; target %s MACs",
        net.spec,
        cfg.expansion,
        f"{net.macs:,.0f}",
        f"{base_macs:,.0f}",
        f"{target:,.0f}",
    )

    # 2. gates on the frozen random weights
    gate_tc = gate_recipe(cfg, seed=ctx.seed, smoke=ctx.smoke)
    learned = learn_gates(
        net.model, net.space, train, gate_tc, lam=cfg.lam, r=cfg.sparsity, tag="scratch-gates", select="last"
    )

    # 3. prune the expanded model to the reference-relative MACs target (bisection of the gate threshold)
    plan = prune_to_macs(net.space, net.cost, learned.values, target, spec=net.spec, **fit_kw)
    c = net.cost.cost(plan)
    plan.meta.update(
        {
            "method": "scratch",
            "expansion": cfg.expansion,
            "reference_spec": ctx.spec,
            "expanded_spec": net.spec,
            "gate_selection": learned.choice,
        }
    )
    save_gate_artefacts(ctx.out_dir, net, learned, plan, c.macs / base_macs)

    # 4. Scratch-B / Scratch-E budget from the achieved reduction
    train_tc = scratch_budget(recipe, 1.0 - c.macs / base_macs, cfg.budget)

    # 5. fresh initialisation of the pruned architecture, trained with that budget
    pruned, train_row = train_from_scratch(ctx, train, net, plan, train_tc, cfg.select)
    return _result(ctx, cfg, net, learned, plan, pruned, train_row, recipe=recipe, train_tc=train_tc)


def _result(
    ctx: MethodContext,
    cfg: ScratchConfig,
    net: ExpandedNet,
    learned: LearnedGates,
    plan: Plan,
    pruned: nn.Module,
    train_row: dict[str, Any],
    *,
    recipe: TrainConfig,
    train_tc: TrainConfig,
) -> MethodResult:
    """The :class:`MethodResult` of :func:`run`: history rows (one per gate epoch, the pruning, the training) and
    ``extra`` (MACs per sample of the reference / expanded / target / pruned model, reduction ``p``, budget and
    epochs, gate selection, artefact names)."""
    base_macs, c = float(ctx.cost.cost().macs), net.cost.cost(plan)
    prune_row = {
        "step": "prune",
        "macs": c.macs,
        "params": c.params,
        "macs_ratio": c.macs / base_macs,
        "mode": plan.meta["mode"],
    }
    extra = {
        "expansion": cfg.expansion,
        "reference_spec": ctx.spec,
        "expanded_spec": net.spec,
        "base_macs": base_macs,
        "expanded_macs": net.macs,
        "target_macs": plan.meta["target_macs"],
        "macs": c.macs,
        "macs_rel_err": plan.meta["rel_err"],
        "tol": cfg.tol,
        "reduction": 1.0 - c.macs / base_macs,
        "budget": cfg.budget,
        "base_epochs": recipe.epochs,
        "train_epochs": train_tc.epochs,
        "gate_selection": learned.choice,
        "prune_mode": plan.meta["mode"],
        "gates_plot": "gates.png",
        "gates_file": "gates.json",
    }
    history = [{"step": "gates", **row} for row in learned.history] + [prune_row, train_row]
    return MethodResult(plan=plan, model=pruned, history=history, trained=True, extra=extra)
