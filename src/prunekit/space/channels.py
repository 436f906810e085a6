"""ChannelSpace: the prunable channel groups of any CNN, found by tracing.

A *channel group* is a set of (layer, dimension) slots that must keep the same channel indices: a conv's output
channels, the BN after it, a depthwise conv running on them, the input columns of every consumer, every tensor added
to them by a residual add, their slice of a concatenation, the ``C*H*W`` input features of a Linear after flatten.
Coupling is computed by torch-pruning's :class:`~torch_pruning.DependencyGraph` (Fang et al., "DepGraph: Towards Any
Structural Pruning", CVPR 2023); this module turns its groups into plain, named, validated data that every pruning
method shares, plus the per-layer shape table used by the analytic cost model (:mod:`prunekit.cost.macs`).

Each torch-pruning group is split into the sets of channels that are carried by the same layers (``_split_parts``):
a residual add over a concatenation (``z = cat([s, f(s)]); z + g(z)``) ties g's output channels ``[0, c)`` to s's
producer and ``[c, 2c)`` to f's, so torch-pruning's group rooted at g holds two channel groups, one per producer;
channel slots that carry several of torch-pruning's root channels (a Ghost module's ``cat([a, cheap(a)])`` added to
a shortcut) make those roots one channel. A member may therefore carry a group's channels more than once
(``Member.mult``), but always every channel of its group the same number of times, so layer widths stay affine in
the group widths (:mod:`prunekit.cost.macs`).

Groups that must not be pruned are not in the space, and ``space.dropped`` says why (``"name: reason"``):

* channels that reach a model output -- a classifier's logits, a SqueezeNet-style 1x1 conv before global pooling,
  a segmentation map -- found by walking the traced graph back from every output through channel-preserving ops;
* channels that pass through an op whose channel arithmetic is fixed in the model's forward, so the pruned model
  would compute something else or fail: a channel split into fixed sizes (``torch.split(x, [a, b], 1)``,
  ``chunk``), a channel slice that keeps part of its input (``cat([a, b], 1)[:, :n]``), a reshape that regroups
  channels (a channel shuffle's ``view -> transpose -> view``; torch-pruning's reshape mapping is bypassed there, it
  fails on ShuffleNetV2), a parameter outside any layer (a layer-scale gamma);
* layers that cannot be sliced exactly as they are masked (:func:`prunekit.space.layers.slot_problem`: LayerNorm
  over channels, part of a GroupNorm, a grouped transposed conv, unknown layer types);
* channels torch-pruning maps inconsistently (an index outside a member's dimension, two groups claiming a slot).

GroupNorm members are supported by keeping or pruning whole GroupNorm groups: the group's channels are numbered so
that a GroupNorm group is one local position across ``blocks`` blocks, and the block balance every plan keeps
(:func:`prunekit.space.select_channels`) keeps whole GroupNorm groups.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch_pruning as tp
from torch.overrides import TorchFunctionMode

from prunekit.errors import PrunekitError
from prunekit.space.layers import slot_problem

log = logging.getLogger(__name__)

TAGS = ("first", "last", "strided", "residual", "depthwise", "expansion", "grouped")
OUTPUT_REASON = "channels reach the model output"
_SPLIT_DEPTHWISE = (
    "a depthwise op ties channels that a concatenation splits into several groups (e.g. a Ghost module's "
    "cat([x1, cheap(x1)])): pruning them apart is not reliable"
)
_MIXING = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.Linear)
_CONV = (nn.Conv1d, nn.Conv2d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d)
_WEIGHTED = (*_CONV, *_CONV_T, nn.Linear)  # layers that produce channels: the roots of torch-pruning's groups
_NORM_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)


def is_depthwise(m: nn.Module) -> bool:
    """True for a conv whose every group has one input channel and that runs on all its input channels."""
    return isinstance(m, nn.Conv2d | nn.Conv1d) and m.groups > 1 and m.groups == m.in_channels


@dataclass(frozen=True)
class Member:
    """One slot of a channel group.

    Attributes:
        module: qualified module name (``model.get_submodule(module)``).
        dim: ``"out"`` (output channels / features; BN-like layers are "out" members) or ``"in"`` (input channels).
        positions: indices along that dimension that belong to the group, shape ``[channels * mult]``.
        root: for each position, the group channel it carries (same length as ``positions``); every channel of the
            group ``mult`` times. ``mult > 1`` for a Linear after flatten, where one channel feeds ``H*W`` input
            features, and for a layer fed one channel at two offsets (a Ghost module's primary and cheap halves
            added to a shortcut).
    """

    module: str
    dim: str
    positions: tuple[int, ...]
    root: tuple[int, ...]

    @property
    def mult(self) -> int:
        return len(self.positions) // max(1, len(set(self.root)))


@dataclass
class ChannelGroup:
    """A set of coupled channel slots that are pruned together.

    Attributes:
        index: position in :attr:`ChannelSpace.groups`.
        name: stable name, the root layer's qualified name (the first conv/linear producing these channels).
        channels: number of channels C (prunable units).
        members: every (module, dim) slot, see :class:`Member`.
        tags: subset of ``first, last, strided, residual, depthwise, expansion, grouped``.
        blocks: number of channel blocks the group must stay balanced across (kept channels are the same local
            positions in every block of ``C / blocks``), else 1: ``g`` when a grouped conv with ``1 < g < C``
            touches it; the GroupNorm group size ``C / G`` when a GroupNorm with ``G`` groups does (the group's
            channels are then numbered ``rank * G + gn_group``, so one local position is one whole GroupNorm group
            and balanced plans keep or prune whole GroupNorm groups, see :func:`_balance`).
        spatial: ``{module: (H, W)}`` output spatial size each conv member runs at (for the traced input).
    """

    index: int
    name: str
    channels: int
    members: list[Member]
    tags: frozenset[str]
    blocks: int = 1
    spatial: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def member_modules(self, dim: str | None = None) -> list[str]:
        return [m.module for m in self.members if dim is None or m.dim == dim]

    def __repr__(self) -> str:
        return f"ChannelGroup({self.name!r}, C={self.channels}, members={len(self.members)}, tags={sorted(self.tags)})"


@dataclass
class LayerShape:
    """Shape facts of one parametrised or MAC-counting layer, as traced.

    Attributes:
        name: qualified module name. kind: ``conv`` (a transposed conv too), ``linear``, ``norm`` or ``other``.
        in_size, out_size: channels (conv) / features (linear) / normalised channels (norm).
        kernel: kernel elements ``kh*kw`` (conv), 1 otherwise. conv_groups: the conv's ``groups``.
        depthwise: :func:`is_depthwise`. positions: spatial positions the kernel is applied at -- output ``H*W``
            for a conv, *input* ``H_in*W_in`` for a transposed conv (each input position scatters a ``k`` kernel:
            ``MACs = H_in*W_in * k * C_in * C_out / groups``, as :mod:`torch.utils.flop_counter` counts it) -- or
            rows per sample (linear: ``numel / out_features`` of the output, per sample). has_bias: bias present.
        params: parameter count of the whole module (all its own parameters).
        out_spatial: output spatial shape. transposed: a ``ConvTranspose`` (weight ``[C_in, C_out / groups, k...]``,
            so weight-level options -- densities, conv groups -- do not apply to it).
    """

    name: str
    kind: str
    in_size: int
    out_size: int
    kernel: int = 1
    conv_groups: int = 1
    depthwise: bool = False
    positions: int = 1
    has_bias: bool = False
    params: int = 0
    out_spatial: tuple[int, ...] = ()
    stride: int = 1
    transposed: bool = False


def _first_tensor(x):
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, list | tuple):
        for v in x:
            t = _first_tensor(v)
            if t is not None:
                return t
    if isinstance(x, dict):
        for v in x.values():
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def _all_tensors(x) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, list | tuple):
        return [t for v in x for t in _all_tensors(v)]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _all_tensors(v)]
    return []


class ChannelSpace:
    """The prunable channel groups of a model, plus its per-layer shape table.

    Build with :meth:`build`. Groups are ordered by their root layer's position in ``model.named_modules()``.

    Attributes:
        groups: list of :class:`ChannelGroup`. layers: ``{name: LayerShape}`` for every conv/linear/norm layer and
        every other module that owns parameters. input_shape: the traced input shape ``(N, C, H, W)``.
        output_layers: names of layers whose output is a model output (never pruned on the output side).
        total_params: parameter count of the model.
    """

    def __init__(self) -> None:
        self.quiet = False
        self.groups: list[ChannelGroup] = []
        self.layers: dict[str, LayerShape] = {}
        self.input_shape: tuple[int, ...] = ()
        self.example_inputs: Any = None
        self.output_layers: list[str] = []
        self.total_params: int = 0
        self.dropped: list[str] = []
        self._output_reach: set[str] = set()
        self._by_name: dict[str, ChannelGroup] = {}
        self.dg: tp.DependencyGraph | None = None
        self.roots: dict[str, nn.Module] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, model: nn.Module, input_shape: Any, *, quiet: bool = False) -> ChannelSpace:
        """Trace ``model`` once on an input of ``input_shape`` ``(N, C, H, W)`` and build its channel space.

        ``input_shape`` may also be example inputs: a tensor, a tuple of tensors (positional arguments of
        ``forward``) or a dict (keyword arguments); ``input_shape`` is then the first tensor's shape and
        ``example_inputs`` keeps them (for the cost of a model with several inputs). The model may return a tensor,
        a tuple or a dict; every output tensor's channels are protected.

        The model is traced in eval mode (BN statistics are not touched) and left in the mode it was in.

        Raises:
            PrunekitError: the model cannot run on that input, or cannot be traced.
        """
        space = cls()
        space.quiet = quiet
        example = _example(input_shape)
        first = _all_tensors(example)
        if not first:
            raise PrunekitError("example inputs hold no tensor: give a tensor, a tuple or a dict of tensors")
        space.input_shape = tuple(first[0].shape)
        space.example_inputs = example if not isinstance(example, torch.Tensor) else None
        name_of = {m: n for n, m in model.named_modules()}
        was_training = model.training
        model.eval()
        try:
            records, out_ids = _record_shapes(model, example)
            space.layers = _layer_table(model, records)
            direct = {n for n, r in records.items() if r["out_id"] in out_ids}
            with torch.enable_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # a tuple: torch-pruning calls model(*example_inputs), and a bare batch-1 tensor would be unpacked
                # into an unbatched (C, H, W) input (convs accept it; in-place ops after them then hide the conv)
                dg = _Graph().build_dependency(
                    model,
                    example_inputs=example if isinstance(example, dict | tuple) else (example,),
                    verbose=False,
                )
        except PrunekitError:
            raise
        except Exception as exc:
            raise PrunekitError(
                f"cannot trace the model on input {space.input_shape}: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200] if str(exc) else ''} (check --input-size / --in-chans)"
            ) from None
        finally:
            model.train(was_training)
        producers, reaching = _output_reach(dg, name_of)
        order = {n: i for i, (n, _) in enumerate(model.named_modules())}
        space.output_layers = sorted(direct | producers, key=lambda n: order.get(n, 1 << 30))
        space._output_reach = reaching | direct
        space.dg = dg
        space.total_params = sum(p.numel() for p in model.parameters())
        space._collect_groups(model, dg, name_of)
        return space

    def _collect_groups(self, model: nn.Module, dg: _Graph, name_of: dict) -> None:
        """Turn torch-pruning's groups into validated :class:`ChannelGroup` s (``self.groups``, ``self.dropped``).

        Every torch-pruning group is split into parts (:func:`_split_parts`); a part found again from another root
        is skipped; a part is kept unless it reaches an output, passes a hazardous op (:func:`_hazard`) or fails
        :meth:`_validate`.
        """
        order = {n: i for i, (n, _) in enumerate(model.named_modules())}
        outputs = set(self.output_layers) | self._output_reach
        seen: set[frozenset] = set()
        claimed: dict[tuple[str, str], set[int]] = defaultdict(set)
        kept: list[tuple[str, nn.Module, list[Member], int]] = []
        for group in self._groups_of(dg, name_of):
            root_mod = group[0].dep.target.module
            slots, hazards = _group_slots(group, dg, name_of)
            parts = _split_parts(slots)
            split_depthwise = len(parts) > 1 and any(
                self.layers.get(slot[0]) is not None and self.layers[slot[0]].depthwise
                for part in parts
                for slot in part.slots
            )
            for part in parts:
                if part.key in seen:
                    continue  # the same coupling, found again from another root layer
                seen.add(part.key)
                mlist = _members(part.slots, order)
                name = _group_name(mlist)
                if any(m.module in outputs and m.dim == "out" for m in mlist):
                    # classifier logits, a 1x1 conv head before global pooling, a segmentation map: never pruned
                    self._drop(name, OUTPUT_REASON, warn=False)
                    continue
                hazard = next((hazards[r] for r in sorted(part.roots) if r in hazards), None)
                problem = hazard or (_SPLIT_DEPTHWISE if split_depthwise else None)
                problem = problem or self._validate(mlist, claimed, model)
                blocks = 1
                if not problem:
                    mlist, blocks, problem = _balance(mlist, model)
                if problem:
                    self._drop(name, problem, warn=not self.quiet)
                    continue
                for m in mlist:
                    claimed[(m.module, m.dim)].update(m.positions)
                kept.append((name, root_mod, mlist, blocks))

        kept = self._consistent_norms(kept, dg, name_of)
        kept.sort(key=lambda t: order.get(t[0].split("@")[0], 1 << 30))
        for i, (name, root_mod, mlist, blocks) in enumerate(kept):
            g = ChannelGroup(
                index=i,
                name=name,
                channels=len(set(mlist[0].root)),
                members=mlist,
                tags=frozenset(),
                blocks=blocks,
            )
            g.spatial = {
                m.module: self.layers[m.module].out_spatial
                for m in mlist
                if m.module in self.layers and self.layers[m.module].kind == "conv"
            }
            self.groups.append(g)
            self.roots[name] = root_mod
        self._by_name = {g.name: g for g in self.groups}
        for g in self.groups:
            g.tags = frozenset(self._tags(g, model))

    def _groups_of(self, dg: _Graph, name_of: dict):
        """torch-pruning's groups, one per root layer (its ``get_all_groups`` loop), with a root whose group
        torch-pruning cannot map (it raises, e.g. IndexError in a split index mapping) dropped with the reason
        instead of failing the whole build."""
        visited: set[nn.Module] = set()
        ignored = set(getattr(dg, "IGNORED_LAYERS_IN_TRACING", []))
        for m in list(dg.module2node):
            if not isinstance(m, _WEIGHTED) or m in visited or m in ignored:
                continue
            pruner = dg.get_pruner_of_module(m)
            if pruner is None or pruner.get_out_channels(m) is None:
                continue
            try:
                group = dg.get_pruning_group(
                    m, pruner.prune_out_channels, list(range(pruner.get_out_channels(m)))
                )
            except Exception as exc:  # torch-pruning's index mappings fail on some split / reshape chains
                visited.add(m)
                reason = (
                    f"torch-pruning cannot map its channels ({type(exc).__name__} in its dependency graph)"
                )
                self._drop(name_of.get(m, type(m).__name__), reason, warn=not self.quiet)
                continue
            outs = [dep.target.module for dep, _ in group if dg.is_out_channel_pruning_fn(dep.handler)]
            visited.update(outs)
            if not ignored.intersection(outs):
                yield group

    def _consistent_norms(self, kept: list, dg: _Graph, name_of: dict) -> list:
        """Drop parts that split a layer from the norm right after it: a norm fed directly by one conv / linear
        normalises exactly that layer's channels, so both must be in the same group at the same positions. torch-
        pruning's index mapping can break that when a depthwise op and a concatenation meet (a Ghost module's cheap
        operation added to a shortcut); pruning such parts independently would not equal masking them."""
        where: dict[tuple[str, tuple[int, ...]], int] = {}
        for k, (_, _, mlist, _) in enumerate(kept):
            for m in mlist:
                if m.dim == "out":
                    where[(m.module, m.positions)] = k
        bad: set[int] = set()
        norm_types = (nn.modules.batchnorm._NormBase, nn.GroupNorm)
        module_of = {n: mod for mod, n in name_of.items()}
        for k, (_, _, mlist, _) in enumerate(kept):
            for m in mlist:
                mod = module_of.get(m.module)
                if m.dim != "out" or not isinstance(mod, norm_types):
                    continue
                node = dg.module2node.get(mod)
                ins = [n.module for n in node.inputs] if node is not None else []
                if len(ins) != 1 or not isinstance(ins[0], _WEIGHTED) or ins[0] not in name_of:
                    continue
                home = where.get((name_of[ins[0]], m.positions))
                if home != k:
                    bad.update({k} | ({home} if home is not None else set()))
        reason = (
            "a layer and the norm after it fall into different groups (a depthwise op meets a concatenation, e.g. "
            "a Ghost module's cheap operation added to a shortcut): they could not be pruned consistently"
        )
        for k in sorted(bad):
            self._drop(kept[k][0], reason, warn=not self.quiet)
        kept = [t for k, t in enumerate(kept) if k not in bad]
        return self._unsplit_depthwise(kept, dg, name_of)

    def _unsplit_depthwise(self, kept: list, dg: _Graph, name_of: dict) -> list:
        """Drop the parts among which one depthwise conv's channels are split (a concatenation feeding it, or
        feeding a residual add with it, as in a Ghost module's ``cat([x1, cheap(x1)])``): torch-pruning's split of
        such groups is not reliable (timm's GhostNet pruned != masked), so they are left out with the reason."""
        owners: dict[str, set[int]] = defaultdict(set)
        for k, (_, _, mlist, _) in enumerate(kept):
            for m in mlist:
                if (
                    m.dim == "out"
                    and self.layers.get(m.module) is not None
                    and self.layers[m.module].depthwise
                ):
                    owners[m.module].add(k)
        bad = {k for ks in owners.values() if len(ks) > 1 for k in ks}
        for k in sorted(bad):
            self._drop(kept[k][0], _SPLIT_DEPTHWISE, warn=not self.quiet)
        return [t for k, t in enumerate(kept) if k not in bad]

    def _drop(self, name: str, reason: str, *, warn: bool) -> None:
        """Record group ``name`` as left out for ``reason`` (once: parts of one coupling may share both)."""
        entry = f"{name}: {reason}"
        if entry in self.dropped:
            return
        self.dropped.append(entry)
        if warn:
            log.warning("channel group %s left unpruned: %s", name, reason)

    def _validate(self, mlist: list[Member], claimed: dict, model: nn.Module) -> str | None:
        """Why the part ``mlist`` cannot be pruned consistently, or None: an index outside a layer, a slot already
        in another group, a grouped conv fed by several groups, a layer :func:`slot_problem` refuses."""
        if not mlist:
            return "no layer members"
        for m in mlist:
            shape = self.layers.get(m.module)
            if shape is None:
                continue
            size = shape.out_size if m.dim == "out" else shape.in_size
            if max(m.positions) >= size:
                return f"{m.module}.{m.dim} index {max(m.positions)} outside its {size} channels"
            if claimed[(m.module, m.dim)] & set(m.positions):
                return f"{m.module}.{m.dim} is claimed by two groups"
            mod = model.get_submodule(m.module)
            if (
                isinstance(mod, _CONV)
                and mod.groups > 1
                and not shape.depthwise
                and m.positions != tuple(range(size))
            ):
                return f"{m.module} is a grouped conv fed by several groups (concat); its blocks cannot be balanced"
            problem = slot_problem(mod, m.module, m.dim, m.positions)
            if problem:
                return problem
        return None

    def _tags(self, g: ChannelGroup, model: nn.Module) -> set[str]:
        tags: set[str] = set()
        mods = {name: model.get_submodule(name) for name in g.member_modules()}
        producers = [
            n for n in g.member_modules("out") if isinstance(mods[n], _WEIGHTED) and not is_depthwise(mods[n])
        ]
        consumers = [n for n in g.member_modules("in") if isinstance(mods[n], _WEIGHTED)]
        if len(producers) >= 2:
            tags.add("residual")
        if any(is_depthwise(m) for m in mods.values()):
            tags.add("depthwise")
        if any(isinstance(m, _CONV) and m.groups > 1 and not is_depthwise(m) for m in mods.values()):
            tags.add("grouped")
        if any(self.layers[n].stride > 1 for n in producers + [n for n in mods if is_depthwise(mods[n])]):
            tags.add("strided")
        if any(n in self.output_layers for n in consumers):
            tags.add("last")
        claimed_in = {(m.module) for grp in self.groups for m in grp.members if m.dim == "in"}
        if any(n not in claimed_in and self.layers[n].kind == "conv" for n in producers):
            # the producer's input channels are in no group: it reads the model input (or frozen channels)
            tags.add("first")
        if "depthwise" in tags:
            pw_prod = [n for n in producers if self.layers[n].kernel == 1]
            pw_cons = [n for n in consumers if self.layers[n].kernel == 1 and not is_depthwise(mods[n])]
            if any(self.layers[n].out_size > self.layers[n].in_size for n in pw_prod) and any(
                self.layers[n].out_size < self.layers[n].in_size for n in pw_cons
            ):
                tags.add("expansion")
        return tags

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.groups)

    def __iter__(self):
        return iter(self.groups)

    def __getitem__(self, key: int | str) -> ChannelGroup:
        if isinstance(key, str):
            try:
                return self._by_name[key]
            except KeyError:
                raise PrunekitError(
                    f"no channel group named {key!r} (run `prunekit inspect` to list the groups)"
                ) from None
        return self.groups[key]

    def names(self) -> list[str]:
        return [g.name for g in self.groups]

    @property
    def channels(self) -> np.ndarray:
        """Full widths, shape ``[G]`` (int64)."""
        return np.array([g.channels for g in self.groups], dtype=np.int64)

    def tagged(self, tag: str) -> list[ChannelGroup]:
        return [g for g in self.groups if tag in g.tags]

    def summary_rows(self) -> list[dict]:
        """One dict per group: name, channels, blocks, tags, members (``module.dim`` strings)."""
        return [
            {
                "name": g.name,
                "channels": g.channels,
                "blocks": g.blocks,
                "tags": sorted(g.tags),
                "members": [f"{m.module}.{m.dim}" for m in g.members],
            }
            for g in self.groups
        ]


