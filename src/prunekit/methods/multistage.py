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
  with normalised scores ranked across groups (:func:`prunekit.methods.magnitude.prune_to_target`).
* **Schedule** (§III-C): stage end ratios (:func:`~prunekit.methods.schedules.stage_ratios`: ``8stage`` = 1/8 … 7/8,
  ``16stage`` = 1/16 … 15/16, or any list); within each stage the ratio follows the cubic AGP ramp from the previous
  stage's ratio to the stage's, re-pruning every ``prune_every`` optimiser steps during the first ``ramp_epochs``
  epochs, then masked finetuning for the rest of the stage (:class:`~prunekit.train.agp.AGPCallback`). Each stage
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

A killed run resumes: each stage trains under ``ctx.train(..., tag="stage{k}")`` with checkpoint/resume, the
callback's state (alive channels, ratio, ramp position) is in the checkpoint, and finished stages replay from their
complete checkpoints, so re-running the same command finishes with the same result.

Config (YAML)::

    method: {name: multistage, schedule: 8stage, importance: l1, ramp_epochs: 1, prune_every: 16,
             stage: {epochs: 4, lr: 0.01, momentum: 0.9, weight_decay: 4.0e-5, no_wd_bn_bias: false,
                     schedule: exponential, exp_decay: 0.96}}
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from prunekit import importance as _importance
from prunekit.cost.macs import CostModel, count_params
from prunekit.errors import PrunekitError
from prunekit.methods.base import ImportanceName, MethodContext, MethodResult, RoundTo, TagList, require_train
from prunekit.methods.magnitude import alive_counts, prune_to_target, scored_protected
from prunekit.methods.schedules import parse_schedule, stage_pairs, stage_ratios
from prunekit.methods.uniform import legal_width
from prunekit.space import ChannelSpace, GroupChoice, Plan, apply, select_channels
from prunekit.space.channels import clone_model
from prunekit.train import TrainConfig
from prunekit.train.agp import AGPCallback

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
        round_to, min_channels: kept counts rounded to a multiple of ``round_to``, at least ``min_channels``.
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
        """The stage end ratios (see :func:`~prunekit.methods.schedules.stage_ratios`)."""
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
    :func:`~prunekit.methods.uniform.legal_width`), capped at its alive count; protected groups keep their alive
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
            ``global`` — the MACs of that per-layer model spent by :func:`~prunekit.methods.magnitude.prune_to_target`
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


def _scorer(crit, space: ChannelSpace, names: list[str]):
    def scores(model: nn.Module) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {n: crit(model, space, space[n]).detach().to("cpu", torch.float64) for n in names}

    return scores


