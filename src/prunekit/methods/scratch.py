"""``scratch``: Pruning from Scratch — channel gates learned on random weights, global top-k to a MACs target,
then the pruned architecture trained from a fresh initialisation with the Scratch-B budget.

Wang, Zhang, Xie, Zhou, Su, Zhang, Hu, "Pruning from Scratch", AAAI 2020:

1. **Expansion** (the original's ``-e``, ``script/learn_gates.py``): build the network wider than the reference, at
   random initialisation (no pretrained weights): the model spec's ``width_mult`` option is multiplied by
   ``expansion`` (builtin models; other models need ``expansion: 1``). Every prunable channel group of the expanded
   model is a candidate.
2. **Gates** (the paper's channel-importance learning; ``gate.py``, ``learn_gates.py``): one scalar gate per
   channel of every channel group (one vector shared by a whole residual group), applied after the group's
   normalisation layers, initialised to 1. Only the gates train (Adam, weights frozen at their random values) on
   ``CE + lambda * (mean|g| - r) ** 2``; gates are clamped to ``[0, 1]`` after every step. The gates of the epoch
   with the best validation top-1 among the epochs whose fraction of non-zero gates is at most ``r`` are kept (else
   the last epoch's). See :mod:`prunekit.train.gates`.
3. **Pruning to a MACs target** (``script/prune_model.py``): channels are ranked by gate value over the whole
   network and the number ``k`` of top channels kept is bisected until the pruned model's MACs are within ``tol``
   (relative) of the target. The target is relative to the **reference-width** model (``ctx.target_macs``, e.g. 50%
   of the unexpanded network's MACs), as in the original (its "full" model is the standard-width one); MACs are
   those of the expanded-then-pruned model (:class:`~prunekit.cost.macs.CostModel` over the expanded space). Every
   group keeps at least ``min_channels`` (optionally rounded to a multiple of ``round_to``). See
   :func:`prune_to_macs`.
4. **Training from scratch** (``script/train_pruned.py --budget_train``; "Scratch-B" of Liu et al., "Rethinking the
   Value of Network Pruning", ICLR 2019): the plan is applied to a *freshly initialised* expanded model and trained
   with the base recipe for ``epochs / (1 - p)`` epochs, ``p`` the achieved MACs reduction against the reference
   model (the same compute as training the reference for ``epochs``); ``budget: scratch-e`` keeps ``epochs``.

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
gate values per group) and ``gates.png`` (sorted gate values per group with the cut line).

Config (YAML)::

    method: {name: scratch, expansion: 1.25, gate_epochs: 10, gate_lr: 0.01, lam: 0.5, sparsity: 0.2,
             tol: 0.001, min_channels: 1, round_to: 1, budget: scratch-b}
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field

from prunekit.cost.macs import CostModel
from prunekit.errors import PrunekitError
from prunekit.methods.base import MethodContext, MethodResult, RoundTo, require_target, require_train
from prunekit.methods.uniform import legal_width
from prunekit.search.bisect import bisect_monotone
from prunekit.space import ChannelSpace, GroupChoice, Plan, apply, select_channels
from prunekit.train import TrainConfig
from prunekit.train.gates import GateRegularizer, GateSelector, attach_gates

__all__ = [
    "Config",
    "ScratchConfig",
    "budget_recipe",
    "channel_order",
    "check_reachable",
    "expand_spec",
    "plot_gates",
    "prune_to_macs",
    "run",
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
    from prunekit.models import create_model

    torch.manual_seed(seed)
    return create_model(spec)


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
    """MACs ``(smallest, largest)`` of the plans :func:`prune_to_macs` can produce on ``space``: every group at its
    minimum legal width, and the whole model. Run before gate training so an impossible target fails at once.

    Raises:
        PrunekitError: ``target_macs`` is below ``smallest`` or above ``largest`` by more than ``tol`` (relative).
    """
    target = float(target_macs)
    lows = np.array(
        [legal_width(g, 0, round_to=round_to, min_channels=min_channels) for g in space.groups],
        dtype=np.int64,
    )
    smallest, largest = float(np.rint(cost.macs(lows))), float(np.rint(cost.macs(space.channels)))
    if smallest > target * (1 + tol):
        raise PrunekitError(
            f"MACs target {target:,.0f} is below the smallest model scratch can reach ({smallest:,.0f} MACs with "
            f"every group at min_channels={min_channels}, round_to={round_to}); raise the target or lower "
            "method.min_channels/round_to"
        )
    if largest < target * (1 - tol):
        raise PrunekitError(
            f"MACs target {target:,.0f} is above the whole searched model ({largest:,.0f} MACs); raise "
            "method.expansion or lower the target"
        )
    return smallest, largest


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

    Wang et al. 2020 (the original's ``prune_model.py``): with the channels in :func:`channel_order`, a group keeps
    the channels of its own that fall in the top ``k``; its width is that count made legal (rounded to ``round_to``,
    at least ``min_channels``: :func:`~prunekit.methods.uniform.legal_width`), and ``k`` is bisected
    (:func:`~prunekit.search.bisect.bisect_monotone`; MACs are non-decreasing in ``k``) to the largest prefix within
    the target. If that prefix, or
    the next one, is within ``tol`` it is the answer (``meta["mode"] = "top-k"``). Otherwise (one channel of a group
    touching many layers can cost more than ``tol``) the next channels in gate order are added greedily, skipping
    any whose group no longer fits under the target, until the MACs are within ``tol`` (``"top-k+fill"``); if the
    gap is still larger than ``tol`` but smaller than one channel, the best plan within ``tol`` reachable by at most
    two one-channel moves (add a group's next-ranked channel / drop its last kept one; best = largest net gate value,
    then smallest error) is taken (``"top-k+fill+swap"``). Within a group the kept channels are always its
    best-ranked, so the plan is a per-group top-k of the gates.

    Args:
        space, cost: channel space of the model being pruned (here the expanded one) and its cost model (MACs =
            conv + linear multiply-accumulates per sample).
        gates: ``{group name: Tensor[C]}`` importance per channel (higher = keep).
        target_macs: the budget (MACs); tol: accepted ``|MACs - target| / target``.
        min_channels, round_to: per-group floor and rounding of kept counts. spec: stored as ``plan.model``.

    Returns:
        a :class:`Plan` over ``space`` whose MACs are within ``tol`` of the target; ``plan.meta`` holds ``k`` (top-k
        prefix), ``filled`` (channels added after it), ``macs``, ``target_macs``, ``rel_err``, ``threshold`` (gate
        value of the last channel of the prefix) and ``mode``.

    Raises:
        PrunekitError: the target is below the smallest reachable model (every group at its minimum) or above the
            whole model by more than ``tol``, or no plan within ``tol`` exists along the gate ranking (the message
            gives the closest MACs found and suggests a larger ``tol`` or ``round_to: 1``).
    """
    groups = space.groups
    order_group, rank = channel_order(space, gates)
    n = int(order_group.size)
    target = float(target_macs)

    def widths_of(counts: np.ndarray) -> np.ndarray:
        return np.array(
            [
                legal_width(g, int(counts[i]), round_to=round_to, min_channels=min_channels)
                for i, g in enumerate(groups)
            ],
            dtype=np.int64,
        )

    def counts_after(k: int) -> np.ndarray:
        return np.bincount(order_group[:k], minlength=len(groups)).astype(np.int64)

    def macs(counts: np.ndarray) -> float:
        return float(np.rint(cost.macs(widths_of(counts))))

    def within(m: float) -> bool:
        return abs(m - target) <= tol * target

    smallest, _ = check_reachable(space, cost, target, tol=tol, min_channels=min_channels, round_to=round_to)
    mode = "top-k"
    if smallest > target:  # only the minimum model fits within tol (above the target)
        k, counts, m = 0, counts_after(0), smallest
    else:
        res = bisect_monotone(
            lambda x: macs(counts_after(int(x))), 0, n, target, tol_rel=0.0, integer=True, what="MACs"
        )
        k = int(res.x)
        counts, m = counts_after(k), float(res.value)
        if not within(m) and k < n and within(macs(counts_after(k + 1))):
            k += 1
            counts, m = counts_after(k), macs(counts_after(k))
    by_rank = []  # per group: gate values in the group's rank order (best first)
    for g in groups:
        v = torch.as_tensor(gates[g.name]).detach().cpu().double().reshape(-1).numpy()
        r = np.empty_like(v)
        r[rank[g.name]] = v
        by_rank.append(r)
    ranked = np.sort(
        np.concatenate(
            [torch.as_tensor(gates[g.name]).detach().cpu().double().reshape(-1).numpy() for g in groups]
        )
    )[::-1]
    threshold = float(ranked[k - 1]) if k > 0 else None  # gate value of the last channel of the top-k prefix
    filled = 0
    if not within(m):
        mode = "top-k+fill"
        full = set()  # groups whose next channel no longer fits (their marginal MACs only grow)
        for pos in range(k, n):
            i = int(order_group[pos])
            if i in full:
                continue
            trial = counts.copy()
            trial[i] += 1
            mt = macs(trial)
            if mt <= target:
                counts, m, filled = trial, mt, filled + 1
                if within(m):
                    break
            else:
                full.add(i)
        if not within(m):  # swap: at most two one-channel moves (add a group's next / drop its last kept)
            mode = "top-k+fill+swap"
            found = _repair(counts, macs, within, target, by_rank, [g.channels for g in groups])
            if found is not None:
                counts, m = found
        if not within(m):
            steps = [macs(counts + np.eye(len(groups), dtype=np.int64)[i]) - m for i in range(len(groups))]
            step = min((d for d in steps if d > 0), default=float("nan"))
            raise PrunekitError(
                f"scratch cannot prune to {target:,.0f} MACs within tol={tol:g}: the closest plan along the gate "
                f"ranking has {m:,.0f} MACs ({100 * (m - target) / target:+.3f}%) and one more channel adds at least "
                f"{step:,.0f} MACs ({100 * step / target:.2f}%); raise method.tol"
                + (" or set method.round_to: 1" if round_to > 1 else "")
            )
    widths = widths_of(counts)
    plan = Plan(model=spec, input_shape=list(space.input_shape))
    for i, g in enumerate(groups):  # every group is listed, whole ones too (plan.widths then reads the widths
        w = int(
            widths[i]
        )  # of the expanded model even against the reference space, which has fewer channels)
        keep = (
            list(range(g.channels))
            if w >= g.channels
            else select_channels(g, w, torch.as_tensor(-rank[g.name], dtype=torch.float64))
        )
        plan.groups[g.name] = GroupChoice(channels=g.channels, keep=keep)
    final = float(cost.cost(plan).macs)
    if not within(final):  # the realised plan is what gets saved: never an off-target one
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


