"""MobileNetV1 and MobileNetV2.

* MobileNetV1: Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
  Applications", 2017, Table 1. A 3x3 stride-2 conv with 32 channels, 13 depthwise-separable blocks (3x3
  depthwise conv + BN + ReLU, 1x1 pointwise conv + BN + ReLU) with widths 64, 128, 128, 256, 256, 512 x 6,
  1024, 1024, global average pooling, a linear classifier. The last block has stride 1 (the stride 2 printed
  in Table 1 is a known typo; the reference implementations and the 569M MACs use stride 1). Widths are
  ``int(c * width_mult)`` as in the Keras/TF-slim reference (§4.2 "width multiplier").
  Module names: ``features.0.{0,1,2}`` (stem conv/BN/ReLU),
  ``features.{1..13}.{conv_dw,bn_dw,conv_pw,bn_pw}``, ``classifier``.
* MobileNetV2: Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018, Table 2,
  built exactly like torchvision's ``mobilenet_v2`` (channels rounded to multiples of 8 with its
  ``_make_divisible`` rule, last channel ``1280 * max(1, width_mult)``, ReLU6, dropout before the classifier),
  with the same parameter names, so torchvision's state dicts load into it.
  Module names: ``features.0`` (stem), ``features.{1..17}.conv.*`` (inverted residuals), ``features.18``,
  ``classifier.1`` (the Linear layer; ``classifier.0`` is the dropout).

Both take ``stem_stride`` (default 2): ``stem_stride=1`` keeps the resolution of small inputs (CIFAR) in the
first layer.
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.models.registry import check_model_args, init_weights, register_model

__all__ = [
    "DepthwiseSeparable",
    "InvertedResidual",
    "MobileNetV1",
    "MobileNetV2",
    "make_divisible",
    "mobilenet_v1",
    "mobilenet_v2",
]


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``v`` to the nearest multiple of ``divisor`` (at least ``min_value``, default ``divisor``)
    without going more than 10% below ``v`` -- torchvision's / TF's ``_make_divisible``."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _check_stem_stride(model: str, stem_stride: int) -> None:
    if stem_stride not in (1, 2) or isinstance(stem_stride, bool):
        raise PrunekitError(f"{model}: stem_stride must be 1 or 2, got {stem_stride!r}")


def _conv_bn_act(
    c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, act: type[nn.Module] = nn.ReLU
) -> nn.Sequential:
    """``Sequential(conv, BN, act)`` -- indices 0/1/2 match torchvision's ``Conv2dNormActivation``."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        act(inplace=True),
    )


# -------------------------------------------------------------------------------------------- MobileNetV1
class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv-BN-ReLU then 1x1 pointwise conv-BN-ReLU (Howard et al. 2017, Fig. 3).

    Shapes: ``(N, c_in, H, W) -> (N, c_out, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False)
        self.bn_dw = nn.BatchNorm2d(c_in)
        self.relu_dw = nn.ReLU(inplace=True)
        self.conv_pw = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn_pw = nn.BatchNorm2d(c_out)
        self.relu_pw = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu_dw(self.bn_dw(self.conv_dw(x)))
        return self.relu_pw(self.bn_pw(self.conv_pw(x)))


# (output channels, stride) of the 13 depthwise-separable blocks, Howard et al. 2017, Table 1.
V1_BLOCKS: list[tuple[int, int]] = [
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
]


