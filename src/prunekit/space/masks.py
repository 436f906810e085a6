"""MaskSet: multiplicative parameter masks (pruned channels, pruned weight blocks) held at zero during training."""

from __future__ import annotations

import torch
import torch.nn as nn


class MaskSet:
    """Per-parameter multiplicative masks (True = kept, False = pruned) and BN channels to hold at zero.

    ``params`` maps a parameter name (``model.get_parameter``) to a bool mask of its shape: pruned channels (rows of
    producers, columns of consumers, BN affine entries) and pruned weight blocks (block sparsity) share one mask per
    parameter. ``bn_channels`` maps a BN module name to the bool channels whose running statistics are held at
    ``mean 0, var 1``.

    ``apply_(model)`` zeroes pruned weights/biases/BN statistics in place; ``mask_grads_(model)`` zeroes their
    gradients. Methods call ``apply_`` after every optimiser step so momentum and weight decay cannot revive
    pruned weights.
    """

    def __init__(self) -> None:
        self.params: dict[str, torch.Tensor] = {}
        self.bn_channels: dict[str, torch.Tensor] = {}

    def mask_for(self, model: nn.Module, pname: str) -> torch.Tensor:
        """The bool mask of parameter ``pname`` (created all-True on first use), for in-place editing."""
        if pname not in self.params:
            p = model.get_parameter(pname)
            self.params[pname] = torch.ones_like(p, dtype=torch.bool, device="cpu")
        return self.params[pname]

    def restrict(self, pname: str, keep: torch.Tensor, model: nn.Module) -> None:
        """AND ``keep`` (bool, the parameter's shape) into the mask of ``pname``."""
        m = self.mask_for(model, pname)
        m &= keep.to(device="cpu", dtype=torch.bool)

    @torch.no_grad()
    def apply_(self, model: nn.Module) -> nn.Module:
        for pname, m in self.params.items():
            p = model.get_parameter(pname)
            p.mul_(m.to(p.device, p.dtype))
        for mname, dead in self.bn_channels.items():
            bn = model.get_submodule(mname)
            if getattr(bn, "running_mean", None) is not None:
                bn.running_mean[dead.to(bn.running_mean.device)] = 0.0
                bn.running_var[dead.to(bn.running_var.device)] = 1.0
        return model

    @torch.no_grad()
    def mask_grads_(self, model: nn.Module) -> None:
        for pname, m in self.params.items():
            p = model.get_parameter(pname)
            if p.grad is not None:
                p.grad.mul_(m.to(p.grad.device, p.grad.dtype))

    def density(self) -> float:
        """Kept fraction of the masked parameters' elements (1.0 when nothing is masked)."""
        total = sum(m.numel() for m in self.params.values())
        return float(sum(m.sum().item() for m in self.params.values()) / total) if total else 1.0

    def __bool__(self) -> bool:
        return bool(self.params or self.bn_channels)

    def state_dict(self) -> dict:
        return {"params": dict(self.params), "bn_channels": dict(self.bn_channels)}

    def load_state_dict(self, state: dict) -> None:
        self.params = dict(state["params"])
        self.bn_channels = dict(state["bn_channels"])
