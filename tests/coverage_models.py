"""Hand-built topologies from issue #11 ("coverage gaps found when tried as a new user would").

Each class is a small model exercising one topology the channel space must either prune or leave out with a precise
reason. The lower-case factories at the bottom are ``path/to/file.py:factory`` model specs, so the CLI runs them too::

    python -m prunekit.cli check tests/coverage_models.py:encoder_decoder --input-size 32 --json
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """conv (no bias) -> BN -> ReLU, 'same' padding."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class _Classifier(nn.Module):
    """global average pool -> flatten -> Linear to the classes."""

    def __init__(self, cin: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ---------------------------------------------------------------------------------------------- 1. ConvTranspose2d
class EncoderDecoder(nn.Module):
    """U-Net-like: enc (H) -> down (H/2) -> ConvTranspose2d up (H) -> cat([enc, up]) -> dec -> 1x1 head map.

    The transposed conv's weight is ``[C_in, C_out / groups, 2, 2]``: output channels on dim 1, input channels on
    dim 0 (``up_groups > 1``: a grouped transposed conv).
    """

    def __init__(self, num_classes: int = 3, in_chans: int = 3, c: int = 8, up_groups: int = 1):
        super().__init__()
        self.enc = _cbr(in_chans, c)
        self.down = _cbr(c, 2 * c, stride=2)
        self.up = nn.ConvTranspose2d(2 * c, c, 2, stride=2, groups=up_groups)
        self.up_bn = nn.BatchNorm2d(c)
        self.dec = _cbr(2 * c, c)
        self.head = nn.Conv2d(c, num_classes, 1)

    def forward(self, x):
        e = self.enc(x)
        u = F.relu(self.up_bn(self.up(self.down(e))))
        return self.head(self.dec(torch.cat([e, u], 1)))


# ---------------------------------------------------------------------------------- 2. residual add over a concat
class ResidualConcat(nn.Module):
    """``z = cat([s, f(s)]); z = z + g(z)``: the add ties g's output channels ``[0, c)`` to s's producer and
    ``[c, 2c)`` to f's producer."""

    def __init__(self, num_classes: int = 5, in_chans: int = 3, c: int = 8):
        super().__init__()
        self.stem = _cbr(in_chans, c)
        self.f = _cbr(c, c)
        self.g1 = _cbr(2 * c, c, k=1)
        self.g2 = nn.Sequential(nn.Conv2d(c, 2 * c, 3, padding=1, bias=False), nn.BatchNorm2d(2 * c))
        self.out = _cbr(2 * c, 2 * c)
        self.classifier = _Classifier(2 * c, num_classes)

    def forward(self, x):
        s = self.stem(x)
        z = torch.cat([s, self.f(s)], 1)
        z = F.relu(z + self.g2(self.g1(z)))
        return self.classifier(self.out(z))


# ------------------------------------------------------------------------------ 3. channel split + channel shuffle
def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's shuffle ``[N, g*k, H, W] -> view [N, g, k, H, W] -> transpose -> view [N, k*g, H, W]``."""
    n, c, h, w = x.shape
    x = x.view(n, groups, c // groups, h, w)
    return torch.transpose(x, 1, 2).contiguous().view(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit, as torchvision's ``InvertedResidual`` (in-place ReLUs included). stride 1:
    ``x1, x2 = x.chunk(2, 1)``, ``out = cat([x1, branch2(x2)])``; stride 2: ``out = cat([branch1(x), branch2(x)])``;
    then a 2-way :func:`channel_shuffle`."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
                nn.BatchNorm2d(cin),
                nn.Conv2d(cin, half, 1, bias=False),
                nn.BatchNorm2d(half),
                nn.ReLU(inplace=True),
            )
        self.branch2 = nn.Sequential(
            nn.Conv2d(cin if stride > 1 else half, half, 1, bias=False),
            nn.BatchNorm2d(half),
            nn.ReLU(inplace=True),
            nn.Conv2d(half, half, 3, stride, 1, groups=half, bias=False),
            nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False),
            nn.BatchNorm2d(half),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat([x1, self.branch2(x2)], 1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], 1)
        return channel_shuffle(out, 2)


class ShuffleNetish(nn.Module):
    """torchvision's ShuffleNetV2 in small: conv1 (stride 2) -> max pool -> ShuffleUnit(stride 2) -> 2 x
    ShuffleUnit(stride 1) -> conv5 1x1 -> ``mean([2, 3])`` -> fc.

    Two stride-1 units in a row are what makes torch-pruning's reshape index mapping divide by zero on torchvision's
    ShuffleNetV2.
    """

    def __init__(self, num_classes: int = 5, in_chans: int = 3, c: int = 8, units: int = 3):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_chans, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)
        )
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.stage2 = nn.Sequential(
            *[ShuffleUnit(c if i == 0 else 2 * c, 2 * c, 2 if i == 0 else 1) for i in range(units)]
        )
        self.conv5 = nn.Sequential(
            nn.Conv2d(2 * c, 4 * c, 1, bias=False), nn.BatchNorm2d(4 * c), nn.ReLU(inplace=True)
        )
        self.fc = nn.Linear(4 * c, num_classes)

    def forward(self, x):
        x = self.stage2(self.maxpool(self.conv1(x)))
        return self.fc(self.conv5(x).mean([2, 3]))


