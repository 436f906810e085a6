"""Small hand-built topologies and a random-architecture builder shared by the core tests."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN non-trivial statistics and affine parameters so equivalence tests can fail."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
    return model


class ResidualProj(nn.Module):
    """stem -> basic block (identity) -> basic block with 1x1 stride-2 projection -> pool -> fc."""

    def __init__(self, c=8, num_classes=5):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(c)
        self.b1c1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.b1n1 = nn.BatchNorm2d(c)
        self.b1c2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.b1n2 = nn.BatchNorm2d(c)
        self.b2c1 = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=False)
        self.b2n1 = nn.BatchNorm2d(2 * c)
        self.b2c2 = nn.Conv2d(2 * c, 2 * c, 3, padding=1, bias=False)
        self.b2n2 = nn.BatchNorm2d(2 * c)
        self.proj = nn.Conv2d(c, 2 * c, 1, stride=2, bias=False)
        self.projn = nn.BatchNorm2d(2 * c)
        self.fc = nn.Linear(2 * c, num_classes)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        x = F.relu(x + self.b1n2(self.b1c2(F.relu(self.b1n1(self.b1c1(x))))))
        y = self.b2n2(self.b2c2(F.relu(self.b2n1(self.b2c1(x)))))
        x = F.relu(y + self.projn(self.proj(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class DepthwiseChain(nn.Module):
    """MobileNetV1-style: stem -> (dw -> pw) x 2 -> pool -> fc."""

    def __init__(self, num_classes=5):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.dw1 = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.pw1 = nn.Conv2d(8, 16, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.dw2 = nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16, bias=False)
        self.bn3 = nn.BatchNorm2d(16)
        self.pw2 = nn.Conv2d(16, 24, 1, bias=False)
        self.bn4 = nn.BatchNorm2d(24)
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        x = F.relu(self.bn2(self.pw1(F.relu(self.bn1(self.dw1(x))))))
        x = F.relu(self.bn4(self.pw2(F.relu(self.bn3(self.dw2(x))))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class DenseConcat(nn.Module):
    """DenseNet-style: two concatenations feeding a BN + 1x1 transition conv."""

    def __init__(self, num_classes=5):
        super().__init__()
        self.c0 = nn.Conv2d(3, 8, 3, padding=1)
        self.c1 = nn.Conv2d(8, 4, 3, padding=1)
        self.c2 = nn.Conv2d(12, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.trans = nn.Conv2d(16, 6, 1)
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x):
        x = self.c0(x)
        y = torch.cat([x, self.c1(x)], 1)
        z = torch.cat([y, self.c2(y)], 1)
        z = self.trans(F.relu(self.bn(z)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(z, 1), 1))


class GroupedConv(nn.Module):
    """A grouped 3x3 conv (4 groups, 8 -> 16) then a grouped 1x1 (4 groups, 16 -> 12)."""

    def __init__(self, num_classes=5):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.g1 = nn.Conv2d(8, 16, 3, padding=1, groups=4, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.g2 = nn.Conv2d(16, 12, 1, groups=4, bias=False)
        self.bn2 = nn.BatchNorm2d(12)
        self.fc = nn.Linear(12, num_classes)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        x = F.relu(self.bn1(self.g1(x)))
        x = F.relu(self.bn2(self.g2(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class FlattenLinear(nn.Module):
    """conv -> conv -> flatten (C*4*4 features) -> Linear hidden -> Linear classifier."""

    def __init__(self, num_classes=5):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 10, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(10)
        self.fc1 = nn.Linear(10 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.c1(x)))
        x = F.relu(self.bn2(self.c2(x)))
        x = F.adaptive_avg_pool2d(x, 4)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


class Fire(nn.Module):
    """SqueezeNet's fire module: 1x1 squeeze, then 1x1 and 3x3 expands concatenated (in-place ReLUs, as torchvision)."""

    def __init__(self, cin, squeeze, expand):
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.squeeze_act = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, expand, 1)
        self.expand1x1_act = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, expand, 3, padding=1)
        self.expand3x3_act = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.squeeze_act(self.squeeze(x))
        return torch.cat([self.expand1x1_act(self.expand1x1(x)), self.expand3x3_act(self.expand3x3(x))], 1)


class SqueezeLike(nn.Module):
    """SqueezeNet-style classifier with no Linear: fires -> dropout -> 1x1 conv to the classes -> ReLU -> global
    average pool -> flatten. The classifier conv's output channels are the logits."""

    def __init__(self, num_classes=10, in_chans=3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 16, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, ceil_mode=True),
            Fire(16, 4, 8),
            Fire(16, 4, 8),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Conv2d(16, num_classes, 1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1)
        )

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


class InplaceHead(nn.Module):
    """conv -> ReLU -> dropout -> 1x1 conv to the classes -> in-place ReLU -> global pool -> flatten."""

    def __init__(self, num_classes=10, in_chans=3):
        super().__init__()
        self.stem = nn.Conv2d(in_chans, 8, 3, padding=1)
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Conv2d(8, num_classes, 1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1)
        )

    def forward(self, x):
        return torch.flatten(self.classifier(F.relu(self.stem(x))), 1)


