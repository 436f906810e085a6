"""Model registry: resolve a model spec string to an ``nn.Module``.

Spec grammar (whitespace around names, keys and values is ignored)::

    NAME[:key=value,key=value,...]                 builtin model, e.g. resnet20:num_classes=10,in_chans=1
    timm:NAME[:key=value,...]                      timm.create_model(NAME, **options)
    torchvision:NAME[:key=value,...]               torchvision.models.get_model(NAME, **options)
    path/to/file.py:factory[:key=value,...]        factory(**options) from a user's Python file

Values parse as ``int``, then ``float``, then ``bool`` (``true``/``false``, any case), then ``None``
(``None``/``null``, any case), else ``str``; e.g.
``torchvision:lraspp_mobilenet_v3_large:weights=None,weights_backbone=None`` or ``timm:resnet18:pretrained=false``.
For builtin and file models the value is then checked against the factory's signature (annotation, else the type
of the default): an ``int`` is accepted where a ``float`` is expected; ``None`` where the annotation is Optional
(``X | None``), the default is ``None`` or the option has no annotation; a ``str`` option keeps the text as
written; anything else that does not match is an error. Every problem with a spec raises
:class:`prunekit.errors.PrunekitError` with a one-line message naming the problem and the fix.

:meth:`ModelSpec.to_string` gives a canonical spec (options sorted by key, values in canonical form: ``true``,
``false``, ``None``, ``repr`` of floats) so that ``parse_spec(spec.to_string()) == spec``; save it beside a
pruning plan and rebuild the model with :func:`create_model`.

Any exception raised while the model is built (inside a builtin, file, timm or torchvision factory) becomes one
:class:`~prunekit.errors.PrunekitError` line naming the spec and the problem; a download attempt (prunekit never
downloads at run time) says which option to pass instead, e.g. ``weights=None,weights_backbone=None`` for
torchvision or ``pretrained=false`` for timm, with local weights loaded through ``baseline.checkpoint``.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import math
import re
import socket
import sys
import types
import typing
import urllib.error
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from prunekit.errors import PrunekitError
from prunekit.userfile import load_file_callable, one_line

__all__ = [
    "ModelSpec",
    "create_model",
    "list_models",
    "model_options",
    "parse_spec",
    "register_model",
]

SOURCES = ("builtin", "timm", "torchvision", "file")

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_BUILTIN_MODULES = (
    "prunekit.models.cifar_resnet",
    "prunekit.models.vgg",
    "prunekit.models.mobilenet",
    "prunekit.models.resnet",
    "prunekit.models.preresnet",
)

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FILE_RE = re.compile(r"^(?P<path>.+?\.py)(?::(?P<factory>[^:]*))?(?::(?P<opts>.*))?$", re.DOTALL)
_NONE_WORDS = ("none", "null")
_INSTALL_HINT = "pip install -c constraints.txt timm torchvision (versions built for your torch)"


# --------------------------------------------------------------------------------------------------- registry
def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``factory`` as builtin model ``name`` (usable as a spec ``NAME[:k=v,...]``).

    The factory's keyword parameters are the model's options; annotate them (``int``, ``float``, ``bool``,
    ``str``) so spec values are type-checked. Returns the factory unchanged.

    Raises:
        PrunekitError: ``name`` is not a valid identifier-like name, is reserved (``timm``, ``torchvision``)
            or is already registered.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name) or name.endswith(".py"):
        raise PrunekitError(
            f"invalid model name {name!r}: use letters, digits, '_', '-', '.' and start with a letter"
        )
    if name in ("timm", "torchvision"):
        raise PrunekitError(
            f"model name {name!r} is reserved for the {name}: spec prefix; choose another name"
        )

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise PrunekitError(f"model {name!r} is already registered; register yours under another name")
        _REGISTRY[name] = factory
        return factory

    return decorator


def _ensure_builtins() -> None:
    for mod in _BUILTIN_MODULES:
        if mod not in sys.modules:
            importlib.import_module(mod)


def list_models() -> list[str]:
    """Sorted names of the registered builtin models (those usable as ``NAME[:k=v,...]`` specs)."""
    _ensure_builtins()
    return sorted(_REGISTRY)


def _unknown_model_message(name: str) -> str:
    known = list_models()
    close = difflib.get_close_matches(name, known, n=2)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    return (
        f"unknown model {name!r}{hint}: choose one of {', '.join(known)}, "
        "or give timm:NAME, torchvision:NAME or path/to/file.py:factory"
    )


def _get_builtin(name: str) -> Callable[..., nn.Module]:
    _ensure_builtins()
    if name not in _REGISTRY:
        raise PrunekitError(_unknown_model_message(name))
    return _REGISTRY[name]


def model_options(name: str) -> dict[str, Any]:
    """Accepted options of builtin model ``name`` mapped to their defaults.

    A required option (none of the builtins has one) maps to ``inspect.Parameter.empty``.

    Raises:
        PrunekitError: unknown model name.
    """
    params = _options_of(_get_builtin(name))
    return {} if params is None else {k: p.default for k, p in params.items()}


# ------------------------------------------------------------------------------------------- value handling
def _infer_value(raw: str) -> Any:
    """Parse a spec value: int, then float, then bool (true/false), then None (None/null), else the string."""
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        return float(raw)
    except ValueError:
        pass
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in _NONE_WORDS:
        return None
    return raw


def _format_value(value: Any) -> str:
    """Canonical text of a spec value; ``_infer_value(_format_value(v)) == v`` for every accepted value."""
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # always re-parses as a float ("1.0", "1e-05", "inf")
    if isinstance(value, str):
        return value
    raise PrunekitError(
        f"option value {value!r} of type {type(value).__name__} cannot be written in a model spec: "
        "use an int, float, bool, None or string"
    )


def _check_string_value(key: str, value: str) -> None:
    if value == "" or any(c in value for c in ",:=") or value != value.strip():
        raise PrunekitError(
            f"option {key}={value!r} cannot be written in a model spec: strings must be non-empty and "
            "contain no ',', ':', '=' or surrounding spaces"
        )


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(model: str, key: str, raw: str, annotation: Any, default: Any) -> Any:
    """Convert ``raw`` to the type the factory parameter expects, or raise a PrunekitError."""
    expected: tuple[Any, ...]
    # None is accepted where the annotation allows it, the default is None, or there is no annotation (the type
    # of a default is only a guess: ``weights="DEFAULT"`` may well take None)
    optional = default is None or annotation is inspect.Parameter.empty
    if annotation is not inspect.Parameter.empty and annotation is not Any:
        origin = typing.get_origin(annotation)
        if origin is typing.Union or origin is types.UnionType:
            args = typing.get_args(annotation)
            optional = optional or type(None) in args
            expected = tuple(a for a in args if a is not type(None))
        elif annotation is None or annotation is type(None):
            optional, expected = True, ()
        else:
            expected = (annotation,)
    elif default is not inspect.Parameter.empty and default is not None:
        expected = (type(default),)
    else:
        expected = ()
    simple = [t for t in expected if t in (int, float, bool, str)]
    if not simple:  # unknown / exotic annotation: accept the inferred value as is
        return _infer_value(raw)
    inferred = _infer_value(raw)
    if inferred is None and optional:
        return None
    for tp in simple:
        if tp is bool and isinstance(inferred, bool):
            return inferred
        if tp is int and isinstance(inferred, int) and not isinstance(inferred, bool):
            return inferred
        if tp is float and isinstance(inferred, (int, float)) and not isinstance(inferred, bool):
            return float(inferred)
    if str in simple:
        return raw
    want = " or ".join([_type_name(t) for t in simple] + (["None"] if optional else []))
    example = {int: "10", float: "0.5", bool: "true", str: "text"}[simple[0]]
    raise PrunekitError(
        f"option {key}={raw!r} of model {model} has the wrong type: expected {want}, e.g. {key}={example}"
    )


def _options_of(factory: Callable[..., Any]) -> dict[str, inspect.Parameter] | None:
    """Keyword-passable parameters of ``factory`` (None if it takes ``**kwargs``, i.e. accepts anything)."""
    try:
        sig = inspect.signature(factory, eval_str=True)
    except (TypeError, ValueError, NameError):
        return None
    params: dict[str, inspect.Parameter] = {}
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            params[p.name] = p
    return params


def _validate_kwargs(
    model: str, factory: Callable[..., Any], raw_kwargs: Mapping[str, str], *, what: str = "model"
) -> dict[str, Any]:
    """Check option names against ``factory``'s signature and convert the raw values to the expected types."""
    params = _options_of(factory)
    if params is None:
        return {k: _infer_value(v) for k, v in raw_kwargs.items()}
    out: dict[str, Any] = {}
    for key, raw in raw_kwargs.items():
        if key not in params:
            accepted = ", ".join(params) or "none"
            close = difflib.get_close_matches(key, list(params), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise PrunekitError(
                f"unknown option {key!r}{hint} for {what} {model}: accepted options are {accepted}"
            )
        p = params[key]
        out[key] = _coerce(model, key, raw, p.annotation, p.default)
    return out


# ---------------------------------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec.

    Attributes:
        source: ``"builtin"``, ``"timm"``, ``"torchvision"`` or ``"file"``.
        name: the model name (builtin / timm / torchvision) or the factory function name (file).
        kwargs: options passed to the factory, already converted to int/float/bool/None/str.
        path: the Python file holding the factory (``source == "file"`` only, as written in the spec).
    """

    source: str
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise PrunekitError(f"unknown model source {self.source!r}: use one of {', '.join(SOURCES)}")
        if (self.source == "file") != (self.path is not None):
            raise PrunekitError("a model spec has a path exactly when its source is 'file'")
        object.__setattr__(self, "kwargs", dict(sorted(dict(self.kwargs).items())))

    def __hash__(self) -> int:
        return hash(self.to_string())

    def to_string(self) -> str:
        """Canonical spec string; ``parse_spec(spec.to_string()) == spec``.

        Raises:
            PrunekitError: an option value cannot be written in a spec (not int/float/bool/None/str, or a
                string containing ``,``, ``:`` or ``=``).
        """
        parts = []
        for key, value in self.kwargs.items():
            text = _format_value(value)
            if isinstance(value, str):
                _check_string_value(key, value)
            parts.append(f"{key}={text}")
        head = {
            "builtin": self.name,
            "timm": f"timm:{self.name}",
            "torchvision": f"torchvision:{self.name}",
            "file": f"{self.path}:{self.name}",
        }[self.source]
        return head + (":" + ",".join(parts) if parts else "")

    def with_options(self, **kwargs: Any) -> ModelSpec:
        """A copy with ``kwargs`` added to / replacing the options (validated again for builtins).

        E.g. ``parse_spec("resnet20").with_options(num_classes=100).to_string() ==
        "resnet20:num_classes=100"``.

        Raises:
            PrunekitError: unknown option or wrong value type (builtin models).
        """
        merged = {**self.kwargs, **kwargs}
        if self.source == "builtin":
            factory = _get_builtin(self.name)
            merged = _validate_kwargs(self.name, factory, {k: _format_value(v) for k, v in merged.items()})
        return ModelSpec(self.source, self.name, merged, self.path)

    def __str__(self) -> str:
        return self.to_string()


def _parse_options(spec: str, text: str | None) -> dict[str, str]:
    """Split ``k=v,k=v`` into raw (unparsed) values."""
    if text is None:
        return {}
    if not text.strip():
        raise PrunekitError(
            f"model spec {spec!r} ends in ':' with no options: drop the ':' or add key=value options, "
            "e.g. resnet20:num_classes=10"
        )
    out: dict[str, str] = {}
    for item in text.split(","):
        if "=" not in item:
            raise PrunekitError(
                f"bad option {item.strip()!r} in model spec {spec!r}: write options as key=value "
                "separated by commas, e.g. resnet20:num_classes=10,in_chans=1"
            )
        key, _, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not _KEY_RE.match(key):
            raise PrunekitError(
                f"bad option name {key!r} in model spec {spec!r}: option names are Python identifiers, "
                "e.g. num_classes=10"
            )
        if value == "":
            raise PrunekitError(f"option {key!r} in model spec {spec!r} has no value: write {key}=VALUE")
        if key in out:
            raise PrunekitError(f"option {key!r} is given twice in model spec {spec!r}: keep one")
        out[key] = value
    return out


def parse_spec(spec: str) -> ModelSpec:
    """Parse a model spec string (grammar in the module docstring) into a :class:`ModelSpec`.

    Builtin specs are fully validated here (model name, option names, value types); file, timm and
    torchvision specs are validated when the model is created.

    Raises:
        PrunekitError: empty spec, unknown builtin model (lists the known ones), bad ``key=value`` syntax,
            unknown option (lists the accepted ones), value of the wrong type, file spec without a factory.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise PrunekitError(
            "empty model spec: give a model name such as resnet20, timm:NAME, torchvision:NAME "
            "or path/to/file.py:factory"
        )
    spec = spec.strip()
    for source in ("timm", "torchvision"):
        if spec.startswith(source + ":"):
            rest = spec[len(source) + 1 :]
            hub = re.match(r"^\s*(hf[-_]hub:[^:]+)", rest)  # timm:hf-hub:org/repo keeps its colon
            if hub:
                name, sep, opts = hub.group(1), ":" if rest[hub.end() :] else "", rest[hub.end() + 1 :]
            else:
                name, sep, opts = rest.partition(":")
            name = name.strip()
            if not name:
                raise PrunekitError(
                    f"model spec {spec!r} names no model: write {source}:NAME[:key=value,...]"
                )
            raw = _parse_options(spec, opts if sep else None)
            return ModelSpec(source, name, {k: _infer_value(v) for k, v in raw.items()})

    m = _FILE_RE.match(spec)
    if m:
        path, factory, opts = m.group("path").strip(), m.group("factory"), m.group("opts")
        if factory is None or not factory.strip():
            raise PrunekitError(
                f"model spec {spec!r} names a file but no factory: write {path}:FACTORY[:key=value,...] "
                "where FACTORY is a function in the file returning an nn.Module"
            )
        factory = factory.strip()
        if not factory.isidentifier():
            raise PrunekitError(
                f"bad factory name {factory!r} in model spec {spec!r}: give a function name, "
                f"e.g. {path}:build_model"
            )
        raw = _parse_options(spec, opts)
        return ModelSpec("file", factory, {k: _infer_value(v) for k, v in raw.items()}, path=path)

    name, sep, opts = spec.partition(":")
    name = name.strip()
    factory_fn = _get_builtin(name)
    raw = _parse_options(spec, opts if sep else None)
    return ModelSpec("builtin", name, _validate_kwargs(name, factory_fn, raw))


# -------------------------------------------------------------------------------------------- construction
# a failed fetch: urllib (URLError, HTTPError), sockets, http.client, ssl, requests / huggingface_hub / httpx
_NETWORK_ERRORS = (urllib.error.URLError, ConnectionError, TimeoutError, socket.gaierror, socket.herror)
_NETWORK_MODULES = ("huggingface_hub", "requests", "urllib3", "httpx", "http", "ssl")
_NETWORK_WORDS = re.compile(
    r"download|\burls?\b|https?://|\bhub\b|hf[-_]hub|huggingface|internet|offline|\bconnect(ion)?\b|"
    r"name resolution",
    re.IGNORECASE,
)
_DOWNLOAD_ADVICE = {
    "torchvision": "pass weights=None,weights_backbone=None in the spec, e.g. torchvision:{name}:weights=None,"
    "weights_backbone=None",
    "timm": "pass pretrained=false in the spec, e.g. timm:{name}:pretrained=false (a timm:hf-hub: name always "
    "downloads: name the architecture instead)",
    "builtin": "build the model without pretrained weights",
    "file": "make the factory build the model without downloading (torchvision: weights=None,"
    "weights_backbone=None; timm: pretrained=False), e.g. by passing those options in the spec",
}


def _is_download_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) looks like a failed network fetch."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen and len(seen) < 20:
        seen.add(id(cur))
        if isinstance(cur, _NETWORK_ERRORS):
            return True
        if any(c.__module__.split(".")[0] in _NETWORK_MODULES for c in type(cur).__mro__):
            return True
        if isinstance(cur, (RuntimeError, OSError)) and _NETWORK_WORDS.search(str(cur)):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _spec_label(ms: ModelSpec) -> str:
    try:
        return ms.to_string()
    except PrunekitError:
        return {"builtin": ms.name, "file": f"{ms.path}:{ms.name}"}.get(ms.source, f"{ms.source}:{ms.name}")


