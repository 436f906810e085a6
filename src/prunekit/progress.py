"""Progress bars: one switch for every long-running loop (training, search, latency measurement).

Bars are shown on a TTY unless ``PRUNEKIT_NO_PROGRESS`` is set to anything but ``0`` (tests and CI set it).
"""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["progress_bar", "progress_enabled"]


def progress_enabled() -> bool:
    """True when progress bars should be shown: stderr is a TTY and ``PRUNEKIT_NO_PROGRESS`` is unset/0."""
    if os.environ.get("PRUNEKIT_NO_PROGRESS", "").strip() not in ("", "0"):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def progress_bar(
    *, desc: str, total: int | None = None, unit: str = "it", enabled: bool | None = None
) -> Any:
    """A tqdm bar (disabled when ``enabled`` is False, or None and :func:`progress_enabled` says so)."""
    from tqdm.auto import tqdm

    on = progress_enabled() if enabled is None else enabled
    return tqdm(total=total, desc=desc, unit=unit, disable=not on, leave=False, dynamic_ncols=True)
