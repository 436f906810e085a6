"""The report's figures: :func:`plot_tradeoff` (``tradeoff.png``), :func:`plot_training` (``training.png``), and the
figure helpers other modules reuse (:func:`new_figure`, :func:`png_bytes`, :func:`write_bytes`).

matplotlib is imported where used (never pyplot), :mod:`prunekit.io` (which pulls in torch) only when writing.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunekit.report._data import _as_mapping, _dict, _epoch_phases, _extra_points, _method_name, _target_macs
from prunekit.report.format import _num

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from prunekit.report.schema import Report

DPI = 120
"""Resolution of every figure, dots per inch."""

_FIGSIZE_TRADEOFF = (11.0, 4.4)
_FIGSIZE_TRAINING = (11.0, 4.2)


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A pyplot-free figure of ``figsize`` inches (width, height) at :data:`DPI`, on an Agg canvas: no display
    needed, no global backend switch, no figure leak. Imports matplotlib on first use."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure) -> bytes:
    """The figure encoded as PNG at :data:`DPI` (in memory; nothing is written)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`prunekit.io.atomic_path`): the file is either the old one
    or complete, never partial; parent directories are created.

    Raises:
        OSError: the write or the rename failed (the temporary file is removed).
    """
    from prunekit.io import atomic_path

    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(data)


def _save(fig: Figure, path: str | Path | None) -> None:
    if path is not None:
        write_bytes(Path(path), png_bytes(fig))


def plot_tradeoff(report: Report | Mapping, path: str | Path | None = None) -> Figure:
    """Draw accuracy against cost: top-1 vs MACs (left) and top-1 vs batch-1 latency (right).

    Baseline and pruned are labelled points (joined by an arrow when there are no extra points);
    ``report["extra"]["points"]`` (each ``{"label", "macs", "top1", "latency_ms"}``, e.g. the stages of multistage
    pruning) are drawn as a connected, labelled line; the MACs target, when known, is a dashed vertical line. Axes
    are linear, MACs in millions per sample, latency in ms, top-1 in percent. A panel with nothing to draw says so.

    Args:
        report: a :class:`~prunekit.report.schema.Report` or the report dict (read leniently: never raises).
        path: where to write the PNG atomically; None to only build the figure.

    Returns:
        The matplotlib figure (artists carry ``gid`` ``"baseline"``, ``"pruned"``, ``"points"``, ``"target"``).
    """
    report = _as_mapping(report)
    fig = new_figure(_FIGSIZE_TRADEOFF)
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
    want, _ = _target_macs(report)
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


def plot_training(report: Report | Mapping, path: str | Path | None = None) -> Figure:
    """Draw per-epoch curves of every history phase with epochs (baseline, finetune, ...).

    Left: validation top-1 (solid; train top-1 dotted when present). Right: train loss (solid; val loss dotted
    when present). Phases are laid end to end on one cumulative epoch axis, with a dashed line at each phase
    boundary.

    Args:
        report: a :class:`~prunekit.report.schema.Report` or the report dict (read leniently: never raises).
        path: where to write the PNG atomically; None to only build the figure.

    Returns:
        The matplotlib figure (one line per phase and metric, ``gid`` ``"<phase>:<metric>"``).
    """
    report = _as_mapping(report)
    fig = new_figure(_FIGSIZE_TRAINING)
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
            (ax_a, "val_score", "-", f"{name}val score", 1.0),  # the data factory's eval_fn
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

    scored = report.get("score") == "eval_fn"
    ax_a.set_title("Score (eval_fn) per epoch" if scored else "Top-1 per epoch")
    ax_a.set_ylabel("score" if scored else "top-1 (%)")
    ax_l.set_title("Loss per epoch")
    ax_l.set_ylabel("loss")
    for ax in (ax_a, ax_l):
        ax.set_xlabel("epoch (cumulative over phases)" if len(phases) > 1 else "epoch")
        ax.grid(True, lw=0.5, alpha=0.4)
        if any(not line.get_label().startswith("_") for line in ax.get_lines()):  # not only phase boundaries
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


_FIGSIZE_GROUPS = (11.0, 3.6)


def plot_layer_groups(report: Report | Mapping, path: str | Path | None = None) -> Figure:
    """Draw the group count ``G`` per layer (bars; 1 = dense) in network order, ``groups.png``: the method's
    history rows with ``layer`` and ``groups`` (GConv lists every regroupable layer), else the report's layer rows.

    Args:
        report: a :class:`~prunekit.report.schema.Report` or the report dict (read leniently: never raises).
        path: where to write the PNG atomically; None to only build the figure.

    Returns:
        The matplotlib figure (the bars carry ``gid`` ``"groups"``).
    """
    report = _as_mapping(report)
    hist = _dict(report.get("history")).get("method") or []
    rows = [(r.get("layer"), r.get("groups")) for r in hist if isinstance(r, Mapping) and "groups" in r]
    if not rows:
        rows = [
            (r.get("name"), r.get("conv_groups"))
            for r in report.get("layers") or []
            if isinstance(r, Mapping)
        ]
    names = [str(n) for n, _ in rows]
    gs = [max(1, int(_num(g) or 1)) for _, g in rows]
    fig = new_figure(_FIGSIZE_GROUPS)
    ax = fig.subplots(1, 1)
    if rows:
        for bar in ax.bar(range(len(gs)), gs, color=["tab:blue" if g > 1 else "tab:gray" for g in gs]):
            bar.set_gid("groups")
        ax.set_xticks(range(len(gs)))
        ax.set_xticklabels(names, rotation=90, fontsize=6)
        ax.set_yticks(sorted(set(gs)))
    else:
        ax.text(0.5, 0.5, "no layer-level choices", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("conv groups G (1 = dense)")
    ax.set_title("Group count per layer")
    _save(fig, path)
    return fig
