"""Plan: one pruning choice as plain data, and the two ways to realise it (apply, mask).

A :class:`Plan` records, for each channel group of a :class:`~prunekit.space.channels.ChannelSpace`, the kept channel
indices; optionally, per layer, a weight density (with a block shape) and a conv group count. It round-trips through
JSON, so a plan saved with its model spec rebuilds the pruned network from the original architecture without pickled
modules (:func:`rebuild`).

* :func:`apply` returns a physically smaller copy (torch-pruning slices every coupled tensor).
* :func:`mask` returns a numerically equivalent copy of the same size with the pruned channels zeroed, plus a
  :class:`MaskSet` that training-time methods re-apply after each optimiser step.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prunekit.errors import PrunekitError, validation_message
from prunekit.space.channels import ChannelGroup, ChannelSpace, clone_model
from prunekit.space.widths import round_width, select_channels

PLAN_VERSION = 1


class GroupChoice(BaseModel):
    """Kept channels of one group: ``keep`` are sorted indices in ``[0, channels)``."""

    model_config = ConfigDict(extra="forbid")
    channels: int = Field(gt=0)
    keep: list[int]


class LayerChoice(BaseModel):
    """Per-layer options used by weight-level methods.

    Attributes:
        density: fraction of the layer's weights kept (JCW weight pruning), ``None`` = dense.
        block: block shape ``(out_channels, in_positions)`` of the weight sparsity pattern.
        conv_groups: number of conv groups after conversion to a group convolution (GConv), ``None`` = unchanged.
    """

    model_config = ConfigDict(extra="forbid")
    density: float | None = Field(default=None, gt=0.0, le=1.0)
    block: tuple[int, int] | None = None
    conv_groups: int | None = Field(default=None, ge=1)


class Plan(BaseModel):
    """One pruning choice over a model's channel space (plain data, JSON round-trip)."""

    model_config = ConfigDict(extra="forbid")
    version: int = PLAN_VERSION
    model: str | None = None
    input_shape: list[int] = Field(default_factory=list)
    groups: dict[str, GroupChoice] = Field(default_factory=dict)
    layers: dict[str, LayerChoice] = Field(default_factory=dict)
    meta: dict = Field(default_factory=dict)

    # -------------------------------------------------------------- io
    def to_json(self) -> str:
        return self.model_dump_json(indent=2, exclude_none=True)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        """Parse a plan written by :meth:`to_json`.

        Raises:
            PrunekitError: malformed JSON, or an unknown, missing or invalid field (one line naming the field).
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PrunekitError(f"plan is not valid JSON: {exc}") from None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise PrunekitError(
                validation_message(exc, what="plan", reference="prunekit.space.plan.Plan")
            ) from None

    def save(self, path: str | Path) -> None:
        from prunekit.io import write_text

        write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        path = Path(path)
        if not path.is_file():
            raise PrunekitError(f"plan file not found: {path}")
        return cls.from_json(path.read_text(encoding="utf-8"))

    # -------------------------------------------------------------- queries
    def widths(self, space: ChannelSpace) -> np.ndarray:
        """Kept channels per group in space order, shape ``[G]`` (groups absent from the plan are full)."""
        return np.array(
            [len(self.groups[g.name].keep) if g.name in self.groups else g.channels for g in space.groups],
            dtype=np.int64,
        )

    def pruned(self, group: ChannelGroup) -> list[int]:
        """Indices of ``group`` removed by this plan (sorted)."""
        choice = self.groups.get(group.name)
        if choice is None:
            return []
        keep = set(choice.keep)
        return [i for i in range(group.channels) if i not in keep]

    def validate_against(self, space: ChannelSpace) -> None:
        """Check the plan fits the space.

        Raises:
            PrunekitError: unknown group, channel count mismatch, index out of range / duplicated, empty group, or
                unbalanced blocks for a group touching a grouped conv.
        """
        names = {g.name: g for g in space.groups}
        for name, choice in self.groups.items():
            g = names.get(name)
            if g is None:
                raise PrunekitError(
                    f"plan names channel group {name!r}, which the model does not have (was it made for another "
                    "model or input size?)"
                )
            if choice.channels != g.channels:
                raise PrunekitError(
                    f"plan says group {name!r} has {choice.channels} channels, the model has {g.channels}"
                )
            keep = choice.keep
            if not keep:
                raise PrunekitError(f"plan keeps no channel of group {name!r}; keep at least one")
            if len(set(keep)) != len(keep) or min(keep) < 0 or max(keep) >= g.channels:
                raise PrunekitError(
                    f"plan keep indices of group {name!r} are duplicated or outside [0, {g.channels})"
                )
            if g.blocks > 1 and not _balanced(keep, g):
                raise PrunekitError(
                    f"group {name!r} feeds a grouped conv with {g.blocks} groups: keep the same positions in every "
                    "block (use resolve_plan, which does this)"
                )
        for name, lc in self.layers.items():
            if name not in space.layers:
                raise PrunekitError(f"plan names layer {name!r}, which the model does not have")
            if lc.conv_groups is not None and space.layers[name].kind != "conv":
                raise PrunekitError(f"plan sets conv_groups on {name!r}, which is not a conv")


def _balanced(keep: list[int], g: ChannelGroup) -> bool:
    size = g.channels // g.blocks
    locals_per_block = [sorted(i % size for i in keep if i // size == b) for b in range(g.blocks)]
    return all(lp == locals_per_block[0] for lp in locals_per_block)


# ---------------------------------------------------------------------- building plans
Importance = Callable[[nn.Module, ChannelSpace, ChannelGroup], torch.Tensor]


def plan_from_widths(
    space: ChannelSpace,
    widths: Mapping[str, int] | np.ndarray | list[int],
    *,
    model: nn.Module | None = None,
    importance: Importance | None = None,
    spec: str | None = None,
) -> Plan:
    """Make a plan keeping ``widths`` channels per group (array in space order, or ``{group name: width}``).

    Channels are the top-k by ``importance(model, space, group)`` or, when ``importance`` is None, the first k
    (slimmable / PruningNet convention).
    """
    if isinstance(widths, Mapping):
        wmap = dict(widths)
    else:
        wmap = {g.name: int(w) for g, w in zip(space.groups, widths, strict=True)}
    plan = Plan(model=spec, input_shape=list(space.input_shape))
    for g in space.groups:
        if g.name not in wmap:
            continue
        w = int(wmap[g.name])
        if w >= g.channels:
            continue
        scores = importance(model, space, g) if importance is not None else None
        plan.groups[g.name] = GroupChoice(channels=g.channels, keep=select_channels(g, w, scores))
    return plan


def plan_from_ratio(
    space: ChannelSpace,
    ratio: float | Mapping[str, float],
    *,
    model: nn.Module | None = None,
    importance: Importance | None = None,
    multiple: int = 1,
    min_channels: int = 1,
    spec: str | None = None,
) -> Plan:
    """Prune a fraction ``ratio`` (in [0, 1)) of every group (or per group by name), keeping at least
    ``min_channels`` and rounding kept counts to ``multiple``.

    Raises:
        PrunekitError: a ratio outside [0, 1).
    """
    ratios = ratio if isinstance(ratio, Mapping) else {g.name: float(ratio) for g in space.groups}
    for name, r in ratios.items():
        if not 0.0 <= r < 1.0:
            raise PrunekitError(f"pruning ratio for {name!r} must be in [0, 1), got {r}")
    widths = {
        g.name: round_width(
            g.channels * (1.0 - ratios[g.name]), g.channels, multiple=multiple, min_channels=min_channels
        )
        for g in space.groups
        if g.name in ratios
    }
    return plan_from_widths(space, widths, model=model, importance=importance, spec=spec)


# ---------------------------------------------------------------------- apply / mask
def apply(model: nn.Module, plan: Plan, space: ChannelSpace | None = None) -> nn.Module:
    """Return a physically smaller copy of ``model`` realising ``plan`` (``model`` is not modified).

    Every slot of every pruned channel (conv/linear weights and biases, BN parameters and running statistics,
    consumer input channels, depthwise groups, grouped-conv blocks) is sliced using the coupling torch-pruning
    found when ``space`` was built; ``space`` is built from ``plan.input_shape`` when not given.

    Raises:
        PrunekitError: the plan does not fit the model (see :meth:`Plan.validate_against`), or a member layer
            type cannot be sliced.
    """
    if space is None:
        if not plan.input_shape:
            raise PrunekitError("plan has no input_shape and no ChannelSpace was given")
        space = ChannelSpace.build(model, tuple(plan.input_shape), quiet=True)
    plan.validate_against(space)
    removed: dict[tuple[str, str], set[int]] = {}
    for g in space.groups:
        dead = set(plan.pruned(g))
        if not dead:
            continue
        for mem in g.members:
            pos = {p for p, r in zip(mem.positions, mem.root, strict=True) if r in dead}
            removed.setdefault((mem.module, mem.dim), set()).update(pos)
    new = clone_model(model)
    for (name, dim), gone in removed.items():
        _slice(new.get_submodule(name), name, dim, gone, depthwise=space.layers[name].depthwise)
    return new


def _keep(size: int, gone: set[int]) -> torch.Tensor:
    return torch.tensor([i for i in range(size) if i not in gone], dtype=torch.long)


def _select(param: nn.Parameter | None, dim: int, keep: torch.Tensor) -> nn.Parameter | None:
    if param is None:
        return None
    return nn.Parameter(
        param.data.index_select(dim, keep.to(param.device)).clone(), requires_grad=param.requires_grad
    )


@torch.no_grad()
def _slice(mod: nn.Module, name: str, dim: str, gone: set[int], *, depthwise: bool = False) -> None:
    """Remove channel positions ``gone`` from ``mod`` along ``dim`` (``out`` or ``in``), in place.

    ``depthwise`` comes from the traced shape table: slicing a grouped conv's input can make ``groups ==
    in_channels`` afterwards, so the live module cannot tell."""
    if isinstance(mod, nn.Conv1d | nn.Conv2d):
        if dim == "out":
            keep = _keep(mod.out_channels, gone)
            mod.weight = _select(mod.weight, 0, keep)
            mod.bias = _select(mod.bias, 0, keep)
            if depthwise:
                mod.in_channels = mod.groups = len(keep)
            mod.out_channels = len(keep)
        else:
            keep = _keep(mod.in_channels, gone)
            per_in = mod.in_channels // mod.groups
            local = keep[keep < per_in] if mod.groups > 1 else keep  # balanced: same local columns per block
            mod.weight = _select(mod.weight, 1, local)
            mod.in_channels = len(local) * mod.groups
    elif isinstance(mod, nn.Linear):
        if dim == "out":
            keep = _keep(mod.out_features, gone)
            mod.weight = _select(mod.weight, 0, keep)
            mod.bias = _select(mod.bias, 0, keep)
            mod.out_features = len(keep)
        else:
            keep = _keep(mod.in_features, gone)
            mod.weight = _select(mod.weight, 1, keep)
            mod.in_features = len(keep)
    elif isinstance(mod, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d):
        keep = _keep(mod.num_features, gone)
        mod.weight, mod.bias = _select(mod.weight, 0, keep), _select(mod.bias, 0, keep)
        if mod.running_mean is not None:
            mod.running_mean = mod.running_mean.index_select(0, keep).clone()
            mod.running_var = mod.running_var.index_select(0, keep).clone()
        mod.num_features = len(keep)
    elif isinstance(mod, nn.PReLU) and mod.num_parameters > 1:
        keep = _keep(mod.num_parameters, gone)
        mod.weight = _select(mod.weight, 0, keep)
        mod.num_parameters = len(keep)
    elif any(True for _ in mod.parameters(recurse=False)):
        raise PrunekitError(
            f"cannot prune layer {name} ({type(mod).__name__}); supported: Conv, Linear, BatchNorm, PReLU"
        )


class MaskSet:
    """Per-parameter multiplicative masks (1 = kept, 0 = pruned) and BN buffers to hold at zero.

    ``apply_(model)`` zeroes pruned weights/biases/BN statistics in place; ``mask_grads_(model)`` zeroes their
    gradients. Methods call ``apply_`` after every optimiser step so momentum and weight decay cannot revive
    pruned weights.
    """

    def __init__(self) -> None:
        self.params: dict[str, torch.Tensor] = {}
        self.bn_channels: dict[str, torch.Tensor] = {}

    def _mask_for(self, model: nn.Module, pname: str) -> torch.Tensor:
        if pname not in self.params:
            p = model.get_parameter(pname)
            self.params[pname] = torch.ones_like(p, dtype=torch.bool, device="cpu")
        return self.params[pname]

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
        total = sum(m.numel() for m in self.params.values())
        return float(sum(m.sum().item() for m in self.params.values()) / total) if total else 1.0

    def state_dict(self) -> dict:
        return {"params": dict(self.params), "bn_channels": dict(self.bn_channels)}

    def load_state_dict(self, state: dict) -> None:
        self.params = dict(state["params"])
        self.bn_channels = dict(state["bn_channels"])


def build_masks(model: nn.Module, plan: Plan, space: ChannelSpace) -> MaskSet:
    """Masks that zero every slot of the pruned channels: producer rows, BN affine + statistics, consumer columns.

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
            if not pos:
                continue
            mod = model.get_submodule(mem.module)
            idx = torch.tensor(pos, dtype=torch.long)
            prefix = mem.module + "."
            if isinstance(mod, nn.Conv1d | nn.Conv2d | nn.Linear):
                if mem.dim == "out":
                    masks._mask_for(model, prefix + "weight")[idx] = False
                    if mod.bias is not None:
                        masks._mask_for(model, prefix + "bias")[idx] = False
                elif isinstance(mod, nn.Linear) or mod.groups == 1:
                    masks._mask_for(model, prefix + "weight")[:, idx] = False
                else:  # grouped conv input: position -> (block, local column)
                    per_in = mod.in_channels // mod.groups
                    per_out = mod.out_channels // mod.groups
                    w = masks._mask_for(model, prefix + "weight")
                    for p in pos:
                        blk, local = divmod(p, per_in)
                        w[blk * per_out : (blk + 1) * per_out, local] = False
            elif isinstance(mod, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d):
                for pn in ("weight", "bias"):
                    if getattr(mod, pn, None) is not None:
                        masks._mask_for(model, prefix + pn)[idx] = False
                if getattr(mod, "running_mean", None) is not None:
                    dead = masks.bn_channels.setdefault(
                        mem.module, torch.zeros(mod.num_features, dtype=torch.bool)
                    )
                    dead[idx] = True
            elif isinstance(mod, nn.PReLU) and mod.num_parameters > 1:
                masks._mask_for(model, prefix + "weight")[idx] = False
            elif any(True for _ in mod.parameters(recurse=False)):
                raise PrunekitError(
                    f"cannot mask layer {mem.module} ({type(mod).__name__}); supported: Conv, Linear, BatchNorm, PReLU"
                )
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
