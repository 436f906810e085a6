"""Builtins for GConv's seed recipes: CIFAR PreResNet-164 (He et al., ECCV 2016) and ImageNet ResNet-101.

Reference numbers, structure, forward shapes, the registry spec and the channel space (every conv prunable,
pruned == masked, analytic cost == measured cost).
"""

from __future__ import annotations

import functools

import pytest
import torch
from tests.nets import randomize_bn
from torch import nn

from prunekit import importance
from prunekit.cost.macs import CostModel, count_params, measure_macs
from prunekit.errors import PrunekitError
from prunekit.models import create_model, model_options
from prunekit.models.preresnet import PreActBottleneck, PreResNet
from prunekit.space import ChannelSpace, Plan, apply, mask, plan_from_widths, uniform_widths


@functools.cache
def built(spec: str) -> nn.Module:
    torch.manual_seed(0)
    return create_model(spec)


@pytest.fixture(scope="module", autouse=True)
def _free_models():
    yield
    built.cache_clear()


def preresnet_macs(depth: int, num_classes: int, in_chans: int, size: int) -> int:
    """Conv + linear MACs of a CIFAR PreResNet written out by hand (independent of prunekit's cost model)."""
    n = (depth - 2) // 9
    hw = size * size
    total = in_chans * 16 * 9 * hw
    cin = 16
    for stage, planes in enumerate((16, 32, 64)):
        for j in range(n):
            stride = 2 if stage > 0 and j == 0 else 1
            out_size = (size + stride - 1) // stride
            out_hw = out_size * out_size
            total += cin * planes * hw  # conv1 1x1 at the input resolution
            total += planes * planes * 9 * out_hw  # conv2 3x3 with the stride
            total += planes * 4 * planes * out_hw  # conv3 1x1
            if j == 0:
                total += cin * 4 * planes * out_hw  # downsample 1x1 with the stride
            cin, hw, size = 4 * planes, out_hw, out_size
    return total + cin * num_classes


# ------------------------------------------------------------------------------------- reference numbers
@pytest.mark.parametrize(
    ("spec", "published_m", "exact"),
    [
        # 1.70M on CIFAR-10 (He et al., ECCV 2016: "1.7M"), 1.73M on CIFAR-100 (Network Slimming, Liu et al.,
        # ICCV 2017, Table 1, quotes both)
        ("preresnet164", 1.70, 1_703_258),
        ("preresnet164:num_classes=100", 1.73, 1_726_388),
        ("preresnet:depth=164,num_classes=100", 1.73, 1_726_388),
        # torchvision model card (ResNet101_Weights.IMAGENET1K_V1): 44.55M params, 7.80 GFLOPS (MACs)
        ("resnet101", 44.55, 44_549_160),
    ],
)
def test_params_match_published(spec: str, published_m: float, exact: int) -> None:
    params = count_params(built(spec))
    assert round(params / 1e6, 2) == published_m, f"{spec}: {params} params, published {published_m}M"
    assert params == exact


def test_resnet101_macs_at_224() -> None:
    macs = measure_macs(built("resnet101").eval(), (1, 3, 224, 224))
    assert abs(macs - 7.80e9) / 7.80e9 < 0.005, macs
    assert macs == 7_801_405_440


@pytest.mark.parametrize(("num_classes", "in_chans", "size"), [(10, 3, 32), (100, 3, 32), (10, 1, 28)])
def test_preresnet164_macs_match_hand_count(num_classes: int, in_chans: int, size: int) -> None:
    model = create_model(f"preresnet164:num_classes={num_classes},in_chans={in_chans}").eval()
    macs = measure_macs(model, (1, in_chans, size, size))
    assert macs == preresnet_macs(164, num_classes, in_chans, size)
    if (num_classes, in_chans, size) == (10, 3, 32):
        assert macs == 247_646_720  # 0.248 GMACs