class MobileNetV1(nn.Module):
    """MobileNetV1 (Howard et al. 2017, Table 1). ``(N, in_chans, H, W) -> (N, num_classes)``, ``H, W >= 1``.

    1.0: 569M MACs / 4.23M parameters at 224x224 with 1000 classes.
    """

    def __init__(
        self, *, num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0, stem_stride: int = 2
    ) -> None:
        super().__init__()
        check_model_args("mobilenet_v1", num_classes=num_classes, in_chans=in_chans, width_mult=width_mult)
        _check_stem_stride("mobilenet_v1", stem_stride)

        def width(c: int) -> int:
            return max(1, int(c * width_mult))

        c = width(32)
        layers: list[nn.Module] = [_conv_bn_act(in_chans, c, 3, stem_stride)]
        for c_out, stride in V1_BLOCKS:
            layers.append(DepthwiseSeparable(c, width(c_out), stride))
            c = width(c_out)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        init_weights(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


# -------------------------------------------------------------------------------------------- MobileNetV2
class InvertedResidual(nn.Module):
    """Inverted residual with linear bottleneck (Sandler et al. 2018, Table 1 / Fig. 3b).

    1x1 expansion conv-BN-ReLU6 (skipped when ``expand_ratio == 1``), 3x3 depthwise conv-BN-ReLU6 with
    ``stride``, 1x1 linear projection conv-BN; ``x + block(x)`` when ``stride == 1`` and ``c_in == c_out``.
    Shapes: ``(N, c_in, H, W) -> (N, c_out, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(c_in * expand_ratio))
        self.use_res_connect = stride == 1 and c_in == c_out
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_act(c_in, hidden, 1, act=nn.ReLU6))
        layers += [
            _conv_bn_act(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


# (expansion t, channels c, repeats n, stride s), Sandler et al. 2018, Table 2.
V2_SETTING: list[tuple[int, int, int, int]] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018, Table 2). ``(N, in_chans, H, W) -> (N, num_classes)``, ``H, W >= 1``.

    1.0: 301M MACs / 3.50M parameters; 1.4: 582M MACs / 6.11M parameters (224x224, 1000 classes).
    """

    def __init__(
        self,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        width_mult: float = 1.0,
        stem_stride: int = 2,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        check_model_args("mobilenet_v2", num_classes=num_classes, in_chans=in_chans, width_mult=width_mult)
        _check_stem_stride("mobilenet_v2", stem_stride)
        if not 0.0 <= dropout < 1.0:
            raise PrunekitError(f"mobilenet_v2: dropout must be in [0, 1), got {dropout!r}")
        c = make_divisible(32 * width_mult)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [_conv_bn_act(in_chans, c, 3, stem_stride, act=nn.ReLU6)]
        for t, ch, n, s in V2_SETTING:
            c_out = make_divisible(ch * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(c, c_out, s if i == 0 else 1, t))
                c = c_out
        layers.append(_conv_bn_act(c, self.last_channel, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))
        init_weights(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register_model("mobilenet_v1")
def mobilenet_v1(
    *, num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0, stem_stride: int = 2
) -> MobileNetV1:
    """MobileNetV1 (Howard et al. 2017, Table 1): ``(N, in_chans, H, W) -> (N, num_classes)``.

    At 224x224 / 1000 classes: 569M MACs and 4.23M params (1.0); 325M / 149M / 41M MACs at
    ``width_mult`` 0.75 / 0.5 / 0.25. ``stem_stride=1`` keeps the resolution of small inputs.

    Raises:
        PrunekitError: non-positive ``num_classes``/``in_chans``/``width_mult``; ``stem_stride`` not 1 or 2.
    """
    return MobileNetV1(
        num_classes=num_classes, in_chans=in_chans, width_mult=width_mult, stem_stride=stem_stride
    )


@register_model("mobilenet_v2")
def mobilenet_v2(
    *,
    num_classes: int = 1000,
    in_chans: int = 3,
    width_mult: float = 1.0,
    stem_stride: int = 2,
    dropout: float = 0.2,
) -> MobileNetV2:
    """MobileNetV2 (Sandler et al. 2018, Table 2; torchvision layout).

    ``(N, in_chans, H, W) -> (N, num_classes)``.

    At 224x224 / 1000 classes: 301M MACs and 3.50M params (1.0); 582M / 6.11M (``width_mult=1.4``).
    ``stem_stride=1`` keeps the resolution of small inputs; ``dropout`` is applied before the classifier.

    Raises:
        PrunekitError: non-positive ``num_classes``/``in_chans``/``width_mult``; ``stem_stride`` not 1 or 2;
            ``dropout`` outside [0, 1).
    """
    return MobileNetV2(
        num_classes=num_classes,
        in_chans=in_chans,
        width_mult=width_mult,
        stem_stride=stem_stride,
        dropout=dropout,
    )
