"""The ``gconv`` method: dense convs become group convs (Zhao & Luk, arXiv 1811.09341; seed ``gumi``).

For every dense conv the method may regroup (``groups == 1``, not a model output, not excluded by name or as a
``first`` layer reading the input), on the weights that channel pruning kept (``channel_plan``: a plan of another
run of the same model; default none):

1. the criterion matrix ``S [F, C]`` (kernel L2 norms, or Taylor ``|W * dL/dW|`` over ``taylor_batches`` training
   batches; :mod:`~prunekit.methods.gconv.criterion`), normalised by its Frobenius norm;
2. per candidate ``G`` (:class:`~prunekit.methods.gconv.groups.GroupRules`), the permutations of ``heuristic``
   (``grps`` default, ``sort``, ``same``) + the Hungarian block matching
   (:func:`~prunekit.methods.gconv.permutation.group_permutation`) and the mass they keep;
3. the group choice: ``groups`` (one G), ``mcpg`` (channels per group), ``group_config`` (a table; the seed's JSON
   reads too) or ``search: true`` (the ``MAX_COST`` local search under the run's budget,
   :mod:`~prunekit.methods.gconv.search`; params / MACs exact, latency predicted from ``target.latency_lut``);
4. the plan: each chosen layer's ``conv_groups`` + ``perm_in`` / ``perm_out``; the applied model has real
   ``nn.Conv2d(groups=G)`` layers (channel orders folded into producers where the graph allows, else a gather).

Recovery: the pipeline finetunes the applied model with the run's recipe. That *is* finetuning with the
block-diagonal mask held (the seed re-applies the mask every forward): a group conv stores exactly the kept
weights, so the masked-out ones stay zero and get no updates. ``recovery: scratch`` re-initialises every weight
first (the seed's ``--train-from-scratch``, Kaiming init) so the finetune recipe trains the grouped net from
scratch.

``extra`` (``report.json``): per-layer rows (G, kept mass fraction, candidates, params before / after), the choice
mode and skipped layers, the search's moves, and the permutation (gather) overhead: ONNX Runtime ms of the
applied model against the same group convs without channel permutations, timed paired at batch 1.
"""

from __future__ import annotations

import fnmatch
import logging
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, model_validator

from prunekit.errors import PrunekitError
from prunekit.methods.base import MethodContext, MethodResult
from prunekit.methods.gconv.criterion import criterion_matrix
from prunekit.methods.gconv.groups import (
    GroupRules,
    mcpg_choice,
    read_group_config,
    table_choice,
    uniform_choice,
)
from prunekit.methods.gconv.permutation import SORT_ITERS, GroupPermutation, group_permutation
from prunekit.methods.gconv.search import SearchOutcome, max_cost_search
from prunekit.nn import GatherConv
from prunekit.search.encoding import layer_tags
from prunekit.space import ChannelSpace, Plan, apply, plan_from_widths
from prunekit.space.channels import TAGS
from prunekit.space.plan import LayerChoice, can_regroup
from prunekit.train.bn import recalibrate_bn

__all__ = ["BUDGET_METRICS", "Config", "GConvConfig", "run"]

log = logging.getLogger(__name__)

BUDGET_METRICS = ("macs", "params", "latency_ms")
"""Budget metrics the group search takes (the other choice modes need no budget)."""


