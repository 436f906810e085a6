"""JCW's weight-sharing supernet: first-k channels and block-sparse masks on one set of full-size weights.

Zhao et al., "Joint Channel and Weight Pruning for Model Acceleration on Mobile Devices" (2021), §3.4; seed
``lib/ModelEvaluation/ps_evaluator.py``. Every candidate (widths per channel group, a weight density per layer) is a
sub-network of the full model: the **first** ``k`` channels of every group (slimmable-network weight sharing, so no
importance ranking is involved) and, per layer, the ``density`` of its whole weight blocks with the largest L1 norm
(:mod:`prunekit.space.sparsity`, refreshed from the current weights at every step, the seed's
``update_importance``). The supernet is trained by sampling one candidate per step (:class:`SupernetCallback`), in a
CNS phase (sparsity off: channels only) and then a WP phase (masks on); a candidate's proxy accuracy is its
validation cross-entropy after BN recalibration (:func:`proxy_losses`).

Sub-networks are realised by masking, for any model the :class:`~prunekit.space.ChannelSpace` covers: before the
forward the callback zeroes the candidate's pruned weights in place (channels and blocks,
:func:`~prunekit.space.realise.build_masks`; a masked model computes what the pruned one does), after the backward
it zeroes their gradients and puts their values back. The sliced-off weights thus get no gradient, while momentum
and weight decay still act on them -- what the seed's slicing of one full weight tensor does. BN running statistics
are shared and meaningless between candidates (the seed keeps one slot per candidate); every evaluation recalibrates
them first (the seed's cumulative average over 10 training batches).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from prunekit.errors import PrunekitError
from prunekit.space import ChannelSpace, Plan, apply
from prunekit.space.realise import build_masks
from prunekit.train.bn import recalibrate_bn
from prunekit.train.loop import Callback, TrainState, evaluate

__all__ = ["SupernetCallback", "channels_only", "proxy_losses"]


def channels_only(plan: Plan) -> Plan:
    """``plan`` without its weight-level choices (the CNS phase trains channels only)."""
    return plan.model_copy(update={"layers": {}})


class SupernetCallback(Callback):
    """Train a weight-sharing supernet: each step, one candidate of the pool, its pruned weights zeroed for the
    forward / backward and restored before the optimizer step (see the module docstring).

    Args:
        space: the channel space of the model being trained (the full network).
        pool: the candidates to sample from (plans over ``space``; the seed samples from the generation's parents
            and offspring), or a callable ``pool(rng) -> Plan`` drawing a fresh one (e.g. random encodings).
        sparse: the WP phase (density masks on); ``False`` is the CNS phase (channels only).
        seed: the sampling RNG's seed (its state is checkpointed).

    The model must be the full network ``space`` was built on (bare, not a DDP wrapper: hooks get
    ``state.model``).
    """

    def __init__(
        self,
        space: ChannelSpace,
        pool: Sequence[Plan] | Callable[[np.random.Generator], Plan],
        *,
        sparse: bool,
        seed: int = 0,
    ) -> None:
        self.space, self.sparse = space, bool(sparse)
        self.set_pool(pool)
        self.rng = np.random.default_rng(seed)
        self._saved: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.steps = 0

    def set_pool(self, pool: Sequence[Plan] | Callable[[np.random.Generator], Plan]) -> None:
        """Replace the candidates sampled from (the next generation's)."""
        if not callable(pool) and len(pool) == 0:
            raise ValueError("the supernet's candidate pool is empty")
        self.pool = pool

    def _sample(self) -> Plan:
        if callable(self.pool):
            plan = self.pool(self.rng)
        else:
            plan = self.pool[int(self.rng.integers(0, len(self.pool)))]
        return plan if self.sparse else channels_only(plan)

    @torch.no_grad()
    def on_batch_begin(self, state: TrainState, batch: tuple[Any, Any]) -> None:
        model = state.model
        masks = build_masks(model, self._sample(), self.space)
        self._saved = {}
        for pname, keep in masks.params.items():
            p = model.get_parameter(pname)
            drop = ~keep.to(p.device)
            self._saved[pname] = (drop, p.data[drop].clone())
            p.data[drop] = 0.0
        self.steps += 1
        return None

    @torch.no_grad()
    def on_after_backward(self, state: TrainState) -> None:
        model = state.model
        for pname, (drop, values) in self._saved.items():
            p = model.get_parameter(pname)
            if p.grad is not None:
                p.grad[drop] = 0.0
            p.data[drop] = values
        self._saved = {}

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.steps = int(state["steps"])


def _mean_loss(
    model: nn.Module, loader: Iterable[Any], loss_fn: Callable, device: str | torch.device
) -> float:
    """Mean of the user's ``loss_fn(model, batch)`` over ``loader`` (eval mode, no grad; batches moved to
    ``device``)."""
    from prunekit.train.loop import _to_device

    model.to(device).eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for batch in loader:
            total += float(loss_fn(model, _to_device(batch, torch.device(device))))
            n += 1
    if n == 0:
        raise PrunekitError("the proxy validation loader is empty")
    return total / n


def proxy_losses(
    model: nn.Module,
    space: ChannelSpace,
    plans: Iterable[Plan],
    bn_batches: Sequence[Any],
    val_loader: Iterable[Any],
    *,
    device: str | torch.device = "cpu",
    on_done: Callable[[], None] | None = None,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
) -> np.ndarray:
    """Each candidate's proxy objective: validation cross-entropy (nats) of its sub-network after BN recalibration.

    Per plan: the sub-network is realised (:func:`~prunekit.space.apply`: first-k channels as the plan's keep lists
    say, density blocks by L1 of the supernet's current weights), its BN statistics are recomputed as the cumulative
    average over ``bn_batches`` (a fixed list of training batches, so every candidate sees the same ones; the seed
    uses 10), and it is evaluated on ``val_loader`` (``loss_fn(model, batch)``, the user's objective, averaged over
    the batches when given). ``model`` is not modified.

    Returns:
        float64 ``[len(plans)]``: the mean validation loss of each.
    """
    out = []
    for plan in plans:
        sub = apply(model, plan, space)
        recalibrate_bn(sub, bn_batches, batches=len(bn_batches), device=device, momentum=None)
        out.append(
            evaluate(sub, val_loader, device)["loss"]
            if loss_fn is None
            else _mean_loss(sub, val_loader, loss_fn, device)
        )
        if on_done is not None:
            on_done()
    return np.asarray(out, dtype=np.float64)
