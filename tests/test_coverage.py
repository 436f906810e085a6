"""Issue #11: topologies a new user tried. Each is either pruned exactly (applied == masked in eval mode, analytic
cost == measured, output shape kept) or its groups are left out with the precise reason; ``prunekit check`` runs
on each end to end. The models are in ``tests/coverage_models.py`` (also usable as ``file.py:factory`` specs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp
from tests import coverage_models as cm

from prunekit.cli import main
from prunekit.cost.macs import CostModel, count_params, measure_macs
from prunekit.space import ChannelSpace, apply, mask, plan_from_ratio
from prunekit.space.channels import OUTPUT_REASON

MODELS = Path(__file__).with_name("coverage_models.py")
SHAPE = (1, 3, 32, 32)
SPLIT_REASON = (
    "channels pass through a channel split into fixed sizes [6, 10] (torch.split / chunk): the model's forward "
    "would split the pruned tensor at the same sizes"
)
SLICE_REASON = (
    "channels pass through a fixed channel slice [0:7] of 8 channels (e.g. a Ghost module's cat(...)[:, :n]): "
    "after pruning it would keep other channels"
)
SHUFFLE_REASON = (
    "channels pass through a reshape that regroups them ([1, 16, 4, 4] -> [1, 2, 8, 4, 4], e.g. a channel "
    "shuffle): pruning would change which channels it groups together"
)
LN_REASON = (
    "ln (LayerNorm2d) normalises over all channels together: pruning a channel changes the others' mean and "
    "variance, so masking it is not equivalent to slicing it"
)
GAMMA_REASON = "channels are scaled by parameter gamma, which belongs to no layer (e.g. a layer-scale gamma)"


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial affine parameters and running statistics for every norm layer, so a wrong channel mapping shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "weight", None) is not None and isinstance(
                m, nn.modules.batchnorm._NormBase | nn.GroupNorm
            ):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.2)
            if getattr(m, "running_mean", None) is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model.eval()


def random_scores(seed: int = 0):
    """An importance that keeps an arbitrary (seeded) subset, not the first channels."""
    gen = torch.Generator().manual_seed(seed)
    return lambda model, space, group: torch.rand(group.channels, generator=gen, dtype=torch.float64)


def structure(space: ChannelSpace) -> dict[str, int]:
    return {g.name: g.channels for g in space}


def member(space: ChannelSpace, group: str, module: str, dim: str):
    return next(m for m in space[group].members if m.module == module and m.dim == dim)


def prune_and_verify(model: nn.Module, space: ChannelSpace, ratio: float = 0.5, seed: int = 0):
    """Prune ``ratio`` of every group (arbitrary channels) and check it is real and exact; returns ``(pruned model,
    plan)``.

    Every group loses channels; applied == masked in eval mode; output shapes kept; analytic MACs and params equal
    the ones measured on the applied model.
    """
    plan = plan_from_ratio(space, ratio, model=model, importance=random_scores(seed))
    assert all(plan.pruned(g) for g in space), "a group kept every channel: the check would prove nothing"
    pruned = apply(model, plan, space).eval()
    masked, _ = mask(model, plan, space)
    x = torch.randn(3, *SHAPE[1:])
    with torch.no_grad():
        yp, ym, y = pruned(x), masked.eval()(x), model(x)
    assert yp.shape == y.shape
    assert torch.allclose(yp, ym, atol=1e-5 * (1 + ym.abs().max().item())), (yp - ym).abs().max()
    cost = CostModel(space).cost(plan)
    assert cost.macs == measure_macs(pruned, SHAPE)
    assert cost.params == count_params(pruned) < count_params(model)
    return pruned, plan


# ------------------------------------------------------------------------------------------- 1. ConvTranspose2d
def test_conv_transpose_is_counted_and_pruned_through_its_weight_layout():
    model = randomize_norms(cm.EncoderDecoder())
    space = ChannelSpace.build(model, SHAPE)
    assert structure(space) == {"enc.0": 8, "down.0": 16, "up": 8, "dec.0": 8}
    assert space.dropped == [f"head: {OUTPUT_REASON}"]
    # the transposed conv consumes down's channels (weight dim 0) and produces the skip concat's second half
    assert member(space, "down.0", "up", "in").positions == tuple(range(16))
    assert member(space, "up", "dec.0", "in").positions == tuple(range(8, 16))
    up = space.layers["up"]
    assert (
        up.kind == "conv" and up.transposed and up.positions == 16 * 16
    )  # kernel applied at every input position
    assert CostModel(space).cost().macs == measure_macs(model, SHAPE)  # it was not counted at all before
    pruned, _ = prune_and_verify(model, space)
    assert pruned.up.weight.shape == (8, 4, 2, 2) and pruned.up.bias.shape == (4,)
    assert pruned.up.in_channels == 8 and pruned.up.out_channels == 4


def test_grouped_conv_transpose_is_left_out_with_the_reason():
    model = randomize_norms(cm.EncoderDecoder(up_groups=2))
    space = ChannelSpace.build(model, SHAPE, quiet=True)
    reason = "up is a grouped transposed conv (groups=2); only groups=1 can be pruned"
    assert structure(space) == {"enc.0": 8, "dec.0": 8}
    assert sorted(space.dropped) == sorted([f"head: {OUTPUT_REASON}", f"down.0: {reason}", f"up: {reason}"])
    assert CostModel(space).cost().macs == measure_macs(model, SHAPE)
    prune_and_verify(model, space)


# ------------------------------------------------------------------------------ 2. residual add over a concat
def test_residual_add_over_a_concat_ties_each_half_to_its_producer():
    model = randomize_norms(cm.ResidualConcat())
    space = ChannelSpace.build(model, SHAPE)
    assert structure(space) == {"stem.0": 8, "f.0": 8, "g1.0": 8, "out.0": 16}
    assert space.dropped == [f"classifier.fc: {OUTPUT_REASON}"]
    # g2 (added to the concat) carries s's channels at [0, 8) and f(s)'s at [8, 16): part of each group
    assert member(space, "stem.0", "g2.0", "out").positions == tuple(range(8))
    assert member(space, "f.0", "g2.0", "out").positions == tuple(range(8, 16))
    assert member(space, "f.0", "out.0", "in").root == tuple(range(8))
    assert "residual" in space["stem.0"].tags and "residual" in space["f.0"].tags
    pruned, _ = prune_and_verify(model, space)
    assert pruned.g2[0].out_channels == 8 and pruned.out[0].in_channels == 8


# -------------------------------------------------------------------------- 3. channel split + channel shuffle
def test_torch_pruning_alone_fails_on_the_shuffle_block():
    """The fixture reproduces the issue: torch-pruning's reshape index mapping divides by zero (as on
    torchvision's ShuffleNetV2), which is why prunekit makes channel-regrouping reshapes opaque."""
    with pytest.raises(ZeroDivisionError):
        tp.DependencyGraph().build_dependency(cm.ShuffleNetish().eval(), example_inputs=(torch.randn(SHAPE),))


