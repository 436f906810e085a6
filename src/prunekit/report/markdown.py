"""``report.md``: :func:`render_markdown`, one small function per section.

Each section function takes the report as a mapping (read leniently through :mod:`prunekit.report._data`) and
returns its lines; an empty list leaves the section out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunekit.report._data import (
    _as_mapping,
    _batch_n,
    _dict,
    _epoch_phases,
    _extra_points,
    _get,
    _list,
    _met,
    _method_name,
    _target_macs,
    grouped_layers,
)
from prunekit.report.format import (
    DASH,
    _abs_change,
    _fmt_value,
    _num,
    _pp_change,
    _ratio,
    _rel_change,
    _table,
    fmt_count,
    fmt_factor,
    fmt_macs,
    fmt_ms,
    fmt_params,
    fmt_pct,
    fmt_score,
    fmt_seconds,
)
from prunekit.report.training import training_warnings

if TYPE_CHECKING:
    from prunekit.report.schema import Report

MAX_GROUP_ROWS = 40
"""Per-group width table: rows shown before the table is collapsed."""

MAX_LAYER_ROWS = 40
"""Per-layer table: rows shown before the table is collapsed."""

MAX_HISTORY_ROWS = 40
"""Method history table: rows shown (first and last half) before the table is collapsed."""

MAX_JSON_CHARS = 4000
"""Method config / extra facts: characters of JSON shown in the markdown (the full dict is in report.json)."""


def render_markdown(report: Report | Mapping) -> str:
    """Render the report as a readable markdown document (``report.md``).

    Sections: title (run name), command, dataset / model / method lines; summary table (baseline, pruned,
    change: top-1, top-5, MACs, params, latency at batch 1 and batch N) with the derived factors (MACs and params
    reduction, speedup per batch size, speedup ÷ MACs reduction); the MACs target asked vs achieved; the
    constraints table (when ``constraints`` is non-empty); wall-clock per phase; training summaries; per-group
    widths (first :data:`MAX_GROUP_ROWS` rows); per-layer density / conv groups / MACs (when ``layers`` is
    non-empty); the method's history (every key of its rows as a column); additional trade-off points; method
    config and extra facts; links to the files and plots.

    Args:
        report: a :class:`~prunekit.report.schema.Report`, or the report dict. A dict is rendered as is, without
            validation: a missing key, ``None`` or a value of the wrong type renders as "–" or leaves its
            section out, so this never raises on malformed input.

    Returns:
        The markdown text (accuracies as percentages, MACs per sample, latency in ms).
    """
    r = _as_mapping(report)
    lines = [f"# Pruning report: {r.get('name') or 'prunekit run'}", ""]
    for section in _SECTIONS:
        lines += section(r)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- header


def _header(r: Mapping) -> list[str]:
    lines: list[str] = []
    if r.get("command"):
        lines += ["```", str(r["command"]), "```", ""]
    if r.get("created"):
        lines.append(f"- **Created:** {r['created']}")
    lines.append(f"- **Dataset:** {_dataset_line(r.get('dataset'))}")
    lines.append(f"- **Model:** `{r['model']}`" if r.get("model") else f"- **Model:** {DASH}")
    method = _method_name(r)
    lines.append(f"- **Method:** `{method}`" if method else f"- **Method:** {DASH}")
    return lines + [""]


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


# ---------------------------------------------------------------------------------------------- summary


def _summary(r: Mapping) -> list[str]:
    base, pruned = _dict(r.get("baseline")), _dict(r.get("pruned"))
    bn = _batch_n(r)
    headers = [
        "",
        "top-1",
        "top-5",
        "MACs[^macs]",
        "params",
        "latency b1",
        f"latency b{bn}" if bn else "latency batch N",
    ]
    keys = ("top1", "top5", "macs", "params", "latency_ms", "latency_ms_batch")
    fmts = (fmt_pct, fmt_pct, fmt_macs, fmt_params, fmt_ms, fmt_ms)
    changes = (_pp_change, _pp_change, _rel_change, _rel_change, _rel_change, _rel_change)
    sparse = any(
        d.get(f"effective_{k}") is not None and d.get(f"effective_{k}") != d.get(k)
        for d in (base, pruned)
        for k in ("macs", "params")
    )
    if sparse:  # weight sparsity: dense (stored) and effective (non-zero) counts side by side
        headers[3:5] = ["MACs (dense)[^macs]", "params (dense)", "effective MACs", "effective params"]
        keys = keys[:4] + ("effective_macs", "effective_params") + keys[4:]
        fmts = fmts[:4] + (fmt_macs, fmt_params) + fmts[4:]
        changes = changes[:4] + (_rel_change, _rel_change) + changes[4:]
    note = []
    if _user_score(r):  # the data factory's eval_fn stands where top-1 would (any scale, higher is better)
        headers[1], fmts, changes = "score[^score]", (fmt_score,) + fmts[1:], (_abs_change,) + changes[1:]
        note = ["[^score]: the data factory's `eval_fn` on the test split (higher is better), not top-1.", ""]
    rows = [
        [f"**{label}**"] + [f(d.get(k)) for f, k in zip(fmts, keys, strict=True)]
        for label, d in (("baseline", base), ("pruned", pruned))
    ]
    rows.append(["**change**"] + [c(base.get(k), pruned.get(k)) for c, k in zip(changes, keys, strict=True)])
    return ["## Summary", ""] + _table(headers, rows) + [""] + note + _machine(r)


def _user_score(r: Mapping) -> bool:
    """True when the report's top1 fields hold the data factory's eval_fn score."""
    return r.get("score") == "eval_fn"


def _accuracy(r: Mapping) -> tuple[Any, str]:
    """How the report's top1 values are shown: ``(formatter, column name)``."""
    return (fmt_score, "score") if _user_score(r) else (fmt_pct, "top-1")


