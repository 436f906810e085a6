"""Checks on the report's per-epoch training history: :func:`training_warnings`, :func:`has_training_history`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from prunekit.report._data import _as_mapping, _epoch_phases, _get
from prunekit.report.format import _num

if TYPE_CHECKING:
    from prunekit.report.schema import Report


def training_warnings(report: Report | Mapping, *, rise: float = 0.05, above: float = 0.1) -> list[str]:
    """Signs of an unstable training recipe in the report's per-epoch history, one sentence each.

    A phase is flagged when an epoch's mean train loss (nats) is more than ``above`` (relative) over chance level
    ``ln(num_classes)`` (the loss of a uniform prediction, with or without label smoothing; a fresh network starts
    near it, so a short first epoch can average slightly above it without anything wrong), or rose by more than
    ``rise`` (relative) over the previous epoch's -- under a decaying LR either means the optimiser overshot.
    ``train_loss`` is the task loss alone (a method's extra term is logged apart). The run is not failed: the numbers
    are what they are; the warning says why they may be low.

    Args:
        report: a :class:`~prunekit.report.schema.Report` or the report dict (read leniently: never raises).

    Returns:
        one markdown sentence per flagged phase (empty when nothing is flagged or there is no per-epoch history).
    """
    report = _as_mapping(report)
    n_cls = _num(_get(report, "dataset", "num_classes"))
    chance = math.log(n_cls) if n_cls and n_cls > 1 else None
    out = []
    for phase, hist in _epoch_phases(report):
        notes = []
        prev = None
        for r in hist:
            loss, ep = _num(r.get("train_loss")), r.get("epoch")
            if loss is None or not math.isfinite(loss):
                continue
            if chance is not None and loss > chance * (1.0 + above):
                notes.append(
                    f"epoch {ep} train loss {loss:.3f} above chance level ln({n_cls:.0f}) = {chance:.3f}"
                )
            elif prev is not None and loss > prev * (1.0 + rise):
                notes.append(f"epoch {ep} train loss rose {prev:.3f} -> {loss:.3f}")
            prev = loss
        if notes:
            out.append(
                f"`{phase}`: {'; '.join(notes)}: the recipe looks unstable for this model "
                "(lower lr, add warmup_epochs or set grad_clip)"
            )
    return out


def has_training_history(report: Report | Mapping) -> bool:
    """True when some history phase has per-epoch rows, i.e. :func:`~prunekit.report.write_report` also writes
    ``training.png``. Never raises."""
    return bool(_epoch_phases(_as_mapping(report)))