# ------------------------------------------------------------------------------------- 4. norms other than BatchNorm
class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (timm / ConvNeXt style: permute -> LayerNorm -> permute)."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block: depthwise 7x7 -> permute to NHWC -> LayerNorm(C) -> Linear 4C -> GELU -> Linear C -> permute
    back -> residual add."""

    def __init__(self, c: int):
        super().__init__()
        self.dwconv = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.pwconv1 = nn.Linear(c, 4 * c)
        self.pwconv2 = nn.Linear(4 * c, c)

    def forward(self, x):
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        y = self.pwconv2(F.gelu(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)


class NormZoo(nn.Module):
    """One of each norm: GroupNorm(``gn_groups`` groups), InstanceNorm2d(affine), LayerNorm2d, a ConvNeXt block."""

    def __init__(self, num_classes: int = 5, in_chans: int = 3, c: int = 8, gn_groups: int = 4):
        super().__init__()
        self.c1 = nn.Conv2d(in_chans, 2 * c, 3, padding=1)
        self.gn = nn.GroupNorm(gn_groups, 2 * c)
        self.c2 = nn.Conv2d(2 * c, c, 3, padding=1)
        self.inorm = nn.InstanceNorm2d(c, affine=True)
        self.c3 = nn.Conv2d(c, c, 3, stride=2, padding=1)
        self.ln = LayerNorm2d(c)
        self.block = ConvNeXtBlock(c)
        self.classifier = _Classifier(c, num_classes)

    def forward(self, x):
        x = F.relu(self.gn(self.c1(x)))
        x = F.relu(self.inorm(self.c2(x)))
        x = self.block(self.ln(self.c3(x)))
        return self.classifier(x)


class LayerScaleNet(nn.Module):
    """stem -> conv -> ``* gamma`` (an ``nn.Parameter [C, 1, 1]`` outside any layer, a layer scale) -> conv ->
    classifier."""

    def __init__(self, num_classes: int = 5, in_chans: int = 3, c: int = 8):
        super().__init__()
        self.stem = _cbr(in_chans, c)
        self.body = nn.Conv2d(c, 2 * c, 3, padding=1)
        self.gamma = nn.Parameter(torch.linspace(0.5, 1.5, 2 * c).view(2 * c, 1, 1))
        self.mid = _cbr(2 * c, 2 * c)
        self.classifier = _Classifier(2 * c, num_classes)

    def forward(self, x):
        y = F.relu(self.body(self.stem(x)) * self.gamma)
        return self.classifier(self.mid(y))


# --------------------------------------------------------------------------- 5. fixed-size split, slice after concat
class MixConv(nn.Module):
    """MixNet's mixed-kernel depthwise conv: ``torch.split(x, [a, b], 1)``, a 3x3 and a 5x5 depthwise conv, cat."""

    def __init__(self, c: int, splits: tuple[int, int]):
        super().__init__()
        self.splits = list(splits)
        self.dw3 = nn.Conv2d(splits[0], splits[0], 3, padding=1, groups=splits[0], bias=False)
        self.dw5 = nn.Conv2d(splits[1], splits[1], 5, padding=2, groups=splits[1], bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        a, b = torch.split(x, self.splits, dim=1)
        return F.relu(self.bn(torch.cat([self.dw3(a), self.dw5(b)], 1)))


class GhostModule(nn.Module):
    """GhostNet's module: ``primary`` makes ``m = ceil(n / 2)`` channels, a cheap depthwise conv ``m`` more, then the
    first ``n`` channels of their concatenation are kept (``cat([a, cheap(a)], 1)[:, :n]``: all of them for an
    even ``n``, all but the last cheap channel for an odd one)."""

    def __init__(self, cin: int, n: int, relu: bool = True):
        super().__init__()
        self.n = n
        m = (n + 1) // 2
        self.primary = (
            _cbr(cin, m, k=1) if relu else nn.Sequential(nn.Conv2d(cin, m, 1, bias=False), nn.BatchNorm2d(m))
        )
        self.cheap = (
            _cbr(m, m, groups=m)
            if relu
            else nn.Sequential(nn.Conv2d(m, m, 3, padding=1, groups=m, bias=False), nn.BatchNorm2d(m))
        )

    def forward(self, x):
        a = self.primary(x)
        return torch.cat([a, self.cheap(a)], 1)[:, : self.n]


class SplitSlice(nn.Module):
    """stem -> expand 1x1 -> MixConv split [6, 10] -> project 1x1 (c) -> Ghost bottleneck ``x + ghost2(ghost1(x))``
    (even widths: no-op slices) -> Ghost module to an odd width 7 (a real slice) -> 1x1 -> classifier."""

    def __init__(self, num_classes: int = 5, in_chans: int = 3, c: int = 8):
        super().__init__()
        self.stem = _cbr(in_chans, c)
        self.expand = _cbr(c, 2 * c, k=1)
        self.mix = MixConv(2 * c, (6, 2 * c - 6))
        self.project = _cbr(c * 2, c, k=1)
        self.ghost1 = GhostModule(c, 12)
        self.ghost2 = GhostModule(12, c, relu=False)
        self.ghost3 = GhostModule(c, 7)
        self.last = _cbr(7, 2 * c, k=1)
        self.classifier = _Classifier(2 * c, num_classes)

    def forward(self, x):
        x = self.project(self.mix(self.expand(self.stem(x))))
        x = x + self.ghost2(self.ghost1(x))
        return self.classifier(self.last(self.ghost3(x)))


# ------------------------------------------------------------------------------------ factories for the model specs
def encoder_decoder(num_classes: int = 3, in_chans: int = 3) -> nn.Module:
    return EncoderDecoder(num_classes, in_chans)


def residual_concat(num_classes: int = 5, in_chans: int = 3) -> nn.Module:
    return ResidualConcat(num_classes, in_chans)


def shufflenetish(num_classes: int = 5, in_chans: int = 3) -> nn.Module:
    return ShuffleNetish(num_classes, in_chans)


def norm_zoo(num_classes: int = 5, in_chans: int = 3) -> nn.Module:
    return NormZoo(num_classes, in_chans)


def split_slice(num_classes: int = 5, in_chans: int = 3) -> nn.Module:
    return SplitSlice(num_classes, in_chans)


def layer_scale(num_classes: int = 5, in_chans: int = 3) -> nn.Module:
    return LayerScaleNet(num_classes, in_chans)


FACTORIES = {
    "encoder_decoder": encoder_decoder,
    "residual_concat": residual_concat,
    "shufflenetish": shufflenetish,
    "norm_zoo": norm_zoo,
    "split_slice": split_slice,
    "layer_scale": layer_scale,
}
