"""The end-of-run report every pruning run writes: ``report.json``, ``report.md``, ``tradeoff.png``, ``training.png``.

The report is a typed :class:`Report` (:mod:`prunekit.report.schema`); the pipeline's plain dict validates into
it with ``Report.model_validate(d)``. Every field is optional: a missing or ``None`` value renders as "–" and a
missing plot input leaves a note in the panel, so a run without latency, history or groups still gets a complete
report.

Writing (:func:`write_report`) validates, renders everything in memory first and only then writes, each file
atomically (:func:`prunekit.io.atomic_path`); ``report.json`` is written last, so its presence means the whole
report is complete. A failure while validating or rendering writes nothing; a failure while writing never leaves a
half-written file.

Units: top-1 is a fraction in the report and shown as a percentage; MACs are multiply-accumulates of conv + linear
layers for one sample (FLOPs = 2 x MACs, see :mod:`prunekit.cost.macs`); latency is milliseconds per forward
pass of one batch.

Modules: :mod:`~prunekit.report.schema` (the models), :mod:`~prunekit.report.markdown` (``report.md``),
:mod:`~prunekit.report.plots` (figures and figure helpers), :mod:`~prunekit.report.training` (training warnings),
:mod:`~prunekit.report.format` (``fmt_*``), :mod:`~prunekit.report.writer` (:func:`write_report`).

Importing this package imports only the standard library and pydantic (matplotlib and :mod:`prunekit.io`, which
pulls in torch, are imported where used), so the CLI can reuse the ``fmt_*`` helpers cheaply.
"""

from __future__ import annotations

from prunekit.report.format import DASH, fmt_factor, fmt_macs, fmt_ms, fmt_params, fmt_pct, fmt_seconds
from prunekit.report.markdown import (
    MAX_GROUP_ROWS,
    MAX_HISTORY_ROWS,
    MAX_JSON_CHARS,
    MAX_LAYER_ROWS,
    render_markdown,
)
from prunekit.report.plots import DPI, new_figure, plot_tradeoff, plot_training, png_bytes, write_bytes
from prunekit.report.schema import (
    Constraint,
    DatasetInfo,
    GroupRow,
    LayerRow,
    MethodInfo,
    Report,
    Side,
    Target,
)
from prunekit.report.training import has_training_history, training_warnings
from prunekit.report.writer import write_report

__all__ = [
    "DASH",
    "DPI",
    "MAX_GROUP_ROWS",
    "MAX_HISTORY_ROWS",
    "MAX_JSON_CHARS",
    "MAX_LAYER_ROWS",
    "Constraint",
    "DatasetInfo",
    "GroupRow",
    "LayerRow",
    "MethodInfo",
    "Report",
    "Side",
    "Target",
    "fmt_factor",
    "fmt_macs",
    "fmt_ms",
    "fmt_params",
    "fmt_pct",
    "fmt_seconds",
    "has_training_history",
    "new_figure",
    "plot_tradeoff",
    "plot_training",
    "png_bytes",
    "render_markdown",
    "training_warnings",
    "write_bytes",
    "write_report",
]
