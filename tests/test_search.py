"""The searcher protocol and its loop (cache, rejection, checkpoint / resume, fingerprint), NSGA-II on ZDT1, and the
greedy local search on small knapsacks checked against brute force."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.errors import PrunekitError
from prunekit.search.base import RandomSearch, Searcher, non_dominated, run_search
from prunekit.search.genes import GeneBounds
from prunekit.search.local import GreedyLocalSearch, additive, level_sum
from prunekit.search.nsga2 import NSGA2, NSGA2Config


class Scripted(Searcher):
    """Asks fixed batches, one per round; records what it was told."""

    def __init__(self, batches):
        self.batches = [np.asarray(b, dtype=np.int64).reshape(-1, 2) for b in batches]
        self.n_genes = 2
        self.round = 0
        self.told: list[tuple[list, list]] = []

    @property
    def done(self):
        return self.round >= len(self.batches)

    def ask(self):
        return self.batches[self.round].copy()

    def tell(self, candidates, objectives):
        self.told.append((candidates.tolist(), objectives.tolist()))
        self.round += 1

    def pareto(self):
        rows = [(g, f) for c, o in self.told for g, f in zip(c, o, strict=True) if np.isfinite(f).all()]
        if not rows:
            return np.zeros((0, 2), dtype=np.int64), np.zeros((0, 1))
        g, f = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
        idx = non_dominated(f)
        return g[idx], f[idx]

    def state_dict(self):
        return {"round": self.round, "told": self.told}

    def load_state_dict(self, state):
        self.round, self.told = state["round"], [tuple(t) for t in state["told"]]


# ---------------------------------------------------------------------------------------------- the loop
def test_cache_and_rejection():
    s = Scripted([[[1, 2], [3, 4], [1, 2]], [[3, 4], [5, 6], [9, 9]], [[5, 6]]])
    calls = []

    def evaluate(g):
        calls.append(g.tolist())
        return [float(g.sum()), float(-g[0])]

    res = run_search(s, evaluate, feasible=lambda c: c[:, 0] < 9, progress=False)
    assert calls == [[1, 2], [3, 4], [5, 6]]  # each candidate once, in ask order; [9, 9] never evaluated
    assert s.told[0][1] == [[3.0, -1.0], [7.0, -3.0], [3.0, -1.0]]  # the repeat gets the cached vector
    assert s.told[1][1][0] == [7.0, -3.0] and s.told[1][1][2] == [np.inf, np.inf]  # rejected: +inf everywhere
    assert res.evaluations == 3 and res.rejected == 1 and res.cache_hits == 3
    assert [r["evaluated"] for r in res.history] == [2, 1, 0]
    assert [r["cached"] for r in res.history] == [1, 1, 1]
    assert res.best[0].tolist() == [1, 2] and res.best[1].tolist() == [3.0, -1.0]
    assert {tuple(g) for g in res.pareto_genes.tolist()} == {(1, 2), (3, 4), (5, 6)}
    assert [g for g, _ in res.evaluated] == [(1, 2), (3, 4), (5, 6)]


def test_non_finite_objective_is_a_user_error():
    with pytest.raises(PrunekitError, match="not finite"):
        run_search(Scripted([[[1, 2]]]), lambda g: float("nan"), progress=False)
    with pytest.raises(ValueError, match="objectives"):
        run_search(Scripted([[[1, 2], [2, 3]]]), lambda g: [0.0] * int(g[0]), progress=False)


def test_checkpoint_fingerprint_and_corrupt_file(tmp_path):
    path = tmp_path / "search.json"
    run_search(Scripted([[[1, 2]], [[2, 3]]]), lambda g: float(g[0]), checkpoint=path, fingerprint="a")
    saved = json.loads(path.read_text())
    assert saved["fingerprint"] == "a" and saved["generation"] == 2 and len(saved["cache"]) == 2
    assert not list(tmp_path.glob(".*.tmp"))  # atomic: no temporary left behind
    with pytest.raises(PrunekitError, match="new run dir or --overwrite") as err:
        run_search(Scripted([[[1, 2]]]), lambda g: 0.0, checkpoint=path, fingerprint="b")
    assert "\n" not in str(err.value)
    path.write_text("{not json")
    with pytest.raises(PrunekitError, match="--overwrite"):
        run_search(Scripted([[[1, 2]]]), lambda g: 0.0, checkpoint=path, fingerprint="a")


def test_resumed_run_is_done_without_evaluating(tmp_path):
    path = tmp_path / "s.json"
    first = run_search(Scripted([[[1, 2]], [[2, 3]]]), lambda g: float(g[0]), checkpoint=path, progress=False)

    def never(g):
        raise AssertionError("a finished search evaluated again")

    again = run_search(Scripted([[[1, 2]], [[2, 3]]]), never, checkpoint=path, progress=False)
    assert again.resumed and again.generations == 2 and again.evaluated == first.evaluated


def test_progress_respects_the_environment(capsys, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_NO_PROGRESS", "1")
    run_search(Scripted([[[1, 2]]]), lambda g: 0.0)
    assert capsys.readouterr().err == ""
    run_search(Scripted([[[1, 2]]]), lambda g: 0.0, progress=True, desc="mysearch")
    assert "mysearch" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- NSGA-II
N_VARS, LEVELS = 10, 101  # ZDT1 with 10 variables, each discretised to 0, 0.01, ..., 1.00
REF = np.array([1.1, 1.1])


def zdt1(genes: np.ndarray) -> tuple[float, float]:
    x = genes / (LEVELS - 1)
    g = 1.0 + 9.0 * x[1:].mean()
    return float(x[0]), float(g * (1.0 - np.sqrt(x[0] / g)))


def zdt_bounds() -> GeneBounds:
    return GeneBounds(np.zeros(N_VARS, dtype=np.int64), np.full(N_VARS, LEVELS - 1))


def hypervolume(F: np.ndarray) -> float:
    from pymoo.indicators.hv import HV

    return float(HV(ref_point=REF)(np.asarray(F, dtype=np.float64)))


def test_nsga2_reaches_the_zdt1_front_and_random_search_does_not():
    x1 = np.arange(LEVELS) / (LEVELS - 1)
    true_hv = hypervolume(np.stack([x1, 1.0 - np.sqrt(x1)], axis=1))  # the discretised true front
    assert true_hv == pytest.approx(0.8715, abs=1e-3)  # (the continuous front: 1.21 - 1/3 = 0.8767)
    cfg = NSGA2Config(population=60, generations=150)
    res = run_search(NSGA2(zdt_bounds(), cfg, seed=0), zdt1, progress=False)
    hv = hypervolume(res.pareto_objectives)
    # measured 0.861 ... 0.868 over seeds 0-5 (within 1.3% of the true front): tolerance 2%
    assert hv >= 0.98 * true_hv, (hv, true_hv)
    assert res.evaluations <= cfg.population * (cfg.generations + 1)
    rnd = run_search(
        RandomSearch(zdt_bounds(), batch=cfg.population, generations=cfg.generations + 1, seed=0),
        zdt1,
        progress=False,
    )
    assert rnd.evaluations >= res.evaluations  # at least the same budget
    assert hypervolume(rnd.pareto_objectives) < 0.5 * true_hv  # measured 0.00 ... 0.08
    # the front is non-dominated and its best is the smallest f1
    assert len(non_dominated(res.pareto_objectives)) == len(res.pareto_objectives)
    assert res.best[1][0] == res.pareto_objectives[:, 0].min()


class Killed(Exception):
    pass


def small_nsga(seed=0):
    return NSGA2(zdt_bounds(), NSGA2Config(population=12, generations=6), seed=seed)


@pytest.mark.parametrize("kill", [("generation", 3), ("evaluation", 20), ("evaluation", 1)])
def test_nsga2_resume_is_bit_identical(tmp_path, kill):
    ref = small_nsga()
    ref_res = run_search(ref, zdt1, progress=False)
    path = tmp_path / "nsga.json"
    kind, k = kill
    calls = [0]

    def dying(g):
        calls[0] += 1
        if kind == "evaluation" and calls[0] > k:
            raise Killed
        return zdt1(g)

    def stop(searcher, row):
        if kind == "generation" and row["generation"] == k:
            raise Killed  # the loop stopped right after generation k was checkpointed

    with pytest.raises(Killed):
        run_search(
            small_nsga(), dying, checkpoint=path, checkpoint_every=7, on_generation=stop, progress=False
        )
    saved = json.loads(path.read_text())
    if kind == "generation":  # killed between rounds
        assert saved["generation"] == k and saved["batch_start"] is None
    elif k == 20:  # killed inside round 1, after its checkpoint_every=7 save: part of the round is cached
        assert saved["generation"] == 1 and saved["batch_start"] == 12 < len(saved["cache"]) < 20
    else:  # killed at the first evaluation: only the proposed population was saved
        assert saved["generation"] == 0 and saved["searcher"]["pending"] is not None and not saved["cache"]
    again = small_nsga(seed=99)  # the seed comes back with the state
    res = run_search(again, zdt1, checkpoint=path, checkpoint_every=7, progress=False)
    assert res.resumed
    assert again.state_dict() == ref.state_dict()  # population, ranks, crowding, RNG
    assert res.evaluated == ref_res.evaluated  # same candidates, same order
    assert res.history == ref_res.history
    assert np.array_equal(res.pareto_objectives, ref_res.pareto_objectives)


def test_nsga2_respects_the_constraint_and_small_spaces():
    b = GeneBounds(np.zeros(3, dtype=np.int64), np.full(3, 4))
    seen = []

    def evaluate(g):
        assert g.sum() <= 6
        seen.append(tuple(g))
        return [float(-g.sum()), float(g[0])]

    res = run_search(
        NSGA2(b, NSGA2Config(population=8, generations=10, tries=5), seed=1),
        evaluate,
        feasible=lambda c: c.sum(axis=1) <= 6,
        progress=False,
    )
    assert len(seen) == len(set(seen))
    assert (res.pareto_genes.sum(axis=1) <= 6).all()
    assert res.best[1][0] == -6.0
    with pytest.raises(PrunekitError, match="no feasible candidate"):
        run_search(
            NSGA2(b, NSGA2Config(population=4, generations=1, tries=2)),
            evaluate,
            feasible=lambda c: np.zeros(len(c), dtype=bool),
            progress=False,
        )


# ---------------------------------------------------------------------------------------------- local search
def brute_force(values, weights, budget):
    """The optimum of a multiple-choice knapsack: every item at one level, total weight <= budget."""
    n = len(values)
    best, arg = -np.inf, None
    for a in itertools.product(*(range(len(v)) for v in values)):
        w = sum(weights[i][a[i]] for i in range(n))
        v = sum(values[i][a[i]] for i in range(n))
        if w <= budget and v > best:
            best, arg = v, a
    return best, arg


def greedy(values, weights, budget):
    levels = [len(v) for v in values]
    value, weight = level_sum(values), level_sum(weights)
    s = GreedyLocalSearch(levels, cost=weight)
    res = run_search(
        s, lambda a: -float(value(a[None])[0]), feasible=lambda c: weight(c) <= budget, progress=False
    )
    return res, s, value, weight


def increasing_levels(draw_list):
    return np.concatenate([[0.0], np.cumsum(draw_list)]).tolist()


@st.composite
def knapsack(draw, equal_costs=False):
    """6 items x 3 levels; level 0 = (value 0, weight 0); higher levels add value and weight."""
    values, weights = [], []
    for _ in range(6):
        inc = draw(st.lists(st.integers(1, 20), min_size=2, max_size=2))
        if equal_costs:
            inc = sorted(inc, reverse=True)  # concave: diminishing returns per item
            w = [1, 1]
        else:
            w = draw(st.lists(st.integers(1, 10), min_size=2, max_size=2))
        values.append(increasing_levels(inc))
        weights.append(increasing_levels(w))
    total = sum(w[-1] for w in weights)
    budget = draw(st.integers(0, total))
    return values, weights, budget


@settings(max_examples=60, deadline=None)
@given(knapsack())
def test_greedy_is_never_over_budget_and_locally_optimal(inst):
    values, weights, budget = inst
    res, s, value, weight = greedy(values, weights, budget)
    a = res.best[0]
    assert weight(a[None])[0] <= budget
    # no single further move fits the budget and gains (the search stopped only when none was left)
    for i in range(6):
        if a[i] < 2:
            b = a.copy()
            b[i] += 1
            assert weight(b[None])[0] > budget or value(b[None])[0] <= value(a[None])[0]
    opt, _ = brute_force(values, weights, budget)
    assert -res.best[1][0] <= opt  # never better than the optimum (a sanity check of the objective sign)


@settings(max_examples=40, deadline=None)
@given(knapsack(equal_costs=True))
def test_greedy_is_optimal_with_equal_costs_and_diminishing_returns(inst):
    """Every move costs 1, so the budget allows k moves, and gains diminish per item: the k largest increments
    can be taken in order (each item's increments are taken highest first), so greedy-by-ratio is optimal."""
    values, weights, budget = inst
    res, *_ = greedy(values, weights, budget)
    opt, _ = brute_force(values, weights, budget)
    assert -res.best[1][0] == opt


def test_greedy_fixed_instance_and_moves():
    values = [[0, 10, 12], [0, 4, 8], [0, 9, 9.5]]
    weights = [[0, 2, 4], [0, 1, 2], [0, 3, 6]]
    res, s, value, weight = greedy(values, weights, budget=6)
    # gain per weight added: item0 10/2 = 5, item1 4/1 = 4, item2 9/3 = 3 -> item0; then item1 twice (4/1 each);
    # at weight 4 item2 (+3) no longer fits and item0's second level (+2, gain 2) does: weight 6, value 20
    assert [m[0] for m in s.moves] == [0, 1, 1, 0]
    assert res.best[0].tolist() == [2, 2, 0] and weight(res.best[0][None])[0] == 6 and -res.best[1][0] == 20
    assert brute_force(values, weights, 6) == (23, (1, 1, 1))  # greedy is a heuristic: [1, 1, 1] is better


def test_greedy_start_over_budget_and_additive_helper(tmp_path):
    with pytest.raises(PrunekitError, match="over the budget"):
        run_search(
            GreedyLocalSearch([2, 2]),
            lambda a: 0.0,
            feasible=lambda c: np.zeros(len(c), bool),
            progress=False,
        )
    steps = additive([3, 2], lambda var, lo, hi: 10 * var + hi)
    assert steps(np.array([[0, 0], [2, 1], [1, 0]])).tolist() == [0.0, 1 + 2 + 11, 1.0]
    # resume mid-search gives the same moves
    values, weights = [[0, 5, 6], [0, 3, 7], [0, 2, 3]], [[0, 1, 2], [0, 1, 3], [0, 1, 2]]
    ref_res, ref, *_ = greedy(values, weights, 5)
    value, weight = level_sum(values), level_sum(weights)
    path = tmp_path / "ls.json"

    def stop(searcher, row):
        if row["generation"] == 2:
            raise Killed

    def run(on_generation=None):
        s = GreedyLocalSearch([3, 3, 3], cost=weight)
        r = run_search(
            s,
            lambda a: -float(value(a[None])[0]),
            feasible=lambda c: weight(c) <= 5,
            checkpoint=path,
            on_generation=on_generation,
            progress=False,
        )
        return r, s

    with pytest.raises(Killed):
        run(stop)
    res, s = run()
    assert res.resumed and s.moves == ref.moves and res.evaluated == ref_res.evaluated
