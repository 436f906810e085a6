"""One protocol for every searcher over integer encodings, and one loop that drives it.

**The protocol** (:class:`Searcher`). A searcher proposes candidates and learns from their objectives, one round
("generation") at a time:

* ``ask() -> int64 [N, n_genes]``: the candidates of the current round (``N`` may be 0). ``ask`` is **idempotent
  until** ``tell``: calling it again returns the same candidates (a searcher stores them in its state), which is
  what makes a checkpoint taken in the middle of a round resumable.
* ``tell(candidates, objectives float [N, M])``: the objective **vectors** of exactly the rows ``ask`` returned, in
  the same order. Every objective is **minimised**; a single-objective searcher reads column 0.
* ``done``: no more rounds. ``pareto()``: the non-dominated candidates found and their objectives; ``best()``: the
  lexicographically smallest objective vector among them (column 0 first).
* ``state_dict()`` / ``load_state_dict()``: everything, RNG included, as plain JSON data.

**Rejected candidates.** ``run_search(feasible=...)`` checks every asked candidate with the vectorised predicate
``feasible(int64 [N, n]) -> bool [N]`` (e.g. a MACs or parameter budget) *before* evaluation. A rejected candidate
is never evaluated: it is told back with ``+inf`` in every objective column, and a searcher must never select or
return such a row (it is "infeasible", not a bad result). The round still counts; a searcher that wants a full
round of feasible candidates can propose replacements in its next ``ask``. Because rejection costs a round trip,
searchers that generate many cheap proposals also *screen* them with the same predicate while proposing:
``run_search`` hands it over with :meth:`Searcher.bind_feasible` (the loop's own check then never fires for them,
and remains the guarantee). ``+inf`` is therefore reserved: :func:`run_search` refuses non-finite objectives from
``evaluate``.

**The loop** (:func:`run_search`): ask → reject infeasible → look up the cache (a candidate evaluated before, in
this round or any earlier one, is never evaluated again: its cached objectives are told) → evaluate the rest in
row order → tell. It checkpoints atomically (``prunekit.io.write_json``) after every new round is asked, every
``checkpoint_every`` evaluations inside a round, and after every tell, together with a fingerprint of the search
setup; a run killed at any point and restarted with the same checkpoint path resumes **bit-identically** (same
candidates evaluated in the same order, same final state), provided ``evaluate`` is deterministic. A checkpoint with
another fingerprint is refused (:class:`~prunekit.errors.PrunekitError`).

**Under torchrun** (``torch.distributed`` initialised) the evaluations of a round are sharded: each rank evaluates
every ``world``-th candidate of a chunk, the objectives are all-gathered and every rank enters them in the same
order, so all ranks hold the same searcher state and the result equals the one-process result exactly (objectives
are exchanged, not reduced), provided ``evaluate`` gives each rank the same value for a candidate (its BN
recalibration and evaluation batches the same on every rank); rank 0 writes the checkpoint.

:class:`RandomSearch` is the reference implementation of the protocol (and the baseline searchers are compared
against).
"""

from __future__ import annotations

import itertools
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prunekit.distributed import all_gather_objects, get_rank, get_world_size
from prunekit.errors import PrunekitError
from prunekit.progress import progress_enabled
from prunekit.search.genes import GeneBounds, new_rng, rng_from_state, rng_state

__all__ = [
    "CHECKPOINT_FORMAT",
    "Evaluate",
    "Feasible",
    "RandomSearch",
    "SearchResult",
    "Searcher",
    "as_objectives",
    "non_dominated",
    "run_search",
]

CHECKPOINT_FORMAT = "prunekit.search.run/1"

log = logging.getLogger(__name__)

Feasible = Callable[[np.ndarray], np.ndarray]
Evaluate = Callable[[np.ndarray], "float | Sequence[float] | np.ndarray"]


