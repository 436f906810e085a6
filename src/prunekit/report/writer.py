"""Writing the whole report: :func:`write_report`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from prunekit.report._data import _jsonable, grouped_layers
from prunekit.report.markdown import render_markdown
from prunekit.report.plots import plot_layer_groups, plot_tradeoff, plot_training, png_bytes, write_bytes
from prunekit.report.schema import Report
from prunekit.report.training import has_training_history


def write_report(report: Report | Mapping, out_dir: str | Path) -> dict[str, Path]:
    """Validate ``report`` and write ``tradeoff.png``, ``training.png`` (when a phase has per-epoch history),
    ``groups.png`` (when a layer is a group conv),
    ``report.md`` and ``report.json`` (:meth:`Report.to_dict`, indented) into ``out_dir`` (created on demand).

    A dict is validated into a :class:`Report` first (numpy values, tensors and paths become plain values,
    non-finite floats become ``None``); ``report.json`` then holds exactly the keys given, as strictly valid JSON.
    Everything is rendered in memory first, so a failure while validating or rendering writes nothing; each file
    is then written atomically, ``report.json`` last, so its presence means the whole report is complete.

    Returns:
        The paths written, by kind: ``{"tradeoff": ..., "training": ..., "groups": ..., "markdown": ...,
        "json": ...}`` (``"training"`` / ``"groups"`` only when written).

    Raises:
        pydantic.ValidationError: the report does not match the schema (e.g. ``pruned.top1 = "abc"``, an unknown
            top-level key); nothing is written.
        OSError: writing failed; files already written are complete, the others are left as they were.
    """
    from prunekit.io import write_json, write_text

    out_dir = Path(out_dir)
    rep = report if isinstance(report, Report) else Report.model_validate(_jsonable(report))
    data = rep.to_dict()
    json.dumps(data, allow_nan=False)  # fail before writing anything
    markdown = render_markdown(data)
    pngs = {"tradeoff": ("tradeoff.png", png_bytes(plot_tradeoff(data)))}
    if has_training_history(data):
        pngs["training"] = ("training.png", png_bytes(plot_training(data)))
    if grouped_layers(data):
        pngs["groups"] = ("groups.png", png_bytes(plot_layer_groups(data)))

    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for kind, (fname, png) in pngs.items():
        write_bytes(out_dir / fname, png)
        written[kind] = out_dir / fname
    write_text(out_dir / "report.md", markdown)
    written["markdown"] = out_dir / "report.md"
    write_json(out_dir / "report.json", data)
    written["json"] = out_dir / "report.json"
    return written