# --------------------------------------------------------------------------------------------- structure
def test_preresnet164_structure() -> None:
    model = built("preresnet164")
    assert isinstance(model, PreResNet)
    stages = (model.layer1, model.layer2, model.layer3)
    assert [len(s) for s in stages] == [18, 18, 18]
    assert all(isinstance(b, PreActBottleneck) for s in stages for b in s)
    assert (
        model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.out_channels == 16
    )
    assert [s[0].conv1.out_channels for s in stages] == [16, 32, 64]
    assert [s[-1].conv3.out_channels for s in stages] == [64, 128, 256]
    assert [s[0].conv2.stride for s in stages] == [(1, 1), (2, 2), (2, 2)]  # stride on the 3x3 conv
    main = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and "downsample" not in n]
    assert len(main) + 1 == 164  # 9n + 2 weighted layers (convs + fc)
    projections = [n for n, _ in model.named_modules() if n.endswith("downsample")]
    assert projections == ["layer1.0.downsample", "layer2.0.downsample", "layer3.0.downsample"]
    ds = model.layer2[0].downsample
    assert len(ds) == 1 and ds[0].kernel_size == (1, 1) and ds[0].stride == (2, 2)
    # pre-activation: BN before each conv, over the block input; the final BN-ReLU sits before pooling
    blk = model.layer2[3]
    assert blk.bn1.num_features == 128 and blk.bn2.num_features == 32 and blk.bn3.num_features == 32
    assert model.bn.num_features == 256 and model.fc.in_features == 256
    # gumi / bearpaw layout: their state dict keys
    keys = model.state_dict()
    for key in ("conv1.weight", "layer1.0.bn1.running_mean", "layer1.0.downsample.0.weight", "bn.weight"):
        assert key in keys
    assert "bn1.weight" not in keys and "layer1.1.downsample.0.weight" not in keys


def test_preresnet_depth_option() -> None:
    assert model_options("preresnet") == {"depth": 164, "num_classes": 10, "in_chans": 3, "width_mult": 1.0}
    assert model_options("preresnet164") == {"num_classes": 10, "in_chans": 3, "width_mult": 1.0}
    small = create_model("preresnet:depth=29")
    assert [len(s) for s in (small.layer1, small.layer2, small.layer3)] == [3, 3, 3]
    for bad in (20 + 1, 10, 2, 0):
        with pytest.raises(PrunekitError, match="9n\\+2"):
            create_model(f"preresnet:depth={bad}")
    with pytest.raises(PrunekitError, match="wrong type"):
        create_model("preresnet:depth=1.5")


def test_width_mult_and_options() -> None:
    half = create_model("preresnet164:width_mult=0.5,num_classes=7,in_chans=1")
    assert half.conv1.in_channels == 1 and half.conv1.out_channels == 8
    assert (
        half.layer3[0].conv1.out_channels == 32 and half.fc.in_features == 128 and half.fc.out_features == 7
    )
    r101 = create_model("resnet101:width_mult=0.25,num_classes=10")
    assert r101.conv1.out_channels == 16 and r101.fc.in_features == 512
    with pytest.raises(PrunekitError, match="width_mult must be a positive number"):
        create_model("preresnet164:width_mult=0")


def test_resnet101_structure() -> None:
    model = built("resnet101")
    assert [len(s) for s in (model.layer1, model.layer2, model.layer3, model.layer4)] == [3, 4, 23, 3]
    assert model.layer3[0].conv2.stride == (2, 2) and model.layer3[0].conv1.stride == (1, 1)  # v1.5
    keys = model.state_dict()
    assert "layer3.22.conv3.weight" in keys and keys["layer4.0.downsample.0.weight"].shape == (
        2048,
        1024,
        1,
        1,
    )
    assert model.fc.in_features == 2048 and model.fc.out_features == 1000


# ---------------------------------------------------------------------------------------------- forward
@pytest.mark.parametrize(
    ("spec", "shape"),
    [
        ("preresnet164", (2, 3, 32, 32)),
        ("preresnet164:in_chans=1", (2, 1, 28, 28)),
        ("preresnet164:num_classes=100", (2, 3, 32, 32)),
        ("resnet101:num_classes=10", (2, 3, 64, 64)),
        ("resnet101:num_classes=10,in_chans=1", (2, 1, 28, 28)),
    ],
)
def test_forward_shapes(spec: str, shape: tuple[int, ...]) -> None:
    model = built(spec).eval()
    with torch.no_grad():
        out = model(torch.randn(*shape))
    classes = model.fc.out_features
    assert out.shape == (shape[0], classes) and torch.isfinite(out).all()


