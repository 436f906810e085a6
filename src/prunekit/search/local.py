"""Greedy local search over discrete, ordered per-variable levels under a budget, on the Searcher protocol.

The GConv seed's ``MAX_COST`` search (Zhao & Luk, "Efficient Structured Pruning and Architecture Searching for
Group Convolution", arXiv 1811.09341, §3.3), made generic: every variable ``i`` has ``levels[i]`` ordered levels,
level 0 the cheapest (GConv: a layer at its largest legal group count G; a higher level = the next smaller G).
Start with every variable at ``start`` (default: its cheapest level) and repeatedly move **one** variable to its
next level, choosing among the moves that keep the budget the one with the largest **gain per cost added**
(GConv: kept criterion mass gained per parameter or MAC added); stop when no move within the budget gains more than
``min_gain``. The result is therefore never over budget (the seed checked the budget *after* the step and could
return a state one step over it; it also picked the move with the smallest gain -- both fixed here, following the
paper).

On the protocol (:func:`~prunekit.search.base.run_search` drives it):

* round 0 asks the start assignment alone; if the loop's ``feasible`` (the budget predicate) rejects it, the search
  stops with a :class:`~prunekit.errors.PrunekitError` (nothing fits the budget);
* every later round asks the candidate moves of one step (the current assignment with one variable one level up,
  one row per movable variable); the loop rejects those over budget (told ``+inf``) and evaluates the others;
* ``tell`` reads the loss (objective column 0, minimised, e.g. ``-kept mass``): ``gain = loss(current) -
  loss(move)``, ``cost added = cost(move) - cost(current)`` from the ``cost`` callable (a move adding no cost has
  an infinite ratio); ties go to the larger gain, then the lower variable index.

For separable problems -- a per-variable ``gain(var, from_level, to_level)`` or a per-level table -- build the
vectorised loss / cost with :func:`additive` or :func:`level_sum`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.search.base import Searcher, as_objectives

__all__ = ["STATE_FORMAT", "GreedyLocalSearch", "additive", "level_sum"]

STATE_FORMAT = "prunekit.search.local/1"

Cost = Callable[[np.ndarray], np.ndarray]


def level_sum(values: Sequence[Sequence[float]], base: float = 0.0) -> Cost:
    """``f(assignments int [N, n]) -> float [N]`` with ``f(a) = base + sum_i values[i][a_i]`` (``values``: one
    list per variable, one entry per level; ragged is fine)."""
    n = len(values)
    width = max((len(v) for v in values), default=0)
    table = np.full((n, max(width, 1)), np.nan)
    for i, v in enumerate(values):
        table[i, : len(v)] = np.asarray(v, dtype=np.float64)
    rows = np.arange(n)

    def f(assignments: np.ndarray) -> np.ndarray:
        a = np.asarray(assignments, dtype=np.int64).reshape(-1, n)
        return base + table[rows, a].sum(axis=1)

    return f


def additive(levels: Sequence[int], step: Callable[[int, int, int], float], base: float = 0.0) -> Cost:
    """``f(assignments [N, n]) -> [N]``: ``base`` plus, per variable, the sum of ``step(var, l, l + 1)`` over the
    moves from level 0 up to its level (e.g. the gain or the parameters added by each move)."""
    return level_sum(
        [
            np.concatenate([[0.0], np.cumsum([step(i, k, k + 1) for k in range(int(n) - 1)])])
            for i, n in enumerate(levels)
        ],
        base,
    )


class GreedyLocalSearch(Searcher):
    """Greedy best-ratio local search (see the module docstring).

    Args:
        levels: number of levels of each variable (``>= 1``).
        cost: ``cost(assignments int64 [N, n]) -> float [N]``, the cost the ratio divides by (e.g. parameters or
            MACs; the *budget* itself is the loop's ``feasible`` predicate). None: every move costs 1 (greedy by
            gain).
        start: the initial assignment (default: all zeros, every variable at its cheapest level).
        min_gain: a move must lower the loss by more than this.
        max_steps: stop after this many moves (None: until no move helps).

    State: the current assignment, its loss and cost, the moves taken ``[var, from, to, gain, cost_added]``, and
    the round in progress.
    """

    n_objectives = 1

    def __init__(
        self,
        levels: Sequence[int],
        *,
        cost: Cost | None = None,
        start: Sequence[int] | None = None,
        min_gain: float = 0.0,
        max_steps: int | None = None,
    ) -> None:
        self.levels = np.asarray(levels, dtype=np.int64).reshape(-1)
        if (self.levels < 1).any():
            raise ValueError("every variable needs at least one level")
        self.n_genes = int(self.levels.size)
        self.cost = cost
        self.start = (
            np.zeros(self.n_genes, dtype=np.int64) if start is None else np.asarray(start, dtype=np.int64)
        )
        if (
            self.start.shape != self.levels.shape
            or (self.start < 0).any()
            or (self.start >= self.levels).any()
        ):
            raise ValueError("start must give every variable a level in 0 .. levels - 1")
        self.min_gain, self.max_steps = float(min_gain), max_steps
        self.current: np.ndarray | None = None
        self.loss = self.cur_cost = 0.0
        self.moves: list[list[float]] = []
        self.pending: np.ndarray | None = None
        self._done = False

    # ------------------------------------------------------------------ protocol
    @property
    def done(self) -> bool:
        return self._done

    @property
    def max_generations(self) -> int:
        steps = int((self.levels - 1 - self.start).sum())
        return 1 + (steps if self.max_steps is None else min(steps, self.max_steps))

    def _cost(self, assignments: np.ndarray) -> np.ndarray:
        if self.cost is None:
            return np.zeros(len(assignments))
        return np.asarray(self.cost(assignments), dtype=np.float64).reshape(-1)

    def ask(self) -> np.ndarray:
        if self._done:
            return np.zeros((0, self.n_genes), dtype=np.int64)
        if self.pending is None:
            if self.current is None:
                self.pending = self.start[None].copy()
            else:
                movable = np.flatnonzero(self.current < self.levels - 1)
                cands = np.repeat(self.current[None], len(movable), axis=0)
                cands[np.arange(len(movable)), movable] += 1
                self.pending = cands
        return self.pending.copy()

    def tell(self, candidates: np.ndarray, objectives: np.ndarray) -> None:
        cands = np.asarray(candidates, dtype=np.int64).reshape(-1, self.n_genes)
        F = as_objectives(objectives, len(cands))
        self.pending = None
        if self.current is None:
            if not np.isfinite(F[0, 0]):
                raise PrunekitError(
                    f"the starting assignment {self.start.tolist()} (every variable at its cheapest level) is already "
                    "over the budget; raise the budget or add cheaper levels"
                )
            self.current, self.loss = cands[0].copy(), float(F[0, 0])
            self.cur_cost = float(self._cost(cands[:1])[0])
        else:
            self._step(cands, F[:, 0])
        if self.max_steps is not None and len(self.moves) >= self.max_steps:
            self._done = True
        if (self.current >= self.levels - 1).all():
            self._done = True

    def _step(self, cands: np.ndarray, loss: np.ndarray) -> None:
        ok = np.isfinite(loss)
        gain = np.where(ok, self.loss - loss, -np.inf)
        ok &= gain > self.min_gain
        if not ok.any():
            self._done = True
            return
        costs = self._cost(cands)
        added = costs - self.cur_cost if self.cost is not None else np.ones(len(cands))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(added > 0, gain / np.where(added > 0, added, 1.0), np.inf)
        ratio = np.where(ok, ratio, -np.inf)
        best = ratio.max()
        tied = np.flatnonzero(ratio == best)
        j = int(tied[np.argmax(gain[tied])])  # ties: the larger gain, then the first row (lowest variable)
        var = int(np.flatnonzero(cands[j] != self.current)[0])
        self.moves.append([var, int(self.current[var]), int(cands[j, var]), float(gain[j]), float(added[j])])
        self.current, self.loss, self.cur_cost = cands[j].copy(), float(loss[j]), float(costs[j])

    def pareto(self) -> tuple[np.ndarray, np.ndarray]:
        """The current assignment (the search's answer) and its loss; empty before the start was told."""
        if self.current is None:
            return np.zeros((0, self.n_genes), dtype=np.int64), np.zeros((0, 1))
        return self.current[None].copy(), np.array([[self.loss]])

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "levels": self.levels.tolist(),
            "current": None if self.current is None else self.current.tolist(),
            "loss": self.loss,
            "cost": self.cur_cost,
            "moves": self.moves,
            "pending": None if self.pending is None else self.pending.tolist(),
            "done": self._done,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise PrunekitError("not a prunekit local-search state (format tag missing); use a new run dir")
        if state["levels"] != self.levels.tolist():
            raise PrunekitError(
                "local-search state was saved for other variables / levels; use a new run dir"
            )
        cur = state["current"]
        self.current = None if cur is None else np.array(cur, dtype=np.int64)
        self.loss, self.cur_cost = float(state["loss"]), float(state["cost"])
        self.moves = [list(m) for m in state["moves"]]
        p = state["pending"]
        self.pending = None if p is None else np.array(p, dtype=np.int64).reshape(-1, self.n_genes)
        self._done = bool(state["done"])
