"""Functions from the user's own Python files, named ``path/to/file.py:name``: model factories (``model:``) and
data factories (``data.factory``).

Every failure is one :class:`~prunekit.errors.PrunekitError` line naming the file and the fix: the file is missing
or not Python, importing it raises, or it has no callable of that name (the message lists the ones it has).
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prunekit.errors import PrunekitError

__all__ = ["load_file_callable", "one_line", "split_file_ref"]


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``TypeName: message`` of ``exc`` on one line, cut to ``limit`` characters."""
    detail = " ".join(str(exc).split())
    if len(detail) > limit:
        detail = detail[: limit - 3] + "..."
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def split_file_ref(text: str) -> tuple[str, str] | None:
    """``("path/to/file.py", "name")`` of ``"path/to/file.py:name"``; None when ``text`` does not have that form
    (no ``:``, or an empty path or name)."""
    path, sep, name = text.rpartition(":")
    path, name = path.strip(), name.strip()
    if not sep or not path or not name:
        return None
    return path, name


def load_file_callable(
    path_text: str,
    name: str,
    *,
    what: str = "model file",
    module_prefix: str = "prunekit_user_model_",
    on_import_error: Callable[[str, Exception], PrunekitError | None] | None = None,
) -> Callable[..., Any]:
    """Import the Python file ``path_text`` (relative paths start at the working directory) and return its
    callable ``name``.

    The file is imported as module ``<module_prefix><hash of its resolved path>`` (registered in ``sys.modules``,
    so pickling and dataclasses inside it work); a failed import leaves nothing registered.

    Args:
        path_text: the file, as the user wrote it (quoted in the messages).
        name: the callable to return (a function or a class).
        what: what the file is, for the messages (``"model file"``, ``"data factory file"``).
        module_prefix: the start of the module name the file is imported under.
        on_import_error: ``(path_text, exc) -> PrunekitError | None``: a more specific message for an exception
            raised while importing the file (e.g. a download attempt); None falls back to the generic one.

    Raises:
        PrunekitError: the file is missing or not importable, importing it raised, or ``name`` is not a callable
            in it.
    """
    path = Path(path_text).expanduser()
    if not path.is_file():
        where = f" (looked in {Path.cwd()})" if not path.is_absolute() else ""
        raise PrunekitError(
            f"{what} {path_text!r} not found{where}: check the path in path/to/file.py:factory"
        )
    resolved = path.resolve()
    mod_name = module_prefix + hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    mod_spec = importlib.util.spec_from_file_location(mod_name, resolved)
    if mod_spec is None or mod_spec.loader is None:
        raise PrunekitError(f"cannot import {what} {path_text!r}: give a Python (.py) file")
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[mod_name] = module
    try:
        mod_spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's code may raise anything
        sys.modules.pop(mod_name, None)
        if isinstance(exc, PrunekitError):
            raise
        specific = on_import_error(path_text, exc) if on_import_error is not None else None
        if specific is not None:
            raise specific from exc
        detail = " ".join(str(exc).split())
        raise PrunekitError(
            f"importing {what} {path_text!r} failed with {type(exc).__name__}: {detail}; fix the file"
        ) from exc
    factory = getattr(module, name, None)
    if factory is None or not callable(factory):
        funcs = sorted(
            n
            for n, v in vars(module).items()
            if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == mod_name
        )
        listed = ", ".join(funcs) if funcs else "none"
        raise PrunekitError(
            f"factory {name!r} not found in {what} {path_text!r}: "
            f"define it or use one of its functions/classes ({listed})"
        )
    return factory