class GConvConfig(BaseModel):
    """Options of the ``gconv`` method (exactly one of ``groups``, ``mcpg``, ``group_config``, ``search``).

    Attributes:
        groups: one group count ``G`` for every regroupable layer (seed ``-g``); layers where it is not legal stay
            dense (the report lists them).
        mcpg: max input channels per group (seed ``--mcpg``): per layer the smallest legal G with ``C / G <= mcpg``.
        group_config: a per-layer table, inline ``{layer: G}`` or a JSON file (``{layer: G}`` or the seed's
            ``{"module.layer": {"G", "F", "C", "id"}}``); unlisted layers stay dense.
        search: the ``MAX_COST`` local search under the run's ``target`` (params, MACs and/or latency).
        search_cost: what a move's kept-mass gain is divided by: ``params`` (default), ``macs`` or ``latency``
            (predicted ms; needs ``target.latency_lut``).
        heuristic: permutation heuristic before the Hungarian matching: ``grps`` (default), ``sort``, ``same``; or
            ``none``: no permutation at all (the diagonal blocks in channel order) -- less kept mass, but no channel
            gathers in the deployed model (ONNX Runtime on CPU pays for every gather it cannot fold away).
        sort_iters: ``N_S`` of GRPS (seed ``--num-sort-iters``, 10).
        criterion: ``l2`` (kernel norms, default) or ``taylor`` (``|W * dL/dW|`` over ``taylor_batches`` batches).
        max_groups, allow_depthwise, min_factor: the seed's limits on G (64, false, 1).
        exclude: layers kept dense: layer tags (``first`` = every conv reading the model input, the seed's
            ``conv1``; ``last``, ``strided``, ``residual``, ``expansion``: :func:`prunekit.search.encoding.layer_tags`)
            or layer-name patterns (fnmatch). Model outputs are never regrouped.
        channel_plan: a ``plan.json`` of another run of the same model and input: GConv runs on the channels that
            plan keeps (composition with channel pruning); G must divide the kept counts.
        recovery: ``finetune`` (the run's recipe on the pruned weights) or ``scratch`` (re-initialised first).
        bn_batches: training batches to recompute the BN statistics on after regrouping (finetune recovery; 0 =
            keep the baseline's statistics).
        measure_overhead: time the permutation (gather) overhead in ONNX Runtime (a few seconds).
    """

    model_config = ConfigDict(extra="forbid")
    name: Literal["gconv"] = "gconv"
    groups: int | None = Field(default=None, ge=2)
    mcpg: int | None = Field(default=None, ge=1)
    group_config: str | dict[str, int] | None = None
    search: bool = False
    search_cost: Literal["params", "macs", "latency"] = "params"
    heuristic: Literal["grps", "sort", "same", "none"] = "grps"
    sort_iters: int = Field(default=SORT_ITERS, ge=1)
    criterion: Literal["l2", "taylor"] = "l2"
    taylor_batches: int = Field(default=8, ge=1)
    max_groups: int = Field(default=64, ge=1)
    allow_depthwise: bool = False
    min_factor: int = Field(default=1, ge=1)
    exclude: list[str] = Field(default_factory=lambda: ["first"])
    channel_plan: str | None = None
    recovery: Literal["finetune", "scratch"] = "finetune"
    bn_batches: int = Field(default=16, ge=0)
    measure_overhead: bool = True

    @model_validator(mode="after")
    def _one_choice(self) -> GConvConfig:
        chosen = [
            k
            for k, v in (
                ("groups", self.groups),
                ("mcpg", self.mcpg),
                ("group_config", self.group_config),
                ("search", self.search or None),
            )
            if v is not None
        ]
        if len(chosen) != 1:
            raise ValueError(
                "gconv needs exactly one group choice: groups (one G), mcpg, group_config or search: true"
                + (f" (got {', '.join(chosen)})" if chosen else "")
            )
        return self


Config = GConvConfig


