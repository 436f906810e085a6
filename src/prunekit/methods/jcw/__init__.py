"""``jcw``: joint channel and weight pruning -- one multi-objective search, a Pareto front of models, ADMM training.

Zhao et al., "Joint Channel and Weight Pruning for Model Acceleration on Mobile Devices" (2021; seed
``emo_search.py``, ``train.py``), for any model a :class:`~prunekit.space.ChannelSpace` covers:

1. **Encoding** (:class:`~prunekit.search.encoding.GeneEncoding`): per channel group a width ratio (grid 0.1 ...
   1.0, channels ``ceil((C // g) * r) * g`` clamped to ``[g, C]``, ``group_size`` g = 4 or ``auto`` = the runtime's
   channel block), per conv a weight density (grid 0.1 ... 1.0; ``wp_uniform``: one shared), bounds per tag (JCW's
   defaults; a gene's lower bound is the max of the bounds that apply -- the strided bound included, which the
   seed's MobileNetV2 code ignores). ``channels: false`` fixes every width at 1 (a weight-only search),
   ``weights: false`` drops the densities (a channel-only search).
2. **Search** (:mod:`prunekit.methods.jcw.search`): a weight-sharing supernet (first-k channels + block-sparse
   masks) trained on a seeded per-class proxy split of the training data; objectives (proxy validation loss after
   BN recalibration, latency predicted by a latency table, :mod:`prunekit.cost.predict`); NSGA-II with the seed's
   operators and its target-latency selection (:meth:`~prunekit.search.nsga2.NSGA2Config.jcw`; under a MACs or
   params budget the target latencies stop at the widest uniform width within it, :func:`target_span`, and
   proposals over it are never evaluated, :func:`_bind_budget_screen`).
   Checkpointed every generation.
3. **Front** (:mod:`prunekit.methods.jcw.front`): ``<out>/front/member-{i}.json`` plans, ``front.json``,
   ``jcw/front.png``.
4. **The deployed member**: the front member with the lowest proxy loss that meets the run's budget
   (:func:`prunekit.search.front.best_within`: a latency ratio on the member's ratio to the unpruned model as
   measured in ONNX Runtime when the front was timed -- ``measure_front``, and the table is of that runtime at
   batch 1 -- else as predicted; an absolute latency on its predicted ms; the pipeline measures the result),
   trained as the seed's
   SparseTrainer does: REGULAR (the channel-pruned dense net from scratch), ADMM toward the member's block-sparse
   densities (:class:`~prunekit.train.admm.ADMMCallback`), FT (masks fixed by block L2, masked finetune). A phase
   whose recipe is ``null`` is skipped (``regular: null`` starts from the supernet's weights).

The latency table is ``latency_lut`` (or the run's ``target.latency_lut``), built with ``prunekit lut build`` for
this model and machine (``--runtime deepsparse`` for a runtime where density buys time); without one, an ONNX
Runtime table (one thread, batch 1, ``lut_points`` per channel axis) is built into ``<out>/jcw/lut.json`` first. On ONNX Runtime density
buys nothing (the table shows it), and the search is expected to learn that.

Config (YAML)::

    target: {latency_ratio: 0.5, latency_lut: r20.lut.json}
    method:
      name: jcw
      group_size: 4
      proxy: {classes: null, train_per_class: 300, val_per_class: 50}
      supernet: {cns: {epochs: 2, lr: 0.1}, wp: {epochs: 3, lr: 0.1}, mode: finetune, finetune_epochs: 0.2}
      search: {population: 16, generations: 10}
      member: {regular: {epochs: 10, lr: 0.1}, admm: {epochs: 3, lr: 0.005}, rho: 0.01, ft: {epochs: 3, lr: 0.005}}
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, model_validator

from prunekit.cost.lut import load_table
from prunekit.cost.predict import LatencyModel
from prunekit.errors import PrunekitError
from prunekit.methods.base import MethodContext, MethodResult, fresh_model, require_budget, train_plan
from prunekit.methods.jcw.front import measure_front, plot_front, save_front, write_front
from prunekit.methods.jcw.search import Proxy, latencies, run_search_phase
from prunekit.search.encoding import (
    JCW_DENSITY_BOUNDS,
    JCW_WIDTH_BOUNDS,
    DensityGenes,
    GeneEncoding,
    WidthGenes,
)
from prunekit.search.fit import fit_uniform
from prunekit.search.front import best_within, latency_ratio, ratio_source, within
from prunekit.search.nsga2 import NSGA2, NSGA2Config
from prunekit.space import Plan
from prunekit.train import TrainConfig, broadcast_object
from prunekit.train.admm import SparseTrainConfig

log = logging.getLogger(__name__)

__all__ = ["BUDGET_METRICS", "Config", "JCWConfig", "proxy_task", "run", "search_space"]

BUDGET_METRICS = ("macs", "params", "latency_ms")
"""The member deployed from the front must meet any of these (latency on the table's prediction)."""

Bounds = dict[str, tuple[float, float]]


class ProxyConfig(BaseModel):
    """The proxy split (seeded): ``classes`` random classes (None = all), per class ``train_per_class`` training and
    ``val_per_class`` validation images from the run's training split; ``seed`` None = the run's seed."""

    model_config = ConfigDict(extra="forbid")
    classes: int | None = Field(None, ge=1)
    train_per_class: int = Field(500, ge=1)
    val_per_class: int = Field(50, ge=1)
    batch_size: int | None = Field(None, ge=1)
    seed: int | None = None


def _seed_supernet_recipe(epochs: float) -> TrainConfig:
    """The seed's supernet optimiser (``OPTIM.CNS`` / ``WP``): SGD momentum 0.9, wd 4e-5 without decay on BN and
    bias, cosine from lr 0.1, no warm-up."""
    return TrainConfig(
        epochs=epochs, lr=0.1, momentum=0.9, weight_decay=4e-5, schedule="cosine", warmup_epochs=0
    )


class SupernetConfig(BaseModel):
    """Supernet training: ``cns`` (channels only) then ``wp`` (masks on) recipes; ``mode`` ``finetune`` (train once,
    then ``finetune_epochs`` of WP training per generation; default) or ``retrain`` (re-initialise and train CNS +
    WP every generation: the seed, about 192M image passes per ImageNet search); ``init`` ``model`` (the run's
    baseline weights) or ``scratch`` (the spec's initialisation, the seed's default)."""

    model_config = ConfigDict(extra="forbid")
    cns: TrainConfig = Field(default_factory=lambda: _seed_supernet_recipe(10))
    wp: TrainConfig = Field(default_factory=lambda: _seed_supernet_recipe(20))
    mode: Literal["finetune", "retrain"] = "finetune"
    finetune_epochs: float = Field(0.5, ge=0.0)
    init: Literal["model", "scratch"] = "model"


class MemberBudgets(BaseModel):
    """``train``: more front members to train in the same run, one per budget (the seed's
    ``generate_training_config`` step, replaced): ``latency_ms`` (predicted ms, batch 1, the table's runtime) or
    ``latency_ratio`` (of the unpruned model's latency: measured where the front was timed, else predicted;
    :mod:`prunekit.search.front`). Per budget the member with the lowest proxy loss within it -- on a front sorted by
    latency, the one nearest below the budget -- is trained with ``member``."""

    model_config = ConfigDict(extra="forbid")
    latency_ms: list[float] | None = None
    latency_ratio: list[float] | None = None

    @model_validator(mode="after")
    def _one(self) -> MemberBudgets:
        given = [v for v in (self.latency_ms, self.latency_ratio) if v is not None]
        if len(given) != 1 or not given[0] or any(x <= 0 for x in given[0]):
            raise ValueError(
                "method.train takes one non-empty list of positive latency_ms or latency_ratio values"
            )
        return self

    @property
    def ratio(self) -> bool:
        """Whether the budgets are ratios of the unpruned model's latency (else ms)."""
        return self.latency_ratio is not None

    def limits_ms(self, full_ms: float) -> list[tuple[float, float]]:
        """``(budget as given, its limit in predicted ms)`` per budget (``full_ms``: the unpruned prediction)."""
        if self.ratio:
            return [(b, b * full_ms) for b in self.latency_ratio or []]
        return [(b, b) for b in self.latency_ms or []]


class JCWConfig(BaseModel):
    """Options of the ``jcw`` method (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["jcw"] = "jcw"
    channels: bool = True
    weights: bool = True
    wp_uniform: bool = False
    group_size: int | Literal["auto"] = 4
    width_bounds: Bounds = Field(default_factory=lambda: dict(JCW_WIDTH_BOUNDS))
    density_bounds: Bounds = Field(default_factory=lambda: dict(JCW_DENSITY_BOUNDS))
    block: tuple[int, int] = (4, 1)
    latency_lut: str | None = None
    lut_points: int = Field(5, ge=2)
    proxy: ProxyConfig = Field(default_factory=ProxyConfig)
    supernet: SupernetConfig = Field(default_factory=SupernetConfig)
    bn_batches: int = Field(10, ge=1)
    search: dict[str, Any] = Field(default_factory=dict)
    member: SparseTrainConfig = Field(default_factory=SparseTrainConfig)
    # left out of the config's hash at their defaults, so runs written before these options existed resume
    train: MemberBudgets | None = Field(None, exclude_if=lambda v: v is None)
    measure_front: bool = Field(True, exclude_if=lambda v: v is True)


Config = JCWConfig


# ---------------------------------------------------------------------------------------------- building blocks
def search_space(ctx: MethodContext, cfg: JCWConfig, unit: int) -> GeneEncoding:
    """The JCW encoding of ``ctx.space`` under ``cfg`` (``unit``: the table's channel block, for ``group_size:
    auto``)."""
    g = unit if cfg.group_size == "auto" else int(cfg.group_size)
    wb = dict(cfg.width_bounds) if cfg.channels else {"all": (1.0, 1.0)}
    widths = WidthGenes.jcw(group_size=g, bounds=wb)
    dens = DensityGenes.jcw(bounds=dict(cfg.density_bounds), wp_uniform=cfg.wp_uniform, block=cfg.block)
    return GeneEncoding.build(ctx.space, widths=widths, densities=dens if cfg.weights else None)


def _latency_model(ctx: MethodContext, cfg: JCWConfig) -> LatencyModel:
    """``method.latency_lut``, else the run's ``target.latency_lut``, else a table built here (ONNX Runtime, one
    thread, batch 1; ``lut_points`` grid points per channel axis, the density grid of the genes; resumable) into
    ``<out>/jcw/lut.json``."""
    if cfg.latency_lut is not None:
        return LatencyModel(load_table(cfg.latency_lut), ctx.space, batch=1)
    run_lm = ctx.budget.latency if ctx.budget is not None else None
    if isinstance(run_lm, LatencyModel):  # the run's target.latency_lut
        return LatencyModel(run_lm.table, ctx.space, batch=1)
    from prunekit.cost.lut import build_table
    from prunekit.cost.predict import measure_overhead
    from prunekit.train import barrier, is_main

    path = Path(ctx.out_dir) / "jcw" / "lut.json"  # an interrupted build resumes; a finished one is reused
    # under torchrun rank 0 times the table, the others wait and read it: one table for all ranks
    if is_main():
        log.info("jcw: latency table of this model on this machine -> %s", path)
        model = ctx.model.eval()
        build_table(
            model,
            ctx.space.input_shape,
            path,
            spec=ctx.spec,
            points=2 if ctx.smoke else cfg.lut_points,
            groups=(1,),
            densities=(1.0, 0.5, 0.2) if cfg.weights else (1.0,),
            rounds=1 if ctx.smoke else 3,
            overhead=measure_overhead(model, "ort", 1, 1 if ctx.smoke else 5),
        )
    barrier()
    return LatencyModel(load_table(path), ctx.space, batch=1)


def proxy_task(ctx: MethodContext, cfg: JCWConfig) -> Proxy:
    """The proxy loaders of ``cfg.proxy`` over ``ctx.data``'s training split, and the fixed BN batches. Data that
    prunekit cannot re-split (the user's own loaders: ``data: custom``, :func:`prunekit.prune`) is its own proxy:
    the train loader trains the supernet, the val loader scores the candidates, the first ``bn_batches`` training
    batches recalibrate BN (``cfg.proxy`` is then unused)."""
    from prunekit.data.splits import proxy_split

    data, p = ctx.data, cfg.proxy
    if not hasattr(data, "make_loader"):
        if getattr(data, "train", None) is None or getattr(data, "val", None) is None:
            raise PrunekitError("jcw trains a supernet and scores candidates: it needs train and val loaders")
        log.info("jcw: the user's train / val loaders are the proxy task (method.proxy unused)")
        bn = [b for b, _ in zip(data.train, range(cfg.bn_batches), strict=False)]
        return Proxy(data.train, data.val, bn, loss_fn=ctx.loss_fn)
    seed = ctx.seed if p.seed is None else p.seed
    labels = data.split_labels("train")
    tr, va = proxy_split(
        labels,
        classes=p.classes,
        train_per_class=p.train_per_class,
        val_per_class=p.val_per_class,
        seed=seed,
    )
    bs = p.batch_size or data.config.batch_size
    rank, world = getattr(data, "rank", 0), getattr(data, "world_size", 1)
    train = data.make_loader(  # under torchrun: this rank's shard (the supernet trains data-parallel)
        "train",
        batch_size=bs,
        shuffle=True,
        augment=True,
        drop_last=len(tr) // world >= bs,  # full batches only, unless a shard holds less than one batch
        indices=tr,
        rank=rank,
        world_size=world,
    )
    val = data.make_loader("train", batch_size=data.config.eval_batch_size, indices=va)
    plain = data.make_loader("train", batch_size=bs, indices=tr)  # fixed, unaugmented: the BN batches
    bn = [b for b, _ in zip(plain, range(cfg.bn_batches), strict=False)]
    return Proxy(train, val, bn, classes=len(np.unique(labels[np.asarray(va, dtype=np.int64)])))


def _smoke(cfg: JCWConfig) -> JCWConfig:
    tiny = TrainConfig(epochs=0.2, lr=0.05)
    return cfg.model_copy(
        update={
            "proxy": cfg.proxy.model_copy(
                update={
                    "train_per_class": min(cfg.proxy.train_per_class, 20),
                    "val_per_class": min(cfg.proxy.val_per_class, 5),
                }
            ),
            "supernet": cfg.supernet.model_copy(update={"cns": tiny, "wp": tiny, "finetune_epochs": 0.1}),
            "bn_batches": 2,
            "search": {**cfg.search, "population": 4, "generations": 1},
            "member": cfg.member.model_copy(
                update={
                    k: (tiny if getattr(cfg.member, k) is not None else None)
                    for k in ("regular", "admm", "ft")
                }
            ),
        }
    )


def _fingerprint(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _fits(budget, plan: Plan, row: dict[str, Any], full_ms: float) -> bool:
    """Whether a member (its plan and front row) meets every constraint: MACs / params exactly; a latency ratio
    on the measured ratio to the unpruned model where the front was timed, else on the predicted one (both from the
    table, so its absolute calibration on this machine cancels); an absolute latency on the predicted ms
    (:func:`prunekit.search.front.within`)."""
    for c in budget.constraints:
        if c.metric != "latency_ms":
            ok = budget.value(c.metric, plan) <= c.limit
        elif c.ratio is not None:
            ok = within(row, full_ms=full_ms, ratio=c.ratio)
        else:
            ok = within(row, full_ms=full_ms, limit_ms=c.limit)
        if not ok:
            return False
    return True


def _bind_budget_screen(searcher: NSGA2, ctx: MethodContext, enc: GeneEncoding) -> list[str]:
    """Screen NSGA-II's proposals with the budget's MACs / params constraints (exact, vectorised over the decoded
    widths: :meth:`~prunekit.cost.budget.Budget.feasible`); the constrained metrics, ``[]`` when there are none.

    The seed knows only latency budgets, which its target latencies cover; a MACs or params budget is a hard
    constraint the latency objective does not see: capping the targets (:func:`target_span`) puts the front near
    it, yet in the arena (ResNet-20 at 25% of the MACs) two of three seeds' fronts still had no member within it
    (the fastest at 26.4% and 27.1%, non-uniform widths costing more MACs per ms). Proposals over the budget are
    never evaluated ("death penalty" constraint handling), so every front member meets it. A smoke run whose
    smallest encoding misses the budget searches unscreened (its pick falls back to the fastest member)."""
    budget = require_budget(ctx, "jcw")
    metrics = [m for m in budget.metrics_constrained if m != "latency_ms"]
    if not metrics:
        return []

    def screen(genes: np.ndarray) -> np.ndarray:
        return budget.feasible(enc.decode_widths(genes), analytic_only=True)

    if ctx.smoke and not screen(enc.bounds.low[None])[0]:
        return []
    searcher.bind_feasible(screen)
    return metrics


def _pick(ctx: MethodContext, plans: list[Plan], rows: list[dict[str, Any]], full_ms: float) -> int:
    """The front member with the lowest proxy loss within the budget (:func:`_fits`)."""
    budget = require_budget(ctx, "jcw")
    ok = [i for i, (p, r) in enumerate(zip(plans, rows, strict=True)) if _fits(budget, p, r, full_ms)]
    if not ok and ctx.smoke:  # a smoke search is too short to reach the budget: exercise the rest anyway
        log.warning("jcw --smoke: no front member meets the budget; training the fastest one")
        return min(range(len(rows)), key=lambda i: rows[i]["predicted_ms"])
    if not ok:
        ratios = [latency_ratio(r, full_ms) for r in rows]
        raise PrunekitError(
            f"jcw: no front member meets the budget ({budget.describe()}); the front spans {min(ratios):.0%}-"
            f"{max(ratios):.0%} of the unpruned model's {ratio_source(rows)} latency: raise the target, lower the "
            "width / density bounds or search longer"
        )
    return min(ok, key=lambda i: rows[i]["proxy_loss"])


def run(ctx: MethodContext, cfg: JCWConfig) -> MethodResult:
    """Search, write the front, train the member that meets the budget (see the module docstring).

    Returns:
        :class:`MethodResult` with the member's plan (densities with ``criterion: l2``, the ADMM / FT masks), the
        trained network (``trained=True``), one history row per generation and ``extra`` ``{"front", "member",
        "search", "figures", "targets"}``.

    Raises:
        PrunekitError: no latency table, a table of another machine, a proxy split the data cannot give, no front
            member within the budget, or a search state of another setup in the run directory.
    """
    if ctx.smoke:
        cfg = _smoke(cfg)
    require_budget(ctx, "jcw")
    if ctx.train is None:
        raise PrunekitError("jcw trains its member: run it through `prunekit run`")
    lm = _latency_model(ctx, cfg)
    enc = search_space(ctx, cfg, int(lm.table.unit))
    nsga_cfg = NSGA2Config.jcw(**cfg.search)
    lat_lo, lat_hi = (float(x) for x in latencies(enc, lm, np.stack([enc.bounds.low, enc.bounds.high])))
    full_ms = float(lm(ctx.space.channels))
    smallest = enc.decode(enc.bounds.low)
    if not _fits(require_budget(ctx, "jcw"), smallest, {"predicted_ms": lat_lo}, full_ms) and not ctx.smoke:
        raise PrunekitError(
            f"jcw: even the smallest model of the search space (every gene at its lower bound: {lat_lo / full_ms:.0%} "
            f"of the predicted latency, {ctx.cost.cost(smallest).macs / ctx.cost.cost().macs:.0%} of the MACs) "
            f"misses the budget ({ctx.budget.describe()}): lower method.width_bounds / density_bounds or raise the target"
        )
    # a smoke table (2 points, 1 round) misplaces the floor; a smoke run's picks fall back to the fastest member
    if not ctx.smoke:
        _check_train_budgets(cfg, lat_lo, full_ms)
    proxy = proxy_task(ctx, cfg)
    span, capped = target_span(ctx, lm, lat_lo, lat_hi)
    searcher = NSGA2(enc.bounds, nsga_cfg, seed=ctx.seed, target_range=span, latency_objective=1)
    screened = _bind_budget_screen(searcher, ctx, enc)
    out = Path(ctx.out_dir)
    supernet = fresh_model(ctx) if cfg.supernet.init == "scratch" else _copy(ctx.model)
    fp = _fingerprint(
        ctx.spec,
        enc.state,
        cfg.model_dump(exclude={"member", "train", "measure_front"}),
        lm.table.machine,
        ctx.seed,
        *([span] if capped else []),  # runs without a cap keep the fingerprint they were written with
        *([{"screen": screened}] if screened else []),  # nor without a screen
    )
    outcome = run_search_phase(
        model=supernet,
        fresh=lambda: fresh_model(ctx),
        space=ctx.space,
        enc=enc,
        lm=lm,
        searcher=searcher,
        proxy=proxy,
        cns=cfg.supernet.cns,
        wp=cfg.supernet.wp,
        mode=cfg.supernet.mode,
        finetune_epochs=cfg.supernet.finetune_epochs,
        seed=ctx.seed,
        device=ctx.device,
        out_dir=out / "jcw",
        fingerprint=fp,
    )
    plans, rows = save_front(
        out / "front", enc, ctx.cost, outcome.genes, outcome.objectives, spec=ctx.spec, full_ms=full_ms
    )
    if cfg.measure_front and _measurable(lm):
        _measure_front(ctx, plans, rows, out / "front", full_ms)
        rows = broadcast_object(rows)  # rank 0 timed them: every rank picks the same members
    figures = {}
    fig = plot_front(outcome.history, rows, out / "jcw" / "front.png")
    if fig is not None:
        figures["front"] = str(fig.relative_to(out))
    k = _pick(ctx, plans, rows, full_ms)
    picks = _train_picks(ctx, cfg, rows, full_ms)  # a budget no member meets fails now, before any training
    plan, net, member_facts = _train_member(ctx, cfg, plans[k], supernet, tag="jcw")
    trained = _train_more(ctx, cfg, plans, rows, picks, supernet, deployed=(k, net, member_facts))
    history = [
        {"step": h["generation"], "best_proxy_loss": h["best_loss"], "evaluated": h["evaluated"]}
        for h in outcome.history
    ]
    return MethodResult(
        plan=plan,
        model=net,
        history=history,
        trained=True,
        extra={
            "front": rows,
            "member": {"index": k, **rows[k], **member_facts},
            "members": trained,
            "search": {
                **outcome.facts,
                "latency_range_ms": [lat_lo, lat_hi],
                "full_ms": full_ms,
                "population": nsga_cfg.population,
            },
            "figures": figures,
        },
    )


def target_span(
    ctx: MethodContext, lm: LatencyModel, lat_lo: float, lat_hi: float
) -> tuple[tuple[float, float], bool]:
    """``((low, high) ms, capped)``: the range JCW's target latencies are sampled from.

    The seed samples them between the predicted latencies of the all-lower- and all-upper-bound encodings
    (``seed-methods.md`` §1.5), in either order here (where density buys no time, a weight-only search's
    all-lower-bound encoding is the slower one). The seed only knows latency budgets; prunekit's may be MACs or
    params alone. Then the high end stops at the predicted latency of the widest uniform width within that budget
    (``capped``), so the targets, and with them the front, sit where the budget's members are instead of above it
    (a MACs target of 25% on ResNet-20 otherwise gets a front at 58-71% of the latency and no member within it)."""
    lo, hi = min(lat_lo, lat_hi), max(lat_lo, lat_hi)
    budget = require_budget(ctx, "jcw")
    metrics = budget.metrics_constrained
    if not metrics or "latency_ms" in metrics:
        return (lo, hi), False
    _, widest = fit_uniform(ctx.space, ctx.cost, budget)  # the widest uniform width within the budget
    cap = float(lm(widest))
    return (lo, max(lo, min(hi, cap))), cap < hi


def _measurable(lm: LatencyModel) -> bool:
    """Whether timing the front in ONNX Runtime (batch 1, one thread: :func:`_measure_front`) measures what the
    table predicts, so the picks may read the measurement."""
    machine = lm.table.machine
    return machine.get("runtime") == "ort" and machine.get("threads") == 1 and lm.batch_size == 1


def _measure_front(
    ctx: MethodContext, plans: list[Plan], rows: list[dict[str, Any]], out: Path, full_ms: float
) -> None:
    """Add the measured ONNX Runtime latency (batch 1, one thread) of every front member to its row and plan file
    (``measured_ms``, ``measured_ratio`` to the unpruned model measured alongside), beside the predicted one."""
    from prunekit.train import is_main

    if not is_main() or not plans:
        return
    log.info("jcw: measuring the %d front members in ONNX Runtime (batch 1, one thread)", len(plans))
    base_ms, ms = measure_front(ctx.model, ctx.space, plans, rounds=1 if ctx.smoke else 3)
    for row, m in zip(rows, ms, strict=True):
        row["measured_ms"], row["measured_ratio"] = m, m / base_ms
    write_front(out, plans, rows, full_ms)


def _train_member(
    ctx: MethodContext, cfg: JCWConfig, member: Plan, supernet: nn.Module, *, tag: str
) -> tuple[Plan, nn.Module, dict]:
    """One front member trained as the seed's SparseTrainer does (:func:`~prunekit.methods.base.train_plan`): its
    plan with the L2 block criterion of the ADMM / FT masks, REGULAR from the spec's initialisation (``regular:
    null`` starts from the supernet's weights); checkpoints under ``tag``."""
    plan = member.model_copy(deep=True)
    for name, lc in plan.layers.items():
        if lc.density is not None:
            plan.layers[name] = lc.model_copy(update={"criterion": "l2"})
    base = fresh_model(ctx) if cfg.member.regular is not None else supernet
    net, facts = train_plan(ctx, base, plan, cfg.member, tag=tag)
    return plan, net, facts


def _check_train_budgets(cfg: JCWConfig, lat_lo: float, full_ms: float) -> None:
    """Refuse, before any search, a ``method.train`` budget below the smallest model of the search space."""
    if cfg.train is None:
        return
    ratio = cfg.train.ratio
    for b, limit in cfg.train.limits_ms(full_ms):
        if limit < lat_lo:
            have = f"{lat_lo / full_ms:.0%} of the unpruned latency" if ratio else f"{lat_lo:.3f} ms"
            raise PrunekitError(
                f"jcw train: budget {b:g} is below the smallest model of the search space (predicted {have}): "
                "raise it, or lower method.width_bounds / density_bounds"
            )


def _budget_pick(rows: list[dict[str, Any]], budget: float, ratio: bool, full_ms: float) -> int | None:
    """The member with the lowest proxy loss within ``budget`` (a ratio of the unpruned latency, measured where
    the front was timed, if ``ratio``; else predicted ms), or None (:func:`prunekit.search.front.best_within`)."""
    if ratio:
        return best_within(rows, full_ms=full_ms, ratio=budget)
    return best_within(rows, full_ms=full_ms, limit_ms=budget)


def _train_picks(
    ctx: MethodContext, cfg: JCWConfig, rows: list[dict[str, Any]], full_ms: float
) -> dict[int, list[str]]:
    """``method.train``'s members: front index -> the budgets it serves (:func:`_budget_pick` per budget); empty
    without ``method.train``. Called right after the search, so a budget no member meets fails before any training.

    Raises:
        PrunekitError: a budget no front member meets (names the fastest member's latency).
    """
    if cfg.train is None:
        return {}
    ratio = cfg.train.ratio
    picks: dict[int, list[str]] = {}
    for b, _ in cfg.train.limits_ms(full_ms):
        i = _budget_pick(rows, b, ratio, full_ms)
        if (
            i is None and ctx.smoke
        ):  # a smoke search is too short to reach every budget: exercise the rest anyway
            log.warning("jcw --smoke: no front member within train budget %g; training the fastest one", b)
            i = min(range(len(rows)), key=lambda j: rows[j]["predicted_ms"])
        if i is None:
            if ratio:
                what = f"{b:g}x the unpruned latency"
                lo = min(latency_ratio(r, full_ms) for r in rows)
                fastest = f"{lo:.0%} of it ({ratio_source(rows)})"
            else:
                what, lo = f"{b:g} ms", min(r["predicted_ms"] for r in rows)
                fastest = f"predicted at {lo:.3f} ms ({lo / full_ms:.0%})"
            raise PrunekitError(
                f"jcw train: no front member within {what}; the fastest member: {fastest}: raise that budget"
            )
        picks.setdefault(i, []).append(f"latency_ratio {b:g}" if ratio else f"latency_ms {b:g}")
    return picks


def _train_more(
    ctx: MethodContext,
    cfg: JCWConfig,
    plans: list[Plan],
    rows: list[dict[str, Any]],
    picks: dict[int, list[str]],
    supernet: nn.Module,
    *,
    deployed: tuple[int, nn.Module, dict],
) -> list[dict[str, Any]]:
    """``method.train``: each member of ``picks`` (:func:`_train_picks`) trained and saved under
    ``<out>/members/member-<i>/`` (``plan.json``, ``model.safetensors``, ``member.json`` with its test / val top-1,
    MACs, params, predicted and measured latency). A member already trained (the deployed one, or one picked by two
    budgets) is not trained again; a finished member directory is reused when the run resumes."""
    from prunekit.io import save_safetensors, write_json
    from prunekit.train import is_main

    out: list[dict[str, Any]] = []
    k0, net0, facts0 = deployed
    for i, why in picks.items():
        d = Path(ctx.out_dir) / "members" / f"member-{i}"
        done = d / "member.json"
        if done.is_file():
            out.append(json.loads(done.read_text()))
            continue
        if i == k0:
            net, facts = net0, facts0
            plan = plans[i]
        else:
            plan, net, facts = _train_member(ctx, cfg, plans[i], supernet, tag=f"jcw_member{i}")
        metrics = {s: ctx.evaluate(net, s) for s in ("val", "test")}
        row = {
            **{k: v for k, v in rows[i].items() if k != "genes"},
            "budgets": why,
            "val_top1": metrics["val"]["top1"],
            "test_top1": metrics["test"]["top1"],
            "dir": str(d.relative_to(ctx.out_dir)),
            "deployed": i == k0,
            **{k: v for k, v in facts.items() if isinstance(v, int | float | str)},
        }
        if is_main():
            d.mkdir(parents=True, exist_ok=True)
            plan.save(d / "plan.json")
            save_safetensors(net.state_dict(), d / "model.safetensors")
            write_json(done, row)
        log.info(
            "jcw: member %d (%s) test top-1 %.2f%%, predicted %.3f ms",
            i,
            ", ".join(why),
            100 * row["test_top1"],
            row["predicted_ms"],
        )
        out.append(row)
    return out


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)
