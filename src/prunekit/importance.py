"""Channel importance criteria: callables ``(model, space, group) -> Tensor[C]`` (higher = more important).

* :func:`l1` / :func:`l2` — filter norm summed over every conv/linear producing the group (residual partners and the
  depthwise conv included), the criterion of Li et al., "Pruning Filters for Efficient ConvNets" (ICLR 2017, §3.1)
  and of the Multistage pruning seed ("magnitude-sum-min"; Tu et al., IJCNN 2020, §III-B).
* :func:`bn_scale` — sum of ``|gamma|`` of the group's BN layers (Liu et al., "Network Slimming", ICCV 2017, §3.2).
* :func:`l1_bn` — L1 filter norm times the summed ``|gamma|`` (the seed's ``use_bn`` option).
* :func:`random` — seeded uniform scores (a baseline).

Use :func:`get` to resolve a criterion by name.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from prunekit.errors import PrunekitError
from prunekit.space.channels import ChannelGroup, ChannelSpace

Importance = Callable[[nn.Module, ChannelSpace, ChannelGroup], torch.Tensor]
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _filter_norm(model: nn.Module, group: ChannelGroup, p: int) -> torch.Tensor:
    scores = torch.zeros(group.channels, dtype=torch.float64)
    for mem in group.members:
        if mem.dim != "out":
            continue
        mod = model.get_submodule(mem.module)
        if isinstance(mod, nn.ConvTranspose1d | nn.ConvTranspose2d):  # weight [C_in, C_out / groups, k...]
            w = mod.weight.detach().transpose(0, 1).flatten(1).to(torch.float64)
        elif isinstance(mod, nn.Conv1d | nn.Conv2d | nn.Linear):
            w = mod.weight.detach().flatten(1).to(torch.float64)
        else:
            continue
        rows = w[list(mem.positions)]
        norms = rows.abs().sum(1) if p == 1 else rows.pow(2).sum(1)
        scores.index_add_(0, torch.tensor(mem.root), norms.cpu())
    return scores if p == 1 else scores.sqrt()


def l1(model: nn.Module, space: ChannelSpace, group: ChannelGroup) -> torch.Tensor:
    """Sum over the group's producing conv/linear layers of each filter's L1 norm; shape ``[C]`` float64."""
    return _filter_norm(model, group, 1)


def l2(model: nn.Module, space: ChannelSpace, group: ChannelGroup) -> torch.Tensor:
    """L2 norm of each channel's filters concatenated over the group's producing layers; shape ``[C]``."""
    return _filter_norm(model, group, 2)


def bn_scale(model: nn.Module, space: ChannelSpace, group: ChannelGroup) -> torch.Tensor:
    """Sum of ``|gamma|`` over the group's BN layers; shape ``[C]``.

    Raises:
        PrunekitError: the group has no affine BN layer.
    """
    scores = torch.zeros(group.channels, dtype=torch.float64)
    found = False
    for mem in group.members:
        mod = model.get_submodule(mem.module)
        if isinstance(mod, _BN) and mod.affine:
            found = True
            scores.index_add_(
                0, torch.tensor(mem.root), mod.weight.detach().abs().to(torch.float64)[list(mem.positions)]
            )
    if not found:
        raise PrunekitError(f"group {group.name!r} has no BatchNorm layer; use importance l1 or l2")
    return scores


def l1_bn(model: nn.Module, space: ChannelSpace, group: ChannelGroup) -> torch.Tensor:
    """L1 filter norm times summed BN ``|gamma|`` (falls back to L1 where the group has no BN); shape ``[C]``."""
    base = l1(model, space, group)
    try:
        return base * bn_scale(model, space, group)
    except PrunekitError:
        return base


def random(model: nn.Module, space: ChannelSpace, group: ChannelGroup, seed: int = 0) -> torch.Tensor:
    """Uniform random scores, seeded by ``seed`` and the group index; shape ``[C]``."""
    gen = torch.Generator().manual_seed(seed * 100_003 + group.index)
    return torch.rand(group.channels, generator=gen, dtype=torch.float64)


CRITERIA: dict[str, Importance] = {"l1": l1, "l2": l2, "bn_scale": bn_scale, "l1_bn": l1_bn, "random": random}


def get(name: str) -> Importance:
    """Resolve an importance criterion by name (``l1``, ``l2``, ``bn_scale``, ``l1_bn``, ``random``).

    Raises:
        PrunekitError: unknown name.
    """
    try:
        return CRITERIA[name]
    except KeyError:
        raise PrunekitError(f"unknown importance {name!r}: choose one of {', '.join(CRITERIA)}") from None
