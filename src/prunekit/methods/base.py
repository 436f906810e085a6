"""What every pruning method receives and returns.

A method is a module in :mod:`prunekit.methods` exposing a pydantic config class (with a ``name`` literal used as the
discriminator in run configs) and ``run(ctx: MethodContext, cfg) -> MethodResult``. The pipeline
(:mod:`prunekit.pipeline`) builds the context, calls the method, then finetunes (unless the method says its model is
already trained), evaluates, exports and reports. Methods never touch ``nn.Module`` internals directly: they choose a
:class:`~prunekit.space.Plan` in the :class:`~prunekit.space.ChannelSpace` and realise it with ``apply``/``mask``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch.nn as nn
from pydantic import AfterValidator

from prunekit.cost.budget import Budget
from prunekit.cost.macs import CostModel
from prunekit.errors import PrunekitError
from prunekit.space import ChannelSpace, Plan


@dataclass
class MethodContext:
    """Inputs of a method run.

    Attributes:
        model: the baseline network (trained unless the method trains from scratch); methods must not modify it.
        spec: canonical model spec string (saved in the plan so the run rebuilds without pickles).
        space: its channel space at the run's input shape. cost: the analytic :class:`CostModel` over ``space``.
        target_macs: the MACs limit of the pruned model (conv + linear MACs per sample) when the budget has one;
            None otherwise. budget: the run's :class:`~prunekit.cost.budget.Budget` (MACs, params, latency; None when
            the config has no ``target``). Methods call :func:`require_budget` (any constraint) or
            :func:`require_target` (methods that prune to MACs only).
        data: the :class:`prunekit.data.DataBundle` (train / val / test loaders).
        device: torch device string. out_dir: the run directory (methods may write state files here, e.g. for resume).
        finetune: ``finetune(model, epochs, *, callbacks=(), tag) -> FitResult``: the run's recovery recipe, with
            checkpoint/resume under ``out_dir`` keyed by ``tag`` (used by iterative methods between steps).
        train: ``train(model, train_config, *, tag, callbacks=(), select="best", loss_fn=None) -> FitResult``:
            :func:`prunekit.train.fit` with any recipe on the run's data (train split; val for selection), with
            checkpoint/resume under ``out_dir/ckpt/<tag>.ckpt`` and the run's log. A killed run resumes it.
        baseline_train: the run's baseline recipe (``baseline.train``), e.g. the reference for Scratch-B budgets.
        evaluate: ``evaluate(model, split) -> {"top1", "top5", "loss", "n"}`` with ``split`` in ``val`` / ``test``.
        seed: the run's seed. smoke: True in ``--smoke`` runs (methods may shrink their own budgets).
        loss_fn, eval_fn: the user's objective (:func:`prunekit.prune`): ``loss_fn(model, batch) -> loss`` and
            ``eval_fn(model, loader) -> score`` (higher is better), or None for cross-entropy / top-1 on ``(x, y)``.
            ``train`` / ``finetune`` / ``evaluate`` already use them; a method with a proxy of its own (JCW's
            supernet and proxy loss, MetaPruning's fitness, GConv's Taylor criterion) reads them here.
    """

    model: nn.Module
    spec: str
    space: ChannelSpace
    cost: CostModel
    target_macs: float | None
    data: Any
    device: str
    out_dir: Path
    finetune: Callable[..., Any]
    evaluate: Callable[[nn.Module, str], dict]
    train: Callable[..., Any] | None = None
    baseline_train: Any = None
    seed: int = 0
    smoke: bool = False
    budget: Budget | None = None
    loss_fn: Callable[..., Any] | None = None
    eval_fn: Callable[..., Any] | None = None


@dataclass
class MethodResult:
    """Outputs of a method run.

    Attributes:
        plan: the chosen plan (over ``ctx.space``). model: the pruned, physically smaller network.
        history: per-step rows for the report (e.g. ``{"step", "macs", "val_top1"}``).
        trained: True when ``model`` is already recovered/trained (the pipeline then skips its finetune phase).
        extra: method-specific facts for ``report.json`` (JSON-serialisable).
    """

    plan: Plan
    model: nn.Module
    history: list[dict] = field(default_factory=list)
    trained: bool = False
    extra: dict = field(default_factory=dict)


def require_budget(ctx: MethodContext, method: str) -> Budget:
    """The run's budget (``ctx.budget``, else a MACs budget from ``ctx.target_macs``), or a PrunekitError telling
    the user to set ``target`` for ``method``."""
    if ctx.budget is not None:
        return ctx.budget
    if ctx.target_macs is None:
        raise PrunekitError(
            f"method {method} prunes to a budget: set target (macs_ratio, params_ratio, latency_ratio, or absolute)"
        )
    return Budget.of_macs(ctx.cost, float(ctx.target_macs))


def require_target(ctx: MethodContext, method: str) -> float:
    """The MACs limit of a method that prunes to MACs only, or a PrunekitError: no ``target``, or a target with
    constraints other than MACs (the message says which ones the method supports)."""
    if ctx.budget is not None and ctx.budget.metrics_constrained != ["macs"]:
        raise PrunekitError(
            f"method {method} prunes to a MACs budget only: use target.macs_ratio or target.macs "
            f"(got {', '.join(ctx.budget.metrics_constrained)}); uniform and magnitude take params and latency too"
        )
    if ctx.target_macs is None:
        raise PrunekitError(f"method {method} prunes to a MACs budget: set target.macs_ratio or target.macs")
    return float(ctx.target_macs)


def require_train(ctx: MethodContext, method: str) -> Callable[..., Any]:
    """``ctx.train``, or a PrunekitError: ``method`` trains inside itself and must run through ``prunekit run``."""
    if ctx.train is None:
        raise PrunekitError(
            f"method {method} trains inside its phases and needs MethodContext.train; use `prunekit run`"
        )
    return ctx.train


def fresh_model(ctx: MethodContext) -> nn.Module:
    """A freshly initialised network of the run's architecture: the model spec's own initialisation, seeded with
    the run's seed (as the pipeline builds its model), or a copy of ``ctx.model`` with every layer's
    ``reset_parameters()`` when the spec cannot be built. For methods that train a pruned net from scratch."""
    import copy

    import torch

    from prunekit.models import create_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)
        try:
            return create_model(ctx.spec)
        except PrunekitError:
            model = copy.deepcopy(ctx.model)
            for m in model.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
            return model


def train_plan(
    ctx: MethodContext, base: nn.Module, plan: Plan, recipe: Any, *, tag: str
) -> tuple[nn.Module, dict]:
    """JCW's SparseTrainer on ``plan`` (Zhao et al. 2021, seed ``lib/Trainer``): the dense, channel-pruned network of
    ``base`` (``without_densities``), trained with ``recipe.regular`` when given (``ctx.train``, tag
    ``{tag}_regular``, best on val), then ADMM and masked FT toward the plan's densities
    (:func:`prunekit.train.admm.train_sparse`; the masks are applied even when both phases are ``null``).

    Returns:
        ``(network, facts)`` (facts of :func:`~prunekit.train.admm.train_sparse`).
    """
    from prunekit.space import apply, without_densities
    from prunekit.train.admm import admm_targets, train_sparse

    net = apply(base, without_densities(plan), ctx.space)
    if recipe.regular is not None:
        ctx.train(net, recipe.regular, tag=f"{tag}_regular", select="best")  # type: ignore[misc]
    return net, train_sparse(net, admm_targets(plan), ctx.train, recipe, tag=tag)  # type: ignore[arg-type]


def _round_to(value: int | str) -> int | str:
    if value not in ("auto", "lut") and int(value) < 1:
        raise ValueError("round_to must be >= 1 or 'auto'")
    return value


RoundTo = Annotated[int | Literal["auto"], AfterValidator(_round_to)]
"""Config type of a channel-count multiple: an int >= 1, or ``"auto"`` = the multiple ONNX Runtime's CPU kernels
run without padding waste (:func:`prunekit.cost.latency.channel_multiple`: 16 on AVX-512, else 8). ``"auto"`` stays
``"auto"`` in the config (so the same YAML hashes, and a copied run resumes, on any machine); methods resolve it
with :func:`prunekit.cost.latency.resolve_round_to` when they run, and the report records the resolved value."""

TableRoundTo = Annotated[int | Literal["auto", "lut"], AfterValidator(_round_to)]
""":data:`RoundTo` plus ``"lut"``, for the methods that fit widths to a budget directly (``uniform``,
``magnitude``): the widths are chosen unrounded and then :func:`prunekit.search.snap.snap_to_table` lets the run's
latency table (``target.latency_lut``) decide, per group, whether rounding up to the channel block is free."""


def _known_importance(name: str) -> str:
    from prunekit.importance import CRITERIA

    if name not in CRITERIA:
        raise ValueError(f"unknown importance {name!r}: choose one of {', '.join(CRITERIA)}")
    return name


def _known_tags(tags: list[str]) -> list[str]:
    from prunekit.space.channels import TAGS

    bad = [t for t in tags if t not in TAGS]
    if bad:
        raise ValueError(f"unknown group tag(s) {', '.join(map(repr, bad))}: choose from {', '.join(TAGS)}")
    return tags


ImportanceName = Annotated[str, AfterValidator(_known_importance)]
"""Config type of a channel-importance criterion name (a key of :data:`prunekit.importance.CRITERIA`)."""

TagList = Annotated[list[str], AfterValidator(_known_tags)]
"""Config type of a list of channel-group tags (:data:`prunekit.space.channels.TAGS`), e.g. groups to protect."""
