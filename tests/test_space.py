"""ChannelSpace structure, Plan round-trip/validation, and pruned == masked equivalence."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.nets import (
    DenseConcat,
    DepthwiseChain,
    FlattenLinear,
    GroupedConv,
    InplaceHead,
    NothingPrunable,
    RandomNet,
    ResidualProj,
    SegHead,
    SqueezeLike,
    randomize_bn,
)

from prunekit import importance
from prunekit.cost.macs import CostModel, count_params, measure_macs
from prunekit.errors import PrunekitError
from prunekit.space import ChannelSpace, GroupChoice, Plan, apply, mask, plan_from_ratio
from prunekit.space.channels import OUTPUT_REASON

SHAPE = (1, 3, 16, 16)


def structure(model, shape=SHAPE):
    space = ChannelSpace.build(model, shape)
    return space, {
        g.name: (g.channels, sorted(f"{m.module}.{m.dim}" for m in g.members), g.tags) for g in space
    }


def test_residual_with_projection_groups():
    space, s = structure(ResidualProj())
    assert set(s) == {"stem", "b1c1", "b2c1", "b2c2"}
    # stem, both convs of the identity block and their BNs share one group: tied by the residual add
    assert s["stem"][1] == sorted(
        [
            "stem.out",
            "bn0.out",
            "b1c1.in",
            "b1c2.out",
            "b1n2.out",
            "b2c1.in",
            "proj.in",
        ]
    )
    assert s["b2c2"][1] == sorted(["b2c2.out", "b2n2.out", "proj.out", "projn.out", "fc.in"])
    assert s["b2c2"][0] == 16
    assert {"residual", "last"} <= s["b2c2"][2] and "strided" in s["b2c2"][2]
    assert {"first", "residual"} <= s["stem"][2]
    assert s["b1c1"][1] == sorted(["b1c1.out", "b1n1.out", "b1c2.in"])
    assert "residual" not in s["b1c1"][2]
    assert space.output_layers == ["fc"]


def test_depthwise_chain_groups():
    _, s = structure(DepthwiseChain())
    # a pointwise conv, its BN, the following depthwise conv and its BN are one unit
    assert s["stem"][1] == sorted(["stem.out", "bn0.out", "dw1.out", "bn1.out", "pw1.in"])
    assert s["pw1"][1] == sorted(["pw1.out", "bn2.out", "dw2.out", "bn3.out", "pw2.in"])
    assert "depthwise" in s["pw1"][2] and "strided" in s["pw1"][2]
    assert s["pw2"][1] == sorted(["pw2.out", "bn4.out", "fc.in"]) and "last" in s["pw2"][2]


def test_concat_groups_have_offsets():
    space, s = structure(DenseConcat())
    assert set(s) == {"c0", "c1", "c2", "trans"}
    assert s["c1"][1] == sorted(["c1.out", "bn.out", "c2.in", "trans.in"])
    c1 = space["c1"]
    bn = next(m for m in c1.members if m.module == "bn")
    assert bn.positions == (8, 9, 10, 11)  # second slice of the first concat
    c2 = space["c2"]
    assert next(m for m in c2.members if m.module == "trans").positions == (12, 13, 14, 15)


def test_grouped_conv_groups_are_balanced():
    space, s = structure(GroupedConv())
    assert space["stem"].blocks == 4 and space["g1"].blocks == 4 and space["g2"].blocks == 4
    assert "grouped" in s["g1"][2]
    plan = plan_from_ratio(space, 0.5, model=GroupedConv(), importance=importance.l1)
    keep = plan.groups["g1"].keep
    assert len(keep) == 8
    assert sorted(i % 4 for i in keep[:2]) == sorted(
        i % 4 for i in keep[2:4]
    )  # same local positions per block


def test_flatten_into_linear_members():
    space, s = structure(FlattenLinear())
    assert s["c2"][1] == sorted(["c2.out", "bn2.out", "fc1.in"])
    fc1 = next(m for m in space["c2"].members if m.module == "fc1")
    assert len(fc1.positions) == 10 * 16 and fc1.mult == 16
    assert "fc1" in s  # hidden linear layer is prunable, the classifier output is not
    assert "fc2" not in s


@pytest.mark.parametrize("net", [ResidualProj, DepthwiseChain, DenseConcat, GroupedConv, FlattenLinear])
@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_applied_equals_masked(net, ratio):
    model = randomize_bn(net()).eval()
    space = ChannelSpace.build(model, SHAPE)
    plan = plan_from_ratio(space, ratio, model=model, importance=importance.l2)
    pruned = apply(model, plan).eval()
    masked, _ = mask(model, plan, space)
    masked.eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        yp, ym = pruned(x), masked(x)
    assert torch.allclose(yp, ym, atol=1e-5 * (1 + ym.abs().max().item()))
    assert count_params(pruned) < count_params(model)
    cm = CostModel(space)
    assert cm.cost(plan).macs == measure_macs(pruned, SHAPE)
    assert cm.cost(plan).params == count_params(pruned)


@pytest.mark.parametrize("net", [ResidualProj, DepthwiseChain, DenseConcat, GroupedConv, FlattenLinear])
def test_dead_channels_removed_without_changing_outputs(net):
    """Zero chosen channels at their producers only, prune exactly those: the output must not change."""
    model = randomize_bn(net()).eval()
    space = ChannelSpace.build(model, SHAPE)
    gen = torch.Generator().manual_seed(1)
    plan = plan_from_ratio(
        space, 0.5, model=model, importance=lambda m, s, g: torch.rand(g.channels, generator=gen)
    )
    zeroed = randomize_bn(net()).eval()
    zeroed.load_state_dict(model.state_dict())
    with torch.no_grad():
        for g in space:
            dead = set(plan.pruned(g))
            for mem in g.members:
                pos = [p for p, r in zip(mem.positions, mem.root, strict=True) if r in dead]
                if mem.dim != "out" or not pos:
                    continue
                mod = zeroed.get_submodule(mem.module)
                for t in (mod.weight, mod.bias, getattr(mod, "running_mean", None)):
                    if t is not None:
                        t[pos] = 0.0
    pruned = apply(zeroed, plan).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(pruned(x), zeroed(x), atol=1e-5)


def test_plan_json_round_trip_and_validation():
    model = ResidualProj()
    space = ChannelSpace.build(model, SHAPE)
    plan = plan_from_ratio(space, 0.5, model=model, importance=importance.l1, spec="demo")
    again = Plan.from_json(plan.to_json())
    assert again == plan
    assert list(again.widths(space)) == [4, 4, 8, 8]
    bad = plan.model_copy(deep=True)
    bad.groups["nope"] = GroupChoice(channels=3, keep=[0])
    with pytest.raises(PrunekitError, match="nope"):
        bad.validate_against(space)
    bad = plan.model_copy(deep=True)
    bad.groups["stem"] = GroupChoice(channels=8, keep=[])
    with pytest.raises(PrunekitError, match="keeps no channel"):
        apply(model, bad)
    bad.groups["stem"] = GroupChoice(channels=9, keep=[0])
    with pytest.raises(PrunekitError, match="9 channels"):
        apply(model, bad)
    with pytest.raises(PrunekitError, match="not valid JSON"):
        Plan.from_json("{oops")
    with pytest.raises(PrunekitError, match="invalid plan: invalid value for 'groups'"):
        Plan.from_json('{"groups": 3}')
    with pytest.raises(PrunekitError, match=r"\[0, 1\)"):
        plan_from_ratio(space, 1.0)


def test_masks_survive_reapplication_after_sgd_step():
    model = ResidualProj()
    space = ChannelSpace.build(model, SHAPE)
    plan = plan_from_ratio(space, 0.5, model=model, importance=importance.l1)
    masked, masks = mask(model, plan, space)
    opt = torch.optim.SGD(masked.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(3):
        masked(torch.randn(4, 3, 16, 16)).sum().backward()
        masks.mask_grads_(masked)
        opt.step()
        opt.zero_grad()
        masks.apply_(masked)
    w = masked.get_parameter("stem.weight")
    dead = [i for i in range(8) if i not in plan.groups["stem"].keep]
    assert torch.count_nonzero(w[dead]) == 0
    assert torch.count_nonzero(masked.get_parameter("b1c1.weight")[:, dead]) == 0


def test_conv_classifier_behind_pooling_is_never_pruned():
    """SqueezeNet style: the 1x1 classifier conv reaches the output through ReLU, global pooling and flatten."""
    model = randomize_bn(SqueezeLike(num_classes=10)).eval()
    space = ChannelSpace.build(model, (1, 3, 32, 32))
    assert "classifier.1" not in space.names()
    assert f"classifier.1: {OUTPUT_REASON}" in space.dropped
    assert "classifier.1" in space.output_layers
    assert not any(m.module == "classifier.1" and m.dim == "out" for g in space for m in g.members)
    pruned = apply(model, plan_from_ratio(space, 0.5), space).eval()
    assert pruned.get_submodule("classifier.1").out_channels == 10
    assert count_params(pruned) < count_params(model)  # the rest of the net is pruned
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert pruned(x).shape == model(x).shape == (2, 10)


@pytest.mark.parametrize("upsample", [False, True])
def test_segmentation_map_channels_are_never_pruned(upsample):
    model = randomize_bn(SegHead(num_classes=5, upsample=upsample)).eval()
    space = ChannelSpace.build(model, SHAPE)
    assert set(space.names()) == {"c1", "c2"}
    assert space.dropped == [f"head: {OUTPUT_REASON}"]
    pruned = apply(model, plan_from_ratio(space, 0.5), space).eval()
    assert pruned.head.out_channels == 5
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert pruned(x).shape == model(x).shape == (2, 5, 16, 16)


def test_nothing_prunable_space_is_empty_with_the_reason():
    space = ChannelSpace.build(NothingPrunable(), SHAPE)
    assert len(space) == 0
    assert space.dropped == [f"conv: {OUTPUT_REASON}"]


def test_batch_one_input_is_traced_batched():
    """torch-pruning calls model(*example_inputs): a bare batch-1 tensor would be traced unbatched, and an in-place
    ReLU after a conv then hides the conv from the graph (its input columns were left unsliced)."""
    model = InplaceHead().eval()
    for n in (1, 2):
        space = ChannelSpace.build(model, (n, 3, 16, 16))
        assert space.summary_rows()[0]["members"] == ["stem.out", "classifier.1.in"], n
        pruned = apply(model, plan_from_ratio(space, 0.5), space).eval()
        with torch.no_grad():
            assert pruned(torch.randn(2, 3, 16, 16)).shape == (2, 10)


# ------------------------------------------------------------------ property-based: random architectures
block = st.tuples(
    st.sampled_from(["conv", "residual", "inverted", "concat", "grouped"]),
    st.sampled_from([4, 6, 8, 12]),
    st.sampled_from([1, 1, 2]),
    st.sampled_from([2, 3]),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    blocks=st.lists(block, min_size=1, max_size=5),
    ratio=st.floats(0.0, 0.9),
    flatten=st.booleans(),
    seed=st.integers(0, 1000),
    crit=st.sampled_from(["l1", "l2", "bn_scale", "random"]),
    head=st.sampled_from(["linear", "conv", "map"]),
)
def test_random_architectures_pruned_equals_masked(blocks, ratio, flatten, seed, crit, head):
    torch.manual_seed(seed)
    model = randomize_bn(RandomNet(blocks, flatten=flatten, head=head), seed).eval()
    space = ChannelSpace.build(model, SHAPE)
    # the classifier's outputs are never pruned, whatever the head (Linear, conv + pooling, output map) ...
    assert f"classifier: {OUTPUT_REASON}" in space.dropped
    assert not any(m.module == "classifier" and m.dim == "out" for g in space for m in g.members)
    # ... and other groups are only left unpruned around concatenations the tracer cannot map safely
    others = [d for d in space.dropped if not d.endswith(OUTPUT_REASON)]
    if not any(k == "concat" for k, *_ in blocks):
        assert not others, space.dropped
    try:
        plan = plan_from_ratio(space, ratio, model=model, importance=importance.get(crit))
    except PrunekitError:
        assert crit == "bn_scale"  # a group without BN
        return
    pruned = apply(model, plan).eval()
    masked, _ = mask(model, plan, space)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        yp, ym = pruned(x), masked.eval()(x)
        assert yp.shape == model(x).shape
    assert pruned.classifier.weight.shape[0] == 4  # num_classes
    assert torch.allclose(yp, ym, atol=1e-4 * (1 + ym.abs().max().item()))
    cost = CostModel(space).cost(plan)
    assert cost.macs == measure_macs(pruned, SHAPE)
    assert cost.params == count_params(pruned)
