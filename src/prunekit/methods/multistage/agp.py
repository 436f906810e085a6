"""Gradual pruning during training: :class:`AGPCallback` re-prunes along the cubic AGP ramp and keeps masks.

Zhu & Gupta, "To prune, or not to prune" (ICLR-W 2018, §3) prune gradually while training: every ``prune_every``
optimiser steps the pruning ratio follows the cubic ramp :func:`~prunekit.methods.multistage.schedules.agp_ratio` from
``r_begin`` to ``r_end`` over the first ``ramp_epochs`` epochs; the rest of the run is masked finetuning. Tu et al.
("Pruning Depthwise Separable Convolutions for MobileNet Compression", IJCNN 2020, §III-C) use the same ramp inside
each stage of multistage pruning, on channel groups instead of single weights (the seed's ``SparsePruner`` with
``prune_intv`` = 4 epochs and ``prune_freq`` = 2000 iterations).

What the callback guarantees (on ``state.model``, the bare network):

* Pruned channels never come back: at every prune event the callback asks ``prune_fn(model, ratio, alive)`` for a
  :class:`~prunekit.space.Plan` over the *original* channel space and checks that it keeps only channels that are
  still alive (``RuntimeError`` otherwise). The plan holds every channel pruned so far, earlier stages' included.
* Masks persist (as :class:`~prunekit.train.masking.MaskCallback`): pruned weights, biases, BN gamma/beta get zero
  gradients and are re-zeroed after every optimiser step, BN running mean/var of pruned channels are held at 0/1.
  At a prune event the optimiser's per-parameter state (SGD momentum, Adam moments) is zeroed at the newly pruned
  positions too (:func:`mask_optimizer_state_`), so neither momentum nor weight decay moves them.
* Best-checkpoint selection waits for the ramp: with ``select_after_ramp`` (default) an epoch that ends before the
  ramp reached ``r_end`` has its ``val_top1`` moved to ``ramp_val_top1`` (and ``val_top1`` set to None), so
  ``fit(select="best")`` only considers fully pruned epochs (the seed only saves checkpoints after epoch
  ``prune_intv``). Every epoch's metrics get ``prune_ratio`` (the ratio of the last prune event).
* Exact resume: :meth:`state_dict` holds the alive channels per group (bool tensors), the current ratio, the number
  of prune events and whether the ramp is done; the masks are rebuilt from them, so a run killed mid-stage and
  resumed from its checkpoint continues bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn

from prunekit.methods.multistage.schedules import agp_ratio, prune_steps
from prunekit.space import ChannelSpace, GroupChoice, MaskSet, Plan, build_masks
from prunekit.train.loop import TrainState
from prunekit.train.masking import MaskCallback

__all__ = ["AGPCallback", "PruneFn", "alive_channels", "mask_optimizer_state_", "plan_from_alive"]

PruneFn = Callable[[nn.Module, float, Mapping[str, torch.Tensor]], Plan]
"""``prune_fn(model, ratio, alive) -> Plan``: the plan at pruning ratio ``ratio`` (fraction of each group's original
channels removed) over the original channel space; ``alive`` is ``{group name: bool Tensor[C]}`` of the channels
still present, which the plan must not revive."""


def alive_channels(space: ChannelSpace, plan: Plan) -> dict[str, torch.Tensor]:
    """``{group name: bool Tensor[C]}``: True for the channels ``plan`` keeps (every group of ``space``)."""
    alive = {}
    for g in space.groups:
        a = torch.ones(g.channels, dtype=torch.bool)
        choice = plan.groups.get(g.name)
        if choice is not None:
            a[:] = False
            a[torch.tensor(choice.keep, dtype=torch.long)] = True
        alive[g.name] = a
    return alive


def plan_from_alive(space: ChannelSpace, alive: Mapping[str, torch.Tensor], base: Plan | None = None) -> Plan:
    """The plan keeping exactly the ``alive`` channels (groups absent from ``alive`` or fully alive are not pruned);
    ``model``, ``input_shape`` and ``meta`` are copied from ``base`` when given."""
    plan = (
        Plan(model=base.model, input_shape=list(base.input_shape), meta=dict(base.meta))
        if base is not None
        else Plan(input_shape=list(space.input_shape))
    )
    for g in space.groups:
        a = alive.get(g.name)
        if a is None or bool(torch.as_tensor(a).all()):
            continue
        keep = torch.nonzero(torch.as_tensor(a, dtype=torch.bool)).flatten().tolist()
        plan.groups[g.name] = GroupChoice(channels=g.channels, keep=keep)
    return plan


@torch.no_grad()
def mask_optimizer_state_(optimizer: torch.optim.Optimizer, model: nn.Module, masks: MaskSet) -> int:
    """Zero the optimiser's per-parameter state at masked positions, in place.

    Every tensor in ``optimizer.state[p]`` with the shape of a masked parameter ``p`` (SGD ``momentum_buffer``,
    Adam/AdamW ``exp_avg``, ``exp_avg_sq``) is multiplied by the parameter's mask, so a newly pruned weight carries
    no momentum. Scalars (Adam's ``step``) are left alone.

    Returns:
        the number of state tensors masked.
    """
    by_id = {id(p): name for name, p in model.named_parameters()}
    n = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = by_id.get(id(p))
            if name is None or name not in masks.params:
                continue
            m = masks.params[name]
            for v in optimizer.state.get(p, {}).values():
                if isinstance(v, torch.Tensor) and v.shape == p.shape:
                    v.mul_(m.to(v.device, v.dtype))
                    n += 1
    return n


class AGPCallback(MaskCallback):
    """Prune channel groups gradually along the cubic AGP ramp during :func:`prunekit.train.fit`, keeping masks.

    Args:
        space: the channel space of the (full-size, masked) model being trained.
        prune_fn: :data:`PruneFn`, e.g. uniform top-k by filter L1 at the given ratio.
        r_begin, r_end: pruning ratios (fractions of every group's original channels removed) at the start and the
            end of the ramp; ``plan`` should already realise ``r_begin``.
        ramp_epochs: ramp length in epochs (fractional allowed); converted to ``end_step = round(ramp_epochs *
            steps_per_epoch)`` optimiser steps (capped at the run's total steps). 0 = prune to ``r_end`` once, before
            the first step.
        prune_every: re-prune every this many optimiser steps during the ramp (and at ``end_step``).
        plan: the plan at the start (channels pruned by earlier stages); None = nothing pruned yet.
        exponent: curvature of the ramp (3 = cubic, the paper's and the seed's).
        select_after_ramp: hide ``val_top1`` of epochs that end before the ramp is done (see the module docstring).

    Attributes:
        plan: the current plan (every channel pruned so far). ratio: the ratio of the last prune event.
        done: the ramp reached ``r_end``. events: prune events so far. masks: the current :class:`MaskSet`.

    Raises:
        ValueError: ``prune_every < 1``, ``ramp_epochs < 0`` or ``r_end < r_begin``.
        RuntimeError: ``prune_fn`` returned a plan that revives a pruned channel.
    """

    def __init__(
        self,
        space: ChannelSpace,
        prune_fn: PruneFn,
        *,
        r_begin: float,
        r_end: float,
        ramp_epochs: float,
        prune_every: int,
        plan: Plan | None = None,
        exponent: float = 3.0,
        select_after_ramp: bool = True,
    ) -> None:
        super().__init__()
        if prune_every < 1:
            raise ValueError(f"prune_every must be >= 1, got {prune_every}")
        if ramp_epochs < 0:
            raise ValueError(f"ramp_epochs must be >= 0, got {ramp_epochs}")
        if r_end < r_begin:
            raise ValueError(f"r_end ({r_end}) must not be below r_begin ({r_begin})")
        self.space, self.prune_fn = space, prune_fn
        self.r_begin, self.r_end = float(r_begin), float(r_end)
        self.ramp_epochs, self.prune_every, self.exponent = (
            float(ramp_epochs),
            int(prune_every),
            float(exponent),
        )
        self.select_after_ramp = select_after_ramp
        self.plan = (
            plan.model_copy(deep=True) if plan is not None else Plan(input_shape=list(space.input_shape))
        )
        self.ratio = self.r_begin
        self.done = False
        self.events = 0
        self.end_step = 0
        self._events: set[int] = set()

    # -------------------------------------------------------------- pruning
    def alive(self) -> dict[str, torch.Tensor]:
        """``{group name: bool Tensor[C]}`` of the channels the current plan keeps."""
        return alive_channels(self.space, self.plan)

    def _prune(self, state: TrainState, ratio: float) -> None:
        before = self.alive()
        new = self.prune_fn(state.model, ratio, before)
        after = alive_channels(self.space, new)
        revived = [n for n in before if bool((after[n] & ~before[n]).any())]
        if revived:
            raise RuntimeError(
                f"prune_fn revived pruned channels of group(s) {revived[:3]} at ratio {ratio:.4f}"
            )
        meta = dict(self.plan.meta)
        self.plan = new.model_copy(deep=True)
        self.plan.meta = {**meta, **self.plan.meta}
        self.masks = build_masks(state.model, self.plan, self.space)
        self.masks.apply_(state.model)
        mask_optimizer_state_(state.optimizer, state.model, self.masks)
        self.ratio = float(ratio)
        self.events += 1
        if state.step >= self.end_step:
            self.done = True

    def on_train_begin(self, state: TrainState) -> None:
        self.end_step = min(state.total_steps, round(self.ramp_epochs * state.steps_per_epoch))
        self._events = set(prune_steps(self.end_step, self.prune_every))
        self.masks = build_masks(state.model, self.plan, self.space)
        self.masks.apply_(state.model)
        if not state.resumed and self.end_step == 0 and not self.done:
            self._prune(state, self.r_end)  # zero-length ramp: one-shot to r_end before the first step

    def on_step_end(self, state: TrainState) -> None:
        if not self.done and state.step in self._events:
            r = agp_ratio(state.step, 0, self.end_step, self.r_begin, self.r_end, self.exponent)
            self._prune(state, r)  # applies the new masks (a superset of the old ones)
        else:
            self.masks.apply_(state.model)

    def on_epoch_end(self, state: TrainState, metrics: dict[str, Any]) -> None:
        metrics["prune_ratio"] = self.ratio
        if self.select_after_ramp and not self.done:
            metrics["ramp_val_top1"] = metrics.get("val_top1")
            metrics["val_top1"] = None

    # -------------------------------------------------------------- checkpoint state
    def state_dict(self) -> dict[str, Any]:
        """``{"ratio", "done", "events", "alive": {group: bool Tensor[C]}}`` (plain data, weights_only-loadable)."""
        return {
            "ratio": self.ratio,
            "done": self.done,
            "events": self.events,
            "alive": {k: v.clone() for k, v in self.alive().items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the masks are rebuilt from the alive channels in ``on_train_begin``."""
        alive = {k: torch.as_tensor(v, dtype=torch.bool) for k, v in state["alive"].items()}
        self.plan = plan_from_alive(self.space, alive, self.plan)
        self.ratio = float(state["ratio"])
        self.done = bool(state["done"])
        self.events = int(state["events"])
