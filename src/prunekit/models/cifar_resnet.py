"""CIFAR-style ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, §4.2).

A 3x3 stem conv (stride 1) with 16 channels, then 3 stages of ``n = (depth - 2) / 6`` BasicBlocks with 16, 32
and 64 channels (the first block of stages 2 and 3 has stride 2), global average pooling and a linear
classifier: ``6n + 2`` weighted layers. Where a block changes shape the shortcut is a projection, a 1x1 conv
with stride 2 plus BatchNorm ("option B" of the paper), so the channel coupling of each residual add is
visible to a tracer. ResNet-56 then has 0.856M parameters (0.853M with the paper's parameter-free option A).

Module names: ``conv1``, ``bn1``, ``layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2}``,
``layer{2,3}.0.downsample.{0,1}``, ``fc``.
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.models.registry import check_model_args, init_weights, register_model, scale_width

__all__ = ["BasicBlock", "CifarResNet", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    Shapes: ``(N, in_planes, H, W) -> (N, planes, ceil(H / stride), ceil(W / stride))``. ``downsample`` is a
    1x1 conv + BN projection when ``stride != 1`` or ``in_planes != planes``, else ``None`` (identity).
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + identity
        return self.relu(out)


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth ``6n + 2`` (He et al. 2016, §4.2) with projection shortcuts (option B).

    Input ``(N, in_chans, H, W)`` with ``H, W >= 1`` (stages 2 and 3 halve the resolution; adaptive pooling
    makes any size work, 32x32 and 28x28 included); output ``(N, num_classes)`` logits.
    """

    def __init__(
        self, depth: int, *, num_classes: int = 10, in_chans: int = 3, width_mult: float = 1.0
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise PrunekitError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, ...), got {depth}")
        check_model_args(f"resnet{depth}", num_classes=num_classes, in_chans=in_chans, width_mult=width_mult)
        n = (depth - 2) // 6
        widths = [scale_width(c, width_mult) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        in_planes = widths[0]
        stages = []
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


@register_model("resnet20")
def resnet20(*, num_classes: int = 10, in_chans: int = 3, width_mult: float = 1.0) -> CifarResNet:
    """CIFAR ResNet-20 (He et al. 2016, §4.2; n=3, option-B shortcuts).

    ``(N, in_chans, H, W) -> (N, num_classes)``.

    Raises:
        PrunekitError: non-positive ``num_classes``/``in_chans``/``width_mult``.
    """
    return CifarResNet(20, num_classes=num_classes, in_chans=in_chans, width_mult=width_mult)


@register_model("resnet32")
def resnet32(*, num_classes: int = 10, in_chans: int = 3, width_mult: float = 1.0) -> CifarResNet:
    """CIFAR ResNet-32 (He et al. 2016, §4.2; n=5, option-B shortcuts).

    ``(N, in_chans, H, W) -> (N, num_classes)``.

    Raises:
        PrunekitError: non-positive ``num_classes``/``in_chans``/``width_mult``.
    """
    return CifarResNet(32, num_classes=num_classes, in_chans=in_chans, width_mult=width_mult)


@register_model("resnet44")
def resnet44(*, num_classes: int = 10, in_chans: int = 3, width_mult: float = 1.0) -> CifarResNet:
    """CIFAR ResNet-44 (He et al. 2016, §4.2; n=7, option-B shortcuts).

    ``(N, in_chans, H, W) -> (N, num_classes)``.

    Raises:
        PrunekitError: non-positive ``num_classes``/``in_chans``/``width_mult``.
    """
    return CifarResNet(44, num_classes=num_classes, in_chans=in_chans, width_mult=width_mult)


@register_model("resnet56")
def resnet56(*, num_classes: int = 10, in_chans: int = 3, width_mult: float = 1.0) -> CifarResNet:
    """CIFAR ResNet-56 (He et al. 2016, §4.2; n=9, option-B shortcuts).

    ``(N, in_chans, H, W) -> (N, num_classes)``.

    0.856M parameters and 126M MACs at 32x32 with the defaults.

    Raises:
        PrunekitError: non-positive ``num_classes``/``in_chans``/``width_mult``.
    """
    return CifarResNet(56, num_classes=num_classes, in_chans=in_chans, width_mult=width_mult)


@register_model("resnet110")
def resnet110(*, num_classes: int = 10, in_chans: int = 3, width_mult: float = 1.0) -> CifarResNet:
    """CIFAR ResNet-110 (He et al. 2016, §4.2; n=18, option-B shortcuts).

    ``(N, in_chans, H, W) -> (N, num_classes)``.

    Raises:
        PrunekitError: non-positive ``num_classes``/``in_chans``/``width_mult``.
    """
    return CifarResNet(110, num_classes=num_classes, in_chans=in_chans, width_mult=width_mult)
