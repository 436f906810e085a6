"""Per-layer-type channel slots: how one layer's output or input channels are sliced away or masked.

:func:`~prunekit.space.realise.apply` and :func:`~prunekit.space.realise.build_masks` walk the members of every
channel group and call :func:`slice_slots` / :func:`mask_slots` for each ``(layer, dim, positions)``. Both read the
same slot table (:func:`_slots`: which parameter / buffer holds the channels along which axis), so slicing the
positions away and zeroing them compute the same function by construction; the few layouts that are not one axis
per channel (a grouped conv's input columns, a depthwise conv's groups, GroupNorm's group count) are handled next to
each other in both. :func:`slot_problem` says, when the channel space is built, why a layer's slots cannot be pruned
that way, so such groups are left out with the reason instead of failing later.

Supported: Conv1d/2d (groups, depthwise), ConvTranspose1d/2d (``groups=1``; weight ``[C_in, C_out, k...]``: output
channels on axis 1), Linear, BatchNorm, InstanceNorm, GroupNorm (whole GroupNorm groups only: part of a group changes
the rest's mean and variance), PReLU. LayerNorm over channels is not: its mean and variance run over every channel,
so a zeroed (masked) channel still counts in them and masking can never equal slicing.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from prunekit.errors import PrunekitError
from prunekit.space.masks import MaskSet

SUPPORTED = "Conv, ConvTranspose (groups=1), Linear, BatchNorm, InstanceNorm, GroupNorm (whole groups), PReLU"
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_IN = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
_CONV = (nn.Conv1d, nn.Conv2d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d)
_STATS = ("running_mean", "running_var")


def _slots(mod: nn.Module, dim: str) -> tuple[tuple[str, int], ...] | None:
    """``(tensor name, axis)`` of every parameter / buffer of ``mod`` indexed by its ``dim`` channels.

    ``()`` for a layer without per-channel tensors (nothing to slice); ``None`` for an unsupported layer type.
    """
    out = dim == "out"
    if isinstance(mod, _CONV + (nn.Linear,)):  # weight [O, I, k...] / [O, I]
        return (("weight", 0), ("bias", 0)) if out else (("weight", 1),)
    if isinstance(mod, _CONV_T):  # weight [I, O / groups, k...]
        return (("weight", 1), ("bias", 0)) if out else (("weight", 0),)
    if isinstance(mod, _BN + _IN):
        return (("weight", 0), ("bias", 0), *((s, 0) for s in _STATS))
    if isinstance(mod, nn.GroupNorm):
        return (("weight", 0), ("bias", 0))
    if isinstance(mod, nn.PReLU):
        return (("weight", 0),) if mod.num_parameters > 1 else ()
    if not any(True for _ in mod.parameters(recurse=False)):
        return ()
    return None


def _size_attr(mod: nn.Module, dim: str) -> str | None:
    """The attribute holding ``mod``'s channel count along ``dim`` (``None``: it has none)."""
    if isinstance(mod, _CONV + _CONV_T):
        return "out_channels" if dim == "out" else "in_channels"
    if isinstance(mod, nn.Linear):
        return "out_features" if dim == "out" else "in_features"
    if isinstance(mod, _BN + _IN):
        return "num_features"
    if isinstance(mod, nn.GroupNorm):
        return "num_channels"
    if isinstance(mod, nn.PReLU) and mod.num_parameters > 1:
        return "num_parameters"
    return None


def _grouped_in(mod: nn.Module, dim: str, depthwise: bool | None = None) -> bool:
    """True for a grouped (not depthwise) conv's input: its weight columns are local to each of ``groups`` blocks.

    ``depthwise`` None: read it off ``mod`` (right for the unpruned model, not for one being sliced).
    """
    if not (isinstance(mod, _CONV) and dim == "in" and mod.groups > 1):
        return False
    return not (mod.groups == mod.in_channels if depthwise is None else depthwise)


def slot_problem(mod: nn.Module, name: str, dim: str, positions: tuple[int, ...]) -> str | None:
    """Why layer ``name``'s channel slots ``positions`` along ``dim`` cannot be pruned with :func:`slice_slots`
    equal to :func:`mask_slots`, or ``None`` when they can.

    Whole GroupNorm groups are kept or pruned together by the channel space (see ``ChannelSpace``); here a GroupNorm
    is refused only when it also normalises channels outside ``positions`` (another channel group), or has one
    group (every channel normalised together).
    """
    if isinstance(mod, _CONV_T) and mod.groups > 1:
        return f"{name} is a grouped transposed conv (groups={mod.groups}); only groups=1 can be pruned"
    if isinstance(mod, nn.LayerNorm):
        return (
            f"{name} ({type(mod).__name__}) normalises over all channels together: pruning a channel changes the "
            "others' mean and variance, so masking it is not equivalent to slicing it"
        )
    if isinstance(mod, nn.GroupNorm):
        if mod.num_groups == 1:
            return f"{name} (GroupNorm, 1 group) normalises all channels together; none can be pruned alone"
        if tuple(positions) != tuple(range(mod.num_channels)):
            return f"{name} (GroupNorm) normalises these channels together with another group's channels"
    if _slots(mod, dim) is None:
        return f"{name} ({type(mod).__name__}) cannot be pruned; supported: {SUPPORTED}"
    return None


def _keep(size: int, gone: set[int]) -> torch.Tensor:
    return torch.tensor([i for i in range(size) if i not in gone], dtype=torch.long)


