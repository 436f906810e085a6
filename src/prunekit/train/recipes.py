"""Training recipes: a validated :class:`TrainConfig`, optimizer with weight-decay groups, LR schedules, loss.

Every prunekit method (pre-training, fine-tuning after pruning, sparse training) trains through the same
config, so a recipe is fully described by one small YAML/JSON block::

    epochs: 160            # fractional allowed: 0.2 runs 20% of one epoch's batches
    optimizer: sgd
    lr: 0.1
    schedule: cosine
    warmup_epochs: 1

Schedules are *per iteration* (``LambdaLR`` stepped after every optimizer step), so warm-up and cosine decay
are smooth even for short runs; epoch-based schedules (step, multistep, epoch-wise exponential) change the LR
exactly at epoch boundaries.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from prunekit.errors import PrunekitError, validation_message

__all__ = [
    "SMOKE_DATA",
    "SMOKE_EPOCHS",
    "smoke_recipe",
    "TrainConfig",
    "build_criterion",
    "build_optimizer",
    "build_scheduler",
    "lr_factor_fn",
    "param_groups",
    "parse_train_config",
    "total_steps",
]

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)
if hasattr(nn, "RMSNorm"):
    _NORM_TYPES = (*_NORM_TYPES, nn.RMSNorm)


class TrainConfig(BaseModel):
    """One training recipe. All fields are validated; unknown keys are rejected (typos fail loudly).

    Units: ``epochs``, ``warmup_epochs``, ``step_size`` and ``milestones`` are in epochs (floats allowed, e.g.
    ``epochs: 0.2`` = 20% of the batches of one epoch); ``lr`` is the peak learning rate (after warm-up);
    ``exp_decay`` is the LR factor per epoch; ``grad_clip`` is a max global L2 gradient norm.

    Raises:
        pydantic.ValidationError: on invalid values (use :func:`parse_train_config` to get a one-line
            :class:`~prunekit.errors.PrunekitError` instead).
    """

    model_config = ConfigDict(extra="forbid")

    epochs: float = Field(gt=0, description="number of epochs; fractional = that fraction of the batches")
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0, description="peak learning rate (after warm-up)")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (ignored by adam/adamw: see betas)")
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(5e-4, ge=0)
    no_wd_bn_bias: bool = True
    no_wd_depthwise: bool = False
    schedule: Literal["cosine", "step", "multistep", "linear", "exponential", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    step_size: float | None = Field(
        None, gt=0, description="schedule=step: decay by gamma every step_size epochs"
    )
    milestones: list[float] = Field(
        default_factory=list, description="schedule=multistep: epochs to decay at"
    )
    gamma: float = Field(0.1, gt=0, le=1, description="step/multistep decay factor")
    exp_decay: float = Field(0.96, gt=0, le=1, description="schedule=exponential: LR factor per epoch")
    exp_smooth: bool = Field(False, description="exponential: decay every iteration instead of per epoch")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    grad_clip: float | None = Field(None, gt=0, description="max global grad L2 norm; None = no clipping")
    seed: int = Field(0, ge=0)
    eval_every: int = Field(1, ge=1, description="evaluate every N epochs (and always after the last one)")
    log_every: int = Field(50, ge=1, description="write a step record to the JSONL log every N steps")
    # Options added after run directories existed are left out of the config dump at their defaults, so the config
    # hash of every existing run (state.json) is unchanged and it still resumes.
    amp: Literal["none", "bf16", "fp16"] = Field(
        "none",
        description="mixed precision: forward and loss under torch.autocast in bfloat16 (CPU or CUDA) or float16 "
        "(CUDA only, with loss scaling); weights, optimizer state and evaluation stay float32",
        exclude_if=lambda v: v == "none",
    )
    channels_last: bool = Field(
        False,
        description="train in the channels_last memory format (faster convolutions on CUDA tensor cores)",
        exclude_if=lambda v: v is False,
    )

    @field_validator("betas")
    @classmethod
    def _check_betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"betas must both be in [0, 1), got {list(v)}")
        return v

    @field_validator("milestones")
    @classmethod
    def _check_milestones(cls, v: list[float]) -> list[float]:
        if any(m <= 0 for m in v):
            raise ValueError(f"milestones must be positive epoch numbers, got {v}")
        if any(b <= a for a, b in zip(v, v[1:], strict=False)):
            raise ValueError(f"milestones must be strictly increasing, got {v}")
        return v

    @model_validator(mode="after")
    def _check_combination(self) -> TrainConfig:
        if self.warmup_epochs > self.epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) must not exceed epochs ({self.epochs}); "
                "lower warmup_epochs or raise epochs"
            )
        if self.schedule == "step" and self.step_size is None:
            raise ValueError("schedule 'step' needs step_size (epochs between LR decays), e.g. step_size: 30")
        if self.schedule == "multistep" and not self.milestones:
            raise ValueError(
                "schedule 'multistep' needs milestones (epochs to decay at), e.g. milestones: [30, 60]"
            )
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0):
            raise ValueError("nesterov needs optimizer 'sgd' with momentum > 0")
        return self


def parse_train_config(data: TrainConfig | Mapping[str, Any]) -> TrainConfig:
    """Validate a mapping (e.g. parsed YAML) into a :class:`TrainConfig`.

    Raises:
        PrunekitError: one line naming every invalid field (:func:`prunekit.errors.validation_message`), e.g.
            ``invalid train config: invalid value for 'lr': Input should be greater than 0 (got -1)``.
    """
    if isinstance(data, TrainConfig):
        return data
    if not isinstance(data, Mapping):
        raise PrunekitError(f"train config must be a mapping of options, got {type(data).__name__}")
    try:
        return TrainConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise PrunekitError(validation_message(exc, what="train config", every=True)) from None


# ----------------------------------------------------------------------------------------------- optimizer


SMOKE_DATA = {"subset_train": 1500, "subset_val": 300, "subset_test": 500}
"""``--smoke``: caps of the stratified train / val / test subsets (samples)."""

SMOKE_EPOCHS = 1.0
"""``--smoke``: at most this many epochs in any training phase (methods with many phases may ask for less)."""


def smoke_recipe(tc: TrainConfig, max_epochs: float = SMOKE_EPOCHS) -> TrainConfig:
    """The ``--smoke`` version of a recipe, the one shrinking rule every phase uses: at most ``max_epochs`` epochs,
    warm-up at most half of them, step milestones past the end dropped (a ``multistep`` schedule left without any
    becomes ``constant``, so the shrunk recipe still validates when a run's config is read back). Returns a copy;
    ``tc`` is unchanged."""
    e = min(tc.epochs, max_epochs)
    milestones = [m for m in tc.milestones if m < e]
    update: dict = {"epochs": e, "warmup_epochs": min(tc.warmup_epochs, e / 2), "milestones": milestones}
    if tc.schedule == "multistep" and not milestones:
        update["schedule"] = "constant"
    return TrainConfig.model_validate({**tc.model_dump(), **update})


def _is_depthwise(m: nn.Module) -> bool:
    return (
        isinstance(m, nn.modules.conv._ConvNd)
        and m.groups > 1
        and m.groups == m.in_channels
        and m.out_channels % m.in_channels == 0
    )


def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, _NORM_TYPES) or "norm" in type(m).__name__.lower()


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Split the trainable parameters of ``model`` into weight-decay groups.

    ``no_decay`` holds (when ``cfg.no_wd_bn_bias``) the parameters of normalisation layers (BatchNorm,
    GroupNorm, LayerNorm, InstanceNorm, any module whose class name contains "Norm") and every parameter
    named ``bias``; plus (when ``cfg.no_wd_depthwise``) depthwise conv weights. Everything else is in
    ``decay``. Shared parameters appear once; parameters with ``requires_grad=False`` are skipped; empty
    groups are dropped.

    Returns:
        list of ``{"name": "decay"|"no_decay", "params": [...], "weight_decay": float}``, deterministic order.
    """
    no_decay_ids: set[int] = set()
    for m in model.modules():
        direct = list(m.named_parameters(recurse=False))
        if cfg.no_wd_bn_bias:
            if _is_norm(m):
                no_decay_ids.update(id(p) for _, p in direct)
            no_decay_ids.update(id(p) for n, p in direct if n == "bias")
        if cfg.no_wd_depthwise and _is_depthwise(m):
            no_decay_ids.update(id(p) for n, p in direct if n == "weight")
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():  # deduplicated, deterministic order
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if id(p) in no_decay_ids else decay).append(p)
    groups = [
        {"name": "decay", "params": decay, "weight_decay": cfg.weight_decay},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(
    model: nn.Module, cfg: TrainConfig, params: Iterable[dict[str, Any]] | None = None
) -> Optimizer:
    """Build the optimizer named by ``cfg.optimizer`` (SGD / Adam / AdamW) over ``model``'s parameters.

    Args:
        model: the network; its trainable parameters are grouped by :func:`param_groups`.
        cfg: recipe (lr, momentum, nesterov, betas, weight_decay, no_wd_* flags).
        params: optional custom param groups (torch format) replacing :func:`param_groups`, for methods that
            need e.g. a separate LR for gate parameters.

    Raises:
        PrunekitError: the model has no trainable parameters.
    """
    groups = list(params) if params is not None else param_groups(model, cfg)
    if not any(len(list(g["params"])) for g in groups):
        raise PrunekitError(
            "model has no trainable parameters (all have requires_grad=False); nothing to train"
        )
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
        )
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


