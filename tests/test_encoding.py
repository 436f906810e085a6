"""The shared gene encoding (prunekit.search.encoding): round trips, legality, tag bounds, ties, MetaPruning
encoding (hand-checked tables), vectorised decoding, density and conv-groups genes, state / fingerprint."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.nets import DepthwiseChain, GroupedConv, ResidualProj

from prunekit.cost.macs import CostModel
from prunekit.errors import PrunekitError
from prunekit.models import create_model
from prunekit.search.encoding import (
    JCW_DENSITY_BOUNDS,
    DensityGenes,
    GeneEncoding,
    GroupGenes,
    WidthGenes,
    common_group_counts,
    jcw_width,
    layer_tags,
    ratio_grid,
)
from prunekit.space import ChannelSpace, plan_from_widths
from prunekit.space.channels import ChannelGroup
from prunekit.space.widths import legal_width

SPECS = {
    "resnet20": (lambda: create_model("resnet20"), (1, 3, 32, 32)),
    "mbv2": (lambda: create_model("mobilenet_v2:width_mult=0.5"), (1, 3, 32, 32)),
    "grouped": (GroupedConv, (1, 3, 8, 8)),
    "depthwise": (DepthwiseChain, (1, 3, 16, 16)),
    "residual": (ResidualProj, (1, 3, 16, 16)),
}


@functools.cache
def space_of(name: str) -> ChannelSpace:
    factory, shape = SPECS[name]
    torch.manual_seed(0)
    return ChannelSpace.build(factory(), shape, quiet=True)


def _stage_ties(space: ChannelSpace) -> list[list[str]]:
    """Tie every group whose root conv runs at the same output resolution (a "stage")."""
    by_res: dict[tuple, list[str]] = {}
    for g in space.groups:
        by_res.setdefault(space.layers[g.name].out_spatial, []).append(g.name)
    return [names for names in by_res.values() if len(names) > 1]


def _configs(name: str) -> dict[str, dict]:
    space = space_of(name)
    return {
        "legal": {"widths": WidthGenes(round_to=4, min_channels=2, mode="nearest")},
        "metapruning": {"widths": WidthGenes.metapruning(bounds={"first": (0.5, 1.0)})},
        "jcw": {
            "widths": WidthGenes.jcw(ties=_stage_ties(space)),
            "densities": DensityGenes.jcw(),
            "groups": GroupGenes(max_groups=8),
        },
        "uniform_density": {
            "widths": WidthGenes(choices=ratio_grid(0.25, 1.0, 0.25)),
            "densities": DensityGenes(wp_uniform=True, block=(2, 1)),
        },
    }


@functools.cache
def encoding_of(name: str, config: str) -> GeneEncoding:
    return GeneEncoding.build(space_of(name), **_configs(name)[config])


CASES = [(n, c) for n in ("resnet20", "mbv2", "grouped", "depthwise") for c in _configs("grouped")]


def _validate_decoded(plan, enc: GeneEncoding) -> None:
    """The channel part of a decoded plan is always valid; its group counts are genes over the full channels, so
    with pruned widths a count may not divide them (then, and only then, validation says so)."""
    plan.model_copy(update={"layers": {}}).validate_against(enc.space)
    try:
        plan.validate_against(enc.space)
    except PrunekitError as exc:
        assert "does not divide" in str(exc) and enc.group_layers


def _random(enc: GeneEncoding, n: int, seed: int = 0) -> np.ndarray:
    return enc.bounds.random(np.random.default_rng(seed), n)


def _genes_strategy(enc: GeneEncoding):
    span = enc.high - enc.low + 1
    return st.lists(st.integers(0, 10**6), min_size=enc.n_genes, max_size=enc.n_genes).map(
        lambda v: enc.low + np.asarray(v, dtype=np.int64) % span
    )


# ---------------------------------------------------------------------- round trip + legality (property-based)
@pytest.mark.parametrize(("net", "config"), CASES)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_random_genes_round_trip_and_decode_legal_widths(net, config, data):
    enc = encoding_of(net, config)
    space = enc.space
    genes = data.draw(_genes_strategy(enc))
    plan = enc.decode(genes)
    _validate_decoded(plan, enc)
    widths = plan.widths(space)
    np.testing.assert_array_equal(widths, enc.decode_widths(genes))
    C = space.channels
    blocks = np.array([g.blocks for g in space.groups])
    assert ((widths >= 1) & (widths <= C)).all()
    assert (widths % blocks == 0).all()  # balanced across grouped-conv blocks
    cfg = enc.widths
    mult = (
        np.array([math.lcm(cfg.round_to, int(b)) for b in blocks])
        if cfg.rule == "legal"
        else np.array([math.lcm(cfg.group_size, int(b)) for b in blocks])
    )
    assert ((widths % mult == 0) | (widths == C)).all()
    assert (widths >= np.minimum(C, np.maximum(cfg.min_channels if cfg.rule == "legal" else 1, mult))).all()
    # encode is exact up to the canonical choice, and decoding it again gives the same plan
    back = enc.encode(plan)
    np.testing.assert_array_equal(back, enc.canonical(genes))
    assert enc.decode(back).model_dump() == plan.model_dump()
    assert (back >= enc.low).all() and (back <= enc.high).all()


@pytest.mark.parametrize(("net", "config"), CASES)
def test_extreme_genes_round_trip(net, config):
    enc = encoding_of(net, config)
    for genes in (enc.low, enc.high):
        plan = enc.decode(genes)
        np.testing.assert_array_equal(enc.encode(plan), enc.canonical(genes))


def test_round_trip_with_importance_selection():
    """Channel selection by importance changes which channels are kept, not the genes."""
    enc = encoding_of("resnet20", "legal")
    space = enc.space

    def last_first(model, space, group):
        return torch.arange(group.channels, dtype=torch.float32)  # highest score = last channel

    genes = _random(enc, 1, seed=3)[0]
    plan = enc.decode(genes, importance=last_first, spec="resnet20")
    assert plan.model == "resnet20"
    g = next(g for g in space.groups if g.name in plan.groups)
    keep = plan.groups[g.name].keep
    assert keep == list(range(g.channels - len(keep), g.channels))
    np.testing.assert_array_equal(enc.encode(plan), enc.canonical(genes))


def test_encode_picks_the_nearest_choice():
    enc = GeneEncoding.build(space_of("resnet20"), widths=WidthGenes(choices=ratio_grid(0.25, 1.0, 0.25)))
    space = enc.space
    rng = np.random.default_rng(1)
    for _ in range(20):
        widths = rng.integers(1, space.channels + 1)
        genes = enc.encode(plan_from_widths(space, widths))
        for i in range(len(space.groups)):
            best = np.abs(enc.table[i] - widths[i]).min()
            assert abs(enc.table[i, genes[i]] - widths[i]) == best


# ---------------------------------------------------------------------- tag bounds
def test_first_group_never_below_its_bound():
    space = space_of("resnet20")
    enc = GeneEncoding.build(space, widths=WidthGenes(bounds={"all": (0.1, 1.0), "first": (0.7, 1.0)}))
    first = [i for i, g in enumerate(space.groups) if "first" in g.tags]
    other = [i for i, g in enumerate(space.groups) if "first" not in g.tags]
    assert first and other
    ratios = enc.decode_ratios(_random(enc, 500))
    assert ratios[:, first].min() >= 0.7 - 1e-9
    assert ratios[:, other].min() == pytest.approx(0.1)  # the other groups do go lower
    assert enc.decode_ratios(enc.low)[first].min() == pytest.approx(0.7)


def test_bounds_intersect_over_all_and_every_tag():
    space = space_of("resnet20")
    g = space["layer2.0.conv2"]
    assert {"residual", "strided"} <= g.tags
    bounds = {"all": (0.2, 1.0), "residual": (0.4, 0.9), "strided": (0.6, 1.0)}
    enc = GeneEncoding.build(space, widths=WidthGenes(bounds=bounds))
    row = enc.describe()[g.index]
    assert row["targets"] == [g.name]
    assert row["choices"] == pytest.approx(
        [0.6, 0.7, 0.8, 0.9]
    )  # lo = max of the lows, hi = min of the highs
    plain = enc.describe()[space["layer1.0.conv1"].index]  # no tags: only "all"
    assert plain["choices"] == pytest.approx(ratio_grid(0.2, 1.0, 0.1))


def test_empty_intersection_names_the_group():
    space = space_of("resnet20")
    with pytest.raises(PrunekitError, match=r"layer2\.0\.conv2") as exc:
        GeneEncoding.build(space, widths=WidthGenes(bounds={"residual": (0.1, 0.3), "strided": (0.5, 1.0)}))
    assert "residual" in str(exc.value) and "strided" in str(exc.value)
    # bounds between two choices of the table
    with pytest.raises(PrunekitError, match="conv1"):
        GeneEncoding.build(space, widths=WidthGenes(choices=[0.5, 1.0], bounds={"first": (0.6, 0.9)}))


def test_empty_density_intersection_names_the_layer():
    space = space_of("mbv2")
    with pytest.raises(PrunekitError, match=r"features\.0\.0"):
        GeneEncoding.build(space, densities=DensityGenes(bounds={"first": (0.0, 0.4), "strided": (0.5, 1.0)}))
    with pytest.raises(PrunekitError, match="positive value"):  # density 0 is never a choice
        GeneEncoding.build(space, densities=DensityGenes(bounds={"all": (0.0, 0.05)}))


def test_unknown_tag_in_bounds_is_rejected():
    with pytest.raises(ValueError, match="unknown tag"):
        WidthGenes(bounds={"frist": (0.5, 1.0)})
    with pytest.raises(ValueError, match="lo <= hi"):
        DensityGenes(bounds={"all": (0.8, 0.3)})


# ---------------------------------------------------------------------- ties
def test_tied_groups_share_one_gene():
    space = space_of("resnet20")
    ties = [
        ["layer1.0.conv1", "layer1.1.conv1", "layer1.2.conv1"],
        ["layer2.0.conv1", "layer2.1.conv1", "layer2.2.conv1"],
    ]
    untied = GeneEncoding.build(space)
    enc = GeneEncoding.build(space, widths=WidthGenes(ties=ties))
    assert enc.n_genes == untied.n_genes - 4 == len(space.groups) - 4
    ratios = enc.decode_ratios(_random(enc, 200))
    widths = enc.decode_widths(_random(enc, 200))
    for tie in ties:
        idx = [space[n].index for n in tie]
        assert (ratios[:, idx] == ratios[:, idx[:1]]).all()
        assert (widths[:, idx] == widths[:, idx[:1]]).all()
    # the tie's bounds are the intersection: layer2.0.conv1 is strided, so the whole stage-2 tie is bounded
    enc_b = GeneEncoding.build(space, widths=WidthGenes(ties=ties, bounds={"strided": (0.6, 1.0)}))
    idx = [space[n].index for n in ties[1]]
    assert enc_b.decode_ratios(_random(enc_b, 200))[:, idx].min() >= 0.6 - 1e-9
    assert enc_b.decode_ratios(enc_b.low)[space["layer1.0.conv1"].index] == pytest.approx(0.1)


def test_ties_across_sizes_keep_the_same_ratio_and_overlaps_merge():
    space = space_of("resnet20")
    enc = GeneEncoding.build(
        space, widths=WidthGenes(ties=[["conv1", "layer3.1.conv1"], ["layer3.1.conv1", "layer2.1.conv1"]])
    )
    assert enc.n_genes == len(space.groups) - 2
    idx = [space[n].index for n in ("conv1", "layer2.1.conv1", "layer3.1.conv1")]
    assert len({int(enc.gene_of_group[i]) for i in idx}) == 1
    r = enc.decode_ratios(_random(enc, 100))
    assert (r[:, idx] == r[:, idx[:1]]).all()
    w = enc.decode_widths(enc.high)
    assert list(w[idx]) == [16, 32, 64]


def test_tie_errors():
    space = space_of("resnet20")
    with pytest.raises(PrunekitError, match="nope"):
        GeneEncoding.build(space, widths=WidthGenes(ties=[["conv1", "nope"]]))
    with pytest.raises(PrunekitError, match=r"tied channel groups \['conv1', 'layer2\.0\.conv1'\]"):
        GeneEncoding.build(
            space,
            widths=WidthGenes(
                ties=[["conv1", "layer2.0.conv1"]], bounds={"first": (0.8, 1.0), "strided": (0.1, 0.5)}
            ),
        )


def test_canonical_merges_choices_with_equal_widths():
    # 8 channels, ratios 0.1..1.0 with floor: 0.1 -> 1 ... several ratios give the same count on small groups
    enc = encoding_of("grouped", "legal")
    genes = _random(enc, 300)
    canon = enc.canonical(genes)
    np.testing.assert_array_equal(enc.decode_widths(canon), enc.decode_widths(genes))
    assert (canon <= genes).all() and (canon >= enc.low).all()
    assert (canon != genes).any()
    np.testing.assert_array_equal(enc.canonical(canon), canon)


# ---------------------------------------------------------------------- MetaPruning's encoding
SEED_SCALES = [round(0.1 + 0.03 * i, 2) for i in range(31)]  # the MetaPruning seed's 0.10, 0.13, ..., 1.00


def _seed_canonical(table: np.ndarray, low: np.ndarray) -> np.ndarray:
    """MetaPruning's canonical rule, written out: a scale giving the same width as the scale below it (when that one
    is within the bounds) is the same candidate as that one -> int64 ``[G, K]`` canonical gene per (group, gene)."""
    canon = np.tile(np.arange(table.shape[1], dtype=np.int64), (table.shape[0], 1))
    for i in range(table.shape[0]):
        for k in range(1, table.shape[1]):
            if table[i, k] == table[i, k - 1] and k - 1 >= low[i]:
                canon[i, k] = canon[i, k - 1]
    return canon


def test_metapruning_default_scales_are_the_seeds():
    assert WidthGenes.metapruning().choices == SEED_SCALES
    assert (
        len(SEED_SCALES) == 31
        and SEED_SCALES[0] == 0.1
        and SEED_SCALES[-1] == 1.0
        and SEED_SCALES[15] == 0.55
    )


@pytest.mark.parametrize(
    ("round_to", "table", "canon"),
    [
        # floor(s * C), at least one channel: C=8 -> 0.8, 1.2, 2, 2.4, 4, 8; C=16 -> 1.6, 2.4, 4, 4.8, 8, 16
        (1, [[1, 1, 2, 2, 4, 8], [1, 1, 2, 2, 4, 8], [1, 2, 4, 4, 8, 16], [1, 2, 4, 4, 8, 16]],
         [[0, 1, 2, 2, 4, 5], [0, 0, 2, 2, 4, 5], [0, 1, 2, 2, 4, 5], [0, 1, 2, 2, 4, 5]]),
        # floored to a multiple of 2, at least 2
        (2, [[2, 2, 2, 2, 4, 8], [2, 2, 2, 2, 4, 8], [2, 2, 4, 4, 8, 16], [2, 2, 4, 4, 8, 16]],
         [[0, 1, 2, 2, 4, 5], [0, 0, 0, 0, 4, 5], [0, 0, 2, 2, 4, 5], [0, 1, 2, 2, 4, 5]]),
    ],
)  # fmt: skip
def test_metapruning_encoding_by_hand(round_to, table, canon):
    """ResidualProj (stem 8 [first, residual], b1c1 8 [], b2c1 16 [strided], b2c2 16 [last, residual, strided])."""
    space = space_of("residual")
    assert [(g.name, g.channels) for g in space.groups] == [
        ("stem", 8),
        ("b1c1", 8),
        ("b2c1", 16),
        ("b2c2", 16),
    ]
    scales = [0.1, 0.15, 0.25, 0.3, 0.5, 1.0]
    bounds = {"first": (0.25, 1.0), "strided": (0.1, 0.5), "residual": (0.15, 1.0)}
    enc = GeneEncoding.build(space, widths=WidthGenes.metapruning(scales, bounds=bounds, round_to=round_to))
    assert enc.n_genes == 4 and enc.slices["widths"] == slice(0, 4)
    np.testing.assert_array_equal(enc.table, table)
    # stem: first [0.25, 1] & residual [0.15, 1]; b1c1: all; b2c1: strided [0.1, 0.5]; b2c2: [0.15, 0.5]
    np.testing.assert_array_equal(enc.low, [2, 0, 0, 1])
    np.testing.assert_array_equal(enc.high, [5, 5, 4, 4])
    canon = np.asarray(canon)
    for i in range(4):
        for k in range(int(enc.low[i]), int(enc.high[i]) + 1):
            genes = enc.low.copy()
            genes[i] = k
            got = enc.canonical(genes)
            assert got[i] == canon[i, k], (i, k)
            np.testing.assert_array_equal(np.delete(got, i), np.delete(enc.canonical(enc.low), i))
    genes = np.array([3, 1, 4, 2])
    np.testing.assert_array_equal(
        enc.decode_widths(genes), [table[0][3], table[1][1], table[2][4], table[3][2]]
    )
    np.testing.assert_allclose(enc.decode_ratios(genes), [0.3, 0.15, 0.5, 0.25])
    with pytest.raises(PrunekitError, match="outside its bounds"):
        enc.canonical(np.array([1, 0, 0, 1]))  # stem's scale 0.15 is below its bounds


@pytest.mark.parametrize("net", ["resnet20", "mbv2"])
@pytest.mark.parametrize(
    ("bounds", "round_to", "min_channels"),
    [
        ({}, 1, 1),
        ({"all": (0.3, 1.0), "first": (0.5, 1.0), "last": (1.0, 1.0)}, 1, 1),
        ({"strided": (0.46, 0.79), "residual": (0.5, 1.0), "depthwise": (0.4, 1.0)}, 4, 2),
        ({"expansion": (0.2, 0.6), "all": (0.1, 0.9)}, 8, 1),
    ],
)
def test_metapruning_encoding_follows_the_seed_rule(net, bounds, round_to, min_channels):
    """Width table ``legal_width(g, s * C, mode="floor")`` (``int(C * s)`` when ``round_to`` is 1), gene bounds =
    the scales inside the intersection of the group's tag bounds, the seed's canonical rule."""
    space = space_of(net)
    enc = GeneEncoding.build(
        space,
        widths=WidthGenes.metapruning(
            SEED_SCALES, bounds=bounds, round_to=round_to, min_channels=min_channels
        ),
    )
    assert enc.n_genes == len(space.groups)
    np.testing.assert_array_equal(enc.choices, SEED_SCALES)
    table = np.array(
        [
            [
                legal_width(g, s * g.channels, round_to=round_to, min_channels=min_channels, mode="floor")
                for s in SEED_SCALES
            ]
            for g in space.groups
        ]
    )
    np.testing.assert_array_equal(enc.table, table)
    if round_to == min_channels == 1:
        seed = np.array([[max(1, int(g.channels * s)) for s in SEED_SCALES] for g in space.groups])
        np.testing.assert_array_equal(enc.table, seed)
    sc = np.asarray(SEED_SCALES)
    for i, g in enumerate(space.groups):
        lo = max([0.0] + [bounds[t][0] for t in ["all", *g.tags] if t in bounds])
        hi = min([1.0] + [bounds[t][1] for t in ["all", *g.tags] if t in bounds])
        ok = np.flatnonzero((sc >= lo - 1e-9) & (sc <= hi + 1e-9))
        assert (enc.low[i], enc.high[i]) == (ok[0], ok[-1]), g.name
    genes = _random(enc, 200)
    idx = np.arange(len(space.groups))
    np.testing.assert_array_equal(enc.decode_widths(genes), table[idx, genes])
    np.testing.assert_array_equal(enc.canonical(genes), _seed_canonical(table, enc.low)[idx, genes])
    np.testing.assert_allclose(enc.decode_ratios(genes), sc[genes])


def test_restrict_widths():
    """MetaPruning's ``random_scales``: width genes narrowed to a scale range, clipped into each gene's bounds."""
    space = space_of("residual")
    scales = [0.1, 0.15, 0.25, 0.3, 0.5, 1.0]
    bounds = {"first": (0.25, 1.0), "strided": (0.1, 0.5), "residual": (0.15, 1.0)}
    enc = GeneEncoding.build(space, widths=WidthGenes.metapruning(scales, bounds=bounds))
    rb = enc.restrict_widths(0.15, 0.3)  # choices 1..3; gene bounds [2, 5], [0, 5], [0, 4], [1, 4]
    np.testing.assert_array_equal(rb.low, [2, 1, 1, 1])
    np.testing.assert_array_equal(rb.high, [3, 3, 3, 3])
    rb = enc.restrict_widths(0.6, 2.0)  # only 1.0 (choice 5): b2c1 / b2c2 end at 4 -> pinned there
    np.testing.assert_array_equal(rb.low, [5, 5, 4, 4])
    np.testing.assert_array_equal(rb.high, [5, 5, 4, 4])
    genes = rb.random(np.random.default_rng(0), 50)
    assert enc.bounds.contains(genes).all()
    with pytest.raises(PrunekitError, match="contains no value of the width choices"):
        enc.restrict_widths(0.35, 0.45)
    # density / conv-groups genes keep their bounds
    enc = encoding_of("grouped", "jcw")
    rb = enc.restrict_widths(0.5, 0.7)
    w, rest = enc.slices["widths"], slice(enc.slices["widths"].stop, None)
    np.testing.assert_array_equal(rb.low[rest], enc.low[rest])
    np.testing.assert_array_equal(rb.high[rest], enc.high[rest])
    lo, hi = enc.low[w], enc.high[w]  # choices 0.5 (4) ... 0.7 (6), clipped into each gene's bounds
    np.testing.assert_array_equal(rb.low[w], np.clip(4, lo, hi))
    np.testing.assert_array_equal(rb.high[w], np.clip(6, lo, hi))
    assert (rb.low[w] > 4).any()  # JCW's first-layer bound 0.8 is above the range: pinned to its low


def test_scale_table_relative_to_a_narrower_reference():
    """An expanded net searched with scales 0.1..2.0 of the reference widths (the traced model is 2x)."""
    space = space_of("resnet20")
    scales = ratio_grid(0.1, 2.4, 0.1)
    enc = GeneEncoding.build(space, widths=WidthGenes.metapruning(scales, reference=2.0))
    at = {round(s, 1): k for k, s in enumerate(scales)}
    np.testing.assert_array_equal(enc.table[:, at[2.0]], space.channels)
    np.testing.assert_array_equal(enc.table[:, at[1.0]], space.channels // 2)
    np.testing.assert_array_equal(enc.table[:, at[2.4]], space.channels)  # clamped to C
    assert (enc.canonical(np.full(enc.n_genes, at[2.4])) == at[2.0]).all()
    ref = {"conv1": 10}
    enc2 = GeneEncoding.build(space, widths=WidthGenes.metapruning(scales, reference=ref))
    assert enc2.table[space["conv1"].index, at[1.0]] == 10
    assert enc2.table[space["layer1.0.conv1"].index, at[0.5]] == 8
    with pytest.raises(PrunekitError, match="unknown channel groups"):
        GeneEncoding.build(space, widths=WidthGenes(reference={"nope": 4}))


# ---------------------------------------------------------------------- width rules
def _group(c: int, blocks: int = 1) -> ChannelGroup:
    return ChannelGroup(index=0, name="g", channels=c, members=[], tags=frozenset(), blocks=blocks)


def test_jcw_width_rule():
    assert jcw_width(_group(64), 0.3) == 20  # ceil(16 * 0.3) * 4
    assert jcw_width(_group(64), 0.1) == 8
    assert jcw_width(_group(64), 1.0) == 64
    assert jcw_width(_group(8), 0.1) == 4  # clamped to g
    assert jcw_width(_group(100), 0.28) == 28  # 25 * 0.28 is 7, not the float's 7.000000000000001 (-> 32)
    assert jcw_width(_group(2), 0.5) == 2  # clamped to C
    assert jcw_width(_group(48, blocks=8), 0.3) == 16  # g = lcm(4, 8): stays balanced
    enc = GeneEncoding.build(space_of("resnet20"), widths=WidthGenes.jcw(bounds={}))
    k = ratio_grid(0.1, 1.0, 0.1).index(0.3)
    np.testing.assert_array_equal(
        enc.table[:, k], [math.ceil(c // 4 * 0.3 - 1e-9) * 4 for c in enc.space.channels]
    )


def test_callable_width_rule_and_its_validation():
    space = space_of("grouped")

    def halves(group, width):
        return max(group.blocks, int(width // (2 * group.blocks)) * 2 * group.blocks)

    enc = GeneEncoding.build(space, widths=WidthGenes(rule=halves))
    expect = [[halves(g, c * g.channels) for c in enc.choices] for g in space.groups]
    np.testing.assert_array_equal(enc.table, expect)
    assert ((enc.table % 8 == 0) | (enc.table == 4)).all()
    assert enc.widths.state()["rule"].startswith("callable:") and "halves" in enc.widths.state()["rule"]
    with pytest.raises(PrunekitError, match=r"returned 3 channels for group 'stem'"):
        GeneEncoding.build(space, widths=WidthGenes(rule=lambda g, w: 3))
    with pytest.raises(PrunekitError, match="must be an int in"):
        GeneEncoding.build(space, widths=WidthGenes(rule=lambda g, w: g.channels + 4))


# ---------------------------------------------------------------------- vectorised decoding
@pytest.mark.parametrize(("net", "config"), CASES)
def test_decode_widths_vectorised_equals_row_by_row(net, config):
    enc = encoding_of(net, config)
    genes = _random(enc, 40, seed=7)
    batch = enc.decode_widths(genes)
    assert batch.shape == (40, len(enc.space.groups)) and batch.dtype == np.int64
    for row, g in zip(batch, genes, strict=True):
        np.testing.assert_array_equal(row, enc.decode(g).widths(enc.space))
        np.testing.assert_array_equal(row, enc.decode_widths(g))
    macs = CostModel(enc.space).macs(batch)
    assert macs.shape == (40,)
    dens = enc.decode_densities(genes)
    for row, g in zip(dens, genes, strict=True):
        plan = enc.decode(g)
        assert [plan.layers[n].density for n in enc.density_layers] == pytest.approx(row.tolist())


def test_bad_genes_raise():
    enc = encoding_of("resnet20", "legal")
    with pytest.raises(PrunekitError, match="shape"):
        enc.decode_widths(np.zeros(enc.n_genes + 1, dtype=np.int64))
    with pytest.raises(PrunekitError, match="outside its bounds"):
        enc.decode(enc.high + 1)
    with pytest.raises(PrunekitError, match="integers"):
        enc.decode(enc.low + 0.5)
    with pytest.raises(PrunekitError, match="one gene vector"):
        enc.decode(_random(enc, 2))


# ---------------------------------------------------------------------- density genes
def test_density_genes_skip_depthwise_and_match_the_grid():
    space = space_of("mbv2")
    enc = GeneEncoding.build(space, widths=WidthGenes.jcw(), densities=DensityGenes(block=(4, 1)))
    eligible = [n for n, s in space.layers.items() if s.kind in ("conv", "linear") and not s.depthwise]
    assert enc.density_layers == eligible
    assert not any(space.layers[n].depthwise for n in enc.density_layers)
    assert any(s.depthwise for s in space.layers.values())
    ds = enc.slices["densities"]
    assert ds.stop - ds.start == len(eligible)
    tags = layer_tags(space)
    grid = np.asarray(enc.densities.grid)
    for genes in _random(enc, 30):
        plan = enc.decode(genes)
        for n in enc.density_layers:
            d = plan.layers[n].density
            assert np.isclose(grid, d).any() and d > 0
            lo = max(JCW_DENSITY_BOUNDS[t][0] for t in ["all", *tags[n]] if t in JCW_DENSITY_BOUNDS)
            assert d >= lo - 1e-9
            assert plan.layers[n].block == (4, 1)
        assert not any(space.layers[n].depthwise for n in plan.layers)
    # JCW's own per-tag floors on the stem (first, strided), the last conv and the classifier
    assert {"first", "strided"} <= tags["features.0.0"]
    assert "last" in tags["features.18.0"] and "last" in tags["classifier.1"]
    low = enc.describe()
    by_name = {r["targets"][0]: r for r in low if r["kind"] == "density"}
    assert by_name["features.0.0"]["choices"][0] == pytest.approx(0.8)
    assert by_name["features.18.0"]["choices"][0] == pytest.approx(0.5)
    assert by_name["features.1.conv.1"]["choices"][0] == pytest.approx(0.3)
    # JCW's variant: convs only
    jcw = GeneEncoding.build(space, densities=DensityGenes.jcw())
    assert "classifier.1" not in jcw.density_layers and len(jcw.density_layers) == len(eligible) - 1


def test_wp_uniform_is_one_shared_gene():
    space = space_of("mbv2")
    per_layer = GeneEncoding.build(space, densities=DensityGenes())
    enc = GeneEncoding.build(space, densities=DensityGenes(wp_uniform=True))
    ds = enc.slices["densities"]
    assert ds.stop - ds.start == 1
    assert enc.n_genes == per_layer.n_genes - len(per_layer.density_layers) + 1
    # bounds: the union of the per-layer bounds (JCW emo_search.py: min of the lows, max of the highs)
    assert enc.low[ds.start] == per_layer.low[per_layer.slices["densities"]].min()
    assert enc.high[ds.start] == per_layer.high[per_layer.slices["densities"]].max()
    for genes in _random(enc, 20):
        plan = enc.decode(genes)
        dens = {plan.layers[n].density for n in enc.density_layers}
        assert dens == {float(enc.density_grid[genes[ds.start]])}
        np.testing.assert_array_equal(enc.encode(plan), enc.canonical(genes))


def test_density_layer_selection():
    space = space_of("resnet20")
    enc = GeneEncoding.build(space, densities=DensityGenes(layers=["layer1.0.conv1", "fc"]))
    assert enc.density_layers == ["layer1.0.conv1", "fc"]
    with pytest.raises(PrunekitError, match="does not have"):
        GeneEncoding.build(space, densities=DensityGenes(layers=["nope"]))
    with pytest.raises(PrunekitError, match="depthwise"):
        GeneEncoding.build(space_of("mbv2"), densities=DensityGenes(layers=["features.1.conv.0.0"]))


# ---------------------------------------------------------------------- conv-groups genes
def test_group_genes_over_legal_counts():
    space = space_of("residual")
    enc = GeneEncoding.build(space, groups=GroupGenes(max_groups=4))
    for name, counts in zip(enc.group_layers, enc.group_counts, strict=True):
        s = space.layers[name]
        assert counts == [
            d for d in (1, 2, 4) if s.in_size % d == 0 and s.out_size % d == 0 and d != s.in_size
        ]
        assert not s.depthwise and len(counts) >= 2
    assert "stem" not in enc.group_layers  # 3 input channels: only G = 1
    gs = enc.slices["groups"]
    for genes in _random(enc, 20):
        plan = enc.decode(genes)
        _validate_decoded(plan, enc)
        for j, name in enumerate(enc.group_layers):
            c = enc.group_counts[j][genes[gs.start + j]]
            assert (plan.layers[name].conv_groups if name in plan.layers else 1) == c
        np.testing.assert_array_equal(enc.encode(plan), enc.canonical(genes))


def test_group_genes_with_a_custom_legality_and_grouped_layers():
    space = space_of("grouped")
    # default: already grouped convs are left alone (GConv converts dense convs only)
    assert common_group_counts(space.layers["g1"]) == [4]
    enc = GeneEncoding.build(space, groups=GroupGenes())
    assert enc.group_layers == []
    custom = GeneEncoding.build(
        space, groups=GroupGenes(legal=lambda layer: [layer.conv_groups, 2 * layer.conv_groups])
    )
    assert custom.group_layers == ["stem", "g1", "g2"]
    assert custom.group_counts[1] == [4, 8]
    plan = custom.decode(custom.high)
    assert plan.layers["g1"].conv_groups == 8
    plan = custom.decode(custom.low)
    assert "g1" not in plan.layers  # unchanged count -> no LayerChoice
    np.testing.assert_array_equal(custom.encode(plan), custom.low)
    assert custom.state["groups"]["legal"].startswith("callable:")


# ---------------------------------------------------------------------- describe / state
def test_describe_rows():
    enc = encoding_of("resnet20", "jcw")
    rows = enc.describe()
    assert [r["gene"] for r in rows] == list(range(enc.n_genes))
    assert {r["kind"] for r in rows} == {"width", "density", "groups"}
    genes = _random(enc, 1)[0]
    rows = enc.describe(genes)
    widths = enc.decode_widths(genes)
    for r in rows:
        assert r["low"] <= r["value"] <= r["high"]
        if r["kind"] == "width":
            assert r["decoded"] == [int(widths[enc.space[n].index]) for n in r["targets"]]
    json.dumps(rows)


def test_state_is_json_and_fingerprint_tracks_the_config():
    space = space_of("resnet20")
    a = GeneEncoding.build(space, widths=WidthGenes.jcw(), densities=DensityGenes.jcw())
    b = GeneEncoding.build(space, widths=WidthGenes.jcw(), densities=DensityGenes.jcw())
    state = json.loads(json.dumps(a.state))
    assert state["format"] == "prunekit.search.encoding/1"
    assert state["low"] == a.low.tolist() and len(state["width_genes"]) == a.n_width_genes
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    c = GeneEncoding.build(
        space, widths=WidthGenes.jcw(), densities=DensityGenes.jcw(bounds={"all": (0.4, 1.0)})
    )
    d = GeneEncoding.build(space, widths=WidthGenes.jcw(group_size=8), densities=DensityGenes.jcw())
    e = GeneEncoding.build(space, widths=WidthGenes.jcw(), densities=DensityGenes.jcw(wp_uniform=True))
    assert len({a.fingerprint, c.fingerprint, d.fingerprint, e.fingerprint}) == 4
