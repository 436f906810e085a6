"""``plan``: train a given plan -- a JCW front member, a MetaPruning candidate, any ``plan.json`` -- with JCW's
SparseTrainer phases (REGULAR -> ADMM -> FT).

One search writes many plans (``jcw``: ``<run>/front/member-{i}.json``; ``metapruning``:
``<run>/candidates/rank01.json``); this method trains any of them through the normal pipeline, so no encoding or
width list is ever copied by hand (the JCW seed's ``generate_training_config.py`` step, replaced)::

    method: {name: plan, plan: runs/jcw/front/member-3.json, init: scratch,
             train: {regular: {epochs: 30, lr: 0.1}, admm: {epochs: 5, lr: 0.005}, ft: {epochs: 5, lr: 0.005}}}

``init: scratch`` builds the pruned network from the model spec's own initialisation (JCW trains its members from
scratch); ``init: model`` prunes the run's baseline (trained) weights instead. Then ``train.regular`` trains the
channel-pruned dense net, and, for a plan with weight densities, ADMM and FT make its weights block-sparse
(:func:`~prunekit.train.admm.train_sparse`); a ``null`` recipe skips its phase (with every phase skipped, the
pipeline's ``finetune`` recovers the net as for any other method).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from prunekit.errors import PrunekitError
from prunekit.methods.base import MethodContext, MethodResult, fresh_model
from prunekit.space import Plan, apply, without_densities
from prunekit.space.realise import density_masks
from prunekit.train.admm import SparseTrainConfig, admm_targets, train_sparse

__all__ = ["BUDGET_METRICS", "Config", "PlanConfig", "run"]

BUDGET_METRICS = ("macs", "params", "latency_ms")
"""A plan is given, not fitted: a target is only reported against (asked vs achieved)."""


class PlanConfig(BaseModel):
    """Options of the ``plan`` method: ``plan`` (path of a plan JSON), ``init`` (``scratch`` | ``model``),
    ``train`` (:class:`~prunekit.train.admm.SparseTrainConfig`)."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["plan"] = "plan"
    plan: str
    init: Literal["scratch", "model"] = "scratch"
    train: SparseTrainConfig = Field(default_factory=SparseTrainConfig)


Config = PlanConfig


def run(ctx: MethodContext, cfg: PlanConfig) -> MethodResult:
    """Load ``cfg.plan``, build its network (``init``), train it REGULAR -> ADMM -> FT.

    Returns:
        :class:`MethodResult` with the plan (densities ranked by L2, the masks ADMM / FT fixed), the network,
        ``trained`` True when any phase ran, ``extra`` ``{"plan_file", "init", "sparse_layers", "density", ...}``.

    Raises:
        PrunekitError: the file is missing or not a plan, the plan was made for another model or input shape, or
            a phase needs ``prunekit run`` (no training function).
    """
    path = Path(cfg.plan)
    if not path.is_file():
        raise PrunekitError(
            f"plan file not found: {path} (a plan.json, or a jcw run's front/member-<i>.json)"
        )
    plan = Plan.load(path)
    if plan.model not in (None, ctx.spec):
        raise PrunekitError(f"{path} is a plan for model {plan.model!r}, this run's model is {ctx.spec!r}")
    plan.validate_against(ctx.space)
    for name, lc in list(plan.layers.items()):  # ADMM / FT masks are L2 block masks
        if lc.density is not None:
            plan.layers[name] = lc.model_copy(update={"criterion": "l2"})
    recipe = cfg.train
    phases = [p for p in (recipe.regular, recipe.admm, recipe.ft) if p is not None]
    if phases and ctx.train is None:
        raise PrunekitError("the plan method trains: run it through `prunekit run`")
    base = fresh_model(ctx) if cfg.init == "scratch" else ctx.model
    net = apply(base, without_densities(plan), ctx.space)
    if recipe.regular is not None:
        ctx.train(net, recipe.regular, tag="plan_regular", select="best")  # type: ignore[misc]
    targets = admm_targets(plan)
    if targets and (recipe.admm is not None or recipe.ft is not None):
        facts = train_sparse(net, targets, ctx.train, recipe, tag="plan")  # type: ignore[arg-type]
    else:  # no sparse phase: the plan's densities are realised from the current weights (L2 blocks)
        density_masks(net, plan).apply_(net)
        facts = {"sparse_layers": len(targets)}
    plan.meta.update({"plan_file": str(path), "init": cfg.init})
    return MethodResult(
        plan=plan,
        model=net,
        history=[],
        trained=bool(phases),
        extra={"plan_file": str(path), "init": cfg.init, **facts},
    )
