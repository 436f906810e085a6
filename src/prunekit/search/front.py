"""Choosing a member of a Pareto front by a latency budget (JCW's deployed and ``method.train`` members, the
``plan`` method's ``pick``).

A front member is a row ``{"predicted_ms", "proxy_loss", ...}`` (:mod:`prunekit.methods.jcw.front`), optionally
with ``measured_ratio``: its latency measured in the table's runtime beside the unpruned model, as the run's
final check measures it. Within a budget the member with the lowest proxy loss wins (the seed picks its training
configurations from the front the same way, ``seed-methods.md`` §1.6).

A latency **ratio** budget reads the measured ratio when the member has one and the predicted ratio
(``predicted_ms / full_ms``, both from the table) otherwise: the prediction steers the search, the measurement
decides what is deployed, so a member the table puts just inside the budget but the runtime runs just outside it is
not chosen (the MobileNetV2 JCW preset, 2026-12-04: predicted 0.64, measured 0.704 of the unpruned latency for a
0.70 target). An absolute ``latency_ms`` budget reads the predicted ms (the table's batch and threads; the
measurement's absolute ms move with the machine's load, its ratio much less).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["best_within", "latency_ratio", "ratio_source", "within"]

_TOL = 1 + 1e-9


def latency_ratio(row: Mapping[str, Any], full_ms: float) -> float:
    """The member's latency as a fraction of the unpruned model's: ``measured_ratio`` if measured, else
    ``predicted_ms / full_ms`` (``full_ms``: the unpruned model's predicted ms)."""
    measured = row.get("measured_ratio")
    return float(measured) if measured is not None else float(row["predicted_ms"]) / full_ms


def ratio_source(rows: Sequence[Mapping[str, Any]]) -> str:
    """``"measured"`` when every row carries a ``measured_ratio`` (a timed front), else ``"predicted"``: the scale
    :func:`latency_ratio` reads, for messages."""
    return "measured" if rows and all(r.get("measured_ratio") is not None for r in rows) else "predicted"


def within(
    row: Mapping[str, Any], *, full_ms: float, ratio: float | None = None, limit_ms: float | None = None
) -> bool:
    """Whether ``row`` meets a latency ``ratio`` (of the unpruned model, :func:`latency_ratio`) and / or an
    absolute ``limit_ms`` (predicted ms); both ``None`` is no latency constraint."""
    if ratio is not None and latency_ratio(row, full_ms) > ratio * _TOL:
        return False
    return limit_ms is None or float(row["predicted_ms"]) <= limit_ms * _TOL


def best_within(
    rows: Sequence[Mapping[str, Any]],
    *,
    full_ms: float,
    ratio: float | None = None,
    limit_ms: float | None = None,
) -> int | None:
    """Index of the row with the lowest ``proxy_loss`` that meets the budget (:func:`within`), or ``None``."""
    ok = [i for i, r in enumerate(rows) if within(r, full_ms=full_ms, ratio=ratio, limit_ms=limit_ms)]
    return min(ok, key=lambda i: rows[i]["proxy_loss"]) if ok else None
