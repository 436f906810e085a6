"""Channel gates: one learnable scalar per channel of every channel group, trained while the weights stay frozen.

Wang et al., "Pruning from Scratch", AAAI 2020 (channel-importance learning; original code ``gate.py`` and
``script/learn_gates.py``): a network at **random initialisation** gets a gate vector ``g`` per prunable layer,
multiplied into that layer's output channels; only the gates are trained, with the loss

    L = CE(f(x; W, g), y) + lambda * (mean_i |g_i| - r) ** 2          (mean over every gate of the network)

and after each optimiser step the gates are clamped to ``[0, 1]``. The learned gate values rank channels by
importance (pruning keeps the largest), see :mod:`prunekit.methods.scratch`.

Pieces (all usable on their own, any model a :class:`~prunekit.space.ChannelSpace` covers):

* :func:`attach_gates` wraps a model in a :class:`GatedModel`: one gate vector per channel group (initialised to 1)
  applied through forward hooks; residual groups share one vector over every layer they touch. The wrapper's
  ``state_dict`` holds the weights (``model.*``) and the gates (``gates.*``), so :func:`prunekit.train.fit`
  checkpoints and resumes it like any network. :meth:`GatedModel.freeze_weights` freezes every non-gate parameter
  (so ``fit``'s default optimiser, built over trainable parameters only, is a gate-only optimiser) and
  :meth:`GatedModel.detach` removes the hooks and returns the bare model.
* :class:`GateRegularizer` (a :class:`~prunekit.train.Callback`): the sparsity term as ``extra_loss`` and the
  clamping in ``on_step_end``.
* :class:`GateSelector` (a Callback): keeps the gates of the epoch with the best validation top-1 among the epochs
  whose fraction of non-zero gates is at most ``r`` (the original code's checkpoint rule); its choice is
  checkpointed, so a resumed run makes the same choice.
* :func:`learn_gates`: the whole procedure on one model (attach, train the gates only with the regulariser and the
  selector, load the selected gates, detach) through any ``fit``-like trainer; returns :class:`LearnedGates`.

Gate placement (:func:`gate_sites`). The gate multiplies a group's channels right **after its normalisation
layers** (BatchNorm members of the group), before the activation, as in the original (VGG: after BN; ResNet blocks:
after BN; MobileNets: after BN). A BN whose output is re-normalised inside the same group (a BN followed by a
depthwise conv of the group and that conv's own BN: MobileNet's expansion BN, the BN before a depthwise conv) is not
gated: in training mode the next BN would divide the gate's scale away, so the gate goes on the group's *last* BN
(the one whose channels the consumers read). Deviation from the original, which gates MobileNetV2's expansion BN
(before the depthwise conv) and MobileNetV1's pointwise BN. A group without any BatchNorm is gated on the outputs
of its producing conv/linear layers. For residual groups every BN on the residual stream gets the same vector, so
the stream carries ``g * (sum of branches)`` and a channel with ``g = 0`` is off everywhere.

Batch-norm running statistics are buffers, not weights: they keep updating in training mode while the gates learn
(as in the original); every *parameter* of the model stays bit-identical.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from prunekit.errors import PrunekitError
from prunekit.space.channels import ChannelSpace, is_depthwise
from prunekit.train.loop import Callback, TrainState

__all__ = [
    "GateRegularizer",
    "GateSelector",
    "GateSite",
    "GatedModel",
    "LearnedGates",
    "attach_gates",
    "gate_sites",
    "learn_gates",
    "nonzero_fraction",
    "sparsity_penalty",
]

log = logging.getLogger(__name__)

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class GateSite:
    """One place a gate vector is applied: the output of ``module``.

    Attributes:
        module: qualified module name. group: the channel group whose gate is used.
        positions: output channels of ``module`` that are gated, shape ``[P]``; root: the gate index of each
            position (the group channel it carries), shape ``[P]``.
        full: ``positions == range(module's output channels)`` (the usual case: the hook then only indexes).
    """

    module: str
    group: str
    positions: tuple[int, ...]
    root: tuple[int, ...]
    full: bool


def _execution_order(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Module name -> index of its first call in one eval-mode forward pass (modules never called are absent)."""
    order: dict[str, int] = {}
    hooks = []

    def record(name: str):
        def hook(mod: nn.Module, inputs: Any, output: Any) -> None:
            order.setdefault(name, len(order))

        return hook

    for name, mod in model.named_modules():
        if name:
            hooks.append(mod.register_forward_hook(record(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            p = next(model.parameters(), None)
            kw = {"device": p.device, "dtype": p.dtype} if p is not None else {}
            model(torch.zeros((1, *tuple(input_shape)[1:]), **kw))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return order


def gate_sites(model: nn.Module, space: ChannelSpace) -> dict[str, list[GateSite]]:
    """Where each group's gate vector is applied: ``{group name: [GateSite, ...]}`` (every group gets >= 1 site).

    Rule (see the module docstring): the group's BatchNorm members (``dim == "out"``), except a BN that runs before a
    depthwise conv member of the same group (its output is re-normalised by that conv's BN); if that leaves none, all
    the group's BNs; a group without BN: its producing conv / linear layers (``out`` members, depthwise excluded).

    Raises:
        PrunekitError: a group has no layer whose output can carry its gate.
    """
    order = _execution_order(model, space.input_shape)
    sites: dict[str, list[GateSite]] = {}
    for g in space.groups:
        outs = [m for m in g.members if m.dim == "out"]
        mods = {m.module: model.get_submodule(m.module) for m in outs}
        norms = [m for m in outs if isinstance(mods[m.module], _BN)]
        dws = [m for m in outs if is_depthwise(mods[m.module])]
        last_dw = max((order.get(m.module, -1) for m in dws), default=-1)
        chosen = [m for m in norms if order.get(m.module, -1) > last_dw] or norms
        if not chosen:
            chosen = [
                m
                for m in outs
                if isinstance(mods[m.module], nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear)
                and not is_depthwise(mods[m.module])
            ]
        if not chosen:
            raise PrunekitError(
                f"channel group {g.name!r} has no BatchNorm, conv or linear output to put a gate on; "
                "channel gates need one"
            )
        lst = []
        for m in chosen:
            size = _out_size(mods[m.module])
            lst.append(
                GateSite(
                    module=m.module,
                    group=g.name,
                    positions=m.positions,
                    root=m.root,
                    full=m.positions == tuple(range(size)),
                )
            )
        sites[g.name] = lst
    return sites


def _out_size(mod: nn.Module) -> int:
    if isinstance(mod, _BN):
        return int(mod.num_features)
    if isinstance(mod, nn.Linear):
        return int(mod.out_features)
    return int(mod.out_channels)


class GatedModel(nn.Module):
    """A model with a gate vector per channel group multiplied into its forward pass (see :func:`attach_gates`).

    Attributes:
        model: the wrapped network (its modules carry the gate hooks while attached).
        gates: ``nn.ParameterDict`` ``{"g<group index>": Parameter[C_g]}`` (parameter names cannot hold dots).
        names: group names in space order; ``keys[name]`` is the ParameterDict key of group ``name``.
        sites: the :class:`GateSite` lists (:func:`gate_sites`).

    ``forward(x)`` is ``model(x)`` with every gated output ``y`` of shape ``(N, C, ...)`` replaced by
    ``y * s`` where ``s[p] = g[root[p]]`` on the gated positions (1 elsewhere), broadcast over ``N`` and the
    spatial dims.
    """

    def __init__(
        self, model: nn.Module, space: ChannelSpace, *, init: float = 1.0, sites: Mapping | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.names = [g.name for g in space.groups]
        self.keys = {g.name: f"g{g.index}" for g in space.groups}
        self.gates = nn.ParameterDict(
            {self.keys[g.name]: nn.Parameter(torch.full((g.channels,), float(init))) for g in space.groups}
        )
        self.sites = dict(sites) if sites is not None else gate_sites(model, space)
        self._handles: list[Any] = []
        self._frozen: list[nn.Parameter] = []
        self._attach()

    # -------------------------------------------------------------- hooks
    def _attach(self) -> None:
        by_module: dict[str, list[tuple[str, torch.Tensor, torch.Tensor | None, bool]]] = {}
        for name, lst in self.sites.items():
            for s in lst:
                root = torch.tensor(s.root, dtype=torch.long)
                identity = s.full and torch.equal(root, torch.arange(root.numel()))
                by_module.setdefault(s.module, []).append(
                    (
                        self.keys[name],
                        torch.tensor(s.positions, dtype=torch.long),
                        None if identity else root,
                        s.full,
                    )
                )
        for mname, entries in by_module.items():
            mod = self.model.get_submodule(mname)
            self._handles.append(mod.register_forward_hook(self._make_hook(entries)))

    def _make_hook(self, entries):
        gates = self.gates

        def hook(mod: nn.Module, inputs: Any, out: torch.Tensor) -> torch.Tensor:
            c = out.shape[1]
            scale = None
            for key, pos, root, full in entries:
                g = gates[key]
                vals = g if root is None else g.index_select(0, root.to(g.device))
                if full and scale is None:
                    scale = vals
                else:
                    base = scale if scale is not None else out.new_ones(c)
                    scale = base.index_copy(0, pos.to(base.device), vals.to(base.dtype))
            assert scale is not None
            return out * scale.to(out.dtype).view(1, c, *([1] * (out.ndim - 2)))

        return hook

    def forward(self, x: Any) -> Any:
        return self.model(x)

    # -------------------------------------------------------------- gates
    def gate(self, name: str) -> nn.Parameter:
        """The gate vector of group ``name``, shape ``[C]``."""
        return self.gates[self.keys[name]]

    def all_gates(self) -> torch.Tensor:
        """Every gate concatenated in space order, shape ``[sum_g C_g]`` (differentiable)."""
        return torch.cat([self.gates[self.keys[n]] for n in self.names])

    def gate_values(self) -> dict[str, torch.Tensor]:
        """``{group name: float32 CPU copy of its gate vector [C]}``."""
        return {n: self.gate(n).detach().to("cpu", torch.float32).clone() for n in self.names}

    @torch.no_grad()
    def load_gates(self, values: Mapping[str, torch.Tensor]) -> None:
        """Copy ``{group name: Tensor[C]}`` into the gates (e.g. the epoch :class:`GateSelector` kept).

        Raises:
            PrunekitError: unknown group or wrong length.
        """
        for n, v in values.items():
            if n not in self.keys:
                raise PrunekitError(f"gate values name group {n!r}, which the gated model does not have")
            p = self.gate(n)
            v = torch.as_tensor(v)
            if v.numel() != p.numel():
                raise PrunekitError(
                    f"gate values of group {n!r} have {v.numel()} entries, the group {p.numel()}"
                )
            p.copy_(v.reshape(-1).to(p.device, p.dtype))

    # -------------------------------------------------------------- freezing / detaching
    def freeze_weights(self) -> int:
        """Set ``requires_grad=False`` on every parameter of the wrapped model (gates stay trainable), so an
        optimiser built over trainable parameters trains the gates only. Returns the number of tensors frozen;
        :meth:`detach` restores them."""
        for p in self.model.parameters():
            if p.requires_grad:
                p.requires_grad_(False)
                self._frozen.append(p)
        return len(self._frozen)

    def detach(self) -> nn.Module:
        """Remove the gate hooks, unfreeze what :meth:`freeze_weights` froze, and return the bare model (its
        outputs are no longer gated). The gates themselves are left in this wrapper."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for p in self._frozen:
            p.requires_grad_(True)
        self._frozen.clear()
        return self.model


def attach_gates(
    model: nn.Module, space: ChannelSpace, *, init: float = 1.0, freeze: bool = True
) -> GatedModel:
    """Wrap ``model`` (modified in place: hooks are registered on its modules) with one gate vector per group of
    ``space`` (a space built on this very model), every gate at ``init``; ``freeze`` freezes all non-gate parameters
    (:meth:`GatedModel.freeze_weights`). Undo with :meth:`GatedModel.detach`.

    Raises:
        PrunekitError: a group has no layer that can carry a gate (:func:`gate_sites`).
    """
    gm = GatedModel(model, space, init=init)
    if freeze:
        gm.freeze_weights()
    return gm


def sparsity_penalty(gates: torch.Tensor, r: float, lam: float) -> torch.Tensor:
    """``lam * (mean(|gates|) - r) ** 2`` (Wang et al. 2020, the sparsity regulariser): a scalar tensor,
    differentiable in ``gates``.

    ``gates``: every gate of the network concatenated, shape ``[N]``. The gradient w.r.t. gate ``i`` is
    ``2 * lam * (mean|g| - r) * sign(g_i) / N``.
    """
    return lam * (gates.abs().mean() - r) ** 2


def nonzero_fraction(gates: torch.Tensor) -> float:
    """Fraction of gates that are not exactly zero (the original code's "sparsity"), in ``[0, 1]``."""
    return float((gates != 0).float().mean())


class GateRegularizer(Callback):
    """Sparsity regulariser and clamping of a :class:`GatedModel`'s gates during :func:`prunekit.train.fit`.

    ``extra_loss`` returns :func:`sparsity_penalty` ``(model.all_gates(), r, lam)``; ``on_step_end`` clamps every
    gate to ``[lo, hi]`` (default ``[0, 1]``). ``model`` passed to ``fit`` must be the :class:`GatedModel`.

    Raises (from ``extra_loss``):
        PrunekitError: the trained model is not a GatedModel.
    """

    def __init__(self, lam: float = 0.5, r: float = 0.2, *, lo: float = 0.0, hi: float = 1.0) -> None:
        if lam < 0 or not 0.0 <= r <= 1.0 or lo > hi:
            raise PrunekitError(
                f"gate regulariser needs lam >= 0, r in [0, 1], lo <= hi; got {lam}, {r}, [{lo}, {hi}]"
            )
        self.lam, self.r, self.lo, self.hi = float(lam), float(r), float(lo), float(hi)

    @staticmethod
    def _gated(model: nn.Module) -> GatedModel:
        if not isinstance(model, GatedModel):
            raise PrunekitError(
                f"GateRegularizer needs a GatedModel (prunekit.supernets.gates.attach_gates), got {type(model).__name__}"
            )
        return model

    def extra_loss(self, state: TrainState, model: nn.Module) -> torch.Tensor | None:
        return sparsity_penalty(self._gated(model).all_gates(), self.r, self.lam)

    @torch.no_grad()
    def on_step_end(self, state: TrainState) -> None:
        for p in self._gated(state.model).gates.values():
            p.clamp_(self.lo, self.hi)

    def on_epoch_end(self, state: TrainState, metrics: dict[str, Any]) -> None:
        g = self._gated(state.model).all_gates().detach()
        metrics["gate_mean"] = float(g.abs().mean())
        metrics["gate_nonzero"] = nonzero_fraction(g)


class GateSelector(Callback):
    """Keep the gates of the best epoch among those that are sparse enough (Wang et al. 2020, original code's rule).

    At each epoch end: ``sparse = nonzero_fraction(gates) <= r``; among sparse epochs with a validation top-1, the
    one with the highest top-1 wins (ties: the earlier); without validation, the last sparse epoch. When no epoch
    is sparse the last epoch's gates are used (:attr:`rule` says which case applied). The choice survives a
    kill/resume (:meth:`state_dict`).

    Attributes (after training): ``best`` ``{group name: Tensor[C]}`` or None; ``best_epoch`` (1-based);
    ``best_top1``; ``rule``: ``"best-val-sparse"``, ``"last-sparse"`` or ``"last"`` (call :meth:`choose`).
    """

    def __init__(self, r: float = 0.2) -> None:
        self.r = float(r)
        self.best: dict[str, torch.Tensor] | None = None
        self.best_epoch: int | None = None
        self.best_top1: float | None = None
        self.rule = "last"

    def on_epoch_end(self, state: TrainState, metrics: dict[str, Any]) -> None:
        gm = GateRegularizer._gated(state.model)
        frac = nonzero_fraction(gm.all_gates().detach())
        val = metrics.get("val_top1")
        metrics["gate_sparse"] = frac <= self.r
        if frac > self.r:
            return
        if val is not None:
            if self.best_top1 is None or float(val) > self.best_top1:
                self.best, self.best_epoch, self.best_top1 = (
                    gm.gate_values(),
                    int(metrics["epoch"]),
                    float(val),
                )
                self.rule = "best-val-sparse"
        elif self.best_top1 is None:
            self.best, self.best_epoch, self.rule = gm.gate_values(), int(metrics["epoch"]), "last-sparse"

    def choose(self, gated: GatedModel) -> dict[str, Any]:
        """Load the selected gates into ``gated`` (no-op when no epoch was sparse: the last gates stay) and return
        ``{"rule", "epoch", "val_top1", "nonzero", "mean"}`` describing the choice."""
        if self.best is not None:
            gated.load_gates(self.best)
        else:
            self.rule = "last"
        g = gated.all_gates().detach()
        return {
            "rule": self.rule,
            "epoch": self.best_epoch,
            "val_top1": self.best_top1,
            "nonzero": nonzero_fraction(g),
            "mean": float(g.abs().mean()),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": None if self.best is None else {k: v.clone() for k, v in self.best.items()},
            "best_epoch": self.best_epoch,
            "best_top1": self.best_top1,
            "rule": self.rule,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        best = state.get("best")
        self.best = None if best is None else {k: torch.as_tensor(v) for k, v in best.items()}
        self.best_epoch = state.get("best_epoch")
        self.best_top1 = state.get("best_top1")
        self.rule = str(state.get("rule", "last"))


# ---------------------------------------------------------------------------------------------- the procedure
@dataclass
class LearnedGates:
    """Outcome of :func:`learn_gates`.

    Attributes:
        values: ``{group name: float32 CPU Tensor[C]}``, the selected gates (every group of the space, each in ``[0, 1]``).
        choice: :meth:`GateSelector.choose`'s ``{"rule", "epoch", "val_top1", "nonzero", "mean"}``.
        history: one row per gate-training epoch: ``{"epoch", "val_top1", "gate_mean", "gate_nonzero"}``
            (``val_top1`` a fraction or None; ``gate_mean`` = mean ``|g|``; ``gate_nonzero`` = fraction of gates != 0).
    """

    values: dict[str, torch.Tensor]
    choice: dict[str, Any]
    history: list[dict[str, Any]]


def learn_gates(
    model: nn.Module,
    space: ChannelSpace,
    train: Callable[..., Any],
    tc: Any,
    *,
    lam: float,
    r: float,
    **train_kw: Any,
) -> LearnedGates:
    """Learn one gate per channel of ``model`` with its weights frozen (Wang et al. 2020, channel-importance learning;
    the original's ``script/learn_gates.py``).

    Steps: :func:`attach_gates` (every gate at 1, every weight frozen); ``train(gated, tc, callbacks=[GateRegularizer
    (lam, r), GateSelector(r)], **train_kw)`` (so the optimiser holds the gates only, the loss is
    ``CE + lam * (mean|g| - r) ** 2`` and gates are clamped to ``[0, 1]`` after every step); the selector's epoch is
    loaded (:meth:`GateSelector.choose`) and the wrapper detached, so ``model`` comes back bare, unfrozen and with
    its parameters bit-identical (BatchNorm running statistics did update).

    Args:
        model: the network, modified in place while the gates are attached (hooks, ``requires_grad``).
        space: its channel space (built on this very model).
        train: a :func:`prunekit.train.fit`-like trainer ``train(model, tc, *, callbacks, **train_kw) -> FitResult``
            (e.g. :attr:`prunekit.methods.base.MethodContext.train`, which checkpoints under ``train_kw["tag"]``).
        tc: the gate-training recipe (a :class:`~prunekit.train.TrainConfig`; the caller picks the optimiser).
        lam, r: weight and target mean gate of the sparsity term; ``r`` is also the selector's largest fraction of
            non-zero gates.
        train_kw: passed on to ``train`` (e.g. ``tag``, ``select``).

    Raises:
        PrunekitError: a group has no layer to put a gate on (:func:`gate_sites`); bad ``lam`` / ``r``
            (:class:`GateRegularizer`); whatever ``train`` raises.
    """
    gated = attach_gates(model, space, init=1.0, freeze=True)
    selector = GateSelector(r)
    res = train(gated, tc, callbacks=[GateRegularizer(lam, r), selector], **train_kw)
    choice = selector.choose(gated)
    gated.detach()
    log.info(
        "gates chosen by %s (epoch %s, val top1 %s): %.1f%% non-zero, mean %.3f",
        choice["rule"],
        choice["epoch"],
        choice["val_top1"],
        100 * choice["nonzero"],
        choice["mean"],
    )
    history = [
        {
            "epoch": row.get("epoch"),
            "val_top1": row.get("val_top1"),
            "gate_mean": row.get("gate_mean"),
            "gate_nonzero": row.get("gate_nonzero"),
        }
        for row in res.history
    ]
    return LearnedGates(values=gated.gate_values(), choice=choice, history=history)