def _output_reach(dg: tp.DependencyGraph, name_of: dict) -> tuple[set[str], set[str]]:
    """The layers whose output channels reach a model output, found by walking the traced graph backwards.

    From every model output, walk back through everything that keeps channels apart (pooling, activations, dropout,
    BN, flatten/reshape, softmax, interpolation, add, concat, depthwise convs, unknown ops: conservatively) and stop
    at a layer that mixes channels (conv, linear): its output channels reach the output. Returns
    ``(producers, reaching)``: the names of those mixing layers, and of every named layer met on the way.
    """
    nodes = list(dg.module2node.values())
    sinks = [n for n in nodes if isinstance(n.module, tp.ops._OutputOp)] or [
        n for n in nodes if not n.outputs
    ]
    producers: set[str] = set()
    reaching: set[str] = set()
    seen: set[int] = set()
    stack = list(sinks)
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        mod = node.module
        name = name_of.get(mod) if isinstance(mod, nn.Module) else None
        if name:
            reaching.add(name)
        if isinstance(mod, _MIXING) and not is_depthwise(mod):
            if name:
                producers.add(name)
            continue  # channels are mixed here: what feeds this layer does not reach the output as channels
        stack.extend(node.inputs)
    return producers, reaching


def _example(x: Any) -> Any:
    """Example inputs from a shape (random normal), a tensor, or a tuple / list / dict of tensors."""
    if isinstance(x, torch.Tensor | dict):
        return x
    if isinstance(x, list | tuple) and x and all(isinstance(v, int) for v in x):
        return torch.randn(*x)
    if isinstance(x, list | tuple):
        return tuple(x)
    raise PrunekitError(
        f"example inputs must be a shape, a tensor, a tuple or a dict of tensors, got {type(x).__name__}"
    )


