"""Budgets: what the pruned model may cost, in MACs, params and latency, one or several at once.

A run's ``target:`` section (:class:`TargetConfig`) names one or more constraints, each absolute or as a ratio of
the baseline::

    target: {macs_ratio: 0.5}                      # at most half the baseline's MACs
    target: {params_ratio: 0.3, latency_ms: 0.4}   # both must hold

:class:`Budget` resolves them against the baseline and answers, for a plan or a width vector, what it costs
(:meth:`Budget.metrics`) and whether it fits (:meth:`Budget.satisfied`); :meth:`Budget.require_reachable` is the one
"is the smallest reachable model within the budget?" check used by config validation and by every method.

Units: MACs are conv + linear multiply-accumulates per sample (FLOPs = 2 x MACs); params count every parameter (BN
included); latency is milliseconds per batch-1 forward pass in the chosen runtime. MACs and params are analytic
(:class:`~prunekit.cost.macs.CostModel`, vectorised over populations); latency comes from a :class:`LatencyFn`:
today :class:`MeasuredLatency` (ONNX Runtime on this machine, cached per width vector); a predictor (a per-layer
lookup table) plugs in with the same call signature.
"""

from __future__ import annotations

import hashlib
import logging
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, model_validator

from prunekit.cost.macs import CostModel
from prunekit.distributed import broadcast_object, is_main
from prunekit.errors import PrunekitError
from prunekit.progress import progress_bar
from prunekit.space import ChannelSpace, Plan, apply, plan_from_widths

__all__ = [
    "METRICS",
    "Budget",
    "Constraint",
    "LatencyFn",
    "MeasuredLatency",
    "Metric",
    "TargetConfig",
]

log = logging.getLogger(__name__)

Metric = Literal["macs", "params", "latency_ms"]
METRICS: tuple[Metric, ...] = ("macs", "params", "latency_ms")
_UNITS = {"macs": "MACs", "params": "params", "latency_ms": "ms"}
_RATIO_KEY = {"macs": "macs_ratio", "params": "params_ratio", "latency_ms": "latency_ratio"}


class TargetConfig(BaseModel):
    """The run config's ``target:`` section: one or more constraints on the pruned model, all of which must hold.

    Each metric is given at most once, absolute or as a fraction of the baseline in ``(0, 1]``: ``macs`` /
    ``macs_ratio`` (conv + linear MACs per sample), ``params`` / ``params_ratio`` (parameter count), ``latency_ms`` /
    ``latency_ratio`` (batch-1 latency in the run's runtime, ``export.latency_threads`` threads; measured with ONNX
    Runtime on this machine, or predicted from ``latency_lut``, a table built with ``prunekit lut build``).
    """

    model_config = ConfigDict(extra="forbid")
    macs_ratio: float | None = Field(default=None, gt=0.0, le=1.0)
    macs: int | None = Field(default=None, gt=0)
    params_ratio: float | None = Field(default=None, gt=0.0, le=1.0)
    params: int | None = Field(default=None, gt=0)
    latency_ratio: float | None = Field(default=None, gt=0.0, le=1.0)
    latency_ms: float | None = Field(default=None, gt=0.0)
    latency_lut: str | None = Field(
        default=None,
        description="A latency table (prunekit lut build) for this model on this machine: a latency constraint is "
        "then predicted during the search (fast) instead of measured; the final model is still measured.",
    )

    @model_validator(mode="after")
    def _one_per_metric(self) -> TargetConfig:
        given = [m for m in METRICS if self.absolute(m) is not None or self.ratio(m) is not None]
        if not given:
            raise ValueError(
                "give at least one of target.macs_ratio / macs, params_ratio / params, latency_ratio / latency_ms"
            )
        for m in given:
            if self.absolute(m) is not None and self.ratio(m) is not None:
                raise ValueError(f"give target.{m} or target.{_RATIO_KEY[m]}, not both")
        if self.latency_lut and "latency_ms" not in given:
            raise ValueError(
                "target.latency_lut predicts latency: give target.latency_ratio or latency_ms with it"
            )
        return self

    def absolute(self, metric: Metric) -> float | None:
        """The absolute limit given for ``metric`` (None when not given)."""
        v = getattr(self, metric)
        return None if v is None else float(v)

    def ratio(self, metric: Metric) -> float | None:
        """The ratio-of-baseline limit given for ``metric`` (None when not given)."""
        return getattr(self, _RATIO_KEY[metric])

    @property
    def metrics(self) -> list[Metric]:
        """The constrained metrics, in :data:`METRICS` order."""
        return [m for m in METRICS if self.absolute(m) is not None or self.ratio(m) is not None]

    def describe(self) -> str:
        """``"macs_ratio=0.5, latency_ms=0.4"``: the constraints as the user wrote them."""
        parts = []
        for m in self.metrics:
            r = self.ratio(m)
            parts.append(f"{_RATIO_KEY[m]}={r:g}" if r is not None else f"{m}={self.absolute(m):g}")
        return ", ".join(parts)


