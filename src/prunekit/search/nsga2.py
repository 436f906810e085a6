"""NSGA-II over integer genes with per-gene bounds, on the :class:`~prunekit.search.base.Searcher` protocol.

Deb, Pratap, Agarwal, Meyarivan, "A Fast and Elitist Multiobjective Genetic Algorithm: NSGA-II", IEEE TEC 6(2),
2002. Round 0 evaluates ``population`` uniformly random, distinct encodings. Every later round breeds
``population`` offspring from the current population: binary tournaments on the crowded-comparison order (lower
non-domination rank wins, then larger crowding distance, then a fair coin), uniform crossover of the two winners
with probability ``crossover_prob`` (else the first winner is copied), then per-gene mutation with probability
``mutation_prob`` (default ``1 / n_genes``) to a *different* value (:class:`~prunekit.search.genes.GeneBounds`
operators). Offspring are kept only if **feasible** (the bound screening predicate, e.g. a MACs budget) and
**new** (not in the population, not bred twice this round); after ``tries x population`` draws the round goes on
with fewer. Survival: parents + evaluated offspring are ranked by pymoo's non-dominated sorting and the last front
that fits is truncated by crowding distance (pymoo's ``RankAndCrowding``, NSGA-II's ``cd`` metric) -- the sorting
and crowding are pymoo's, not re-implemented here. Candidates told ``+inf`` (rejected by the loop) never enter the
population.

Options for JCW (Zhao et al. 2021, seed ``lib/EMO/nsga_ii.py``; :meth:`NSGA2Config.jcw`): uniformly random
mating instead of tournaments, simulated binary crossover and polynomial mutation on the gene indices (pymoo's
``cross_sbx`` / ``mut_pm``, rounded to the grid and clipped), and the target-latency survival of
:mod:`prunekit.search.targets` instead of rank-and-crowding.

All randomness (proposals and pymoo's random tie-breaks in the crowding truncation) comes from one PCG64
Generator whose state is in :meth:`NSGA2.state_dict`, so a resumed search is bit-identical to an uninterrupted one.
Needs pymoo >= 0.6.2 (``random_state`` arguments of its survival operators).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from prunekit.errors import PrunekitError
from prunekit.search.base import Searcher, as_objectives
from prunekit.search.genes import GeneBounds, new_rng, rng_from_state, rng_state
from prunekit.search.targets import sample_targets, select_for_targets

__all__ = ["NSGA2", "NSGA2Config", "STATE_FORMAT"]

STATE_FORMAT = "prunekit.search.nsga2/1"


class NSGA2Config(BaseModel):
    """Hyper-parameters of :class:`NSGA2`.

    Attributes:
        population: population size (and offspring per round).
        generations: offspring rounds after the random initial population (at most
            ``population x (generations + 1)`` evaluations).
        crossover_prob: probability that an offspring is the uniform crossover of its two parents (else a copy
            of the first).
        mutation_prob: per-gene mutation probability (None: ``1 / n_genes``).
        tries: proposal draws per wanted candidate before a round goes on with fewer (narrow constraints, small
            spaces).
        seed: RNG seed; None = the ``seed`` argument.
        mating: ``tournament`` (binary tournaments on rank and crowding, NSGA-II) or ``random`` (uniformly random
            distinct pairs, the JCW seed).
        crossover: ``uniform`` (each gene from either parent) or ``sbx`` (simulated binary crossover, two children
            per pair, :meth:`GeneBounds.sbx`; ``sbx_eta`` distribution index, ``sbx_prob`` per-gene probability).
        mutation: ``reset`` (a gene moves to a different random value) or ``polynomial`` (:meth:`GeneBounds.polynomial`,
            distribution index ``pm_eta``); either with per-gene probability ``mutation_prob``.
        selection: ``crowding`` (NSGA-II's rank-and-crowding survival) or ``targets`` (JCW's target-latency
            survival, :mod:`prunekit.search.targets`: ``targets`` latencies per generation, ``target_mode``
            ``uniform`` / ``random``, ``sandwich``; needs the searcher's ``target_range``).
    """

    model_config = ConfigDict(extra="forbid")
    population: int = Field(100, ge=2)
    generations: int = Field(100, ge=0)
    crossover_prob: float = Field(0.9, ge=0.0, le=1.0)
    mutation_prob: float | None = Field(None, gt=0.0, le=1.0)
    tries: int = Field(100, ge=1)
    seed: int | None = None
    mating: Literal["tournament", "random"] = "tournament"
    crossover: Literal["uniform", "sbx"] = "uniform"
    sbx_eta: float = Field(0.5, gt=0.0)
    sbx_prob: float = Field(0.5, ge=0.0, le=1.0)
    mutation: Literal["reset", "polynomial"] = "reset"
    pm_eta: float = Field(15.0, gt=0.0)
    selection: Literal["crowding", "targets"] = "crowding"
    targets: int = Field(4, ge=1)
    target_mode: Literal["uniform", "random"] = "uniform"
    sandwich: bool = False

    @classmethod
    def jcw(cls, **overrides: Any) -> NSGA2Config:
        """The JCW seed's settings (``experiments/res18-search.yaml``): population 64, 128 generations, random
        mating, SBX (eta 0.5, per-gene p 0.5) on every pair, polynomial mutation (eta 15, p = 1/D), target-latency
        selection with 4 evenly spaced targets; ``overrides`` replace any field."""
        base = dict(
            population=64,
            generations=128,
            crossover_prob=1.0,
            mating="random",
            crossover="sbx",
            sbx_eta=0.5,
            sbx_prob=0.5,
            mutation="polynomial",
            pm_eta=15.0,
            selection="targets",
            targets=4,
            target_mode="uniform",
        )
        return cls(**{**base, **overrides})


def _keys(genes: np.ndarray) -> set[tuple[int, ...]]:
    return {tuple(int(v) for v in g) for g in genes}


class NSGA2(Searcher):
    """NSGA-II (see the module docstring) over integer genes within ``bounds``.

    Args:
        bounds: per-gene inclusive bounds.
        cfg: :class:`NSGA2Config`.
        seed: RNG seed (``cfg.seed`` wins when set).
        n_objectives: the number of objectives, when known (else taken from the first told objectives).
        target_range: ``(lo, hi)`` latency (ms) between which ``selection: targets`` samples its targets (JCW: the
            latency of the all-lower-bound and all-upper-bound encodings). latency_objective: the objective column
            holding latency.

    Raises:
        ValueError: ``selection: targets`` without a ``target_range``.

    State: ``generation`` (rounds told), ``pending`` (the round asked and not yet told), the population's genes,
    objectives, ranks and crowding distances, proposal counters and the RNG.
    """

    def __init__(
        self,
        bounds: GeneBounds,
        cfg: NSGA2Config,
        *,
        seed: int = 0,
        n_objectives: int | None = None,
        target_range: tuple[float, float] | None = None,
        latency_objective: int = 1,
    ) -> None:
        if cfg.selection == "targets" and target_range is None:
            raise ValueError("selection: targets needs a target_range (lo, hi) of latencies")
        self.bounds, self.cfg = bounds, cfg
        self.target_range = None if target_range is None else (float(target_range[0]), float(target_range[1]))
        self.latency_objective = int(latency_objective)
        self.last_targets: list[float] = []
        self.n_genes = bounds.size
        self.n_objectives = n_objectives
        self.seed = int(cfg.seed if cfg.seed is not None else seed)
        self.rng = new_rng(self.seed)
        self.mutation_prob = (
            cfg.mutation_prob if cfg.mutation_prob is not None else 1.0 / max(1, self.n_genes)
        )
        self.generation = 0
        self.pending: np.ndarray | None = None
        self.pop = np.zeros((0, self.n_genes), dtype=np.int64)
        self.objs = np.zeros((0, n_objectives or 1))
        self.rank = np.zeros(0, dtype=np.int64)
        self.crowding = np.zeros(0)
        self.proposed = self.screened_out = self.duplicates = 0

    # ------------------------------------------------------------------ protocol
    @property
    def done(self) -> bool:
        return self.generation > self.cfg.generations

    @property
    def max_generations(self) -> int:
        return self.cfg.generations + 1

    def ask(self) -> np.ndarray:
        if self.done:
            return np.zeros((0, self.n_genes), dtype=np.int64)
        if self.pending is None:
            self.pending = self._propose()
        return self.pending.copy()

    def tell(self, candidates: np.ndarray, objectives: np.ndarray) -> None:
        cands = np.asarray(candidates, dtype=np.int64).reshape(-1, self.n_genes)
        F = as_objectives(objectives, len(cands))
        ok = np.isfinite(F).all(axis=1)
        if ok.any():
            if self.n_objectives is None:
                self.n_objectives = F.shape[1]
            elif F.shape[1] != self.n_objectives:
                raise ValueError(f"told {F.shape[1]} objectives, this search has {self.n_objectives}")
            if len(self.pop) == 0:
                self.objs = np.zeros((0, F.shape[1]))
            self._survive(np.concatenate([self.pop, cands[ok]]), np.concatenate([self.objs, F[ok]]))
        if len(self.pop) == 0:
            raise PrunekitError(
                "NSGA-II: no feasible candidate in the initial population; the constraint (e.g. the budget) is too "
                "narrow for the search space"
            )
        self.generation += 1
        self.pending = None

    def rescore(self, objectives: np.ndarray) -> None:
        """Replace the current population's objectives (``[P, M]``, population order), e.g. after the estimator
        changed (JCW re-evaluates parents and offspring on the same, newly trained supernet every generation). The
        next :meth:`tell` ranks parents and offspring on these."""
        F = np.asarray(objectives, dtype=np.float64).reshape(len(self.pop), -1)
        if not np.isfinite(F).all():
            raise ValueError("rescored objectives must be finite")
        self.objs = F

    def pareto(self) -> tuple[np.ndarray, np.ndarray]:
        """The population's first front (rank 0)."""
        front = self.rank == 0
        return self.pop[front].copy(), self.objs[front].copy()

    # ------------------------------------------------------------------ operators
    def _accept(self, cands: np.ndarray, chosen: list[tuple[int, ...]], seen: set[tuple[int, ...]]) -> None:
        self.proposed += len(cands)
        ok = self.screen(cands)
        self.screened_out += int((~ok).sum())
        for row in cands[ok]:
            key = tuple(int(v) for v in row)
            if key in seen:
                self.duplicates += 1
                continue
            seen.add(key)
            chosen.append(key)
            if len(chosen) >= self.cfg.population:
                return

    def _tournament(self, n: int) -> np.ndarray:
        """``n`` binary-tournament winners (indices into the population) on (rank, crowding)."""
        a, b = self.rng.integers(0, len(self.pop), size=(2, n))
        coin = self.rng.random(n) < 0.5
        ra, rb, ca, cb = self.rank[a], self.rank[b], self.crowding[a], self.crowding[b]
        a_wins = (ra < rb) | ((ra == rb) & ((ca > cb) | ((ca == cb) & coin)))
        return np.where(a_wins, a, b)

    def _propose(self) -> np.ndarray:
        cfg, rng = self.cfg, self.rng
        chosen: list[tuple[int, ...]] = []
        seen = _keys(self.pop)  # offspring must be new to the population (and to each other)
        budget, draws = cfg.tries * cfg.population, 0
        while len(chosen) < cfg.population and draws < budget:
            n = min(max(2 * (cfg.population - len(chosen)), 16), budget - draws)
            draws += n
            if self.generation == 0 or len(self.pop) == 0:
                cands = self.bounds.random(rng, n)
            else:
                cands = self._breed(n)
            self._accept(cands, chosen, seen)
        return np.array(chosen, dtype=np.int64).reshape(-1, self.n_genes)

    def _parents(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` parent pairs: binary-tournament winners, or uniformly random distinct members (``mating``)."""
        if self.cfg.mating == "tournament":
            return self.pop[self._tournament(n)], self.pop[self._tournament(n)]
        size = len(self.pop)
        a = self.rng.integers(0, size, size=n)
        b = (a + self.rng.integers(1, size, size=n)) % size if size > 1 else a
        return self.pop[a], self.pop[b]

    def _breed(self, n: int) -> np.ndarray:
        """About ``n`` offspring (``[n or n + 1, G]``): crossover then mutation, as configured."""
        cfg, rng, bounds = self.cfg, self.rng, self.bounds
        if cfg.crossover == "sbx":  # two children per pair
            p1, p2 = self._parents(-(-n // 2))
            cross = rng.random(len(p1)) < cfg.crossover_prob
            kids = bounds.sbx(rng, p1, p2, eta=cfg.sbx_eta, prob=cfg.sbx_prob)
            kids = np.where(np.concatenate([cross, cross])[:, None], kids, np.concatenate([p1, p2]))
        else:
            p1, p2 = self._parents(n)
            cross = rng.random(n) < cfg.crossover_prob
            kids = np.where(cross[:, None], bounds.crossover(rng, p1, p2), p1)
        if cfg.mutation == "polynomial":
            return bounds.polynomial(rng, kids, eta=cfg.pm_eta, prob=self.mutation_prob)
        return bounds.mutate(rng, kids, self.mutation_prob)

    def _survive(self, genes: np.ndarray, F: np.ndarray) -> None:
        """pymoo's rank-and-crowding survival of ``population`` out of ``genes`` / ``F``; stores the survivors'
        rank and crowding distance for the next tournaments."""
        from pymoo.core.population import Population
        from pymoo.core.problem import Problem
        from pymoo.operators.survival.rank_and_crowding import RankAndCrowding

        n_survive = min(self.cfg.population, len(genes))
        if (
            self.cfg.selection == "targets"
        ):  # JCW: choose the survivors per target; rank / crowding below as usual
            assert self.target_range is not None
            t = sample_targets(
                *self.target_range,
                self.cfg.targets,
                mode=self.cfg.target_mode,
                sandwich=self.cfg.sandwich,
                rng=self.rng,
            )
            self.last_targets = [float(x) for x in t]
            keep = select_for_targets(F, n_survive, t, latency=self.latency_objective)
            genes, F = genes[keep], F[keep]
        pop = Population.new("X", genes, "F", F)
        problem = Problem(n_var=self.n_genes, n_obj=F.shape[1])
        survivors = RankAndCrowding(crowding_func="cd").do(
            problem, pop, n_survive=n_survive, random_state=self.rng
        )
        self.pop = np.asarray(survivors.get("X"), dtype=np.int64).reshape(-1, self.n_genes)
        self.objs = np.asarray(survivors.get("F"), dtype=np.float64).reshape(len(self.pop), -1)
        self.rank = np.asarray(survivors.get("rank"), dtype=np.int64).reshape(-1)
        self.crowding = np.asarray(survivors.get("crowding"), dtype=np.float64).reshape(-1)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "genes": self.n_genes,
            "seed": self.seed,
            "generation": self.generation,
            "pending": None if self.pending is None else self.pending.tolist(),
            "pop": self.pop.tolist(),
            "objs": self.objs.tolist(),
            "rank": self.rank.tolist(),
            "crowding": [float(c) if np.isfinite(c) else None for c in self.crowding],
            "n_objectives": self.n_objectives,
            "proposed": self.proposed,
            "screened_out": self.screened_out,
            "duplicates": self.duplicates,
            "targets": self.last_targets,
            "rng": rng_state(self.rng),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise PrunekitError("not a prunekit NSGA-II search state (format tag missing); use a new run dir")
        if int(state.get("genes", -1)) != self.n_genes:
            raise PrunekitError(f"NSGA-II state has {state.get('genes')} genes, this search {self.n_genes}")
        self.seed = int(state["seed"])
        self.generation = int(state["generation"])
        p = state["pending"]
        self.pending = None if p is None else np.array(p, dtype=np.int64).reshape(-1, self.n_genes)
        self.n_objectives = state["n_objectives"]
        self.pop = np.array(state["pop"], dtype=np.int64).reshape(-1, self.n_genes)
        m = self.n_objectives or 1
        self.objs = np.array(state["objs"], dtype=np.float64).reshape(
            len(self.pop), -1 if len(self.pop) else m
        )
        self.rank = np.array(state["rank"], dtype=np.int64).reshape(-1)
        self.crowding = np.array([np.inf if c is None else c for c in state["crowding"]], dtype=np.float64)
        self.proposed = int(state["proposed"])
        self.screened_out = int(state["screened_out"])
        self.duplicates = int(state["duplicates"])
        self.last_targets = [float(t) for t in state.get("targets", [])]
        self.rng = rng_from_state(state["rng"])