def call_model(model: nn.Module, example: Any) -> Any:
    """``model(example)``; a tuple is unpacked into positional arguments, a dict into keyword arguments."""
    if isinstance(example, tuple):
        return model(*example)
    if isinstance(example, dict):
        return model(**example)
    return model(example)


def _record_shapes(model: nn.Module, example: Any):
    """Run one forward with hooks; return per-leaf-module input/output facts and the ids of the model outputs."""
    records: dict[str, dict] = {}
    hooks = []

    def make_hook(name):
        def hook(mod, inputs, output):
            x = _first_tensor(inputs)
            y = _first_tensor(output)
            if y is None:
                return
            records[name] = {
                "in_shape": tuple(x.shape) if x is not None else (),
                "out_shape": tuple(y.shape),
                "out_id": id(y),
                "out_ref": y,
            }

        return hook

    for name, mod in model.named_modules():
        if name and (not list(mod.children()) or isinstance(mod, (*_WEIGHTED, *_NORM_TYPES))):
            hooks.append(mod.register_forward_hook(make_hook(name)))
    try:
        with torch.no_grad():
            out = call_model(model, example)
    finally:
        for h in hooks:
            h.remove()
    out_ids = {id(t) for t in _all_tensors(out)}
    for r in records.values():
        r.pop("out_ref", None)
    return records, out_ids


