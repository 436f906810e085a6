"""Lenient reading of a report given as a plain mapping, and conversion to plain / strict-JSON values (internal).

The renderers (markdown, plots, training warnings) read the report through these helpers, so a missing key, a
``None`` or a value of the wrong type reads as "missing" and never raises.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from prunekit.report.format import _num


def _get(d: Any, *keys: str) -> Any:
    """Nested lookup that returns None instead of raising on a missing key or a non-dict level."""
    for k in keys:
        if not isinstance(d, Mapping):
            return None
        d = d.get(k)
    return d


def _dict(d: Any) -> Mapping:
    return d if isinstance(d, Mapping) else {}


def _list(x: Any) -> list:
    return list(x) if isinstance(x, list | tuple) else []


def _as_mapping(report: Any) -> Mapping:
    """The report as a mapping: a :class:`~prunekit.report.schema.Report` is dumped (``None`` for every unset
    field, which every renderer reads as missing), a mapping is used as is, anything else reads as empty."""
    if isinstance(report, BaseModel):
        return report.model_dump()
    return _dict(report)


def _plain(x: Any) -> Any:
    """A copy with numpy scalars/arrays and tensors as Python values, paths as strings, tuples as lists.

    Non-finite floats are kept (:func:`_jsonable` turns them into None for ``report.json``).
    """
    if isinstance(x, BaseModel):
        return x
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if x is None or isinstance(x, bool | str | int | float):
        return x
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "tolist"):  # numpy scalar or array, torch tensor
        return _plain(x.tolist())
    return x


def _jsonable(x: Any) -> Any:
    """A strictly valid JSON copy: numpy scalars/arrays -> Python, paths -> str, NaN/inf -> None, pydantic models
    -> their set fields."""
    if isinstance(x, BaseModel):
        return _jsonable(x.model_dump(exclude_unset=True))
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if x is None or isinstance(x, bool | str | int):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "tolist"):  # numpy scalar or array, torch tensor
        return _jsonable(x.tolist())
    return str(x)


# ---------------------------------------------------------------------------------------------- report fields


def _method_name(report: Mapping) -> str | None:
    m = report.get("method")
    if isinstance(m, str):
        return m
    return _get(m, "name")


def _extra_points(report: Mapping) -> list[dict]:
    """``report["extra"]["points"]`` entries that are dicts (each ``{label, macs, top1, latency_ms}``)."""
    return [p for p in _list(_get(report, "extra", "points")) if isinstance(p, Mapping)]


def _epoch_phases(report: Mapping) -> list[tuple[str, list[dict]]]:
    """History phases whose rows carry an ``epoch`` and something to plot (val top-1 or train loss)."""
    out = []
    for phase, rows in _dict(report.get("history")).items():
        rows = [r for r in _list(rows) if isinstance(r, Mapping) and _num(r.get("epoch")) is not None]
        if any(_num(r.get("val_top1")) is not None or _num(r.get("train_loss")) is not None for r in rows):
            out.append((str(phase), rows))
    return out


def _batch_n(report: Mapping) -> Any:
    return _get(report, "pruned", "latency_batch") or _get(report, "baseline", "latency_batch")


def _target_macs(report: Mapping) -> tuple[float | None, float | None]:
    """The MACs target ``(macs, ratio of baseline)``, each derived from the other when only one is given."""
    base_macs = _num(_get(report, "baseline", "macs"))
    ratio = _num(_get(report, "target", "macs_ratio"))
    want = _num(_get(report, "target", "macs"))
    if want is None and ratio is not None and base_macs is not None:
        want = ratio * base_macs
    if ratio is None and want is not None and base_macs:
        ratio = want / base_macs
    return want, ratio


def _met(asked: Any, achieved: Any) -> bool | None:
    """``achieved <= asked`` (relative tolerance 1e-9), or None unless both are finite numbers."""
    a, b = _num(asked), _num(achieved)
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
        return None
    return b <= a * (1.0 + 1e-9)


def grouped_layers(report: Any) -> list[tuple[str, int]]:
    """``(layer, conv groups)`` of every layer row with ``conv_groups > 1`` (empty for a plan without group
    convs)."""
    rows = _as_mapping(report).get("layers")
    out = []
    for row in rows or []:
        if isinstance(row, Mapping):
            g = row.get("conv_groups")
            if isinstance(g, int | float) and not isinstance(g, bool) and g > 1:
                out.append((str(row.get("name")), int(g)))
    return out
