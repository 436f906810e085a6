"""Realising a :class:`~prunekit.space.plan.Plan` on a model: ``apply`` (physically smaller), ``mask`` (same size,
zeros held by a :class:`~prunekit.space.masks.MaskSet`) and ``rebuild`` (from a model spec and saved weights).

* :func:`apply` returns a physically smaller copy: every coupled tensor sliced from the space's slot table, then
  each ``conv_groups`` layer turned into a real group conv (:mod:`prunekit.space.grouped`), then each layer with a
  ``density`` has its dropped weight blocks zeroed in dense storage (:mod:`prunekit.space.sparsity`).
  :func:`apply_with_masks` also returns those weight masks (to hold the zeros while the applied model trains).
* :func:`mask` returns a numerically equivalent copy of the same size with the pruned channels, the off-diagonal
  blocks of group convs and the dropped weight blocks zeroed, plus the :class:`MaskSet` that training-time methods
  re-apply after each optimiser step.

Both forms rank weight blocks on the same tensor (the layer's weight after channel pruning and group conversion), so
in eval mode they compute the same function; the tests check it on random plans.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from prunekit.errors import PrunekitError
from prunekit.space.channels import ChannelSpace, clone_model
from prunekit.space.grouped import channel_orders, local_maps, to_group_conv
from prunekit.space.layers import mask_slots, permute_slots, slice_slots
from prunekit.space.masks import MaskSet
from prunekit.space.plan import Plan
from prunekit.space.sparsity import DEFAULT_BLOCK, block_mask


def _space_for(model: nn.Module, plan: Plan, space: ChannelSpace | None) -> ChannelSpace:
    if space is not None:
        return space
    if not plan.input_shape:
        raise PrunekitError("plan has no input_shape and no ChannelSpace was given")
    return ChannelSpace.build(model, tuple(plan.input_shape), quiet=True)


def apply(model: nn.Module, plan: Plan, space: ChannelSpace | None = None) -> nn.Module:
    """Return a physically smaller copy of ``model`` realising ``plan`` (``model`` is not modified).

    Every slot of every pruned channel (conv/linear weights and biases, BN parameters and running statistics,
    consumer input channels, depthwise groups, grouped-conv blocks) is sliced using the coupling torch-pruning
    found when ``space`` was built; ``space`` is built from ``plan.input_shape`` when not given. Layers with
    ``conv_groups`` become ``nn.Conv2d(groups=G)`` (or :class:`~prunekit.nn.GatherConv` around one); layers with
    a ``density`` keep their shape with the dropped weight blocks set to zero.

    Raises:
        PrunekitError: the plan does not fit the model (see :meth:`Plan.validate_against`), or a member layer
            type cannot be sliced.
    """
    return apply_with_masks(model, plan, space)[0]


def apply_with_masks(
    model: nn.Module, plan: Plan, space: ChannelSpace | None = None
) -> tuple[nn.Module, MaskSet]:
    """:func:`apply`, plus the weight masks of the applied model's sparse layers (empty without densities).

    Raises:
        PrunekitError: as :func:`apply`.
    """
    space = _space_for(model, plan, space)
    plan.validate_against(space)
    removed = plan.removed(space)
    new = clone_model(model)
    for (name, dim), gone in removed.items():
        slice_slots(new.get_submodule(name), name, dim, gone, depthwise=space.layers[name].depthwise)
    grouped = [n for n, lc in plan.layers.items() if lc.grouped]
    widths = {n: plan.layer_widths(space, n, removed) for n in grouped}
    orders, gathers = channel_orders(model, plan, space, widths) if grouped else ({}, {})
    for n in grouped:
        new.set_submodule(n, to_group_conv(new.get_submodule(n), plan.layers[n], gathers[n]))
    # blocks are ranked in the plan's channel order, before the orders are folded into the other layers
    masks = density_masks(new, plan)
    for gname, perm in orders.items():
        for m in space[gname].members:
            if m.module in widths:  # a group conv's own slots are ordered by its gathers
                continue
            permute_slots(new.get_submodule(m.module), m.module, m.dim, perm)
            pname = f"{m.module}.weight"
            if pname in masks.params:
                masks.params[pname] = masks.params[pname].index_select(0 if m.dim == "out" else 1, perm)
    masks.apply_(new)
    return new, masks


def weight_name(model: nn.Module, layer: str) -> str:
    """The parameter name of ``layer``'s weight in ``model`` (``layer.conv.weight`` inside a GatherConv)."""
    mod = model.get_submodule(layer)
    return f"{layer}.conv.weight" if hasattr(mod, "conv") and hasattr(mod, "in_index") else f"{layer}.weight"


