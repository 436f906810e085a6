"""Per-layer latency lookup tables, measured on the target runtime (``prunekit lut build``).

JCW (Zhao et al., 2021, §3.3, seed 000) searches against latency read from a per-layer table measured on the
device: a grid of (kept input channels, kept output channels) per conv, read by multilinear interpolation. This
module builds such a table for any model of a :class:`~prunekit.space.channels.ChannelSpace`:

* **Layers**: every conv / transposed conv / linear of the space's layer table, as exported (BatchNorm folded: a
  conv with a bias). Layers with the same signature (kind, kernel, stride, padding, dilation, input size, groups,
  full channels, which axes can shrink) are measured once.
* **Grid**: along an axis that channel pruning can shrink, the points are multiples of the runtime's channel block
  (``unit``: 16 on AVX-512, 8 on AVX2 for ONNX Runtime's NCHWc kernels, where the cost changes), ``points`` of them
  at most, always with the full width, plus two unaligned grids between them (ONNX Runtime runs a conv whose
  input channels are not multiples without the blocked kernels, :mod:`~prunekit.cost.ort_layout`: a cost of its
  own, which on this project's AVX2 machine is lower again for input counts that are multiples of half the block
  -- ``grids["1u"]`` samples those, ``grids["1o"]`` the others); an axis fed by fixed channels (the image, a
  dropped group) has one point. Below the unit, points at one channel and fractions of the unit
  (:func:`_small_counts`: a narrow layer's cost still falls there; without them the table had a floor). Group
  counts ``groups`` (GConv) are measured for dense convs on two grids of their own (:func:`_group_grids`:
  multiples of ``G x unit``, where ONNX Runtime blocks a grouped conv, and multiples of ``G`` off them, where it
  does not); weight densities ``densities`` at full width, as a factor over the dense time (ONNX Runtime and
  torch do not skip zero weights: the factor is ~1, and the table shows it).
* **Overhead**: what the layers do not cover (activations, pooling, adds, concatenations, layout reorders, the
  per-call cost every layer paid alone) is the measured whole-model latency minus the sum of the layer
  predictions, at thirteen calibration widths; :class:`Overhead` fits it linearly on per-plan features (ONNX
  Runtime: the reorders the layers paid alone, the reorders and unfused adds of the model's layout,
  :class:`~prunekit.cost.ort_layout.OrtLayout`; other runtimes: the layers' aligned and unaligned traffic).
* **Signature**: runtime and version, threads, CPU model and ISA, batch sizes; :func:`load_table` refuses a table
  made for another runtime or machine unless told to.

The table is JSON, written atomically after every layer signature, so a killed build resumes where it stopped.
Times are milliseconds per forward pass of one batch.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prunekit.cost.macs import CostModel
from prunekit.cost.runtimes import LayerConfig, machine_signature, onnx_model, runnable, time_interleaved
from prunekit.errors import PrunekitError, validation_message
from prunekit.io import write_text
from prunekit.progress import progress_bar
from prunekit.space import ChannelSpace, legal_conv_groups
from prunekit.space.plan import can_regroup

log = logging.getLogger(__name__)

LUT_VERSION = 2
"""2: the ``1o`` grid and named overhead features (version-1 tables must be rebuilt)."""


class Grid(BaseModel):
    """Measured ms on a ``c_in x c_out`` grid for one group count: ``ms[batch][i][j]`` at ``(c_in[i], c_out[j])``."""

    model_config = ConfigDict(extra="forbid")
    c_in: list[int]
    c_out: list[int]
    ms: dict[str, list[list[float]]] = Field(default_factory=dict)


class Entry(BaseModel):
    """One layer signature: its shape facts, the layers that share it, its grids per group count and its density
    factors. ``grids["1"]`` is the layer as it is (dense, depthwise or its own grouping) at channel counts that are
    multiples of the unit; ``grids["1u"]`` the same layer at counts between them that are multiples of half the
    unit and ``grids["1o"]`` at input counts that are not (ONNX Runtime runs those without its blocked kernels: a
    different, slower cost, not the next multiple's; see :mod:`~prunekit.cost.ort_layout`; for a depthwise conv
    the one channel count, which is unblocked off multiples of 4 and then costs ~2.3x the blocked kernel at 56x56
    on this project's AVX2 machine); ``grids["G"]``
    (G > 1) the dense conv turned into a G-group conv, at counts where ONNX Runtime blocks it (multiples of G x the
    unit) and ``grids["Gu"]`` at multiples of G where it does not (:func:`_group_grids`). ``tied``: a depthwise
    conv (``c_in == c_out``, one axis)."""

    model_config = ConfigDict(extra="forbid")
    kind: str
    layers: list[str]
    config: dict[str, Any]
    c_in_full: int
    c_out_full: int
    in_unit: int
    out_unit: int
    tied: bool = False
    grids: dict[str, Grid] = Field(default_factory=dict)
    densities: list[float] = Field(default_factory=list)
    density_factor: dict[str, list[float]] = Field(default_factory=dict)


class Overhead(BaseModel):
    """What the layers measured alone do not cover, fitted on whole-model measurements (per batch size).

    ``features[k]`` of calibration model ``k``, named by ``names`` (elements per sample; see
    :meth:`prunekit.cost.predict.LatencyModel.features`): for ONNX Runtime ``1``, the reorders the blocked layers
    paid when timed alone, the reorders at the model's layout transitions and the outputs of NCHW convs whose add
    runs unfused (:class:`~prunekit.cost.ort_layout.OrtLayout`); for other runtimes ``1`` and the activation
    traffic (input + output elements) of aligned and unaligned layers. ``residual_ms[batch][k]``: measured minus
    the sum of the layer predictions; ``coef[batch]``: least-squares fit of the residual on the features. It
    absorbs layout reorders, activations, pooling and adds.
    """

    model_config = ConfigDict(extra="forbid")
    labels: list[str]
    names: list[str]
    features: list[list[float]]
    residual_ms: dict[str, list[float]]
    measured_ms: dict[str, list[float]]
    coef: dict[str, list[float]]


class LatencyTable(BaseModel):
    """A per-layer latency table of one model on one runtime and machine (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    version: int = LUT_VERSION
    model: str | None = None
    input_shape: list[int]
    machine: dict[str, Any]
    batches: list[int]
    unit: int
    points: int
    groups: list[int]
    densities: list[float]
    entries: dict[str, Entry] = Field(default_factory=dict)
    layer_entry: dict[str, str] = Field(default_factory=dict)
    overhead: Overhead | None = None
    build_s: float = 0.0

    @property
    def complete(self) -> bool:
        return self.overhead is not None and all(e.grids for e in self.entries.values())

    def save(self, path: str | Path) -> None:
        write_text(path, self.model_dump_json(indent=1) + "\n")


def load_table(
    path: str | Path, *, runtime: str | None = None, threads: int | None = None, allow_mismatch: bool = False
) -> LatencyTable:
    """Read a table written by :func:`build_table`; refuse one measured for another machine or runtime.

    Raises:
        PrunekitError: missing / invalid file, an incomplete build, or (unless ``allow_mismatch``) a runtime,
            thread count, CPU model or ISA that differs from this machine's (one line naming the difference).
    """
    path = Path(path)
    if not path.is_file():
        raise PrunekitError(f"latency table not found: {path} (build one with `prunekit lut build`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and data.get("version") != LUT_VERSION:
            raise PrunekitError(
                f"latency table {path} has format version {data.get('version')!r}, this prunekit reads "
                f"{LUT_VERSION}; rebuild it with `prunekit lut build`"
            )
        table = LatencyTable.model_validate(data)
    except json.JSONDecodeError as exc:
        raise PrunekitError(f"latency table {path} is not valid JSON: {exc}") from None
    except ValidationError as exc:
        raise PrunekitError(validation_message(exc, what=f"latency table {path}")) from None
    if not table.complete:
        raise PrunekitError(
            f"latency table {path} is incomplete (a build was interrupted); run the build again"
        )
    if not allow_mismatch:
        check_machine(table, path, runtime=runtime, threads=threads)
    return table


def check_machine(
    table: LatencyTable, path: str | Path, *, runtime: str | None = None, threads: int | None = None
) -> None:
    """Refuse ``table`` (read from ``path``) when its runtime and version, thread count, CPU model or ISA differ
    from this machine's (``runtime`` / ``threads``: what the caller will run; default the table's own).

    Raises:
        PrunekitError: one line naming the first difference.
    """
    here = machine_signature(runtime or table.machine["runtime"], threads or table.machine["threads"])
    for key in ("runtime", "version", "threads", "cpu", "isa"):
        if here.get(key) != table.machine.get(key):
            raise PrunekitError(
                f"latency table {path} was measured with {key} {table.machine.get(key)!r}, this machine has "
                f"{here.get(key)!r}; build a table here (prunekit lut build) or pass allow_mismatch"
            )


# ---------------------------------------------------------------------------------------------- layer facts
def _input_spatial(
    model: nn.Module, names: list[str], input_shape: Sequence[int]
) -> dict[str, tuple[int, ...]]:
    """Per layer, its input's spatial size (conv: ``(H, W)``; linear: the dims between batch and features)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(mod: nn.Module, inputs: tuple, output: Any) -> None:
            shapes.setdefault(name, tuple(inputs[0].shape))

        return hook

    hooks = [model.get_submodule(n).register_forward_hook(record(n)) for n in names]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.randn(1, *tuple(input_shape)[1:]))
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return {
        n: (s[1:-1] if isinstance(model.get_submodule(n), nn.Linear) else s[2:]) for n, s in shapes.items()
    }


def _axis(full: int, unit: int, k: int, fixed: bool, multiple: int = 1) -> list[int]:
    """Grid points of one channel axis: multiples of ``lcm(unit, multiple)`` up to ``full`` (at most ``k``,
    spread evenly over them, always with the smallest and ``full``); ``[full]`` for a fixed axis."""
    if fixed:
        return [full]
    step = math.lcm(max(1, unit), max(1, multiple))
    return _spread(list(range(step, full, step)) + [full], k)


def _spread(cands: list[int], k: int) -> list[int]:
    """At most ``k`` of ``cands`` (sorted), evenly spread over them, the first and the last always among them."""
    if len(cands) <= k:
        return cands
    return [cands[i] for i in np.unique(np.round(np.linspace(0, len(cands) - 1, k)).astype(int))]


def group_count(grid_key: str) -> int:
    """The conv group count of a grid key (``"1"``, ``"1u"``, ``"1o"``, ``"2"``, ``"2u"``, ...)."""
    return int(grid_key.rstrip("uo"))


def _unaligned(points: list[int], unit: int, multiple: int, fixed: bool, offset: int = 0) -> list[int]:
    """Grid points between the aligned ones (``p - unit / 2 - offset``, kept a multiple of ``multiple``); the
    points themselves for a fixed axis or a unit of 1."""
    if fixed or unit <= 1:
        return points
    half = max(1, unit // 2)
    out = sorted(
        {max(multiple, (p - half - offset) // multiple * multiple) for p in points if p > half + offset}
    )
    return out or points


def _below(points: list[int], unit: int, multiple: int, candidates: Sequence[int]) -> list[int]:
    """Grid points under the smallest of ``points``: each of ``candidates`` (fractions of ``unit``; 1 = one
    channel), rounded down to a multiple of ``multiple`` (at least ``multiple``), that is below ``points[0]``."""
    if unit <= 1 or not points:
        return []
    return sorted(
        {max(multiple, c // multiple * multiple) for c in candidates if c < points[0]} - set(points)
    )


def _layer_config(mod: nn.Module, kind: str, spatial: tuple[int, ...]) -> dict[str, Any]:
    if kind == "linear":
        return {"kind": "linear", "in_spatial": list(spatial), "bias": mod.bias is not None}
    two = len(mod.kernel_size)
    pad = mod.padding if isinstance(mod.padding, tuple) else (0,) * two
    cfg = {
        "kind": "conv_transpose" if isinstance(mod, nn.ConvTranspose1d | nn.ConvTranspose2d) else "conv",
        "kernel": list(mod.kernel_size),
        "stride": list(mod.stride),
        "padding": list(pad),
        "dilation": list(mod.dilation),
        "in_spatial": list(spatial),
        "bias": True,  # BatchNorm is folded into the conv on export
    }
    if cfg["kind"] == "conv_transpose":
        cfg["output_padding"] = list(mod.output_padding)
    return cfg


def plan_entries(
    model: nn.Module,
    space: ChannelSpace,
    *,
    unit: int,
    points: int,
    groups: Sequence[int],
    densities: Sequence[float],
    blocked_small_inputs: bool = True,
) -> tuple[dict[str, Entry], dict[str, str]]:
    """The table's entries (not yet measured) and ``{layer: entry key}`` for every conv / linear of ``space``
    (``blocked_small_inputs``: the runtime runs convs with fewer inputs than the unit blocked, ONNX Runtime's rule;
    see :func:`_small_counts`)."""
    cm = CostModel(space)
    names = [n for n in cm.names if space.layers[n].kind in ("conv", "linear")]
    spatial = _input_spatial(model, names, space.input_shape)
    entries: dict[str, Entry] = {}
    layer_entry: dict[str, str] = {}
    for n in names:
        i = cm.names.index(n)
        s, mod = space.layers[n], model.get_submodule(n)
        in_fixed, out_fixed = not cm.A_in[i].any(), not cm.A_out[i].any()
        conv_like = s.kind == "conv"
        base_groups = 1 if s.depthwise else s.conv_groups
        config = _layer_config(mod, s.kind, spatial.get(n, ()))
        key_facts = {
            **config,
            "c_in": s.in_size,
            "c_out": s.out_size,
            "groups": s.conv_groups,
            "depthwise": s.depthwise,
            "in_fixed": in_fixed,
            "out_fixed": out_fixed,
        }
        key = json.dumps(key_facts, sort_keys=True)
        layer_entry[n] = key
        if key in entries:
            entries[key].layers.append(n)
            continue
        u_in = unit if conv_like and not in_fixed else 1
        u_out = unit if conv_like and not out_fixed else 1
        entries[key] = Entry(
            kind=s.kind,
            layers=[n],
            config={**config, "groups": s.conv_groups, "depthwise": s.depthwise},
            c_in_full=s.in_size,
            c_out_full=s.out_size,
            in_unit=u_in,
            out_unit=u_out,
            tied=s.depthwise,
            densities=sorted({1.0, *densities}, reverse=True) if not s.depthwise else [1.0],
        )
        e = entries[key]
        e.grids["1"] = Grid(
            c_in=_axis(s.in_size, u_in, points, in_fixed or s.depthwise, base_groups),
            c_out=_axis(s.out_size, u_out, points, out_fixed, base_groups),
        )
        if u_in > 1 or u_out > 1:
            e.grids["1u"] = Grid(
                c_in=_unaligned(e.grids["1"].c_in, u_in, base_groups, s.depthwise or in_fixed),
                c_out=_unaligned(e.grids["1"].c_out, u_out, base_groups, out_fixed),
            )
            # the blocking rule reads the input count; a depthwise conv's one count is its output axis
            axis, unit_, fixed = ("c_out", u_out, out_fixed) if s.depthwise else ("c_in", u_in, in_fixed)
            odd = _unaligned(getattr(e.grids["1"], axis), unit_, base_groups, fixed, offset=1)
            if unit_ > 2 and odd != getattr(e.grids["1u"], axis) and all(c % (unit_ // 2) for c in odd):
                u = e.grids["1u"]
                e.grids["1o"] = Grid(**{"c_in": u.c_in, "c_out": u.c_out, axis: odd})
        if can_regroup(s):
            for g in (int(g) for g in groups if int(g) > 1):
                if g not in legal_conv_groups(s.in_size, s.out_size):
                    continue
                e.grids.update(
                    _group_grids(s.in_size, s.out_size, g, u_in, u_out, points, in_fixed, out_fixed)
                )
        if u_in > 1 or u_out > 1:  # after the G grids: those keep the aligned points
            _small_counts(e, s.depthwise, in_fixed, out_fixed, base_groups, blocked_small_inputs)
    return entries, layer_entry


def _group_grids(
    c_in: int, c_out: int, g: int, u_in: int, u_out: int, k: int, in_fixed: bool, out_fixed: bool
) -> dict[str, Grid]:
    """The grids of a conv regrouped into ``g`` groups: ``"G"`` on multiples of ``g x unit`` per axis (ONNX
    Runtime blocks a grouped conv only where every group's input and output counts are multiples of its block,
    :mod:`~prunekit.cost.ort_layout`), and with a unit > 1 ``"Gu"`` on multiples of ``g`` that are not (the
    unblocked kernel's cost). One grid over both regimes -- the old layout: the aligned points that ``g`` divides --
    interpolated between them: on AVX-512 a 2-group 64 -> 64 conv (32 per group, blocked) read 0.71 ms between
    the unblocked 48 and 80 points, where it runs in 0.29 ms. A fixed axis has its one point in both."""

    def blocked_axis(full: int, unit: int, fixed: bool) -> list[int]:
        return [full] if fixed else _axis(full, g * unit, k, False)

    def unblocked_axis(full: int, unit: int, fixed: bool) -> list[int]:
        return [full] if fixed else _spread([c for c in range(g, full + 1, g) if c % (g * unit)], k)

    out = {str(g): Grid(c_in=blocked_axis(c_in, u_in, in_fixed), c_out=blocked_axis(c_out, u_out, out_fixed))}
    if u_in > 1 or u_out > 1:
        u = Grid(c_in=unblocked_axis(c_in, u_in, in_fixed), c_out=unblocked_axis(c_out, u_out, out_fixed))
        if u.c_in and u.c_out:
            out[f"{g}u"] = u
    return out


def _small_counts(
    e: Entry, depthwise: bool, in_fixed: bool, out_fixed: bool, multiple: int, blocked_small_inputs: bool
) -> None:
    """Add grid points below the channel unit (in place), where a pruned layer's cost still changes: without them
    a 4-channel layer reads as its smallest grid point (the unit, or half of it) and the table has a floor that
    narrow plans sit on.

    * ``blocked_small_inputs`` (ONNX Runtime): a conv with fewer input channels than the block runs blocked,
      reading its NCHW input directly, at a cost about linear in those channels (measured on AVX-512, 3x3 conv
      28x28 -> 16: 0.016 ms at 1 input channel, 0.030 at 8, 0.059 at 16) up to ``unit - 1``, where it can cost
      more than the unit itself (1x1 conv 56x56 -> 80: 0.14 ms at 8 inputs, 0.20 at 13, 0.12 at 16, which pays a
      reorder instead), so the aligned grid gets inputs ``1, unit/4, unit/2, 3 unit/4, unit - 1``; its outputs are
      padded to the block and need none.
    * Unaligned grids (``1u`` / ``1o``): outputs ``1, unit/4`` (an unblocked conv's cost falls with its outputs:
      0.052 ms at 1, 0.085 at 8, 0.11 at 16 for 23 inputs); inputs the same on runtimes without ONNX Runtime's
      rule (there a narrow input is unaligned); a depthwise conv's one count only ``1`` on ``1o`` (its other
      small counts are multiples of the alignment: blocked)."""
    u_in, u_out = e.in_unit, e.out_unit
    g1 = e.grids["1"]
    if blocked_small_inputs and not (in_fixed or depthwise):
        below = (1, u_in // 4, u_in // 2, 3 * u_in // 4, u_in - 1)
        g1.c_in = _below(g1.c_in, u_in, multiple, below) + g1.c_in
    for key in ("1u", "1o"):
        grid = e.grids.get(key)
        if grid is None:
            continue
        if depthwise:
            if key == "1o" and not out_fixed:
                grid.c_out = _below(grid.c_out, u_out, 1, (1,)) + grid.c_out
            continue
        if not out_fixed:
            grid.c_out = _below(grid.c_out, u_out, multiple, (1, u_out // 4)) + grid.c_out
        if not blocked_small_inputs and not in_fixed:
            grid.c_in = _below(grid.c_in, u_in, multiple, (1, u_in // 4)) + grid.c_in


def _cfg(e: Entry, c_in: int, c_out: int, g: int, density: float = 1.0) -> LayerConfig:
    """The layer of entry ``e`` at ``c_in`` x ``c_out`` kept channels: ``g > 1`` regrouped (GConv), else its own
    groups (a depthwise conv: ``c_in = groups = c_out``)."""
    c = e.config
    if e.tied:
        c_in, groups = c_out, c_out
    else:
        groups = g if g > 1 else int(c.get("groups", 1))
    return LayerConfig(
        kind=c["kind"],
        c_in=c_in,
        c_out=c_out,
        groups=groups if c["kind"] != "linear" else 1,
        kernel=tuple(c.get("kernel", (1, 1))),
        stride=tuple(c.get("stride", (1, 1))),
        padding=tuple(c.get("padding", (0, 0))),
        dilation=tuple(c.get("dilation", (1, 1))),
        output_padding=tuple(c.get("output_padding", (0, 0))),
        in_spatial=tuple(c.get("in_spatial", ())),
        density=density,
        bias=bool(c.get("bias", True)),
    )


def measure_entry(
    e: Entry, batches: Sequence[int], runtime: str, threads: int, *, rounds: int, tick: Callable[[], None]
) -> None:
    """Fill ``e.grids[*].ms`` and ``e.density_factor`` (in place), each batch's points timed in interleaved rounds."""
    for b in batches:
        cfgs: list[tuple[str, int, int, LayerConfig]] = []
        for g_key, grid in e.grids.items():
            for i, ci in enumerate(grid.c_in):
                for j, co in enumerate(grid.c_out):
                    cfgs.append((g_key, i, j, _cfg(e, ci, co, group_count(g_key))))
        dens = [_cfg(e, e.c_in_full, e.c_out_full, 1, d) for d in e.densities]
        every = [c for *_, c in cfgs] + dens
        if runtime == "deepsparse":  # timed inside its own environment (optional backend)
            from prunekit.cost.deepsparse import time_interleaved_onnx

            ms = time_interleaved_onnx(
                [onnx_model(c, b) for c in every], b, threads=threads, rounds=rounds, min_time_s=0.01
            )
        else:
            ms = time_interleaved([runnable(c, b, runtime, threads) for c in every], runtime, rounds=rounds)
        for (g_key, i, j, _), t in zip(cfgs, ms, strict=False):
            grid = e.grids[g_key]
            table = grid.ms.setdefault(str(b), [[0.0] * len(grid.c_out) for _ in grid.c_in])
            table[i][j] = t
        dense = ms[len(cfgs)]
        e.density_factor[str(b)] = [t / dense for t in ms[len(cfgs) :]]
        tick()


def build_table(
    model: nn.Module,
    input_shape: Sequence[int],
    out: str | Path,
    *,
    spec: str | None = None,
    runtime: str = "ort",
    threads: int = 1,
    batches: Sequence[int] = (1,),
    points: int = 7,
    groups: Sequence[int] = (1, 2, 4),
    densities: Sequence[float] = (1.0, 0.5, 0.2),
    unit: int | None = None,
    rounds: int = 3,
    overhead: Callable[[LatencyTable, ChannelSpace], Overhead] | None = None,
) -> LatencyTable:
    """Measure the latency table of ``model`` on ``input_shape`` ``(1, C, H, W)`` and write it to ``out`` (JSON,
    after every layer signature; an existing compatible file is resumed).

    ``overhead(table, space)`` measures the whole-model residual (the CLI passes
    :func:`prunekit.cost.predict.measure_overhead`); without it the table has no overhead (then incomplete).

    Raises:
        PrunekitError: unknown runtime, invalid grid settings, or an existing ``out`` made for another model,
            machine or settings.
    """
    from prunekit.cost.latency import channel_multiple

    t_start = time.perf_counter()
    if points < 2:
        raise PrunekitError(f"points must be >= 2 (grid points per channel axis), got {points}")
    unit = int(unit or (channel_multiple() if runtime in ("ort", "torch") else 1))
    space = ChannelSpace.build(model, tuple(input_shape), quiet=True)
    entries, layer_entry = plan_entries(
        model,
        space,
        unit=unit,
        points=points,
        groups=groups,
        densities=densities,
        blocked_small_inputs=runtime == "ort",
    )
    table = LatencyTable(
        model=spec,
        input_shape=list(space.input_shape),
        machine=machine_signature(runtime, threads),
        batches=[int(b) for b in batches],
        unit=unit,
        points=points,
        groups=sorted({1, *map(int, groups)}),
        densities=sorted({1.0, *map(float, densities)}, reverse=True),
        entries=entries,
        layer_entry=layer_entry,
    )
    table = _resume(Path(out), table)
    todo = [e for e in table.entries.values() if not _measured(e, table.batches)]
    n_points = sum(len(g.c_in) * len(g.c_out) for e in todo for g in e.grids.values()) * len(table.batches)
    log.info(
        "latency table: %d layer signatures (%d to measure, %d grid points)",
        len(entries),
        len(todo),
        n_points,
    )
    bar = progress_bar(total=len(todo) * len(table.batches), desc="lut build", unit="layer")
    try:
        for e in todo:
            measure_entry(e, table.batches, runtime, threads, rounds=rounds, tick=lambda: bar.update(1))
            table.build_s += time.perf_counter() - t_start
            t_start = time.perf_counter()
            table.save(out)
    finally:
        bar.close()
    if not todo and (overhead is None or table.overhead is not None) and Path(out).is_file():
        return table  # a complete table, resumed: nothing measured, the file is left as it was
    if overhead is not None and table.overhead is None:
        table.overhead = overhead(table, space)
    table.build_s += time.perf_counter() - t_start
    table.save(out)
    return table


def _measured(e: Entry, batches: Sequence[int]) -> bool:
    return all(str(b) in g.ms for g in e.grids.values() for b in batches) and all(
        str(b) in e.density_factor for b in batches
    )


def _resume(path: Path, fresh: LatencyTable) -> LatencyTable:
    """``fresh`` with the measured entries of a compatible table at ``path`` (same model, machine, settings).

    Raises:
        PrunekitError: ``path`` holds a table for another model, machine or settings.
    """
    if not path.is_file():
        return fresh
    try:
        old = LatencyTable.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, ValidationError):
        raise PrunekitError(
            f"{path} exists and is not a prunekit latency table; remove it or pick --out"
        ) from None
    same = ("model", "input_shape", "machine", "batches", "unit", "points", "groups", "densities")
    diff = [k for k in same if getattr(old, k) != getattr(fresh, k)]
    if diff or set(old.entries) != set(fresh.entries):
        raise PrunekitError(
            f"{path} holds a latency table with other {', '.join(diff) or 'layers'}; remove it or pick another --out"
        )
    log.info(
        "resuming latency table %s (%d of %d signatures measured)",
        path,
        sum(_measured(e, old.batches) for e in old.entries.values()),
        len(old.entries),
    )
    return old