def _machine(r: Mapping) -> list[str]:
    """One line naming where the latencies were measured (runtime, threads, CPU, ISA); none without it."""
    m = _dict(r.get("machine"))
    if not m:
        return []
    threads = m.get("threads")
    isa = ", ".join(m.get("isa") or []) or "no ISA flags read"
    return [
        f"Latency measured with {m.get('version') or m.get('runtime') or DASH}"
        + (f", {threads} thread{'s' if threads != 1 else ''}" if threads else "")
        + f", on {m.get('cpu') or 'an unnamed CPU'} ({isa}).",
        "",
    ]


def _factors(r: Mapping) -> list[str]:
    base, pruned = _dict(r.get("baseline")), _dict(r.get("pruned"))
    macs_red = _ratio(base.get("macs"), pruned.get("macs"))
    sp1 = _ratio(base.get("latency_ms"), pruned.get("latency_ms"))
    spn = _ratio(base.get("latency_ms_batch"), pruned.get("latency_ms_batch"))
    eff1 = None if sp1 is None or macs_red is None else sp1 / macs_red
    effn = None if spn is None or macs_red is None else spn / macs_red
    bn = _batch_n(r)
    bn_label = f"batch {bn}" if bn else "batch N"
    factors = [
        ["MACs reduction", fmt_factor(macs_red)],
        ["params reduction", fmt_factor(_ratio(base.get("params"), pruned.get("params")))],
        ["speedup, batch 1", fmt_factor(sp1)],
        [f"speedup, {bn_label}", fmt_factor(spn)],
        ["speedup ÷ MACs reduction[^eff], batch 1", DASH if eff1 is None else f"{eff1:.2f}"],
        [f"speedup ÷ MACs reduction, {bn_label}", DASH if effn is None else f"{effn:.2f}"],
    ]
    return _table(["factor", "value"], factors) + [""]


# ---------------------------------------------------------------------------------------------- target


