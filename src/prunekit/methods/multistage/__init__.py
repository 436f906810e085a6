"""``multistage``: multistage gradual channel pruning (Tu et al., IJCNN 2020), for any model.

Tu, Lee, Chan, Chen, "Pruning Depthwise Separable Convolutions for MobileNet Compression" (IJCNN 2020):

* **Pruning unit** (§III-A): a channel group of the :class:`~prunekit.space.ChannelSpace`, so a pointwise conv, its
  BN, the following depthwise conv and its BN, and every tensor tied to them by residual adds, are pruned together
  (the seed's union-find "clusters", found here by tracing instead of hand-built graphs, so ResNets and VGG work too).
* **Criterion** (§III-B, the seed's "magnitude-sum-min"): per channel, the sum over the group's convs of the filter's
  L1 norm (depthwise filters included), ``importance: l1``; ``importance: l1_bn`` multiplies by the summed
  ``|BN gamma|`` (the seed's ``use_bn``); any criterion of :mod:`prunekit.importance` works.
* **Ratio per group** (``ranking: per_layer``, the seed's behaviour): every group keeps
  ``legal_width(C * (1 - r))`` channels (nearest multiple of ``round_to``, ties up, at least ``min_channels``), its
  top-scored ones. ``ranking: global`` spends the same MACs budget (the MACs of the per-layer model at ratio ``r``)
  with normalised scores ranked across groups (:func:`prunekit.search.fit.prune_to_target`).
* **Schedule** (§III-C): stage end ratios (:func:`~prunekit.methods.multistage.schedules.stage_ratios`: ``8stage`` = 1/8 … 7/8,
  ``16stage`` = 1/16 … 15/16, or any list); within each stage the ratio follows the cubic AGP ramp from the previous
  stage's ratio to the stage's, re-pruning every ``prune_every`` optimiser steps during the first ``ramp_epochs``
  epochs, then masked finetuning for the rest of the stage (:class:`~prunekit.methods.multistage.agp.AGPCallback`). Each stage
  is a fresh ``ctx.train`` run (new optimiser and LR schedule, the ``stage`` recipe) started from the previous
  stage's best checkpoint, selected on the validation split among the epochs after the ramp (never on test).
* **After every stage**: the masked model is exported physically (:func:`~prunekit.space.apply`), checked to give the
  masked model's outputs (``RuntimeError`` otherwise), and measured: val/test top-1, MACs, params, ONNX Runtime
  latency at batch 1. Its plan is written to ``stages/stage{k}.plan.json`` and its weights to
  ``stages/stage{k}.safetensors`` under the run directory (rebuild any stage with :func:`prunekit.space.rebuild`).

Where this deviates from the seed (``ivclab/Multistage_Pruning``):

* any traced model (not two hand-built graphs), any device (no CUDA / DataParallel requirement);
* ``"8stage"`` is documented as what it is: the name counts the ratio levels including the unpruned start, so it
  runs **seven** stages (1/8 … 7/8), ``"16stage"`` fifteen;
* exact top-k per group (``round`` of the kept count, ties up) instead of a score threshold, where ties could prune
  more channels than asked;
* the best checkpoint is selected on a held-out validation split (the seed selected on the test set);
* pruned BN running variances are held at 1 (not 0): the channel's output is ``beta = 0`` either way, and the
  physically exported model is identical;
* stage 0 (the unpruned baseline) is a row of the per-stage table, like the seed's ``1.00x`` line.

Layout: :func:`run` (this module) is the loop over stages; :mod:`.schedules` holds the ratio schedules and the
AGP ramp, :mod:`.agp` the masking callback that follows the ramp during training, :mod:`.stages` what happens after
each stage's training (:func:`~prunekit.methods.multistage.stages.finish_stage`: export, check, measure, save).

A killed run resumes: each stage trains under ``ctx.train(..., tag="stage{k}")`` with checkpoint/resume, the
callback's state (alive channels, ratio, ramp position) is in the checkpoint, and finished stages replay from their
complete checkpoints, so re-running the same command finishes with the same result.

Config (YAML)::

    method: {name: multistage, schedule: 8stage, importance: l1, ramp_epochs: 1, prune_every: 16,
             stage: {epochs: 4, lr: 0.01, momentum: 0.9, weight_decay: 4.0e-5, no_wd_bn_bias: false,
                     schedule: exponential, exp_decay: 0.96}}
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from prunekit import importance as _importance
from prunekit.cost.latency import resolve_round_to
from prunekit.cost.macs import CostModel
from prunekit.data import NO_VAL_FIX
from prunekit.errors import PrunekitError
from prunekit.methods.base import ImportanceName, MethodContext, MethodResult, RoundTo, TagList, require_train
from prunekit.methods.multistage.agp import AGPCallback, PruneFn
from prunekit.methods.multistage.schedules import parse_schedule, stage_pairs, stage_ratios
from prunekit.methods.multistage.stages import check_equivalent, finish_stage, stage_row, tradeoff_points
from prunekit.search.fit import alive_counts, prune_to_target, scored_protected
from prunekit.space import ChannelSpace, GroupChoice, Plan, select_channels
from prunekit.space.channels import clone_model
from prunekit.space.widths import legal_width
from prunekit.train import TrainConfig, smoke_recipe

__all__ = [
    "Config",
    "MultistageConfig",
    "check_equivalent",
    "plan_at_ratio",
    "run",
    "seed_stage_recipe",
    "uniform_ratio_widths",
]

log = logging.getLogger(__name__)


def seed_stage_recipe(epochs: float = 30) -> TrainConfig:
    """The seed's per-stage recipe (``configs/MobileNetV1_ImageNet.py``, prune modes): SGD lr 0.01, momentum 0.9,
    weight decay 4e-5 on every parameter (BN included, no Nesterov), LR x0.96 per epoch, ``epochs`` per stage
    (30 for 8-stage, 15 for 16-stage)."""
    return TrainConfig(
        epochs=epochs,
        optimizer="sgd",
        lr=0.01,
        momentum=0.9,
        nesterov=False,
        weight_decay=4e-5,
        no_wd_bn_bias=False,
        schedule="exponential",
        exp_decay=0.96,
    )


class MultistageConfig(BaseModel):
    """Options of the ``multistage`` method.

    Attributes:
        name: ``"multistage"`` (the discriminator in run configs).
        schedule: ``"8stage"`` (7 stages, 1/8 … 7/8), ``"16stage"`` (15 stages, 1/16 … 15/16), any ``"<N>stage"``,
            or an explicit strictly increasing list of stage end ratios in (0, 1) (fractions of channels removed).
        final_ratio: stop at this ratio: the schedule's ratios below it, then ``final_ratio`` (None = the whole
            schedule).
        importance: criterion of :data:`prunekit.importance.CRITERIA` (``l1`` = the seed's magnitude sum,
            ``l1_bn`` = times ``|BN gamma|``).
        ranking: ``per_layer`` — the same ratio in every group (the seed); ``global`` — the per-layer model's MACs
            spent by a normalised global ranking.
        round_to, min_channels: kept counts rounded to a multiple of ``round_to``, at least ``min_channels``;
            ``round_to: auto`` is resolved once at the start of :func:`run`
            (:func:`~prunekit.cost.latency.resolve_round_to`: this CPU's ONNX Runtime channel multiple, 8 or 16).
        protect: group tags never pruned (``first``, ``last``, ``strided``, ``residual``, ``depthwise``,
            ``expansion``, ``grouped``).
        ramp_epochs: epochs of each stage during which the ratio ramps up (the seed's ``prune_intv`` = 4); 0 = prune
            to the stage's ratio at once, then finetune. Must not exceed ``stage.epochs``.
        prune_every: optimiser steps between re-pruning events during the ramp (the seed's ``prune_freq`` = 2000).
        exponent: AGP curvature (3 = cubic).
        stage: the per-stage training recipe (:class:`~prunekit.train.TrainConfig`; fresh optimiser and LR schedule
            every stage). Default: :func:`seed_stage_recipe` (30 epochs).
        latency: measure ONNX Runtime latency (batch 1) of every stage's exported model.
        latency_threads: ONNX Runtime intra-op threads for that measurement.
        save_weights: also write ``stages/stage{k}.safetensors`` (the applied stage model's weights).
        check_atol: tolerance of the masked-vs-exported output check (absolute, on logits).
    """

    model_config = ConfigDict(extra="forbid")
    name: Literal["multistage"] = "multistage"
    schedule: str | list[float] = "8stage"
    final_ratio: float | None = Field(default=None, gt=0.0, lt=1.0)
    importance: ImportanceName = "l1"
    ranking: Literal["per_layer", "global"] = "per_layer"
    round_to: RoundTo = 1
    min_channels: int = Field(1, ge=1)
    protect: TagList = Field(default_factory=list)
    ramp_epochs: float = Field(4.0, ge=0)
    prune_every: int = Field(2000, ge=1)
    exponent: float = Field(3.0, gt=0)
    stage: TrainConfig = Field(default_factory=seed_stage_recipe)
    latency: bool = True
    latency_threads: int = Field(1, ge=1)
    save_weights: bool = True
    check_atol: float = Field(1e-4, gt=0)

    @field_validator("schedule")
    @classmethod
    def _valid_schedule(cls, v: str | list[float]) -> str | list[float]:
        try:
            parse_schedule(v)
        except PrunekitError as exc:
            raise ValueError(str(exc)) from None
        return v

    @model_validator(mode="after")
    def _ramp_fits_stage(self) -> MultistageConfig:
        if self.ramp_epochs > self.stage.epochs:
            raise ValueError(
                f"ramp_epochs ({self.ramp_epochs}) must not exceed stage.epochs ({self.stage.epochs}): the ratio must "
                "reach the stage's end before the stage's last epoch; lower ramp_epochs or raise stage.epochs"
            )
        return self

    def ratios(self) -> list[float]:
        """The stage end ratios (see :func:`~prunekit.methods.multistage.schedules.stage_ratios`)."""
        return stage_ratios(self.schedule, self.final_ratio)


Config = MultistageConfig


# ---------------------------------------------------------------------------------------------- building blocks
def uniform_ratio_widths(
    space: ChannelSpace,
    ratio: float,
    *,
    alive: Mapping[str, torch.Tensor] | None = None,
    protected: Iterable[str] = (),
    round_to: int = 1,
    min_channels: int = 1,
) -> np.ndarray:
    """Kept channels per group at pruning ratio ``ratio``, shape ``[G]`` (int64, space order).

    Every unprotected group of ``C`` channels keeps ``legal_width(C * (1 - ratio))`` (nearest multiple of
    ``round_to``, ties up, clamped to ``[min_channels, C]``, balanced over grouped-conv blocks; see
    :func:`~prunekit.space.widths.legal_width`), capped at its alive count; protected groups keep their alive
    channels. The seed prunes ``round(ratio * C)`` channels per cluster, the same count up to ``.5`` ties.
    """
    protected = set(protected)
    n_alive = alive_counts(space, alive)
    return np.array(
        [
            n_alive[i]
            if g.name in protected
            else min(
                int(n_alive[i]),
                legal_width(g, g.channels * (1.0 - ratio), round_to=round_to, min_channels=min_channels),
            )
            for i, g in enumerate(space.groups)
        ],
        dtype=np.int64,
    )


def plan_at_ratio(
    space: ChannelSpace,
    cost: CostModel,
    scores: Mapping[str, torch.Tensor],
    ratio: float,
    *,
    ranking: Literal["per_layer", "global"] = "per_layer",
    alive: Mapping[str, torch.Tensor] | None = None,
    protected: Iterable[str] = (),
    round_to: int = 1,
    min_channels: int = 1,
    spec: str | None = None,
) -> Plan:
    """The plan at pruning ratio ``ratio`` (fraction of every group's original channels removed).

    Args:
        space, cost: the channel space and its :class:`CostModel` (MACs per sample, conv + linear).
        scores: ``{group name: Tensor[C]}`` importance (higher = kept first) of every unprotected group; a group
            without scores is protected.
        ratio: in ``[0, 1)``.
        ranking: ``per_layer`` — :func:`uniform_ratio_widths`, top-``k`` per group (Tu et al. 2020, §III-B);
            ``global`` — the MACs of that per-layer model spent by :func:`~prunekit.search.fit.prune_to_target`
            (normalised scores ranked across groups).
        alive: ``{group name: bool Tensor[C]}`` channels still present; dead channels are never kept again (score
            ``-inf``). None = all alive.
        protected: group names never pruned. round_to, min_channels: see :func:`uniform_ratio_widths`.
        spec: model spec stored in the plan.

    Returns:
        a :class:`Plan` over ``space`` listing every pruned channel (earlier ones included).

    Raises:
        PrunekitError: ``ratio`` outside ``[0, 1)`` or non-finite scores.
    """
    if not 0.0 <= ratio < 1.0:
        raise PrunekitError(f"pruning ratio must be in [0, 1), got {ratio}")
    protected = scored_protected(space, scores, protected)
    widths = uniform_ratio_widths(
        space, ratio, alive=alive, protected=protected, round_to=round_to, min_channels=min_channels
    )
    if ranking == "global":
        target = float(np.rint(cost.macs(widths)))
        return prune_to_target(
            space,
            cost,
            scores,
            target,
            ranking="global",
            alive=alive,
            protected=protected,
            round_to=round_to,
            min_channels=min_channels,
            spec=spec,
        )
    if ranking != "per_layer":
        raise ValueError(f"ranking must be 'per_layer' or 'global', got {ranking!r}")
    plan = Plan(model=spec, input_shape=list(space.input_shape))
    for i, g in enumerate(space.groups):
        w = int(widths[i])
        live = alive[g.name].to("cpu", torch.bool) if alive is not None and g.name in alive else None
        if w >= g.channels or (g.name in protected and (live is None or bool(live.all()))):
            continue
        if g.name in protected:
            keep = torch.nonzero(live).flatten().tolist()
        else:
            s = scores[g.name].detach().to("cpu", torch.float64).reshape(-1).clone()
            if s.numel() != g.channels:
                raise ValueError(
                    f"scores of group {g.name!r} have {s.numel()} entries, the group {g.channels}"
                )
            if not torch.isfinite(s if live is None else s[live]).all():
                raise PrunekitError(
                    f"importance scores of channel group {g.name!r} are not finite (NaN/inf weights?); check the "
                    "model or lower the learning rate"
                )
            if live is not None:
                s[~live] = float("-inf")
            keep = select_channels(g, w, s)
        plan.groups[g.name] = GroupChoice(channels=g.channels, keep=keep)
    return plan


# ---------------------------------------------------------------------------------------------- run set-up
def _scorer(crit, space: ChannelSpace, names: list[str]) -> Callable[[nn.Module], dict[str, torch.Tensor]]:
    """``model -> {group name: float64 Tensor[C] on the CPU}``: criterion ``crit`` on the groups ``names``."""

    def scores(model: nn.Module) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {n: crit(model, space, space[n]).detach().to("cpu", torch.float64) for n in names}

    return scores


def _shrink_for_smoke(cfg: MultistageConfig, steps_per_epoch: int) -> tuple[TrainConfig, float, int]:
    """``(stage recipe, ramp_epochs, prune_every)`` for a ``--smoke`` run: at most half an epoch per stage (a 15-stage
    schedule must still finish in about two minutes), the ramp in its first half, at least four prune events."""
    tc = smoke_recipe(cfg.stage, 0.5)
    epochs = tc.epochs
    ramp = min(cfg.ramp_epochs, epochs / 2)
    ramp_steps = round(ramp * steps_per_epoch)
    return tc, ramp, max(1, min(cfg.prune_every, ramp_steps // 4))


@dataclass(frozen=True)
class _Setup:
    """What every stage of a run shares, fixed before any training (see :func:`_setup`).

    Attributes:
        ratios: the stage end ratios (fractions of every group's original channels removed), one per stage.
        protected: names of the groups never pruned (their tags are in ``cfg.protect``).
        scores_of: ``model -> {group name: float64 Tensor[C]}``, the importance of every unprotected group.
        recipe: the per-stage training recipe (fresh optimiser and LR schedule every stage).
        ramp_epochs: epochs of each stage during which the ratio ramps up (AGP, §III-C).
        prune_every: optimiser steps between prune events during the ramp.
    """

    ratios: list[float]
    protected: set[str]
    scores_of: Callable[[nn.Module], dict[str, torch.Tensor]]
    recipe: TrainConfig
    ramp_epochs: float
    prune_every: int


def _setup(ctx: MethodContext, cfg: MultistageConfig) -> _Setup:
    """Check that ``ctx`` can run ``cfg`` and fix the schedule, the scorer and the per-stage recipe.

    The criterion is evaluated once on ``ctx.model`` so that it fails before any training. Under ``--smoke`` the
    recipe, ramp and prune interval are shrunk (:func:`_shrink_for_smoke`). Warns when a ramp has fewer than two
    prune events.

    Raises:
        PrunekitError: no ``ctx.train``, no validation split, every group protected, or a criterion that does not
            apply to the model (e.g. ``bn_scale`` on a group without BN).
    """
    require_train(ctx, "multistage")
    if getattr(ctx.data, "val", None) is None:
        raise PrunekitError(
            f"multistage selects each stage's best checkpoint on the validation split: {NO_VAL_FIX}"
        )
    space = ctx.space
    ratios = cfg.ratios()
    crit = _importance.get(cfg.importance)
    protected = {g.name for g in space.groups if g.tags & set(cfg.protect)}
    prunable = [g.name for g in space.groups if g.name not in protected]
    if not prunable:
        raise PrunekitError("every channel group is protected: nothing to prune; shorten method.protect")
    scores_of = _scorer(crit, space, prunable)
    scores_of(ctx.model)  # fail early (e.g. bn_scale on a group without BN), before any training
    recipe, ramp, every = cfg.stage, cfg.ramp_epochs, cfg.prune_every
    if ctx.smoke:
        recipe, ramp, every = _shrink_for_smoke(cfg, len(ctx.data.train))
    ramp_steps = round(ramp * len(ctx.data.train))
    if ramp_steps > 0 and ramp_steps < 2 * every:
        log.warning(
            "multistage: the ramp has %d steps and prune_every is %d: fewer than two prune events per stage "
            "(lower prune_every for a gradual ramp)",
            ramp_steps,
            every,
        )
    return _Setup(ratios, protected, scores_of, recipe, ramp, every)


def _prune_fn(ctx: MethodContext, cfg: MultistageConfig, setup: _Setup, round_to: int) -> PruneFn:
    """The :data:`~prunekit.methods.multistage.agp.PruneFn` of every stage's :class:`AGPCallback`:
    ``(model, ratio, alive) -> plan`` = :func:`plan_at_ratio` on the model's current scores (§III-B), channels
    rounded to multiples of ``round_to`` (an int: ``cfg.round_to`` resolved).

    The returned function raises :class:`PrunekitError` when the model has non-finite weights (training diverged).
    """

    def prune_fn(model: nn.Module, ratio: float, alive: Mapping[str, torch.Tensor]) -> Plan:
        bad = next((n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())), None)
        if bad is not None:
            raise PrunekitError(
                f"multistage: training diverged before pruning to ratio {ratio:.4f} (non-finite weights in {bad}); "
                "set method.stage.grad_clip, lower method.stage.lr, raise method.min_channels or stop earlier with "
                "method.final_ratio"
            )
        return plan_at_ratio(
            ctx.space,
            ctx.cost,
            setup.scores_of(model),
            ratio,
            ranking=cfg.ranking,
            alive=alive,
            protected=setup.protected,
            round_to=round_to,
            min_channels=cfg.min_channels,
            spec=ctx.spec,
        )

    return prune_fn


def _result(
    ctx: MethodContext,
    cfg: MultistageConfig,
    setup: _Setup,
    plan: Plan,
    final: nn.Module,
    history: list[dict[str, Any]],
    best_epochs: list[int | None],
) -> MethodResult:
    """The :class:`MethodResult` of a finished run (see :func:`run`); tags ``plan.meta`` with the method, the
    number of stages and the ranking."""
    plan.meta.update({"method": "multistage", "stages": len(setup.ratios), "ranking": cfg.ranking})
    return MethodResult(
        plan=plan,
        model=final,
        history=history,
        trained=True,
        extra={
            "schedule": cfg.schedule,
            "ratios": setup.ratios,
            "ranking": cfg.ranking,
            "importance": cfg.importance,
            "stages": len(setup.ratios),
            "ramp_epochs": setup.ramp_epochs,
            "prune_every": setup.prune_every,
            "stage_epochs": setup.recipe.epochs,
            "best_epochs": best_epochs,
            "protected": sorted(setup.protected),
            "base_macs": int(ctx.cost.cost().macs),
            "macs": int(ctx.cost.cost(plan).macs),
            "points": tradeoff_points(history),
        },
    )


# ---------------------------------------------------------------------------------------------- the method
def run(ctx: MethodContext, cfg: MultistageConfig) -> MethodResult:
    """Prune ``ctx.model`` in stages along ``cfg``'s ratio schedule, training within each stage.

    See the module docstring for the algorithm (Tu et al., IJCNN 2020, §III). ``ctx.target_macs`` is ignored (the
    schedule sets the final ratio). ``ctx.model`` is not modified. ``--smoke`` runs (``ctx.smoke``) train at most
    half an epoch per stage (ramp in its first half, at least four prune events).

    Returns:
        :class:`MethodResult`: the final stage's plan and applied (physically smaller) model, ``trained=True``, the
        history (one row per stage, stage 0 = the unpruned model: ``{"stage", "ratio", "val_top1", "test_top1",
        "macs", "params", "latency_ms"}``; top-1 as fractions, MACs per sample, latency in ms at batch 1 or None when
        ``latency`` is off) and ``extra`` ``{"schedule", "ratios", "ranking", "importance", "stages", "ramp_epochs",
        "prune_every", "stage_epochs", "best_epochs", "protected", "base_macs", "macs", "points"}`` (``points``:
        one ``{"label", "macs", "top1" (test), "latency_ms"}`` per row, drawn on the report's trade-off plot).

    Raises:
        PrunekitError: no ``ctx.train`` (run through ``prunekit run``), no validation split, an invalid schedule, or
            an importance criterion that does not apply to the model (e.g. ``bn_scale`` without BN), or training
            that diverged (non-finite weights at a prune event; the message suggests ``grad_clip`` / a lower LR).
        RuntimeError: a stage's exported model does not reproduce its masked model (a bug).
    """
    round_to = resolve_round_to(cfg.round_to)  # "auto" -> the channel multiple of this CPU's ONNX Runtime
    setup = _setup(ctx, cfg)
    prune_fn = _prune_fn(ctx, cfg, setup, round_to)
    n_stages = len(setup.ratios)
    work = clone_model(ctx.model)  # the full-size masked model every stage trains
    plan = Plan(model=ctx.spec, input_shape=list(ctx.space.input_shape))
    history = [stage_row(ctx, cfg, 0, 0.0, work, plan)]  # stage 0: the unpruned model
    best_epochs: list[int | None] = []
    final: nn.Module = work
    log.info("multistage: %d stages to ratios %s", n_stages, ", ".join(f"{r:.4g}" for r in setup.ratios))
    for k, (r_begin, r_end) in enumerate(stage_pairs(setup.ratios), 1):
        # AGP ramp from the previous stage's ratio to this stage's while training, then masked finetuning (§III-C)
        cb = AGPCallback(
            ctx.space,
            prune_fn,
            r_begin=r_begin,
            r_end=r_end,
            ramp_epochs=setup.ramp_epochs,
            prune_every=setup.prune_every,
            plan=plan,
            exponent=cfg.exponent,
        )
        res = ctx.train(work, setup.recipe, tag=f"stage{k}", callbacks=[cb], select="best")
        # the stage model: applied, checked against the masked one, measured, saved
        plan, final, row = finish_stage(ctx, cfg, k, n_stages, cb, work)
        history.append(row)
        best_epochs.append(getattr(res, "best_epoch", None))
    return _result(ctx, cfg, setup, plan, final, history, best_epochs)