def density_masks(applied: nn.Module, plan: Plan, *, from_zeros: bool = False) -> MaskSet:
    """Weight masks of every layer of ``plan`` with a density, for ``applied`` (the applied model; its names).

    ``from_zeros=False``: block masks ranked on the current weights (what :func:`apply` does, before the channel
    orders of group convs are folded into neighbouring layers). ``from_zeros=True``: the masks of an
    already-applied model, recovered from its zeros (the weights of dropped blocks are exactly zero; used to keep
    them at zero when a saved or method-trained model trains on).
    """
    masks = MaskSet()
    for name, lc in plan.layers.items():
        if lc.density is None:
            continue
        pname = weight_name(applied, name)
        w = applied.get_parameter(pname).detach()
        keep = w != 0 if from_zeros else block_mask(w, lc.density, lc.block or DEFAULT_BLOCK, lc.p)
        masks.restrict(pname, keep, applied)
    return masks


def _full_maps(
    model: nn.Module, plan: Plan, space: ChannelSpace, name: str, removed: dict
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows [O'], cols [O', Iw'])``: where each element of ``name``'s applied weight lives in its full weight."""
    mod = model.get_submodule(name)
    s = space.layers[name]
    gone_out = removed.get((name, "out"), set())
    kept_out = torch.tensor([i for i in range(s.out_size) if i not in gone_out], dtype=torch.long)
    w_in = mod.weight.shape[1]
    if s.depthwise:
        kept_in = torch.zeros(1, dtype=torch.long)
    else:
        gone_in = removed.get((name, "in"), set())
        kept_in = torch.tensor([i for i in range(s.in_size) if i not in gone_in], dtype=torch.long)
        kept_in = kept_in[kept_in < w_in]  # a grouped conv's columns are local: the same in every block
    lc = plan.layers.get(name)
    if lc is not None and lc.grouped:
        rows_l, cols_l = local_maps(lc, len(kept_in), len(kept_out))
        return kept_out[rows_l], kept_in[cols_l]
    return kept_out, kept_in.expand(len(kept_out), -1)


def _weight_masks(model: nn.Module, plan: Plan, space: ChannelSpace, masks: MaskSet) -> None:
    """AND the group-conv block diagonals and the density block masks into ``masks`` (full-size names)."""
    removed = plan.removed(space)
    for name, lc in plan.layers.items():
        if not (lc.grouped or lc.density is not None):
            continue
        rows, cols = _full_maps(model, plan, space, name, removed)
        w = model.get_submodule(name).weight.detach()
        view = w[rows[:, None], cols]  # the applied form's weight
        keep = torch.ones(view.shape, dtype=torch.bool)
        if lc.density is not None:
            keep = block_mask(view, lc.density, lc.block or DEFAULT_BLOCK, lc.p).cpu()
        full = torch.zeros(w.shape, dtype=torch.bool)
        full[rows[:, None], cols] = keep
        masks.restrict(name + ".weight", full, model)


def build_masks(model: nn.Module, plan: Plan, space: ChannelSpace) -> MaskSet:
    """Masks that zero every slot of the pruned channels (producer rows, BN affine + statistics, consumer columns),
    the off-diagonal blocks of group convs and the dropped weight blocks of sparse layers.

    Raises:
        PrunekitError: the plan does not fit the space, or a member layer type cannot be masked.
    """
    plan.validate_against(space)
    masks = MaskSet()
    for g in space.groups:
        pruned = set(plan.pruned(g))
        if not pruned:
            continue
        for mem in g.members:
            pos = [p for p, r in zip(mem.positions, mem.root, strict=True) if r in pruned]
            if pos:
                mask_slots(masks, model, mem.module, mem.dim, pos)
    _weight_masks(model, plan, space, masks)
    return masks


def mask(model: nn.Module, plan: Plan, space: ChannelSpace) -> tuple[nn.Module, MaskSet]:
    """Return ``(masked_copy, masks)``: same shapes as ``model``, pruned channels zeroed everywhere.

    In eval mode the masked copy computes the same function as :func:`apply` (``model`` is not modified).
    """
    masks = build_masks(model, plan, space)
    new = clone_model(model)
    masks.apply_(new)
    return new, masks


def rebuild(plan: Plan, state_dict: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """Rebuild the pruned network from ``plan.model`` (a model spec) and optionally load pruned weights.

    The architecture (channel widths, group convs and their gathers) follows from the plan; sparse layers get their
    weights, zeros included, from ``state_dict`` (``density_masks(model, plan, from_zeros=True)`` recovers their
    masks).

    Raises:
        PrunekitError: the plan has no model spec, or the weights do not fit the pruned architecture.
    """
    from prunekit.models import create_model

    if not plan.model:
        raise PrunekitError("plan has no model spec; cannot rebuild the network")
    base = create_model(plan.model)
    pruned = apply(base, plan)
    if state_dict is not None:
        try:
            pruned.load_state_dict(state_dict, strict=True)
        except RuntimeError as exc:
            raise PrunekitError(
                f"weights do not fit the pruned model: {str(exc).splitlines()[0][:200]}"
            ) from None
    return pruned