# ---------------------------------------------------------------------------------------------- layers
def _base_plan(ctx: MethodContext, cfg: GConvConfig) -> Plan:
    """The channel plan GConv starts from: ``channel_plan`` (checked against the space) or the full widths."""
    space = ctx.space
    if cfg.channel_plan is None:
        return plan_from_widths(space, space.channels, spec=ctx.spec)
    plan = Plan.load(cfg.channel_plan)
    if plan.model is not None and ctx.spec is not None and plan.model != ctx.spec:
        raise PrunekitError(
            f"channel_plan {cfg.channel_plan} was made for model {plan.model!r}, this run prunes {ctx.spec!r}"
        )
    if plan.input_shape and list(plan.input_shape)[1:] != list(space.input_shape)[1:]:
        raise PrunekitError(
            f"channel_plan {cfg.channel_plan} was made for input {plan.input_shape[1:]}, this run's input is "
            f"{list(space.input_shape)[1:]}"
        )
    plan.validate_against(space)
    if plan.layers:
        raise PrunekitError(
            f"channel_plan {cfg.channel_plan} already has weight-level choices; give a channel-only plan"
        )
    return plan.model_copy(deep=True)


def regroupable(space: ChannelSpace, exclude: list[str]) -> list[str]:
    """The layers GConv may regroup: dense convs that are not model outputs and not ``exclude``d.

    An ``exclude`` entry that is a layer tag (:func:`prunekit.search.encoding.layer_tags`, the vocabulary of
    :data:`prunekit.space.channels.TAGS`: ``first``, ``last``, ``strided``, ``residual``, ``expansion``, ...)
    excludes every layer carrying it; any other entry is an ``fnmatch`` pattern on layer names.
    """
    tags = layer_tags(space)
    by_tag = {t for t in exclude if t in TAGS}
    patterns = [p for p in exclude if p not in TAGS]
    outputs = set(space.output_layers)
    return [
        n
        for n, s in space.layers.items()
        if can_regroup(s)
        and n not in outputs
        and not (tags.get(n, frozenset()) & by_tag)
        and not any(fnmatch.fnmatchcase(n, p) for p in patterns)
    ]


def _taylor_grads(
    ctx: MethodContext, model: nn.Module, names: list[str], batches: int
) -> dict[str, torch.Tensor]:
    """Summed ``dL/dW`` of ``names`` over ``batches`` training batches (cross-entropy), ``model`` (a throwaway
    copy) in train mode."""
    model.train()
    params = {n: model.get_submodule(n).weight for n in names}
    for p in params.values():
        p.grad = None
    ce = nn.CrossEntropyLoss()
    seen = 0
    for batch in ctx.data.train:
        if ctx.loss_fn is not None:  # the user's objective (prunekit.prune)
            loss = ctx.loss_fn(model, batch)
        else:
            x, y = batch
            loss = ce(model(x.to(ctx.device)), y.to(ctx.device))
        loss.backward()
        seen += 1
        if seen >= batches:
            break
    if seen == 0:
        raise PrunekitError("taylor criterion needs training batches; the run's train split is empty")
    return {n: p.grad.detach().clone() for n, p in params.items()}


def _criteria(
    ctx: MethodContext, cfg: GConvConfig, pruned: nn.Module, names: list[str]
) -> dict[str, np.ndarray]:
    grads = _taylor_grads(ctx, pruned, names, cfg.taylor_batches) if cfg.criterion == "taylor" else {}
    out = {}
    for n in names:
        w = pruned.get_submodule(n).weight.detach().cpu()
        out[n] = criterion_matrix(w, cfg.criterion, grads.get(n))
    return out


# ---------------------------------------------------------------------------------------------- choice
def _choose(
    ctx: MethodContext,
    cfg: GConvConfig,
    base: Plan,
    cands: dict[str, list[int]],
    shapes: dict[str, tuple[int, int]],
    kept: dict[str, dict[int, float]],
) -> tuple[dict[str, int], dict[str, str], list[dict]]:
    if cfg.groups is not None:
        choice, skipped = uniform_choice(cands, cfg.groups)
        return choice, skipped, []
    if cfg.mcpg is not None:
        choice, skipped = mcpg_choice(cands, {n: s[0] for n, s in shapes.items()}, cfg.mcpg)
        return choice, skipped, []
    if cfg.group_config is not None:
        table, expected = read_group_config(cfg.group_config)
        return table_choice(cands, table, shapes=shapes, expected=expected), {}, []
    outcome = _search(ctx, cfg, base, cands, kept)
    return outcome.choice, {}, outcome.moves


