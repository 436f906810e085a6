"""ImageNet-style ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, Table 1).

The torchvision architecture ("ResNet v1.5"): a 7x7 stride-2 stem conv with 64 channels, a 3x3 stride-2
max-pool, four stages of BasicBlocks (ResNet-18/34) or Bottlenecks (ResNet-50/101) with 64/128/256/512 base
widths, global average pooling, ``fc``. In a Bottleneck the stride sits on the 3x3 conv; shortcuts that change
shape are a 1x1 conv (with the stride) + BN. Parameter names equal torchvision's (``conv1``, ``bn1``,
``layer{1..4}.{i}.conv{1,2,3}``, ``layer{1..4}.0.downsample.{0,1}``, ``fc``), so its state dicts load here.

At 224x224 and 1000 classes: ResNet-18 1.81G MACs / 11.69M params, ResNet-34 3.66G / 21.80M,
ResNet-50 4.09G / 25.56M, ResNet-101 7.80G / 44.55M. 28x28 inputs work (28 -> 14 -> 7 -> 7 -> 4 -> 2 -> 1).
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.models.registry import check_model_args, init_weights, register_model, scale_width

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50", "resnet101"]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus shortcut (ResNet-18/34).

    Shapes: ``(N, in_planes, H, W) -> (N, planes, ceil(H / stride), ceil(W / stride))``.
    """

    expansion = 1

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (with the stride), 1x1 expand (x4) conv-BN layers plus shortcut (ResNet-50/101).

    Shapes: ``(N, in_planes, H, W) -> (N, 4 * planes, ceil(H / stride), ceil(W / stride))``.
    """

    expansion = 4

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = out + identity
        return self.relu(out)


class ResNet(nn.Module):
    """ImageNet ResNet (He et al. 2016, Table 1; torchvision layout).

    ``(N, in_chans, H, W) -> (N, num_classes)``, any ``H, W >= 1``. ``width_mult`` scales every stage width
    (``round(c * width_mult)``, at least 1).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: list[int],
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        width_mult: float = 1.0,
        name: str = "resnet",
    ) -> None:
        super().__init__()
        check_model_args(name, num_classes=num_classes, in_chans=in_chans, width_mult=width_mult)
        self.in_planes = scale_width(64, width_mult)
        self.conv1 = nn.Conv2d(in_chans, self.in_planes, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        widths = [scale_width(c, width_mult) for c in (64, 128, 256, 512)]
        self.layer1 = self._make_layer(block, widths[0], layers[0], stride=1)
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3] * block.expansion, num_classes)
        init_weights(self)

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.in_planes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.in_planes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        mods: list[nn.Module] = [block(self.in_planes, planes, stride, downsample)]
        self.in_planes = planes * block.expansion
        mods += [block(self.in_planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


@register_model("resnet18")
def resnet18(*, num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0) -> ResNet:
    """ResNet-18 (He et al. 2016, Table 1; torchvision layout): ``(N, in_chans, H, W) -> (N, num_classes)``.

    1.81G MACs / 11.69M params at 224x224 with 1000 classes.

    Raises:
        PrunekitError: non-positive ``num_classes``/``in_chans``/``width_mult``.
    """
    return ResNet(
        BasicBlock,
        [2, 2, 2, 2],
        num_classes=num_classes,
        in_chans=in_chans,
        width_mult=width_mult,
        name="resnet18",
    )


@register_model("resnet34")
def resnet34(*, num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0) -> ResNet:
    """ResNet-34 (He et al. 2016, Table 1; torchvision layout): ``(N, in_chans, H, W) -> (N, num_classes)``.

    3.66G MACs / 21.80M params at 224x224 with 1000 classes.

    Raises:
        PrunekitError: non-positive ``num_classes``/``in_chans``/``width_mult``.
    """
    return ResNet(
        BasicBlock,
        [3, 4, 6, 3],
        num_classes=num_classes,
        in_chans=in_chans,
        width_mult=width_mult,
        name="resnet34",
    )


@register_model("resnet50")
def resnet50(*, num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0) -> ResNet:
    """ResNet-50 (He et al. 2016, Table 1; torchvision "v1.5", stride on the 3x3 conv).

    ``(N, in_chans, H, W) -> (N, num_classes)``; 4.09G MACs / 25.56M params at 224x224 with 1000 classes.

    Raises:
        PrunekitError: non-positive ``num_classes``/``in_chans``/``width_mult``.
    """
    return ResNet(
        Bottleneck,
        [3, 4, 6, 3],
        num_classes=num_classes,
        in_chans=in_chans,
        width_mult=width_mult,
        name="resnet50",
    )


@register_model("resnet101")
def resnet101(*, num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0) -> ResNet:
    """ResNet-101 (He et al. 2016, Table 1; torchvision "v1.5", stride on the 3x3 conv; layers 3/4/23/3).

    ``(N, in_chans, H, W) -> (N, num_classes)``; 7.80G MACs / 44.55M params at 224x224 with 1000 classes.

    Raises:
        PrunekitError: non-positive ``num_classes``/``in_chans``/``width_mult``.
    """
    return ResNet(
        Bottleneck,
        [3, 4, 23, 3],
        num_classes=num_classes,
        in_chans=in_chans,
        width_mult=width_mult,
        name="resnet101",
    )
