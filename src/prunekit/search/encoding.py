"""The gene encoding shared by every searcher: integer gene vectors <-> :class:`~prunekit.space.Plan`.

A searcher (the MetaPruning GA, JCW's NSGA-II, GConv's local search) works on integer vectors ``genes`` of length
``n_genes`` with inclusive per-gene bounds ``low <= genes <= high``. Every gene is an *index into a choice list*:

* **width genes** (one per channel group, or one per set of tied groups): index into a list of width multipliers,
  either a ratio grid (JCW §3: the "channel number search" part, ratios 0.1 ... 1.0) or a scale table (MetaPruning
  §3.3: the seed's 31 scales 0.10 ... 1.00, or e.g. 0.1 ... 2.0 relative to a narrower reference net when the traced
  model is an expanded one). Kept channels per choice come from a *width rule*: :func:`legal_width` (the default,
  ``mode="floor"`` is MetaPruning's ``int(C * scale)``), JCW's ``ceil((C // g) * r) * g`` clamped to ``[g, C]``,
  or any callable ``rule(group, width) -> int``.
* **density genes** (optional, JCW §3 "weight pruning" part): one per conv/linear layer (depthwise convs never get
  one, as in JCW), or one shared gene (``wp_uniform``), indexing a density grid (kept fraction of the weights).
* **conv-groups genes** (optional, GConv): one per conv with at least two legal group counts, indexing that list.

Genes are laid out ``[width genes | density genes | conv-groups genes]`` (:attr:`GeneEncoding.slices`).

**Bounds.** Per-tag bounds are config, ``{"all": (lo, hi), "first": (lo, hi), "strided": ..., ...}`` in the units of
the choice list (ratios / scales / densities). A gene's allowed choices are those inside the intersection of the
bounds of ``all`` and of every tag its group (layer) has: the lower bound is the max of the lows that apply, as in
JCW's ``_parse_bound``, and the upper bound the min of the highs, as in the MetaPruning seed. Tied
groups share one gene whose allowed choices are the intersection over every tied group. A shared ``wp_uniform``
density gene spans the union of the per-layer bounds (lowest low, highest high), as JCW's ``emo_search.py`` does.

**Channels.** :meth:`GeneEncoding.decode` keeps the first ``k`` channels of every group (slimmable / PruningNet
convention, :func:`~prunekit.space.plan_from_widths`) unless an ``importance`` is given. :meth:`GeneEncoding.encode`
maps a plan back to the nearest choices; ``encode(decode(g)) == canonical(g)`` (choices that give the same channel
counts are one candidate; :meth:`GeneEncoding.canonical` picks the smallest such gene value within the bounds).

Example::

    enc = GeneEncoding.build(space, widths=WidthGenes.jcw(), densities=DensityGenes.jcw())
    pop = enc.bounds.random(rng, 64)                 # int64 [64, enc.n_genes]
    macs = CostModel(space).macs(enc.decode_widths(pop))
    plan = enc.decode(pop[0])                        # Plan: groups + layers (density, block)
    assert (enc.encode(plan) == enc.canonical(pop[0])).all()
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from prunekit.errors import PrunekitError
from prunekit.search.genes import GeneBounds
from prunekit.space.channels import TAGS, ChannelGroup, ChannelSpace, LayerShape
from prunekit.space.plan import Importance, LayerChoice, Plan, can_regroup, plan_from_widths, takes_density
from prunekit.space.widths import legal_width

__all__ = [
    "ENCODING_FORMAT",
    "JCW_DENSITY_BOUNDS",
    "JCW_WIDTH_BOUNDS",
    "DensityGenes",
    "GeneEncoding",
    "GroupGenes",
    "WidthGenes",
    "common_group_counts",
    "jcw_width",
    "layer_tags",
    "ratio_grid",
]

ENCODING_FORMAT = "prunekit.search.encoding/1"
_EPS = 1e-9

JCW_WIDTH_BOUNDS: dict[str, tuple[float, float]] = {
    "all": (0.5, 1.0),
    "first": (0.8, 1.0),
    "last": (0.5, 1.0),
    "strided": (0.6, 1.0),
    "residual": (0.9, 1.0),
}
"""JCW's channel-ratio lower bounds (``experiments/res18-search.yaml`` ``NSGAII.lbound.CNS``: bound, fy, ly, strided,
residual), upper bound 1."""

JCW_DENSITY_BOUNDS: dict[str, tuple[float, float]] = {
    "all": (0.3, 1.0),
    "first": (0.8, 1.0),
    "last": (0.5, 1.0),
    "strided": (0.8, 1.0),
}
"""JCW's weight-density lower bounds (``NSGAII.lbound.WP``: bound, fy, ly, strided), upper bound 1."""

Bounds = dict[str, tuple[float, float]]
WidthRule = Callable[[ChannelGroup, float], int]
"""``rule(group, width) -> kept channels``: ``width`` is the fractional target ``choice * reference channels``
(the signature of :func:`legal_width`, so ``functools.partial(legal_width, round_to=8)`` is a rule). The result must
be in ``[1, C]`` and, for a group touching a grouped conv, a multiple of ``group.blocks``."""
LegalGroups = Callable[[LayerShape], Sequence[int]]
"""``legal(layer) -> conv group counts`` a conv may be converted to (its current count included)."""


