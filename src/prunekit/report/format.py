"""Number and table formatting for the report (standard library only, cheap to import from the CLI).

Every ``fmt_*`` helper takes any value and never raises: a missing value, a non-number (a string, ``True``) or
anything that does not convert to a float renders as :data:`DASH`; NaN and infinities render as ``"NaN"``,
``"inf"``, ``"-inf"``. Numpy scalars are accepted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

DASH = "–"
"""Shown for any missing value."""


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


def _shown(x: Any) -> tuple[float | None, str | None]:
    """``(value, None)`` for a finite number, else ``(None, text)``: DASH when missing, ``NaN`` / ``inf`` / ``-inf``."""
    v = _num(x)
    if v is None:
        return None, DASH
    bad = _nonfinite(v)
    return (None, bad) if bad else (v, None)


def fmt_pct(x: Any, digits: int = 2) -> str:
    """Format a fraction as a percentage: ``0.9123`` -> ``"91.23%"``; missing -> ``"–"``."""
    v = _num(x)
    if v is None:
        return DASH
    return _nonfinite(v) or f"{100.0 * v:.{digits}f}%"


def _scaled(x: Any, digits: int, steps: tuple[tuple[float, float, str], ...], last: str) -> str:
    """``x`` divided by the first ``(threshold, divisor, suffix)`` whose threshold ``|x|`` reaches, else ``last``
    formatted (``"{v:.0f}"`` or a suffix rule); missing -> DASH, non-finite -> its name."""
    v, shown = _shown(x)
    if shown is not None:
        return shown
    for threshold, divisor, suffix in steps:
        if abs(v) >= threshold:
            return f"{v / divisor:.{digits}f}{suffix}"
    return last.format(v=v, digits=digits)


def fmt_macs(x: Any, digits: int = 2) -> str:
    """Format a MAC count in millions: ``41022464`` -> ``"41.02M"`` (``"G"`` from 10^9, ``"K"`` below 10^4)."""
    zero = _num(x) == 0  # zero reads as "0.00M", not "0.00K"
    return _scaled(
        x, digits, ((1e9, 1e9, "G"), (1e4, 1e6, "M"), (0.0, 1e6 if zero else 1e3, "M" if zero else "K")), ""
    )


def fmt_params(x: Any, digits: int = 2) -> str:
    """Format a parameter count: ``272186`` -> ``"272.19K"``, ``11173962`` -> ``"11.17M"``, ``512`` -> ``"512"``."""
    return _scaled(x, digits, ((1e9, 1e9, "G"), (1e6, 1e6, "M"), (1e3, 1e3, "K")), "{v:.0f}")


def fmt_count(x: Any, digits: int = 2) -> str:
    """Format a large count (a run's training MACs): ``3.2e15`` -> ``"3.20P"``, ``4.1e12`` -> ``"4.10T"``, down
    to ``"K"``; ``512`` -> ``"512"``."""
    steps = ((1e15, 1e15, "P"), (1e12, 1e12, "T"), (1e9, 1e9, "G"), (1e6, 1e6, "M"), (1e3, 1e3, "K"))
    return _scaled(x, digits, steps, "{v:.0f}")


def fmt_ms(x: Any) -> str:
    """Format milliseconds with precision that fits the size: ``0.7123`` -> ``"0.712 ms"``, ``45.2`` -> ``"45.20 ms"``."""
    v, shown = _shown(x)
    if shown is not None:
        return shown
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
    """Format a duration in seconds: ``3.2`` -> ``"3.2 s"``, ``410.3`` -> ``"6m 50s"``, ``7322`` -> ``"2h 02m"``."""
    v, shown = _shown(x)
    if shown is not None:
        return shown
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


def fmt_score(x: Any) -> str:
    """Format a user score (``eval_fn``; any scale): 4 significant digits; missing -> ``"–"``."""
    v, shown = _shown(x)
    return shown if shown is not None else f"{v:.4g}"


def _abs_change(before: Any, after: Any) -> str:
    a, b = _num(before), _num(after)
    if a is None or b is None or not math.isfinite(a) or not math.isfinite(b):
        return DASH
    return f"{b - a:+.4g}"


def _cell(x: Any) -> str:
    """Make any value safe for one markdown table cell."""
    s = DASH if x is None else str(x)
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip() or " "


def _table(headers: list[str], rows: list[list[Any]], align: list[str] | None = None) -> list[str]:
    """A markdown table as lines; ``align`` per column: ``"l"``, ``"r"`` or ``"c"`` (default: first left)."""
    align = align or ["l"] + ["r"] * (len(headers) - 1)
    sep = {"l": "---", "r": "---:", "c": ":---:"}
    out = ["| " + " | ".join(_cell(h) for h in headers) + " |"]
    out.append("|" + "|".join(sep[a] for a in align) + "|")
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


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
