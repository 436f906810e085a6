"""ChannelSpace: the prunable channel groups of any CNN, found by tracing.

A *channel group* is a set of (layer, dimension) slots that must keep the same channel indices: a conv's output
channels, the BN after it, a depthwise conv running on them, the input columns of every consumer, every tensor added
to them by a residual add, their slice of a concatenation, the ``C*H*W`` input features of a Linear after flatten.
Coupling is computed by torch-pruning's :class:`~torch_pruning.DependencyGraph` (Fang et al., "DepGraph: Towards Any
Structural Pruning", CVPR 2023); this module turns its groups into plain, named, validated data that every pruning
method shares, plus the per-layer shape table used by the analytic cost model (:mod:`prunekit.cost.macs`).

Groups that must not be pruned are not in the space: model inputs, and channels that reach a model output -- a
classifier's logits, a SqueezeNet-style 1x1 conv before global pooling, a segmentation map -- found by walking the
traced graph back from every output through channel-preserving ops (``space.dropped`` says so). Groups torch-pruning maps inconsistently (an index outside a member's dimension, or two
groups claiming the same slot) are dropped with a warning, so everything left in the space is safe to prune.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch_pruning as tp

from prunekit.errors import PrunekitError

log = logging.getLogger(__name__)

TAGS = ("first", "last", "strided", "residual", "depthwise", "expansion", "grouped")
OUTPUT_REASON = "channels reach the model output"
_MIXING = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.Linear)
_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)


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
        root: for each position, the group channel it carries (same length as ``positions``); ``mult > 1`` for a
            Linear after flatten, where one channel feeds ``H*W`` input features.
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
        blocks: number of conv channel blocks the group must stay balanced across (``g`` when a grouped conv with
            ``1 < g < C`` touches it; then kept channels are the same local positions in every block), else 1.
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
        name: qualified module name. kind: ``conv``, ``linear``, ``norm`` or ``other``.
        in_size, out_size: channels (conv) / features (linear) / normalised channels (norm).
        kernel: kernel elements ``kh*kw`` (conv), 1 otherwise. conv_groups: the conv's ``groups``.
        depthwise: :func:`is_depthwise`. positions: output spatial positions ``H*W`` (conv) or rows per sample
            (linear: ``numel / out_features`` of the output, per sample). has_bias: bias present.
        params: parameter count of the whole module (all its own parameters).
        out_spatial: output spatial shape.
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
        self.output_layers: list[str] = []
        self.total_params: int = 0
        self.dropped: list[str] = []
        self._output_reach: set[str] = set()
        self._by_name: dict[str, ChannelGroup] = {}
        self.dg: tp.DependencyGraph | None = None
        self.roots: dict[str, nn.Module] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls, model: nn.Module, input_shape: tuple[int, ...] | torch.Tensor, *, quiet: bool = False
    ) -> ChannelSpace:
        """Trace ``model`` once on an input of ``input_shape`` ``(N, C, H, W)`` and build its channel space.

        The model is traced in eval mode (BN statistics are not touched) and left in the mode it was in.

        Raises:
            PrunekitError: the model cannot run on that input, or cannot be traced.
        """
        space = cls()
        space.quiet = quiet
        example = input_shape if isinstance(input_shape, torch.Tensor) else torch.randn(*input_shape)
        space.input_shape = tuple(example.shape)
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
                dg = tp.DependencyGraph().build_dependency(model, example_inputs=(example,), verbose=False)
        except PrunekitError:
            raise
        except Exception as exc:
            raise PrunekitError(
                f"cannot trace the model on input {tuple(example.shape)}: {type(exc).__name__}: "
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
        space._collect_groups(model, dg, name_of, records)
        return space

    def _collect_groups(self, model, dg, name_of, records) -> None:
        order = {n: i for i, (n, _) in enumerate(model.named_modules())}
        outputs = set(self.output_layers) | self._output_reach
        raw: list[tuple[str, nn.Module, list[Member], bool]] = []
        for group in dg.get_all_groups(root_module_types=(nn.Conv1d, nn.Conv2d, nn.Linear)):
            root_mod = group[0].dep.target.module
            members: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
            unmapped = False
            for item in group:
                mod = item.dep.target.module
                if isinstance(mod, tp.ops._ConcatOp | tp.ops._SplitOp) and mod.offsets is None:
                    unmapped = True  # torch-pruning could not work out the offsets: coupling is unreliable
                if not isinstance(mod, nn.Module) or mod not in name_of:
                    continue  # torch-pruning's pseudo ops (add, concat, reshape) carry no weights
                dim = "out" if dg.is_out_channel_pruning_fn(item.dep.handler) else "in"
                if is_depthwise(mod):
                    dim = "out"  # in == out for depthwise; recorded once as an output member
                pos, root = members.setdefault((name_of[mod], dim), ([], []))
                for p, r in zip(item.idxs, item.root_idxs, strict=True):
                    pos.append(int(p))
                    root.append(int(r))
            mlist = []
            for (mname, dim), (pos, root) in members.items():
                uniq = sorted(set(zip(pos, root, strict=True)))
                mlist.append(Member(mname, dim, tuple(p for p, _ in uniq), tuple(r for _, r in uniq)))
            mlist.sort(key=lambda m: (m.dim != "out", order.get(m.module, 1 << 30)))
            # stable name: the first layer (in module order) producing these channels
            raw.append((mlist[0].module if mlist else name_of[root_mod], root_mod, mlist, unmapped))

        claimed: dict[tuple[str, str], set[int]] = defaultdict(set)
        kept = []
        for root_name, root_mod, mlist, unmapped in raw:
            if any(m.module in outputs and m.dim == "out" for m in mlist):
                # classifier logits, a 1x1 conv head before global pooling, a segmentation map: never pruned
                self.dropped.append(f"{root_name}: {OUTPUT_REASON}")
                continue
            problem = (
                "a concat/split whose channel offsets could not be traced (e.g. concat followed by flatten)"
                if unmapped
                else self._validate(root_name, mlist, claimed, model)
            )
            if problem:
                self.dropped.append(f"{root_name}: {problem}")
                if not self.quiet:
                    log.warning("channel group %s left unpruned: %s", root_name, problem)
                continue
            for m in mlist:
                claimed[(m.module, m.dim)].update(m.positions)
            kept.append((root_name, root_mod, mlist))

        kept.sort(key=lambda t: order.get(t[0], 1 << 30))
        for i, (root_name, root_mod, mlist) in enumerate(kept):
            channels = len(set(mlist[0].root)) if mlist else 0
            g = ChannelGroup(index=i, name=root_name, channels=channels, members=mlist, tags=frozenset())
            g.spatial = {
                m.module: self.layers[m.module].out_spatial
                for m in mlist
                if m.module in self.layers and self.layers[m.module].kind == "conv"
            }
            g.blocks = _balanced_blocks(g, model)
            self.groups.append(g)
            self.roots[root_name] = root_mod
        self._by_name = {g.name: g for g in self.groups}
        for g in self.groups:
            g.tags = frozenset(self._tags(g, model))

    def _validate(self, root_name, mlist, claimed, model) -> str | None:
        if not mlist:
            return "no layer members"
        channels = len(set(mlist[0].root))
        for m in mlist:
            shape = self.layers.get(m.module)
            if shape is None:
                continue
            size = shape.out_size if m.dim == "out" else shape.in_size
            if max(m.positions) >= size:
                return f"{m.module}.{m.dim} index {max(m.positions)} outside its {size} channels"
            if set(m.root) != set(range(channels)):
                return f"{m.module}.{m.dim} does not carry every channel of the group"
            if claimed[(m.module, m.dim)] & set(m.positions):
                return f"{m.module}.{m.dim} is claimed by two groups"
            if len(m.positions) % channels:
                return f"{m.module}.{m.dim} maps {len(m.positions)} positions onto {channels} channels"
            mod = model.get_submodule(m.module)
            if (
                shape.kind == "conv"
                and mod.groups > 1
                and not shape.depthwise
                and m.positions != tuple(range(size))
            ):
                return f"{m.module} is a grouped conv fed by several groups (concat); its blocks cannot be balanced"
            if (
                shape.kind == "norm"
                and not isinstance(mod, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d)
                and m.dim == "out"
            ):
                return f"{m.module} ({type(mod).__name__}) cannot be sliced per channel"
        return None

    def _tags(self, g: ChannelGroup, model: nn.Module) -> set[str]:
        tags: set[str] = set()
        mods = {name: model.get_submodule(name) for name in g.member_modules()}
        producers = [
            n
            for n in g.member_modules("out")
            if isinstance(mods[n], nn.Conv1d | nn.Conv2d | nn.Linear) and not is_depthwise(mods[n])
        ]
        consumers = [
            n for n in g.member_modules("in") if isinstance(mods[n], nn.Conv1d | nn.Conv2d | nn.Linear)
        ]
        if len(producers) >= 2:
            tags.add("residual")
        if any(is_depthwise(m) for m in mods.values()):
            tags.add("depthwise")
        if g.blocks > 1:
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


def _record_shapes(model: nn.Module, example: torch.Tensor):
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
        if name and (
            not list(mod.children()) or isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Linear, *_NORM_TYPES))
        ):
            hooks.append(mod.register_forward_hook(make_hook(name)))
    try:
        with torch.no_grad():
            out = model(example)
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
        if isinstance(mod, nn.Conv1d | nn.Conv2d):
            if rec is None:
                continue  # not used in forward
            out_shape = rec["out_shape"]
            spatial = tuple(out_shape[2:])
            table[name] = LayerShape(
                name,
                "conv",
                mod.in_channels,
                mod.out_channels,
                kernel=int(np.prod(mod.kernel_size)),
                conv_groups=mod.groups,
                depthwise=is_depthwise(mod),
                positions=int(np.prod(spatial)) if spatial else 1,
                has_bias=mod.bias is not None,
                params=own,
                out_spatial=spatial,
                stride=int(max(mod.stride)),
            )
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


def _balanced_blocks(g: ChannelGroup, model: nn.Module) -> int:
    """Blocks the group must stay balanced across: the ``groups`` of any non-depthwise grouped conv member."""
    blocks = 1
    for m in g.members:
        mod = model.get_submodule(m.module)
        if isinstance(mod, nn.Conv1d | nn.Conv2d) and mod.groups > 1 and not is_depthwise(mod):
            blocks = int(np.lcm(blocks, mod.groups))
    if g.channels % blocks:
        return g.channels  # cannot balance: treat every channel as its own block (group stays whole)
    return blocks


def clone_model(model: nn.Module) -> nn.Module:
    """A deep copy that shares nothing with ``model`` (parameters, buffers, hooks)."""
    return copy.deepcopy(model)
