"""Evolutionary search over integer encodings: the MetaPruning genetic algorithm as a resumable state machine.

Liu et al., "MetaPruning", ICCV 2019, §3.3 (Algorithm 1) and the seed's ``searching/search.py``: every iteration
proposes a population of encodings -- ``mutations`` children of the top-``parents`` encodings seen so far (each gene
mutated with probability ``mutation_prob`` to a *different* value: ``low + (old - low + r) mod n``, ``r`` uniform in
``1..n-1``), ``crossovers`` children of two distinct parents (uniform gene mask), then uniformly random encodings up
to ``population`` (the first iteration is all random). A proposal is kept only if it is **feasible** (a vectorised
constraint, e.g. a MACs window from the analytic cost model -- rejected *before* evaluation) and **new** (never
evaluated before, not already proposed in this iteration). The kept proposals are evaluated (higher fitness is
better) and cached; the parents of the next iteration are the best ``parents`` of everything evaluated so far.
Seed defaults: population 50, parents 10, 25 mutations (probability 0.1), 25 crossovers, 20 iterations (at most
1,000 evaluations); mutation / crossover stop after ``10 x`` their count in proposals (the seed's retry limits).

:class:`GeneticSearch` implements the :class:`~prunekit.search.base.Searcher` protocol: one ``ask`` / ``tell``
round per iteration (``ask`` returns the iteration's population, ``tell`` its objectives: minimised, so the
objective is ``-fitness``); :func:`~prunekit.search.base.run_search` drives it, caches, checkpoints and resumes.
The constraint is a *screening* predicate here (:meth:`~prunekit.search.base.Searcher.bind_feasible`, or the
``feasible`` argument): the seed's retry limits count infeasible proposals, so they are filtered while proposing and
the loop's own check never rejects a GA candidate. The gene operators are
:class:`~prunekit.search.genes.GeneBounds` (re-exported here).

**Resume.** All randomness comes from one ``numpy.random.Generator`` (PCG64) seeded from the config; its state, the
cache of evaluated encodings, the pending population of the current iteration and the history are in
:meth:`GeneticSearch.state_dict` (plain JSON data). ``run_search(..., checkpoint=path)`` saves it after proposing
each population, every ``checkpoint_every`` evaluations and after each iteration; a search restored from any of
those checkpoints gives exactly the result of an uninterrupted run, provided the evaluation is deterministic.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from prunekit.errors import PrunekitError
from prunekit.search.base import Feasible, Searcher, as_objectives
from prunekit.search.genes import GeneBounds, new_rng, rng_from_state, rng_state

__all__ = ["EvolutionConfig", "GeneBounds", "GeneticSearch", "STATE_FORMAT"]

log = logging.getLogger(__name__)

STATE_FORMAT = "prunekit.search.evolution/2"


class EvolutionConfig(BaseModel):
    """Hyper-parameters of the genetic search (defaults: the MetaPruning seed).

    Attributes:
        population: candidates evaluated per iteration (seed 50).
        parents: the top-k encodings (over everything evaluated so far) that mutation / crossover start from (10).
        mutations: mutated children per iteration (25). mutation_prob: per-gene mutation probability (0.1).
        crossovers: crossover children per iteration (25).
        iterations: number of populations evaluated, the first one random (20).
        retry_factor: mutation / crossover give up after ``retry_factor x`` their count in proposals (seed 10).
        random_tries: random fill gives up after this many proposals per missing candidate (the random fill of a
            narrow window may need many proposals; they are cheap, vectorised constraint checks).
        checkpoint_every: checkpoint every this many evaluations (besides once per iteration; the
            ``checkpoint_every`` of :func:`~prunekit.search.base.run_search`).
        seed: RNG seed; None = the run's seed.
    """

    model_config = ConfigDict(extra="forbid")
    population: int = Field(50, ge=1)
    parents: int = Field(10, ge=1)
    mutations: int = Field(25, ge=0)
    mutation_prob: float = Field(0.1, gt=0.0, le=1.0)
    crossovers: int = Field(25, ge=0)
    iterations: int = Field(20, ge=1)
    retry_factor: int = Field(10, ge=1)
    random_tries: int = Field(2000, ge=1)
    checkpoint_every: int = Field(10, ge=1)
    seed: int | None = None

    @model_validator(mode="after")
    def _check(self) -> EvolutionConfig:
        if self.mutations + self.crossovers > self.population:
            raise ValueError(
                f"mutations + crossovers ({self.mutations} + {self.crossovers}) exceed the population "
                f"({self.population}); lower them or raise population"
            )
        return self


class GeneticSearch(Searcher):
    """The MetaPruning GA over integer encodings (see the module docstring), one iteration at a time.

    Args:
        bounds: per-gene inclusive bounds.
        cfg: :class:`EvolutionConfig`.
        feasible: ``feasible(genes int64 [N, G]) -> bool [N]``; infeasible proposals are never evaluated (None:
            the predicate ``run_search(feasible=...)`` binds, or no constraint).
        seed: RNG seed (``cfg.seed`` wins when set).
        random_bounds: optional narrower bounds for the random proposals only (the seed's ResNet samples ids in
            ``[12, 24)``); mutation / crossover use ``bounds``.
        canonical: optional ``canonical(genes [N, G]) -> [N, G]`` mapping encodings that decode to the same
            candidate onto one representative (e.g. scales that round to the same width); applied to every proposal
            before the duplicate check, so no candidate is evaluated twice under two spellings.

    Typical use (fitness is maximised, the protocol minimises: tell ``-fitness``)::

        ga = GeneticSearch(bounds, cfg, seed=0)
        run_search(ga, lambda g: -fitness(g), feasible=fits_budget, checkpoint=path,
                   checkpoint_every=cfg.checkpoint_every)   # resumes from `path` when it exists
        ga.top(5)                                  # [(genes [G], fitness), ...] best first

    State (all in :meth:`state_dict`): ``iteration`` (completed iterations), ``pending`` (the current iteration's
    population, asked and not yet told), ``cache`` (every evaluated encoding -> fitness, in evaluation order),
    ``history`` (one row per completed iteration), proposal counters and the RNG state.
    """

    n_objectives = 1

    def __init__(
        self,
        bounds: GeneBounds,
        cfg: EvolutionConfig,
        *,
        feasible: Feasible | None = None,
        seed: int = 0,
        random_bounds: GeneBounds | None = None,
        canonical: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.bounds = bounds
        self.canonical = canonical
        self.random_bounds = random_bounds or bounds
        if self.random_bounds.size != bounds.size:
            raise ValueError("random_bounds must have as many genes as bounds")
        self.n_genes = bounds.size
        self.cfg = cfg
        self.feasible = feasible
        self.seed = int(cfg.seed if cfg.seed is not None else seed)
        self.rng = new_rng(self.seed)
        self.iteration = 0
        self.pending: list[tuple[int, ...]] | None = None
        self.cache: dict[tuple[int, ...], float] = {}
        self.history: list[dict[str, Any]] = []
        self.proposed = 0  # proposals generated (all operators)
        self.rejected = 0  # proposals outside the constraint (never evaluated)
        self.duplicates = 0  # feasible proposals already evaluated / already in the population

    # ------------------------------------------------------------------ queries
    @property
    def done(self) -> bool:
        return self.iteration >= self.cfg.iterations

    @property
    def max_generations(self) -> int:
        return self.cfg.iterations

    @property
    def evaluated(self) -> int:
        return len(self.cache)

    def ranked(self) -> list[tuple[tuple[int, ...], float]]:
        """Every evaluated encoding with its fitness, best first (ties: earlier evaluation first)."""
        items = list(self.cache.items())
        order = sorted(range(len(items)), key=lambda i: (-items[i][1], i))
        return [items[i] for i in order]

    def top(self, k: int) -> list[tuple[np.ndarray, float]]:
        """The best ``k`` evaluated encodings as ``(genes int64 [G], fitness)``, best first."""
        return [(np.array(g, dtype=np.int64), f) for g, f in self.ranked()[:k]]

    def pareto(self) -> tuple[np.ndarray, np.ndarray]:
        """The encodings of the best fitness (all ties, in evaluation order) and their objective ``-fitness``."""
        if not self.cache:
            return np.zeros((0, self.bounds.size), dtype=np.int64), np.zeros((0, 1))
        top = max(self.cache.values())
        rows = [g for g, f in self.cache.items() if f == top]
        return np.array(rows, dtype=np.int64), np.full((len(rows), 1), -top)

    # ------------------------------------------------------------------ proposals
    def _accept(
        self, cands: np.ndarray, chosen: list[tuple[int, ...]], seen: set[tuple[int, ...]], want: int
    ) -> None:
        """Append up to ``want`` feasible, new rows of ``cands`` to ``chosen`` (in row order)."""
        if len(cands) == 0 or want <= 0:
            return
        self.proposed += len(cands)
        if self.canonical is not None:
            cands = np.asarray(self.canonical(cands), dtype=np.int64)
        ok = self.screen(cands)
        self.rejected += int((~ok).sum())
        for row in cands[ok]:
            key = tuple(int(v) for v in row)
            if key in seen or key in self.cache:
                self.duplicates += 1
                continue
            seen.add(key)
            chosen.append(key)
            if len(chosen) >= want:
                return

    def _propose(self) -> list[tuple[int, ...]]:
        cfg, rng = self.cfg, self.rng
        chosen: list[tuple[int, ...]] = []
        seen: set[tuple[int, ...]] = set()
        if self.iteration > 0 and self.cache:
            parents = np.array([g for g, _ in self.ranked()[: cfg.parents]], dtype=np.int64)
            for kind, count in (("mutation", cfg.mutations), ("crossover", cfg.crossovers)):
                goal = len(chosen) + count
                tries = 0
                while len(chosen) < goal and tries < cfg.retry_factor * count:
                    n = min(max(2 * (goal - len(chosen)), 8), cfg.retry_factor * count - tries)
                    tries += n
                    if kind == "mutation":
                        pa = parents[rng.integers(0, len(parents), size=n)]
                        cands = self.bounds.mutate(rng, pa, cfg.mutation_prob)
                    elif len(parents) >= 2:
                        i = rng.integers(0, len(parents), size=n)
                        j = (i + rng.integers(1, len(parents), size=n)) % len(parents)  # a distinct parent
                        cands = self.bounds.crossover(rng, parents[i], parents[j])
                    else:
                        break
                    self._accept(cands, chosen, seen, goal)
        tries = 0
        budget = cfg.random_tries * max(1, cfg.population - len(chosen))
        while len(chosen) < cfg.population and tries < budget:
            n = min(max(4 * (cfg.population - len(chosen)), 256), budget - tries)
            tries += n
            self._accept(self.random_bounds.random(rng, n), chosen, seen, cfg.population)
        if not chosen and not self.cache:
            raise PrunekitError(
                f"no feasible candidate among {tries:,} random encodings: the constraint (e.g. the MACs window) is "
                "too narrow for the search space; widen the window or the per-tag bounds"
            )
        if len(chosen) < cfg.population:
            log.warning(
                "evolution iteration %d: only %d of %d candidates found (constraint too narrow or space exhausted)",
                self.iteration + 1,
                len(chosen),
                cfg.population,
            )
        return chosen

    # ------------------------------------------------------------------ protocol
    def ask(self) -> np.ndarray:
        """The current iteration's population, int64 ``[N, G]`` (proposed on the first call, the same until
        :meth:`tell`); empty when the search is done."""
        if self.done:
            return np.zeros((0, self.bounds.size), dtype=np.int64)
        if self.pending is None:
            self.pending = self._propose()
        return np.array(self.pending, dtype=np.int64).reshape(-1, self.bounds.size)

    def tell(self, candidates: np.ndarray, objectives: np.ndarray) -> None:
        """Record the population's objectives (``-fitness`` in column 0; ``+inf``: rejected by the loop, never
        evaluated) and close the iteration (:meth:`end_iteration`)."""
        F = as_objectives(objectives, len(candidates))
        for genes, f in zip(np.asarray(candidates), F[:, 0], strict=True):
            key = tuple(int(v) for v in genes)
            if np.isfinite(f):
                self.cache[key] = -float(f)
            else:
                self.rejected += 1
        self.end_iteration()

    def end_iteration(self) -> dict[str, Any]:
        """Close the current iteration (every pending encoding evaluated) and append its history row
        ``{iteration, best, mean, population, evaluated, rejected, duplicates, proposed}`` (``best``: best fitness
        so far; ``mean``: mean fitness of this iteration's population)."""
        if self.pending is None:
            raise RuntimeError("end_iteration() before the iteration's population was asked")
        fits = [self.cache[g] for g in self.pending if g in self.cache]
        ranked = self.ranked()
        row = {
            "iteration": self.iteration + 1,
            "best": ranked[0][1] if ranked else None,
            "mean": float(np.mean(fits)) if fits else None,
            "population": len(fits),
            "evaluated": len(self.cache),
            "rejected": self.rejected,
            "duplicates": self.duplicates,
            "proposed": self.proposed,
        }
        self.history.append(row)
        self.iteration += 1
        self.pending = None
        return row

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Plain-data (JSON-serialisable) state; see the class docstring."""
        return {
            "format": STATE_FORMAT,
            "iteration": self.iteration,
            "pending": [list(g) for g in self.pending] if self.pending is not None else None,
            "cache": [[list(g), f] for g, f in self.cache.items()],
            "history": list(self.history),
            "proposed": self.proposed,
            "rejected": self.rejected,
            "duplicates": self.duplicates,
            "rng": rng_state(self.rng),
            "seed": self.seed,
            "genes": self.bounds.size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output.

        Raises:
            PrunekitError: not an evolution state, or one for a different number of genes.
        """
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise PrunekitError(
                "not a prunekit evolution search state (format tag missing); delete it to restart"
            )
        if int(state.get("genes", -1)) != self.bounds.size:
            raise PrunekitError(
                f"search state has {state.get('genes')} genes, this search {self.bounds.size}; delete it to restart"
            )
        self.iteration = int(state["iteration"])
        pending = state.get("pending")
        self.pending = [tuple(int(v) for v in g) for g in pending] if pending is not None else None
        self.cache = {tuple(int(v) for v in g): float(f) for g, f in state["cache"]}
        self.history = list(state["history"])
        self.proposed = int(state["proposed"])
        self.rejected = int(state["rejected"])
        self.duplicates = int(state["duplicates"])
        self.seed = int(state["seed"])
        self.rng = rng_from_state(state["rng"])
