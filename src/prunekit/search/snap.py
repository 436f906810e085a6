"""``round_to: lut``: the latency table, not a rule, decides whether a kept channel count is rounded up.

A rounding rule (``round_to: 8``) rounds every count to the runtime's channel block because a count off the block
is *often* no cheaper (ONNX Runtime pads blocked convs to the block) or even slower (a count off every multiple of 4
runs ONNX Runtime's unblocked kernels with reorders around them; BENCHMARKS.md, "ONNX Runtime's layout rule"). A
latency table (:mod:`prunekit.cost.lut`) knows, layer by layer, which is the case. :func:`snap_to_table` takes the
widths a method chose without rounding and gives each group the channels its next block boundary offers for free:
the largest count in ``[w, ceil(w / unit) * unit]`` whose predicted latency is not above that of ``w``, as long as
the budget still holds. So it never keeps fewer channels than the method chose, never predicts a slower model and
never leaves the budget; where the table says a block boundary costs extra (torch eager, or a layer whose
unaligned count is cheap), the count stays as the method chose it.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from prunekit.cost.budget import Budget
from prunekit.errors import PrunekitError
from prunekit.space import ChannelSpace

__all__ = ["TIE", "require_table", "snap_to_table"]

TIE = 1e-3
"""Predictions within this fraction of the model's predicted latency count as equal (interpolation in the
table's traffic features moves by a few microseconds between counts that pad to the same block)."""


def require_table(budget: Budget, who: str):
    """The budget's latency predictor (a :class:`~prunekit.cost.predict.LatencyModel`) for ``round_to: lut``.

    Raises:
        PrunekitError: the budget has no latency table (one line: set ``target.latency_lut`` or another
            ``round_to``).
    """
    lm = budget.latency
    if lm is None or getattr(lm, "source", None) != "predicted" or not hasattr(lm, "batch"):
        raise PrunekitError(
            f"{who}: round_to: lut lets a latency table choose the channel counts, and the run has none: set "
            "target.latency_lut (build one with `prunekit lut build MODEL --out lut.json`) with target.latency_ratio "
            "or latency_ms, or use round_to: auto"
        )
    return lm


def snap_to_table(
    space: ChannelSpace,
    widths: np.ndarray,
    budget: Budget,
    *,
    cap: np.ndarray | None = None,
    frozen: Iterable[int] = (),
    who: str = "prunekit",
) -> tuple[np.ndarray, dict[str, tuple[int, int]]]:
    """Raise each group's count to the largest one up to its next block boundary that the table predicts no slower.

    Groups are visited in space order, each against the widths already snapped; per group the candidates
    ``w, w + 1, ..., min(ceil(w / unit) * unit, cap)`` (``unit``: the table's channel unit) are predicted in one
    vectorised call, and the largest candidate with predicted ms ``<= ms(w) + TIE * ms(w)`` that keeps every
    constraint of ``budget`` (:meth:`Budget.feasible`) wins.

    Args:
        space: the channel space of ``widths``.
        widths: int ``[G]``, kept channels per group (the method's choice, unrounded).
        budget: the run's budget; its latency function must be a table predictor (:func:`require_table`).
        cap: int ``[G]``, the most channels a group may keep (alive channels of an iterative method); default the
            group's channels.
        frozen: group indices left as they are (protected groups).
        who: the method named in errors.

    Returns:
        ``(widths [G], changed)``: the snapped widths and ``{group name: (before, after)}`` for every group that
        changed.

    Raises:
        PrunekitError: the budget has no latency table.
    """
    lm = require_table(budget, who)
    unit = max(1, int(lm.table.unit))
    out = np.asarray(widths, dtype=np.int64).copy()
    top = np.asarray(space.channels if cap is None else cap, dtype=np.int64)
    frozen = set(frozen)
    changed: dict[str, tuple[int, int]] = {}
    for i, g in enumerate(space.groups):
        w = int(out[i])
        hi = min(int(top[i]), -(-w // unit) * unit)
        if i in frozen or hi <= w:
            continue
        cands = np.repeat(out[None, :], hi - w + 1, axis=0)
        cands[:, i] = np.arange(w, hi + 1)
        ms = lm.batch(cands)
        ok = (ms <= ms[0] * (1.0 + TIE)) & budget.feasible(cands)
        best = int(np.flatnonzero(ok)[-1]) if ok.any() else 0
        if best:
            out[i] = w + best
            changed[g.name] = (w, w + best)
    return out, changed
