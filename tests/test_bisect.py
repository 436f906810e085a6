"""bisect_monotone: the largest value of a monotone cost within a budget (float and integer domains)."""

from __future__ import annotations

import bisect as pybisect
import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from prunekit.errors import PrunekitError
from prunekit.search import BisectResult, bisect_monotone


def test_float_increasing_hits_target():
    res = bisect_monotone(lambda x: x**2, 0.0, 10.0, 30.0, tol_rel=1e-6)
    assert isinstance(res, BisectResult)
    assert res.value <= 30.0
    assert res.value >= 30.0 * (1 - 1e-6)
    assert res.met
    assert res.x == pytest.approx(math.sqrt(30.0), rel=1e-6)
    assert res.iterations <= 60


def test_float_decreasing_hits_target():
    # cost decreasing in x (e.g. a pruning ratio): the largest model within budget is the smallest feasible x
    res = bisect_monotone(lambda r: 100.0 * (1 - r) ** 2, 0.0, 1.0, 25.0, increasing=False, tol_rel=1e-6)
    assert res.value <= 25.0
    assert res.value == pytest.approx(25.0, rel=1e-6)
    assert res.x == pytest.approx(0.5, rel=1e-5)


def test_tolerance_stops_early_and_zero_tolerance_finds_the_edge():
    calls = []

    def f(x):
        calls.append(x)
        return x

    loose = bisect_monotone(f, 0.0, 1.0, 0.3, tol_rel=0.2)
    assert loose.met and 0.24 <= loose.value <= 0.3
    assert loose.iterations == len(calls) < 10
    exact = bisect_monotone(lambda x: x, 0.0, 1.0, 0.3, tol_rel=0.0)
    assert exact.value <= 0.3 and exact.value == pytest.approx(0.3, abs=1e-9)


def test_integer_domain():
    res = bisect_monotone(lambda k: 3 * k, 0, 100, 100, integer=True, tol_rel=0.0)
    assert res.x == 33 and isinstance(res.x, int) and res.value == 99
    assert not res.met  # 99 is the best feasible value but not within tol_rel=0 of 100
    res = bisect_monotone(lambda k: 1000 - 7 * k, 0, 200, 500, integer=True, increasing=False, tol_rel=0.0)
    assert res.x == 72 and res.value == 496  # 71 gives 503 > 500


def test_whole_domain_feasible_returns_the_largest_end():
    assert bisect_monotone(lambda x: x, 0.0, 5.0, 10.0).x == 5.0
    assert bisect_monotone(lambda x: -x, 0.0, 5.0, 10.0, increasing=False).x == 0.0
    assert bisect_monotone(lambda k: k, 3, 3, 10, integer=True).x == 3


def test_unreachable_target_names_the_smallest_value():
    with pytest.raises(PrunekitError, match=r"smallest reachable MACs is 1e\+06"):
        bisect_monotone(lambda x: 1e6 + x, 0.0, 1.0, 10.0, what="MACs")
    with pytest.raises(PrunekitError, match="smallest reachable value is 5"):
        bisect_monotone(lambda r: 10 - 5 * r, 0.0, 1.0, 4.0, increasing=False)


def test_bad_arguments():
    with pytest.raises(ValueError):
        bisect_monotone(lambda x: x, 1.0, 0.0, 0.5)
    with pytest.raises(ValueError):
        bisect_monotone(lambda x: float("nan"), 0.0, 1.0, 0.5)


steps = st.lists(st.integers(0, 50), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(incs=steps, start=st.integers(0, 20), target=st.integers(0, 1200), increasing=st.booleans())
def test_property_integer_step_functions(incs, start, target, increasing):
    """On any monotone integer step function the answer is the exact edge of the feasible region."""
    table = [start]
    for d in incs:
        table.append(table[-1] + d)  # non-decreasing (with flat steps)
    n = len(table) - 1
    f = (lambda k: table[k]) if increasing else (lambda k: table[n - k])
    if table[0] > target:
        with pytest.raises(PrunekitError):
            bisect_monotone(f, 0, n, target, integer=True, increasing=increasing, tol_rel=0.0)
        return
    res = bisect_monotone(f, 0, n, target, integer=True, increasing=increasing, tol_rel=0.0)
    best = pybisect.bisect_right(table, target) - 1  # largest index of the sorted table with value <= target
    assert res.value == table[best]
    assert res.value <= target
    x_expected = best if increasing else n - best
    # several x may share the best value (flat steps); any of them is the largest model in budget
    assert f(res.x) == table[best]
    assert (res.x >= x_expected) if not increasing else (res.x <= x_expected)
    assert res.iterations <= 2 + math.ceil(math.log2(n + 1)) + 1


@settings(max_examples=200, deadline=None)
@given(
    edges=st.lists(st.floats(0.001, 0.999), min_size=1, max_size=20, unique=True),
    jumps=st.lists(st.floats(0.1, 10.0), min_size=20, max_size=20),
    target=st.floats(0.0, 60.0),
)
def test_property_float_step_functions(edges, jumps, target):
    """Float domain: the value found is the largest step value within the target (x on that step, at its upper
    edge unless the value equals the target exactly)."""
    edges = sorted(edges)
    # steps narrower than the bisection's documented resolution (~1e-12 of the domain) cannot be resolved: a step
    # [0.001, 0.0010000000000000002] (one float apart) was found once by hypothesis
    assume(all(b - a > 1e-9 for a, b in zip(edges, edges[1:], strict=False)))
    levels = [0.0]
    for j in jumps[: len(edges)]:
        levels.append(levels[-1] + j)

    def f(x):
        return levels[pybisect.bisect_right(edges, x)]

    res = bisect_monotone(f, 0.0, 1.0, target, tol_rel=0.0)
    best = max(v for v in levels if v <= target)
    assert res.value == best
    i = levels.index(best)
    assert (i == 0 or res.x >= edges[i - 1]) and (i == len(edges) or res.x < edges[i])
    if best < target and i < len(edges):  # not stopped by the tolerance: x sits at the edge of the step
        assert edges[i] - 1e-9 <= res.x
