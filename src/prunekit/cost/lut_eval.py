"""How well a latency table predicts whole models (``prunekit lut eval``).

Random plans of one model -- uniform width multipliers and random per-group widths, each rounded to the table's
channel unit and unrounded, optionally with weight densities and group convs -- are measured end to end in ONNX
Runtime (exported as on deployment, BatchNorm folded; timed in interleaved rounds) and compared with
:meth:`~prunekit.cost.predict.LatencyModel.predict`. Reported: the median and 90th-percentile relative error
``|predicted - measured| / measured``, the share of plans within +-10% (nn-Meter's yardstick, MobiSys'21), and the
run-to-run noise of the measurement itself (the spread of each plan's per-round medians), so an error below the
noise is read as such.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field

import numpy as np
import torch.nn as nn

from prunekit.cost.predict import LatencyModel, paired_ratio, random_widths, whole_model_rounds
from prunekit.space import (
    ChannelSpace,
    Plan,
    add_weight_choices,
    apply,
    plan_from_widths,
    uniform_widths,
)


@dataclass
class EvalRow:
    """One plan: predicted and measured ms, both also as a ratio to the unpruned model (measured in the same
    interleaved rounds, so a shared machine's load drift cancels), and the measurement's noise (``(max - min) /
    median`` of the per-round medians)."""

    label: str
    predicted_ms: float
    measured_ms: float
    predicted_ratio: float
    measured_ratio: float
    noise: float

    @property
    def error(self) -> float:
        return (self.predicted_ms - self.measured_ms) / self.measured_ms

    @property
    def ratio_error(self) -> float:
        return (self.predicted_ratio - self.measured_ratio) / self.measured_ratio


@dataclass
class EvalResult:
    batch: int
    rows: list[EvalRow] = field(default_factory=list)
    full_ms: float | None = None

    def summary(self) -> dict:
        """Median / 90th-percentile absolute relative error, share within +-10%, of the ms and of the ratios to
        the unpruned model; the median measurement noise."""
        out: dict = {"batch": self.batch, "plans": len(self.rows)}
        for name, errs in (
            ("", [r.error for r in self.rows]),
            ("ratio_", [r.ratio_error for r in self.rows]),
        ):
            err = np.abs(errs)
            out[f"{name}median_abs_error"] = float(np.median(err)) if len(err) else None
            out[f"{name}p90_abs_error"] = float(np.percentile(err, 90)) if len(err) else None
            out[f"{name}within_10pct"] = float(np.mean(err <= 0.10)) if len(err) else None
        out["median_noise"] = float(np.median([r.noise for r in self.rows])) if self.rows else None
        return out

    def to_dict(self) -> dict:
        rows = [{**asdict(r), "error": r.error, "ratio_error": r.ratio_error} for r in self.rows]
        return {**self.summary(), "full_ms": self.full_ms, "rows": rows}


def random_plans(
    space: ChannelSpace, unit: int, n: int, *, seed: int = 0, weights: bool = False, low: float = 0.1
) -> list[tuple[str, Plan]]:
    """``n`` labelled plans: uniform multipliers in ``[low, 1)`` and random per-group widths (each group in
    ``[low, 1)`` of its channels), rounded to ``unit`` and unrounded; with ``weights``, every third plan also gets
    a density 0.5 and 2-group convs where legal. The default ``low`` reaches below the channel unit of narrow
    layers (a 16-channel layer at 2 channels), where a search's small budgets put them."""
    rng = np.random.default_rng(seed)
    plans: list[tuple[str, Plan]] = []
    for k in range(n):
        rounded = k % 2 == 0
        step = unit if rounded else 1
        if k % 4 < 2:
            mult = float(rng.uniform(low, 1.0))
            widths = uniform_widths(space, mult, round_to=step, min_channels=1)
            label = f"uniform x{mult:.2f}"
        else:
            widths = random_widths(space, rng, low=low, round_to=step)
            label = "random widths"
        plan = plan_from_widths(space, widths)
        label += f", {'rounded to ' + str(unit) if rounded else 'unrounded'}"
        if weights and k % 3 == 2:
            plan, _ = add_weight_choices(plan, space, density=0.5, conv_groups=2, permute=False)
            label += ", density 0.5 + 2 groups"
        plans.append((label, plan))
    return plans


def evaluate(
    model: nn.Module,
    space: ChannelSpace,
    lm: LatencyModel,
    plans: list[tuple[str, Plan]],
    *,
    threads: int = 1,
    rounds: int = 3,
) -> EvalResult:
    """Measure every plan (interleaved rounds, in the table's runtime, ``lm``'s batch size) and compare with
    ``lm``."""
    result = EvalResult(batch=lm.batch_size)
    nets = [model] + [apply(model, p, space) for _, p in plans]  # the unpruned model first: the reference
    runtime = str(lm.table.machine.get("runtime", "ort"))
    times = whole_model_rounds(
        nets, space.input_shape, (lm.batch_size,), runtime=runtime, threads=threads, rounds=rounds
    )
    b = lm.batch_size
    full_ms = float(statistics.median(times[0][b]))
    full_pred = lm(space.channels)
    for (label, plan), t in zip(plans, times[1:], strict=True):
        med = float(statistics.median(t[b]))
        pred = lm.predict(plan)
        noise = (max(t[b]) - min(t[b])) / med
        # the ratio per round, paired with the full model
        result.rows.append(
            EvalRow(label, pred, med, pred / full_pred, paired_ratio(t[b], times[0][b]), noise)
        )
    result.full_ms = full_ms
    return result