# --------------------------------------------------------------------------------------- channel space
def _space(spec: str, shape: tuple[int, ...]) -> tuple[nn.Module, ChannelSpace]:
    torch.manual_seed(0)
    model = randomize_bn(create_model(spec)).eval()
    return model, ChannelSpace.build(model, shape, quiet=True)


def _check_half_plan(model: nn.Module, space: ChannelSpace, shape: tuple[int, ...]) -> Plan:
    """A uniform 0.5 plan prunes every group, applies, runs, equals the masked model and costs what it
    measures."""
    plan = plan_from_widths(space, uniform_widths(space, 0.5), model=model, importance=importance.l1)
    assert all(plan.pruned(g) for g in space)
    pruned = apply(model, plan, space).eval()
    masked, _ = mask(model, plan, space)
    x = torch.randn(2, *shape[1:])
    with torch.no_grad():
        y, yp, ym = model(x), pruned(x), masked.eval()(x)
    assert yp.shape == y.shape
    assert torch.allclose(yp, ym, atol=1e-5 * (1 + ym.abs().max().item())), (yp - ym).abs().max()
    cost = CostModel(space).cost(plan)
    assert cost.macs == measure_macs(pruned, shape) < measure_macs(model, shape)
    assert cost.params == count_params(pruned) < count_params(model)
    return plan


@pytest.mark.parametrize(
    ("spec", "shape"), [("preresnet164", (1, 3, 32, 32)), ("preresnet164:in_chans=1", (1, 1, 28, 28))]
)
def test_preresnet164_channel_space_covers_every_conv(spec: str, shape: tuple[int, ...]) -> None:
    model, space = _space(spec, shape)
    # the stem, two inner groups per block, one residual stream per stage; only the classifier output is out
    assert len(space.groups) == 1 + 2 * 54 + 3
    assert space.dropped == ["fc: channels reach the model output"]
    roots = {g.name for g in space}
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert all(n in roots for n in convs if n.endswith(("conv1", "conv2"))), (
        "every inner conv is a group root"
    )
    streams = {g.name: g for g in space if "residual" in g.tags}
    assert {n: g.channels for n, g in streams.items()} == {
        "layer1.0.conv3": 64,
        "layer2.0.conv3": 128,
        "layer3.0.conv3": 256,
    }
    # a stream ties every conv3 and downsample output of its stage to the pre-activation BNs that read it
    last = {f"{m.module}.{m.dim}" for m in streams["layer3.0.conv3"].members}
    assert {"layer3.0.downsample.0.out", "bn.out", "fc.in"} <= last
    assert {f"layer3.{i}.conv3.out" for i in range(18)} <= last
    assert {f"layer3.{i}.bn1.out" for i in range(1, 18)} <= last
    assert {f"layer3.{i}.conv1.in" for i in range(1, 18)} <= last
    first = {f"{m.module}.{m.dim}" for m in space["conv1"].members}
    assert {"layer1.0.bn1.out", "layer1.0.conv1.in", "layer1.0.downsample.0.in"} <= first
    _check_half_plan(model, space, shape)


def test_preresnet_small_depth_channel_space() -> None:
    model, space = _space("preresnet:depth=20,width_mult=0.5", (1, 3, 32, 32))
    assert len(space.groups) == 1 + 2 * 6 + 3 and space.dropped == ["fc: channels reach the model output"]
    _check_half_plan(model, space, (1, 3, 32, 32))


def test_resnet101_channel_space_covers_every_conv() -> None:
    shape = (1, 3, 64, 64)
    model, space = _space("resnet101:num_classes=10", shape)
    assert len(space.groups) == 1 + 2 * 33 + 4
    assert space.dropped == ["fc: channels reach the model output"]
    streams = {g.name: g.channels for g in space if "residual" in g.tags}
    assert streams == {
        "layer1.0.conv3": 256,
        "layer2.0.conv3": 512,
        "layer3.0.conv3": 1024,
        "layer4.0.conv3": 2048,
    }
    _check_half_plan(model, space, shape)