def _select(t: torch.Tensor, axis: int, keep: torch.Tensor) -> torch.Tensor:
    """``t`` restricted to ``keep`` along ``axis``: a new Parameter for a parameter, a plain tensor for a buffer."""
    data = t.data.index_select(axis, keep.to(t.device)).clone()
    return nn.Parameter(data, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else data


@torch.no_grad()
def slice_slots(mod: nn.Module, name: str, dim: str, gone: set[int], *, depthwise: bool = False) -> None:
    """Remove channel positions ``gone`` from ``mod`` along ``dim`` (``"out"`` or ``"in"``), in place.

    ``depthwise`` comes from the traced shape table: slicing a grouped conv's input can make ``groups ==
    in_channels`` afterwards, so the live module cannot tell.

    Raises:
        PrunekitError: ``mod`` owns parameters but is not a supported layer type, or ``gone`` splits a GroupNorm
            group.
    """
    slots, size_attr = _slots(mod, dim), _size_attr(mod, dim)
    if slots is None:
        raise PrunekitError(f"cannot prune layer {name} ({type(mod).__name__}); supported: {SUPPORTED}")
    if size_attr is None:
        return
    keep = _keep(getattr(mod, size_attr), gone)
    if isinstance(mod, nn.GroupNorm):
        mod.num_groups = _groupnorm_groups_left(mod, name, gone)
    if _grouped_in(mod, dim, depthwise):
        per_in = mod.in_channels // mod.groups
        mod.weight = _select(mod.weight, 1, keep[keep < per_in])  # balanced: the same local columns per block
        mod.in_channels = int((keep < per_in).sum()) * mod.groups
        return
    for tname, axis in slots:
        t = getattr(mod, tname, None)
        if t is not None:
            setattr(mod, tname, _select(t, axis, keep))
    setattr(mod, size_attr, len(keep))
    if depthwise and dim == "out":
        mod.in_channels = mod.groups = len(keep)


def _groupnorm_groups_left(mod: nn.GroupNorm, name: str, gone: set[int]) -> int:
    """GroupNorm groups left after removing channels ``gone``, which must be whole groups."""
    per = mod.num_channels // mod.num_groups
    dead_groups = {p // per for p in gone}
    if len(gone) != len(dead_groups) * per:
        raise PrunekitError(f"cannot prune part of a GroupNorm group of {name}; prune whole groups of {per}")
    return mod.num_groups - len(dead_groups)


def mask_slots(masks: MaskSet, model: nn.Module, name: str, dim: str, pos: list[int]) -> None:
    """Zero, in ``masks``, every parameter slot of channel positions ``pos`` of layer ``name`` along ``dim``;
    BN / InstanceNorm running statistics of those channels are held at ``mean 0, var 1`` (``masks.bn_channels``).

    Raises:
        PrunekitError: the layer owns parameters but is not a supported layer type.
    """
    mod = model.get_submodule(name)
    slots = _slots(mod, dim)
    if slots is None:
        raise PrunekitError(f"cannot mask layer {name} ({type(mod).__name__}); supported: {SUPPORTED}")
    idx = torch.tensor(pos, dtype=torch.long)
    if _grouped_in(mod, dim):
        _mask_grouped_in(masks.mask_for(model, f"{name}.weight"), mod, pos)
        return
    for tname, axis in slots:
        t = getattr(mod, tname, None)
        if isinstance(t, nn.Parameter):
            masks.mask_for(model, f"{name}.{tname}").index_fill_(axis, idx, False)
        elif t is not None:  # running statistics
            masks.bn_channels.setdefault(name, torch.zeros(len(t), dtype=torch.bool))[idx] = True


def _mask_grouped_in(w: torch.Tensor, mod: nn.Module, pos: list[int]) -> None:
    """Zero input positions ``pos`` of a grouped conv's weight mask ``w`` ``[O, I / groups, k...]``: position ``p``
    is local column ``p % (I / groups)`` of the output rows of block ``p // (I / groups)``."""
    per_in = mod.in_channels // mod.groups
    per_out = mod.out_channels // mod.groups
    for p in pos:
        blk, local = divmod(p, per_in)
        w[blk * per_out : (blk + 1) * per_out, local] = False


def permutable(mod: nn.Module, dim: str) -> bool:
    """True when ``mod``'s channels along ``dim`` can be reordered freely by :func:`permute_slots` (every layer of
    the slot table except GroupNorm, whose groups must stay together, and a grouped conv's local input columns)."""
    return _slots(mod, dim) is not None and not isinstance(mod, nn.GroupNorm) and not _grouped_in(mod, dim)


@torch.no_grad()
def permute_slots(mod: nn.Module, name: str, dim: str, perm: torch.Tensor) -> None:
    """Reorder ``mod``'s channels along ``dim`` in place: new channel ``j`` is old channel ``perm[j]``, in every
    tensor of the slot table (weights, biases, norm affine and running statistics).

    Raises:
        PrunekitError: the layer's channels cannot be reordered (see :func:`permutable`).
    """
    if not permutable(mod, dim):
        raise PrunekitError(f"cannot reorder the {dim} channels of {name} ({type(mod).__name__})")
    for tname, axis in _slots(mod, dim) or ():
        t = getattr(mod, tname, None)
        if t is not None:
            t.data = t.data.index_select(axis, perm.to(t.device)).contiguous()
