"""Reference models and the model registry.

``create_model("resnet20:num_classes=10,in_chans=1")`` resolves a spec string to an ``nn.Module``; see
:mod:`prunekit.models.registry` for the grammar (builtin names, ``timm:NAME``, ``torchvision:NAME``,
``path/to/file.py:factory``). Builtins (``list_models()``): CIFAR ResNet-20/32/44/56/110, CIFAR VGG-16/19 with
BN, MobileNetV1/V2 and ImageNet ResNet-18/34/50.
"""

# Importing the builtin model modules registers them.
from prunekit.models import cifar_resnet, mobilenet, preresnet, resnet, vgg  # noqa: F401
from prunekit.models.registry import (
    ModelSpec,
    create_model,
    list_models,
    model_options,
    parse_spec,
    register_model,
)

__all__ = ["ModelSpec", "create_model", "list_models", "model_options", "parse_spec", "register_model"]