def _build_failure(ms: ModelSpec, exc: Exception) -> PrunekitError:
    """One-line PrunekitError for an exception raised while the model of ``ms`` was being built."""
    label = _spec_label(ms)
    if _is_download_error(exc):
        advice = _DOWNLOAD_ADVICE[ms.source].format(name=ms.name)
        return PrunekitError(
            f"building model {label} tried to download weights ({one_line(exc, 200)}): prunekit never downloads "
            f"at run time; {advice}, and load local weights with baseline.checkpoint"
        )
    return PrunekitError(
        f"building model {label} failed with {one_line(exc)}: fix the options in the spec or the factory"
    )


def _download_hint(path_text: str, exc: Exception) -> PrunekitError | None:
    if not _is_download_error(exc):
        return None
    return PrunekitError(
        f"importing model file {path_text!r} tried to download ({one_line(exc, 200)}): prunekit never "
        f"downloads at run time; {_DOWNLOAD_ADVICE['file']}, and load local weights with baseline.checkpoint"
    )


def _load_file_factory(path_text: str, factory_name: str) -> Callable[..., nn.Module]:
    return load_file_callable(path_text, factory_name, on_import_error=_download_hint)


def _import_optional(package: str) -> Any:
    try:
        return importlib.import_module(package)
    except Exception as exc:  # noqa: BLE001 - ImportError, or RuntimeError/OSError from a torch mismatch
        detail = " ".join(str(exc).split())[:200]
        raise PrunekitError(
            f"{package} models need {package}, which does not import here ({type(exc).__name__}: {detail}): "
            f"{_INSTALL_HINT}"
        ) from exc