class SegHead(nn.Module):
    """Segmentation-style: convs -> a last 1x1 conv producing the (N, K, H, W) map, optionally upsampled + softmax."""

    def __init__(self, num_classes=5, in_chans=3, upsample=False):
        super().__init__()
        self.c1 = nn.Conv2d(in_chans, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 12, 3, stride=2 if upsample else 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(12)
        self.head = nn.Conv2d(12, num_classes, 1)
        self.upsample = upsample

    def forward(self, x):
        y = self.head(F.relu(self.bn2(self.c2(F.relu(self.bn1(self.c1(x)))))))
        if self.upsample:
            y = F.interpolate(y, size=x.shape[2:], mode="bilinear", align_corners=False).softmax(1)
        return y


class NothingPrunable(nn.Module):
    """One conv straight to the classes, then pooling: its only channel group reaches the output."""

    def __init__(self, num_classes=10, in_chans=3):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, num_classes, 3, padding=1)

    def forward(self, x):
        return torch.flatten(F.adaptive_avg_pool2d(F.relu(self.conv(x)), 1), 1)


# ---------------------------------------------------------------- random architectures (hypothesis)
class _Block(nn.Module):
    def __init__(self, kind: str, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        self.kind = kind
        if kind == "conv":
            self.body = nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
            )
        elif kind == "residual":
            self.body = nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                nn.BatchNorm2d(cout),
            )
            self.short = (
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                if (stride != 1 or cin != cout)
                else nn.Identity()
            )
        elif kind == "inverted":
            hid = cin * expand
            self.body = nn.Sequential(
                nn.Conv2d(cin, hid, 1, bias=False),
                nn.BatchNorm2d(hid),
                nn.ReLU6(),
                nn.Conv2d(hid, hid, 3, stride, 1, groups=hid, bias=False),
                nn.BatchNorm2d(hid),
                nn.ReLU6(),
                nn.Conv2d(hid, cout, 1, bias=False),
                nn.BatchNorm2d(cout),
            )
            self.use_res = stride == 1 and cin == cout
        elif kind == "concat":
            self.a = nn.Sequential(
                nn.Conv2d(cin, cout // 2, 3, stride, 1, bias=False), nn.BatchNorm2d(cout // 2)
            )
            self.b = nn.Sequential(
                nn.Conv2d(cin, cout - cout // 2, 1, stride, bias=False), nn.BatchNorm2d(cout - cout // 2)
            )
        elif kind == "grouped":
            self.body = nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, groups=2, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
            )

    def forward(self, x):
        if self.kind in ("conv", "grouped"):
            return self.body(x)
        if self.kind == "residual":
            return F.relu(self.body(x) + self.short(x))
        if self.kind == "inverted":
            y = self.body(x)
            return x + y if self.use_res else y
        return F.relu(torch.cat([self.a(x), self.b(x)], 1))


class RandomNet(nn.Module):
    """A random stack of blocks (conv / residual / inverted-residual / concat / grouped) and a classifier."""

    def __init__(
        self,
        blocks: list[tuple[str, int, int, int]],
        in_chans: int = 3,
        num_classes: int = 4,
        flatten: bool = False,
        head: str = "linear",
    ):
        """``head``: ``linear`` (pool -> flatten -> Linear), ``conv`` (1x1 conv to the classes -> pool -> flatten,
        SqueezeNet style) or ``map`` (1x1 conv to the classes, the (N, K, H, W) map is the output)."""
        super().__init__()
        layers, c = [], in_chans
        for i, (kind, cout, stride, expand) in enumerate(blocks):
            if kind == "grouped" and (c % 2 or cout % 2):
                kind = "conv"
            if i == 0 and kind in ("inverted", "grouped"):
                kind = "conv"
            layers.append(_Block(kind, c, cout, stride, expand))
            c = cout
        self.features = nn.Sequential(*layers)
        self.flatten = flatten
        self.head = head
        if head == "linear":
            self.classifier = nn.Linear(c * (4 if flatten else 1), num_classes)
        else:
            self.classifier = nn.Conv2d(c, num_classes, 1)

    def forward(self, x):
        x = self.features(x)
        if self.head == "map":
            return self.classifier(x)
        if self.head == "conv":
            return torch.flatten(F.adaptive_avg_pool2d(F.relu(self.classifier(x)), 1), 1)
        x = F.adaptive_avg_pool2d(x, 2 if self.flatten else 1)
        return self.classifier(torch.flatten(x, 1))


def plain_cnn(num_classes: int = 10, in_chans: int = 1, width_mult: float = 1.0) -> nn.Module:
    """A BatchNorm-free CNN (conv-ReLU x3, a stride-2 residual-free stack, pool, fc): its data-parallel training
    equals one process at the same global batch up to float reduction order (no per-rank batch statistics)."""
    width = max(1, round(16 * width_mult))
    return nn.Sequential(
        nn.Conv2d(in_chans, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, num_classes),
    )
