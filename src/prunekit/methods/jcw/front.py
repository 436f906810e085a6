"""JCW's output: the final front as plan files, a table and a plot ("one search, many deployments").

The front is the final population's non-dominated set under (proxy loss, predicted latency), sorted by latency.
Every member is written as an ordinary plan (``<out>/front/member-{i}.json``, :meth:`~prunekit.space.Plan.save`)
whose ``meta`` carries its predicted latency (ms, batch 1, the table's runtime), proxy loss, MACs (dense and
effective: sparse layers at their density), params, mean density and ratios; ``front.json`` lists them all. Any
member trains through ``prunekit run`` with ``method: {name: plan, plan: RUN/front/member-3.json}`` -- no encoding
is ever copied by hand (the seed's ``generate_training_config.py`` step).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn as nn

from prunekit.cost.macs import CostModel
from prunekit.io import write_json
from prunekit.search.encoding import GeneEncoding
from prunekit.space import ChannelSpace, Plan

log = logging.getLogger(__name__)

__all__ = ["front_indices", "measure_front", "plot_front", "save_front", "write_front"]


def front_indices(objectives: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated rows of ``objectives`` ``[N, 2]`` (minimised), sorted by the second column
    (latency), duplicates of an objective vector kept once."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    F = np.asarray(objectives, dtype=np.float64)
    first = np.asarray(NonDominatedSorting().do(F, only_non_dominated_front=True), dtype=np.int64)
    _, uniq = np.unique(F[first], axis=0, return_index=True)
    first = first[np.sort(uniq)]
    return first[np.argsort(F[first, 1], kind="stable")]


def save_front(
    out_dir: Path,
    enc: GeneEncoding,
    cost: CostModel,
    genes: np.ndarray,
    objectives: np.ndarray,
    *,
    spec: str | None,
    full_ms: float,
) -> tuple[list[Plan], list[dict[str, Any]]]:
    """Write ``<out_dir>/member-{i}.json`` for every front member and ``<out_dir>/front.json`` (``full_ms``: the
    unpruned model's predicted latency, for the members' ``predicted_ratio``).

    Returns:
        ``(plans, rows)``: the members' plans (latency order) and one summary row per member.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    base = cost.cost()
    plans, rows = [], []
    for i, k in enumerate(front_indices(objectives)):
        plan = enc.decode(genes[k], spec=spec)
        c = cost.cost(plan)
        dens = enc.decode_densities(genes[k])
        row = {
            "member": i,
            "file": f"member-{i}.json",
            "predicted_ms": float(objectives[k, 1]),
            "predicted_ratio": float(objectives[k, 1] / full_ms),
            "proxy_loss": float(objectives[k, 0]),
            "macs": int(c.macs),
            "effective_macs": int(c.effective_macs),
            "params": int(c.params),
            "macs_ratio": float(c.macs / base.macs),
            "params_ratio": float(c.params / base.params),
            "mean_density": float(dens.mean()) if dens.size else 1.0,
            "mean_width_ratio": float(np.mean(enc.decode_widths(genes[k]) / np.asarray(enc.space.channels))),
            "genes": [int(x) for x in genes[k]],
        }
        plans.append(plan)
        rows.append(row)
    write_front(out_dir, plans, rows, full_ms)
    return plans, rows


def write_front(out_dir: Path, plans: list[Plan], rows: list[dict[str, Any]], full_ms: float) -> None:
    """(Re)write the member plan files (their ``meta`` = the row without ``file`` / ``genes``) and ``front.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for plan, row in zip(plans, rows, strict=True):
        plan.meta.update({"method": "jcw", **{k: v for k, v in row.items() if k not in ("file", "genes")}})
        plan.save(out_dir / row["file"])
    write_json(out_dir / "front.json", {"full_ms": float(full_ms), "members": rows})


def measure_front(
    model: nn.Module, space: ChannelSpace, plans: list[Plan], *, rounds: int = 3, threads: int = 1
) -> tuple[float, list[float]]:
    """Measured ONNX Runtime latency (ms, batch 1, ``threads`` threads, median over ``rounds`` interleaved rounds)
    of the unpruned ``model`` and of every front member (``apply(model, plan)``: weights do not matter to a dense
    runtime, the pruned shapes do; sparse layers are exported with their zeros).

    Returns:
        ``(unpruned ms, [member ms, ...])``.

    Raises:
        PrunekitError: an export or ONNX Runtime failure (:func:`prunekit.cost.latency.interleaved_ort_latency`).
    """
    import statistics

    from prunekit.cost.latency import interleaved_ort_latency
    from prunekit.space import apply

    shape = tuple(space.input_shape)
    nets = [model.eval()] + [apply(model, p, space).eval() for p in plans]
    times = interleaved_ort_latency(
        [(m, shape) for m in nets], batch_sizes=(1,), rounds=rounds, threads=threads
    )
    ms = [float(statistics.median(t[1])) for t in times]
    return ms[0], ms[1:]


def plot_front(history: list[dict[str, Any]], rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Proxy loss vs predicted latency: every generation's population (faded, later ones darker) and the final
    front (markers, numbered). Returns the path, or None when matplotlib cannot draw."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - matplotlib is a dependency
        log.warning("jcw: no front plot (%s)", exc)
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    n = max(1, len(history))
    for j, h in enumerate(history):
        ax.scatter(
            h["population_latency_ms"],
            h["population_loss"],
            s=8,
            color="tab:blue",
            alpha=0.08 + 0.4 * (j + 1) / n,
            linewidths=0,
        )
    if rows:
        x = [r["predicted_ms"] for r in rows]
        y = [r["proxy_loss"] for r in rows]
        ax.plot(x, y, "o-", color="tab:red", label="final front")
        for r in rows:
            ax.annotate(
                str(r["member"]),
                (r["predicted_ms"], r["proxy_loss"]),
                fontsize=7,
                textcoords="offset points",
                xytext=(3, 3),
            )
    ax.set_xlabel("predicted latency (ms, batch 1)")
    ax.set_ylabel("proxy validation loss")
    ax.set_title("JCW search: populations by generation (faded) and the final front")
    ax.legend(loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