def non_dominated(objectives: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated rows of ``objectives`` ``[N, M]`` (minimisation; pymoo's non-dominated
    sorting), ascending. Rows with a non-finite value are never selected."""
    F = np.asarray(objectives, dtype=np.float64)
    if F.ndim != 2:
        raise ValueError(f"objectives must be [N, M], got shape {F.shape}")
    ok = np.flatnonzero(np.isfinite(F).all(axis=1))
    if ok.size == 0:
        return ok
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    front = NonDominatedSorting().do(F[ok], only_non_dominated_front=True)
    return np.sort(ok[np.asarray(front, dtype=np.int64)])


def as_objectives(objectives: Any, n: int) -> np.ndarray:
    """``objectives`` as float64 ``[n, M]`` (a 1-D array of ``n`` values is one objective column)."""
    F = np.asarray(objectives, dtype=np.float64)
    if F.ndim == 1:
        F = F.reshape(n, -1) if n else F.reshape(0, 1)
    if F.ndim != 2 or F.shape[0] != n:
        raise ValueError(f"told objectives of shape {F.shape} for {n} candidates")
    return F


def lexicographic_best(objectives: np.ndarray) -> int:
    """Index of the lexicographically smallest finite row of ``objectives`` ``[N, M]`` (column 0 first; ties:
    the first row); -1 when no row is finite."""
    F = np.asarray(objectives, dtype=np.float64)
    ok = np.flatnonzero(np.isfinite(F).all(axis=1))
    if ok.size == 0:
        return -1
    order = np.lexsort(tuple(F[ok, j] for j in reversed(range(F.shape[1]))))  # stable: ties keep row order
    return int(ok[order[0]])


class Searcher(ABC):
    """A searcher over integer encodings of ``n_genes`` genes (see the module docstring for the protocol).

    Subclasses implement :meth:`ask`, :meth:`tell`, :attr:`done`, :meth:`pareto`, :meth:`state_dict` and
    :meth:`load_state_dict`; :meth:`best` defaults to the lexicographic minimum of :meth:`pareto`.
    """

    n_genes: int
    #: the screening predicate (``feasible(int64 [N, n]) -> bool [N]``) proposals may be filtered with; installed by
    #: :meth:`bind_feasible` (``run_search(feasible=...)`` calls it). None: every proposal passes.
    feasible: Feasible | None = None
    #: number of objectives, when fixed in advance (the width of the ``+inf`` rows told before anything was
    #: evaluated); None: 1 until the first evaluation fixes it.
    n_objectives: int | None = None

    @abstractmethod
    def ask(self) -> np.ndarray:
        """The current round's candidates, int64 ``[N, n_genes]`` (the same array until :meth:`tell`)."""

    @abstractmethod
    def tell(self, candidates: np.ndarray, objectives: np.ndarray) -> None:
        """Objectives float ``[N, M]`` (minimised; ``+inf`` rows: rejected, never evaluated) of the rows of the
        last :meth:`ask`, in its order."""

    @property
    @abstractmethod
    def done(self) -> bool:
        """True once the search is over (:func:`run_search` stops)."""

    @abstractmethod
    def pareto(self) -> tuple[np.ndarray, np.ndarray]:
        """The non-dominated candidates found, ``(genes int64 [P, n_genes], objectives float [P, M])``
        (``P = 0`` before anything was evaluated)."""

    def best(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The best candidate ``(genes int64 [n_genes], objectives float [M])``: the lexicographically smallest
        objective vector of :meth:`pareto` (column 0 first); None before anything was evaluated."""
        genes, objs = self.pareto()
        i = lexicographic_best(objs) if len(objs) else -1
        return None if i < 0 else (genes[i].copy(), objs[i].copy())

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Plain JSON data: everything needed to continue exactly (RNG state included)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""

    @property
    def max_generations(self) -> int | None:
        """Rounds this search runs in all, when known in advance (progress bar total); None otherwise."""
        return None

    def bind_feasible(self, feasible: Feasible | None) -> None:
        """Install the screening predicate (see :attr:`feasible`)."""
        self.feasible = feasible

    def screen(self, candidates: np.ndarray) -> np.ndarray:
        """:attr:`feasible` on ``candidates`` ``[N, n]`` as bool ``[N]`` (all True without a predicate)."""
        return _check_feasible(self.feasible, candidates)


def _check_feasible(feasible: Feasible | None, candidates: np.ndarray) -> np.ndarray:
    if feasible is None or len(candidates) == 0:
        return np.ones(len(candidates), dtype=bool)
    ok = np.asarray(feasible(candidates), dtype=bool).reshape(-1)
    if ok.shape[0] != len(candidates):
        raise ValueError(f"feasible() returned {ok.shape[0]} flags for {len(candidates)} candidates")
    return ok


# ---------------------------------------------------------------------------------------------- the loop
@dataclass
class SearchResult:
    """Outcome of :func:`run_search`.

    Attributes:
        best: ``(genes int64 [n], objectives float [M])`` of :meth:`Searcher.best`, None when nothing was
            evaluated.
        pareto_genes, pareto_objectives: :meth:`Searcher.pareto` (``[P, n]``, ``[P, M]``).
        generations: ask/tell rounds completed (in all, across resumes).
        evaluations: distinct candidates evaluated (in all).
        rejected: candidates the loop's ``feasible`` check rejected (a searcher's own screening not included).
        cache_hits: asked candidates answered from the cache.
        eval_seconds: wall time spent in ``evaluate`` (in all, across resumes).
        wall_s: wall time of this call.
        resumed: whether this call continued a checkpoint.
        history: one row per round ``{generation, asked, evaluated, cached, rejected, evaluations}``.
        evaluated: every evaluated candidate ``(genes tuple, objectives tuple)`` in evaluation order.
    """

    best: tuple[np.ndarray, np.ndarray] | None
    pareto_genes: np.ndarray
    pareto_objectives: np.ndarray
    generations: int
    evaluations: int
    rejected: int
    cache_hits: int
    eval_seconds: float
    wall_s: float
    resumed: bool
    history: list[dict[str, Any]] = field(default_factory=list)
    evaluated: list[tuple[tuple[int, ...], tuple[float, ...]]] = field(default_factory=list)


class _Loop:
    """One :func:`run_search` call: the searcher, how its candidates are evaluated, and the state the loop keeps
    besides the searcher's own (all of it goes into the checkpoint, see :meth:`state`).

    The steps of a round, in :func:`run_search`'s order: :meth:`ask` (a new round is checkpointed before anything
    is spent on it), :meth:`answer` (cache or evaluate, row order), :meth:`tell` (history row, checkpoint).
    """

    def __init__(
        self,
        searcher: Searcher,
        evaluate: Evaluate,
        *,
        path: Path | None,
        fingerprint: str | None,
        checkpoint_every: int | None,
    ) -> None:
        self.searcher, self.evaluate = searcher, evaluate
        self.path, self.fingerprint, self.checkpoint_every = path, fingerprint, checkpoint_every
        self.cache: dict[tuple[int, ...], tuple[float, ...]] = {}
        self.generation = 0
        self.rejected = 0
        self.cache_hits = 0
        self.eval_seconds = 0.0
        self.history: list[dict[str, Any]] = []
        self.batch_start: int | None = None  # len(cache) when the round in progress was asked
        self.m: int | None = None  # objectives per candidate: fixed by the first evaluation (or the cache)

    # ------------------------------------------------------------------ checkpoint
    def state(self) -> dict[str, Any]:
        """The checkpoint (format :data:`CHECKPOINT_FORMAT`): plain JSON data."""
        return {
            "format": CHECKPOINT_FORMAT,
            "fingerprint": self.fingerprint,
            "searcher_type": type(self.searcher).__name__,
            "searcher": self.searcher.state_dict(),
            "generation": self.generation,
            "batch_start": self.batch_start,
            "cache": [[list(g), list(f)] for g, f in self.cache.items()],
            "rejected": self.rejected,
            "cache_hits": self.cache_hits,
            "eval_seconds": self.eval_seconds,
            "history": self.history,
        }

    def load(self, saved: dict[str, Any]) -> None:
        """Restore :meth:`state` output (the searcher's state included)."""
        self.searcher.load_state_dict(saved["searcher"])
        self.generation = int(saved["generation"])
        self.batch_start = None if saved["batch_start"] is None else int(saved["batch_start"])
        self.cache = {tuple(int(v) for v in g): tuple(float(x) for x in f) for g, f in saved["cache"]}
        self.rejected = int(saved["rejected"])
        self.cache_hits = int(saved["cache_hits"])
        self.eval_seconds = float(saved["eval_seconds"])
        self.history = list(saved["history"])
        self.m = len(next(iter(self.cache.values()))) if self.cache else None

    def resume(self, desc: str) -> bool:
        """Continue the checkpoint at :attr:`path` when there is one (refused when foreign); True if resumed."""
        saved = (
            _read_checkpoint(self.path, self.fingerprint, self.searcher) if self.path is not None else None
        )
        if saved is None:
            return False
        self.load(saved)
        log.info(
            "%s: resuming %s at round %d (%d candidates evaluated) from %s",
            desc,
            type(self.searcher).__name__,
            self.generation + 1,
            len(self.cache),
            self.path,
        )
        return True

    def save(self) -> None:
        """Write the checkpoint atomically (nothing without a checkpoint path; under ``torch.distributed`` rank 0
        writes)."""
        if self.path is not None and get_rank() == 0:
            from prunekit.io import write_json

            write_json(self.path, self.state())

    # ------------------------------------------------------------------ one round
    def ask(self) -> np.ndarray:
        """The searcher's current round, int64 ``[N, n_genes]``; a new round is checkpointed before any of it is
        evaluated (a resumed round is not: its ``ask`` returns the same rows)."""
        cands = np.asarray(self.searcher.ask(), dtype=np.int64).reshape(-1, self.searcher.n_genes)
        if self.batch_start is None:
            self.batch_start = len(self.cache)
            self.save()
        return cands

    def answer(self, cands: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, int, int]:
        """Objectives of ``cands`` ``[N, n]`` as float ``[N, M]``, with the round's ``(evaluated, cached)`` counts.

        Rows with ``ok`` False (rejected) get ``+inf``. A feasible row already in the cache is answered from it
        (a cache hit, unless it was evaluated in this same round before a restart: then it counts as evaluated);
        every other one is evaluated, in row order, checkpointing every :attr:`checkpoint_every` evaluations.
        Under ``torch.distributed`` the evaluations are split across ranks (:meth:`_evaluate_sharded`).
        """
        start = self.batch_start
        if get_world_size() > 1:  # evaluated across ranks first: below, every row is then found in the cache
            self._evaluate_sharded(cands, ok)
        before_restart = set(itertools.islice(self.cache, start, None)) if len(self.cache) > start else set()
        rows: list[tuple[float, ...] | None] = [None] * len(cands)
        new = hits = since_save = 0
        for i in range(len(cands)):
            if not ok[i]:
                continue
            key = tuple(int(v) for v in cands[i])
            if key in self.cache:  # evaluated in an earlier round or earlier in this one: never again
                if key in before_restart:
                    before_restart.discard(key)
                    new += 1
                else:
                    hits += 1
                rows[i] = self.cache[key]
                continue
            rows[i] = self._evaluate(key, cands[i])
            new += 1
            since_save += 1
            if self.checkpoint_every is not None and since_save % self.checkpoint_every == 0:
                self.save()
        objs = np.full((len(cands), self.m or self.searcher.n_objectives or 1), np.inf)
        for i, f in enumerate(rows):
            if f is not None:
                objs[i] = f
        return objs, new, hits

    def _evaluate_sharded(self, cands: np.ndarray, ok: np.ndarray) -> None:
        """Under ``torch.distributed``: the round's candidates not in the cache (first appearance, row order) are
        evaluated in chunks of ``world x checkpoint_every``, rank ``k`` taking every ``world``-th of a chunk; the
        objectives are all-gathered and entered in the cache in row order on every rank, so the cache, the
        searcher's state and the checkpoint (written by rank 0 after every chunk) are those of one process --
        provided ``evaluate`` gives every rank the same value for the same candidate. :meth:`answer` then finds
        every row cached (and counts the round's evaluations as it does after a restart)."""
        todo: dict[tuple[int, ...], np.ndarray] = {}
        for i in range(len(cands)):
            key = tuple(int(v) for v in cands[i])
            if ok[i] and key not in self.cache and key not in todo:
                todo[key] = cands[i]
        if not todo:
            return
        rank, world = get_rank(), get_world_size()
        keys = list(todo)
        chunk = world * (self.checkpoint_every or len(keys))
        for c in range(0, len(keys), chunk):
            part = keys[c : c + chunk]
            mine = {k: self._compute(todo[k]) for j, k in enumerate(part) if j % world == rank}
            gathered: dict[tuple[int, ...], tuple[float, ...]] = {}
            for d in all_gather_objects(mine):
                gathered.update(d)
            for k in part:
                self.cache[k] = gathered[k]
            self.m = self.m or len(gathered[part[0]])
            self.save()

    def _compute(self, genes: np.ndarray) -> tuple[float, ...]:
        """``evaluate(genes)`` checked (:func:`_objectives`) and timed (not cached)."""
        t0 = time.perf_counter()
        f = _objectives(self.evaluate(genes.copy()), genes, self.m)
        self.eval_seconds += time.perf_counter() - t0
        return f

    def _evaluate(self, key: tuple[int, ...], genes: np.ndarray) -> tuple[float, ...]:
        """:meth:`_compute`, cached under ``key``."""
        f = self._compute(genes)
        self.m = self.m or len(f)
        self.cache[key] = f
        return f

    def tell(
        self, cands: np.ndarray, objs: np.ndarray, *, rejected: int, evaluated: int, cached: int
    ) -> dict[str, Any]:
        """Tell the searcher, close the round (history row, checkpoint) and return its history row."""
        self.rejected += rejected
        self.cache_hits += cached
        self.searcher.tell(cands, objs)
        self.generation += 1
        self.batch_start = None
        row = {
            "generation": self.generation,
            "asked": len(cands),
            "evaluated": evaluated,
            "cached": cached,
            "rejected": rejected,
            "evaluations": len(self.cache),
        }
        self.history.append(row)
        self.save()
        return row

    def result(self, *, resumed: bool, t_start: float) -> SearchResult:
        """The :class:`SearchResult` of the finished search (``wall_s``: since ``t_start``)."""
        best = self.searcher.best()
        pg, po = self.searcher.pareto()
        return SearchResult(
            best=best,
            pareto_genes=pg,
            pareto_objectives=po,
            generations=self.generation,
            evaluations=len(self.cache),
            rejected=self.rejected,
            cache_hits=self.cache_hits,
            eval_seconds=self.eval_seconds,
            wall_s=time.perf_counter() - t_start,
            resumed=resumed,
            history=list(self.history),
            evaluated=list(self.cache.items()),
        )


def _read_checkpoint(path: Path, fingerprint: str | None, searcher: Searcher) -> dict[str, Any] | None:
    import json

    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PrunekitError(
            f"search checkpoint {path} is unreadable ({type(exc).__name__}); use a new run dir or --overwrite"
        ) from None
    if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
        raise PrunekitError(
            f"{path} is not a prunekit search checkpoint (format tag missing); use a new run dir or --overwrite"
        )
    if saved.get("fingerprint") != fingerprint or saved.get("searcher_type") != type(searcher).__name__:
        raise PrunekitError(
            f"search checkpoint {path} belongs to a different search setup ({saved.get('searcher_type')}, "
            f"fingerprint {saved.get('fingerprint')}; this run: {type(searcher).__name__}, {fingerprint}); "
            "use a new run dir or --overwrite"
        )
    return saved


def _objectives(value: Any, genes: np.ndarray, m: int | None) -> tuple[float, ...]:
    f = np.asarray(value, dtype=np.float64).reshape(-1)
    if f.size == 0 or (m is not None and f.size != m):
        raise ValueError(
            f"evaluate() returned {f.size} objectives for candidate {genes.tolist()}, expected {m}"
        )
    if not np.isfinite(f).all():
        raise PrunekitError(
            f"objective of candidate {genes.tolist()} is not finite ({f.tolist()}): the evaluation diverged"
        )
    return tuple(float(v) for v in f)


def run_search(
    searcher: Searcher,
    evaluate: Evaluate,
    *,
    feasible: Feasible | None = None,
    checkpoint: str | Path | None = None,
    fingerprint: str | None = None,
    checkpoint_every: int | None = None,
    on_generation: Callable[[Searcher, dict[str, Any]], None] | None = None,
    progress: bool | None = None,
    desc: str = "search",
) -> SearchResult:
    """Drive ``searcher`` to the end (or resume it from ``checkpoint``); see the module docstring.

    Args:
        searcher: any :class:`Searcher`.
        evaluate: ``evaluate(genes int64 [n]) -> objectives`` (a float or ``M`` floats, all minimised, finite);
            only called on feasible candidates never evaluated before, in the order ``ask`` returned them.
        feasible: ``feasible(int64 [N, n]) -> bool [N]``; rejected candidates are told ``+inf`` and never
            evaluated. Also installed in the searcher (:meth:`Searcher.bind_feasible`) for its own screening.
        checkpoint: JSON file written atomically after each ask of a new round, every ``checkpoint_every``
            evaluations and after each tell; an existing one is resumed.
        fingerprint: a string identifying the search setup (config, seed, search space); a checkpoint with
            another fingerprint raises :class:`~prunekit.errors.PrunekitError`.
        checkpoint_every: also checkpoint every this many evaluations inside a round (None: only per round).
        on_generation: ``on_generation(searcher, row)`` after each tell (logging); ``row`` is the history row.
        progress: show a tqdm bar (None: :func:`prunekit.progress.progress_enabled`, i.e. a TTY and
            ``PRUNEKIT_NO_PROGRESS`` unset).
        desc: the progress bar's label.

    Returns:
        :class:`SearchResult`.

    Raises:
        PrunekitError: an unreadable / foreign checkpoint, or a non-finite objective.
    """
    if feasible is not None:
        searcher.bind_feasible(feasible)
    path = Path(checkpoint) if checkpoint is not None else None
    loop = _Loop(searcher, evaluate, path=path, fingerprint=fingerprint, checkpoint_every=checkpoint_every)
    resumed = loop.resume(desc)
    bar = _progress_bar(searcher, initial=loop.generation, progress=progress, desc=desc)
    t_start = time.perf_counter()
    try:
        while not searcher.done:
            cands = loop.ask()  # a new round is checkpointed before evaluations are spent on it
            ok = _check_feasible(feasible, cands)  # rejected: told +inf, never evaluated
            objs, evaluated, cached = loop.answer(cands, ok)  # the cache, else evaluate (row order)
            row = loop.tell(cands, objs, rejected=int((~ok).sum()), evaluated=evaluated, cached=cached)
            bar.update(1)
            bar.set_postfix(evaluations=len(loop.cache), refresh=False)
            if on_generation is not None:
                on_generation(searcher, row)
    finally:
        bar.close()
    return loop.result(resumed=resumed, t_start=t_start)


def _progress_bar(searcher: Searcher, *, initial: int, progress: bool | None, desc: str) -> Any:
    """The tqdm bar over rounds (``progress=None``: :func:`prunekit.progress.progress_enabled`)."""
    if progress is None:
        progress = progress_enabled()
    from tqdm.auto import tqdm

    return tqdm(
        total=searcher.max_generations,
        initial=initial,
        desc=desc,
        unit="gen",
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
    )


# ---------------------------------------------------------------------------------------------- random search
class RandomSearch(Searcher):
    """Uniformly random candidates within ``bounds``, ``batch`` per round for ``generations`` rounds: the
    reference implementation of the protocol and the baseline of equal budget.

    Proposals are screened with :attr:`feasible` (up to ``tries x batch`` draws a round) and are new (never asked
    before, no repeats in a round). Keeps every evaluated candidate; :meth:`pareto` is their non-dominated set.
    """

    def __init__(self, bounds: GeneBounds, *, batch: int, generations: int, seed: int = 0, tries: int = 100):
        if batch < 1 or generations < 1 or tries < 1:
            raise ValueError("batch, generations and tries must be >= 1")
        self.bounds, self.batch, self.generations, self.tries = (
            bounds,
            int(batch),
            int(generations),
            int(tries),
        )
        self.n_genes = bounds.size
        self.rng = new_rng(seed)
        self.generation = 0
        self.pending: np.ndarray | None = None
        self.asked: set[tuple[int, ...]] = set()
        self.genes: list[list[int]] = []
        self.objs: list[list[float]] = []

    @property
    def done(self) -> bool:
        return self.generation >= self.generations

    @property
    def max_generations(self) -> int:
        return self.generations

    def ask(self) -> np.ndarray:
        if self.pending is None:
            chosen: list[tuple[int, ...]] = []
            draws = 0
            while len(chosen) < self.batch and draws < self.tries * self.batch:
                cands = self.bounds.random(self.rng, self.batch)
                draws += len(cands)
                for row, ok in zip(cands, self.screen(cands), strict=True):
                    key = tuple(int(v) for v in row)
                    if ok and key not in self.asked and len(chosen) < self.batch:
                        self.asked.add(key)
                        chosen.append(key)
            self.pending = np.array(chosen, dtype=np.int64).reshape(-1, self.n_genes)
        return self.pending.copy()

    def tell(self, candidates: np.ndarray, objectives: np.ndarray) -> None:
        F = as_objectives(objectives, len(candidates))
        for g, f in zip(np.asarray(candidates), F, strict=True):
            if np.isfinite(f).all():
                self.genes.append([int(v) for v in g])
                self.objs.append([float(v) for v in f])
        self.generation += 1
        self.pending = None

    def pareto(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.objs:
            return np.zeros((0, self.n_genes), dtype=np.int64), np.zeros((0, 1))
        F = np.array(self.objs)
        idx = non_dominated(F)
        return np.array(self.genes, dtype=np.int64)[idx], F[idx]

    def state_dict(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "pending": None if self.pending is None else self.pending.tolist(),
            "asked": sorted(list(k) for k in self.asked),
            "genes": self.genes,
            "objs": self.objs,
            "rng": rng_state(self.rng),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generation = int(state["generation"])
        p = state["pending"]
        self.pending = None if p is None else np.array(p, dtype=np.int64).reshape(-1, self.n_genes)
        self.asked = {tuple(int(v) for v in k) for k in state["asked"]}
        self.genes = [list(map(int, g)) for g in state["genes"]]
        self.objs = [list(map(float, f)) for f in state["objs"]]
        self.rng = rng_from_state(state["rng"])