def _repair(counts, macs, within, target, by_rank, channels):
    """Best plan within tolerance reachable from ``counts`` by one or two moves, each adding a group's next-ranked
    channel (``+i``) or dropping its last kept one (``-i``); best = largest net gate value gained (added gates minus
    dropped ones), then smallest MACs error. Returns ``(counts, macs)`` or None."""
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
            mt = macs(c)
            if within(mt):
                key = (score, -abs(mt - target))
                if best is None or key > best[0]:
                    best = (key, c, mt)
    return None if best is None else (best[1], best[2])


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


def _smoke_recipe(tc: TrainConfig) -> TrainConfig:
    if tc.epochs <= 1.0:
        return tc
    return tc.model_copy(
        update={
            "epochs": 1.0,
            "warmup_epochs": min(tc.warmup_epochs, 0.5),
            "milestones": [m for m in tc.milestones if m < 1.0],
        }
    )


# ---------------------------------------------------------------------------------------------- plot
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

    See the module docstring (Wang et al., "Pruning from Scratch", AAAI 2020). ``ctx.model`` is not used (nor
    modified): the expanded model is a fresh random initialisation (seed ``ctx.seed``) and the pruned model another
    one (seed ``ctx.seed + 1``). Gate training runs through ``ctx.train(..., tag="scratch-gates")`` (Adam over the
    gates only: every other parameter is frozen) and the final training through ``ctx.train(..., tag="scratch-train")``,
    both checkpointed, so a killed run re-run with the same command resumes and makes the same choices.

    Returns:
        :class:`MethodResult` with the plan over the expanded model (``plan.model`` = expanded spec), the trained
        pruned model, ``trained=True``, history rows (one per gate epoch, one for the pruning, one for the
        training) and ``extra`` (expansion, specs, reference / expanded / target / achieved MACs, reduction ``p``,
        budget and epochs, gate selection, ``gates_plot`` / ``gates_file`` file names).

    Raises:
        PrunekitError: no target; expansion on a model without ``width_mult``; the expanded model's channel groups
            differ from the reference's; no training recipe (neither ``method.train`` nor ``baseline.train``); the
            target cannot be met within ``tol`` (see :func:`prune_to_macs`).
    """
    target = require_target(ctx, "scratch")
    train = require_train(ctx, "scratch")
    recipe = cfg.train or ctx.baseline_train
    if recipe is None:
        raise PrunekitError(
            "scratch trains the pruned model from scratch: set method.train (a training recipe) or baseline.train "
            "(its epochs are the Scratch-B base budget)"
        )
    if ctx.smoke:
        recipe = _smoke_recipe(recipe)
    input_shape = tuple(ctx.space.input_shape)
    base_macs = float(ctx.cost.cost().macs)
    exp_spec = expand_spec(ctx.spec, cfg.expansion)

    # 1. expanded model at random init, its channel space and cost model
    model = _build(exp_spec, ctx.seed)
    space = ChannelSpace.build(model, input_shape, quiet=True)
    if space.names() != ctx.space.names():
        raise PrunekitError(
            f"scratch: the expanded model {exp_spec} has different channel groups than {ctx.spec} "
            f"({len(space.groups)} vs {len(ctx.space.groups)}); use method.expansion: 1 for this model"
        )
    cost = CostModel(space)
    exp_macs = float(cost.cost().macs)
    check_reachable(space, cost, target, tol=cfg.tol, min_channels=cfg.min_channels, round_to=cfg.round_to)
    log.info(
        "scratch: expanded %s (%.2fx): %s MACs; reference %s MACs; target %s MACs",
        exp_spec,
        cfg.expansion,
        f"{exp_macs:,.0f}",
        f"{base_macs:,.0f}",
        f"{target:,.0f}",
    )

    # 2. gates on frozen random weights
    gated = attach_gates(model, space, init=1.0, freeze=True)
    gate_tc = TrainConfig(
        epochs=min(cfg.gate_epochs, 1.0) if ctx.smoke else cfg.gate_epochs,
        optimizer="adam",
        lr=cfg.gate_lr,
        weight_decay=0.0,
        schedule="constant",
        seed=ctx.seed,
    )
    selector = GateSelector(cfg.sparsity)
    res = train(
        gated,
        gate_tc,
        tag="scratch-gates",
        callbacks=[GateRegularizer(cfg.lam, cfg.sparsity), selector],
        select="last",
    )
    choice = selector.choose(gated)
    gated.detach()
    gates = gated.gate_values()
    history: list[dict] = [
        {
            "step": "gates",
            "epoch": row.get("epoch"),
            "val_top1": row.get("val_top1"),
            "gate_mean": row.get("gate_mean"),
            "gate_nonzero": row.get("gate_nonzero"),
        }
        for row in res.history
    ]
    log.info(
        "scratch: gates chosen by %s (epoch %s, val top1 %s): %.1f%% non-zero, mean %.3f",
        choice["rule"],
        choice["epoch"],
        choice["val_top1"],
        100 * choice["nonzero"],
        choice["mean"],
    )

    # 3. prune the expanded model to the reference-relative MACs target
    plan = prune_to_macs(
        space,
        cost,
        gates,
        target,
        tol=cfg.tol,
        min_channels=cfg.min_channels,
        round_to=cfg.round_to,
        spec=exp_spec,
    )
    c = cost.cost(plan)
    p = 1.0 - c.macs / base_macs
    plan.meta.update(
        {
            "method": "scratch",
            "expansion": cfg.expansion,
            "reference_spec": ctx.spec,
            "expanded_spec": exp_spec,
            "gate_selection": choice,
        }
    )
    history.append(
        {
            "step": "prune",
            "macs": c.macs,
            "params": c.params,
            "macs_ratio": c.macs / base_macs,
            "mode": plan.meta["mode"],
        }
    )
    from prunekit.io import write_json

    out = Path(ctx.out_dir)
    write_json(
        out / "gates.json",
        {
            "expanded_spec": exp_spec,
            "selection": choice,
            "threshold": plan.meta["threshold"],
            "kept": {g.name: int(w) for g, w in zip(space.groups, plan.widths(space), strict=True)},
            "gates": {k: [round(float(x), 6) for x in v.tolist()] for k, v in gates.items()},
        },
    )
    plot_gates(
        space,
        gates,
        plan,
        out / "gates.png",
        threshold=plan.meta["threshold"],
        title=f"scratch: gates of {exp_spec} ({choice['rule']}), kept {c.macs / base_macs:.1%} of reference MACs",
    )

    # 4. fresh initialisation of the pruned architecture, Scratch-B / Scratch-E training
    factor = 1.0 / (1.0 - p) if cfg.budget == "scratch-b" else 1.0
    if not math.isfinite(factor) or factor <= 0:
        raise PrunekitError(
            f"scratch: MACs reduction {p:.3f} gives no valid Scratch-B budget; use budget: scratch-e"
        )
    train_tc = budget_recipe(recipe, factor)
    fresh = _build(exp_spec, ctx.seed + 1)
    pruned = apply(fresh, plan, space)
    select = cfg.select if getattr(ctx.data, "val", None) is not None else "last"
    log.info(
        "scratch: %s MACs (%.1f%% reduction vs reference); %s: %.3g epochs (base %.3g)",
        f"{c.macs:,}",
        100 * p,
        cfg.budget,
        train_tc.epochs,
        recipe.epochs,
    )
    tr = train(pruned, train_tc, tag="scratch-train", select=select)
    if select == "best" and ctx.train is None and tr.best_state is not None:
        pruned.load_state_dict(tr.best_state)
    history.append(
        {
            "step": "scratch-train",
            "epochs": train_tc.epochs,
            "val_top1": tr.best_top1 if select == "best" else (tr.final or {}).get("val_top1"),
        }
    )
    return MethodResult(
        plan=plan,
        model=pruned,
        history=history,
        trained=True,
        extra={
            "expansion": cfg.expansion,
            "reference_spec": ctx.spec,
            "expanded_spec": exp_spec,
            "base_macs": base_macs,
            "expanded_macs": exp_macs,
            "target_macs": target,
            "macs": c.macs,
            "macs_rel_err": plan.meta["rel_err"],
            "tol": cfg.tol,
            "reduction": p,
            "budget": cfg.budget,
            "base_epochs": recipe.epochs,
            "train_epochs": train_tc.epochs,
            "gate_selection": choice,
            "prune_mode": plan.meta["mode"],
            "gates_plot": "gates.png",
            "gates_file": "gates.json",
        },
    )