def _create_timm(ms: ModelSpec, kwargs: dict[str, Any]) -> nn.Module:
    name = ms.name
    timm = _import_optional("timm")
    _import_optional("torchvision")
    try:
        return timm.create_model(name, **kwargs)
    except PrunekitError:
        raise
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise PrunekitError(
                f"unknown timm model {name!r}: list the known ones with timm.list_models('*{name}*')"
            ) from exc
        raise _build_failure(ms, exc) from exc
    except TypeError as exc:
        raise PrunekitError(
            f"timm model {name} rejected its options ({' '.join(str(exc).split())}): "
            "check the option names in the timm docs"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - a download attempt, or anything else inside timm
        raise _build_failure(ms, exc) from exc


def _create_torchvision(ms: ModelSpec, kwargs: dict[str, Any]) -> nn.Module:
    name = ms.name
    tv = _import_optional("torchvision")
    in_chans = kwargs.pop("in_chans", None)
    if in_chans is not None and in_chans != 3:
        raise PrunekitError(
            f"torchvision models take 3 input channels, got in_chans={in_chans}: "
            f"use timm:{name}:in_chans={in_chans} or a builtin model (see prunekit.models.list_models())"
        )
    known = tv.models.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise PrunekitError(
            f"unknown torchvision model {name!r}{hint}: "
            "see torchvision.models.list_models() for the known ones"
        )
    try:
        return tv.models.get_model(name, **kwargs)
    except PrunekitError:
        raise
    except TypeError as exc:
        raise PrunekitError(
            f"torchvision model {name} rejected its options ({' '.join(str(exc).split())}): "
            "check the option names in the torchvision docs"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - a download attempt, a bad weights name, anything inside torchvision
        raise _build_failure(ms, exc) from exc


def _check_override(key: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise PrunekitError(f"{key} must be a positive integer, got {value!r}")


def create_model(
    spec: str | ModelSpec, *, num_classes: int | None = None, in_chans: int | None = None
) -> nn.Module:
    """Build the model named by ``spec`` (a spec string or a parsed :class:`ModelSpec`).

    ``num_classes`` / ``in_chans``, when given, override the spec's options of the same name. The returned
    module maps ``(N, in_chans, H, W)`` images to ``(N, num_classes)`` logits (builtins: any ``H, W >= 28``).
    The model is in training mode, on CPU, in float32.

    Raises:
        PrunekitError: any spec error of :func:`parse_spec`; file not found / not importable; factory not
            found in the file or not returning an ``nn.Module``; the factory does not accept an override;
            timm/torchvision not importable (with the install command) or unknown there; any exception raised
            while building the model (one line naming the spec; a download attempt says what to pass
            instead, e.g. ``weights=None,weights_backbone=None`` or ``pretrained=false``).
    """
    ms = spec if isinstance(spec, ModelSpec) else parse_spec(spec)
    _check_override("num_classes", num_classes)
    _check_override("in_chans", in_chans)
    kwargs: dict[str, Any] = dict(ms.kwargs)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_chans is not None:
        kwargs["in_chans"] = in_chans

    if ms.source == "timm":
        return _create_timm(ms, kwargs)
    if ms.source == "torchvision":
        return _create_torchvision(ms, kwargs)

    if ms.source == "builtin":
        factory = _get_builtin(ms.name)
        label, what = ms.name, "model"
    else:
        assert ms.path is not None
        factory = _load_file_factory(ms.path, ms.name)
        label, what = f"{ms.path}:{ms.name}", "factory"
    kwargs = _validate_kwargs(label, factory, {k: _format_value(v) for k, v in kwargs.items()}, what=what)
    try:
        model = factory(**kwargs)
    except PrunekitError:
        raise
    except Exception as exc:  # noqa: BLE001 - the factory may raise anything (KeyboardInterrupt passes)
        raise _build_failure(ms, exc) from exc
    if not isinstance(model, nn.Module):
        raise PrunekitError(
            f"model factory {label} returned {type(model).__name__}, not a torch.nn.Module: "
            "make it return the model"
        )
    return model


# ------------------------------------------------------------------------------- helpers for builtin models
def check_model_args(model: str, *, num_classes: int, in_chans: int, width_mult: float = 1.0) -> None:
    """Validate the options every builtin model shares.

    Raises:
        PrunekitError: ``num_classes`` or ``in_chans`` not a positive int, ``width_mult`` not a positive
            finite number.
    """
    for key, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PrunekitError(f"{model}: {key} must be a positive integer, got {value!r}")
    if (
        isinstance(width_mult, bool)
        or not isinstance(width_mult, (int, float))
        or not math.isfinite(width_mult)
        or width_mult <= 0
    ):
        raise PrunekitError(
            f"{model}: width_mult must be a positive number such as 0.5 or 1.0, got {width_mult!r}"
        )


def scale_width(channels: int, width_mult: float) -> int:
    """``round(channels * width_mult)``, at least 1 (the width rule of the CIFAR/ImageNet ResNets and VGG)."""
    return max(1, int(round(channels * width_mult)))


def init_weights(model: nn.Module, *, linear_std: float | None = None) -> None:
    """Kaiming-normal (fan_out, ReLU) conv weights, zero conv biases, BatchNorm weight 1 / bias 0.

    Linear layers get ``N(0, linear_std)`` weights and zero bias when ``linear_std`` is given, else keep
    PyTorch's default initialisation.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)
