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

from prunekit.cost.macs import CostModel
from prunekit.space import ChannelSpace, Plan


@dataclass
class MethodContext:
    """Inputs of a method run.

    Attributes:
        model: the baseline network (trained unless the method trains from scratch); methods must not modify it.
        spec: canonical model spec string (saved in the plan so the run rebuilds without pickles).
        space: its channel space at the run's input shape. cost: the analytic :class:`CostModel` over ``space``.
        target_macs: the MACs budget of the pruned model (conv + linear MACs per sample); None when the config has
            no ``target`` (methods that need one call :func:`require_target`).
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


def require_target(ctx: MethodContext, method: str) -> float:
    """``ctx.target_macs``, or a PrunekitError telling the user to set ``target`` for ``method``."""
    if ctx.target_macs is None:
        from prunekit.errors import PrunekitError

        raise PrunekitError(f"method {method} prunes to a MACs budget: set target.macs_ratio or target.macs")
    return float(ctx.target_macs)


def require_train(ctx: MethodContext, method: str) -> Callable[..., Any]:
    """``ctx.train``, or a PrunekitError: ``method`` trains inside itself and must run through ``prunekit run``."""
    if ctx.train is None:
        from prunekit.errors import PrunekitError

        raise PrunekitError(
            f"method {method} trains inside its phases and needs MethodContext.train; use `prunekit run`"
        )
    return ctx.train


def _round_to(value: int | str) -> int:
    from prunekit.cost.latency import resolve_round_to

    value = resolve_round_to(value)
    if value < 1:
        raise ValueError("round_to must be >= 1 or 'auto'")
    return value


RoundTo = Annotated[int | Literal["auto"], AfterValidator(_round_to)]
"""Config type of a channel-count multiple: an int >= 1, or ``"auto"`` = the multiple ONNX Runtime's CPU kernels
run without padding waste here (:func:`prunekit.cost.latency.channel_multiple`: 16 on AVX-512, else 8)."""


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