def _layer_costs(
    ctx: MethodContext, base: Plan, cands: dict[str, list[int]]
) -> dict[str, dict[str, dict[int, float]]]:
    """Per metric (``macs``, ``params``), per layer and candidate G, the layer's dense count (exact: a layer's
    count depends on its own G only)."""
    out: dict[str, dict[str, dict[int, float]]] = {"macs": {}, "params": {}}
    for g in sorted({g for c in cands.values() for g in c}):
        plan = base.model_copy(deep=True)
        plan.layers = {n: LayerChoice(conv_groups=g) for n, c in cands.items() if g in c and g > 1}
        rows = {r["name"]: r for r in ctx.cost.cost(plan, per_layer=True).layers}
        for n, c in cands.items():
            if g in c:
                out["macs"].setdefault(n, {})[g] = float(rows[n]["macs"])
                out["params"].setdefault(n, {})[g] = float(rows[n]["params"])
    return out


def _measured_groups(cands: dict[str, list[int]], measured: list[int]) -> dict[str, list[int]]:
    """``cands`` limited to the group counts a latency table measured (a latency search cannot predict the
    others); raises when no layer keeps a ``G > 1``."""
    keep = set(measured) | {1}
    out = {n: [g for g in c if g in keep] for n, c in cands.items()}
    dropped = sorted({g for c in cands.values() for g in c} - keep)
    if dropped:
        log.info("gconv search: G %s left out, the latency table measured groups %s", dropped, sorted(keep))
    out = {n: c for n, c in out.items() if len(c) > 1}
    if not out:
        raise PrunekitError(
            f"the latency table measured groups {sorted(keep)}, none legal for a regroupable layer here: rebuild "
            "it with `prunekit lut build --groups 2 4 ...`"
        )
    return out


def _search(
    ctx: MethodContext,
    cfg: GConvConfig,
    base: Plan,
    cands: dict[str, list[int]],
    kept: dict[str, dict[int, float]],
) -> SearchOutcome:
    budget = ctx.budget
    if budget is None:
        raise PrunekitError(
            "gconv search: true needs a budget: set target (params_ratio, macs_ratio, latency_ratio or absolute)"
        )
    latency = budget.latency
    needs_latency = "latency_ms" in budget.metrics_constrained or cfg.search_cost == "latency"
    if needs_latency and not hasattr(latency, "batch"):
        raise PrunekitError(
            "gconv's group search predicts latency from a table: set target.latency_lut (build one with "
            "`prunekit lut build`), or search under params / MACs"
        )
    if needs_latency:
        cands = _measured_groups(cands, latency.table.groups)  # type: ignore[union-attr]
    costs = _layer_costs(ctx, base, cands)
    names = list(cands)
    widths = base.widths(ctx.space)
    base_cost = ctx.cost.cost(base)
    totals = {"macs": float(base_cost.macs), "params": float(base_cost.params)}

    def metric(m: str, groups: dict[str, np.ndarray]) -> np.ndarray:
        if m == "latency_ms":
            n = len(next(iter(groups.values()))) if groups else 1
            return latency.batch(np.repeat(widths[None], n, axis=0), groups=groups)  # type: ignore[union-attr]
        table = costs[m]
        total = np.full(len(next(iter(groups.values()))), totals[m]) if groups else np.array([totals[m]])
        for n, g in groups.items():
            total = total + np.array([table[n][int(x)] for x in g]) - table[n][1]
        return np.rint(total)

    def feasible(groups: dict[str, np.ndarray]) -> np.ndarray:
        ok = None
        for c in budget.constraints:
            v = metric(c.metric, groups) <= c.limit
            ok = v if ok is None else ok & v
        return ok

    if cfg.search_cost == "latency":
        unit = {}
        for n in names:
            unit[n] = {}
            for g in cands[n]:
                one = {n: np.array([g])}
                unit[n][g] = float(metric("latency_ms", one)[0])
    else:
        unit = costs[cfg.search_cost]
    levels = {n: sorted(cands[n], reverse=True) for n in names}
    # no checkpoint: the search is deterministic and takes seconds, while rewriting its evaluation cache after every
    # step took most of a PreResNet-164 search (30 min for 317 steps); a resumed run simply searches again
    outcome = max_cost_search(levels, kept, unit, feasible)
    final = {n: np.array([outcome.choice.get(n, 1)]) for n in names}
    if not feasible(final).all():  # the local search only steps within the budget: this would be a bug
        raise RuntimeError("gconv search returned a group choice over the budget")
    return outcome


