"""``plan``: train a given plan -- a JCW front member, a MetaPruning candidate, any ``plan.json`` -- with JCW's
SparseTrainer phases (REGULAR -> ADMM -> FT).

One search writes many plans (``jcw``: ``<run>/front/member-{i}.json``; ``metapruning``:
``<run>/candidates/rank01.json``); this method trains any of them through the normal pipeline, so no encoding or
width list is ever copied by hand (the JCW seed's ``generate_training_config.py`` step, replaced)::

    method: {name: plan, plan: runs/jcw/front/member-3.json, init: scratch,
             train: {regular: {epochs: 30, lr: 0.1}, admm: {epochs: 5, lr: 0.005}, ft: {epochs: 5, lr: 0.005}}}
    method: {name: plan, plan: runs/jcw/front, pick: {latency_ratio: 0.5}}   # the best member within a budget

``init: scratch`` builds the pruned network from the model spec's own initialisation (JCW trains its members from
scratch); ``init: model`` prunes the run's baseline (trained) weights instead. Then ``train.regular`` trains the
channel-pruned dense net, and, for a plan with weight densities, ADMM and FT make its weights block-sparse
(:func:`~prunekit.train.admm.train_sparse`); a ``null`` recipe skips its phase (with every phase skipped, the
pipeline's ``finetune`` recovers the net as for any other method).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from prunekit.errors import PrunekitError
from prunekit.methods.base import MethodContext, MethodResult, fresh_model, train_plan
from prunekit.search.front import best_within, latency_ratio
from prunekit.space import Plan
from prunekit.train.admm import SparseTrainConfig

__all__ = ["BUDGET_METRICS", "Config", "PlanConfig", "run"]

BUDGET_METRICS = ("macs", "params", "latency_ms")
"""A plan is given, not fitted: a target is only reported against (asked vs achieved)."""


class FrontPick(BaseModel):
    """Which member of a front to train: the one with the lowest proxy loss whose predicted latency is at most
    ``latency_ms``, or whose latency is at most ``latency_ratio`` x the unpruned model's (``front.json``: measured
    where JCW timed its front, else predicted; :func:`prunekit.search.front.best_within`)."""

    model_config = ConfigDict(extra="forbid")
    latency_ms: float | None = Field(None, gt=0)
    latency_ratio: float | None = Field(None, gt=0, le=1)

    @model_validator(mode="after")
    def _one(self) -> FrontPick:
        if (self.latency_ms is None) == (self.latency_ratio is None):
            raise ValueError("give pick.latency_ms or pick.latency_ratio (one of them)")
        return self


class PlanConfig(BaseModel):
    """Options of the ``plan`` method: ``plan`` (a plan JSON, or a JCW run's ``front`` directory with ``pick``),
    ``init`` (``scratch`` | ``model``), ``train`` (:class:`~prunekit.train.admm.SparseTrainConfig`)."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["plan"] = "plan"
    plan: str
    pick: FrontPick | None = None
    init: Literal["scratch", "model"] = "scratch"
    train: SparseTrainConfig = Field(default_factory=SparseTrainConfig)


def pick_member(front_dir: Path, pick: FrontPick) -> Path:
    """The plan file of the front member ``pick`` selects (see :class:`FrontPick`).

    Raises:
        PrunekitError: no ``front.json`` in ``front_dir``, or no member within the latency.
    """
    import json

    index = front_dir / "front.json"
    if not index.is_file():
        raise PrunekitError(
            f"{front_dir} has no front.json: give a jcw run's front/ directory (or a plan file)"
        )
    front = json.loads(index.read_text())
    members, full = front["members"], float(front.get("full_ms") or 0.0)
    if pick.latency_ratio is not None and full <= 0:
        raise PrunekitError(
            f"{index} has no full_ms: pick by latency_ms, or re-run the jcw search that wrote it"
        )
    k = best_within(members, full_ms=full, ratio=pick.latency_ratio, limit_ms=pick.latency_ms)
    if k is None:
        if pick.latency_ms is not None:
            what, fastest = f"{pick.latency_ms:g} ms", f"{min(m['predicted_ms'] for m in members):.4g} ms"
        else:
            what = f"{pick.latency_ratio:g} of the unpruned latency"
            fastest = f"{min(latency_ratio(m, full) for m in members):.2f} of it"
        raise PrunekitError(
            f"no member of {front_dir} is within {what} (the fastest: {fastest}): raise the budget"
        )
    return front_dir / members[k]["file"]


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
    if path.is_dir():
        if cfg.pick is None:
            raise PrunekitError(
                f"{path} is a directory: give method.pick (latency_ms or latency_ratio) to choose a member"
            )
        path = pick_member(path, cfg.pick)
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
    net, facts = train_plan(ctx, base, plan, recipe, tag="plan")
    plan.meta.update({"plan_file": str(path), "init": cfg.init})
    return MethodResult(
        plan=plan,
        model=net,
        history=[],
        trained=bool(phases),
        extra={"plan_file": str(path), "init": cfg.init, **facts},
    )
