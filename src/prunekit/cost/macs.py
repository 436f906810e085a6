"""Analytic MACs and parameter counts of any plan, without building a model.

Convention (stated everywhere prunekit reports costs): **MACs** are multiply-accumulates of conv and linear layers
only, for one input sample at the traced resolution; **FLOPs = 2 x MACs**. BN, activations and pooling are not
counted (the convention of the MobileNet / ResNet / MetaPruning papers). **Params** are all learnable parameters
(BN affine included).

Two counts under weight-level choices. **Dense** MACs / params count every weight the model stores (a group conv
stores ``1/G`` of the dense weight, so it is counted as such). **Effective** MACs / params count only the weights a
plan keeps non-zero: a layer with a block density keeps ``kept_elements(O, F, d, block)`` of its ``O x F`` weights
(exact: the edge rule of :mod:`prunekit.space.sparsity` makes the count depend on the shape only), and its effective
MACs are those weights times its output positions. Without densities both counts are equal. Budgets constrain the
dense counts (``Constraint.metric`` ``macs`` / ``params``).

Each layer's input and output widths are affine in the group widths ``w`` (shape ``[G]``):
``c_in = in_fixed + A_in @ w`` and ``c_out = out_fixed + A_out @ w`` (``A`` carries the flatten multiplicity of a
Linear after flatten and concat offsets collapse into sums). Then per layer
``MACs = a_io * c_in * c_out + a_o * c_out`` and ``params = p_io * c_in * c_out + p_o * c_out + p_fix``, so a whole
population of candidate widths ``[N, G]`` is costed with a few matrix products (see ``bench/bench_cost.py``).

The analytic count is cross-checked against :mod:`torch.utils.flop_counter` on the applied model by the tests and by
``prunekit check`` (:func:`measure_macs`), the effective count against the non-zero weights of the applied model
times their output positions (:func:`measure_effective`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from prunekit.space.channels import ChannelSpace
from prunekit.space.plan import Plan
from prunekit.space.sparsity import DEFAULT_BLOCK, kept_elements


@dataclass
class Cost:
    """Cost of one plan. ``macs`` (dense multiply-accumulates, conv + linear, one sample), ``params`` (dense count),
    ``flops`` = 2 x macs, ``effective_macs`` / ``effective_params`` (non-zero weights only; equal to the dense
    counts without densities), ``layers``: per-layer rows ``{name, kind, in, out, macs, params, effective_macs,
    effective_params}``."""

    macs: int
    params: int
    layers: list[dict] = field(default_factory=list)
    effective_macs: int | None = None
    effective_params: int | None = None

    def __post_init__(self) -> None:
        if self.effective_macs is None:
            self.effective_macs = self.macs
        if self.effective_params is None:
            self.effective_params = self.params

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def as_dict(self) -> dict:
        return {
            "macs": self.macs,
            "flops": self.flops,
            "params": self.params,
            "effective_macs": self.effective_macs,
            "effective_params": self.effective_params,
        }


class CostModel:
    """Analytic cost of plans over one :class:`ChannelSpace`.

    Example::

        cm = CostModel(space)
        cm.cost(plan).macs            # int
        cm.macs(widths)               # widths: int array [G] or [N, G] -> float array [] or [N]
    """

    def __init__(self, space: ChannelSpace) -> None:
        self.space = space
        names = list(space.layers)
        self.names = names
        L, G = len(names), len(space.groups)
        idx = {n: i for i, n in enumerate(names)}
        self.kinds = [space.layers[n].kind for n in names]
        self.A_in = np.zeros((L, G))
        self.A_out = np.zeros((L, G))
        self.in_fixed = np.array([float(space.layers[n].in_size) for n in names])
        self.out_fixed = np.array([float(space.layers[n].out_size) for n in names])
        for g in space.groups:
            for m in g.members:
                if m.module not in idx:
                    continue
                i = idx[m.module]
                coef = len(m.positions) / g.channels
                if m.dim == "out":
                    self.A_out[i, g.index] += coef
                    self.out_fixed[i] -= coef * g.channels
                else:
                    self.A_in[i, g.index] += coef
                    self.in_fixed[i] -= coef * g.channels
        self.a_io, self.a_o, self.p_io, self.p_o, self.p_fix = self._coefficients({})
        self.base_widths = space.channels
        self._accounted = None

    def _coefficients(self, layer_opts: dict) -> tuple[np.ndarray, ...]:
        """Per-layer dense coefficients ``(a_io, a_o, p_io, p_o, p_fix)``; ``layer_opts``: ``{name: LayerChoice}``
        (only ``conv_groups`` changes dense counts; densities are subtracted by :meth:`cost`)."""
        a_io, a_o, p_io, p_o, p_fix = (np.zeros(len(self.names)) for _ in range(5))
        for i, n in enumerate(self.names):
            s = self.space.layers[n]
            lc = layer_opts.get(n)
            if s.kind == "conv":
                bias = 1.0 if s.has_bias else 0.0
                if s.depthwise:
                    per_in = s.in_size // s.conv_groups
                    a_o[i] = s.positions * s.kernel * per_in
                    p_o[i] = s.kernel * per_in + bias
                else:
                    groups = lc.conv_groups if lc is not None and lc.conv_groups else s.conv_groups
                    a_io[i] = s.positions * s.kernel / groups
                    p_io[i] = s.kernel / groups
                    p_o[i] = bias
            elif s.kind == "linear":
                a_io[i] = s.positions
                p_io[i] = 1.0
                p_o[i] = 1.0 if s.has_bias else 0.0
            elif s.kind == "norm":
                p_o[i] = s.params / max(1, s.out_size)
            else:
                p_fix[i] = s.params
        return a_io, a_o, p_io, p_o, p_fix

    # ------------------------------------------------------------------ fast paths (search)
    def _io(self, widths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = np.asarray(widths, dtype=np.float64)
        c_in = w @ self.A_in.T + self.in_fixed
        c_out = w @ self.A_out.T + self.out_fixed
        return c_in, c_out

    def macs(self, widths: np.ndarray) -> np.ndarray:
        """MACs for widths ``[G]`` or ``[N, G]`` (kept channels per group) -> scalar array or ``[N]``."""
        c_in, c_out = self._io(widths)
        return (self.a_io * c_in * c_out + self.a_o * c_out).sum(-1)

    def params(self, widths: np.ndarray) -> np.ndarray:
        """Parameter counts for widths ``[G]`` or ``[N, G]``, plus parameters outside every traced layer."""
        c_in, c_out = self._io(widths)
        return (self.p_io * c_in * c_out + self.p_o * c_out + self.p_fix).sum(-1) + self.untraced_params

    @property
    def untraced_params(self) -> int:
        if self._accounted is None:
            c_in, c_out = self._io(self.base_widths)
            traced = (self.p_io * c_in * c_out + self.p_o * c_out + self.p_fix).sum()
            self._accounted = int(round(self.space.total_params - traced))
        return self._accounted

    # ------------------------------------------------------------------ full report
    def cost(self, plan: Plan | None = None, *, per_layer: bool = False) -> Cost:
        """Exact dense and effective cost of ``plan`` (``None`` = the unpruned model), honouring per-layer
        density / conv_groups."""
        widths = self.base_widths if plan is None else plan.widths(self.space)
        coeffs = (self.a_io, self.a_o, self.p_io, self.p_o, self.p_fix)
        if plan is not None and plan.layers:
            coeffs = self._coefficients(plan.layers)
        a_io, a_o, p_io, p_o, p_fix = coeffs
        c_in, c_out = self._io(widths)
        macs_l = a_io * c_in * c_out + a_o * c_out
        params_l = p_io * c_in * c_out + p_o * c_out + p_fix
        dropped = self._dropped_weights(plan, c_in, c_out)
        eff_macs_l = macs_l - dropped * np.array([self.space.layers[n].positions for n in self.names])
        eff_params_l = params_l - dropped
        rows = []
        if per_layer:
            for i, n in enumerate(self.names):
                rows.append(
                    {
                        "name": n,
                        "kind": self.kinds[i],
                        "in": int(round(c_in[i])),
                        "out": int(round(c_out[i])),
                        "macs": int(round(macs_l[i])),
                        "params": int(round(params_l[i])),
                        "effective_macs": int(round(eff_macs_l[i])),
                        "effective_params": int(round(eff_params_l[i])),
                    }
                )
        return Cost(
            macs=int(round(macs_l.sum())),
            params=int(round(params_l.sum())) + self.untraced_params,
            layers=rows,
            effective_macs=int(round(eff_macs_l.sum())),
            effective_params=int(round(eff_params_l.sum())) + self.untraced_params,
        )

    def _dropped_weights(self, plan: Plan | None, c_in: np.ndarray, c_out: np.ndarray) -> np.ndarray:
        """Per layer, the weights a density sets to zero (``O x F`` minus :func:`kept_elements`), shape ``[L]``."""
        dropped = np.zeros(len(self.names))
        if plan is None:
            return dropped
        for i, n in enumerate(self.names):
            lc = plan.layers.get(n)
            if lc is None or lc.density is None:
                continue
            s = self.space.layers[n]
            groups = (lc.conv_groups or s.conv_groups) if s.kind == "conv" else 1
            o, f = round(c_out[i]), round(c_in[i]) // groups * s.kernel
            dropped[i] = o * f - float(kept_elements(o, f, lc.density, lc.block or DEFAULT_BLOCK))
        return dropped


def measure_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs of one forward pass of ``model`` on one sample of ``input_shape`` ``(N, C, H, W)``, measured with
    :class:`torch.utils.flop_counter.FlopCounterMode` (conv/matmul FLOPs / 2)."""
    shape = (1, *tuple(input_shape)[1:])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.randn(*shape))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2