def _target(r: Mapping) -> list[str]:
    """``asked ≤ X MACs (r of baseline); achieved Y MACs (s of baseline) — met | over target by z%``."""
    base_macs = _num(_get(r, "baseline", "macs"))
    got = _num(_get(r, "pruned", "macs"))
    want, ratio = _target_macs(r)

    def amount(macs: float | None, share: float | None) -> str:
        if macs is None:
            return DASH
        return f"{fmt_macs(macs)} MACs" + (f" ({fmt_pct(share, 1)} of baseline)" if share is not None else "")

    asked = DASH if want is None else f"≤ {amount(want, ratio)}"
    line = f"asked {asked}; achieved {amount(got, _ratio(got, base_macs))}"
    if got is not None and want is not None and want > 0:
        over = got / want - 1.0
        line += " — met" if over <= 1e-9 else f" — **over target by {100 * over:.1f}%**"
    return [f"**Target:** {line}", ""]


_CONSTRAINT_METRICS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "macs": ("MACs", fmt_macs),
    "params": ("params", fmt_params),
    "latency_ms": ("latency b1", fmt_ms),
}


def _constraints(r: Mapping) -> list[str]:
    """Each budget asked vs achieved: ``| MACs | ≤ 20.51M (50.0% of baseline) | 20.10M | ✓ | analytic |``."""
    rows = []
    for c in (c for c in _list(r.get("constraints")) if isinstance(c, Mapping)):
        metric = str(c.get("metric"))
        label, fmt = _CONSTRAINT_METRICS.get(metric, (metric, lambda v, m=metric: _fmt_value(m, v)))
        asked = fmt(c.get("asked"))
        if asked != DASH:
            share = _num(c.get("ratio_of_baseline"))
            asked = f"≤ {asked}" + (f" ({fmt_pct(share, 1)} of baseline)" if share is not None else "")
        met = c.get("met") if isinstance(c.get("met"), bool) else _met(c.get("asked"), c.get("achieved"))
        met = DASH if met is None else "✓" if met else "✗"
        got, got_share = fmt(c.get("achieved")), _num(c.get("achieved_ratio"))
        got += f" ({fmt_pct(got_share, 1)})" if got != DASH and got_share is not None else ""
        source = str(c.get("source") or DASH)
        if c.get("predicted") is not None:
            source += f" (predicted {fmt(c.get('predicted'))})"
        rows.append([label, asked, got, met, source])
    if not rows:
        return []
    table = _table(["metric", "asked", "achieved", "met", "source"], rows, ["l", "r", "r", "c", "l"])
    return ["## Constraints", ""] + table + [""]


# ---------------------------------------------------------------------------------------------- wall clock


def _wall_clock(r: Mapping) -> list[str]:
    wall = dict(_dict(r.get("wall_s")))
    lines = ["## Wall-clock time", ""]
    if not wall:
        return lines + [DASH, ""]
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
    return lines + _table(["phase", "time", "share"], rows) + [""]


def _compute(r: Mapping) -> list[str]:
    """Training compute per phase, in MACs and reference epochs (prunekit.train.compute)."""
    c = _dict(r.get("compute"))
    phases = _dict(c.get("phases"))
    if not phases:
        return []
    rows = []
    for name, p in phases.items():
        p = _dict(p)
        mark = " (not in the total)" if name in _list(c.get("excluded")) else ""
        rows.append(
            [
                f"{name}{mark}",
                f"{_num(p.get('train_images')) or 0:,.0f}",
                fmt_count(p.get("train_macs")),
                fmt_count(p.get("forward_macs")),
                fmt_count(p.get("total_macs")),
                f"{_num(p.get('reference_epochs')) or 0:.2f}",
            ]
        )
    rows.append(
        [
            "**total**",
            "",
            "",
            "",
            f"**{fmt_count(c.get('total_macs'))}**",
            f"**{_num(c.get('reference_epochs')) or 0:.2f}**",
        ]
    )
    head = ["phase", "trained images", "training MACs", "forward MACs", "MACs", "reference epochs"]
    note = (
        "A training image costs 3x its forward MACs; a reference epoch is one training epoch of the unpruned model "
        f"({fmt_count(c.get('reference_macs'))} MACs x {_num(c.get('train_images')) or 0:,.0f} images x 3)."
    )
    return ["## Compute", ""] + _table(head, rows, ["l", "r", "r", "r", "r", "r"]) + ["", note, ""]


# ---------------------------------------------------------------------------------------------- training


