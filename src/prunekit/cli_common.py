"""What the ``prunekit`` sub-command modules share: argument types, the model builder, number formatting."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

console = Console()

ModelArg = Annotated[
    str, typer.Argument(help="Model spec: NAME[:key=value,...], timm:NAME, or path/file.py:factory.")
]
InputSize = Annotated[
    int | None,
    typer.Option(
        "--input-size", min=8, help="Input height/width (default: 32 for CIFAR-style models, else 224)."
    ),
]
InChans = Annotated[
    int | None, typer.Option("--in-chans", min=1, help="Input channels (overrides the spec).")
]
NumClasses = Annotated[
    int | None, typer.Option("--num-classes", min=1, help="Classifier outputs (overrides the spec).")
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one machine-readable JSON object instead of tables.")
]

_CIFAR_STYLE = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "vgg16_bn", "vgg19_bn")


def _build(spec: str, input_size: int | None, in_chans: int | None, num_classes: int | None):
    from prunekit.models import create_model, parse_spec

    parsed = parse_spec(spec)
    model = create_model(spec, num_classes=num_classes, in_chans=in_chans)
    if input_size is None:
        input_size = 32 if parsed.source == "builtin" and parsed.name in _CIFAR_STYLE else 224
    channels = in_chans or parsed.kwargs.get("in_chans", 3)
    return model, (1, int(channels), input_size, input_size)


def _fmt(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3f}{unit}"
    return str(int(n))