def count_params(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def measure_effective(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """``(effective MACs, effective params)`` of ``model`` measured from its weights: for every conv / linear, its
    non-zero weights times its output positions (one sample of ``input_shape``); params: the non-zero conv / linear
    weights plus every other parameter (a transposed conv, as flop_counter counts it: times its *input* positions).
    Cross-checks :attr:`Cost.effective_macs` / ``effective_params``."""
    positions: dict[nn.Module, int] = {}

    def hook(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if isinstance(mod, nn.ConvTranspose1d | nn.ConvTranspose2d):
            positions[mod] = inputs[0][0].numel() // mod.in_channels
        else:
            out_features = mod.weight.shape[0] if isinstance(mod, nn.Linear) else output.shape[1]
            positions[mod] = output[0].numel() // out_features

    kinds = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.Linear)
    mixing = [m for m in model.modules() if isinstance(m, kinds)]
    handles = [m.register_forward_hook(hook) for m in mixing]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.randn(1, *tuple(input_shape)[1:]))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    macs = sum(int(torch.count_nonzero(m.weight)) * positions.get(m, 0) for m in mixing)
    weights = {id(m.weight) for m in mixing}
    params = sum(int(torch.count_nonzero(m.weight)) for m in mixing) + sum(
        p.numel() for p in model.parameters() if id(p) not in weights
    )
    return macs, params
