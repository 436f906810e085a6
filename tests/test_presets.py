"""The CIFAR-10 / ImageNet presets cannot run here (no such data, no GPU), so check what can be checked without data:
the reference model they build has the published cost, and their MACs budget is reachable in their search space --
with enough of the GA's random proposals inside MetaPruning's window for its random fill to find a population (the
seed's ResNet-50 window [1950M, 2050M] catches about 1% of them).
"""

from __future__ import annotations

import numpy as np
import pytest

from prunekit.config import load_config
from prunekit.cost import CostModel
from prunekit.cost.budget import Budget
from prunekit.cost.latency import resolve_round_to
from prunekit.models import create_model, parse_spec
from prunekit.space import ChannelSpace

# dataset -> (num_classes, in_chans, image size) of the presets' datasets
DATASETS = {"imagefolder": (1000, 3, 224), "cifar10": (10, 3, 32)}
# published reference MACs (MobileNetV1 569M, MobileNetV2 1.4x 585M, ResNet-50 4.1G, CIFAR ResNet-56 125M)
REFERENCE_MACS = {
    "imagenet-mobilenet_v1-8stage-magnitude": 569e6,
    "imagenet-mobilenet_v1-metapruning": 569e6,
    "imagenet-mobilenet_v2-metapruning": 585e6,
    "imagenet-resnet50-metapruning": 4.1e9,
    "imagenet-resnet50-scratch": 4.1e9,
    "cifar10-resnet56-scratch": 125e6,
}


def _build(name: str, cfg):
    num_classes, in_chans, size = DATASETS[cfg.data.name]
    spec = parse_spec(cfg.model).with_options(num_classes=num_classes, in_chans=in_chans).to_string()
    space = ChannelSpace.build(create_model(spec), (1, in_chans, size, size))
    return spec, space, CostModel(space)


@pytest.mark.parametrize("name", sorted(REFERENCE_MACS))
def test_large_dataset_preset_budget_is_reachable(name):
    cfg = load_config(f"configs/{name}.yaml")
    spec, space, cm = _build(name, cfg)
    base = float(cm.cost().macs)
    assert base == pytest.approx(REFERENCE_MACS[name], rel=0.02)
    target = Budget.from_target(cfg.target, cm).limit("macs") if cfg.target is not None else None
    m = cfg.method
    if m.name == "metapruning":
        from prunekit.methods.metapruning import macs_window, search_encoding

        lo, hi = macs_window(m, target)
        enc = search_encoding(space, m)
        smallest, largest = (float(cm.macs(enc.decode_widths(b))) for b in (enc.low, enc.high))
        assert smallest <= hi and largest >= lo, (smallest, largest, lo, hi)
        rb = enc.restrict_widths(*m.random_scales) if m.random_scales is not None else enc.bounds
        genes = rb.random(np.random.default_rng(0), 2000)
        macs = cm.macs(enc.decode_widths(genes))
        hit = float(np.mean((macs >= lo) & (macs <= hi)))
        # the random fill tries `random_tries` proposals per missing candidate: expect 10x more hits than it needs
        assert hit * m.search.random_tries >= 10, (
            f"only {hit:.2%} of random proposals fall in the MACs window"
        )
    elif m.name == "scratch":
        from prunekit.methods.scratch import check_reachable, expand_spec

        wide = ChannelSpace.build(create_model(expand_spec(spec, m.expansion)), space.input_shape)
        check_reachable(
            wide,
            CostModel(wide),
            target,
            tol=m.tol,
            min_channels=m.min_channels,
            round_to=resolve_round_to(m.round_to),
        )
    else:
        assert m.name == "multistage"
        from prunekit.methods.multistage.schedules import stage_ratios

        ratios = stage_ratios(m.schedule, m.final_ratio)
        assert ratios == sorted(ratios) and ratios[0] > 0 and ratios[-1] < 1
