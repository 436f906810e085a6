"""Keep pruned channels pruned while a masked model trains: :class:`MaskCallback`.

A masked model (:func:`prunekit.space.mask`) has the full architecture with the pruned channels zeroed. During
training, gradients, momentum and weight decay would revive those weights (and BN ``gamma``/``beta``); the callback
zeroes their gradients after ``backward()`` and re-applies the masks after every optimizer step, so the weights stay
*exactly* zero and :func:`prunekit.space.apply` on the trained model computes the same function.
"""

from __future__ import annotations

from typing import Any

import torch

from prunekit.space.masks import MaskSet
from prunekit.train.loop import Callback, TrainState

__all__ = ["MaskCallback"]


class MaskCallback(Callback):
    """Hold a :class:`~prunekit.space.MaskSet` on the model during :func:`prunekit.train.fit`.

    Hooks (all on ``state.model``, the bare network, never the DDP wrapper):

    * ``on_train_begin``: apply the masks once (a model loaded or resumed with unmasked weights is zeroed).
    * ``on_after_backward``: zero the gradients of pruned weights (before gradient clipping and the step).
    * ``on_step_end``: re-apply the masks (weights, biases, BN affine to 0; BN running mean/var to 0/1), so
      momentum buffers and weight decay cannot revive pruned weights.

    The masks are checkpointed with the training state (:meth:`state_dict` holds plain bool tensors, loadable with
    ``torch.load(weights_only=True)``). Use :meth:`set_masks` to swap masks between iterative pruning steps.
    """

    def __init__(self, masks: MaskSet | None = None) -> None:
        self.masks = masks if masks is not None else MaskSet()

    def set_masks(self, masks: MaskSet) -> None:
        """Replace the masks (e.g. with a later, sparser step's masks); takes effect at the next hook."""
        self.masks = masks

    def on_train_begin(self, state: TrainState) -> None:
        self.masks.apply_(state.model)

    def on_after_backward(self, state: TrainState) -> None:
        self.masks.mask_grads_(state.model)

    def on_step_end(self, state: TrainState) -> None:
        self.masks.apply_(state.model)

    def state_dict(self) -> dict[str, Any]:
        """``{"params": {param name: bool Tensor}, "bn_channels": {BN name: bool Tensor[C]}}`` (CPU copies)."""
        sd = self.masks.state_dict()
        return {k: {name: t.detach().to("cpu", copy=True) for name, t in v.items()} for k, v in sd.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        masks = MaskSet()
        masks.load_state_dict(
            {
                "params": {k: torch.as_tensor(v, dtype=torch.bool) for k, v in state["params"].items()},
                "bn_channels": {
                    k: torch.as_tensor(v, dtype=torch.bool) for k, v in state["bn_channels"].items()
                },
            }
        )
        self.masks = masks
