"""JCW's search machinery on the NSGA-II searcher (issue #13): SBX and polynomial mutation on gene indices, the
target-latency environmental selection on a toy two-objective problem, and a bit-identical resume with the seed's
settings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prunekit.search.base import run_search
from prunekit.search.genes import GeneBounds, new_rng
from prunekit.search.nsga2 import NSGA2, NSGA2Config
from prunekit.search.targets import sample_targets, select_for_targets


def _bounds():
    return GeneBounds(np.array([0, 2, 5, 0]), np.array([10, 8, 5, 3]))  # gene 2 is fixed


def test_sbx_and_polynomial_mutation_stay_on_the_grid_within_bounds():
    b, rng = _bounds(), new_rng(0)
    a, c = b.random(rng, 200), b.random(rng, 200)
    kids = b.sbx(rng, a, c, eta=0.5, prob=0.5)
    assert kids.shape == (400, 4) and kids.dtype == np.int64 and b.contains(kids).all()
    assert (kids[:, 2] == 5).all()
    assert (kids != np.concatenate([a, c])).any()  # something crossed
    same = b.sbx(rng, a, c, eta=0.5, prob=0.0)  # no gene crosses: the children are the parents
    assert (same == np.concatenate([a, c])).all()
    mut = b.polynomial(rng, a, eta=15.0, prob=1.0)
    assert b.contains(mut).all() and (mut[:, 2] == 5).all() and (mut != a).any()
    assert (b.polynomial(rng, a, eta=15.0, prob=0.0) == a).all()
    # a large distribution index keeps children close to their parents
    near = b.polynomial(rng, a, eta=200.0, prob=1.0)
    far = b.polynomial(rng, a, eta=0.5, prob=1.0)
    assert np.abs(near - a).mean() < np.abs(far - a).mean()


# (loss, latency): B dominates A in the plain sense, but A sits exactly at the target latency 0.5
A, B, C, D, E = (0.8, 0.5), (0.3, 0.45), (0.1, 0.9), (0.9, 0.1), (0.95, 0.3)
TOY = np.array([A, B, C, D, E])


def test_target_selection_keeps_the_model_at_the_target_that_plain_nsga2_drops():
    from pymoo.core.population import Population
    from pymoo.core.problem import Problem
    from pymoo.operators.survival.rank_and_crowding import RankAndCrowding

    picked = select_for_targets(TOY, 3, np.array([0.5]))
    assert sorted(picked.tolist()) == [0, 1, 2]  # A, B, C: front 0 of (loss, |latency - 0.5|)
    plain = RankAndCrowding().do(
        Problem(n_var=1, n_obj=2), Population.new("X", np.arange(5)[:, None], "F", TOY), n_survive=3
    )
    assert sorted(int(x) for x in plain.get("X").ravel()) == [1, 2, 3]  # B, C, D: A is dominated by B


def test_an_overflowing_front_is_crowded_on_its_distance_to_the_target_not_on_raw_latency():
    # one front of five in (loss, |latency - 10|): gaps 0, 1, 3, 4, 10 with falling losses; room for three.
    # Crowding on the gap keeps the extremes (gap 0, gap 10) and D (gap 4: the widest interval, 7/10); crowding on
    # the raw latency (6, 10, 11, 13, 20) would keep D and E (its extremes) and C (9/14) instead.
    F = np.array([[0.5, 10.0], [0.4, 11.0], [0.3, 13.0], [0.2, 6.0], [0.1, 20.0]])
    picked = select_for_targets(F, 3, np.array([10.0]))
    assert sorted(picked.tolist()) == [0, 3, 4]


def test_target_selection_goes_round_robin_over_the_targets_front_by_front():
    # target 0.5: front 0 = {A, B, C}; target 0.1: front 0 = {B, C, D} -> D comes before any second front
    picked = select_for_targets(TOY, 4, np.array([0.5, 0.1]))
    assert picked.tolist()[:3] != [] and sorted(picked.tolist()) == [0, 1, 2, 3]
    assert len(set(picked.tolist())) == 4
    # one target, four survivors: front 0, then the second front {D, E} truncated by crowding to one member
    one = select_for_targets(TOY, 4, np.array([0.5]))
    assert set(one[:3].tolist()) == {0, 1, 2} and one[3] in (3, 4)
    assert select_for_targets(TOY, 9, np.array([0.5])).tolist() == [0, 1, 2, 3, 4]


def test_sample_targets():
    assert sample_targets(1.0, 3.0, 3).tolist() == [1.0, 2.0, 3.0]
    t = sample_targets(1.0, 3.0, 5, mode="random", sandwich=True, rng=new_rng(0))
    assert t[0] == 1.0 and t[-1] == 3.0 and ((t >= 1.0) & (t <= 3.0)).all()
    with pytest.raises(ValueError):
        sample_targets(3.0, 1.0, 2)
    with pytest.raises(ValueError):
        NSGA2(_bounds(), NSGA2Config.jcw())  # targets need a latency range


def toy(genes: np.ndarray) -> tuple[float, float]:
    """Latency grows with the gene sum; loss falls with it, with a penalty for unequal genes."""
    x = genes / 10.0
    lat = float(x.mean())
    return float((1.0 - lat) ** 2 + 0.2 * x.std()), lat


def _jcw_search(seed=0, generations=8):
    cfg = NSGA2Config.jcw(population=16, generations=generations)
    b = GeneBounds(np.zeros(5, dtype=np.int64), np.full(5, 10))
    return NSGA2(b, cfg, seed=seed, target_range=(0.0, 1.0))


def test_jcw_search_spreads_its_population_over_the_target_latencies():
    s = _jcw_search(generations=30)  # measured: within 0.08 of every target (seed 0)
    run_search(s, toy, progress=False)
    lat = s.objs[:, 1]
    for t in s.last_targets:  # 0, 1/3, 2/3, 1
        assert np.abs(lat - t).min() <= 0.1, (t, sorted(lat))
    assert s.last_targets == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])


class Killed(Exception):
    pass


def test_jcw_search_resume_is_bit_identical(tmp_path):
    ref = _jcw_search()
    ref_res = run_search(ref, toy, progress=False)
    path = tmp_path / "s.json"

    def stop(searcher, row):
        if row["generation"] == 4:
            raise Killed

    with pytest.raises(Killed):
        run_search(_jcw_search(), toy, checkpoint=path, on_generation=stop, progress=False)
    assert json.loads(path.read_text())["generation"] == 4
    again = _jcw_search(seed=5)
    res = run_search(again, toy, checkpoint=path, progress=False)
    assert res.resumed and again.state_dict() == ref.state_dict()
    assert res.evaluated == ref_res.evaluated and res.history == ref_res.history