class LatencyFn(Protocol):
    """Latency of the model kept at ``widths`` (int ``[G]``, kept channels per group), in ms at batch 1.

    :class:`MeasuredLatency` measures; a lookup-table predictor implements the same call (and may add a vectorised
    ``batch(widths [N, G]) -> [N]``). ``source`` names where the numbers come from (``measured`` / ``predicted``).
    """

    source: str

    def __call__(self, widths: np.ndarray) -> float: ...


class MeasuredLatency:
    """ONNX Runtime latency (ms, batch 1) of ``model`` pruned to a width vector, measured on this machine, paired with
    the unpruned model so that a shared machine's changing load cancels out.

    The first call at the unpruned widths measures the reference ``ref_ms`` (median over ``rounds`` interleaved rounds).
    Every other width vector is exported once and timed in ``rounds`` interleaved rounds together with the unpruned
    model; its latency is ``ref_ms * candidate / unpruned`` (medians over the rounds), i.e. its measured ratio to the
    baseline applied to the reference. On a 2-core machine shared with other jobs a lone sub-millisecond median moves
    by up to ~1.7x (BENCHMARKS.md); the ratio of back-to-back medians moves far less. The plan of a width vector keeps
    the first ``k`` channels of each group (latency depends on the shapes, not on which channels are kept); results are
    cached per width vector.

    Args:
        model: the unpruned network (not modified). space: its channel space. input_shape: ``(1, C, H, W)``.
        threads: ONNX Runtime intra-op threads. max_time_s: time budget of one timing (seconds; a search needs many,
            the pipeline re-measures the final model with its full settings). rounds: interleaved rounds per value.

    Raises (on call):
        prunekit.export.ExportError: the pruned model cannot be exported to ONNX.
    """

    source = "measured"

    def __init__(
        self,
        model: nn.Module,
        space: ChannelSpace,
        input_shape: Sequence[int],
        *,
        threads: int = 1,
        max_time_s: float = 0.5,
        rounds: int = 2,
    ) -> None:
        self.model, self.space, self.input_shape = model, space, tuple(int(x) for x in input_shape)
        self.threads, self.max_time_s, self.rounds = int(threads), float(max_time_s), int(rounds)
        self._cache: dict[tuple[int, ...], float] = {}
        self._dir: tempfile.TemporaryDirectory | None = None
        self._bar: Any = None

    def __call__(self, widths: np.ndarray) -> float:
        """Latency (ms) at ``widths``. Under ``torch.distributed`` every rank must call it with the same widths in the
        same order (a deterministic search does): rank 0 measures, the others receive its value, so all ranks take
        the same decisions."""
        key = tuple(int(w) for w in np.asarray(widths).reshape(-1))
        if key not in self._cache:
            self._cache[key] = broadcast_object(self._measure(key) if is_main() else None)
        return self._cache[key]

    def _measure(self, key: tuple[int, ...]) -> float:
        if key not in self._cache:
            base_key = tuple(int(c) for c in self.space.channels)
            if base_key not in self._cache:
                (ref,) = self._time([self._onnx(base_key, self.model)], rounds=self.rounds + 1)
                self._cache[base_key] = ref
            if key != base_key:
                plan = plan_from_widths(self.space, np.asarray(key, dtype=np.int64))
                cand = self._onnx(key, apply(self.model, plan, self.space))
                base_now, cand_ms = self._time([self._onnx(base_key, self.model), cand], rounds=self.rounds)
                self._cache[key] = self._cache[base_key] * cand_ms / base_now
            self._progress(self._cache[key])
        return self._cache[key]

    def _onnx(self, key: tuple[int, ...], net: nn.Module) -> Path:
        """The BN-folded ONNX file of ``net`` (exported once per width vector, deleted with this object)."""
        from prunekit.cost.latency import export_for_timing

        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="prunekit-budget-")
        path = Path(self._dir.name) / f"{hashlib.sha1(repr(key).encode()).hexdigest()[:16]}.onnx"
        return path if path.is_file() else export_for_timing(net, path, self.input_shape)

    def _time(self, paths: list[Path], *, rounds: int) -> list[float]:
        """Median over ``rounds`` interleaved rounds of each file's batch-1 median (ms)."""
        from prunekit.cost.latency import interleaved_ort_latency

        out = interleaved_ort_latency(
            [(p, self.input_shape) for p in paths],
            batch_sizes=(1,),
            rounds=rounds,
            threads=self.threads,
            warmup=5,
            repeats=30,
            min_time_s=0.1,
            max_time_s=self.max_time_s,
        )
        return [float(statistics.median(r[1])) for r in out]

    def _progress(self, ms: float) -> None:
        """One tick of the "latency (ORT)" progress bar: a search measures many models, each an ONNX export."""
        if self._bar is None:
            self._bar = progress_bar(desc="latency (ORT)", unit="model")
        self._bar.update(1)
        self._bar.set_postfix(last=f"{ms:.3f} ms", refresh=False)

    @property
    def evaluations(self) -> int:
        """Distinct width vectors measured so far (the unpruned model included)."""
        return len(self._cache)


