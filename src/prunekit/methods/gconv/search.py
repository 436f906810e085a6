"""GConv's group-configuration search: the seed's ``MAX_COST`` local search (arXiv 1811.09341, §3.3), as meant.

Every regroupable layer ``i`` has candidate group counts ``G_i`` (descending: level 0 is its largest ``G``, the
fewest parameters). The search starts with every layer at level 0 and repeatedly moves one layer to its next
smaller ``G``, choosing the move with the largest **kept-mass gain per unit of cost added** (parameters, MACs or
predicted ms), among the moves that keep the budget, until none does (the generic
:class:`~prunekit.search.local.GreedyLocalSearch`). The objective is the mean over layers of the kept *fraction*
of each layer's criterion mass (the seed's relative cost: the MBM cost divided by the layer's total, averaged).

Where the seed's ``gopt.py`` differs, and why this follows the paper: it applies the step whose resulting mean cost
is the largest -- the layer whose smaller ``G`` gains the *least* kept mass, contrary to its own comment -- and it
checks the budget after the step, so its answer can be one step over the budget. Here every accepted step keeps
the budget (an infeasible start is an error) and the best ratio is taken.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prunekit.search.base import run_search
from prunekit.search.local import GreedyLocalSearch, level_sum


@dataclass
class SearchOutcome:
    """The chosen ``{layer: G}`` (G > 1 only), the moves ``[{layer, from, to, gain, cost_added}]`` and the mean
    kept fraction."""

    choice: dict[str, int]
    moves: list[dict] = field(default_factory=list)
    kept_fraction: float = 0.0


def max_cost_search(
    levels: Mapping[str, Sequence[int]],
    kept_fraction: Mapping[str, Mapping[int, float]],
    cost: Mapping[str, Mapping[int, float]],
    feasible: Callable[[dict[str, np.ndarray]], np.ndarray],
    *,
    checkpoint: str | Path | None = None,
    fingerprint: str | None = None,
) -> SearchOutcome:
    """Run the local search.

    Args:
        levels: per layer, its candidate group counts, **descending** (level 0 = largest G).
        kept_fraction: per layer and G, the fraction of the layer's criterion mass a G-group conv keeps (1 at G=1).
        cost: per layer and G, the cost the gain is divided by (the layer's parameters, MACs or ms at that G).
        feasible: ``feasible({layer: G [N]}) -> bool [N]``: the budget, on a population of group choices.
        checkpoint, fingerprint: resumable search state (:func:`~prunekit.search.base.run_search`).

    Returns:
        :class:`SearchOutcome`; its choice satisfies ``feasible``.

    Raises:
        PrunekitError: the start (every layer at its largest G) is already over the budget.
    """
    names = list(levels)
    counts = [len(levels[n]) for n in names]
    loss_table = [[-kept_fraction[n][g] / max(1, len(names)) for g in levels[n]] for n in names]
    cost_table = [[float(cost[n][g]) for g in levels[n]] for n in names]
    loss = level_sum(loss_table)
    gs = [np.asarray(levels[n], dtype=np.int64) for n in names]

    def groups_of(assignments: np.ndarray) -> dict[str, np.ndarray]:
        a = np.asarray(assignments, dtype=np.int64).reshape(-1, len(names))
        return {n: gs[i][a[:, i]] for i, n in enumerate(names)}

    searcher = GreedyLocalSearch(counts, cost=level_sum(cost_table))
    result = run_search(
        searcher,
        lambda genes: float(loss(np.asarray(genes)[None])[0]),
        feasible=lambda pop: np.asarray(feasible(groups_of(pop)), dtype=bool),
        checkpoint=checkpoint,
        fingerprint=fingerprint,
        desc="gconv search",
    )
    del result
    final = groups_of(searcher.current)
    choice = {n: int(g[0]) for n, g in final.items() if int(g[0]) > 1}
    moves = [
        {
            "layer": names[int(v)],
            "from": int(gs[int(v)][int(a)]),
            "to": int(gs[int(v)][int(b)]),
            "gain": float(gain),
            "cost_added": float(added),
        }
        for v, a, b, gain, added in searcher.moves
    ]
    mean_kept = float(np.mean([kept_fraction[n][int(final[n][0])] for n in names])) if names else 1.0
    return SearchOutcome(choice, moves, mean_kept)