def _shrink_for_smoke(cfg: MultistageConfig, steps_per_epoch: int) -> tuple[TrainConfig, float, int]:
    """``(stage recipe, ramp_epochs, prune_every)`` for a ``--smoke`` run: at most half an epoch per stage (a 15-stage
    schedule must still finish in about two minutes), the ramp in its first half, at least four prune events."""
    epochs = min(cfg.stage.epochs, 0.5)
    tc = cfg.stage.model_copy(
        update={
            "epochs": epochs,
            "warmup_epochs": min(cfg.stage.warmup_epochs, epochs / 2),
            "milestones": [m for m in cfg.stage.milestones if m < epochs],
        }
    )
    ramp = min(cfg.ramp_epochs, epochs / 2)
    ramp_steps = round(ramp * steps_per_epoch)
    return tc, ramp, max(1, min(cfg.prune_every, ramp_steps // 4))


def _latency_ms(ctx: MethodContext, cfg: MultistageConfig, model: nn.Module, last: bool) -> float | None:
    if not cfg.latency or (ctx.smoke and not last):
        return None  # --smoke measures only the baseline and the final stage (each export takes seconds)
    from prunekit.cost.latency import measure_ort_latency

    kw: dict[str, Any] = {"batch_sizes": (1,), "threads": cfg.latency_threads}
    if ctx.smoke:
        kw.update(warmup=2, repeats=5, max_time_s=1.0, min_time_s=0.05)
    net = copy.deepcopy(model).cpu() if ctx.device != "cpu" else model
    return float(measure_ort_latency(net, ctx.space.input_shape, **kw)[1].median_ms)


def _stage_row(
    ctx: MethodContext,
    cfg: MultistageConfig,
    k: int,
    ratio: float,
    model: nn.Module,
    plan: Plan,
    last: bool = True,
) -> dict[str, Any]:
    return {
        "stage": k,
        "ratio": ratio,
        "val_top1": float(ctx.evaluate(model, "val")["top1"]),
        "test_top1": float(ctx.evaluate(model, "test")["top1"]),
        "macs": int(ctx.cost.cost(plan).macs),
        "params": int(count_params(model)),
        "latency_ms": _latency_ms(ctx, cfg, model, last),
    }


# ---------------------------------------------------------------------------------------------- the method
def run(ctx: MethodContext, cfg: MultistageConfig) -> MethodResult:
    """Prune ``ctx.model`` in stages along ``cfg``'s ratio schedule, training within each stage.

    See the module docstring for the algorithm (Tu et al., IJCNN 2020, §III). ``ctx.target_macs`` is ignored (the
    schedule sets the final ratio). ``ctx.model`` is not modified. ``--smoke`` runs (``ctx.smoke``) train at most one
    epoch per stage (ramp in its first half, at least four prune events).

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
    require_train(ctx, "multistage")
    if getattr(ctx.data, "val", None) is None:
        raise PrunekitError(
            "multistage selects each stage's best checkpoint on the validation split: set data.val_fraction > 0"
        )
    space, cm = ctx.space, ctx.cost
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
    steps_per_epoch = len(ctx.data.train)
    ramp_steps = round(ramp * steps_per_epoch)
    if ramp_steps > 0 and ramp_steps < 2 * every:
        log.warning(
            "multistage: the ramp has %d steps and prune_every is %d: fewer than two prune events per stage "
            "(lower prune_every for a gradual ramp)",
            ramp_steps,
            every,
        )

    def prune_fn(model: nn.Module, ratio: float, alive: Mapping[str, torch.Tensor]) -> Plan:
        bad = next((n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())), None)
        if bad is not None:
            raise PrunekitError(
                f"multistage: training diverged before pruning to ratio {ratio:.4f} (non-finite weights in {bad}); "
                "set method.stage.grad_clip, lower method.stage.lr, raise method.min_channels or stop earlier with "
                "method.final_ratio"
            )
        return plan_at_ratio(
            space,
            cm,
            scores_of(model),
            ratio,
            ranking=cfg.ranking,
            alive=alive,
            protected=protected,
            round_to=cfg.round_to,
            min_channels=cfg.min_channels,
            spec=ctx.spec,
        )

    stages_dir = ctx.out_dir / "stages"
    work = clone_model(ctx.model)  # the full-size masked model every stage trains
    plan = Plan(model=ctx.spec, input_shape=list(space.input_shape))
    history = [_stage_row(ctx, cfg, 0, 0.0, work, plan)]
    best_epochs: list[int | None] = []
    final: nn.Module = work
    log.info("multistage: %d stages to ratios %s", len(ratios), ", ".join(f"{r:.4g}" for r in ratios))
    for k, (r_begin, r_end) in enumerate(stage_pairs(ratios), 1):
        cb = AGPCallback(
            space,
            prune_fn,
            r_begin=r_begin,
            r_end=r_end,
            ramp_epochs=ramp,
            prune_every=every,
            plan=plan,
            exponent=cfg.exponent,
        )
        res = ctx.train(work, recipe, tag=f"stage{k}", callbacks=[cb], select="best")
        if not cb.done:
            raise RuntimeError(f"internal: stage {k} ended before its ramp reached ratio {r_end}")
        plan = cb.plan.model_copy(deep=True)
        plan.model, plan.input_shape = ctx.spec, list(space.input_shape)
        plan.meta.update({"method": "multistage", "stage": k, "ratio": r_end})
        cb.masks.apply_(work)  # the best state was saved masked; re-applying is a no-op safeguard
        final = apply(work, plan, space)
        diff = check_equivalent(work, final, space.input_shape, atol=cfg.check_atol)
        row = _stage_row(ctx, cfg, k, r_end, final, plan, last=k == len(ratios))
        history.append(row)
        best_epochs.append(getattr(res, "best_epoch", None))
        plan.save(stages_dir / f"stage{k}.plan.json")
        if cfg.save_weights:
            from prunekit.pipeline import save_safetensors  # lazy: the pipeline imports the method registry

            save_safetensors(
                final.state_dict(),
                stages_dir / f"stage{k}.safetensors",
                metadata={"spec": str(ctx.spec), "plan": f"stage{k}.plan.json"},
            )
        log.info(
            "multistage stage %d/%d: ratio %.4g, %s MACs, val top1 %.4f, test top1 %.4f (masked = exported, max diff "
            "%.2g)",
            k,
            len(ratios),
            r_end,
            f"{row['macs']:,}",
            row["val_top1"],
            row["test_top1"],
            diff,
        )

    points = [
        {
            "label": f"r={h['ratio']:.3g}",
            "macs": h["macs"],
            "top1": h["test_top1"],
            "latency_ms": h["latency_ms"],
        }
        for h in history
    ]
    plan.meta.update({"method": "multistage", "stages": len(ratios), "ranking": cfg.ranking})
    return MethodResult(
        plan=plan,
        model=final,
        history=history,
        trained=True,
        extra={
            "schedule": cfg.schedule,
            "ratios": ratios,
            "ranking": cfg.ranking,
            "importance": cfg.importance,
            "stages": len(ratios),
            "ramp_epochs": ramp,
            "prune_every": every,
            "stage_epochs": recipe.epochs,
            "best_epochs": best_epochs,
            "protected": sorted(protected),
            "base_macs": int(cm.cost().macs),
            "macs": int(cm.cost(plan).macs),
            "points": points,
        },
    )