@dataclass(frozen=True)
class Constraint:
    """One resolved constraint: ``metric <= limit``.

    Attributes:
        metric: ``macs`` | ``params`` | ``latency_ms``. limit: the absolute limit (MACs, params or ms).
        ratio: the ratio of the baseline the user asked for (None when given absolutely). baseline: the baseline's
            value of ``metric``. source: ``analytic`` (MACs, params) or the latency function's ``source``.
    """

    metric: Metric
    limit: float
    ratio: float | None
    baseline: float
    source: str

    def describe(self) -> str:
        asked = f"{self.limit:,.4g}" if self.metric == "latency_ms" else f"{self.limit:,.0f}"
        rel = f" ({self.ratio:g} of the baseline's {self.baseline:,.4g})" if self.ratio is not None else ""
        return f"{self.metric} <= {asked} {_UNITS[self.metric]}{rel}"


class Budget:
    """A set of constraints resolved against a baseline, with the cost functions that check them.

    Args:
        constraints: the resolved :class:`Constraint` list (at least one).
        cost: the analytic :class:`CostModel` of the space (MACs, params).
        latency: a :class:`LatencyFn` (required when a constraint is on ``latency_ms``).

    Use :meth:`from_target` to build one from a :class:`TargetConfig`.
    """

    def __init__(
        self, constraints: Sequence[Constraint], cost: CostModel, latency: LatencyFn | None = None
    ) -> None:
        if not constraints:
            raise ValueError("a Budget needs at least one constraint")
        if any(c.metric == "latency_ms" for c in constraints) and latency is None:
            raise ValueError("a latency constraint needs a latency function")
        self.constraints = list(constraints)
        self.cost, self.latency = cost, latency

    # -------------------------------------------------------------- building
    @classmethod
    def from_target(
        cls,
        target: TargetConfig,
        cost: CostModel,
        *,
        latency: LatencyFn | Callable[[], LatencyFn] | None = None,
    ) -> Budget:
        """Resolve ``target`` against the unpruned model of ``cost.space``.

        ``latency``: the latency function, or a zero-argument factory called only when the target constrains
        latency (measuring needs an ONNX export, so runs without a latency constraint never pay for it).

        Raises:
            PrunekitError: a latency constraint without a latency function.
        """
        lat: LatencyFn | None = None
        if "latency_ms" in target.metrics:
            if latency is None:
                raise PrunekitError("a latency target needs a latency measurement; set export.latency: true")
            lat = latency() if not hasattr(latency, "source") else latency  # type: ignore[operator]
        base_w = cost.base_widths
        base = {
            "macs": float(np.rint(cost.macs(base_w))),
            "params": float(np.rint(cost.params(base_w))),
        }
        out = []
        for m in target.metrics:
            b = base[m] if m != "latency_ms" else float(lat(base_w))  # type: ignore[misc]
            r = target.ratio(m)
            limit = r * b if r is not None else float(target.absolute(m))  # type: ignore[arg-type]
            out.append(Constraint(m, limit, r, b, "analytic" if m != "latency_ms" else lat.source))  # type: ignore[union-attr]
        return cls(out, cost, lat)

    @classmethod
    def of_macs(cls, cost: CostModel, limit: float) -> Budget:
        """A MACs-only budget: ``macs <= limit`` (conv + linear MACs per sample)."""
        base = float(np.rint(cost.macs(cost.base_widths)))
        return cls([Constraint("macs", float(limit), None, base, "analytic")], cost)

    # -------------------------------------------------------------- queries
    @property
    def metrics_constrained(self) -> list[Metric]:
        return [c.metric for c in self.constraints]

    @property
    def analytic(self) -> bool:
        """True when every constraint is computed analytically (MACs, params): checks are free and exact."""
        return all(c.source == "analytic" for c in self.constraints)

    def limit(self, metric: Metric) -> float | None:
        """The absolute limit on ``metric`` (None when unconstrained)."""
        return next((c.limit for c in self.constraints if c.metric == metric), None)

    def _widths(self, plan_or_widths: Plan | np.ndarray) -> np.ndarray:
        if isinstance(plan_or_widths, Plan):
            return plan_or_widths.widths(self.cost.space)
        return np.asarray(plan_or_widths, dtype=np.int64)

    def value(self, metric: Metric, plan_or_widths: Plan | np.ndarray) -> float:
        """``metric`` of one plan or width vector ``[G]`` (MACs / params rounded to integers, latency in ms).

        A plan with weight-level choices counts them: dense MACs / params of its group convs
        (:meth:`~prunekit.cost.macs.CostModel.cost`), and a predicted latency with its densities and groups
        (:meth:`~prunekit.cost.predict.LatencyModel.predict`; a measured latency function times the widths)."""
        if isinstance(plan_or_widths, Plan) and plan_or_widths.layers:
            if metric in ("macs", "params"):
                c = self.cost.cost(plan_or_widths)
                return float(c.macs if metric == "macs" else c.params)
            if hasattr(self.latency, "predict"):
                return float(self.latency.predict(plan_or_widths))  # type: ignore[union-attr]
        w = self._widths(plan_or_widths)
        if metric == "macs":
            return float(np.rint(self.cost.macs(w)))
        if metric == "params":
            return float(np.rint(self.cost.params(w)))
        if self.latency is None:
            raise ValueError("this budget has no latency function")
        return float(self.latency(w))

    def metrics(self, plan_or_widths: Plan | np.ndarray) -> dict[str, float]:
        """``{metric: value}`` of every constrained metric."""
        return {c.metric: self.value(c.metric, plan_or_widths) for c in self.constraints}

    def satisfied(self, plan_or_widths: Plan | np.ndarray) -> bool:
        """True when every constraint holds (analytic ones are checked first; latency only if they hold)."""
        order = sorted(self.constraints, key=lambda c: c.metric == "latency_ms")
        return all(self.value(c.metric, plan_or_widths) <= c.limit for c in order)

    def feasible(self, widths: np.ndarray, *, analytic_only: bool = False) -> np.ndarray:
        """Vectorised :meth:`satisfied` over a population ``widths [N, G]`` -> bool ``[N]`` (analytic constraints
        vectorised; latency per row, only for rows that pass the analytic ones). ``analytic_only``: the MACs and
        params constraints alone (a latency constraint, if any, is left to the caller)."""
        w = np.atleast_2d(np.asarray(widths, dtype=np.int64))
        ok = np.ones(len(w), dtype=bool)
        for c in self.constraints:
            if c.metric == "macs":
                ok &= np.rint(self.cost.macs(w)) <= c.limit
            elif c.metric == "params":
                ok &= np.rint(self.cost.params(w)) <= c.limit
        for c in self.constraints:
            if c.metric != "latency_ms" or analytic_only:
                continue
            rows = np.flatnonzero(ok)
            if hasattr(self.latency, "batch") and len(rows):  # a predictor: the whole population at once
                ok[rows] = self.latency.batch(w[rows]) <= c.limit  # type: ignore[union-attr]
            else:
                for i in rows:
                    ok[i] = self.value("latency_ms", w[i]) <= c.limit
        return ok

    def load(self, plan_or_widths: Plan | np.ndarray) -> float:
        """One number to bisect on, compared against :attr:`load_limit`: with a single constraint its value (in
        its own units, so a MACs-only budget bisects exactly as on MACs), else the largest ``value / limit``."""
        if len(self.constraints) == 1:
            return self.value(self.constraints[0].metric, plan_or_widths)
        return max(self.value(c.metric, plan_or_widths) / c.limit for c in self.constraints)

    @property
    def load_limit(self) -> float:
        """The bound of :meth:`load`: the single constraint's limit, else 1.0."""
        return self.constraints[0].limit if len(self.constraints) == 1 else 1.0

    def describe(self) -> str:
        """``"macs <= 15,510,000 MACs (0.5 of the baseline's 3.102e+07)"``, constraints joined by ``and``."""
        return " and ".join(c.describe() for c in self.constraints)

    # -------------------------------------------------------------- reachability
    def require_reachable(
        self, smallest: Plan | np.ndarray, *, who: str, how: str, fix: str, tol: float = 0.0
    ) -> None:
        """The one reachability check: raise when the smallest model ``who`` can reach breaks a constraint.

        Args:
            smallest: the plan or widths ``[G]`` of the smallest reachable model. who: the method (or "any plan").
            how: how that model is made (e.g. ``"every group at min_channels=1, round_to=16"``). fix: what the user
                can change. tol: relative slack a method accepts above a limit (e.g. a bisection tolerance).

        Raises:
            PrunekitError: one line naming each violated constraint, the smallest model's value, and the fix, e.g.
                ``target macs <= 1,000 MACs is below the smallest model uniform can reach (5,000 MACs with every
                group at min_channels=1, round_to=1); raise the target or lower min_channels/round_to``.
        """
        bad = []
        for c in self.constraints:
            v = self.value(c.metric, smallest)
            if v > c.limit * (1.0 + tol):
                bad.append(
                    f"{c.describe()} is below the smallest model {who} can reach ({_fmt(c.metric, v)} with {how})"
                )
        if bad:
            raise PrunekitError(f"target {'; '.join(bad)}; {fix}")

    # -------------------------------------------------------------- report
    def rows(
        self,
        plan: Plan,
        measured: dict[str, float | None] | None = None,
        baseline_measured: dict[str, float | None] | None = None,
    ) -> list[dict]:
        """Report rows ``{metric, asked, achieved, achieved_ratio, met, ratio_of_baseline, source}`` for ``plan``.

        ``measured`` (e.g. ``{"latency_ms": 0.31}``, the final measurement) overrides the search-time value and
        source; ``baseline_measured`` is the baseline's value measured the same way and at the same time, so that
        ``achieved_ratio`` is a paired ratio. A constraint given as a ratio is met when ``achieved_ratio <= ratio``
        (for MACs and params the same as ``achieved <= asked``; for a measured latency it does not depend on how
        loaded the machine was when the limit was first measured), and its ``asked`` is restated as the ratio of that
        paired baseline (the report's asked and achieved then read on one scale); an absolute one when
        ``achieved <= asked``.
        """
        out = []
        for c in self.constraints:
            base: float | None = c.baseline
            predicted = None
            if measured and measured.get(c.metric) is not None:
                achieved, source = float(measured[c.metric]), "measured"  # type: ignore[arg-type]
                base = (baseline_measured or {}).get(c.metric)
                if c.source == "predicted":
                    predicted = self.value(c.metric, plan)
            elif c.metric == "latency_ms" and measured is not None and c.metric in measured:
                achieved, source = None, c.source
            else:
                achieved, source = self.value(c.metric, plan), c.source
            ratio = achieved / base if achieved is not None and base else None
            asked = c.limit
            if source == "measured" and c.ratio is not None and base:
                asked = c.ratio * base  # restated on the paired baseline, the one the ratio is judged on
            if achieved is None:
                met = None
            elif c.ratio is not None and ratio is not None:
                met = bool(ratio <= c.ratio * (1.0 + 1e-9))
            else:
                met = bool(achieved <= c.limit)
            out.append(
                {
                    "metric": c.metric,
                    "asked": asked,
                    "achieved": achieved,
                    "achieved_ratio": ratio,
                    "met": met,
                    "ratio_of_baseline": c.ratio,
                    "source": source,
                    **({"predicted": predicted} if predicted is not None else {}),
                }
            )
        return out


def _fmt(metric: str, v: float) -> str:
    return f"{v:.4g} ms" if metric == "latency_ms" else f"{v:,.0f} {_UNITS[metric]}"