# ---------------------------------------------------------------------------------------------- run
def run(ctx: MethodContext, cfg: GConvConfig) -> MethodResult:
    """Regroup the run's dense convs (see the module docstring); ``ctx.model`` is not modified.

    Returns:
        :class:`MethodResult`: the plan (channel plan + ``conv_groups`` / permutations), the applied model (real
        group convs), per-layer ``history`` rows ``{layer, c_in, c_out, groups, candidates, kept_fraction,
        params_dense, params}`` and ``extra`` (choice, skipped layers, search moves, gather overhead).

    Raises:
        PrunekitError: no regroupable layer, an invalid ``channel_plan`` / ``group_config``, a search without a
            budget or whose start is over it, or a Taylor criterion without training data.
    """
    space = ctx.space
    base = _base_plan(ctx, cfg)
    names = regroupable(space, cfg.exclude)
    if not names:
        raise PrunekitError(
            "gconv found no dense conv to regroup (groups == 1, not a model output, not excluded); "
            f"exclude={cfg.exclude}"
        )
    pruned = apply(ctx.model, base, space)
    rules = GroupRules(cfg.max_groups, cfg.allow_depthwise, cfg.min_factor)
    shapes, cands = {}, {}
    for n in names:
        conv = pruned.get_submodule(n)
        shapes[n] = (int(conv.in_channels), int(conv.out_channels))
        cands[n] = rules.candidates(*shapes[n])
    perms = _Permutations(_criteria(ctx, cfg, pruned, names), cfg.heuristic, cfg.sort_iters)
    # the search compares every candidate's kept mass; the other choices only need the chosen G's
    kept = {n: {g: perms.kept_fraction(n, g) for g in cands[n]} for n in names} if cfg.search else {}
    choice, skipped, moves = _choose(ctx, cfg, base, cands, shapes, kept)
    plan = base.model_copy(deep=True)
    plan.meta = {**plan.meta, "method": "gconv"}
    for n, g in choice.items():
        gp = perms.permutation(n, g)
        plan.layers[n] = LayerChoice(conv_groups=g, perm_in=gp.perm_in, perm_out=gp.perm_out)
    fractions = {n: perms.kept_fraction(n, choice.get(n, 1)) for n in names}
    plan.validate_against(space)
    model = apply(ctx.model, plan, space)
    if cfg.recovery == "scratch":
        _reinitialise(model)
    elif cfg.bn_batches and ctx.data is not None and getattr(ctx.data, "train", None) is not None:
        # dropping the off-block kernels shifts every regrouped conv's output: recompute the BN statistics
        recalibrate_bn(model, ctx.data.train, batches=cfg.bn_batches, device=ctx.device)
    rows = _layer_rows(ctx, base, plan, names, shapes, cands, choice, fractions)
    extra = {
        "choice": _choice_mode(cfg),
        "heuristic": cfg.heuristic,
        "criterion": cfg.criterion,
        "recovery": cfg.recovery,
        "regrouped": len(choice),
        "regroupable": len(names),
        "skipped": skipped,
        "mean_kept_fraction": float(np.mean(list(fractions.values()))),
        "moves": moves,
        "channel_plan": cfg.channel_plan,
    }
    if cfg.measure_overhead and choice:
        extra["gather_overhead"] = _gather_overhead(ctx, plan, model)
    log.info(
        "gconv: %d of %d convs regrouped (%s), mean kept mass %.3f",
        len(choice),
        len(names),
        extra["choice"],
        extra["mean_kept_fraction"],
    )
    return MethodResult(plan=plan, model=model, history=rows, extra=extra)