def _training(r: Mapping) -> list[str]:
    phases = _epoch_phases(r)
    if not phases:
        return []
    rows = []
    key = "val_score" if _user_score(r) else "val_top1"
    fmt, name = _accuracy(r)
    name = f"val {name}"
    for phase, hist in phases:
        vals = [(_num(row.get(key)), row) for row in hist]
        vals = [(v, row) for v, row in vals if v is not None and math.isfinite(v)]
        best = max(vals, key=lambda t: t[0]) if vals else None
        last = hist[-1]
        rows.append(
            [
                phase,
                len(hist),
                fmt(best[0]) if best else DASH,
                _fmt_value("epoch", best[1].get("epoch")) if best else DASH,
                fmt(last.get(key)),
                _fmt_value("train_loss", last.get("train_loss")),
            ]
        )
    headers = ["phase", "epochs", f"best {name}", "at epoch", f"final {name}", "final train loss"]
    lines = ["## Training", ""] + _table(headers, rows) + [""]
    for w in training_warnings(r):
        lines += [f"> **Warning** {w}", ""]
    return lines + ["![training curves](training.png)", ""]


# ---------------------------------------------------------------------------------------------- structure


def _groups(r: Mapping) -> list[str]:
    groups = [g for g in _list(r.get("groups")) if isinstance(g, Mapping)]
    lines = ["## Channel groups", ""]
    if not groups:
        return lines + [DASH, ""]
    ch_total = sum(_num(g.get("channels")) or 0 for g in groups)
    kept_total = sum(_num(g.get("kept")) or 0 for g in groups)
    shown = groups[:MAX_GROUP_ROWS]
    rows = []
    for i, g in enumerate(shown):
        tags = g.get("tags")
        tags = ", ".join(map(str, tags)) if isinstance(tags, list | tuple) else tags
        ch, kept = g.get("channels"), g.get("kept")
        name = f"`{g.get('name')}`" if g.get("name") is not None else DASH
        keep = fmt_pct(_ratio(kept, ch), 1)
        rows.append(
            [i, name, tags or DASH, f"{_fmt_value('channels', ch)} → {_fmt_value('kept', kept)}", keep]
        )
    lines += _table(["#", "group", "tags", "channels → kept", "keep ratio"], rows, ["r", "l", "l", "r", "r"])
    lines.append("")
    if len(groups) > len(shown):
        lines += [f"_Showing the first {len(shown)} of {len(groups)} groups; all are in report.json._", ""]
    return lines + [
        f"{len(groups)} groups, {int(kept_total):,} of {int(ch_total):,} channels kept "
        f"({fmt_pct(_ratio(kept_total, ch_total), 1)}).",
        "",
    ]


def _layers(r: Mapping) -> list[str]:
    """Per-layer density, conv groups and MACs (only when the report has ``layers``)."""
    layers = [row for row in _list(r.get("layers")) if isinstance(row, Mapping)]
    if not layers:
        return []
    shown = layers[:MAX_LAYER_ROWS]
    rows = [
        [
            i,
            f"`{row.get('name')}`" if row.get("name") is not None else DASH,
            _block(row.get("block")),
            fmt_pct(row.get("density"), 1),
            _fmt_value("conv_groups", row.get("conv_groups")),
            fmt_macs(row.get("macs")),
            fmt_macs(row.get("effective_macs")),
        ]
        for i, row in enumerate(shown)
    ]
    headers = ["#", "layer", "block", "density", "conv groups", "MACs", "effective MACs"]
    lines = ["## Layers", ""] + _table(headers, rows, ["r", "l", "l", "r", "r", "r", "r"]) + [""]
    if len(layers) > len(shown):
        lines += [f"_Showing the first {len(shown)} of {len(layers)} layers; all are in report.json._", ""]
    return lines


