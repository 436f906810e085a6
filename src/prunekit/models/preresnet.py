"""CIFAR pre-activation ResNets (He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016).

A 3x3 stem conv (stride 1) with 16 channels, then 3 stages of ``n = (depth - 2) / 9`` pre-activation
bottlenecks with 16, 32 and 64 planes (expansion 4: stage outputs 64, 128 and 256 channels; the first block
of stages 2 and 3 has stride 2, on its 3x3 conv), a final BN-ReLU, global average pooling and a linear
classifier: ``9n + 2`` weighted layers. A block is
``conv3(relu(bn3(conv2(relu(bn2(conv1(relu(bn1(x)))))))) + shortcut(x)`` with nothing after the add; the
first block of every stage changes shape (16 -> 64 channels in stage 1), so its shortcut is a bare 1x1 conv
with the stride, applied to the block's raw input. This is the layout of bearpaw/pytorch-classification
``models/cifar/preresnet.py`` and of GConv's seed code (kumasento/gconv-prune ``gumi/models/preresnet.py``),
with the same module names (bearpaw's state dicts load here). PreResNet-164 then has 1.704M parameters with
10 classes (the paper's 1.7M) and 1.727M with 100, and 248M MACs at 32x32.

Module names: ``conv1``, ``layer{1,2,3}.{i}.{bn1,conv1,bn2,conv2,bn3,conv3}``,
``layer{1,2,3}.0.downsample.0``, ``bn``, ``fc``.
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.models.registry import check_model_args, init_weights, register_model, scale_width

__all__ = ["PreActBottleneck", "PreResNet", "preresnet", "preresnet164"]


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck: BN-ReLU-conv1x1, BN-ReLU-conv3x3 (with the stride), BN-ReLU-conv1x1 (x4),
    plus the shortcut, with no activation after the add.

    Shapes: ``(N, in_planes, H, W) -> (N, 4 * planes, ceil(H / stride), ceil(W / stride))``. ``downsample`` is
    a 1x1 conv (with the stride, no BN) on the raw input when the shape changes, else ``None`` (identity).
    """

    expansion = 4

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + identity


class PreResNet(nn.Module):
    """CIFAR pre-activation bottleneck ResNet of depth ``9n + 2`` (He et al. 2016b; 164: n = 18).

    Input ``(N, in_chans, H, W)`` with ``H, W >= 1`` (stages 2 and 3 halve the resolution; adaptive pooling
    makes any size work, 32x32 and 28x28 included); output ``(N, num_classes)`` logits. ``width_mult`` scales
    the planes of every stage (``round(c * width_mult)``, at least 1; the stem follows stage 1's planes).
    """

    def __init__(
        self, depth: int, *, num_classes: int = 10, in_chans: int = 3, width_mult: float = 1.0
    ) -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or (depth - 2) % 9 != 0 or depth < 11:
            raise PrunekitError(
                f"pre-activation ResNet depth must be 9n+2 (11, 20, ..., 164, 1001), got {depth!r}"
            )
        check_model_args(
            f"preresnet{depth}", num_classes=num_classes, in_chans=in_chans, width_mult=width_mult
        )
        n = (depth - 2) // 9
        widths = [scale_width(c, width_mult) for c in (16, 32, 64)]
        self.in_planes = widths[0]
        self.conv1 = nn.Conv2d(in_chans, self.in_planes, 3, stride=1, padding=1, bias=False)
        self.layer1 = self._make_layer(widths[0], n, stride=1)
        self.layer2 = self._make_layer(widths[1], n, stride=2)
        self.layer3 = self._make_layer(widths[2], n, stride=2)
        self.bn = nn.BatchNorm2d(self.in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.in_planes, num_classes)
        init_weights(self)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        out_planes = planes * PreActBottleneck.expansion
        downsample = None
        if stride != 1 or self.in_planes != out_planes:
            downsample = nn.Sequential(nn.Conv2d(self.in_planes, out_planes, 1, stride=stride, bias=False))
        mods: list[nn.Module] = [PreActBottleneck(self.in_planes, planes, stride, downsample)]
        self.in_planes = out_planes
        mods += [PreActBottleneck(self.in_planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.relu(self.bn(x))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


@register_model("preresnet")
def preresnet(
    *, depth: int = 164, num_classes: int = 10, in_chans: int = 3, width_mult: float = 1.0
) -> PreResNet:
    """CIFAR pre-activation bottleneck ResNet of any depth ``9n + 2`` (He et al., ECCV 2016).

    ``(N, in_chans, H, W) -> (N, num_classes)``; ``preresnet:depth=164`` is :func:`preresnet164`.

    Raises:
        PrunekitError: ``depth`` not of the form ``9n + 2`` (n >= 1); non-positive
            ``num_classes``/``in_chans``/``width_mult``.
    """
    return PreResNet(depth, num_classes=num_classes, in_chans=in_chans, width_mult=width_mult)


@register_model("preresnet164")
def preresnet164(*, num_classes: int = 10, in_chans: int = 3, width_mult: float = 1.0) -> PreResNet:
    """CIFAR PreResNet-164 (He et al., ECCV 2016, Table 2; n=18 pre-activation bottlenecks per stage).

    ``(N, in_chans, H, W) -> (N, num_classes)``. 1.704M parameters (1.727M with 100 classes) and 248M MACs at
    32x32 with the defaults.

    Raises:
        PrunekitError: non-positive ``num_classes``/``in_chans``/``width_mult``.
    """
    return PreResNet(164, num_classes=num_classes, in_chans=in_chans, width_mult=width_mult)
