"""PruningNet: a hypernetwork that generates the weights of every sub-network of a model's channel space.

Liu et al., "MetaPruning: Meta Learning for Automatic Neural Network Channel Pruning", ICCV 2019, §3.2 (Fig. 2): for
every conv (and linear) layer a small *weight generator* maps the network encoding (the per-layer width choices) to
that layer's weight. The generator is a two-layer MLP ``Linear(k -> h) -> ReLU -> Linear(h -> numel)`` whose output
is reshaped to the layer's *maximum* weight shape and **cropped** to the channels the sampled sub-network keeps;
the cropped weight is what the sub-network convolves with. Trained with a random encoding every batch, the
generators learn to produce reasonable weights for every width combination, so candidates of an evolutionary search
can be scored without training them (§3.3).

Generalised from the seed's per-architecture model files to any model a :class:`~prunekit.space.ChannelSpace`
covers:

* **Encoding.** Kept channels per channel group, ``widths`` int ``[G]`` in space order; residual-tied slots already
  are one group, so a width choice never breaks an add. Kept channels are the **first k** of each group
  (:func:`~prunekit.space.select_channels` with no scores; groups touching a grouped conv keep the same leading
  positions in every block), i.e. exactly the plan :func:`~prunekit.space.plan_from_widths` makes without an
  importance criterion.
* **Cropping.** Every conv / linear / BatchNorm layer of the traced model is replaced in a copy of the model by a
  module that crops its (generated or stored) tensors to the kept positions of its input and output dimension: the
  union of its group members' kept positions (plus the positions no group owns, e.g. the image channels or the
  logits, which are always kept). This is the same index set :func:`~prunekit.space.apply` keeps when it slices, so
  concatenations, flatten-before-linear and grouped convs crop correctly; for a plain conv it is the leading slice
  ``W[:out, :in]``. The model's own ``forward`` then runs unchanged on physically narrower tensors (it must not
  hard-code channel counts; construction checks a forward at the smallest widths).
* **Generator inputs** (``inputs``). ``layer``: ``[out fraction, in fraction]`` of the layer (kept / maximum
  channels). ``block`` (default, the seed's design): those two plus the width fraction of every group touched by a
  conv/linear of the layer's *block*, the nearest enclosing module that is not a container (Sequential / ModuleList /
  ModuleDict) -- for an inverted residual or bottleneck that is ``[in, mid, out]`` as the seed feeds, for a
  MobileNetV1 dw+pw block ``[in, out]``; stems and classifiers outside a block use their own two values. Hidden size:
  ``hidden`` for two inputs (seed: 32), ``hidden_block`` for more (seed: 64 for MobileNetV2 bottlenecks).
* **Initialisation** (not specified by the seed). The output layer's bias is the reference layer's weight (the
  ``model`` given: in ``metapruning`` the spec's fresh initialisation, or the trained baseline with
  ``pruningnet_init: model``) and its weight is zero: at the start
  every encoding gets the (cropped) reference weight -- a sensibly scaled network -- and the encoding-dependent part
  is learned (the output weight's gradient ``grad_W (x) relu(fc1(z))`` is non-zero from the first step). Measured on
  Fashion-MNIST (MobileNetV1 0.5, 3 epochs on 6k images): sampled-subnet train top-1 59% with this zero init against
  47% with a random ``N(0, std(W_ref) / sqrt(h))`` output weight. Conv / linear biases are plain parameters of the
  maximum shape, cropped like the weights.
* **BatchNorm.** The seed keeps a separate BN (31 per position) per width choice, ``affine=False`` for most layers,
  and then **recalibrates** every BN of every candidate before evaluating it (reset + 100 training batches), because
  statistics depend on all earlier layers' choices (issue #15). Since its evaluation never uses the per-choice
  running statistics, prunekit keeps **one** BN per position with statistics of the maximum width, cropped like the
  weights, and recalibrates per candidate (:func:`prunekit.train.bn.recalibrate_bn`). ``bn_affine=False`` (default,
  seed) drops the affine parameters (exported as weight 1, bias 0); ``True`` keeps shared, cropped affine
  parameters initialised from the model (the seed's MobileNetV1 stem / depthwise BNs have per-choice affine
  parameters; shared ones are the deviation).
* **Export.** :meth:`PruningNet.subnet` returns the plain reference architecture, physically pruned with
  :func:`~prunekit.space.apply`, carrying the generated weights and the PruningNet's current BN statistics; in eval
  mode it computes the same outputs as the PruningNet at that encoding (tested).

Shapes: ``PruningNet(x)`` maps ``(N, C, H, W)`` to the model's output ``(N, classes)``. Costs: every training
forward regenerates every layer's weight (one ``[h] x [h, numel]`` product per layer); without autograd (BN
recalibration, evaluation) the generated weights are computed once per encoding and reused; the generators hold
about ``h + 1`` times the model's weights.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from prunekit.errors import PrunekitError
from prunekit.space import ChannelSpace, Plan, apply, plan_from_widths, select_channels
from prunekit.space.channels import is_depthwise

__all__ = [
    "GeneratedConv",
    "GeneratedLinear",
    "PruningNet",
    "SlimBatchNorm",
    "WeightGenerator",
    "block_of",
]

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


class WeightGenerator(nn.Module):
    """The per-layer weight generator of MetaPruning (§3.2): ``Linear(k -> h) -> ReLU -> Linear(h -> numel)``.

    Args:
        in_features: ``k``, the number of encoding values the layer sees.
        hidden: ``h``.
        shape: the layer's maximum weight shape; the output is reshaped to it.
        reference: the reference layer's weight (``shape``): becomes the output bias; the output weight starts at
            zero, so the initial generated weight is ``reference`` for every encoding (see the module docstring).

    Shapes: ``forward(z)``: ``z`` ``[k]`` -> weight ``shape``.
    """

    def __init__(self, in_features: int, hidden: int, shape: Sequence[int], reference: torch.Tensor) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        numel = int(np.prod(self.shape))
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, numel)
        ref = reference.detach().reshape(-1).to(torch.float32)
        if ref.numel() != numel:
            raise ValueError(f"reference weight has {ref.numel()} elements, expected {numel}")
        with torch.no_grad():
            self.fc2.weight.zero_()
            self.fc2.bias.copy_(ref)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(z))).view(self.shape)


class _Crop:
    """The encoding a PruningNet currently runs: kept positions per ``(layer, dim)`` and generator inputs.

    ``idx[(name, "out" | "in")]``: sorted ``int64`` positions to keep along that dimension (weight-local for the
    input of a grouped conv), or ``None`` when every position is kept. ``z[name]``: the generator input ``[k]``.
    """

    def __init__(self) -> None:
        self.idx: dict[tuple[str, str], torch.Tensor | None] = {}
        self.z: dict[str, torch.Tensor] = {}
        self.version = 0  # bumped by every set_widths (invalidates the inference cache of generated weights)


class _Generated(nn.Module):
    """Shared parts of :class:`GeneratedConv` and :class:`GeneratedLinear`."""

    crop: _Crop
    lname: str
    generator: WeightGenerator
    bias: nn.Parameter | None

    def _init_common(self, name: str, crop: _Crop, layer: nn.Module, n_inputs: int, hidden: int) -> None:
        self.lname = name
        object.__setattr__(self, "crop", crop)  # shared plain object, not a submodule
        self.generator = WeightGenerator(n_inputs, hidden, layer.weight.shape, layer.weight)
        bias = getattr(layer, "bias", None)
        self.register_parameter(
            "bias", nn.Parameter(bias.detach().clone().float()) if bias is not None else None
        )

    def full_weight(self) -> torch.Tensor:
        """The generated weight of the maximum shape for the current encoding."""
        return self.generator(self.crop.z[self.lname])

    def cropped(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(weight, bias)`` cropped to the current encoding's kept output / input positions.

        Without autograd (``torch.no_grad()``: BN recalibration, evaluation) the result is cached until the
        encoding or a parameter changes, so the generator runs once per candidate instead of once per batch."""
        key = None
        if not torch.is_grad_enabled():
            ref = self.generator.fc2.weight
            key = (self.crop.version, ref.device, ref.dtype, tuple(p._version for p in self.parameters()))
            frozen = self.__dict__.get("_frozen")
            if frozen is not None and frozen[0] == key:
                return frozen[1], frozen[2]
        w, b = self._crop_now()
        self.__dict__["_frozen"] = (key, w, b) if key is not None else None
        return w, b

    def _crop_now(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        w = self.full_weight()
        out_idx = self.crop.idx.get((self.lname, "out"))
        in_idx = self.crop.idx.get((self.lname, "in"))
        b = self.bias
        if out_idx is not None:
            w = w.index_select(0, out_idx)
            b = b.index_select(0, out_idx) if b is not None else None
        if in_idx is not None:
            w = w.index_select(1, in_idx)
        return w, b


class GeneratedConv(_Generated):
    """A ``Conv1d`` / ``Conv2d`` whose weight comes from a :class:`WeightGenerator` and is cropped per encoding.

    Keeps the conv's stride / padding / dilation; a depthwise conv runs with ``groups`` = kept channels, a grouped
    conv keeps its ``groups`` (kept positions are balanced across blocks). Only ``padding_mode='zeros'``.

    Shapes: ``(N, kept_in, *spatial) -> (N, kept_out, *spatial')``.
    """

    def __init__(
        self, name: str, conv: nn.Conv1d | nn.Conv2d, crop: _Crop, n_inputs: int, hidden: int
    ) -> None:
        super().__init__()
        if conv.padding_mode != "zeros":
            raise PrunekitError(
                f"PruningNet: conv {name} uses padding_mode={conv.padding_mode!r}; only 'zeros' is supported"
            )
        self._init_common(name, crop, conv, n_inputs, hidden)
        self.conv_cls = type(conv)
        self.fn = F.conv1d if isinstance(conv, nn.Conv1d) else F.conv2d
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride = conv.kernel_size, conv.stride
        self.padding, self.dilation, self.groups = conv.padding, conv.dilation, conv.groups
        self.depthwise = is_depthwise(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.cropped()
        groups = w.shape[0] if self.depthwise else self.groups
        return self.fn(x, w, b, self.stride, self.padding, self.dilation, groups)

    def plain(self, weight: torch.Tensor) -> nn.Module:
        """A plain conv of the maximum shape holding ``weight`` (and this layer's bias)."""
        conv = self.conv_cls(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            bias=self.bias is not None,
        )
        with torch.no_grad():
            conv.weight.copy_(weight)
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv


class GeneratedLinear(_Generated):
    """A ``Linear`` whose weight comes from a :class:`WeightGenerator`, cropped per encoding.

    Shapes: ``(N, ..., kept_in) -> (N, ..., kept_out)``.
    """

    def __init__(self, name: str, linear: nn.Linear, crop: _Crop, n_inputs: int, hidden: int) -> None:
        super().__init__()
        self._init_common(name, crop, linear, n_inputs, hidden)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.cropped()
        return F.linear(x, w, b)

    def plain(self, weight: torch.Tensor) -> nn.Module:
        """A plain ``nn.Linear`` of the maximum shape holding ``weight`` (and this layer's bias)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(weight)
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin


class SlimBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the kept channels of the current encoding: running statistics (and affine parameters) of the
    maximum width, cropped on the fly; in train mode the cropped statistics are updated and written back.

    A subclass of ``_BatchNorm``, so :func:`prunekit.train.bn.recalibrate_bn`, weight-decay grouping and
    ``reset_running_stats`` treat it as a BatchNorm. Shapes: ``(N, kept, ...) -> (N, kept, ...)``.
    """

    def __init__(self, name: str, bn: nn.modules.batchnorm._BatchNorm, crop: _Crop, affine: bool) -> None:
        if bn.running_mean is None:
            raise PrunekitError(
                f"PruningNet: BatchNorm {name} does not track running statistics; recalibration needs them"
            )
        super().__init__(
            bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=affine, track_running_stats=True
        )
        self.lname = name
        object.__setattr__(self, "crop", crop)
        self.bn_cls = type(bn)
        self.source_affine = bool(bn.affine)
        with torch.no_grad():
            self.running_mean.copy_(bn.running_mean)
            self.running_var.copy_(bn.running_var)
            if affine and bn.affine:
                self.weight.copy_(bn.weight)
                self.bias.copy_(bn.bias)

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = self.crop.idx.get((self.lname, "out"))
        if idx is None:
            return super().forward(x)
        self._check_input_dim(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        rm = self.running_mean.index_select(0, idx)
        rv = self.running_var.index_select(0, idx)
        w = self.weight.index_select(0, idx) if self.weight is not None else None
        b = self.bias.index_select(0, idx) if self.bias is not None else None
        y = F.batch_norm(x, rm, rv, w, b, self.training, factor, self.eps)
        if self.training:
            with torch.no_grad():
                self.running_mean.index_copy_(0, idx, rm)
                self.running_var.index_copy_(0, idx, rv)
        return y

    def plain(self) -> nn.Module:
        """A plain BN of the source class (``BatchNorm2d``, ...) of the maximum width with this layer's statistics;
        affine weight 1 / bias 0 where this layer has none."""
        bn = self.bn_cls(self.num_features, eps=self.eps, momentum=self.momentum, affine=self.source_affine)
        with torch.no_grad():
            bn.running_mean.copy_(self.running_mean)
            bn.running_var.copy_(self.running_var)
            bn.num_batches_tracked.copy_(self.num_batches_tracked)
            if self.source_affine:
                if self.weight is not None:
                    bn.weight.copy_(self.weight)
                    bn.bias.copy_(self.bias)
                else:
                    bn.weight.fill_(1.0)
                    bn.bias.zero_()
        return bn


def block_of(model: nn.Module, name: str) -> str | None:
    """The *block* of layer ``name``: the nearest enclosing module (not the root) that is not a container
    (``Sequential`` / ``ModuleList`` / ``ModuleDict``), e.g. ``layer1.0`` for ``layer1.0.downsample.0`` and
    ``features.3`` for ``features.3.conv.0.0``; None when every ancestor is a container (stems, classifiers)."""
    parts = name.split(".")
    for k in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:k])
        if not isinstance(model.get_submodule(prefix), _CONTAINERS):
            return prefix
    return None


class _DimIndex:
    """How to compute the kept positions of one ``(layer, dim)`` from per-group keep masks."""

    def __init__(
        self, size: int, parts: list[tuple[int, torch.Tensor, torch.Tensor]], local: int | None
    ) -> None:
        self.size = size
        self.parts = parts  # (group index, positions [n], roots [n])
        owned = torch.zeros(size, dtype=torch.bool)
        for _, pos, _ in parts:
            owned[pos] = True
        self.fixed = torch.nonzero(~owned).flatten()
        self.groups = tuple(g for g, _, _ in parts)
        self.local = local  # grouped conv input: keep positions < local (weight-local columns)

    def kept(self, masks: Sequence[torch.Tensor]) -> torch.Tensor | None:
        if not self.parts:
            return None
        pieces = [self.fixed] + [pos[masks[g][root]] for g, pos, root in self.parts]
        idx = torch.sort(torch.cat(pieces)).values
        if self.local is not None:
            idx = idx[idx < self.local]
            if len(idx) == self.local:
                return None
        elif len(idx) == self.size:
            return None
        return idx


class PruningNet(nn.Module):
    """MetaPruning's PruningNet over any model covered by a :class:`~prunekit.space.ChannelSpace`.

    See the module docstring for the design (generators, cropping, generator inputs, BN, export).

    Args:
        model: the reference network (not modified; copied). Its conv/linear weights initialise the generators.
        space: its channel space (defines the encoding: kept channels per group, ``[G]``).
        hidden: generator hidden size for layers fed two encoding values (seed: 32).
        hidden_block: hidden size for layers fed their block's widths too (seed: 64 for MobileNetV2 blocks,
            32 for ResNet).
        inputs: ``block`` (seed) or ``layer`` (see the module docstring).
        bn_affine: keep (shared, cropped) BN affine parameters; False = none (seed default).

    Use :meth:`set_widths` before a forward (the encoding persists until changed; initially every group is
    full). Raises PrunekitError when a member layer cannot be cropped (not Conv/Linear/BatchNorm), a conv uses a
    non-zero padding mode, or the model's forward does not run at reduced widths.
    """

    def __init__(
        self,
        model: nn.Module,
        space: ChannelSpace,
        *,
        hidden: int = 32,
        hidden_block: int = 64,
        inputs: Literal["block", "layer"] = "block",
        bn_affine: bool = False,
    ) -> None:
        super().__init__()
        if inputs not in ("block", "layer"):
            raise PrunekitError(f"PruningNet inputs must be 'block' or 'layer', got {inputs!r}")
        if hidden < 1 or hidden_block < 1:
            raise PrunekitError(f"generator hidden sizes must be >= 1, got {hidden} / {hidden_block}")
        self.space = space
        self.inputs = inputs
        self._crop = _Crop()
        self.__dict__["_skeleton"] = copy.deepcopy(
            model
        ).cpu()  # plain architecture for export (not a submodule)
        net = copy.deepcopy(model)
        self._check_members(net)

        self._dims: dict[tuple[str, str], _DimIndex] = {}
        self._layer_names: list[str] = []
        self._bn_names: list[str] = []
        parts: dict[tuple[str, str], list] = {}
        for g in space.groups:
            for m in g.members:
                parts.setdefault((m.module, m.dim), []).append(
                    (
                        g.index,
                        torch.tensor(m.positions, dtype=torch.long),
                        torch.tensor(m.root, dtype=torch.long),
                    )
                )
        gen_layers: dict[str, nn.Module] = {}
        for name, shape in space.layers.items():
            mod = net.get_submodule(name)
            if shape.kind in ("conv", "linear") and isinstance(mod, nn.Conv1d | nn.Conv2d | nn.Linear):
                gen_layers[name] = mod
                out_size = mod.out_channels if shape.kind == "conv" else mod.out_features
                in_size = mod.in_channels if shape.kind == "conv" else mod.in_features
                local = None
                if shape.kind == "conv" and mod.groups > 1 and not is_depthwise(mod):
                    local = mod.in_channels // mod.groups
                self._dims[(name, "out")] = _DimIndex(out_size, parts.get((name, "out"), []), None)
                if not (shape.kind == "conv" and is_depthwise(mod)):
                    self._dims[(name, "in")] = _DimIndex(in_size, parts.get((name, "in"), []), local)
            elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
                self._bn_names.append(name)
                self._dims[(name, "out")] = _DimIndex(mod.num_features, parts.get((name, "out"), []), None)

        # generator inputs: own [out, in] fractions (+ the block's group fractions)
        self._block_groups: dict[str, list[int]] = {}
        blocks: dict[str, list[str]] = {}
        for name in gen_layers:
            b = block_of(net, name) if inputs == "block" else None
            if b is not None:
                blocks.setdefault(b, []).append(name)
        for names in blocks.values():
            if len(names) < 2:
                continue
            gs = sorted(
                {
                    gi
                    for n in names
                    for d in ("out", "in")
                    if (n, d) in self._dims
                    for gi in self._dims[(n, d)].groups
                }
            )
            for n in names:
                self._block_groups[n] = gs

        for name, mod in gen_layers.items():
            k = 2 + len(self._block_groups.get(name, []))
            h = hidden_block if k > 2 else hidden
            cls = GeneratedLinear if isinstance(mod, nn.Linear) else GeneratedConv
            _replace(net, name, cls(name, mod, self._crop, k, h))
            self._layer_names.append(name)
        for name in self._bn_names:
            _replace(net, name, SlimBatchNorm(name, net.get_submodule(name), self._crop, bn_affine))
        self.net = net
        self._cache: dict[Any, Any] = {}
        self._widths = space.channels.copy()
        self.set_widths(self._widths)
        self._check_forward()

    # ------------------------------------------------------------------ construction helpers
    def _check_members(self, net: nn.Module) -> None:
        for g in self.space.groups:
            for m in g.members:
                mod = net.get_submodule(m.module)
                ok = isinstance(mod, nn.Conv1d | nn.Conv2d | nn.Linear | nn.modules.batchnorm._BatchNorm)
                if not ok and any(True for _ in mod.parameters(recurse=False)):
                    raise PrunekitError(
                        f"PruningNet cannot crop layer {m.module} ({type(mod).__name__}) of channel group "
                        f"{g.name!r}; supported members: Conv1d/Conv2d, Linear, BatchNorm"
                    )

    def _check_forward(self) -> None:
        shape = (2, *tuple(self.space.input_shape)[1:])
        was = self.training
        self.eval()
        try:
            with torch.no_grad():
                self.set_widths(np.ones(len(self.space.groups), dtype=np.int64))
                self(torch.randn(*shape, device=self._device()))
        except PrunekitError:
            raise
        except Exception as exc:
            raise PrunekitError(
                "the model's forward does not run at reduced channel widths inside the PruningNet "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}); MetaPruning needs "
                "a forward without hard-coded channel counts (e.g. use torch.flatten instead of view(-1, C))"
            ) from None
        finally:
            self.set_widths(self.space.channels)
            self.train(was)

    # ------------------------------------------------------------------ encoding
    def _device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @property
    def widths(self) -> np.ndarray:
        """The current encoding: kept channels per group, int64 ``[G]``."""
        return self._widths.copy()

    @property
    def layer_names(self) -> list[str]:
        """Qualified names of the generated (conv / linear) layers, in space order."""
        return list(self._layer_names)

    def block_groups(self, name: str) -> list[int]:
        """Group indices whose width fractions layer ``name``'s generator sees besides its own in/out fractions."""
        return list(self._block_groups.get(name, []))

    def _mask(self, gi: int, w: int) -> torch.Tensor:
        key = ("mask", gi, w)
        if key not in self._cache:
            g = self.space.groups[gi]
            m = torch.zeros(g.channels, dtype=torch.bool)
            m[select_channels(g, int(w), None)] = True
            self._cache[key] = m
        return self._cache[key]

    def set_widths(self, widths: Sequence[int] | np.ndarray) -> None:
        """Run every later forward at ``widths`` (kept channels per group, ``[G]``, first-k channels; a group
        touching a grouped conv keeps a multiple of its blocks, as :func:`~prunekit.space.select_channels` does --
        :attr:`widths` then reports the kept count).

        Raises:
            PrunekitError: wrong length, or a width outside ``[1, C]``.
        """
        w = np.asarray(widths, dtype=np.int64).reshape(-1)
        chans = self.space.channels
        if w.shape != chans.shape:
            raise PrunekitError(
                f"PruningNet encoding has {w.size} widths, the channel space has {chans.size} groups"
            )
        if (w < 1).any() or (w > chans).any():
            bad = int(np.flatnonzero((w < 1) | (w > chans))[0])
            raise PrunekitError(
                f"width {int(w[bad])} of group {self.space.groups[bad].name!r} is outside [1, {int(chans[bad])}]"
            )
        dev = self._device()
        if len(self._cache) > 50_000:
            self._cache.clear()
        masks = [self._mask(i, int(x)) for i, x in enumerate(w)]
        w = np.array([int(m.sum()) for m in masks], dtype=np.int64)  # groups with blocks: multiple of blocks
        crop = self._crop
        for key, dim in self._dims.items():
            ckey = ("idx", key, tuple(int(w[g]) for g in dim.groups), dev)
            if ckey not in self._cache:
                idx = dim.kept(masks)
                self._cache[ckey] = idx.to(dev) if idx is not None else None
            crop.idx[key] = self._cache[ckey]
        frac = w / np.maximum(chans, 1)
        all_vals: list[float] = []
        sizes: list[int] = []
        for name in self._layer_names:
            out_d, in_d = self._dims[(name, "out")], self._dims.get((name, "in"))
            out_i = crop.idx[(name, "out")]
            fo = 1.0 if out_i is None else len(out_i) / out_d.size
            if in_d is None:  # depthwise: input = output channels
                fi = fo
            else:
                in_i = crop.idx[(name, "in")]
                fi = 1.0 if in_i is None else len(in_i) / (in_d.local or in_d.size)
            vals = [fo, fi] + [float(frac[g]) for g in self._block_groups.get(name, [])]
            all_vals += vals
            sizes.append(len(vals))
        if sizes:  # one host-to-device copy per encoding, then views
            z = torch.tensor(all_vals, dtype=torch.float32, device=dev)
            for name, part in zip(self._layer_names, torch.split(z, sizes), strict=True):
                crop.z[name] = part
        crop.version += 1
        self._widths = w.copy()

    def forward(self, x: torch.Tensor) -> Any:
        return self.net(x)

    # ------------------------------------------------------------------ inspection / export
    def generator_params(self) -> int:
        """Number of parameters of all weight generators."""
        return sum(p.numel() for n, p in self.named_parameters() if ".generator." in f".{n}")

    def generated(self, name: str) -> torch.Tensor:
        """Layer ``name``'s generated weight of the maximum shape for the current encoding (no crop)."""
        return self.net.get_submodule(name).full_weight()

    def cropped(self, name: str) -> torch.Tensor:
        """Layer ``name``'s generated weight cropped to the current encoding (what the forward convolves with)."""
        return self.net.get_submodule(name).cropped()[0]

    @torch.no_grad()
    def plain(self) -> nn.Module:
        """The full-size reference architecture holding, for the current encoding, every generated weight (maximum
        shape), conv/linear biases and the BN statistics (and affine parameters) of this PruningNet, on the
        PruningNet's device."""
        plain = copy.deepcopy(self.__dict__["_skeleton"])
        for name in self._layer_names:
            src = self.net.get_submodule(name)
            _replace(plain, name, src.plain(src.full_weight().detach().cpu()))
        for name in self._bn_names:
            _replace(plain, name, self.net.get_submodule(name).plain())
        return plain.to(self._device())

    @torch.no_grad()
    def subnet(self, widths: Sequence[int] | np.ndarray | None = None) -> tuple[nn.Module, Plan]:
        """Export the sub-network at ``widths`` (default: the current encoding; given widths become current) as
        ``(plain pruned network, Plan)``: :func:`~prunekit.space.apply` of :meth:`plain` with the first-k plan of
        :func:`~prunekit.space.plan_from_widths`. In eval mode its outputs equal this PruningNet's at that
        encoding (same generated weights, same BN statistics). The network is in eval mode."""
        if widths is not None:
            self.set_widths(widths)
        plan = plan_from_widths(self.space, self._widths)
        net = apply(self.plain(), plan, self.space)
        return net.eval(), plan


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)