def ratio_grid(lo: float, hi: float, step: float) -> list[float]:
    """``[lo, lo + step, ..., hi]`` rounded to 10 decimals (no float noise: ``ratio_grid(0.1, 1.0, 0.1)[2] == 0.3``)."""
    if step <= 0 or hi < lo:
        raise PrunekitError(f"ratio grid needs step > 0 and hi >= lo, got lo={lo}, hi={hi}, step={step}")
    n = int(math.floor((hi - lo) / step + 1e-6)) + 1
    return [round(lo + step * i, 10) for i in range(n)]


def jcw_width(group: ChannelGroup, ratio: float, group_size: int = 4) -> int:
    """JCW's kept channels for ``ratio`` (``models/*.py::_make_divisible``): ``ceil((C // g) * ratio) * g``
    clamped to ``[g, C]``, ``g = group_size``.

    For a group touching a grouped conv ``g`` becomes ``lcm(group_size, group.blocks)`` so the width stays balanced.
    Deviation: values within 1e-9 of an integer count as that integer before the ceiling (the seed's float
    arithmetic gives ``ceil(25 * 0.28) = 8`` as ``25 * 0.28 == 7.000000000000001``; this gives 7). On JCW's own grid
    (0.1 steps) both agree.
    """
    c = int(group.channels)
    g = max(1, int(group_size))
    if group.blocks > 1:
        g = math.lcm(g, int(group.blocks))
    w = math.ceil((c // g) * ratio - _EPS) * g
    return int(min(c, max(g, w)))


def common_group_counts(
    layer: LayerShape, *, max_groups: int = 64, min_channels_per_group: int = 1, allow_depthwise: bool = False
) -> list[int]:
    """Conv group counts ``G`` a dense conv can become (GConv §4.1): common divisors of its input and output
    channels, ``G <= max_groups``, at least ``min_channels_per_group`` input and output channels per group, and
    ``G != in_channels`` (depthwise) unless ``allow_depthwise``. Non-conv, depthwise and already grouped layers get
    ``[their current count]`` (GConv leaves them alone). Counts refer to the layer's full (unpruned) channels."""
    if not can_regroup(layer):
        return [int(layer.conv_groups)]
    cin, cout = int(layer.in_size), int(layer.out_size)
    out = []
    for d in range(1, min(cin, cout, int(max_groups)) + 1):
        if cin % d or cout % d or min(cin, cout) // d < min_channels_per_group:
            continue
        if d == cin and d > 1 and not allow_depthwise:
            continue
        out.append(d)
    return out


def layer_tags(space: ChannelSpace) -> dict[str, frozenset[str]]:
    """Tags of every conv / linear layer of ``space`` (the vocabulary of the group tags, per layer):

    * ``first``: a (non-depthwise) conv whose input channels are in no channel group (it reads the model input).
    * ``last``: a layer whose output is a model output (the classifier), or whose output channels feed one (an
      output member of a ``last``-tagged group: JCW's "last layer").
    * ``strided``: the layer's own stride > 1. ``depthwise`` / ``grouped``: a depthwise / other grouped conv.
    * ``residual`` / ``expansion``: an output member of a group with that tag.
    """
    inputs = {m.module for g in space.groups for m in g.members if m.dim == "in"}
    tags: dict[str, set[str]] = {n: set() for n, s in space.layers.items() if s.kind in ("conv", "linear")}
    for g in space.groups:
        for m in g.members:
            if m.dim == "out" and m.module in tags:
                tags[m.module].update(t for t in ("residual", "expansion", "last") if t in g.tags)
    outputs = set(space.output_layers)
    for name, t in tags.items():
        s = space.layers[name]
        if s.kind == "conv" and not s.depthwise and name not in inputs:
            t.add("first")
        if name in outputs:
            t.add("last")
        if s.stride > 1:
            t.add("strided")
        if s.depthwise:
            t.add("depthwise")
        elif s.kind == "conv" and s.conv_groups > 1:
            t.add("grouped")
    return {n: frozenset(t) for n, t in tags.items()}


def _check_tag_bounds(v: Bounds) -> Bounds:
    for tag, (lo, hi) in v.items():
        if tag not in TAGS and tag != "all":
            raise ValueError(f"unknown tag {tag!r} in bounds: choose all or one of {', '.join(TAGS)}")
        if not 0.0 <= lo <= hi:
            raise ValueError(f"bounds.{tag} must be [lo, hi] with 0 <= lo <= hi, got [{lo}, {hi}]")
    return v


def _increasing(v: list[float], what: str, *, positive: bool) -> list[float]:
    if not v:
        raise ValueError(f"{what} must list at least one value")
    if any(b <= a for a, b in zip(v, v[1:], strict=False)):
        raise ValueError(f"{what} must be strictly increasing, got {v}")
    if (positive and v[0] <= 0.0) or v[0] < 0.0:
        raise ValueError(f"{what} must be {'> 0' if positive else '>= 0'}, got {v}")
    return v


def _callable_name(fn: Callable) -> str:
    return f"callable:{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


class WidthGenes(BaseModel):
    """Width genes: one per channel group (tied groups share one), each indexing ``choices``.

    Attributes:
        choices: width multipliers, strictly increasing, > 0: a ratio grid (JCW) or a scale table (MetaPruning;
            may exceed 1 when ``reference`` > 1). Units: fraction of the reference channels.
        rule: channels per choice: ``"legal"`` (:func:`legal_width` with ``round_to`` / ``min_channels`` /
            ``mode``), ``"jcw"`` (:func:`jcw_width` with ``group_size``) or a :data:`WidthRule` callable.
        mode: rounding of the ``legal`` rule (``floor``: MetaPruning's ``int(C * scale)``; ``nearest``; ``ceil``).
        round_to, min_channels: ``legal`` rule: kept counts are multiples of ``round_to``, at least
            ``min_channels``.
        group_size: ``jcw`` rule: kept counts are multiples of ``group_size`` (JCW: 4, its SIMD block).
        reference: what the choices are relative to: a float ``e`` = the traced model is ``e`` x wider than the
            reference net (a choice ``s`` asks for ``s * C / e`` channels; MetaPruning's MobileNetV2 space is
            1.4x-based), or ``{group name: reference channels}`` (other groups: their full ``C``). The width is
            always clamped to ``C`` by the rule.
        bounds: per-tag ``{tag: (lo, hi)}`` in choice units (see the module docstring).
        ties: lists of group names that share one gene (overlapping lists are merged).
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    choices: list[float] = Field(default_factory=lambda: ratio_grid(0.1, 1.0, 0.1))
    rule: Literal["legal", "jcw"] | Callable[..., int] = "legal"
    mode: Literal["floor", "nearest", "ceil"] = "floor"
    round_to: int = Field(1, ge=1)
    min_channels: int = Field(1, ge=1)
    group_size: int = Field(4, ge=1)
    reference: float | dict[str, int] = 1.0
    bounds: Bounds = Field(default_factory=dict)
    ties: list[list[str]] = Field(default_factory=list)

    @field_validator("choices")
    @classmethod
    def _check_choices(cls, v: list[float]) -> list[float]:
        return _increasing(v, "width choices", positive=True)

    @field_validator("bounds")
    @classmethod
    def _check_bounds(cls, v: Bounds) -> Bounds:
        return _check_tag_bounds(v)

    @field_validator("reference")
    @classmethod
    def _check_reference(cls, v: float | dict[str, int]) -> float | dict[str, int]:
        if isinstance(v, dict):
            if any(int(c) < 1 for c in v.values()):
                raise ValueError("reference channel counts must be >= 1")
        elif v <= 0:
            raise ValueError(f"reference must be > 0, got {v}")
        return v

    @classmethod
    def jcw(cls, **overrides: Any) -> WidthGenes:
        """JCW's channel-number search: ratios 0.1 ... 1.0, ``jcw`` rule with ``group_size`` 4,
        :data:`JCW_WIDTH_BOUNDS` (override any field by keyword)."""
        kw: dict[str, Any] = {
            "choices": ratio_grid(0.1, 1.0, 0.1),
            "rule": "jcw",
            "bounds": dict(JCW_WIDTH_BOUNDS),
        }
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def metapruning(
        cls,
        scales: Sequence[float] | None = None,
        *,
        bounds: Bounds | None = None,
        round_to: int = 1,
        min_channels: int = 1,
        **overrides: Any,
    ) -> WidthGenes:
        """MetaPruning's encoding (:func:`prunekit.methods.metapruning.search_encoding`): the seed's 31 scales
        0.10 ... 1.00 (step 0.03), ``legal`` rule with ``mode="floor"``."""
        choices = list(scales) if scales is not None else [round(0.1 + 0.03 * i, 2) for i in range(31)]
        kw: dict[str, Any] = {
            "choices": choices,
            "rule": "legal",
            "mode": "floor",
            "round_to": round_to,
            "min_channels": min_channels,
            "bounds": dict(bounds or {}),
        }
        kw.update(overrides)
        return cls(**kw)

    def state(self) -> dict:
        """JSON-able config (a callable rule is recorded by name)."""
        d = self.model_dump(exclude={"rule"})
        d["rule"] = self.rule if isinstance(self.rule, str) else _callable_name(self.rule)
        d["bounds"] = {k: list(v) for k, v in self.bounds.items()}
        return d


class DensityGenes(BaseModel):
    """Density genes (JCW's weight pruning part): per conv/linear layer the kept fraction of its weights.

    Attributes:
        grid: density values, strictly increasing in ``[0, 1]``; values <= 0 are never chosen (a layer keeps some
            weights; JCW's candidate list starts at 0.0 but its bounds never allow it).
        bounds: per-tag ``{tag: (lo, hi)}`` densities over :func:`layer_tags` (default: JCW's, all 0.3, first 0.8,
            last 0.5, strided 0.8).
        wp_uniform: one density gene shared by every layer (JCW ``SEARCH.wp_uniform``).
        block: block shape ``(out_channels, in_positions)`` written into every :class:`LayerChoice` (JCW: ``(4, 1)``,
            4 filters share one sparsity pattern); ``None`` = unstructured.
        kinds: layer kinds that get a gene (depthwise convs never do).
        layers: explicit layer names (``None`` = every conv/linear layer of ``kinds``).
    """

    model_config = ConfigDict(extra="forbid")
    grid: list[float] = Field(default_factory=lambda: ratio_grid(0.0, 1.0, 0.1))
    bounds: Bounds = Field(default_factory=lambda: dict(JCW_DENSITY_BOUNDS))
    wp_uniform: bool = False
    block: tuple[int, int] | None = None
    kinds: list[Literal["conv", "linear"]] = Field(default_factory=lambda: ["conv", "linear"])
    layers: list[str] | None = None

    @field_validator("grid")
    @classmethod
    def _check_grid(cls, v: list[float]) -> list[float]:
        _increasing(v, "density grid", positive=False)
        if v[-1] > 1.0 or v[-1] <= 0.0:
            raise ValueError(f"density grid must lie in [0, 1] and contain a value > 0, got {v}")
        return v

    @field_validator("bounds")
    @classmethod
    def _check_bounds(cls, v: Bounds) -> Bounds:
        return _check_tag_bounds(v)

    @field_validator("block")
    @classmethod
    def _check_block(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and min(v) < 1:
            raise ValueError(f"block must be two positive ints, got {list(v)}")
        return v

    @classmethod
    def jcw(cls, **overrides: Any) -> DensityGenes:
        """JCW's weight-pruning genes: grid 0.0 ... 1.0 step 0.1, :data:`JCW_DENSITY_BOUNDS`, block ``(4, 1)``,
        convs only (JCW never sparsifies the classifier)."""
        kw: dict[str, Any] = {"block": (4, 1), "kinds": ["conv"]}
        kw.update(overrides)
        return cls(**kw)

    def state(self) -> dict:
        d = self.model_dump()
        d["bounds"] = {k: list(v) for k, v in self.bounds.items()}
        d["block"] = list(self.block) if self.block else None
        return d


class GroupGenes(BaseModel):
    """Conv-groups genes (GConv): per conv the index of its group count in ``legal(layer)``.

    Attributes:
        max_groups, min_channels_per_group, allow_depthwise: options of the default legality,
            :func:`common_group_counts` (gumi: ``--max-groups`` 64, ``--min-factor``).
        legal: a :data:`LegalGroups` callable replacing the default.
        layers: explicit conv names (``None`` = every conv). Layers with fewer than two legal counts get no gene.

    Counts refer to the layer's full (unpruned) channels; decoding does not check them against the widths the
    width genes choose (a count may stop dividing the kept channels): a ``legal`` callable that knows the
    method's rule (GConv) decides.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    max_groups: int = Field(64, ge=1)
    min_channels_per_group: int = Field(1, ge=1)
    allow_depthwise: bool = False
    legal: Callable[..., Sequence[int]] | None = None
    layers: list[str] | None = None

    def counts(self, layer: LayerShape) -> list[int]:
        if self.legal is not None:
            raw = list(self.legal(layer))
        else:
            raw = common_group_counts(
                layer,
                max_groups=self.max_groups,
                min_channels_per_group=self.min_channels_per_group,
                allow_depthwise=self.allow_depthwise,
            )
        if any(int(c) != c or c < 1 for c in raw):
            raise PrunekitError(f"legal conv group counts of {layer.name!r} must be positive ints, got {raw}")
        return sorted({int(c) for c in raw})

    def state(self) -> dict:
        d = self.model_dump(exclude={"legal"})
        d["legal"] = None if self.legal is None else _callable_name(self.legal)
        return d


def _allowed(values: np.ndarray, tags: frozenset[str], bounds: Bounds) -> tuple[float, float, np.ndarray]:
    """Intersect ``all`` and every tag's bounds; return ``(lo, hi, bool mask over values)``."""
    lo, hi = 0.0, math.inf
    for tag in ["all", *sorted(tags)]:
        if tag in bounds:
            lo, hi = max(lo, float(bounds[tag][0])), min(hi, float(bounds[tag][1]))
    return lo, hi, (values >= lo - _EPS) & (values <= hi + _EPS)


def _fmt_tags(tags: frozenset[str]) -> str:
    return ", ".join(sorted(tags)) or "none"


class GeneEncoding:
    """Integer genes <-> :class:`Plan` over one :class:`ChannelSpace` (build with :meth:`build`).

    Attributes:
        space: the channel space. widths / densities / groups: the configs it was built from.
        n_genes: gene vector length. low / high: int64 ``[n_genes]`` inclusive bounds (gene values are indices into
            the gene's full choice list). slices: ``{"widths", "densities", "groups"}`` -> ``slice`` of the genes.
        choices: float ``[K]`` width choices. table: int64 ``[G, K]`` kept channels of group ``g`` at choice ``k``.
        gene_of_group: int64 ``[G]`` width gene of each group. width_members: group indices per width gene.
        density_layers: layer names with a density (space order); density_grid: float ``[D]``;
            density_gene: int64 ``[L]`` gene of each density layer (relative to ``slices["densities"]``).
        group_layers: conv names with a conv-groups gene; group_counts: their legal counts (one list each).
    """

    def __init__(self) -> None:  # use build()
        self.space: ChannelSpace
        self.widths: WidthGenes
        self.densities: DensityGenes | None = None
        self.groups: GroupGenes | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        space: ChannelSpace,
        *,
        widths: WidthGenes | None = None,
        densities: DensityGenes | None = None,
        groups: GroupGenes | None = None,
    ) -> GeneEncoding:
        """The encoding of ``space``: width genes always (default :class:`WidthGenes`), density / conv-groups genes
        when their config is given.

        Raises:
            PrunekitError: a group (tie, layer) whose bounds leave no choice (the message names it and its tags),
                an unknown group / layer name in ``ties`` / ``layers``, a width rule returning an illegal width.
        """
        enc = cls()
        enc.space = space
        enc.widths = widths if widths is not None else WidthGenes()
        enc.densities, enc.groups = densities, groups
        lows: list[int] = []
        highs: list[int] = []
        enc._build_widths(lows, highs)
        w_end = len(lows)
        enc._build_densities(lows, highs)
        d_end = len(lows)
        enc._build_groups(lows, highs)
        enc.low = np.asarray(lows, dtype=np.int64)
        enc.high = np.asarray(highs, dtype=np.int64)
        enc.n_genes = len(lows)
        enc.slices = {
            "widths": slice(0, w_end),
            "densities": slice(w_end, d_end),
            "groups": slice(d_end, len(lows)),
        }
        enc._canon = enc._width_canon()
        for arr in (enc.low, enc.high, enc.table, enc.choices, enc.gene_of_group, enc._canon):
            arr.flags.writeable = False  # shared with searchers: never mutated in place
        enc._fingerprint: str | None = None
        return enc

    def _build_widths(self, lows: list[int], highs: list[int]) -> None:
        cfg, space = self.widths, self.space
        self.choices = np.asarray(cfg.choices, dtype=np.float64)
        G, K = len(space.groups), len(self.choices)
        ref = cfg.reference
        if isinstance(ref, dict):
            unknown = sorted(set(ref) - set(space.names()))
            if unknown:
                raise PrunekitError(f"width reference names unknown channel groups {unknown}")
            base = [float(ref.get(g.name, g.channels)) for g in space.groups]
        else:
            base = [g.channels / float(ref) for g in space.groups]
        table = np.zeros((G, K), dtype=np.int64)
        for i, g in enumerate(space.groups):
            for k, c in enumerate(self.choices):
                table[i, k] = self._width(g, float(c) * base[i], float(c))
        self.table = table
        # ties: union-find over group indices, classes ordered by their first group
        parent = list(range(G))

        def find(x: int) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for tie in cfg.ties:
            idx = [space[name].index for name in tie]  # raises PrunekitError on an unknown name
            for j in idx[1:]:
                a, b = find(idx[0]), find(j)
                parent[max(a, b)] = min(a, b)
        members: dict[int, list[int]] = {}
        for i in range(G):
            members.setdefault(find(i), []).append(i)
        self.width_members = [members[r] for r in sorted(members)]
        self.gene_of_group = np.zeros(G, dtype=np.int64)
        for t, mem in enumerate(self.width_members):
            self.gene_of_group[mem] = t
            ok = np.ones(K, dtype=bool)
            spans = []
            for i in mem:
                g = space.groups[i]
                lo, hi, m = _allowed(self.choices, g.tags, cfg.bounds)
                ok &= m
                spans.append(f"{g.name!r} (tags {_fmt_tags(g.tags)}): [{lo:g}, {hi:g}]")
            if not ok.any():
                table_txt = f"[{self.choices[0]:g} ... {self.choices[-1]:g}]"
                if len(mem) == 1:
                    raise PrunekitError(
                        f"channel group {spans[0]} -- these width bounds contain no value of the width choices "
                        f"{table_txt}; widen the bounds or add choices"
                    )
                raise PrunekitError(
                    f"tied channel groups {[space.groups[i].name for i in mem]}: their width bounds "
                    f"({'; '.join(spans)}) leave no common value of the width choices {table_txt}; widen the bounds "
                    "or untie them"
                )
            nz = np.flatnonzero(ok)
            lows.append(int(nz[0]))
            highs.append(int(nz[-1]))

    def _width(self, g: ChannelGroup, width: float, choice: float) -> int:
        cfg = self.widths
        if cfg.rule == "legal":
            return int(
                legal_width(g, width, round_to=cfg.round_to, min_channels=cfg.min_channels, mode=cfg.mode)
            )
        if cfg.rule == "jcw":
            return jcw_width(g, width / g.channels, cfg.group_size)
        w = cfg.rule(g, width)
        if int(w) != w or not 1 <= w <= g.channels or (g.blocks > 1 and int(w) % g.blocks):
            need = f" and a multiple of its {g.blocks} blocks" if g.blocks > 1 else ""
            raise PrunekitError(
                f"width rule {_callable_name(cfg.rule).removeprefix('callable:')} returned {w} channels for group {g.name!r} at choice "
                f"{choice:g}; it must be an int in [1, {g.channels}]{need}"
            )
        return int(w)

    def _layer_selection(
        self, names: list[str] | None, ok: Callable[[LayerShape], bool], what: str
    ) -> list[str]:
        layers = self.space.layers
        if names is None:
            return [n for n, s in layers.items() if ok(s)]
        chosen = set(names)
        for n in names:
            if n not in layers:
                raise PrunekitError(f"{what} names layer {n!r}, which the model does not have")
            if not ok(layers[n]):
                s = layers[n]
                raise PrunekitError(
                    f"{what} names layer {n!r} ({'depthwise conv' if s.depthwise else s.kind}), which cannot get one"
                )
        return [n for n in layers if n in chosen]

    def _build_densities(self, lows: list[int], highs: list[int]) -> None:
        self.density_layers: list[str] = []
        self.density_grid = np.zeros(0)
        self.density_gene = np.zeros(0, dtype=np.int64)
        self._density_bounds: list[tuple[int, int]] = []
        cfg = self.densities
        if cfg is None:
            return
        kinds = set(cfg.kinds)
        self.density_layers = self._layer_selection(
            cfg.layers, lambda s: s.kind in kinds and takes_density(s), "density genes"
        )
        grid = np.asarray(cfg.grid, dtype=np.float64)
        self.density_grid = grid
        tags = self.layer_tags
        for name in self.density_layers:
            lo, hi, m = _allowed(grid, tags[name], cfg.bounds)
            m &= grid > 0.0
            if not m.any():
                raise PrunekitError(
                    f"layer {name!r} (tags {_fmt_tags(tags[name])}): its density bounds [{lo:g}, {hi:g}] contain no "
                    f"positive value of the density grid [{grid[0]:g} ... {grid[-1]:g}]; widen the bounds or add values"
                )
            nz = np.flatnonzero(m)
            self._density_bounds.append((int(nz[0]), int(nz[-1])))
        if not self.density_layers:
            return
        if cfg.wp_uniform:
            self.density_gene = np.zeros(len(self.density_layers), dtype=np.int64)
            lows.append(min(b[0] for b in self._density_bounds))
            highs.append(max(b[1] for b in self._density_bounds))
        else:
            self.density_gene = np.arange(len(self.density_layers), dtype=np.int64)
            for lo_i, hi_i in self._density_bounds:
                lows.append(lo_i)
                highs.append(hi_i)

    def _build_groups(self, lows: list[int], highs: list[int]) -> None:
        self.group_layers: list[str] = []
        self.group_counts: list[list[int]] = []
        cfg = self.groups
        if cfg is None:
            return
        for name in self._layer_selection(
            cfg.layers,
            lambda s: s.kind == "conv" and not s.depthwise and not s.transposed,
            "conv-groups genes",
        ):
            counts = cfg.counts(self.space.layers[name])
            if len(counts) < 2:
                continue
            self.group_layers.append(name)
            self.group_counts.append(counts)
            lows.append(0)
            highs.append(len(counts) - 1)

    def _width_canon(self) -> np.ndarray:
        """int64 ``[T, K]``: smallest gene value within the bounds giving the same widths of every tied group."""
        T, K = len(self.width_members), len(self.choices)
        canon = np.tile(np.arange(K, dtype=np.int64), (T, 1))
        for t, mem in enumerate(self.width_members):
            seen: dict[tuple[int, ...], int] = {}
            for k in range(int(self.low[t]), K):
                canon[t, k] = seen.setdefault(tuple(self.table[mem, k].tolist()), k)
        return canon

    # ------------------------------------------------------------------ queries
    @property
    def layer_tags(self) -> dict[str, frozenset[str]]:
        """:func:`layer_tags` of the space (cached)."""
        if not hasattr(self, "_layer_tags"):
            self._layer_tags = layer_tags(self.space)
        return self._layer_tags

    @property
    def bounds(self) -> GeneBounds:
        """The bounds as :class:`~prunekit.search.evolution.GeneBounds` (random / mutate / crossover operators)."""
        return GeneBounds(self.low, self.high)

    @property
    def n_width_genes(self) -> int:
        return len(self.width_members)

    def restrict_widths(self, lo: float, hi: float) -> GeneBounds:
        """:attr:`bounds` with every width gene narrowed to the choices in ``[lo, hi]`` (choice units), clipped into
        the gene's own bounds (a gene whose bounds miss the range is pinned to its bound nearest to it); density and
        conv-groups genes keep their bounds. MetaPruning's ``random_scales``: the seed's ResNet draws its random
        proposals from scales 0.46 ... 0.79 only.

        Raises:
            PrunekitError: no width choice lies in ``[lo, hi]``.
        """
        ok = np.flatnonzero((self.choices >= lo - _EPS) & (self.choices <= hi + _EPS))
        if ok.size == 0:
            raise PrunekitError(
                f"width range [{lo:g}, {hi:g}] contains no value of the width choices "
                f"[{self.choices[0]:g} ... {self.choices[-1]:g}]"
            )
        w = self.slices["widths"]
        low, high = self.low.copy(), self.high.copy()
        low[w] = np.clip(ok[0], self.low[w], self.high[w])
        high[w] = np.maximum(low[w], np.clip(ok[-1], self.low[w], self.high[w]))
        return GeneBounds(low, high)

    def _genes(self, genes: np.ndarray | Sequence[int], *, single: bool = False) -> np.ndarray:
        g = np.asarray(genes)
        if g.dtype.kind not in "iu":
            if g.size and (g.dtype.kind != "f" or not np.all(np.mod(g, 1) == 0)):
                raise PrunekitError("genes must be integers (indices into each gene's choices)")
            g = g.astype(np.int64)
        g = g.astype(np.int64, copy=False)
        if single and g.ndim != 1:
            raise PrunekitError(
                f"expected one gene vector of shape [{self.n_genes}], got shape {list(g.shape)}"
            )
        if g.ndim not in (1, 2) or g.shape[-1] != self.n_genes:
            raise PrunekitError(
                f"expected genes of shape [{self.n_genes}] or [N, {self.n_genes}], got shape {list(g.shape)}"
            )
        bad = (g < self.low) | (g > self.high)
        if bad.any():
            i = int(np.flatnonzero(bad.reshape(-1, self.n_genes).any(0))[0])
            raise PrunekitError(
                f"gene {i} ({self._gene_name(i)}) is outside its bounds [{self.low[i]}, {self.high[i]}]"
            )
        return g

    def _gene_name(self, i: int) -> str:
        s = self.slices
        if i < s["widths"].stop:
            return "width of " + ", ".join(self.space.groups[j].name for j in self.width_members[i])
        if i < s["densities"].stop:
            if self.densities is not None and self.densities.wp_uniform:
                return "shared density"
            return f"density of {self.density_layers[i - s['densities'].start]}"
        return f"conv groups of {self.group_layers[i - s['groups'].start]}"

    def canonical(self, genes: np.ndarray | Sequence[int]) -> np.ndarray:
        """Genes ``[n]`` or ``[N, n]`` with every width gene mapped to the smallest value within its bounds giving
        the same channel counts (choices that round to the same widths are one candidate); other genes unchanged."""
        g = self._genes(genes).copy()
        w = g[..., self.slices["widths"]]
        g[..., self.slices["widths"]] = self._canon[np.arange(self.n_width_genes), w]
        return g

    def decode_widths(self, genes: np.ndarray | Sequence[int]) -> np.ndarray:
        """Kept channels per group, int64 ``[G]`` for genes ``[n]`` or ``[N, G]`` for ``[N, n]`` (vectorised; feed
        to :meth:`~prunekit.cost.macs.CostModel.macs`).

        Raises:
            PrunekitError: wrong shape, non-integer genes or a gene outside its bounds.
        """
        g = self._genes(genes)
        k = g[..., self.slices["widths"]][..., self.gene_of_group]
        return self.table[np.arange(self.table.shape[0]), k]

    def decode_ratios(self, genes: np.ndarray | Sequence[int]) -> np.ndarray:
        """Width choice value (ratio / scale) per group, float ``[G]`` or ``[N, G]``."""
        g = self._genes(genes)
        return self.choices[g[..., self.slices["widths"]][..., self.gene_of_group]]

    def decode_densities(self, genes: np.ndarray | Sequence[int]) -> np.ndarray:
        """Density per layer of :attr:`density_layers`, float ``[L]`` or ``[N, L]`` (empty without density genes)."""
        g = self._genes(genes)
        return self.density_grid[g[..., self.slices["densities"]][..., self.density_gene]]

    def decode_conv_groups(self, genes: np.ndarray | Sequence[int]) -> np.ndarray:
        """Conv group count per layer of :attr:`group_layers`, int64 ``[Lg]`` or ``[N, Lg]``."""
        g = self._genes(genes)
        part = g[..., self.slices["groups"]]
        out = np.zeros(part.shape, dtype=np.int64)
        for j, counts in enumerate(self.group_counts):
            out[..., j] = np.asarray(counts, dtype=np.int64)[part[..., j]]
        return out

    def decode(
        self,
        genes: np.ndarray | Sequence[int],
        *,
        model: Any = None,
        importance: Importance | None = None,
        spec: str | None = None,
    ) -> Plan:
        """The plan of one gene vector ``[n]``: per group the first ``k`` channels (top-``k`` by
        ``importance(model, space, group)`` when given, :func:`~prunekit.space.plan_from_widths`); per density
        layer ``LayerChoice(density, block)``; per conv-groups layer ``conv_groups`` (``None`` when it equals the
        layer's current count). ``spec`` is recorded as ``plan.model``.

        Raises:
            PrunekitError: wrong shape, non-integer genes or a gene outside its bounds.
        """
        g = self._genes(genes, single=True)
        plan = plan_from_widths(
            self.space, self.decode_widths(g), model=model, importance=importance, spec=spec
        )
        block = self.densities.block if self.densities is not None else None
        for name, d in zip(self.density_layers, self.decode_densities(g).tolist(), strict=True):
            plan.layers[name] = LayerChoice(density=float(d), block=block)
        for name, c in zip(self.group_layers, self.decode_conv_groups(g).tolist(), strict=True):
            if c == self.space.layers[name].conv_groups:
                continue
            lc = plan.layers.get(name) or LayerChoice()
            plan.layers[name] = lc.model_copy(update={"conv_groups": int(c)})
        return plan

    def encode(self, plan: Plan) -> np.ndarray:
        """The genes ``[n]`` (int64) nearest to ``plan``: per width gene the choice minimising the summed
        ``|channels - kept|`` over its groups (smallest on ties), per density gene the nearest grid value (a missing
        density counts as 1.0; a shared gene takes the mean over the layers), per conv-groups gene the nearest
        legal count (missing = the layer's current count). Exact for plans made by :meth:`decode`:
        ``encode(decode(g)) == canonical(g)``.

        Raises:
            PrunekitError: the plan does not fit the space (:meth:`Plan.validate_against`).
        """
        # group-count genes range over the full channels: whether a count divides the pruned widths is checked
        # where the plan is applied (Plan.validate_against), not here
        plan.model_copy(update={"layers": {}}).validate_against(self.space)
        unknown = sorted(set(plan.layers) - set(self.space.layers))
        if unknown:
            raise PrunekitError(f"plan names layer {unknown[0]!r}, which the model does not have")
        genes = np.zeros(self.n_genes, dtype=np.int64)
        kept = plan.widths(self.space)
        for t, mem in enumerate(self.width_members):
            lo, hi = int(self.low[t]), int(self.high[t])
            cost = np.abs(self.table[mem, lo : hi + 1] - kept[mem, None]).sum(0)
            genes[t] = lo + int(np.argmin(cost))
        ds = self.slices["densities"]
        if self.density_layers:
            dens = np.array(
                [
                    lc.density if (lc := plan.layers.get(n)) is not None and lc.density is not None else 1.0
                    for n in self.density_layers
                ]
            )
            targets = [float(dens.mean())] if self.densities.wp_uniform else dens.tolist()
            for j, d in enumerate(targets):
                i = ds.start + j
                lo, hi = int(self.low[i]), int(self.high[i])
                genes[i] = lo + int(np.argmin(np.abs(self.density_grid[lo : hi + 1] - d)))
        gs = self.slices["groups"]
        for j, (name, counts) in enumerate(zip(self.group_layers, self.group_counts, strict=True)):
            lc = plan.layers.get(name)
            c = (
                lc.conv_groups
                if lc is not None and lc.conv_groups is not None
                else self.space.layers[name].conv_groups
            )
            genes[gs.start + j] = int(np.argmin(np.abs(np.asarray(counts) - c)))
        return genes

    # ------------------------------------------------------------------ reports / checkpoints
    def describe(self, genes: np.ndarray | Sequence[int] | None = None) -> list[dict]:
        """One row per gene for reports: ``gene`` (index), ``kind`` (``width`` / ``density`` / ``groups``),
        ``targets`` (group or layer names), ``tags``, ``choices`` (the allowed values, in choice units),
        ``low`` / ``high`` (gene bounds), ``full`` (channels per group / 1.0 / current conv groups); with ``genes``
        also ``value`` (the gene) and ``decoded`` (channels per group / density / conv groups)."""
        g = None if genes is None else self._genes(genes, single=True)
        rows: list[dict] = []
        widths = None if g is None else self.decode_widths(g)
        for t, mem in enumerate(self.width_members):
            lo, hi = int(self.low[t]), int(self.high[t])
            groups = [self.space.groups[i] for i in mem]
            row = {
                "gene": t,
                "kind": "width",
                "targets": [x.name for x in groups],
                "tags": sorted(set().union(*(x.tags for x in groups))),
                "choices": self.choices[lo : hi + 1].tolist(),
                "low": lo,
                "high": hi,
                "full": [x.channels for x in groups],
            }
            if g is not None:
                row.update(value=int(g[t]), choice=float(self.choices[g[t]]), decoded=widths[mem].tolist())
            rows.append(row)
        ds = self.slices["densities"]
        dens = None if g is None else self.decode_densities(g)
        for j in range(ds.stop - ds.start):
            i = ds.start + j
            names = [
                n for n, gi in zip(self.density_layers, self.density_gene.tolist(), strict=True) if gi == j
            ]
            lo, hi = int(self.low[i]), int(self.high[i])
            row = {
                "gene": i,
                "kind": "density",
                "targets": names,
                "tags": sorted(set().union(*(self.layer_tags[n] for n in names))),
                "choices": self.density_grid[lo : hi + 1].tolist(),
                "low": lo,
                "high": hi,
                "full": 1.0,
            }
            if g is not None:
                row.update(value=int(g[i]), decoded=float(dens[self.density_layers.index(names[0])]))
            rows.append(row)
        gs = self.slices["groups"]
        for j, (name, counts) in enumerate(zip(self.group_layers, self.group_counts, strict=True)):
            i = gs.start + j
            row = {
                "gene": i,
                "kind": "groups",
                "targets": [name],
                "tags": sorted(self.layer_tags[name]),
                "choices": list(counts),
                "low": int(self.low[i]),
                "high": int(self.high[i]),
                "full": int(self.space.layers[name].conv_groups),
            }
            if g is not None:
                row.update(value=int(g[i]), decoded=int(counts[g[i]]))
            rows.append(row)
        return rows

    @property
    def state(self) -> dict:
        """JSON-able description of the encoding: the configs plus the derived layout (groups / layers per gene,
        bounds, width table, legal counts), so a checkpoint can tell whether it was made for this encoding
        (:attr:`fingerprint`). Callable rules are recorded by name; the derived table still pins their output."""
        return {
            "format": ENCODING_FORMAT,
            "widths": self.widths.state(),
            "densities": None if self.densities is None else self.densities.state(),
            "groups": None if self.groups is None else self.groups.state(),
            "group_names": self.space.names(),
            "channels": self.space.channels.tolist(),
            "width_genes": [[self.space.groups[i].name for i in mem] for mem in self.width_members],
            "table": self.table.tolist(),
            "density_layers": list(self.density_layers),
            "group_layers": list(self.group_layers),
            "group_counts": [list(c) for c in self.group_counts],
            "low": self.low.tolist(),
            "high": self.high.tolist(),
        }

    @property
    def fingerprint(self) -> str:
        """sha256 hex digest of :attr:`state` (canonical JSON)."""
        if self._fingerprint is None:
            text = json.dumps(self.state, sort_keys=True, separators=(",", ":"))
            self._fingerprint = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return self._fingerprint

    def __repr__(self) -> str:
        s = self.slices
        return (
            f"GeneEncoding(n_genes={self.n_genes}, widths={s['widths'].stop - s['widths'].start}, "
            f"densities={s['densities'].stop - s['densities'].start}, groups={s['groups'].stop - s['groups'].start})"
        )