def _group_convs(r: Mapping) -> list[str]:
    """Group convolutions (GConv): how many layers took each G, the mean kept criterion mass and the measured
    cost of the channel permutations (``extra.gather_overhead``), and the plot (only with group convs)."""
    grouped = grouped_layers(r)
    if not grouped:
        return []
    counts: dict[int, int] = {}
    for _, g in grouped:
        counts[g] = counts.get(g, 0) + 1
    extra = _dict(r.get("extra"))
    lines = ["## Group convolutions", ""]
    lines.append(
        f"{len(grouped)} layers are group convs: "
        + ", ".join(f"{n} at G={g}" for g, n in sorted(counts.items()))
        + (f" (choice: {extra['choice']})" if extra.get("choice") else "")
        + "."
    )
    kept = _num(extra.get("mean_kept_fraction"))
    if kept is not None:
        lines.append(f"Mean kept criterion mass over the regroupable layers: {fmt_pct(kept, 1)}.")
    oh = _dict(extra.get("gather_overhead"))
    if oh:
        if not oh.get("gathers"):
            lines.append("Every channel permutation folded into its producers: no gather nodes.")
        else:
            lines.append(
                f"{oh['gathers']} layers keep an explicit channel gather; ONNX Runtime batch 1: "
                f"{fmt_ms(oh.get('ms'))} with the permutations vs {fmt_ms(oh.get('ms_without_perms'))} for the same "
                f"group convs without them ({_rel_change(oh.get('ms_without_perms'), oh.get('ms'))})."
            )
    return lines + ["", "![conv groups per layer](groups.png)", ""]


def _front(r: Mapping) -> list[str]:
    """A multi-objective search's front (JCW: ``extra.front``, one row per member plan file) and the member the run
    deployed (``extra.member.index``)."""
    extra = _dict(r.get("extra"))
    front = [m for m in _list(extra.get("front")) if isinstance(m, Mapping)]
    if not front:
        return []
    chosen = _dict(extra.get("member")).get("index")
    rows = [
        [
            ("**" + str(m.get("member")) + "**") if m.get("member") == chosen else str(m.get("member", DASH)),
            f"`front/{m.get('file')}`" if m.get("file") else DASH,
            fmt_ms(m.get("predicted_ms")),
            fmt_ms(m.get("measured_ms")),
            _fmt_value("proxy_loss", m.get("proxy_loss")),
            fmt_macs(m.get("macs")),
            fmt_macs(m.get("effective_macs")),
            fmt_params(m.get("params")),
            fmt_pct(m.get("mean_width_ratio"), 1),
            fmt_pct(m.get("mean_density"), 1),
        ]
        for m in front
    ]
    headers = [
        "member",
        "plan",
        "predicted ms (b1)",
        "measured ms (b1)",
        "proxy loss",
        "MACs",
        "effective MACs",
        "params",
        "mean width",
        "mean density",
    ]
    lines = ["## Front", ""]
    lines.append(
        f"{len(front)} non-dominated members (proxy loss vs predicted latency); "
        + (f"member {chosen} (bold) was trained and measured above. " if chosen is not None else "")
        + "Train any other with `method: {name: plan, plan: RUN/front/member-<i>.json}`."
    )
    lines += [""] + _table(headers, rows, ["r", "l", "r", "r", "r", "r", "r", "r", "r", "r"]) + [""]
    fig = _dict(extra.get("figures")).get("front")
    lines += [f"![front]({fig})", ""] if fig else []
    return lines + _trained_members(extra, _accuracy(r))


def _trained_members(extra: Mapping, acc: tuple[Any, str]) -> list[str]:
    """The members ``method.train`` trained (JCW: ``extra.members``), one row each."""
    members = [m for m in _list(extra.get("members")) if isinstance(m, Mapping)]
    if not members:
        return []
    rows = [
        [
            str(m.get("member", DASH)) + (" (deployed)" if m.get("deployed") else ""),
            str(m.get("budgets", DASH)),
            acc[0](m.get("test_top1")),
            fmt_macs(m.get("macs")),
            fmt_macs(m.get("effective_macs")),
            fmt_params(m.get("params")),
            fmt_ms(m.get("predicted_ms")),
            fmt_ms(m.get("measured_ms")),
            f"`{m.get('dir')}/`" if m.get("dir") else DASH,
        ]
        for m in members
    ]
    headers = [
        "member",
        "budget",
        f"test {acc[1]}",
        "MACs",
        "effective MACs",
        "params",
        "predicted ms",
        "measured ms",
        "dir",
    ]
    return (
        ["### Trained members (`method.train`)", ""]
        + _table(headers, rows, ["r", "l", "r", "r", "r", "r", "r", "r", "l"])
        + [""]
    )