# ----------------------------------------------------------------------------------------------- schedule


def total_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Number of optimizer steps of a run: ``round(cfg.epochs * steps_per_epoch)``, at least 1."""
    return max(1, round(cfg.epochs * steps_per_epoch))


def lr_factor_fn(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Return ``f(step) -> float``: the LR multiplier used for optimizer step ``step`` (0-based).

    * warm-up: ``f = (step + 1) / W`` for the first ``W = round(warmup_epochs * steps_per_epoch)`` steps,
      multiplied with the main schedule;
    * ``cosine`` / ``linear``: decay from 1 to 0 over the steps after warm-up (``f(total_steps) == 0``);
    * ``step`` / ``multistep`` / ``exponential``: driven by the absolute epoch ``step / steps_per_epoch``
      (milestones count from the start of training, warm-up included): ``gamma ** (#boundaries passed)``,
      ``exp_decay ** floor(epoch)`` (or ``exp_decay ** epoch`` with ``exp_smooth``);
    * ``constant``: 1.

    Raises:
        PrunekitError: ``steps_per_epoch < 1``.
    """
    if steps_per_epoch < 1:
        raise PrunekitError(
            f"steps_per_epoch must be >= 1, got {steps_per_epoch} (is the train loader empty?)"
        )
    spe = steps_per_epoch
    total = total_steps(cfg, spe)
    warm = min(round(cfg.warmup_epochs * spe), total)
    span = max(1, total - warm)
    schedule = cfg.schedule
    step_every = max(1, round(cfg.step_size * spe)) if cfg.step_size is not None else 0
    bounds = [round(m * spe) for m in cfg.milestones]
    gamma, exp_decay, smooth = cfg.gamma, cfg.exp_decay, cfg.exp_smooth

    def factor(step: int) -> float:
        w = (step + 1) / warm if step < warm else 1.0
        if schedule == "cosine":
            p = min(1.0, max(0.0, (step - warm) / span))
            main = 0.5 * (1.0 + math.cos(math.pi * p))
        elif schedule == "linear":
            main = 1.0 - min(1.0, max(0.0, (step - warm) / span))
        elif schedule == "step":
            main = gamma ** (step // step_every)
        elif schedule == "multistep":
            main = gamma ** sum(step >= b for b in bounds)
        elif schedule == "exponential":
            main = exp_decay ** (step / spe if smooth else step // spe)
        else:
            main = 1.0
        return w * main

    return factor


def build_scheduler(optimizer: Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> LambdaLR:
    """Per-iteration LR schedule (``LambdaLR``; call ``.step()`` after every optimizer step).

    The LR of every param group is ``group_initial_lr * f(step)`` with ``f`` from :func:`lr_factor_fn`.
    The scheduler's ``state_dict()`` holds only plain numbers (loadable with ``weights_only=True``).

    Raises:
        PrunekitError: ``steps_per_epoch < 1``.
    """
    fn = lr_factor_fn(cfg, steps_per_epoch)

    def lr_lambda(step: int) -> float:  # a plain function: LambdaLR.state_dict() stores None for it
        return fn(step)

    return LambdaLR(optimizer, lr_lambda)


def build_criterion(cfg: TrainConfig) -> nn.Module:
    """Training loss: cross-entropy with ``cfg.label_smoothing``.

    Input logits ``(N, C)``, targets ``(N,)`` class indices (or ``(N, C)`` probabilities); returns the mean
    loss in nats. With smoothing ``eps`` the loss equals ``(1 - eps) * CE + eps * mean_c(-log p_c)``.
    """
    return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
