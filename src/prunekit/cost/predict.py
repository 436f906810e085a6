"""Latency predicted from a per-layer lookup table (:mod:`prunekit.cost.lut`): :class:`LatencyModel`.

For a plan, every conv / linear layer's kept channels follow from the group widths (the same affine maps as the
cost model, :class:`~prunekit.cost.macs.CostModel`) and are looked up by multilinear interpolation
(``scipy.interpolate.RegularGridInterpolator``; JCW reads its table the same way) in the grid of its group count --
for counts that are multiples of the channel unit the aligned grid, otherwise the unaligned one (ONNX Runtime runs
those without its blocked kernels) -- times its density factor. The sum plus the table's overhead (a linear fit on
the layers' aligned and unaligned activation traffic, see :class:`~prunekit.cost.lut.Overhead`) is the prediction,
in ms per forward pass at the table's batch size. Channel counts outside a grid are read at its edge.

A :class:`LatencyModel` is a :class:`~prunekit.cost.budget.LatencyFn` (``source = "predicted"``): a latency
budget checks it during a search, and the pipeline measures the final model. :meth:`LatencyModel.batch` predicts a
population ``widths [N, G]`` (optionally ``densities [N, L]``, ``groups [N, L]``) at once.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch.nn as nn
from scipy.interpolate import RegularGridInterpolator

from prunekit.cost.lut import Entry, Grid, LatencyTable, Overhead, load_table
from prunekit.cost.macs import CostModel
from prunekit.errors import PrunekitError
from prunekit.space import ChannelSpace, Plan, apply, legal_width, plan_from_widths, uniform_widths


class _Reader:
    """Interpolates one grid at one batch size: ``(c_in [N], c_out [N]) -> ms [N]``."""

    def __init__(self, grid: Grid, batch: str, tied: bool) -> None:
        values = np.asarray(grid.ms[batch], dtype=np.float64)  # [len(c_in), len(c_out)]
        self.c_in = np.asarray(grid.c_in, dtype=np.float64)
        self.c_out = np.asarray(grid.c_out, dtype=np.float64)
        axes, self.dims = [], []
        if len(self.c_in) > 1 and not tied:
            axes.append(self.c_in)
            self.dims.append(0)
        else:
            values = values[:1]
        if len(self.c_out) > 1:
            axes.append(self.c_out)
            self.dims.append(1)
        else:
            values = values[:, :1]
        values = values.reshape([len(a) for a in axes]) if axes else values.reshape(())
        self.const = float(values) if not axes else None
        self.rgi = RegularGridInterpolator(tuple(axes), values) if axes else None

    def __call__(self, c_in: np.ndarray, c_out: np.ndarray) -> np.ndarray:
        if self.rgi is None:
            return np.full(np.shape(c_out), self.const)
        cols = []
        for d in self.dims:
            axis, c = (self.c_in, c_in) if d == 0 else (self.c_out, c_out)
            cols.append(np.clip(c, axis[0], axis[-1]))
        return self.rgi(np.stack(cols, axis=-1))


class LatencyModel:
    """Predicted latency (ms per forward pass at ``batch``) of plans over ``space``, from a latency table.

    Args:
        table: a complete :class:`~prunekit.cost.lut.LatencyTable` of the same model and input size.
        space: the model's channel space (the table's layers must be its layers).
        batch: one of ``table.batches``.

    Raises:
        PrunekitError: the table is for other layers or input size, or has no such batch size.
    """

    source = "predicted"

    def __init__(self, table: LatencyTable, space: ChannelSpace, *, batch: int = 1) -> None:
        if list(space.input_shape)[1:] != list(table.input_shape)[1:]:
            raise PrunekitError(
                f"latency table is for input {table.input_shape[1:]}, the model runs at {list(space.input_shape)[1:]}"
            )
        if batch not in table.batches:
            raise PrunekitError(f"latency table has batch sizes {table.batches}, not {batch}")
        self.table, self.space, self.batch_size = table, space, int(batch)
        self.cost = CostModel(space)
        missing = [n for n in self._layers() if n not in table.layer_entry]
        if missing:
            raise PrunekitError(
                f"latency table has no entry for layer {missing[0]!r}: was it built for this model?"
            )
        self._readers: dict[tuple[str, str], _Reader] = {}
        b = str(self.batch_size)
        for key, e in table.entries.items():
            for g_key, grid in e.grids.items():
                self._readers[(key, g_key)] = _Reader(grid, b, e.tied)
        self._rows = {n: self.cost.names.index(n) for n in self._layers()}
        self._in_pos = {n: _in_positions(table.entries[table.layer_entry[n]]) for n in self._rows}
        self._out_pos = {n: _out_positions(space, n) for n in self._rows}

    def _layers(self) -> list[str]:
        return [n for n in self.cost.names if self.space.layers[n].kind in ("conv", "linear")]

    @classmethod
    def load(
        cls, path: str | Path, space: ChannelSpace, *, batch: int = 1, allow_mismatch: bool = False
    ) -> LatencyModel:
        """:func:`~prunekit.cost.lut.load_table` (machine signature checked) + a model over ``space``."""
        return cls(load_table(path, allow_mismatch=allow_mismatch), space, batch=batch)

    # ------------------------------------------------------------------ prediction
    def layer_ms(
        self,
        widths: np.ndarray,
        densities: dict[str, np.ndarray] | None = None,
        groups: dict[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """Per conv / linear layer, predicted ms ``[N]`` for widths ``[N, G]`` (dict of ``[N]`` per layer name for
        densities / group counts; absent = dense / unchanged)."""
        out = {}
        for n, (e, key, ci, co, aligned) in self._layer_channels(widths).items():
            g = None if groups is None else groups.get(n)
            ms = self._by_groups(key, e, ci, co, g, aligned)
            d = None if densities is None else densities.get(n)
            if d is not None and len(e.densities) > 1:
                xs = np.asarray(e.densities[::-1], dtype=np.float64)
                fs = np.asarray(e.density_factor[str(self.batch_size)][::-1], dtype=np.float64)
                ms = ms * np.interp(np.asarray(d, dtype=np.float64), xs, fs)
            out[n] = ms
        return out

    def _layer_channels(self, widths: np.ndarray) -> dict[str, tuple]:
        """Per layer ``(entry, key, c_in [N], c_out [N], aligned [N])`` for widths ``[N, G]``."""
        w = np.atleast_2d(np.asarray(widths, dtype=np.float64))
        c_in, c_out = self.cost._io(w)
        out = {}
        for n, i in self._rows.items():
            key = self.table.layer_entry[n]
            e = self.table.entries[key]
            ci, co = np.rint(c_in[:, i]), np.rint(c_out[:, i])
            if e.tied:
                ci = co
            aligned = _aligned(ci, e.in_unit, e.c_in_full) & _aligned(co, e.out_unit, e.c_out_full)
            out[n] = (e, key, ci, co, aligned)
        return out

    def _by_groups(
        self, key: str, e: Entry, ci: np.ndarray, co: np.ndarray, g: np.ndarray | None, aligned: np.ndarray
    ) -> np.ndarray:
        g = (
            np.ones(ci.shape, dtype=np.int64)
            if g is None
            else np.broadcast_to(np.asarray(g, dtype=np.int64), ci.shape)
        )
        ms = np.empty(ci.shape)
        for value in np.unique(g):
            sel = g == value
            if value <= 1:
                unaligned = self._readers.get((key, "1u"))
                a = sel & (aligned | (unaligned is None))
                ms[a] = self._readers[(key, "1")](ci[a], co[a])
                u = sel & ~a
                if u.any():
                    ms[u] = unaligned(ci[u], co[u])
                continue
            reader = self._readers.get((key, str(int(value))))
            if reader is None:
                raise PrunekitError(
                    f"latency table has no {int(value)}-group measurements for {e.layers[0]}; rebuild it with "
                    f"--groups including {int(value)}"
                )
            ms[sel] = reader(ci[sel], co[sel])
        return ms

    def features(self, widths: np.ndarray) -> np.ndarray:
        """Overhead features ``[N, 3]``: ``1``, aligned and unaligned activation traffic (elements per sample)."""
        chans = self._layer_channels(widths)
        n = np.atleast_2d(widths).shape[0]
        f = np.zeros((n, 3))
        f[:, 0] = 1.0
        for name, (_, _, ci, co, aligned) in chans.items():
            traffic = ci * self._in_pos[name] + co * self._out_pos[name]
            f[:, 1] += np.where(aligned, traffic, 0.0)
            f[:, 2] += np.where(aligned, 0.0, traffic)
        return f

    def overhead_ms(self, widths: np.ndarray) -> np.ndarray:
        """The table's overhead fit at ``widths`` ``[N, G]`` (zeros for a table without one), ms ``[N]``."""
        oh = self.table.overhead
        if oh is None:
            return np.zeros(np.atleast_2d(widths).shape[0])
        return self.features(widths) @ np.asarray(oh.coef[str(self.batch_size)], dtype=np.float64)

    def batch(
        self,
        widths: np.ndarray,
        densities: dict[str, np.ndarray] | None = None,
        groups: dict[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Predicted ms ``[N]`` for a population of widths ``[N, G]`` (vectorised)."""
        layers = self.layer_ms(widths, densities, groups)
        total = np.sum(list(layers.values()), axis=0) if layers else np.zeros(np.atleast_2d(widths).shape[0])
        return total + self.overhead_ms(widths)

    def __call__(self, widths: np.ndarray) -> float:
        """Predicted ms of one width vector ``[G]`` (the :class:`~prunekit.cost.budget.LatencyFn` call)."""
        return float(self.batch(np.asarray(widths).reshape(1, -1))[0])

    def predict(self, plan: Plan) -> float:
        """Predicted ms of ``plan``, with its densities and group counts."""
        dens = {n: np.array([lc.density]) for n, lc in plan.layers.items() if lc.density is not None}
        grp = {n: np.array([lc.conv_groups]) for n, lc in plan.layers.items() if lc.conv_groups}
        return float(self.batch(plan.widths(self.space).reshape(1, -1), dens or None, grp or None)[0])


def _aligned(c: np.ndarray, unit: int, full: int) -> np.ndarray:
    return (c % max(1, unit) == 0) | (c == full)


def _in_positions(e: Entry) -> float:
    spatial = e.config.get("in_spatial") or [1]
    return float(np.prod(spatial))


def _out_positions(space: ChannelSpace, name: str) -> float:
    s = space.layers[name]
    return float(np.prod(s.out_spatial)) if s.kind == "conv" and s.out_spatial else float(s.positions)


def random_widths(space: ChannelSpace, rng: np.random.Generator, *, low: float, round_to: int) -> np.ndarray:
    """Kept channels per group ``[G]``: each group at an independent uniform fraction in ``[low, 1)`` of its
    channels, as a plan realises it (:func:`~prunekit.space.legal_width`, rounded to ``round_to``)."""
    return np.array(
        [legal_width(g, float(rng.uniform(low, 1.0)) * g.channels, round_to=round_to) for g in space.groups]
    )


# ---------------------------------------------------------------------------------------------- overhead
def measure_overhead(model: nn.Module, runtime: str = "ort", threads: int = 1, rounds: int = 3):
    """A :func:`~prunekit.cost.lut.build_table` ``overhead`` callback: time the whole model at eight calibration
    widths (full; uniform and random, aligned to the table's unit and not) in ``runtime`` and fit the residual over
    the layer predictions (:class:`~prunekit.cost.lut.Overhead`)."""

    def measure(table: LatencyTable, space: ChannelSpace) -> Overhead:
        rng = np.random.default_rng(0)
        calib = {"full": space.channels}
        for mult in (0.3, 0.5, 0.75):
            calib[f"uniform x{mult}, aligned"] = uniform_widths(space, mult, round_to=table.unit)
        for mult in (0.4, 0.7):
            calib[f"uniform x{mult}, unaligned"] = uniform_widths(space, mult, round_to=1)
        for k, step in enumerate((table.unit, 1)):
            label = f"random widths {k + 1}, {'aligned' if step > 1 else 'unaligned'}"
            calib[label] = random_widths(space, rng, low=0.25, round_to=step)
        widths = np.stack(list(calib.values()))
        nets = [apply(model, plan_from_widths(space, w), space) for w in widths]
        measured = _paired_ms(nets, space.input_shape, table.batches, runtime, threads, rounds)
        residual, coef, feats = {}, {}, None
        for b in table.batches:
            lm = LatencyModel(table, space, batch=b)  # no overhead yet: the sum of the layers
            feats = lm.features(widths)
            r = np.asarray(measured[b]) - lm.batch(widths)
            residual[str(b)] = [float(x) for x in r]
            coef[str(b)] = [float(x) for x in np.linalg.lstsq(feats, r, rcond=None)[0]]
        return Overhead(
            labels=list(calib),
            features=[[float(x) for x in row] for row in feats],
            residual_ms=residual,
            measured_ms={str(b): measured[b] for b in table.batches},
            coef=coef,
        )

    return measure


def whole_model_rounds(
    nets: Sequence[nn.Module],
    input_shape: Sequence[int],
    batches: Sequence[int],
    *,
    threads: int = 1,
    rounds: int = 3,
) -> list[dict[int, list[float]]]:
    """ONNX Runtime ms of whole models (BN folded, as deployed), per net ``{batch: [ms of round 1, 2, ...]}``, the
    nets timed in interleaved rounds (a table's overhead calibration and ``lut eval`` time models the same way)."""
    from prunekit.cost.latency import interleaved_ort_latency

    return interleaved_ort_latency(
        [(n, input_shape) for n in nets],
        batch_sizes=batches,
        rounds=rounds,
        threads=threads,
        warmup=5,
        repeats=20,
        min_time_s=0.2,
        max_time_s=1.5,
    )


def _paired_ms(
    nets: Sequence[nn.Module],
    input_shape: Sequence[int],
    batches: Sequence[int],
    runtime: str,
    threads: int,
    rounds: int,
) -> dict[int, list[float]]:
    """ms of each net as (median over rounds of its ratio to ``nets[0]`` in the same round) x ``nets[0]``'s median:
    a shared machine's load drift between rounds cancels in the ratios (ONNX Runtime; other runtimes: medians)."""
    if runtime != "ort":
        return _torch_whole_model_ms(nets, input_shape, batches, runtime, rounds)
    res = whole_model_rounds(nets, input_shape, batches, threads=threads, rounds=rounds)
    out: dict[int, list[float]] = {}
    for b in batches:
        ref = res[0][b]
        ref_ms = float(statistics.median(ref))
        out[b] = [
            ref_ms * float(statistics.median([x / r for x, r in zip(t[b], ref, strict=True)])) for t in res
        ]
    return out


def _torch_whole_model_ms(
    nets: Sequence[nn.Module], input_shape: Sequence[int], batches: Sequence[int], runtime: str, rounds: int
) -> dict[int, list[float]]:
    """Median ms per batch size of each net in torch eager (``torch``) or on a GPU (``cuda``), interleaved rounds."""
    import torch

    from prunekit.cost.runtimes import time_interleaved

    out: dict[int, list[float]] = {}
    device = "cuda" if runtime == "cuda" else "cpu"
    for b in batches:
        fns = []
        for n in nets:
            n = n.eval().to(device)
            x = torch.randn(b, *tuple(input_shape)[1:], device=device)
            fns.append(lambda n=n, x=x: n(x))
        with torch.no_grad():
            out[b] = time_interleaved(fns, runtime, rounds=rounds, min_time_s=0.2)
    return out
