"""The end-of-run report every pruning run writes: ``report.json``, ``report.md``, ``tradeoff.png``, ``training.png``.

Input is one plain JSON-serialisable dict built by the pipeline (see :func:`render_markdown` for the keys read).
Every key is optional: a missing or ``None`` value renders as "–" and a missing plot input leaves a note in the
panel, so a run without latency, history or groups still gets a complete report.

Writing (:func:`write_report`) renders everything in memory first and only then writes, each file atomically
(:func:`prunekit.io.atomic_path`); ``report.json`` is written last, so its presence means the whole report is
complete. A failure while rendering writes nothing; a failure while writing never leaves a half-written file.

Units: top-1 is a fraction in the dict and shown as a percentage; MACs are multiply-accumulates of conv + linear
layers for one sample (FLOPs = 2 x MACs, see :mod:`prunekit.cost.macs`); latency is milliseconds per forward
pass of one batch.

This module imports only the standard library at import time (matplotlib and :mod:`prunekit.io`, which pulls in
torch, are imported where used), so the CLI can reuse the ``fmt_*`` helpers cheaply.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DASH = "–"
"""Shown for any missing value."""

MAX_GROUP_ROWS = 40
"""Per-group width table: rows shown before the table is collapsed."""

MAX_HISTORY_ROWS = 40
"""Method history table: rows shown (first and last half) before the table is collapsed."""

MAX_JSON_CHARS = 4000
"""Method config / extra facts: characters of JSON shown in the markdown (the full dict is in report.json)."""

DPI = 120

_FIGSIZE_TRADEOFF = (11.0, 4.4)
_FIGSIZE_TRAINING = (11.0, 4.2)


# ---------------------------------------------------------------------------------------------- formatting


def _num(x: Any) -> float | None:
    """``x`` as a float, or None when it is missing or not a number (bools are not numbers here)."""
    if x is None or isinstance(x, bool):
        return None
    if isinstance(x, int | float):
        return float(x)
    try:  # numpy scalars and the like
        return float(x)
    except (TypeError, ValueError):
        return None


def _nonfinite(v: float) -> str | None:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return None


def fmt_pct(x: Any, digits: int = 2) -> str:
    """Format a fraction as a percentage: ``0.9123`` -> ``"91.23%"``; missing -> ``"–"``."""
    v = _num(x)
    if v is None:
        return DASH
    return _nonfinite(v) or f"{100.0 * v:.{digits}f}%"


def fmt_macs(x: Any, digits: int = 2) -> str:
    """Format a MAC count in millions: ``41022464`` -> ``"41.02M"`` (``"G"`` from 10^9, ``"K"`` below 10^4)."""
    v = _num(x)
    if v is None:
        return DASH
    bad = _nonfinite(v)
    if bad:
        return bad
    a = abs(v)
    if a >= 1e9:
        return f"{v / 1e9:.{digits}f}G"
    if a >= 1e4 or a == 0:
        return f"{v / 1e6:.{digits}f}M"
    return f"{v / 1e3:.{digits}f}K"


def fmt_params(x: Any, digits: int = 2) -> str:
    """Format a parameter count: ``272186`` -> ``"272.19K"``, ``11173962`` -> ``"11.17M"``, ``512`` -> ``"512"``."""
    v = _num(x)
    if v is None:
        return DASH
    bad = _nonfinite(v)
    if bad:
        return bad
    a = abs(v)
    if a >= 1e9:
        return f"{v / 1e9:.{digits}f}G"
    if a >= 1e6:
        return f"{v / 1e6:.{digits}f}M"
    if a >= 1e3:
        return f"{v / 1e3:.{digits}f}K"
    return f"{v:.0f}"


def fmt_ms(x: Any) -> str:
    """Format milliseconds with precision that fits the size: ``0.7123`` -> ``"0.712 ms"``, ``45.2`` -> ``"45.20 ms"``."""
    v = _num(x)
    if v is None:
        return DASH
    bad = _nonfinite(v)
    if bad:
        return bad
    a = abs(v)
    if a < 1:
        return f"{v:.3f} ms"
    if a < 100:
        return f"{v:.2f} ms"
    return f"{v:,.1f} ms"


def fmt_factor(x: Any) -> str:
    """Format a ratio as a factor: ``2.0`` -> ``"2.00×"``; missing -> ``"–"``."""
    v = _num(x)
    if v is None:
        return DASH
    return _nonfinite(v) or f"{v:.2f}×"


def fmt_seconds(x: Any) -> str:
    """Format a duration: ``3.2`` -> ``"3.2 s"``, ``410.3`` -> ``"6m 50s"``, ``7322`` -> ``"2h 02m"``."""
    v = _num(x)
    if v is None:
        return DASH
    bad = _nonfinite(v)
    if bad:
        return bad
    if v < 60:
        return f"{v:.1f} s"
    s = int(round(v))
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {(s % 3600) // 60:02d}m"


def _ratio(a: Any, b: Any) -> float | None:
    """``a / b`` or None when either is missing, non-finite or ``b`` is not positive."""
    x, y = _num(a), _num(b)
    if x is None or y is None or not math.isfinite(x) or not math.isfinite(y) or y <= 0:
        return None
    return x / y


def _rel_change(before: Any, after: Any) -> str:
    r = _ratio(after, before)
    return DASH if r is None else f"{100.0 * (r - 1.0):+.1f}%"


def _pp_change(before: Any, after: Any) -> str:
    a, b = _num(before), _num(after)
    if a is None or b is None or not math.isfinite(a) or not math.isfinite(b):
        return DASH
    return f"{100.0 * (b - a):+.2f} pp"


def _cell(x: Any) -> str:
    """Make any value safe for one markdown table cell."""
    s = DASH if x is None else str(x)
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip() or " "


def _table(headers: list[str], rows: list[list[Any]], align: list[str] | None = None) -> list[str]:
    align = align or ["l"] + ["r"] * (len(headers) - 1)
    sep = {"l": "---", "r": "---:", "c": ":---:"}
    out = ["| " + " | ".join(_cell(h) for h in headers) + " |"]
    out.append("|" + "|".join(sep[a] for a in align) + "|")
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


def _get(d: Any, *keys: str) -> Any:
    """Nested lookup that returns None instead of raising on a missing key or a non-dict level."""
    for k in keys:
        if not isinstance(d, Mapping):
            return None
        d = d.get(k)
    return d


def _dict(d: Any) -> dict:
    return d if isinstance(d, Mapping) else {}


def _list(x: Any) -> list:
    return list(x) if isinstance(x, list | tuple) else []


def _fmt_value(key: str, v: Any) -> str:
    """Format one history/table value by its column name: MACs, params, accuracies, latency, plain numbers."""
    if v is None:
        return DASH
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, str):
        return v
    if isinstance(v, list | tuple | Mapping):
        s = json.dumps(v, separators=(",", ":"), default=str)
        return s if len(s) <= 60 else s[:57] + "..."
    x = _num(v)
    if x is None:
        return str(v)
    bad = _nonfinite(x)
    if bad:
        return bad
    k = key.lower()
    if "macs" in k or "flops" in k:
        return fmt_macs(x)
    if "params" in k:
        return fmt_params(x)
    if ("top1" in k or "top5" in k or "acc" in k) and -1.0 <= x <= 1.0:
        return fmt_pct(x)
    if "latency" in k or k.endswith("_ms"):
        return fmt_ms(x)
    if k == "lr" or k.endswith("_lr") or k.startswith("lr_"):
        return f"{x:.3g}"
    if x == int(x) and abs(x) < 1e15 and isinstance(v, int):
        return f"{int(x):,}"
    if abs(x) >= 1e4:
        return f"{x:,.0f}"
    return f"{x:.4g}"


def _json_block(obj: Any) -> list[str]:
    s = json.dumps(obj, indent=2, default=str)
    if len(s) > MAX_JSON_CHARS:
        s = s[:MAX_JSON_CHARS] + "\n... (truncated; the full value is in report.json)"
    return ["```json", s, "```"]


# ---------------------------------------------------------------------------------------------- inputs


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


def training_warnings(report: Mapping, *, rise: float = 0.05, above: float = 0.1) -> list[str]:
    """Signs of an unstable training recipe in the report's per-epoch history, one sentence each.

    A phase is flagged when an epoch's mean train loss (nats) is more than ``above`` (relative) over chance level
    ``ln(num_classes)`` (the loss of a uniform prediction, with or without label smoothing; a fresh network starts
    near it, so a short first epoch can average slightly above it without anything wrong), or rose by more than
    ``rise`` (relative) over the previous epoch's -- under a decaying LR either means the optimiser overshot.
    ``train_loss`` is the task loss alone (a method's extra term is logged apart). The run is not failed: the numbers
    are what they are; the warning says why they may be low.

    Returns:
        one markdown sentence per flagged phase (empty when nothing is flagged or there is no per-epoch history).
    """
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


def has_training_history(report: Mapping) -> bool:
    """True when some history phase has per-epoch rows, i.e. :func:`write_report` also writes ``training.png``."""
    return bool(_epoch_phases(report))


def _batch_n(report: Mapping) -> Any:
    return _get(report, "pruned", "latency_batch") or _get(report, "baseline", "latency_batch")


# ---------------------------------------------------------------------------------------------- markdown


def render_markdown(report: Mapping) -> str:
    """Render the report dict as a readable markdown document (``report.md``).

    Sections: title (run name), command, dataset / model / method lines; summary table (baseline, pruned,
    change: top-1, top-5, MACs, params, latency at batch 1 and batch N) with the derived factors (MACs and params
    reduction, speedup per batch size, speedup ÷ MACs reduction); the MACs target asked vs achieved; wall-clock
    per phase; training summaries; per-group widths (first :data:`MAX_GROUP_ROWS` rows); the method's history
    (every key of its rows as a column); additional trade-off points; method config and extra facts; links to the
    files and plots. Any missing key renders as "–" or leaves its section out.
    """
    report = _dict(report)
    base, pruned = _dict(report.get("baseline")), _dict(report.get("pruned"))
    name = report.get("name") or "prunekit run"
    lines: list[str] = [f"# Pruning report: {name}", ""]

    # ---- header
    if report.get("command"):
        lines += ["```", str(report["command"]), "```", ""]
    info: list[str] = []
    if report.get("created"):
        info.append(f"- **Created:** {report['created']}")
    info.append(f"- **Dataset:** {_dataset_line(report.get('dataset'))}")
    info.append(f"- **Model:** `{report['model']}`" if report.get("model") else f"- **Model:** {DASH}")
    info.append(
        f"- **Method:** `{_method_name(report)}`" if _method_name(report) else f"- **Method:** {DASH}"
    )
    lines += info + [""]

    # ---- summary
    bn = _batch_n(report)
    lat_n = f"latency b{bn}" if bn else "latency batch N"
    lines += ["## Summary", ""]
    headers = ["", "top-1", "top-5", "MACs[^macs]", "params", "latency b1", lat_n]

    def row(label: str, d: dict) -> list[str]:
        return [
            f"**{label}**",
            fmt_pct(d.get("top1")),
            fmt_pct(d.get("top5")),
            fmt_macs(d.get("macs")),
            fmt_params(d.get("params")),
            fmt_ms(d.get("latency_ms")),
            fmt_ms(d.get("latency_ms_batch")),
        ]

    change = [
        "**change**",
        _pp_change(base.get("top1"), pruned.get("top1")),
        _pp_change(base.get("top5"), pruned.get("top5")),
        _rel_change(base.get("macs"), pruned.get("macs")),
        _rel_change(base.get("params"), pruned.get("params")),
        _rel_change(base.get("latency_ms"), pruned.get("latency_ms")),
        _rel_change(base.get("latency_ms_batch"), pruned.get("latency_ms_batch")),
    ]
    lines += _table(headers, [row("baseline", base), row("pruned", pruned), change]) + [""]

    macs_red = _ratio(base.get("macs"), pruned.get("macs"))
    params_red = _ratio(base.get("params"), pruned.get("params"))
    sp1 = _ratio(base.get("latency_ms"), pruned.get("latency_ms"))
    spn = _ratio(base.get("latency_ms_batch"), pruned.get("latency_ms_batch"))
    eff1 = None if sp1 is None or macs_red is None else sp1 / macs_red
    effn = None if spn is None or macs_red is None else spn / macs_red
    bn_label = f"batch {bn}" if bn else "batch N"
    factors = [
        ["MACs reduction", fmt_factor(macs_red)],
        ["params reduction", fmt_factor(params_red)],
        ["speedup, batch 1", fmt_factor(sp1)],
        [f"speedup, {bn_label}", fmt_factor(spn)],
        ["speedup ÷ MACs reduction[^eff], batch 1", DASH if eff1 is None else f"{eff1:.2f}"],
        [f"speedup ÷ MACs reduction, {bn_label}", DASH if effn is None else f"{effn:.2f}"],
    ]
    lines += _table(["factor", "value"], factors) + [""]

    # ---- target
    lines += [f"**Target:** {_target_line(report)}", ""]

    # ---- wall clock
    wall = {k: v for k, v in _dict(report.get("wall_s")).items()}
    lines += ["## Wall-clock time", ""]
    if wall:
        total = _num(wall.get("total"))
        if total is None:
            parts = [_num(v) for v in wall.values()]
            total = sum(p for p in parts if p is not None) or None
        rows = []
        for phase, sec in wall.items():
            if phase == "total":
                continue
            share = _ratio(sec, total)
            rows.append([phase, fmt_seconds(sec), DASH if share is None else f"{100 * share:.0f}%"])
        rows.append(["**total**", f"**{fmt_seconds(total)}**", "100%" if total else DASH])
        lines += _table(["phase", "time", "share"], rows) + [""]
    else:
        lines += [DASH, ""]

    # ---- training summaries
    phases = _epoch_phases(report)
    if phases:
        lines += ["## Training", ""]
        rows = []
        for phase, hist in phases:
            vals = [(_num(r.get("val_top1")), r) for r in hist]
            vals = [(v, r) for v, r in vals if v is not None and math.isfinite(v)]
            best = max(vals, key=lambda t: t[0]) if vals else None
            last = hist[-1]
            rows.append(
                [
                    phase,
                    len(hist),
                    fmt_pct(best[0]) if best else DASH,
                    _fmt_value("epoch", best[1].get("epoch")) if best else DASH,
                    fmt_pct(last.get("val_top1")),
                    _fmt_value("train_loss", last.get("train_loss")),
                ]
            )
        lines += _table(
            ["phase", "epochs", "best val top-1", "at epoch", "final val top-1", "final train loss"], rows
        )
        lines += [""]
        for w in training_warnings(report):
            lines += [f"> **Warning** {w}", ""]
        lines += ["![training curves](training.png)", ""]

    # ---- groups
    groups = [g for g in _list(report.get("groups")) if isinstance(g, Mapping)]
    lines += ["## Channel groups", ""]
    if groups:
        ch_total = sum(_num(g.get("channels")) or 0 for g in groups)
        kept_total = sum(_num(g.get("kept")) or 0 for g in groups)
        shown = groups[:MAX_GROUP_ROWS]
        rows = []
        for i, g in enumerate(shown):
            tags = g.get("tags")
            tags = ", ".join(map(str, tags)) if isinstance(tags, list | tuple) else tags
            ch, kept = g.get("channels"), g.get("kept")
            rows.append(
                [
                    i,
                    f"`{g.get('name')}`" if g.get("name") is not None else DASH,
                    tags or DASH,
                    f"{_fmt_value('channels', ch)} → {_fmt_value('kept', kept)}",
                    fmt_pct(_ratio(kept, ch), 1),
                ]
            )
        lines += _table(
            ["#", "group", "tags", "channels → kept", "keep ratio"], rows, ["r", "l", "l", "r", "r"]
        )
        lines.append("")
        if len(groups) > len(shown):
            lines += [
                f"_Showing the first {len(shown)} of {len(groups)} groups; all are in report.json._",
                "",
            ]
        lines += [
            f"{len(groups)} groups, {int(kept_total):,} of {int(ch_total):,} channels kept "
            f"({fmt_pct(_ratio(kept_total, ch_total), 1)}).",
            "",
        ]
    else:
        lines += [DASH, ""]

    # ---- method history
    hist = [r for r in _list(_get(report, "history", "method")) if isinstance(r, Mapping)]
    if hist:
        lines += ["## Method history", ""]
        cols: list[str] = []
        for r in hist:
            cols += [str(k) for k in r if str(k) not in cols]
        if len(hist) > MAX_HISTORY_ROWS:
            half = MAX_HISTORY_ROWS // 2
            shown_rows: list[Any] = hist[:half] + [None] + hist[-half:]
        else:
            shown_rows = hist
        rows = []
        for r in shown_rows:
            if r is None:
                rows.append(["…"] * len(cols))
            else:
                rows.append([_fmt_value(c, r.get(c)) for c in cols])
        lines += _table(cols, rows, ["r"] * len(cols)) + [""]
        if len(hist) > MAX_HISTORY_ROWS:
            lines += [f"_Showing the first and last {half} of {len(hist)} rows; all are in report.json._", ""]

    # ---- extra points
    points = _extra_points(report)
    if points:
        lines += ["## Trade-off points", ""]
        rows = [
            [
                p.get("label", DASH),
                fmt_pct(p.get("top1")),
                fmt_macs(p.get("macs")),
                fmt_ms(p.get("latency_ms")),
            ]
            for p in points
        ]
        lines += _table(["point", "top-1", "MACs", "latency b1"], rows) + [""]

    # ---- method config and extra facts
    config = _get(report, "method", "config")
    extra = {k: v for k, v in _dict(report.get("extra")).items() if k != "points"}
    if config or extra:
        lines += ["## Method details", ""]
        if config:
            lines += ["<details><summary>config</summary>", ""] + _json_block(config) + ["", "</details>", ""]
        if extra:
            lines += ["<details><summary>extra</summary>", ""] + _json_block(extra) + ["", "</details>", ""]

    # ---- files and plots
    lines += ["## Files", ""]
    files = _dict(report.get("files"))
    for key, p in files.items():
        lines.append(f"- {key}: {_link(str(p))}")
    lines.append(f"- report: {_link('report.json')}")
    lines += ["", "![accuracy vs cost](tradeoff.png)", ""]

    # ---- footnotes
    lines += [
        "[^macs]: MACs are multiply-accumulates of conv and linear layers for one input sample "
        "(FLOPs = 2 × MACs); BN, activations and pooling are not counted. Latency is milliseconds per forward "
        "pass of one batch.",
        "[^eff]: 1.00 means latency fell exactly as much as MACs; below 1, costs that MACs do not count "
        "(memory traffic, normalisation, activations, framework overhead) limit the speedup.",
        "",
    ]
    return "\n".join(lines)


def _link(p: str) -> str:
    target = f"<{p}>" if any(c in p for c in " ()") else p
    return f"[{Path(p).name or p}]({target})"


def _dataset_line(ds: Any) -> str:
    if isinstance(ds, str):
        return ds
    ds = _dict(ds)
    if not ds:
        return DASH
    parts = [f"`{ds['name']}`" if ds.get("name") else DASH]
    if ds.get("num_classes") is not None:
        parts.append(f"{ds['num_classes']} classes")
    shape = ds.get("input_shape")
    if isinstance(shape, list | tuple) and shape:
        parts.append("input " + "×".join(str(s) for s in shape))
    sizes = _dict(ds.get("sizes"))
    if sizes:
        parts.append(" / ".join(f"{k} {_fmt_value('n', v)}" for k, v in sizes.items()))
    return " · ".join(parts)


def _target_line(report: Mapping) -> str:
    """``asked ≤ X MACs (r of baseline); achieved Y MACs (s of baseline) — met | over target by z%``."""
    base_macs = _num(_get(report, "baseline", "macs"))
    got = _num(_get(report, "pruned", "macs"))
    ratio = _num(_get(report, "target", "macs_ratio"))
    want = _num(_get(report, "target", "macs"))
    if want is None and ratio is not None and base_macs is not None:
        want = ratio * base_macs
    if ratio is None and want is not None and base_macs:
        ratio = want / base_macs

    def amount(macs: float | None, share: float | None) -> str:
        if macs is None:
            return DASH
        return f"{fmt_macs(macs)} MACs" + (f" ({fmt_pct(share, 1)} of baseline)" if share is not None else "")

    asked = DASH if want is None else f"≤ {amount(want, ratio)}"
    line = f"asked {asked}; achieved {amount(got, _ratio(got, base_macs))}"
    if got is not None and want is not None and want > 0:
        over = got / want - 1.0
        line += " — met" if over <= 1e-9 else f" — **over target by {100 * over:.1f}%**"
    return line


# ---------------------------------------------------------------------------------------------- plots


def _new_figure(figsize: tuple[float, float]) -> Figure:
    """A pyplot-free figure on an Agg canvas: no display needed, no global backend switch, no figure leak."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _write_bytes(path: Path, data: bytes) -> None:
    from prunekit.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _save(fig: Figure, path: str | Path | None) -> None:
    if path is not None:
        _write_bytes(Path(path), _png_bytes(fig))


def plot_tradeoff(report: Mapping, path: str | Path | None = None) -> Figure:
    """Draw accuracy against cost: top-1 vs MACs (left) and top-1 vs batch-1 latency (right).

    Baseline and pruned are labelled points (joined by an arrow when there are no extra points);
    ``report["extra"]["points"]`` (each ``{"label", "macs", "top1", "latency_ms"}``, e.g. the stages of multistage
    pruning) are drawn as a connected, labelled line; the MACs target, when known, is a dashed vertical line. Axes are linear, MACs in millions,
    top-1 in percent. A panel with nothing to draw says so.

    Args:
        report: the report dict. path: where to write the PNG atomically; None to only build the figure.

    Returns:
        The matplotlib figure (artists carry ``gid`` ``"baseline"``, ``"pruned"``, ``"points"``, ``"target"``).
    """
    report = _dict(report)
    fig = _new_figure(_FIGSIZE_TRADEOFF)
    ax_m, ax_l = fig.subplots(1, 2)
    base, pruned = _dict(report.get("baseline")), _dict(report.get("pruned"))
    points = _extra_points(report)

    def draw(ax: Any, key: str, scale: float) -> int:
        drawn = 0

        def xy(d: Mapping) -> tuple[float, float] | None:
            x, y = _num(d.get(key)), _num(d.get("top1"))
            if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
                return None
            return x / scale, 100.0 * y

        pts = [(p, xy(p)) for p in points]
        pts = [(p, q) for p, q in pts if q is not None]
        if pts:
            xs, ys = zip(*(q for _, q in pts), strict=True)
            ax.plot(
                xs, ys, "-o", color="tab:blue", ms=4, lw=1.2, alpha=0.8, label="stages / points", gid="points"
            )
            for p, (x, y) in pts:
                if p.get("label") is not None:
                    ax.annotate(
                        str(p["label"]),
                        (x, y),
                        textcoords="offset points",
                        xytext=(4, -10),
                        fontsize=7,
                        color="tab:blue",
                    )
            drawn += len(pts)
        b, q = xy(base), xy(pruned)
        if b and q and not pts:  # with stage points the path is already drawn
            ax.annotate(
                "",
                q,
                b,
                arrowprops={"arrowstyle": "->", "color": "0.55", "lw": 1, "shrinkA": 6, "shrinkB": 7},
            )
        for d, label, style, offset, ha in (
            (b, "baseline", {"marker": "o", "color": "black"}, (7, 4), "left"),
            (q, "pruned", {"marker": "*", "color": "tab:red", "ms": 13}, (0, -11), "center"),
        ):
            if d is None:
                continue
            ax.plot(
                [d[0]], [d[1]], ls="none", ms=style.pop("ms", 8), label=label, gid=label, zorder=3, **style
            )
            ax.annotate(
                f"{label}\n{d[1]:.2f}%",
                d,
                textcoords="offset points",
                xytext=offset,
                ha=ha,
                va="top" if label == "pruned" else "bottom",
                fontsize=8,
                color=style["color"],
            )
            drawn += 1
        return drawn

    # MACs panel
    n_m = draw(ax_m, "macs", 1e6)
    want = _num(_get(report, "target", "macs"))
    ratio, base_macs = _num(_get(report, "target", "macs_ratio")), _num(base.get("macs"))
    if want is None and ratio is not None and base_macs is not None:
        want = ratio * base_macs
    if want is not None and math.isfinite(want) and n_m:
        ax_m.axvline(want / 1e6, ls="--", lw=1, color="tab:green", label="MACs target", gid="target")
    ax_m.set_xlabel("MACs (M, per sample; FLOPs = 2 × MACs)")
    ax_m.set_title("Top-1 vs MACs")

    # latency panel
    n_l = draw(ax_l, "latency_ms", 1.0)
    ax_l.set_xlabel("latency, batch 1 (ms)")
    ax_l.set_title("Top-1 vs latency (batch 1)")

    for ax, n in ((ax_m, n_m), (ax_l, n_l)):
        ax.set_ylabel("top-1 (%)")
        ax.grid(True, lw=0.5, alpha=0.4)
        if n:
            ax.set_xlim(0, ax.get_xlim()[1] * 1.08)  # from zero (honest ratios), room for labels
            ylo, yhi = ax.get_ylim()
            pad = max(0.5, 0.12 * (yhi - ylo))
            ax.set_ylim(ylo - pad, yhi + pad)
            # upper left = high accuracy at low cost: the corner a real result rarely reaches
            ax.legend(fontsize=8, loc="upper left")
        else:
            what = "latency" if ax is ax_l else "MACs / top-1"
            ax.text(
                0.5, 0.5, f"no {what} measured", ha="center", va="center", transform=ax.transAxes, color="0.5"
            )
            ax.set_xticks([])
            ax.set_yticks([])

    title = str(report.get("name") or "prunekit run")
    sub = " · ".join(str(s) for s in (report.get("model"), _method_name(report)) if s)
    fig.suptitle(f"{title}: accuracy vs cost" + (f"  ({sub})" if sub else ""), fontsize=11)
    _save(fig, path)
    return fig


def plot_training(report: Mapping, path: str | Path | None = None) -> Figure:
    """Draw per-epoch curves of every history phase with epochs (baseline, finetune, ...).

    Left: validation top-1 (solid; train top-1 dotted when present). Right: train loss (solid; val loss dotted
    when present). Phases are laid end to end on one cumulative epoch axis, with a dashed line at each phase
    boundary.

    Args:
        report: the report dict. path: where to write the PNG atomically; None to only build the figure.

    Returns:
        The matplotlib figure (one line per phase and metric, ``gid`` ``"<phase>:<metric>"``).
    """
    report = _dict(report)
    fig = _new_figure(_FIGSIZE_TRAINING)
    ax_a, ax_l = fig.subplots(1, 2)
    phases = _epoch_phases(report)
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink"]
    offset = 0.0
    for i, (phase, rows) in enumerate(phases):
        c = colors[i % len(colors)]
        first = _num(rows[0].get("epoch")) or 0.0
        xs = [offset + (_num(r.get("epoch")) or 0.0) - first + 1.0 for r in rows]

        def series(key: str, xs: list[float] = xs, rows: list[dict] = rows) -> tuple[list, list]:
            pts = [(x, _num(r.get(key))) for x, r in zip(xs, rows, strict=True)]
            pts = [(x, y) for x, y in pts if y is not None and math.isfinite(y)]
            return [x for x, _ in pts], [y for _, y in pts]

        # many phases (e.g. 15 multistage stages): one legend entry per line style, phase names at the boundaries
        many = len(phases) > 4
        name = "" if many else f"{phase} "
        for ax, key, ls, label, scale in (
            (ax_a, "val_top1", "-", f"{name}val", 100.0),
            (ax_a, "train_top1", ":", f"{name}train", 100.0),
            (ax_l, "train_loss", "-", f"{name}train", 1.0),
            (ax_l, "val_loss", ":", f"{name}val", 1.0),
        ):
            if many and i > 0:
                label = "_nolegend_"
            x, y = series(key)
            if x:
                ax.plot(
                    x,
                    [v * scale for v in y],
                    ls=ls,
                    color=c,
                    lw=1.4,
                    marker="." if len(x) < 40 else None,
                    label=label,
                    gid=f"{phase}:{key}",
                )
        if i > 0:
            for ax in (ax_a, ax_l):
                ax.axvline(offset + 0.5, color="0.6", ls="--", lw=0.8)
                if many:
                    ax.text(
                        offset + 0.6,
                        0.02,
                        phase,
                        transform=ax.get_xaxis_transform(),
                        rotation=90,
                        fontsize=6,
                        color="0.4",
                        va="bottom",
                    )
        offset = max(xs) if xs else offset

    ax_a.set_title("Top-1 per epoch")
    ax_a.set_ylabel("top-1 (%)")
    ax_l.set_title("Loss per epoch")
    ax_l.set_ylabel("loss")
    for ax in (ax_a, ax_l):
        ax.set_xlabel("epoch (cumulative over phases)" if len(phases) > 1 else "epoch")
        ax.grid(True, lw=0.5, alpha=0.4)
        if ax.get_lines():
            ax.legend(fontsize=8)
        else:
            ax.text(
                0.5,
                0.5,
                "no per-epoch history",
                ha="center",
                va="center",
                transform=ax.transAxes,
                color="0.5",
            )
    fig.suptitle(f"{report.get('name') or 'prunekit run'}: training", fontsize=11)
    _save(fig, path)
    return fig


# ---------------------------------------------------------------------------------------------- write


def _jsonable(x: Any) -> Any:
    """A strictly valid JSON copy: numpy scalars/arrays -> Python, paths -> str, NaN/inf -> None."""
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


def write_report(report: Mapping, out_dir: str | Path) -> dict[str, Path]:
    """Write ``tradeoff.png``, ``training.png`` (when a phase has per-epoch history), ``report.md`` and
    ``report.json`` (the dict, indented) into ``out_dir``.

    Everything is rendered in memory first, so a failure while rendering writes nothing; each file is then written
    atomically, ``report.json`` last. ``report.json`` holds strictly valid JSON: numpy values become plain
    numbers and non-finite floats become ``null``.

    Returns:
        The paths written, by kind: ``{"tradeoff": ..., "training": ..., "markdown": ..., "json": ...}``
        (``"training"`` only when written).
    """
    from prunekit.io import write_json, write_text

    out_dir = Path(out_dir)
    data = _jsonable(report)
    json.dumps(data, allow_nan=False)  # fail before writing anything
    markdown = render_markdown(data)
    pngs = {"tradeoff": ("tradeoff.png", _png_bytes(plot_tradeoff(data)))}
    if has_training_history(data):
        pngs["training"] = ("training.png", _png_bytes(plot_training(data)))

    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for kind, (fname, png) in pngs.items():
        _write_bytes(out_dir / fname, png)
        written[kind] = out_dir / fname
    write_text(out_dir / "report.md", markdown)
    written["markdown"] = out_dir / "report.md"
    write_json(out_dir / "report.json", data)
    written["json"] = out_dir / "report.json"
    return written
