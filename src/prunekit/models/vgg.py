"""CIFAR VGG with BatchNorm, as used by the channel-pruning literature.

The VGG conv configurations of Simonyan & Zisserman (ICLR 2015, Table 1, columns D and E) with BatchNorm after
every conv, in the CIFAR form of Liu et al., "Learning Efficient Convolutional Networks through Network
Slimming" (ICCV 2017) and Liu et al., "Rethinking the Value of Network Pruning" (ICLR 2019): the last max-pool
and the three fully connected layers are dropped, global average pooling and a single ``Linear(512, classes)``
follow the last conv. Max-pools use ``ceil_mode=True`` so odd sizes never shrink to zero: 28x28 inputs go
28 -> 14 -> 7 -> 4 -> 2 (32x32 inputs are unaffected: 32 -> 16 -> 8 -> 4 -> 2).

Module names: ``features.{i}`` (conv, BN, ReLU, pool in order; e.g. ``features.0`` is the first conv,
``features.1`` its BN), ``avgpool``, ``classifier`` (the Linear layer).
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.models.registry import check_model_args, init_weights, register_model, scale_width

__all__ = ["VGG", "CFGS", "vgg16_bn", "vgg19_bn"]

M = "M"
CFGS: dict[str, list[int | str]] = {
    "vgg16": [64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512],
    "vgg19": [64, 64, M, 128, 128, M, 256, 256, 256, 256, M, 512, 512, 512, 512, M, 512, 512, 512, 512],
}


class VGG(nn.Module):
    """VGG-BN for small images: ``cfg`` lists conv widths, ``"M"`` a 2x2 max-pool (stride 2, ceil mode).

    Input ``(N, in_chans, H, W)``, any ``H, W >= 1``; output ``(N, num_classes)`` logits.
    """

    def __init__(
        self,
        cfg: list[int | str],
        *,
        num_classes: int = 10,
        in_chans: int = 3,
        width_mult: float = 1.0,
        name: str = "vgg",
    ) -> None:
        super().__init__()
        check_model_args(name, num_classes=num_classes, in_chans=in_chans, width_mult=width_mult)
        layers: list[nn.Module] = []
        c_in = in_chans
        for v in cfg:
            if v == M:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
            else:
                c_out = scale_width(int(v), width_mult)
                layers += [
                    nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                    nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True),
                ]
                c_in = c_out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)
        init_weights(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register_model("vgg16_bn")
def vgg16_bn(*, num_classes: int = 10, in_chans: int = 3, width_mult: float = 1.0) -> VGG:
    """CIFAR VGG-16 with BN (Simonyan & Zisserman 2015 cfg D; Liu et al. 2017 CIFAR variant).

    ``(N, in_chans, H, W) -> (N, num_classes)``; 14.7M parameters and 313M MACs at 32x32 with the defaults.

    Raises:
        PrunekitError: non-positive ``num_classes``/``in_chans``/``width_mult``.
    """
    return VGG(
        CFGS["vgg16"], num_classes=num_classes, in_chans=in_chans, width_mult=width_mult, name="vgg16_bn"
    )


@register_model("vgg19_bn")
def vgg19_bn(*, num_classes: int = 10, in_chans: int = 3, width_mult: float = 1.0) -> VGG:
    """CIFAR VGG-19 with BN (Simonyan & Zisserman 2015 cfg E; Liu et al. 2017 CIFAR variant).

    ``(N, in_chans, H, W) -> (N, num_classes)``; 20.0M parameters and 398M MACs at 32x32 with the defaults.

    Raises:
        PrunekitError: non-positive ``num_classes``/``in_chans``/``width_mult``.
    """
    return VGG(
        CFGS["vgg19"], num_classes=num_classes, in_chans=in_chans, width_mult=width_mult, name="vgg19_bn"
    )
