"""Channel space (what can be pruned, and what is coupled) and plans (one choice in that space)."""

from prunekit.space.channels import ChannelGroup, ChannelSpace, LayerShape, Member, is_depthwise
from prunekit.space.masks import MaskSet
from prunekit.space.plan import (
    GroupChoice,
    LayerChoice,
    Plan,
    add_weight_choices,
    legal_conv_groups,
    plan_from_ratio,
    plan_from_widths,
    without_densities,
)
from prunekit.space.realise import apply, apply_with_masks, build_masks, density_masks, mask, rebuild
from prunekit.space.widths import legal_width, round_width, select_channels, uniform_widths

__all__ = [
    "add_weight_choices",
    "ChannelGroup",
    "ChannelSpace",
    "GroupChoice",
    "LayerChoice",
    "LayerShape",
    "MaskSet",
    "Member",
    "Plan",
    "apply",
    "apply_with_masks",
    "build_masks",
    "density_masks",
    "is_depthwise",
    "legal_conv_groups",
    "legal_width",
    "mask",
    "plan_from_ratio",
    "plan_from_widths",
    "without_densities",
    "rebuild",
    "round_width",
    "select_channels",
    "uniform_widths",
]