def test_channel_shuffle_traces_and_everything_else_is_pruned():
    model = randomize_norms(cm.ShuffleNetish())
    space = ChannelSpace.build(model, SHAPE, quiet=True)
    inner = {f"stage2.{i}.branch2.0": 8 for i in range(3)}  # 1x1 -> depthwise -> 1x1 inside each branch
    assert structure(space) == {"conv1.0": 8, **inner, "conv5.0": 32}
    assert sorted(space.dropped) == sorted(
        [
            f"fc: {OUTPUT_REASON}",
            f"stage2.0.branch1.2: {SHUFFLE_REASON}",
            f"stage2.0.branch2.5: {SHUFFLE_REASON}",
        ]
    )
    pruned, _ = prune_and_verify(model, space)
    assert pruned.stage2[1].branch2[3].groups == 4  # the branch's depthwise conv shrank with its group


def test_a_group_torch_pruning_cannot_map_is_dropped_not_a_traceback():
    """Four shuffle units in a stage (torchvision's ShuffleNetV2 has 4 / 8 / 4): torch-pruning's split index mapping
    raises IndexError while grouping; those roots are left out with the reason and the rest is still pruned."""
    model = randomize_norms(cm.ShuffleNetish(units=4))
    space = ChannelSpace.build(model, SHAPE, quiet=True)
    unmapped = [d for d in space.dropped if "torch-pruning cannot map its channels (IndexError" in d]
    assert unmapped and len(space) >= 3
    assert "conv1.0" in space.names() and "conv5.0" in space.names()
    prune_and_verify(model, space)


