"""Pruning-ratio schedules shared by gradual pruning methods: the cubic AGP ramp and multistage stage lists.

* :func:`agp_ratio` — the cubic ramp of Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning
  for model compression" (ICLR-W 2018, §3, Eq. 1), as used *within* each stage by Tu et al., "Pruning Depthwise
  Separable Convolutions for MobileNet Compression" (IJCNN 2020, §III-C; the seed's ``SparsePruner``):
  ``r(t) = r_end + (r_begin - r_end) * (1 - p) ** 3`` with ``p = clamp((t - t_begin) / (t_end - t_begin), 0, 1)``.
  It prunes fast while the network is still redundant and slowly as the end ratio approaches.
* :func:`stage_ratios` — the stage end ratios of multistage pruning. ``"8stage"`` and ``"16stage"`` are the seed's
  presets; their names count the ratio *levels including the unpruned start*: ``"8stage"`` = 0 → 1/8 → … → 7/8,
  i.e. **seven** pruning stages (1/8 … 7/8), ``"16stage"`` fifteen (1/16 … 15/16). Any ``"<N>stage"`` (N ≥ 2) and any
  explicit increasing list of ratios in (0, 1) are accepted too.
* :func:`prune_steps` — the optimiser steps at which a ramp re-prunes (every ``prune_every`` steps, plus its end).

Ratios are fractions of each channel group's *original* width that are removed (0 = unpruned, 0.75 = a quarter of
the channels kept, the seed's "0.25x" model).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from prunekit.errors import PrunekitError

__all__ = ["PRESETS", "agp_ratio", "parse_schedule", "prune_steps", "stage_pairs", "stage_ratios"]

PRESETS: tuple[str, ...] = ("8stage", "16stage")
"""Named schedules of the seed (any ``"<N>stage"`` string is accepted as well)."""

_NSTAGE = re.compile(r"^(\d+)stage$")


def agp_ratio(
    step: float, begin_step: float, end_step: float, r_begin: float, r_end: float, exponent: float = 3.0
) -> float:
    """Pruning ratio at optimiser step ``step`` of a cubic (AGP) ramp from ``r_begin`` to ``r_end``.

    ``r = r_end + (r_begin - r_end) * (1 - p) ** exponent`` with ``p = clamp((step - begin_step) / (end_step -
    begin_step), 0, 1)`` (Zhu & Gupta 2018, Eq. 1; exponent 3 in the paper and the seed). Before ``begin_step`` the
    ratio is ``r_begin``, from ``end_step`` on it is ``r_end``; a zero-length ramp (``end_step <= begin_step``) is at
    ``r_end`` from ``begin_step`` on (one-shot).

    Args:
        step: the step (any unit, e.g. optimiser steps); begin_step, end_step: the ramp window.
        r_begin, r_end: ratios (fractions removed) at the window's start and end.
        exponent: curvature (> 0; 1 = linear).

    Returns:
        the ratio, a float between ``r_begin`` and ``r_end``.

    Raises:
        ValueError: ``exponent <= 0``.
    """
    if exponent <= 0:
        raise ValueError(f"exponent must be > 0, got {exponent}")
    if end_step <= begin_step:
        p = 1.0 if step >= begin_step else 0.0
    else:
        p = min(1.0, max(0.0, (float(step) - begin_step) / (float(end_step) - begin_step)))
    if p >= 1.0:
        return float(r_end)
    if p <= 0.0:
        return float(r_begin)
    return float(r_end + (r_begin - r_end) * (1.0 - p) ** exponent)


def parse_schedule(schedule: str | Sequence[float]) -> list[float]:
    """Validate a schedule (a ``"<N>stage"`` name or a list of ratios) into its stage end ratios.

    ``"<N>stage"`` (N >= 2) gives ``[1/N, 2/N, ..., (N-1)/N]`` (N - 1 stages: the name counts the unpruned start,
    as in the seed). A list must be strictly increasing with every ratio in (0, 1).

    Returns:
        the stage end ratios (floats), one per stage.

    Raises:
        PrunekitError: unknown name, ``N < 2``, an empty / non-increasing list or a ratio outside (0, 1).
    """
    if isinstance(schedule, str):
        m = _NSTAGE.match(schedule.strip())
        if not m:
            raise PrunekitError(
                f"unknown schedule {schedule!r}: use {' or '.join(PRESETS)} (any '<N>stage'), or a list of "
                "increasing ratios such as [0.25, 0.5, 0.75]"
            )
        n = int(m.group(1))
        if n < 2:
            raise PrunekitError(f"schedule {schedule!r} has no pruning stage: '<N>stage' needs N >= 2")
        return [k / n for k in range(1, n)]
    ratios = [float(r) for r in schedule]
    if not ratios:
        raise PrunekitError("schedule is an empty list: give at least one stage ratio in (0, 1)")
    bad = [r for r in ratios if not (0.0 < r < 1.0) or not math.isfinite(r)]
    if bad:
        raise PrunekitError(f"schedule ratios must be in (0, 1) (fraction of channels removed), got {bad[0]}")
    if any(b <= a for a, b in zip(ratios, ratios[1:], strict=False)):
        raise PrunekitError(f"schedule ratios must be strictly increasing, got {ratios}")
    return ratios


def stage_ratios(schedule: str | Sequence[float], final_ratio: float | None = None) -> list[float]:
    """Stage end ratios of a schedule, optionally stopped at ``final_ratio``.

    With ``final_ratio`` the stages are the schedule's ratios below it followed by ``final_ratio`` itself (so
    ``stage_ratios("8stage", 0.5) == [0.125, 0.25, 0.375, 0.5]``, ``stage_ratios("8stage", 0.6)`` ends with
    ``0.5, 0.6``).

    Raises:
        PrunekitError: invalid schedule (see :func:`parse_schedule`) or ``final_ratio`` outside (0, 1).
    """
    ratios = parse_schedule(schedule)
    if final_ratio is None:
        return ratios
    if not 0.0 < final_ratio < 1.0:
        raise PrunekitError(f"final_ratio must be in (0, 1), got {final_ratio}")
    eps = 1e-9
    return [r for r in ratios if r < final_ratio - eps] + [float(final_ratio)]


def stage_pairs(ratios: Sequence[float], start: float = 0.0) -> list[tuple[float, float]]:
    """``[(begin, end)]`` ratio pairs of consecutive stages starting at ``start``:
    ``stage_pairs([0.25, 0.5]) == [(0.0, 0.25), (0.25, 0.5)]``."""
    begins = [float(start), *map(float, ratios[:-1])]
    return list(zip(begins, map(float, ratios), strict=True))


def prune_steps(end_step: int, prune_every: int) -> list[int]:
    """Optimiser steps (1-based counts of completed steps) at which a ramp ending at ``end_step`` re-prunes:
    every ``prune_every`` steps, plus ``end_step`` itself; ``[0]`` for a zero-length ramp (prune once at the start).

    Raises:
        ValueError: ``prune_every < 1`` or ``end_step < 0``.
    """
    if prune_every < 1:
        raise ValueError(f"prune_every must be >= 1, got {prune_every}")
    if end_step < 0:
        raise ValueError(f"end_step must be >= 0, got {end_step}")
    if end_step == 0:
        return [0]
    steps = list(range(prune_every, end_step, prune_every))
    return [*steps, end_step]
