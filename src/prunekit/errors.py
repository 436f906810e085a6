"""User-facing errors.

Any :class:`PrunekitError` raised anywhere is printed by the CLI as one line (no traceback) and the process
exits with code 2. Its message must name the problem and the fix, e.g.
``unknown model 'resnet21': choose one of resnet20, resnet32, ... or give path/to/file.py:factory``.
:func:`validation_message` turns a pydantic ``ValidationError`` into such a line.

This module sits at the bottom of the import graph: it imports no other prunekit module (and pydantic only for
type checking).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class PrunekitError(Exception):
    """A problem with the user's input (config, model spec, data, checkpoint), reported in one line."""

    exit_code = 2


_VALUE_PREFIXES = ("Value error, ", "Assertion failed, ")


def validation_message(
    exc: ValidationError,
    *,
    what: str,
    drop: Collection[str] = (),
    prefix: str = "",
    reference: str | None = "the config reference in README.md",
    every: bool = False,
) -> str:
    """One line describing the first error of a pydantic ``ValidationError``, for a :class:`PrunekitError`.

    The message is ``invalid <what>: <problem>``, where the problem is one of ``unknown key 'a.b' (check the
    spelling; see <reference>)``, ``missing required key 'a.b'``, ``invalid value for 'a.name': expected one of
    'x', 'y' (got 'z')`` (a discriminated-union tag) or ``invalid value for 'a.b': <pydantic's reason> (got
    <input>)``. Locations are dotted (list indices as ``[i]``).

    Args:
        exc: the validation error; its first error is reported (every error with ``every``).
        what: the thing that was validated, e.g. ``"config"`` or ``"plan"``.
        drop: location parts to leave out, e.g. the discriminator tags pydantic inserts for the members of a
            tagged union (``method.magnitude.steps`` -> ``method.steps``).
        prefix: a dotted location prepended to every location (where the validated mapping sits in its document).
        reference: where the valid keys are documented, named in the unknown-key hint; ``None``: no pointer.
        every: report every error, joined by ``; `` (still one line), instead of the first one.

    Returns:
        The message: one line, no trailing newline (this function itself raises nothing).
    """
    errors = exc.errors()
    if not errors:  # pragma: no cover - pydantic never raises an empty ValidationError
        return f"invalid {what}: {exc}"
    shown = errors if every else errors[:1]
    problems = "; ".join(_problem(err, drop=drop, prefix=prefix, reference=reference) for err in shown)
    return " ".join(f"invalid {what}: {problems}".split())  # one line, whatever the messages contain


def _problem(err: dict, *, drop: Collection[str], prefix: str, reference: str | None) -> str:
    """The problem of one pydantic error dict, as described in :func:`validation_message`."""
    loc = "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}"
        for part in (*((prefix,) if prefix else ()), *err["loc"])
        if isinstance(part, int) or part not in drop
    ).lstrip(".")
    kind, msg, ctx = err["type"], err["msg"], err.get("ctx") or {}
    for p in _VALUE_PREFIXES:
        msg = msg.removeprefix(p)
    if kind == "extra_forbidden":
        hint = "check the spelling" + (f"; see {reference}" if reference else "")
        return f"unknown key {loc!r} ({hint})"
    if kind == "missing":
        return f"missing required key {loc!r}"
    if kind in ("union_tag_not_found", "union_tag_invalid"):
        key = _join(loc, str(ctx.get("discriminator", "")).strip("'"))
        if kind == "union_tag_not_found":
            return f"missing required key {key!r}"
        return (
            f"invalid value for {key!r}: expected one of {ctx.get('expected_tags')} (got {ctx.get('tag')!r})"
        )
    where = f"invalid value for {loc!r}: " if loc else ""
    return f"{where}{msg} (got {_short(err.get('input'))})"


def _join(loc: str, key: str) -> str:
    return f"{loc}.{key}" if loc and key else loc or key


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
