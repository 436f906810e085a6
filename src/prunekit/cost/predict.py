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
from functools import partial
from pathlib import Path

import numpy as np
import torch.nn as nn
from scipy.interpolate import RegularGridInterpolator

from prunekit.cost.lut import Entry, Grid, LatencyTable, Overhead, group_count, load_table
from prunekit.cost.macs import CostModel
from prunekit.cost.ort_layout import OrtLayout
from prunekit.errors import PrunekitError
from prunekit.space import ChannelSpace, Plan, apply, legal_width, plan_from_widths, uniform_widths
from prunekit.space.plan import add_weight_choices


class _Reader:
    """Interpolates one grid at one batch size: ``(c_in [N], c_out [N]) -> ms [N]``."""

    def __init__(self, grid: Grid, batch: str, tied: bool, reach: float = 0.0) -> None:
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
        # ``reach``: read up to that many channels past the last point, linearly extrapolated (a ``Gu`` grid stops
        # one group below the block multiple its unblocked layers may still reach on one axis)
        self.reach = float(reach)
        self.rgi = (
            RegularGridInterpolator(tuple(axes), values, bounds_error=False, fill_value=None)
            if axes
            else None
        )

    def __call__(self, c_in: np.ndarray, c_out: np.ndarray) -> np.ndarray:
        if self.rgi is None:
            return np.full(np.shape(c_out), self.const)
        cols = []
        for d in self.dims:
            axis, c = (self.c_in, c_in) if d == 0 else (self.c_out, c_out)
            cols.append(np.clip(c, axis[0], axis[-1] + self.reach))
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
                g = group_count(g_key)
                reach = g * table.unit if g > 1 and g_key.endswith("u") else 0.0
                self._readers[(key, g_key)] = _Reader(grid, b, e.tied, reach)
        self._rows = {n: self.cost.names.index(n) for n in self._layers()}
        entries = [table.entries[table.layer_entry[n]] for n in self._rows]
        self._in_pos = np.array([_in_positions(e) for e in entries])
        self._out_pos = np.array([_out_positions(space, n) for n in self._rows])
        self._tied = np.array([e.tied for e in entries], dtype=bool)
        self._in_unit = np.array([e.in_unit for e in entries])
        self._out_unit = np.array([e.out_unit for e in entries])
        self._in_full = np.array([e.c_in_full for e in entries])
        self._out_full = np.array([e.c_out_full for e in entries])
        # a regrouped conv's groups multiply the layer's own (a model's grouped conv stays as it is at g = 1)
        self._base_groups = np.array(
            [1 if e.tied else int(e.config.get("groups", 1)) for e in entries], dtype=np.int64
        )
        self.layout = (
            OrtLayout(self.cost, list(self._rows), table.unit, self._in_pos, self._out_pos)
            if table.machine.get("runtime") == "ort"
            else None
        )

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
        return self._layer_ms(*self._channels(widths, groups), densities)

    def _layer_ms(
        self, ci: np.ndarray, co: np.ndarray, g: np.ndarray, densities: dict[str, np.ndarray] | None
    ) -> dict[str, np.ndarray]:
        blocked = self._blocked(ci, co, g)
        out = {}
        for j, n in enumerate(self._rows):
            key = self.table.layer_entry[n]
            e = self.table.entries[key]
            ms = self._read(key, e, ci[:, j], co[:, j], g[:, j], blocked[:, j])
            d = None if densities is None else densities.get(n)
            if d is not None and len(e.densities) > 1:
                xs = np.asarray(e.densities[::-1], dtype=np.float64)
                fs = np.asarray(e.density_factor[str(self.batch_size)][::-1], dtype=np.float64)
                ms = ms * np.interp(np.asarray(d, dtype=np.float64), xs, fs)
            out[n] = ms
        return out

    def _channels(
        self, widths: np.ndarray, groups: dict[str, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Kept input / output channels and group counts ``[N, L]`` of the table layers for widths ``[N, G]``
        (a depthwise conv: ``c_in = c_out``; group counts: the plan's ``conv_groups``, else 1)."""
        w = np.atleast_2d(np.asarray(widths, dtype=np.float64))
        c_in, c_out = self.cost._io(w)
        idx = list(self._rows.values())
        ci, co = np.rint(c_in[:, idx]), np.rint(c_out[:, idx])
        ci = np.where(self._tied, co, ci)
        g = np.ones(ci.shape, dtype=np.int64)
        for j, n in enumerate(self._rows):
            if groups is not None and groups.get(n) is not None:
                g[:, j] = np.broadcast_to(np.asarray(groups[n], dtype=np.int64), (ci.shape[0],))
        return ci, co, g

    def _blocked(self, ci: np.ndarray, co: np.ndarray, g: np.ndarray) -> np.ndarray:
        """``[N, L]``: the layer runs the runtime's blocked kernel -- ONNX Runtime's NCHWc rule
        (:class:`~prunekit.cost.ort_layout.OrtLayout`), else both channel counts multiples of the unit."""
        if self.layout is not None:
            return self.layout.blocked(ci, co, g * self._base_groups)
        return _aligned(ci, self._in_unit, self._in_full) & _aligned(co, self._out_unit, self._out_full)

    def _read(
        self, key: str, e: Entry, ci: np.ndarray, co: np.ndarray, g: np.ndarray, blocked: np.ndarray
    ) -> np.ndarray:
        """ms ``[N]`` of one layer: a regrouped conv from its ``G`` grid where it runs blocked, its ``Gu`` grid where
        not (a table without ``Gu``: ``G`` for both); a blocked one from the aligned grid
        (ONNX Runtime: at the channel counts padded to the block, which is what it computes); an unblocked one from
        the unaligned grid of its input count's residue (``1u``: a multiple of half the unit, ``1o``: not; ONNX
        Runtime blocks the former, so it reads ``1o``)."""
        ms = np.empty(ci.shape)
        for value in np.unique(g):
            sel = g == value
            if value > 1:
                reader = self._readers.get((key, str(int(value))))
                if reader is None:
                    raise PrunekitError(
                        f"latency table has no {int(value)}-group measurements for {e.layers[0]}; rebuild it with "
                        f"--groups including {int(value)}"
                    )
                odd = self._readers.get((key, f"{int(value)}u"))  # tables before it: one grid for both
                off = sel & ~blocked if odd is not None else np.zeros_like(sel)
                on = sel & ~off
                if on.any():
                    ms[on] = reader(ci[on], co[on])
                if off.any():
                    ms[off] = odd(ci[off], co[off])
                continue
            u = self._readers.get((key, "1u"))
            a = sel & (blocked | (u is None))
            if a.any():
                c_in, c_out = ci[a], co[a]
                if self.layout is not None:  # ONNX Runtime computes on channels padded to its block
                    b = self.table.unit
                    if e.out_unit > 1:
                        c_out = np.ceil(c_out / b) * b
                    if e.in_unit > 1:
                        c_in = np.where(c_in >= b, np.ceil(c_in / b) * b, c_in)
                ms[a] = self._readers[(key, "1")](c_in, c_out)
            rest = sel & ~a
            odd_reader = self._readers.get((key, "1o"))
            if odd_reader is not None:
                half = max(1, (e.out_unit if e.tied else e.in_unit) // 2)  # depthwise: its one count
                odd = rest & ((co if e.tied else ci) % half != 0)
                if odd.any():
                    ms[odd] = odd_reader(ci[odd], co[odd])
                rest = rest & ~odd
            if rest.any():
                ms[rest] = u(ci[rest], co[rest])
        return ms

    def features(self, widths: np.ndarray, groups: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Overhead features ``[N, F]`` (named by :meth:`feature_names`; elements per sample) for widths ``[N, G]``.

        ONNX Runtime: ``1``, the reorders the blocked layers paid when timed alone, the reorders at the model's
        layout transitions, the outputs of unblocked convs whose add and activation run as nodes of their own
        (:meth:`~prunekit.cost.ort_layout.OrtLayout.features`). Other runtimes: ``1``, the activation traffic of
        aligned and of unaligned layers."""
        return self._features(*self._channels(widths, groups))

    def _features(self, ci: np.ndarray, co: np.ndarray, g: np.ndarray) -> np.ndarray:
        n = ci.shape[0]
        if self.layout is not None:
            f = self.layout.features(ci, co, g * self._base_groups)
            return np.column_stack([np.ones(n)] + [f[k] for k in _ORT_FEATURES])
        blocked = self._blocked(ci, co, g)
        traffic = ci * self._in_pos + co * self._out_pos
        return np.column_stack(
            [np.ones(n), np.where(blocked, traffic, 0.0).sum(1), np.where(blocked, 0.0, traffic).sum(1)]
        )

    def feature_names(self) -> list[str]:
        """Names of the :meth:`features` columns."""
        if self.layout is not None:
            return ["1", *_ORT_FEATURES]
        return ["1", "aligned traffic", "unaligned traffic"]

    def feature_signs(self) -> list[int]:
        """The sign each :meth:`features` coefficient must have (0: free) -- ONNX Runtime: the reorders the layers
        paid alone are time the model does not spend (<= 0), its own reorders and unfused adds are time it does
        spend (>= 0); other runtimes: free."""
        if self.layout is not None:
            return [0, *(_ORT_SIGNS[k] for k in _ORT_FEATURES)]
        return [0, 0, 0]

    def overhead_ms(self, widths: np.ndarray, groups: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """The table's overhead fit at ``widths`` ``[N, G]`` (zeros for a table without one), ms ``[N]``."""
        return self._overhead_ms(*self._channels(widths, groups))

    def _overhead_ms(self, ci: np.ndarray, co: np.ndarray, g: np.ndarray) -> np.ndarray:
        oh = self.table.overhead
        if oh is None:
            return np.zeros(ci.shape[0])
        return self._features(ci, co, g) @ np.asarray(oh.coef[str(self.batch_size)], dtype=np.float64)

    def batch(
        self,
        widths: np.ndarray,
        densities: dict[str, np.ndarray] | None = None,
        groups: dict[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Predicted ms ``[N]`` for a population of widths ``[N, G]`` (vectorised; the channel counts are worked
        out once for the layers and the overhead)."""
        ci, co, g = self._channels(widths, groups)
        layers = self._layer_ms(ci, co, g, densities)
        total = np.sum(list(layers.values()), axis=0) if layers else np.zeros(ci.shape[0])
        return total + self._overhead_ms(ci, co, g)

    def __call__(self, widths: np.ndarray) -> float:
        """Predicted ms of one width vector ``[G]`` (the :class:`~prunekit.cost.budget.LatencyFn` call)."""
        return float(self.batch(np.asarray(widths).reshape(1, -1))[0])

    def predict(self, plan: Plan) -> float:
        """Predicted ms of ``plan``, with its densities and group counts."""
        dens = {n: np.array([lc.density]) for n, lc in plan.layers.items() if lc.density is not None}
        grp = {n: np.array([lc.conv_groups]) for n, lc in plan.layers.items() if lc.conv_groups}
        return float(self.batch(plan.widths(self.space).reshape(1, -1), dens or None, grp or None)[0])


_ORT_FEATURES = ("alone", "transitions", "unfused")
_ORT_SIGNS = {"alone": -1, "transitions": 1, "unfused": 1}


def _aligned(c: np.ndarray, unit: np.ndarray, full: np.ndarray) -> np.ndarray:
    return (c % np.maximum(1, unit) == 0) | (c == full)


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
    """A :func:`~prunekit.cost.lut.build_table` ``overhead`` callback: time the whole model at thirteen calibration
    widths (full; uniform and random, aligned to the table's unit and not, one uniform x0.15) plus, when the table
    measured 2-group convs, two aligned plans with every legal dense conv at 2 groups, in ``runtime``, and fit the
    residual over the layer predictions (:class:`~prunekit.cost.lut.Overhead`)."""

    def measure(table: LatencyTable, space: ChannelSpace) -> Overhead:
        rng = np.random.default_rng(0)
        calib = {"full": space.channels}
        for mult in (0.3, 0.5, 0.75):
            calib[f"uniform x{mult}, aligned"] = uniform_widths(space, mult, round_to=table.unit)
        for mult in (0.15, 0.4, 0.55, 0.7, 0.85):  # x0.15: the narrow plans, below the channel unit
            calib[f"uniform x{mult}, unaligned"] = uniform_widths(space, mult, round_to=1)
        for k, step in enumerate((table.unit, 1, table.unit, 1)):
            label = f"random widths {k + 1}, {'aligned' if step > 1 else 'unaligned'}"
            calib[label] = random_widths(space, rng, low=0.25, round_to=step)
        plans = {label: plan_from_widths(space, w) for label, w in calib.items()}
        if (
            2 in table.groups
        ):  # the layouts of group convs differ (per-group channel counts): calibrate them too
            for mult in (0.5, 1.0):
                base = plan_from_widths(space, uniform_widths(space, mult, round_to=table.unit))
                plans[f"uniform x{mult}, aligned, 2 groups"] = add_weight_choices(
                    base, space, conv_groups=2, permute=False
                )[0]
        widths = np.stack([p.widths(space) for p in plans.values()])
        groups = _groups_of(list(plans.values()))
        nets = [apply(model, p, space) for p in plans.values()]
        measured = _paired_ms(nets, space.input_shape, table.batches, runtime, threads, rounds)
        residual, coef, feats = {}, {}, None
        for b in table.batches:
            lm = LatencyModel(table, space, batch=b)  # no overhead yet: the sum of the layers
            feats = lm.features(widths, groups)
            r = np.asarray(measured[b]) - lm.batch(widths, None, groups)
            residual[str(b)] = [float(x) for x in r]
            coef[str(b)] = [float(x) for x in robust_fit(feats, r, signs=lm.feature_signs())]
        return Overhead(
            labels=list(plans),
            names=lm.feature_names(),
            features=[[float(x) for x in row] for row in feats],
            residual_ms=residual,
            measured_ms={str(b): measured[b] for b in table.batches},
            coef=coef,
        )

    return measure


def _groups_of(plans: Sequence[Plan]) -> dict[str, np.ndarray] | None:
    """``{layer: group counts [N]}`` over ``plans`` (1 where a plan leaves the layer as it is); None if none
    regroups."""
    names = {n for p in plans for n, lc in p.layers.items() if lc.conv_groups}
    if not names:
        return None
    return {
        n: np.array([(p.layers[n].conv_groups or 1) if n in p.layers else 1 for p in plans])
        for n in sorted(names)
    }


def robust_fit(
    features: np.ndarray, residual: np.ndarray, *, signs: Sequence[int] | None = None
) -> np.ndarray:
    """Coefficients ``[F]`` of ``residual [K] ~ features [K, F]``: a Cauchy-loss fit (``scipy.optimize.least_squares``,
    ``loss="cauchy"`` with a scale of the residuals' median absolute deviation) on column-scaled features, so one
    calibration model timed during a slow phase of a shared machine does not drag the whole overhead fit.

    ``signs[f]`` (``-1`` / ``0`` / ``+1``) bounds coefficient ``f`` to ``<= 0`` / free / ``>= 0``: a dozen
    calibration models can otherwise buy a better fit with a physically impossible coefficient (a reorder that
    saves time), which then extrapolates badly to plans unlike the calibration ones."""
    from scipy.optimize import least_squares, lsq_linear

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(residual, dtype=np.float64)
    s = np.zeros(x.shape[1]) if signs is None else np.asarray(signs, dtype=np.float64)
    lower = np.where(s > 0, 0.0, -np.inf)
    upper = np.where(s < 0, 0.0, np.inf)
    scale = np.where(np.abs(x).max(axis=0) > 0, np.abs(x).max(axis=0), 1.0)
    xs = x / scale
    start = lsq_linear(xs, y, bounds=(lower, upper)).x if s.any() else np.linalg.lstsq(xs, y, rcond=None)[0]
    mad = float(np.median(np.abs(y - xs @ start))) or float(np.std(y)) or 1e-6
    if s.any():  # least_squares wants a start strictly inside its bounds
        eps = 1e-12
        start = np.clip(start, np.where(s > 0, eps, -np.inf), np.where(s < 0, -eps, np.inf))
    fit = least_squares(
        lambda c: xs @ c - y, start, loss="cauchy", f_scale=max(mad, 1e-6), bounds=(lower, upper)
    )
    return fit.x / scale


def whole_model_rounds(
    nets: Sequence[nn.Module],
    input_shape: Sequence[int],
    batches: Sequence[int],
    *,
    runtime: str = "ort",
    threads: int = 1,
    rounds: int = 3,
) -> list[dict[int, list[float]]]:
    """ms of whole models as deployed, per net ``{batch: [ms of round 1, 2, ...]}``, the nets timed in interleaved
    rounds (a table's overhead calibration and ``lut eval`` time models the same way): ONNX Runtime and DeepSparse
    run the exported model (BN folded), torch / CUDA the module."""
    if runtime == "ort":
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
    if runtime == "deepsparse":
        return _deepsparse_rounds(nets, input_shape, batches, threads, rounds)
    return _torch_rounds(nets, input_shape, batches, runtime, rounds)


def _deepsparse_rounds(
    nets: Sequence[nn.Module], input_shape: Sequence[int], batches: Sequence[int], threads: int, rounds: int
) -> list[dict[int, list[float]]]:
    import tempfile

    from prunekit.cost.deepsparse import time_models
    from prunekit.cost.latency import export_for_timing

    out: list[dict[int, list[float]]] = [{} for _ in nets]
    with tempfile.TemporaryDirectory(prefix="prunekit-ds-") as tmp:
        paths = [
            export_for_timing(n, Path(tmp) / f"m{i}.onnx", input_shape, exporter="torchscript")
            for i, n in enumerate(nets)
        ]
        for b in batches:
            per = time_models(paths, b, threads=threads, rounds=rounds, min_time_s=0.2)
            for d, ms in zip(out, per, strict=True):
                d[b] = ms
    return out


def _torch_rounds(
    nets: Sequence[nn.Module], input_shape: Sequence[int], batches: Sequence[int], runtime: str, rounds: int
) -> list[dict[int, list[float]]]:
    """torch eager (``torch``) or GPU (``cuda``, CUDA events): one interleaved pass over the nets per round."""
    import torch

    from prunekit.cost.runtimes import time_interleaved

    out: list[dict[int, list[float]]] = [{b: [] for b in batches} for _ in nets]
    device = "cuda" if runtime == "cuda" else "cpu"
    for b in batches:
        fns = []
        for n in nets:
            n = n.eval().to(device)
            x = torch.randn(b, *tuple(input_shape)[1:], device=device)
            fns.append(partial(_no_grad_call, n, x))
        for r in range(rounds):
            order = list(range(len(fns)))[r % len(fns) :] + list(range(len(fns)))[: r % len(fns)]
            ms = time_interleaved([fns[i] for i in order], runtime, rounds=1, min_time_s=0.2)
            for i, t in zip(order, ms, strict=True):
                out[i][b].append(t)
    return out


def _no_grad_call(net: nn.Module, x) -> None:
    import torch

    with torch.no_grad():
        net(x)


def _paired_ms(
    nets: Sequence[nn.Module],
    input_shape: Sequence[int],
    batches: Sequence[int],
    runtime: str,
    threads: int,
    rounds: int,
) -> dict[int, list[float]]:
    """ms of each net as (median over rounds of its ratio to ``nets[0]`` in the same round) x ``nets[0]``'s median:
    a shared machine's load drift between rounds cancels in the ratios."""
    res = whole_model_rounds(nets, input_shape, batches, runtime=runtime, threads=threads, rounds=rounds)
    out: dict[int, list[float]] = {}
    for b in batches:
        ref_ms = float(statistics.median(res[0][b]))
        out[b] = [ref_ms * paired_ratio(t[b], res[0][b]) for t in res]
    return out


def paired_ratio(times_ms: Sequence[float], ref_ms: Sequence[float]) -> float:
    """Median over rounds of ``times_ms[i] / ref_ms[i]``: a net's latency relative to a reference timed in the same
    interleaved rounds (:func:`whole_model_rounds`), so a shared machine's load drift between rounds cancels.

    Raises:
        ValueError: the two lists differ in length (not the same rounds).
    """
    return float(statistics.median([x / r for x, r in zip(times_ms, ref_ms, strict=True)]))
