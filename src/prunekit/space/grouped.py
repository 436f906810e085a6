"""Group convolutions realised from a plan: block-diagonal masks (masked form) and real grouped convs (applied form).

GConv (Zhao & Luk, "Efficient Structured Pruning and Architecture Searching for Group Convolution", ICCV 2019
workshops (NEUARCH), arXiv 1811.09341 [seed 003], §3) turns a dense conv into a ``G``-group conv: after permuting its
input channels by ``perm_in`` and its output channels by ``perm_out`` (:class:`~prunekit.space.plan.LayerChoice`), group ``g`` connects the ``g``-th slice of each and every
weight outside the diagonal blocks is dropped.

* Masked form (same shapes): the dense weight masked block-diagonally under the permutations (:func:`layer_maps`
  says where each kept weight of the group conv lives in the dense weight).
* Applied form: a real ``nn.Conv2d(groups=G)``. The channel orders it needs are folded into the rest of the
  network where possible: every channel group of the space whose slots are all plain (each member covers its
  whole dimension in order, and its layer can reorder channels freely) can be *reordered* as a whole, so its producers
  emit, and its consumers read, the channels in the first order a group conv asks of it (:func:`channel_orders`).
  Any order that could not be folded becomes an explicit gather: the conv is wrapped in
  :class:`~prunekit.nn.GatherConv` (``Gather`` nodes in ONNX).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from prunekit.nn import GatherConv
from prunekit.space.channels import ChannelGroup, ChannelSpace
from prunekit.space.layers import permutable
from prunekit.space.plan import LayerChoice, Plan


def perms(lc: LayerChoice, c_in: int, c_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(perm_in [c_in], perm_out [c_out])`` of a layer choice as LongTensors (identity when not given)."""
    perm_in = torch.tensor(lc.perm_in if lc.perm_in is not None else range(c_in), dtype=torch.long)
    perm_out = torch.tensor(lc.perm_out if lc.perm_out is not None else range(c_out), dtype=torch.long)
    return perm_in, perm_out


def local_maps(lc: LayerChoice, c_in: int, c_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the group conv's weight comes from in the dense (channel-pruned) weight ``[c_out, c_in, k...]``.

    Returns:
        ``rows`` LongTensor ``[c_out]`` (group conv output ``o`` is dense output ``rows[o]``) and ``cols``
        LongTensor ``[c_out, c_in / G]`` (its input column ``j`` is dense input ``cols[o, j]``).
    """
    g = int(lc.conv_groups or 1)
    perm_in, perm_out = perms(lc, c_in, c_out)
    cols = perm_in.reshape(g, c_in // g).repeat_interleave(c_out // g, dim=0)
    return perm_out, cols


def _identity(member_positions: tuple[int, ...], root: tuple[int, ...], size: int) -> bool:
    return member_positions == tuple(range(size)) and root == member_positions


def _member_size(space: ChannelSpace, module: str, dim: str) -> int:
    s = space.layers.get(module)
    if s is None:
        return -1
    return s.out_size if dim == "out" else s.in_size


def _plain(model: nn.Module, space: ChannelSpace, g: ChannelGroup) -> bool:
    """True when every slot of ``g`` covers its whole dimension in order and can be reordered
    (:func:`~prunekit.space.layers.permutable`)."""
    if g.blocks != 1:
        return False
    return all(
        _identity(m.positions, m.root, _member_size(space, m.module, m.dim))
        and permutable(model.get_submodule(m.module), m.dim)
        for m in g.members
    )


def _group_of(space: ChannelSpace, module: str, dim: str) -> ChannelGroup | None:
    size = _member_size(space, module, dim)
    for g in space.groups:
        for m in g.members:
            if m.module == module and m.dim == dim:
                return g if _identity(m.positions, m.root, size) else None
    return None


def channel_orders(
    model: nn.Module, plan: Plan, space: ChannelSpace, widths: dict[str, tuple[int, int]]
) -> tuple[dict[str, torch.Tensor], dict[str, tuple[torch.Tensor | None, torch.Tensor | None]]]:
    """Decide the channel order of every reorderable group and the gathers each group conv still needs.

    Args:
        model: the unpruned model (member types are read from it).
        widths: ``{layer: (c_in, c_out)}`` after channel pruning, for every grouped layer of ``plan``.

    Returns:
        ``(orders, gathers)``: ``orders[group name]`` is the order (LongTensor over the group's kept channels)
        the group's plain members are permuted to; ``gathers[layer] = (in_index, out_index)``, each ``None``
        when the order was folded.
    """
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    grouped = sorted((n for n, lc in plan.layers.items() if lc.grouped), key=lambda n: order.get(n, 1 << 30))
    orders: dict[str, torch.Tensor] = {}
    ends: dict[str, tuple[ChannelGroup | None, ChannelGroup | None]] = {}
    for name in grouped:
        perm_in, perm_out = perms(plan.layers[name], *widths[name])
        ends[name] = (_group_of(space, name, "in"), _group_of(space, name, "out"))
        for g, perm in zip(ends[name], (perm_in, perm_out), strict=True):
            if g is not None and g.name not in orders and _plain(model, space, g):
                orders[g.name] = perm
    gathers: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]] = {}
    for name in grouped:
        perm_in, perm_out = perms(plan.layers[name], *widths[name])
        g_in, g_out = ends[name]
        have_in = orders.get(g_in.name) if g_in is not None else None
        want_out = orders.get(g_out.name) if g_out is not None else None
        # input: x arrives in order `have_in`; the conv reads channel perm_in[j] at position j
        idx_in = perm_in if have_in is None else _inverse(have_in)[perm_in]
        # output: the conv emits channel perm_out[j] at j; the group expects channel want_out[j] at j
        idx_out = _inverse(perm_out) if want_out is None else _inverse(perm_out)[want_out]
        gathers[name] = (None if _is_identity(idx_in) else idx_in, None if _is_identity(idx_out) else idx_out)
    return orders, gathers


def _inverse(perm: torch.Tensor) -> torch.Tensor:
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), dtype=perm.dtype)
    return inv


def _is_identity(idx: torch.Tensor) -> bool:
    return bool(torch.equal(idx, torch.arange(idx.numel(), dtype=idx.dtype)))


@torch.no_grad()
def to_group_conv(
    conv: nn.Conv2d, lc: LayerChoice, gathers: tuple[torch.Tensor | None, torch.Tensor | None]
) -> nn.Module:
    """The channel-pruned dense ``conv`` as a real ``nn.Conv2d(groups=G)`` (wrapped in
    :class:`~prunekit.nn.GatherConv` when a gather is needed), keeping the weights on the diagonal blocks."""
    rows, cols = local_maps(lc, conv.in_channels, conv.out_channels)
    g = int(lc.conv_groups)
    new = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=g,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    new.weight.copy_(conv.weight[rows[:, None], cols])
    if conv.bias is not None:
        new.bias.copy_(conv.bias[rows])
    new.weight.requires_grad_(conv.weight.requires_grad)
    new.train(conv.training)
    idx_in, idx_out = gathers
    if idx_in is None and idx_out is None:
        return new
    return GatherConv(new, idx_in, idx_out).train(conv.training)
