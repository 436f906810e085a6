"""Analytic cost model: published reference counts, and agreement with torch.utils.flop_counter on pruned models."""

from __future__ import annotations

import numpy as np
import pytest

from prunekit import importance
from prunekit.cost import CostModel, count_params, measure_macs
from prunekit.models import create_model
from prunekit.space import ChannelSpace, Plan, apply, plan_from_ratio, plan_from_widths

# (spec, MACs, params) at 224x224, 1000 classes; conv + linear MACs. Sources: MobileNet (Howard et al. 2017,
# Table 6/7), MobileNetV2 (Sandler et al. 2018, Table 5 / torchvision), ResNet (He et al. 2016; torchvision).
REFERENCE = [
    ("mobilenet_v1", 569e6, 4.232e6),
    ("mobilenet_v1:width_mult=0.75", 325e6, None),
    ("mobilenet_v1:width_mult=0.5", 149e6, None),
    ("mobilenet_v1:width_mult=0.25", 41e6, None),
    ("mobilenet_v2", 301e6, 3.50e6),
    ("mobilenet_v2:width_mult=1.4", 582e6, 6.11e6),
    ("resnet18", 1.81e9, 11.69e6),
    ("resnet50", 4.09e9, 25.56e6),
]


@pytest.mark.parametrize(("spec", "macs", "params"), REFERENCE)
def test_analytic_cost_hits_published_reference(spec, macs, params):
    space = ChannelSpace.build(create_model(spec), (1, 3, 224, 224))
    cost = CostModel(space).cost()
    assert abs(cost.macs - macs) / macs < 0.01, cost.macs
    assert cost.flops == 2 * cost.macs
    if params is not None:
        assert abs(cost.params - params) / params < 0.01, cost.params


@pytest.mark.parametrize(
    "spec",
    [
        "resnet20",
        "vgg16_bn",
        "mobilenet_v1:width_mult=0.5",
        "mobilenet_v2:width_mult=0.5",
        "resnet18:width_mult=0.5",
        "resnet50:width_mult=0.25",
    ],
)
def test_analytic_equals_flop_counter_on_random_plans(spec):
    model = create_model(spec + (",num_classes=10" if ":" in spec else ":num_classes=10")).eval()
    shape = (1, 3, 32, 32)
    space = ChannelSpace.build(model, shape)
    cm = CostModel(space)
    assert cm.cost().macs == measure_macs(model, shape)
    assert cm.cost().params == count_params(model)
    rng = np.random.default_rng(0)
    for _ in range(3):
        widths = [int(rng.integers(1, c + 1)) for c in space.channels]
        plan = plan_from_widths(space, widths, model=model, importance=importance.l1)
        pruned = apply(model, plan, space)
        cost = cm.cost(plan)
        assert cost.macs == measure_macs(pruned, shape)
        assert cost.params == count_params(pruned)
        assert cm.macs(plan.widths(space)) == pytest.approx(cost.macs)


def test_batched_widths_match_single_plans():
    model = create_model("resnet20")
    space = ChannelSpace.build(model, (1, 3, 32, 32))
    cm = CostModel(space)
    rng = np.random.default_rng(1)
    W = np.stack([rng.integers(1, space.channels + 1) for _ in range(16)])
    batch = cm.macs(W)
    single = [cm.cost(plan_from_widths(space, w)).macs for w in W]
    assert np.allclose(batch, single)
    assert np.allclose(cm.params(W), [cm.cost(plan_from_widths(space, w)).params for w in W])
    assert (batch < cm.macs(space.channels)).all()


def test_layer_options_density_and_groups_scale_cost():
    model = create_model("resnet20")
    space = ChannelSpace.build(model, (1, 3, 32, 32))
    cm = CostModel(space)
    base = cm.cost(per_layer=True)
    assert (base.effective_macs, base.effective_params) == (base.macs, base.params)
    row = next(r for r in base.layers if r["name"] == "layer1.0.conv1")
    plan = Plan.model_validate(
        {"input_shape": list(space.input_shape), "layers": {"layer1.0.conv1": {"density": 0.25}}}
    )
    sparse = cm.cost(plan)
    assert (sparse.macs, sparse.params) == (base.macs, base.params)  # dense storage: dense counts unchanged
    # 16 x 144 weights in 4x1 blocks: 576 blocks, 144 kept, no edge
    assert base.macs - sparse.effective_macs == int(round(row["macs"] * 0.75))
    assert base.params - sparse.effective_params == 16 * 144 * 3 // 4
    plan = Plan.model_validate(
        {"input_shape": list(space.input_shape), "layers": {"layer1.0.conv1": {"conv_groups": 4}}}
    )
    assert base.macs - cm.cost(plan).macs == int(round(row["macs"] * 0.75))


def test_pruning_ratio_reduces_macs_roughly_quadratically():
    model = create_model("resnet56")
    space = ChannelSpace.build(model, (1, 3, 32, 32))
    cm = CostModel(space)
    plan = plan_from_ratio(space, 0.5, model=model, importance=importance.l1)
    ratio = cm.cost(plan).macs / cm.cost().macs
    assert 0.2 < ratio < 0.3  # (1/2)^2 plus the unpruned stem input and classifier
