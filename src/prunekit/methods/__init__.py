"""Pruning methods: a registry of modules, each exposing ``Config`` (pydantic, ``name: Literal[...]``) and ``run``.

A method module ``prunekit.methods.<m>`` defines::

    class Config(BaseModel):                 # model_config = ConfigDict(extra="forbid")
        name: Literal["<m>"] = "<m>"         # the discriminator in run configs
        ...
    def run(ctx: MethodContext, cfg: Config) -> MethodResult: ...

and is registered by adding **one line** to :data:`_METHOD_MODULES` below. The run config's method field is the
discriminated union of every registered config (:func:`method_config_union`).
"""

from __future__ import annotations

import importlib
import typing
from types import ModuleType
from typing import Annotated, Any, Union

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from prunekit.errors import PrunekitError, validation_message
from prunekit.methods.base import MethodContext, MethodResult

__all__ = [
    "METHODS",
    "MethodContext",
    "MethodResult",
    "get_method",
    "method_config_classes",
    "method_config_types",
    "method_config_union",
    "parse_method_config",
]

# One line per method (import order = listing order; a module may import the ones above it).
_METHOD_MODULES: tuple[str, ...] = (
    "prunekit.methods.uniform",
    "prunekit.methods.magnitude",
    "prunekit.methods.multistage",
    "prunekit.methods.scratch",
    "prunekit.methods.metapruning",
    "prunekit.methods.gconv",
    "prunekit.methods.jcw",
    "prunekit.methods.plan",
)


def _method_name(module: ModuleType) -> str:
    cfg = getattr(module, "Config", None)
    if not (isinstance(cfg, type) and issubclass(cfg, BaseModel)) or not callable(
        getattr(module, "run", None)
    ):
        raise TypeError(
            f"method module {module.__name__} must define a pydantic `Config` and `run(ctx, cfg)`"
        )
    field = cfg.model_fields.get("name")
    args = typing.get_args(field.annotation) if field is not None else ()
    if len(args) != 1 or not isinstance(args[0], str):
        raise TypeError(f"{module.__name__}.Config must have `name: Literal['<method>']`")
    return args[0]


def _load(names: tuple[str, ...]) -> dict[str, ModuleType]:
    methods: dict[str, ModuleType] = {}
    for dotted in names:
        module = importlib.import_module(dotted)
        name = _method_name(module)
        if name in methods:
            raise TypeError(f"method name {name!r} registered twice ({methods[name].__name__}, {dotted})")
        methods[name] = module
    return methods


METHODS: dict[str, ModuleType] = _load(_METHOD_MODULES)
"""``{method name: module}``; every module has ``Config`` and ``run(ctx, cfg) -> MethodResult``."""


def method_config_classes() -> tuple[type[BaseModel], ...]:
    """The config classes of every registered method, in registry order (each has a ``name`` literal)."""
    return tuple(m.Config for m in METHODS.values())


def method_config_types() -> Any:
    """``Union[<every registered Config>]`` (``.__args__`` is :func:`method_config_classes`); a run config's method
    field is ``Annotated[method_config_types(), Field(discriminator="name")]`` (:func:`method_config_union`)."""
    return Union[method_config_classes()]  # noqa: UP007


def method_config_union() -> Any:
    """``Annotated[Union[<every Config>], Field(discriminator="name")]``: the type of a run config's method field."""
    return Annotated[method_config_types(), Field(discriminator="name")]


def get_method(name: str) -> ModuleType:
    """The method module registered as ``name`` (has ``Config`` and ``run``).

    Raises:
        PrunekitError: unknown method name (the message lists the registered ones).
    """
    try:
        return METHODS[name]
    except KeyError:
        raise PrunekitError(f"unknown method {name!r}: choose one of {', '.join(METHODS)}") from None


def parse_method_config(data: dict[str, Any] | BaseModel) -> BaseModel:
    """Validate a method config mapping (``{"name": ..., options}``) into its method's ``Config``.

    Raises:
        PrunekitError: missing/unknown ``name``, or an unknown or invalid option (one line naming the field, e.g.
            ``invalid method config: invalid value for 'magnitude.steps': ...``).
    """
    if isinstance(data, BaseModel):
        return data
    if not isinstance(data, dict) or "name" not in data:
        raise PrunekitError(f"method config needs a name: one of {', '.join(METHODS)}")
    module = get_method(str(data["name"]))
    try:
        return TypeAdapter(module.Config).validate_python(data)
    except ValidationError as exc:
        raise PrunekitError(validation_message(exc, what="method config", prefix=str(data["name"]))) from None