def _block(b: Any) -> str:
    """A block shape ``(4, 1)`` as ``4×1``; missing -> "–"."""
    if isinstance(b, list | tuple):
        return "×".join(map(str, b)) if b else DASH
    return DASH if b is None or b == "" else str(b)


# ---------------------------------------------------------------------------------------------- method


def _method_history(r: Mapping) -> list[str]:
    hist = [row for row in _list(_get(r, "history", "method")) if isinstance(row, Mapping)]
    if not hist:
        return []
    cols: list[str] = []
    for row in hist:
        cols += [str(k) for k in row if str(k) not in cols]
    half = MAX_HISTORY_ROWS // 2
    collapsed = len(hist) > MAX_HISTORY_ROWS
    shown: list[Any] = hist[:half] + [None] + hist[-half:] if collapsed else hist
    rows = [["…"] * len(cols) if row is None else [_fmt_value(c, row.get(c)) for c in cols] for row in shown]
    lines = ["## Method history", ""] + _table(cols, rows, ["r"] * len(cols)) + [""]
    if collapsed:
        lines += [f"_Showing the first and last {half} of {len(hist)} rows; all are in report.json._", ""]
    return lines


def _points(r: Mapping) -> list[str]:
    points = _extra_points(r)
    if not points:
        return []
    fmt, name = _accuracy(r)
    rows = [
        [p.get("label", DASH), fmt(p.get("top1")), fmt_macs(p.get("macs")), fmt_ms(p.get("latency_ms"))]
        for p in points
    ]
    return ["## Trade-off points", ""] + _table(["point", name, "MACs", "latency b1"], rows) + [""]


def _method_details(r: Mapping) -> list[str]:
    config = _get(r, "method", "config")
    extra = {k: v for k, v in _dict(r.get("extra")).items() if k != "points"}
    if not (config or extra):
        return []
    lines = ["## Method details", ""]
    for label, value in (("config", config), ("extra", extra)):
        if value:
            lines += (
                [f"<details><summary>{label}</summary>", ""] + _json_block(value) + ["", "</details>", ""]
            )
    return lines


def _json_block(obj: Any) -> list[str]:
    s = json.dumps(obj, indent=2, default=str)
    if len(s) > MAX_JSON_CHARS:
        s = s[:MAX_JSON_CHARS] + "\n... (truncated; the full value is in report.json)"
    return ["```json", s, "```"]


# ---------------------------------------------------------------------------------------------- files


def _files(r: Mapping) -> list[str]:
    lines = ["## Files", ""]
    for key, p in _dict(r.get("files")).items():
        lines.append(f"- {key}: {_link(str(p))}")
    lines.append(f"- report: {_link('report.json')}")
    return lines + ["", "![accuracy vs cost](tradeoff.png)", ""]


def _link(p: str) -> str:
    target = f"<{p}>" if any(c in p for c in " ()") else p
    return f"[{Path(p).name or p}]({target})"


def _footnotes(r: Mapping) -> list[str]:
    return [
        "[^macs]: MACs are multiply-accumulates of conv and linear layers for one input sample "
        "(FLOPs = 2 × MACs); BN, activations and pooling are not counted. Dense counts include every stored "
        "weight (budgets constrain them); effective counts only the non-zero ones of block-sparse layers. "
        "Latency is milliseconds per forward pass of one batch.",
        "[^eff]: 1.00 means latency fell exactly as much as MACs; below 1, costs that MACs do not count "
        "(memory traffic, normalisation, activations, framework overhead) limit the speedup.",
        "",
    ]


_SECTIONS: tuple[Callable[[Mapping], list[str]], ...] = (
    _header,
    _summary,
    _factors,
    _target,
    _constraints,
    _wall_clock,
    _compute,
    _training,
    _groups,
    _layers,
    _group_convs,
    _front,
    _method_history,
    _points,
    _method_details,
    _files,
    _footnotes,
)
