"""Channel space (what can be pruned, and what is coupled) and plans (one choice in that space)."""

from prunekit.space.channels import ChannelGroup, ChannelSpace, LayerShape, Member, is_depthwise
from prunekit.space.plan import (
    GroupChoice,
    LayerChoice,
    MaskSet,
    Plan,
    apply,
    build_masks,
    mask,
    plan_from_ratio,
    plan_from_widths,
    rebuild,
)
from prunekit.space.widths import legal_width, round_width, select_channels, uniform_widths

__all__ = [
    "ChannelGroup",
    "ChannelSpace",
    "GroupChoice",
    "LayerChoice",
    "LayerShape",
    "MaskSet",
    "Member",
    "Plan",
    "apply",
    "build_masks",
    "is_depthwise",
    "legal_width",
    "mask",
    "plan_from_ratio",
    "plan_from_widths",
    "rebuild",
    "round_width",
    "select_channels",
    "uniform_widths",
]