def _layer_table(model: nn.Module, records: dict[str, dict]) -> dict[str, LayerShape]:
    table: dict[str, LayerShape] = {}
    for name, mod in model.named_modules():
        if not name:
            continue
        own = sum(p.numel() for p in mod.parameters(recurse=False))
        rec = records.get(name)
        if isinstance(mod, _CONV + _CONV_T):
            if rec is None:
                continue  # not used in forward
            table[name] = _conv_shape(name, mod, rec, own)
        elif isinstance(mod, nn.Linear):
            if rec is None:
                continue
            rows = int(np.prod(rec["out_shape"][1:-1])) if len(rec["out_shape"]) > 2 else 1
            table[name] = LayerShape(
                name,
                "linear",
                mod.in_features,
                mod.out_features,
                positions=rows,
                has_bias=mod.bias is not None,
                params=own,
            )
        elif isinstance(mod, _NORM_TYPES):
            size = getattr(mod, "num_features", None) or getattr(mod, "num_channels", None)
            if size is None:
                size = int(np.prod(mod.normalized_shape))
            table[name] = LayerShape(name, "norm", size, size, params=own)
        elif own:
            table[name] = LayerShape(name, "other", 0, 0, params=own)
    return table


def _conv_shape(name: str, mod: nn.Module, rec: dict, params: int) -> LayerShape:
    """The shape row of a conv or transposed conv. A transposed conv applies its kernel at every *input* position
    (``MACs = H_in*W_in * k * C_in * C_out / groups``), a conv at every output position."""
    transposed = isinstance(mod, _CONV_T)
    at = tuple((rec["in_shape"] if transposed else rec["out_shape"])[2:])
    return LayerShape(
        name,
        "conv",
        mod.in_channels,
        mod.out_channels,
        kernel=int(np.prod(mod.kernel_size)),
        conv_groups=mod.groups,
        depthwise=is_depthwise(mod),
        positions=int(np.prod(at)) if at else 1,
        has_bias=mod.bias is not None,
        params=params,
        out_spatial=tuple(rec["out_shape"][2:]),
        stride=int(max(mod.stride)),
        transposed=transposed,
    )