class _Permutations:
    """Each layer's group-conv permutation per G (:func:`group_permutation` of its criterion), computed once on
    first use, and the fraction of the criterion mass it keeps (1 at G = 1)."""

    def __init__(self, criteria: dict[str, np.ndarray], heuristic: str, iters: int) -> None:
        self.criteria, self.heuristic, self.iters = criteria, heuristic, iters
        self._done: dict[tuple[str, int], GroupPermutation] = {}

    def permutation(self, name: str, groups: int) -> GroupPermutation:
        key = (name, groups)
        if key not in self._done:
            self._done[key] = group_permutation(self.criteria[name], groups, self.heuristic, self.iters)
        return self._done[key]

    def kept_fraction(self, name: str, groups: int) -> float:
        if groups == 1:
            return 1.0
        return self.permutation(name, groups).kept / (float(self.criteria[name].sum()) or 1.0)


def _choice_mode(cfg: GConvConfig) -> str:
    if cfg.groups is not None:
        return f"uniform G={cfg.groups}"
    if cfg.mcpg is not None:
        return f"mcpg={cfg.mcpg}"
    if cfg.group_config is not None:
        return "group_config" if not isinstance(cfg.group_config, str) else f"group_config {cfg.group_config}"
    return f"search (cost per {cfg.search_cost})"


def _layer_rows(ctx, base, plan, names, shapes, cands, choice, fractions) -> list[dict]:
    before = {r["name"]: r for r in ctx.cost.cost(base, per_layer=True).layers}
    after = {r["name"]: r for r in ctx.cost.cost(plan, per_layer=True).layers}
    return [
        {
            "layer": n,
            "c_in": shapes[n][0],
            "c_out": shapes[n][1],
            "groups": choice.get(n, 1),
            "candidates": cands[n],
            "kept_fraction": fractions[n],
            "params_dense": int(before[n]["params"]),
            "params": int(after[n]["params"]),
        }
        for n in names
    ]


def _reinitialise(model: nn.Module) -> None:
    """Kaiming re-initialisation of every conv / linear, BN reset (the seed's ``--train-from-scratch``)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d | nn.GroupNorm | nn.LayerNorm):
            m.reset_parameters()
            if hasattr(m, "reset_running_stats"):
                m.reset_running_stats()


def _gather_overhead(ctx: MethodContext, plan: Plan, model: nn.Module) -> dict:
    """ONNX Runtime ms (batch 1, paired rounds) of the applied model and of the same group convs without channel
    permutations: what the gathers that could not be folded cost."""
    from prunekit.cost.latency import interleaved_ort_latency

    gathers = sum(1 for m in model.modules() if isinstance(m, GatherConv))
    if gathers == 0:
        return {"gathers": 0, "ms": None, "ms_without_perms": None, "overhead": 0.0}
    plain = plan.model_copy(deep=True)
    for lc in plain.layers.values():
        lc.perm_in = lc.perm_out = None
    bare = apply(ctx.model, plain, ctx.space)
    shape = ctx.space.input_shape
    res = interleaved_ort_latency([(model, shape), (bare, shape)], batch_sizes=(1,), rounds=5)
    ratios = [a / b for a, b in zip(res[0][1], res[1][1], strict=True)]
    ms = float(np.median(res[0][1]))
    return {
        "gathers": gathers,
        "ms": ms,
        "ms_without_perms": float(np.median(res[1][1])),
        "overhead": float(np.median(ratios)) - 1.0,
    }
