"""Layers that realised plans put into a model: :class:`GatherConv`, a conv with channel gathers around it.

A group convolution made from a dense conv (GConv: Zhao & Luk, "Efficient Structured Pruning and Architecture
Searching for Group Convolution", ICCV 2019 workshops, arXiv 1811.09341 [seed 003]; gumi) needs its input channels in a chosen order and emits its output
channels in another. Where that order cannot be folded into the neighbouring layers (see
:mod:`prunekit.space.grouped`), the conv is wrapped with explicit gathers: ``y = conv(x[:, in_index])[:, out_index]``.
This module sits at the bottom of the package (no prunekit imports), so the exporter can fold BatchNorm through it.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["GatherConv"]


class GatherConv(nn.Module):
    """``y = conv(x.index_select(1, in_index)).index_select(1, out_index)``; either index may be absent.

    Args:
        conv: the convolution (usually grouped); input ``[N, C_in, H, W]`` after the input gather, output
            ``[N, C_out, H', W']`` before the output gather.
        in_index: LongTensor ``[C_in]``, a permutation of the incoming channels (``None``: no input gather).
        out_index: LongTensor ``[C_out]``, a permutation of the conv's output channels (``None``: none).

    The indices are persistent buffers (they are in the state dict, and the exported ONNX graph has ``Gather``
    nodes on axis 1 around a ``Conv`` with ``group = conv.groups``).
    """

    def __init__(
        self, conv: nn.Conv2d, in_index: torch.Tensor | None = None, out_index: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        self.conv = conv
        self.register_buffer("in_index", None if in_index is None else in_index.to(torch.long).clone())
        self.register_buffer("out_index", None if out_index is None else out_index.to(torch.long).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_index is not None:
            x = x.index_select(1, self.in_index)
        y = self.conv(x)
        if self.out_index is not None:
            y = y.index_select(1, self.out_index)
        return y

    @torch.no_grad()
    def fold_batchnorm_(self, bn: nn.BatchNorm2d) -> None:
        """Fold an eval-mode BatchNorm that follows this module into ``conv`` (in place).

        BN channel ``c`` normalises conv output ``out_index[c]``, so the BN is permuted into the conv's order
        first, then fused (``torch.nn.utils.fusion.fuse_conv_bn_eval``).
        """
        if self.out_index is not None:
            order = torch.empty_like(self.out_index)
            order[self.out_index] = torch.arange(len(self.out_index), device=self.out_index.device)
            permuted = nn.BatchNorm2d(bn.num_features, eps=bn.eps).to(bn.running_mean.device)
            permuted.eval()
            permuted.running_mean.copy_(bn.running_mean[order])
            permuted.running_var.copy_(bn.running_var[order])
            if bn.weight is not None:
                permuted.weight.copy_(bn.weight[order])
                permuted.bias.copy_(bn.bias[order])
            else:
                permuted.weight.fill_(1.0)
                permuted.bias.zero_()
            bn = permuted
        self.conv = torch.nn.utils.fusion.fuse_conv_bn_eval(self.conv.eval(), bn.eval())

    def extra_repr(self) -> str:
        return f"in_gather={self.in_index is not None}, out_gather={self.out_index is not None}"
