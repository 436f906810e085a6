"""Search utilities shared by budgeted pruning methods.

* :mod:`prunekit.search.bisect`: bisection of a monotone cost to a budget (MACs target, ...).
* :mod:`prunekit.search.base`: the :class:`Searcher` protocol (``ask`` / ``tell`` objective vectors) and
  :func:`run_search`, the one loop that caches, rejects infeasible candidates before evaluation, checkpoints and
  resumes; :class:`RandomSearch`, the baseline.
* searchers on the protocol: :class:`~prunekit.search.evolution.GeneticSearch` (MetaPruning's GA),
  :class:`~prunekit.search.nsga2.NSGA2` (multi-objective), :class:`~prunekit.search.local.GreedyLocalSearch`
  (GConv's budgeted greedy local search); :class:`~prunekit.search.genes.GeneBounds`, their integer genes.
"""

from prunekit.search.base import RandomSearch, Searcher, SearchResult, non_dominated, run_search
from prunekit.search.bisect import BisectResult, bisect_monotone
from prunekit.search.evolution import EvolutionConfig, GeneticSearch
from prunekit.search.genes import GeneBounds
from prunekit.search.local import GreedyLocalSearch, additive, level_sum
from prunekit.search.nsga2 import NSGA2, NSGA2Config

__all__ = [
    "NSGA2",
    "BisectResult",
    "EvolutionConfig",
    "GeneBounds",
    "GeneticSearch",
    "GreedyLocalSearch",
    "NSGA2Config",
    "RandomSearch",
    "SearchResult",
    "Searcher",
    "additive",
    "bisect_monotone",
    "level_sum",
    "non_dominated",
    "run_search",
]