# ---------------------------------------------------------------------------------------------- tracing
class _ShapeRecorder(TorchFunctionMode):
    """Records ``{grad_fn: (input shape, output shape)}`` of every torch op run under it.

    torch-pruning's traced graph knows a reshape only by its autograd node; this tells a flatten (channel-major, kept
    in order) from a channel shuffle's ``view`` (channels regrouped).
    """

    def __init__(self) -> None:
        super().__init__()
        self.shapes: dict = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        x = _first_tensor(args)
        if x is not None:
            for y in _all_tensors(out):
                if y.grad_fn is not None:
                    self.shapes[y.grad_fn] = (tuple(x.shape), tuple(y.shape))
        return out


def _regroups_channels(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> bool:
    """Whether a reshape ``in_shape -> out_shape`` (batch first) moves channels other than as a whole: True unless it
    leaves dim 1 alone (``[N, C, H, W] -> [N, C, H*W]``), flattens channel-major (``[N, C, H, W] -> [N, C*H*W]``) or
    unflattens into channels (``[N, C*H*W] -> [N, C, H, W]``) -- the reshapes torch-pruning maps correctly."""
    if len(in_shape) < 2 or len(out_shape) < 2 or in_shape[0] != out_shape[0]:
        return True
    if in_shape[1] == out_shape[1]:
        return False
    if len(out_shape) == 2 and out_shape[1] == math.prod(in_shape[1:]):
        return False
    return not (len(in_shape) == 2 and in_shape[1] == math.prod(out_shape[1:]))


class _Graph(tp.DependencyGraph):
    """torch-pruning's :class:`~torch_pruning.DependencyGraph`, with every reshape that regroups channels made opaque.

    torch-pruning maps a reshape by inferring channel counts around it, which is wrong for a channel shuffle's
    ``view [N, C, H, W] -> [N, g, C/g, H, W]`` and fails outright on ShuffleNetV2 (ZeroDivisionError). Such a reshape
    is retyped to an element-wise op before index mapping, so indices pass through it unchanged, and recorded in
    ``regrouped`` (``{op: (input shape, output shape)}``): :func:`_hazard` drops every group crossing it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.regrouped: dict[nn.Module, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def _trace(self, model, example_inputs, forward_fn, output_transform):
        recorder = _ShapeRecorder()
        with recorder:
            module2node = super()._trace(model, example_inputs, forward_fn, output_transform)
        for node in module2node.values():
            shapes = recorder.shapes.get(node.grad_fn)
            if node.type == tp.ops.OPTYPE.RESHAPE and shapes is not None and _regroups_channels(*shapes):
                node.type = tp.ops.OPTYPE.ELEMENTWISE
                self.regrouped[node.module] = shapes
        return module2node


# ---------------------------------------------------------------------------------------------- groups
Slot = tuple[str, str, int, int]  # (module, dim, position, channel)


def _group_slots(group, dg: _Graph, name_of: dict) -> tuple[list[Slot], dict[int, str]]:
    """``(slots, hazards)`` of one torch-pruning group.

    ``slots``: every distinct ``(module, dim, position, root channel)`` on a named layer (torch-pruning's pseudo ops
    -- add, concat, reshape -- carry no weights); a depthwise conv is one ``out`` member (its in == out).
    ``hazards``: ``{root channel: reason}`` for the root channels that pass through an op pruning would break (the
    most specific reason, in :func:`_hazard` order, when several ops are crossed).
    """
    slots: set[Slot] = set()
    found: dict[int, tuple[int, str]] = {}
    for item in group:
        mod = item.dep.target.module
        if not isinstance(mod, nn.Module) or mod not in name_of:
            hazard = _hazard(mod, dg)
            if hazard is not None:
                for r in item.root_idxs:
                    found[int(r)] = min(found.get(int(r), hazard), hazard)
            continue
        dim = "out" if dg.is_out_channel_pruning_fn(item.dep.handler) or is_depthwise(mod) else "in"
        for p, r in zip(item.idxs, item.root_idxs, strict=True):
            slots.add((name_of[mod], dim, int(p), int(r)))
    return sorted(slots), {r: reason for r, (_, reason) in found.items()}


def _hazard(mod, dg: _Graph) -> tuple[int, str] | None:
    """``(rank, reason)``: why pruning channels that pass through torch-pruning's pseudo op ``mod`` would break the
    model (rank: lower is more specific), or None.

    The model's forward keeps its own channel arithmetic after pruning: split sizes, slice bounds and reshapes are
    numbers in its code, and a parameter outside any layer is never sliced.
    """
    if isinstance(mod, nn.Parameter):
        name = dg._param_to_name.get(mod, "?")
        return (
            0,
            f"channels are scaled by parameter {name}, which belongs to no layer (e.g. a layer-scale gamma)",
        )
    if mod in dg.regrouped:
        src, dst = dg.regrouped[mod]
        return 1, (
            f"channels pass through a reshape that regroups them ({list(src)} -> {list(dst)}, e.g. a channel "
            "shuffle): pruning would change which channels it groups together"
        )
    if isinstance(mod, tp.ops._SplitOp | tp.ops._UnbindOp | tp.ops._SliceOp):
        dim, sizes = _cut_dim(dg.module2node[mod].grad_fn)
        if not _cuts_channels(dim, sizes):
            return None
        if isinstance(mod, tp.ops._SliceOp):
            return _slice_hazard(mod, sizes[dim] if sizes else None)
        split = f" into fixed sizes {list(mod.split_sizes)}" if getattr(mod, "split_sizes", None) else ""
        return 2, (
            f"channels pass through a channel split{split} (torch.split / chunk): the model's forward would split "
            "the pruned tensor at the same sizes"
        )
    if isinstance(mod, tp.ops._ConcatOp | tp.ops._SplitOp) and mod.offsets is None:
        return 4, "a concat/split whose channel offsets could not be traced (e.g. concat followed by flatten)"
    return None


def _cut_dim(grad_fn) -> tuple[int | None, tuple[int, ...] | None]:
    """``(dim, input sizes)`` a split / slice / unbind ran on, from its autograd node (``None`` where not saved).

    ``dim`` is normalised to ``[0, ndim)``: autograd saves ``dim=-1`` as ``2**64 - 1``.
    """
    sizes = getattr(grad_fn, "_saved_self_sym_sizes", None)
    sizes = tuple(int(v) for v in sizes) if sizes is not None else None
    dim = getattr(grad_fn, "_saved_dim", None)
    if dim is None:
        return None, sizes
    dim = int(dim) - (1 << 64 if int(dim) >= 1 << 63 else 0)
    return (dim + len(sizes) if dim < 0 and sizes else dim), sizes


def _cuts_channels(dim: int | None, sizes: tuple[int, ...] | None) -> bool:
    """False only for a cut along the batch dim or a spatial dim of an ``[N, C, H, W]`` tensor, which leaves the
    channels alone; anything else (unknown, dim 1, any dim of a 3-D tensor, which may be ``[N, C, L]`` or
    ``[N, L, C]``) may cut channels."""
    return not (dim == 0 or (sizes is not None and len(sizes) == 4 and dim in (2, 3)))


def _slice_hazard(mod: tp.ops._SliceOp, size: int | None) -> tuple[int, str] | None:
    """A channel slice is harmless only when it keeps every channel (``x[:, 0:n]`` with ``n >= C``): pruned, it
    still keeps them all. Otherwise its bounds are fixed numbers in the forward and would select other channels."""
    if size is not None and mod.start == 0 and mod.step == 1 and mod.end >= size:
        return None
    end = mod.end if size is None else min(mod.end, size)
    of = f" of {size} channels" if size is not None else ""
    return 3, (
        f"channels pass through a fixed channel slice [{mod.start}:{end}]{of} (e.g. a Ghost module's "
        "cat(...)[:, :n]): after pruning it would keep other channels"
    )


class _UnionFind:
    """Disjoint sets over hashable items (path halving)."""

    def __init__(self, items=()) -> None:
        self.parent = {x: x for x in items}

    def find(self, x):
        parent = self.parent.setdefault(x, x)
        while parent != x:
            self.parent[x] = self.parent[parent]
            x, parent = parent, self.parent[parent]
        return x

    def union(self, a, b) -> None:
        self.parent[self.find(a)] = self.find(b)


@dataclass
class _Part:
    """One channel group cut out of a torch-pruning group: ``slots`` with channels numbered from 0, the torch-pruning
    ``roots`` it holds, and ``key``: its coupling (the set of each channel's slots), equal for the same part found
    from another root layer."""

    slots: list[Slot]
    roots: set[int]
    key: frozenset


def _split_parts(slots: list[Slot]) -> list[_Part]:
    """Split one torch-pruning group into channel groups (linear in the number of slots).

    Root channels sharing a layer slot are one channel (union-find). Channels are then grouped by *signature*:
    which ``(module, dim)`` members carry them and how many positions each. Every member of a part carries every
    channel of it the same number of times, so its width is ``mult * kept`` -- affine in the group width, as the
    cost model needs. Channels are numbered in root-channel order (the order grouped-conv blocks are counted in).
    """
    uf = _UnionFind()
    first_at: dict[tuple[str, str, int], int] = {}
    for mod, dim, pos, root in slots:
        uf.union(root, first_at.setdefault((mod, dim, pos), root))
    slots_of: dict[int, list[tuple[str, str, int]]] = defaultdict(list)
    for slot, root in first_at.items():
        slots_of[uf.find(root)].append(slot)
    roots_of: dict[int, list[int]] = defaultdict(list)
    for root in list(uf.parent):
        roots_of[uf.find(root)].append(root)
    by_signature: dict[frozenset, list[int]] = {}
    for c in sorted(slots_of, key=lambda c: min(roots_of[c])):
        signature = frozenset(Counter((mod, dim) for mod, dim, _ in slots_of[c]).items())
        by_signature.setdefault(signature, []).append(c)
    return [
        _Part(
            slots=sorted((*slot, i) for i, c in enumerate(classes) for slot in slots_of[c]),
            roots={r for c in classes for r in roots_of[c]},
            key=frozenset(frozenset(slots_of[c]) for c in classes),
        )
        for classes in by_signature.values()
    ]


def _members(part: list[Slot], order: dict[str, int]) -> list[Member]:
    """The :class:`Member` s of one part: output members first, each kind in module order."""
    by_key: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for mod, dim, pos, ch in part:
        by_key[(mod, dim)].append((pos, ch))
    members = [
        Member(mod, dim, tuple(p for p, _ in sorted(pc)), tuple(c for _, c in sorted(pc)))
        for (mod, dim), pc in by_key.items()
    ]
    members.sort(key=lambda m: (m.dim != "out", order.get(m.module, 1 << 30)))
    return members


def _group_name(mlist: list[Member]) -> str:
    """A stable name: the first member in module order (output members first, so the first layer producing the
    channels), ``@first position`` added when the part starts past that layer's channel 0 (a producer whose channels
    fall into several groups, e.g. before a fixed-size split)."""
    first = mlist[0]
    return first.module if first.positions[0] == 0 else f"{first.module}@{first.positions[0]}"


def _balance(mlist: list[Member], model: nn.Module) -> tuple[list[Member], int, str | None]:
    """``(members, blocks, problem)``: the block balance a part must keep (:attr:`ChannelGroup.blocks`).

    A grouped conv (``1 < g < C``) needs the same local positions in each of its ``g`` blocks. A GroupNorm needs
    whole GroupNorm groups: pruning part of one changes the mean and variance of the rest (and a zeroed, masked
    channel would still count in them). With ``n`` GroupNorm units (:func:`_groupnorm_units`) of ``u`` channels,
    channel ``c`` (rank ``k`` in unit ``j``) is renumbered ``k * n + j``: ``u`` blocks of ``n`` channels, local
    position ``j`` being unit ``j``, so a plan balanced across ``blocks = u`` keeps or prunes whole units. Both
    kinds of balance at once are not supported.
    """
    channels = len(set(mlist[0].root))
    conv_blocks = _balanced_blocks(mlist, channels, model)
    units = _groupnorm_units(mlist, channels, model)
    sizes = sorted({len(u) for u in units})
    if len(sizes) > 1:
        return mlist, 1, f"GroupNorm groups of different sizes ({sizes}) normalise these channels"
    if sizes[0] == 1:
        return mlist, conv_blocks, None
    if conv_blocks > 1:
        return (
            mlist,
            1,
            "a GroupNorm and a grouped conv share these channels; their blocks cannot both be balanced",
        )
    n = len(units)
    number = {c: k * n + j for j, unit in enumerate(units) for k, c in enumerate(unit)}
    return (
        [Member(m.module, m.dim, m.positions, tuple(number[r] for r in m.root)) for m in mlist],
        sizes[0],
        None,
    )


def _groupnorm_units(mlist: list[Member], channels: int, model: nn.Module) -> list[list[int]]:
    """The part's channels tied into units that every GroupNorm member normalises together (one unit per
    GroupNorm group, the union over GroupNorm members; one channel per unit where no GroupNorm ties them), each
    sorted, in order of their first channel."""
    uf = _UnionFind(range(channels))
    for m in mlist:
        mod = model.get_submodule(m.module)
        if not isinstance(mod, nn.GroupNorm):
            continue
        per = mod.num_channels // mod.num_groups
        first_in: dict[int, int] = {}
        for p, c in zip(m.positions, m.root, strict=True):
            uf.union(c, first_in.setdefault(p // per, c))
    units: dict[int, list[int]] = defaultdict(list)
    for c in range(channels):
        units[uf.find(c)].append(c)
    return sorted(units.values())


def _balanced_blocks(mlist: list[Member], channels: int, model: nn.Module) -> int:
    """Blocks the group must stay balanced across: the ``groups`` of any non-depthwise grouped conv member."""
    blocks = 1
    for m in mlist:
        mod = model.get_submodule(m.module)
        if isinstance(mod, _CONV) and mod.groups > 1 and not is_depthwise(mod):
            blocks = int(np.lcm(blocks, mod.groups))
    if channels % blocks:
        return channels  # cannot balance: treat every channel as its own block (group stays whole)
    return blocks


def clone_model(model: nn.Module) -> nn.Module:
    """A deep copy that shares nothing with ``model`` (parameters, buffers, hooks)."""
    return copy.deepcopy(model)
