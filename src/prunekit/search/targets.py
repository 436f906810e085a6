"""JCW's tailored environmental selection: survivors for several target latencies at once.

Zhao et al., "Joint Channel and Weight Pruning for Model Acceleration on Mobile Devices" (2021), §3.3: plain NSGA-II
crowds its front toward the extremes of the (loss, latency) plane, while a user wants good models *at* a few
deployment latencies. So ``k`` target latencies ``t_1..t_k`` are sampled between the latency of the all-lower-bound
and the all-upper-bound encodings, and for each target the objectives become ``(loss, |latency - t_j|)``. Each target
gets its own non-dominated sorting (pymoo's ``NonDominatedSorting``); survivors are taken **front by front,
round-robin over the targets** (front 0 of target 1, front 0 of target 2, ..., then front 1 of each), a front that
would overflow is truncated by crowding distance (pymoo's ``calc_crowding_distance``) on its members'
``|latency - t_j|``, largest first. One search thus keeps, near every target, the models that trade loss against being close
to it, and its final population spreads over the whole latency range ("one search, many deployments").

As in the seed (``lib/EMO/nsga_ii.py``, ``_psorted`` / ``_select_by_frontier``): targets are ``linspace(lo, hi, k)``
(``uniform``) or uniform random (``random``, optionally with the end points fixed: ``sandwich``); the crowding of an
overflowing front is computed on the ``|latency - t|`` objective of its target (the seed's ``by_frontier`` default,
``shared/reference/seed-methods.md`` §1.5), and an individual already chosen for an earlier target is not chosen
twice.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["sample_targets", "select_for_targets"]


def sample_targets(
    lo: float,
    hi: float,
    k: int,
    *,
    mode: Literal["uniform", "random"] = "uniform",
    sandwich: bool = False,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """``k`` target latencies in ``[lo, hi]`` (ms): evenly spaced (``uniform``) or uniform random (``random``; with
    ``sandwich`` the first is ``lo`` and the last ``hi``).

    Raises:
        ValueError: ``k < 1``, ``hi < lo``, an unknown mode, or ``random`` without ``rng``.
    """
    if k < 1 or hi < lo:
        raise ValueError(f"need k >= 1 and lo <= hi, got k={k}, lo={lo}, hi={hi}")
    if mode == "uniform":
        return np.linspace(lo, hi, k)
    if mode != "random":
        raise ValueError(f"target mode must be 'uniform' or 'random', got {mode!r}")
    if rng is None:
        raise ValueError("random targets need an rng")
    t = lo + rng.random(k) * (hi - lo)
    if sandwich:
        t[0], t[-1] = lo, hi
    return t


def select_for_targets(F: np.ndarray, n_survive: int, targets: np.ndarray, *, latency: int = 1) -> np.ndarray:
    """Indices of the ``n_survive`` survivors of objectives ``F`` ``[N, M]`` (minimised; column ``latency`` in ms)
    under the target-latency selection of the module docstring, in the order they were chosen.

    With ``N <= n_survive`` every index is returned.
    """
    from pymoo.operators.survival.rank_and_crowding.metrics import calc_crowding_distance
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    F = np.asarray(F, dtype=np.float64)
    if len(F) <= n_survive:
        return np.arange(len(F))
    fronts, gaps = [], []
    for t in np.atleast_1d(targets):
        Ft = F.copy()
        Ft[:, latency] = np.abs(F[:, latency] - t)
        fronts.append(NonDominatedSorting().do(Ft))
        gaps.append(Ft[:, [latency]])
    chosen: list[int] = []
    taken = np.zeros(len(F), dtype=bool)
    stage = 0
    while len(chosen) < n_survive:
        for per_target, gap in zip(fronts, gaps, strict=True):
            if stage >= len(per_target):
                continue
            new = [int(i) for i in per_target[stage] if not taken[i]]
            room = n_survive - len(chosen)
            if len(new) > room:  # truncate by crowding on |latency - t| over the whole front, largest first
                front = np.asarray(per_target[stage])
                cd = calc_crowding_distance(gap[front])
                order = [int(front[j]) for j in np.argsort(-cd, kind="stable")]
                new = [i for i in order if not taken[i]][:room]
            chosen.extend(new)
            taken[new] = True
            if len(chosen) >= n_survive:
                break
        stage += 1
    return np.asarray(chosen[:n_survive], dtype=np.int64)