# ------------------------------------------------------------------------------------- 4. norms other than BN
def test_groupnorm_keeps_whole_groups_instancenorm_per_channel_layernorm_left_out():
    model = randomize_norms(cm.NormZoo())
    space = ChannelSpace.build(model, SHAPE, quiet=True)
    assert structure(space) == {"c1": 16, "c2": 8, "block.pwconv1": 32}
    assert sorted(space.dropped) == sorted([f"classifier.fc: {OUTPUT_REASON}", f"c3: {LN_REASON}"])
    assert space["c1"].blocks == 4 and space["c2"].blocks == 1  # GroupNorm(4, 16): units of 4 channels
    gn = member(space, "c1", "gn", "out")
    for unit in range(4):  # channel unit + 4 * rank, rank 0..3, is GroupNorm group `unit`: positions 4u..4u+3
        chans = [unit + 4 * k for k in range(4)]
        assert sorted(p for p, r in zip(gn.positions, gn.root, strict=True) if r in chans) == [
            4 * unit + k for k in range(4)
        ]
    pruned_groups = set()
    for seed in range(4):
        pruned, plan = prune_and_verify(model, space, seed=seed)
        gone = plan.removed(space)[("gn", "out")]
        dead = {p // 4 for p in gone}
        assert len(gone) == 4 * len(dead) == 8  # two whole GroupNorm groups
        pruned_groups.add(frozenset(dead))
        assert (pruned.gn.num_groups, pruned.gn.num_channels) == (2, 8)
        assert pruned.inorm.num_features == 4 and pruned.inorm.weight.shape == (4,)
        assert pruned.block.pwconv1.out_features == 16 and pruned.ln.normalized_shape == (8,)
    assert len(pruned_groups) > 1  # the importance chooses which GroupNorm groups go, not a fixed rule


def test_groupnorm_with_one_channel_per_group_is_per_channel():
    model = randomize_norms(cm.NormZoo(gn_groups=16))
    space = ChannelSpace.build(model, SHAPE, quiet=True)
    assert space["c1"].blocks == 1
    pruned, _ = prune_and_verify(model, space)
    assert (pruned.gn.num_groups, pruned.gn.num_channels) == (8, 8)


def test_groupnorm_with_one_group_is_left_out():
    model = randomize_norms(cm.NormZoo(gn_groups=1))
    space = ChannelSpace.build(model, SHAPE, quiet=True)
    reason = "gn (GroupNorm, 1 group) normalises all channels together; none can be pruned alone"
    assert structure(space) == {"c2": 8, "block.pwconv1": 32}
    assert f"c1: {reason}" in space.dropped
    prune_and_verify(model, space)


# -------------------------------------------------------------------------- 5. fixed-size split, slice after concat
def test_fixed_split_and_partial_slice_are_left_out_the_rest_pruned():
    model = randomize_norms(cm.SplitSlice())
    space = ChannelSpace.build(model, SHAPE, quiet=True)
    assert structure(space) == {"stem.0": 8, "project.0": 4, "ghost1.primary.0": 6, "last.0": 16}
    assert sorted(space.dropped) == sorted(
        [
            f"classifier.fc: {OUTPUT_REASON}",
            f"expand.0: {SPLIT_REASON}",
            f"expand.0@6: {SPLIT_REASON}",
            f"ghost3.primary.0: {SLICE_REASON}",
        ]
    )
    # ghost2 = cat([primary, cheap(primary)])[:, :8] is added to project's output: project's channels j and j + 4
    # are both primary's channel j (one channel, carried twice)
    proj = member(space, "project.0", "project.0", "out")
    assert proj.positions == tuple(range(8)) and proj.root == (0, 1, 2, 3, 0, 1, 2, 3) and proj.mult == 2
    assert member(space, "project.0", "ghost2.primary.0", "out").positions == tuple(range(4))
    pruned, _ = prune_and_verify(model, space)
    assert (
        pruned.mix.dw3.out_channels == 6 and pruned.mix.dw5.out_channels == 10
    )  # the split's sizes still fit
    assert pruned.project[0].out_channels == 4 and pruned.ghost2.primary[0].out_channels == 2


def test_parameter_outside_any_layer_is_left_out():
    model = randomize_norms(cm.LayerScaleNet())
    space = ChannelSpace.build(model, SHAPE, quiet=True)
    assert structure(space) == {"stem.0": 8, "mid.0": 16}
    assert sorted(space.dropped) == sorted([f"classifier.fc: {OUTPUT_REASON}", f"body: {GAMMA_REASON}"])
    pruned, _ = prune_and_verify(model, space)
    assert pruned.gamma.shape == (16, 1, 1) and pruned.body.out_channels == 16


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.parametrize(
    "factory, reasons",
    [
        ("encoder_decoder", set()),
        ("residual_concat", set()),
        ("shufflenetish", {SHUFFLE_REASON}),
        ("norm_zoo", {LN_REASON}),
        ("split_slice", {SPLIT_REASON, SLICE_REASON}),
        ("layer_scale", {GAMMA_REASON}),
    ],
)
def test_prunekit_check_passes_end_to_end(factory, reasons, capsys):
    code = main(["check", f"{MODELS}:{factory}", "--input-size", "32", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["ok"], [c for c in data["checks"] if not c["ok"]]
    assert data["channels_pruned"] > 0 and data["pruned"]["macs"] < data["baseline"]["macs"]
    assert data["output_shape"] == data["pruned_output_shape"]
    assert set(data["dropped_by_reason"]) - {OUTPUT_REASON} == reasons


# ------------------------------------------------------------------------------------------------ unit: parts
def test_split_parts_merges_roots_sharing_a_slot_and_splits_by_carrier():
    """Roots 0 and 1 share a slot of ``a``: one channel, carried twice by ``b``. Roots 2 and 3 reach ``c`` only
    (not ``b``): a second part, numbered from 0."""
    from prunekit.space.channels import _split_parts

    slots = [("a", "out", 0, 0), ("a", "out", 0, 1), ("b", "in", 5, 0), ("b", "in", 6, 1)]
    slots += [("a", "out", 1 + r, r) for r in (2, 3)] + [("c", "in", r, r) for r in (2, 3)]
    parts = _split_parts(sorted(slots))
    assert [p.slots for p in parts] == [
        [("a", "out", 0, 0), ("b", "in", 5, 0), ("b", "in", 6, 0)],
        [("a", "out", 3, 0), ("a", "out", 4, 1), ("c", "in", 2, 0), ("c", "in", 3, 1)],
    ]
    assert [p.roots for p in parts] == [{0, 1}, {2, 3}]
