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

The pieces are written for reuse by other searchers over integer genes with per-gene bounds (NSGA-II, JCW):
:class:`GeneBounds` (bounds, random / mutation / crossover operators on ``numpy`` Generators), the cache of
evaluated encodings with insertion order, and :class:`GeneticSearch`, which only needs ``feasible(genes [N, G]) ->
bool [N]`` and ``evaluate(genes [G]) -> float``.

**Resume.** All randomness comes from one ``numpy.random.Generator`` (PCG64) seeded from the config; its state, the
cache, the pending population of the current iteration and the history are in :meth:`GeneticSearch.state_dict`
(plain JSON data). :meth:`GeneticSearch.run` calls a checkpoint hook after proposing each population, every
``checkpoint_every`` evaluations and after each iteration; a search restored from any of those checkpoints and run
to the end gives exactly the result of an uninterrupted run, provided ``evaluate`` is deterministic.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from prunekit.errors import PrunekitError

__all__ = ["EvolutionConfig", "GeneBounds", "GeneticSearch", "STATE_FORMAT"]

log = logging.getLogger(__name__)

STATE_FORMAT = "prunekit.search.evolution/1"


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
        checkpoint_every: call the checkpoint hook every this many evaluations (besides once per iteration).
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


@dataclass(frozen=True)
class GeneBounds:
    """Inclusive integer bounds per gene, ``low`` / ``high`` int64 ``[G]``, and the variation operators.

    Every operator returns int64 arrays ``[N, G]`` within the bounds; genes with ``low == high`` never change.
    """

    low: np.ndarray
    high: np.ndarray

    def __post_init__(self) -> None:
        lo, hi = np.asarray(self.low, dtype=np.int64), np.asarray(self.high, dtype=np.int64)
        if lo.ndim != 1 or lo.shape != hi.shape or (hi < lo).any():
            raise ValueError("gene bounds must be 1-D int arrays of equal length with low <= high")
        object.__setattr__(self, "low", lo)
        object.__setattr__(self, "high", hi)

    @property
    def size(self) -> int:
        return int(self.low.size)

    def random(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` uniformly random encodings."""
        return rng.integers(self.low, self.high + 1, size=(n, self.size), dtype=np.int64)

    def mutate(self, rng: np.random.Generator, parents: np.ndarray, prob: float) -> np.ndarray:
        """Seed mutation of each row of ``parents`` ``[N, G]``: every gene with probability ``prob`` moves to a
        different value, ``low + (old - low + r) mod n`` with ``r`` uniform in ``1..n-1``."""
        n = self.high - self.low + 1
        hit = (rng.random(parents.shape) < prob) & (n > 1)
        r = rng.integers(1, np.maximum(n, 2), size=parents.shape)  # in 1..n-1
        moved = self.low + (parents - self.low + r) % n
        return np.where(hit, moved, parents).astype(np.int64)

    def crossover(self, rng: np.random.Generator, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Uniform crossover: each gene from ``a`` or ``b`` (``[N, G]`` each) with probability 1/2."""
        return np.where(rng.random(a.shape) < 0.5, a, b).astype(np.int64)


Feasible = Callable[[np.ndarray], np.ndarray]
Evaluate = Callable[[np.ndarray], float]


class GeneticSearch:
    """The MetaPruning GA over integer encodings (see the module docstring), one iteration at a time.

    Args:
        bounds: per-gene inclusive bounds.
        cfg: :class:`EvolutionConfig`.
        feasible: ``feasible(genes int64 [N, G]) -> bool [N]``; infeasible proposals are never evaluated.
        seed: RNG seed (``cfg.seed`` wins when set).
        random_bounds: optional narrower bounds for the random proposals only (the seed's ResNet samples ids in
            ``[12, 24)``); mutation / crossover use ``bounds``.
        canonical: optional ``canonical(genes [N, G]) -> [N, G]`` mapping encodings that decode to the same
            candidate onto one representative (e.g. scales that round to the same width); applied to every proposal
            before the duplicate check, so no candidate is evaluated twice under two spellings.

    Typical use::

        ga = GeneticSearch(bounds, cfg, feasible=fits_budget, seed=0)
        ga.load_state_dict(saved)                 # optional: resume
        ga.run(evaluate, checkpoint=lambda ga: write_json(path, ga.state_dict()))
        ga.top(5)                                  # [(genes [G], fitness), ...] best first

    State (all in :meth:`state_dict`): ``iteration`` (completed iterations), ``pending`` (the current iteration's
    population, while it is being evaluated), ``cache`` (every evaluated encoding -> fitness, in evaluation order),
    ``history`` (one row per completed iteration), proposal counters, the RNG state and evaluation seconds.
    """

    def __init__(
        self,
        bounds: GeneBounds,
        cfg: EvolutionConfig,
        *,
        feasible: Feasible,
        seed: int = 0,
        random_bounds: GeneBounds | None = None,
        canonical: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.bounds = bounds
        self.canonical = canonical
        self.random_bounds = random_bounds or bounds
        if self.random_bounds.size != bounds.size:
            raise ValueError("random_bounds must have as many genes as bounds")
        self.cfg = cfg
        self.feasible = feasible
        self.seed = int(cfg.seed if cfg.seed is not None else seed)
        self.rng = np.random.Generator(np.random.PCG64(self.seed))
        self.iteration = 0
        self.pending: list[tuple[int, ...]] | None = None
        self.cache: dict[tuple[int, ...], float] = {}
        self.history: list[dict[str, Any]] = []
        self.proposed = 0  # proposals generated (all operators)
        self.rejected = 0  # proposals outside the constraint (never evaluated)
        self.duplicates = 0  # feasible proposals already evaluated / already in the population
        self.eval_seconds = 0.0

    # ------------------------------------------------------------------ queries
    @property
    def done(self) -> bool:
        return self.iteration >= self.cfg.iterations

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
        ok = np.asarray(self.feasible(cands), dtype=bool).reshape(-1)
        if ok.shape[0] != len(cands):
            raise ValueError(f"feasible() returned {ok.shape[0]} flags for {len(cands)} candidates")
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

    # ------------------------------------------------------------------ the loop
    def ask(self) -> list[np.ndarray]:
        """The current iteration's encodings still to evaluate (proposes the population first if needed); empty
        when the search is done."""
        if self.done:
            return []
        if self.pending is None:
            self.pending = self._propose()
        return [np.array(g, dtype=np.int64) for g in self.pending if g not in self.cache]

    def tell(self, genes: np.ndarray, fitness: float, seconds: float = 0.0) -> None:
        """Record the fitness of one evaluated encoding (must be finite)."""
        f = float(fitness)
        if not np.isfinite(f):
            raise PrunekitError(f"fitness of candidate {list(map(int, genes))} is not finite ({f})")
        self.cache[tuple(int(v) for v in genes)] = f
        self.eval_seconds += float(seconds)

    def end_iteration(self) -> dict[str, Any]:
        """Close the current iteration (every pending encoding evaluated) and append its history row
        ``{iteration, best, mean, population, evaluated, rejected, duplicates, proposed}`` (``best``: best fitness
        so far; ``mean``: mean fitness of this iteration's population)."""
        if self.pending is None or any(g not in self.cache for g in self.pending):
            raise RuntimeError("end_iteration() before every pending candidate was evaluated")
        fits = [self.cache[g] for g in self.pending]
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

    def run(
        self,
        evaluate: Evaluate,
        *,
        checkpoint: Callable[[GeneticSearch], None] | None = None,
        on_iteration: Callable[[GeneticSearch, dict[str, Any]], None] | None = None,
    ) -> list[tuple[np.ndarray, float]]:
        """Run (or resume) the search to the end; returns :meth:`top` of ``cfg.parents``.

        ``evaluate(genes int64 [G]) -> fitness`` (higher is better) is only called on feasible, never-evaluated
        encodings. ``checkpoint(self)`` is called after each population is proposed, every
        ``cfg.checkpoint_every`` evaluations and after every iteration; ``on_iteration(self, row)`` after every
        iteration (logging).
        """
        while not self.done:
            fresh = self.pending is None
            todo = self.ask()
            if fresh and checkpoint is not None:
                checkpoint(self)
            for k, genes in enumerate(todo, 1):
                t0 = time.perf_counter()
                fit = evaluate(genes)
                self.tell(genes, fit, time.perf_counter() - t0)
                if checkpoint is not None and k % self.cfg.checkpoint_every == 0 and k < len(todo):
                    checkpoint(self)
            row = self.end_iteration()
            if checkpoint is not None:
                checkpoint(self)
            if on_iteration is not None:
                on_iteration(self, row)
        return self.top(self.cfg.parents)

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
            "eval_seconds": self.eval_seconds,
            "rng": _jsonable_rng(self.rng.bit_generator.state),
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
        self.eval_seconds = float(state["eval_seconds"])
        self.seed = int(state["seed"])
        bitgen = np.random.PCG64()
        bitgen.state = state["rng"]
        self.rng = np.random.Generator(bitgen)


def _jsonable_rng(state: dict[str, Any]) -> dict[str, Any]:
    """numpy bit-generator state with only JSON types (PCG64 state is nested dicts of Python ints)."""
    out: dict[str, Any] = {}
    for k, v in state.items():
        if isinstance(v, dict):
            out[k] = _jsonable_rng(v)
        elif isinstance(v, np.integer):
            out[k] = int(v)
        else:
            out[k] = v
    return out
