"""Bisection of a monotone cost to a budget: "the largest model that fits".

Every budgeted method reduces to the same one-dimensional problem: a knob ``x`` (a width multiplier, a pruning ratio,
a number of channels removed, a global gate threshold) moves the model's cost ``f(x)`` (MACs, latency) monotonically,
and we want the model **as large as possible whose cost does not exceed the budget**:

    maximise f(x)  subject to  f(x) <= target,  x in [lo, hi]

:func:`bisect_monotone` solves it for non-decreasing (``increasing=True``) or non-increasing ``f``, on a float or an
integer domain. ``f`` may be a step function (rounded channel counts): the answer is then the edge of the step, and
the value reached may lie below the target when ``f`` jumps over it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from prunekit.errors import PrunekitError

__all__ = ["BisectResult", "bisect_monotone"]


@dataclass(frozen=True)
class BisectResult:
    """Outcome of :func:`bisect_monotone`.

    Attributes:
        x: the chosen argument (``int`` on an integer domain): the feasible point (``f(x) <= target``) with the
            largest ``f`` found.
        value: ``f(x)`` (always ``<= target``).
        iterations: evaluations of ``f`` spent (the two end points included).
        met: True when ``value`` is within ``tol_rel`` of the target (``target - value <= tol_rel * |target|``);
            False means the best feasible value found is further below the target, e.g. because ``f`` jumps over
            it (a step function) or ``max_iter`` ran out, or because even the largest model is below the target.
    """

    x: float | int
    value: float
    iterations: int
    met: bool


def bisect_monotone(
    f: Callable[[float], float],
    lo: float,
    hi: float,
    target: float,
    *,
    increasing: bool = True,
    tol_rel: float = 1e-3,
    max_iter: int = 60,
    integer: bool = False,
    what: str = "value",
) -> BisectResult:
    """Find the ``x`` in ``[lo, hi]`` whose ``f(x)`` is as large as possible while ``f(x) <= target``.

    Convention: ``f`` is a *cost* (e.g. MACs) that is monotone in ``x`` — non-decreasing when ``increasing`` (e.g.
    ``x`` = width multiplier), non-increasing otherwise (e.g. ``x`` = pruning ratio or channels removed). We look
    for the **largest model that fits the budget**: for increasing ``f`` the largest feasible ``x``, for decreasing
    ``f`` the smallest feasible ``x``. The search keeps a feasible end ``a`` (``f(a) <= target``) and an infeasible
    end ``b`` and halves ``[a, b]`` until ``f(a)`` is within ``tol_rel`` of the target, the interval cannot shrink any
    more (``b - a <= 1`` on integers, ~1e-12 of ``hi - lo`` on floats), or ``max_iter`` evaluations were spent.
    With ``tol_rel=0`` it returns the exact edge of the feasible region (up to float resolution).

    Args:
        f: the monotone cost, called with a ``float`` (or an ``int`` when ``integer``); must return a finite number.
        lo, hi: the domain ``lo <= hi`` (integers when ``integer``).
        target: the budget, in the units of ``f`` (e.g. MACs).
        increasing: whether ``f`` is non-decreasing (True) or non-increasing (False) in ``x``.
        tol_rel: stop once ``target - f(x) <= tol_rel * |target|`` (relative slack accepted below the target).
        max_iter: maximum number of evaluations of ``f`` (end points included; at least 2 are needed).
        integer: search integer ``x`` only.
        what: name of the cost in error messages (e.g. ``"MACs"``).

    Returns:
        :class:`BisectResult` ``(x, value, iterations, met)``.

    Raises:
        PrunekitError: the target is unreachable — even the smallest value (``f(lo)`` when increasing, ``f(hi)``
            otherwise) exceeds it; the message gives that smallest reachable value.
        ValueError: ``lo > hi``, a negative ``tol_rel``, ``max_iter < 2``, or ``f`` returned a non-finite value.
    """
    if integer:
        lo, hi = int(math.ceil(lo)), int(math.floor(hi))
    if not lo <= hi:
        raise ValueError(f"bisect_monotone needs lo <= hi, got [{lo}, {hi}]")
    if tol_rel < 0:
        raise ValueError(f"tol_rel must be >= 0, got {tol_rel}")
    if max_iter < 2:
        raise ValueError(f"max_iter must be >= 2, got {max_iter}")

    calls = 0

    def cost(x: float | int) -> float:
        nonlocal calls
        calls += 1
        v = float(f(x))
        if not math.isfinite(v):
            raise ValueError(f"bisect_monotone: f({x}) = {v} is not finite")
        return v

    def close(v: float) -> bool:
        return target - v <= tol_rel * abs(target)

    # a: the end with the smallest cost (feasible side); b: the end with the largest cost
    a, b = (lo, hi) if increasing else (hi, lo)
    fa = cost(a)
    if fa > target:
        raise PrunekitError(
            f"{what} target {target:.6g} is unreachable: the smallest reachable {what} is {fa:.6g}"
        )
    if a == b:
        return BisectResult(a, fa, calls, close(fa))
    fb = cost(b)
    if fb <= target:
        return BisectResult(b, fb, calls, close(fb))
    # invariant: f(a) <= target < f(b)
    min_gap = 1 if integer else 1e-12 * (hi - lo)
    while calls < max_iter and not close(fa) and abs(b - a) > min_gap:
        mid = (a + b) // 2 if integer else a + (b - a) / 2
        if mid in (a, b):  # float resolution reached
            break
        fm = cost(mid)
        if fm <= target:
            a, fa = mid, fm
        else:
            b = mid
    return BisectResult(a, fa, calls, close(fa))
