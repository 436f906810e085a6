"""Plan: one pruning choice as plain data (JSON round-trip), its validation against a space, and plan builders.

A :class:`Plan` records, for each channel group of a :class:`~prunekit.space.channels.ChannelSpace`, the kept channel
indices; optionally, per layer, a weight density (with a block shape) and a conv group count. It round-trips through
JSON, so a plan saved with its model spec rebuilds the pruned network from the original architecture without pickled
modules (:func:`~prunekit.space.realise.rebuild`). Realising a plan on a model is :mod:`prunekit.space.realise`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from prunekit.errors import PrunekitError, validation_message
from prunekit.space.channels import ChannelGroup, ChannelSpace, LayerShape
from prunekit.space.widths import round_width, select_channels

PLAN_VERSION = 2
"""Plan file format. 2 (this version): ``LayerChoice`` densities, blocks, conv groups and permutations are realised
by ``apply`` / ``mask``. 1: the same fields existed but nothing realised them; a v1 plan is read as v2 without its
``layers`` (exactly what v1 built), so every v1 run directory still evaluates."""

log = logging.getLogger(__name__)


class GroupChoice(BaseModel):
    """Kept channels of one group: ``keep`` are sorted indices in ``[0, channels)``."""

    model_config = ConfigDict(extra="forbid")
    channels: int = Field(gt=0)
    keep: list[int]


class LayerChoice(BaseModel):
    """Weight-level choices of one conv / linear layer, applied after channel pruning.

    Attributes:
        density: fraction of the layer's whole weight blocks kept (JCW weight pruning; ALCS's SIMD-structured
            sparsity), ``None`` = dense. The blocks of largest ``criterion`` norm are kept, from the weights the
            layer has after channel pruning (and group conversion); see :mod:`prunekit.space.sparsity` for the
            block layout and the edge rule. Not for depthwise convs (JCW leaves them dense).
        block: block shape ``(out_channels, in_positions)``; ``None`` = :data:`~prunekit.space.sparsity.DEFAULT_BLOCK`
            ``(4, 1)`` (4 filters share one pattern).
        criterion: block norm ranking the blocks, ``"l1"`` (``None``, JCW's search-time rule) or ``"l2"``.
        conv_groups: ``G``: the conv becomes a group convolution with ``G`` groups (GConv), ``None`` = unchanged.
            Only for convs with ``groups == 1``; ``G`` must divide the kept input and output channels.
        perm_in: the order in which the kept input channels (indices ``0..C_in'-1`` after channel pruning) enter
            the group conv: channels ``perm_in[g*C_in'/G : (g+1)*C_in'/G]`` form group ``g``. ``None`` = identity.
        perm_out: likewise for output channels: group ``g`` produces kept output channels
            ``perm_out[g*C_out'/G : (g+1)*C_out'/G]``. ``None`` = identity.
    """

    model_config = ConfigDict(extra="forbid")
    density: float | None = Field(default=None, gt=0.0, le=1.0)
    block: tuple[int, int] | None = None
    criterion: Literal["l1", "l2"] | None = None
    conv_groups: int | None = Field(default=None, ge=1)
    perm_in: list[int] | None = None
    perm_out: list[int] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> LayerChoice:
        if self.block is not None and min(self.block) < 1:
            raise ValueError(f"block sizes must be >= 1, got {self.block}")
        if (self.perm_in is not None or self.perm_out is not None) and self.conv_groups is None:
            raise ValueError("perm_in / perm_out need conv_groups")
        for name, perm in (("perm_in", self.perm_in), ("perm_out", self.perm_out)):
            if perm is not None and sorted(perm) != list(range(len(perm))):
                raise ValueError(f"{name} must be a permutation of 0..{len(perm) - 1}")
        return self

    @property
    def sparse(self) -> bool:
        """True when the layer keeps fewer than all of its weight blocks."""
        return self.density is not None and self.density < 1.0

    @property
    def grouped(self) -> bool:
        """True when the layer becomes a group convolution (``conv_groups > 1``)."""
        return self.conv_groups is not None and self.conv_groups > 1

    @property
    def p(self) -> int:
        """The block norm as ``p`` (1 or 2) for :func:`~prunekit.space.sparsity.block_mask`."""
        return 2 if self.criterion == "l2" else 1


class Plan(BaseModel):
    """One pruning choice over a model's channel space (plain data, JSON round-trip)."""

    model_config = ConfigDict(extra="forbid")
    version: int = PLAN_VERSION
    model: str | None = None
    input_shape: list[int] = Field(default_factory=list)
    groups: dict[str, GroupChoice] = Field(default_factory=dict)
    layers: dict[str, LayerChoice] = Field(default_factory=dict)
    meta: dict = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _migrate(cls, data: object) -> object:
        """Read older plan files: v1 plans lose ``layers`` (v1 never realised them; see :data:`PLAN_VERSION`)."""
        if not isinstance(data, dict):
            return data
        version = data.get("version", PLAN_VERSION)
        if isinstance(version, int) and version < 1:
            raise ValueError(f"plan version must be 1 or 2, got {version}")
        if isinstance(version, int) and version > PLAN_VERSION:
            raise ValueError(
                f"plan version {version} is newer than this prunekit reads ({PLAN_VERSION}); upgrade prunekit"
            )
        if version == 1:
            data = {**data, "version": PLAN_VERSION}
            if data.pop("layers", None):
                log.warning("plan v1: its per-layer options were never realised in v1 and are ignored")
        return data

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

    def removed(self, space: ChannelSpace) -> dict[tuple[str, str], set[int]]:
        """``{(module, dim): positions}`` this plan removes, for every layer slot touched by a pruned channel."""
        removed: dict[tuple[str, str], set[int]] = {}
        for g in space.groups:
            dead = set(self.pruned(g))
            if not dead:
                continue
            for mem in g.members:
                pos = {p for p, r in zip(mem.positions, mem.root, strict=True) if r in dead}
                if pos:
                    removed.setdefault((mem.module, mem.dim), set()).update(pos)
        return removed

    def layer_widths(
        self, space: ChannelSpace, name: str, removed: dict[tuple[str, str], set[int]] | None = None
    ) -> tuple[int, int]:
        """``(in, out)`` channels (features for a linear) of layer ``name`` after this plan's channel pruning."""
        removed = self.removed(space) if removed is None else removed
        s = space.layers[name]
        c_out = s.out_size - len(removed.get((name, "out"), ()))
        c_in = c_out if s.depthwise else s.in_size - len(removed.get((name, "in"), ()))
        return c_in, c_out

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
        removed = self.removed(space) if self.layers else {}
        for name, lc in self.layers.items():
            if name not in space.layers:
                raise PrunekitError(f"plan names layer {name!r}, which the model does not have")
            _validate_layer(space, name, lc, self.layer_widths(space, name, removed))


def without_densities(plan: Plan) -> Plan:
    """A copy of ``plan`` with every weight density removed (channels, conv groups and permutations kept): the
    dense network a sparse plan's ADMM training starts from."""
    layers = {}
    for name, lc in plan.layers.items():
        rest = lc.model_copy(update={"density": None, "block": None, "criterion": None})
        if rest != LayerChoice():
            layers[name] = rest
    return plan.model_copy(update={"layers": layers}, deep=True)


def takes_density(s: LayerShape) -> bool:
    """A layer can take a block weight density: a conv or linear, not depthwise (JCW leaves those dense), not a
    transposed conv (its weight is ``[C_in, C_out, k...]``)."""
    return s.kind in ("conv", "linear") and not s.depthwise and not s.transposed


def can_regroup(s: LayerShape) -> bool:
    """A layer can become a group conv: a dense (``groups == 1``), non-transposed conv."""
    return s.kind == "conv" and not s.depthwise and s.conv_groups == 1 and not s.transposed


def _validate_layer(space: ChannelSpace, name: str, lc: LayerChoice, widths: tuple[int, int]) -> None:
    """Raise a one-line PrunekitError when ``lc`` cannot be realised on layer ``name`` (``widths`` after pruning)."""
    s = space.layers[name]
    if s.kind not in ("conv", "linear"):
        raise PrunekitError(
            f"plan sets weight options on {name!r} ({s.kind}); only convs and linears take them"
        )
    if lc.density is not None and not takes_density(s):
        what = "a depthwise conv; depthwise convs stay dense" if s.depthwise else "a transposed conv"
        raise PrunekitError(f"plan sets a density on {name!r}, {what}")
    if lc.conv_groups is None:
        return
    if not can_regroup(s):
        raise PrunekitError(
            f"plan sets conv_groups on {name!r}, which is not a dense conv (groups == 1); only those become "
            "group convs"
        )
    c_in, c_out = widths
    legal = legal_conv_groups(c_in, c_out)
    if lc.conv_groups not in legal:
        raise PrunekitError(
            f"conv_groups={lc.conv_groups} on {name!r} does not divide its {c_in} input and {c_out} output "
            f"channels after channel pruning; legal: {', '.join(map(str, legal))}"
        )
    for what, perm, size in (("perm_in", lc.perm_in, c_in), ("perm_out", lc.perm_out, c_out)):
        if perm is not None and len(perm) != size:
            raise PrunekitError(
                f"{what} of {name!r} has {len(perm)} entries; the layer keeps {size} channels after pruning"
            )


def legal_conv_groups(c_in: int, c_out: int) -> list[int]:
    """Group counts a dense conv with ``c_in`` input and ``c_out`` output channels can take: the common divisors."""
    return [g for g in range(1, min(c_in, c_out) + 1) if c_in % g == 0 and c_out % g == 0]


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


def add_weight_choices(
    plan: Plan,
    space: ChannelSpace,
    *,
    density: float | None = None,
    block: tuple[int, int] | None = None,
    conv_groups: int | None = None,
    permute: bool = True,
    seed: int = 0,
) -> tuple[Plan, dict[str, str]]:
    """A copy of ``plan`` with the same weight-level choice on every eligible layer (``prunekit check``).

    Eligible: convs and linears that do not produce a model output. ``density`` (with ``block``) goes to every
    eligible layer but depthwise convs; ``conv_groups`` to every dense conv (``groups == 1``) whose kept input and
    output channels it divides, with random permutations (seeded) when ``permute`` so that both the folded orders
    and the gathers are exercised.

    Returns:
        ``(plan, skipped)``: ``skipped[layer]`` says why a conv got no ``conv_groups``.
    """
    out = plan.model_copy(deep=True)
    rng = np.random.default_rng(seed)
    removed = out.removed(space)
    skipped: dict[str, str] = {}
    outputs = set(space.output_layers)
    for name, s in space.layers.items():
        if s.kind not in ("conv", "linear") or name in outputs:
            continue
        lc = out.layers.get(name, LayerChoice()).model_copy()
        if density is not None and takes_density(s):
            lc.density, lc.block = density, block
        if conv_groups is not None and conv_groups > 1 and s.kind == "conv":
            c_in, c_out = out.layer_widths(space, name, removed)
            if not can_regroup(s):
                skipped[name] = "a grouped, depthwise or transposed conv"
            elif conv_groups not in legal_conv_groups(c_in, c_out):
                skipped[name] = f"{conv_groups} does not divide its {c_in} input / {c_out} output channels"
            else:
                lc.conv_groups = conv_groups
                if permute:
                    lc.perm_in = [int(i) for i in rng.permutation(c_in)]
                    lc.perm_out = [int(i) for i in rng.permutation(c_out)]
        if lc.density is not None or lc.conv_groups is not None:
            out.layers[name] = lc
    return out, skipped


def weight_options(space: ChannelSpace, plan: Plan | None = None) -> dict[str, dict]:
    """Per conv / linear layer, which weight-level choices it takes (after ``plan``'s channel pruning, if given).

    Returns:
        ``{layer: {"takes_density": bool, "conv_groups": [legal G > 1], "output": bool}}``; ``output`` marks
        layers producing a model output (``prunekit check`` leaves those dense). The rules are
        :meth:`Plan.validate_against`'s.
    """
    plan = plan or Plan()
    removed = plan.removed(space)
    outputs = set(space.output_layers)
    opts = {}
    for name, s in space.layers.items():
        if s.kind not in ("conv", "linear"):
            continue
        groups: list[int] = []
        if can_regroup(s):
            groups = [g for g in legal_conv_groups(*plan.layer_widths(space, name, removed)) if g > 1]
        opts[name] = {"takes_density": takes_density(s), "conv_groups": groups, "output": name in outputs}
    return opts
