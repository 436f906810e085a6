"""ADMM weight pruning toward block-sparse weights, as a training callback: :class:`ADMMCallback`.

Zhang et al., "A Systematic DNN Weight Pruning Framework using Alternating Direction Methods of Multipliers", ECCV
2018, §3; JCW (Zhao et al. 2021) trains every searched member this way (seed ``lib/Trainer/admm_trainer.py``, the
ADMM phase between REGULAR and FT). For each pruned layer with weight ``W`` and density ``d`` the problem
``min loss(W) s.t. W in S_d`` (``S_d``: at most ``d`` of the whole blocks non-zero, :mod:`prunekit.space.sparsity`)
is split with an auxiliary ``Z in S_d`` and a scaled dual ``U``:

* every step, the gradient of ``loss + rho/2 ||W - Z + U||^2`` is taken: ``grad W += rho * (W - Z + U)``;
* after every epoch, ``Z = project(W + U, d)`` (the Euclidean projection onto ``S_d``: the blocks of largest L2
  norm, :func:`~prunekit.space.sparsity.project`) and ``U += W - Z``;
* at the start, ``Z = project(W, d)`` and ``U = W - Z`` (the seed's ``_init_uz``: one update from ``U = 0``).

The residual ``||W - Z||`` per layer (the seed prints it after each epoch) is logged, absolute and relative to
``||W||``; it falls as ``W`` approaches the sparse set. ``rho`` is constant (the seed's 0.01) unless ``rho_growth``
multiplies it after every epoch (a common schedule; not in the seed). After ADMM, :meth:`ADMMCallback.hard_masks`
fixes the masks from the L2 block norms of ``W`` (the seed's FT phase), for a masked finetune with
:class:`~prunekit.train.masking.MaskCallback`.

The callback's ``Z``, ``U``, ``rho`` and residual history are checkpointed with the training state (plain tensors),
so a killed ADMM phase resumes exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field

from prunekit.space.masks import MaskSet
from prunekit.space.plan import Plan
from prunekit.space.sparsity import DEFAULT_BLOCK, block_mask, project
from prunekit.train.loop import Callback, TrainState
from prunekit.train.masking import MaskCallback
from prunekit.train.recipes import TrainConfig

__all__ = ["ADMMCallback", "SparseTarget", "SparseTrainConfig", "admm_targets", "train_sparse"]


@dataclass(frozen=True)
class SparseTarget:
    """One layer's ADMM target: its weight ``density`` (fraction of whole blocks kept, in ``(0, 1]``) and
    ``block`` shape ``(out_channels, in_positions)``."""

    density: float
    block: tuple[int, int] = DEFAULT_BLOCK


def admm_targets(plan: Plan) -> dict[str, SparseTarget]:
    """``{module name: SparseTarget}`` for every layer of ``plan`` with a weight density below 1."""
    return {
        name: SparseTarget(float(lc.density), tuple(lc.block) if lc.block else DEFAULT_BLOCK)  # type: ignore[arg-type]
        for name, lc in plan.layers.items()
        if lc.density is not None and lc.density < 1.0
    }


class ADMMCallback(Callback):
    """ADMM toward block-sparse weights during :func:`prunekit.train.fit` (see the module docstring).

    Args:
        targets: ``{module name: SparseTarget}`` (conv / linear modules of the model being trained; e.g.
            :func:`admm_targets` of the member's plan, on the channel-pruned model whose module names it keeps).
        rho: the penalty parameter (JCW: 0.01).
        rho_growth: ``rho`` is multiplied by this after every epoch (1 = constant, the seed).

    Raises:
        KeyError: (at ``on_train_begin``) a target names no module with a ``weight`` parameter.

    ``metrics`` of each epoch get ``admm_residual`` (the largest relative residual ``||W - Z|| / ||W||`` over the
    layers) and ``admm_rho``; :attr:`history` keeps every layer's residuals per epoch.
    """

    def __init__(
        self, targets: Mapping[str, SparseTarget], *, rho: float = 0.01, rho_growth: float = 1.0
    ) -> None:
        if rho <= 0 or rho_growth <= 0:
            raise ValueError(f"rho and rho_growth must be > 0, got {rho}, {rho_growth}")
        self.targets = dict(targets)
        self.rho, self.rho_growth = float(rho), float(rho_growth)
        self.Z: dict[str, torch.Tensor] = {}
        self.U: dict[str, torch.Tensor] = {}
        self.history: list[dict[str, Any]] = []

    def _weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {name: model.get_submodule(name).weight for name in self.targets}

    # ------------------------------------------------------------------ hooks
    @torch.no_grad()
    def on_train_begin(self, state: TrainState) -> None:
        weights = self._weights(state.model)
        if self.Z:  # resumed: move the checkpointed variables to the weights' device
            self.Z = {n: z.to(weights[n].device) for n, z in self.Z.items()}
            self.U = {n: u.to(weights[n].device) for n, u in self.U.items()}
            return
        for name, w in weights.items():
            t = self.targets[name]
            self.Z[name] = project(w.detach(), t.density, t.block)
            self.U[name] = w.detach() - self.Z[name]

    @torch.no_grad()
    def on_after_backward(self, state: TrainState) -> None:
        for name, w in self._weights(state.model).items():
            if w.grad is not None:
                w.grad.add_(w - self.Z[name] + self.U[name], alpha=self.rho)

    @torch.no_grad()
    def on_epoch_end(self, state: TrainState, metrics: dict[str, Any]) -> None:
        rows = {}
        for name, w in self._weights(state.model).items():
            t = self.targets[name]
            self.Z[name] = project(w + self.U[name], t.density, t.block)
            self.U[name] += w - self.Z[name]
            res = float((w - self.Z[name]).norm())
            rows[name] = {"residual": res, "relative": res / max(float(w.norm()), 1e-12)}
        self.history.append({"epoch": int(state.epoch), "rho": self.rho, "layers": rows})
        metrics["admm_residual"] = max((r["relative"] for r in rows.values()), default=0.0)
        metrics["admm_rho"] = self.rho
        self.rho *= self.rho_growth

    # ------------------------------------------------------------------ results
    @torch.no_grad()
    def hard_masks(self, model: nn.Module) -> MaskSet:
        """Masks fixed from the L2 block norms of the current weights at each target's density (the seed's FT
        phase): a :class:`MaskSet` over ``{name}.weight``."""
        masks = MaskSet()
        for name, w in self._weights(model).items():
            t = self.targets[name]
            masks.params[f"{name}.weight"] = block_mask(w.detach(), t.density, t.block, p=2).cpu()
        return masks

    def state_dict(self) -> dict[str, Any]:
        return {
            "Z": {n: z.detach().cpu().clone() for n, z in self.Z.items()},
            "U": {n: u.detach().cpu().clone() for n, u in self.U.items()},
            "rho": self.rho,
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.Z = {n: torch.as_tensor(z) for n, z in state["Z"].items()}
        self.U = {n: torch.as_tensor(u) for n, u in state["U"].items()}
        self.rho = float(state["rho"])
        self.history = list(state["history"])


class SparseTrainConfig(BaseModel):
    """JCW's SparseTrainer recipes (seed ``experiments/res18-train.yaml``, ImageNet): ``regular`` -- the
    channel-pruned dense net from scratch (120 epochs, cosine, peak lr 0.256 after 5 warm-up epochs, wd 1e-4);
    ``admm`` -- toward the block-sparse densities (60 epochs, constant lr 0.005, label smoothing 0.1, ``rho`` 0.01,
    ``rho_growth`` 1 = constant); ``ft`` -- masks fixed by block L2, masked finetune (60 epochs, cosine lr 0.005,
    wd 0). ``null`` skips a phase (``regular: null`` keeps the weights the net starts with)."""

    model_config = ConfigDict(extra="forbid")
    regular: TrainConfig | None = Field(
        default_factory=lambda: TrainConfig(
            epochs=120, lr=0.256, schedule="cosine", warmup_epochs=5, weight_decay=1e-4
        )
    )
    admm: TrainConfig | None = Field(
        default_factory=lambda: TrainConfig(
            epochs=60, lr=0.005, schedule="constant", weight_decay=1e-4, label_smoothing=0.1
        )
    )
    rho: float = Field(0.01, gt=0.0)
    rho_growth: float = Field(1.0, gt=0.0)
    ft: TrainConfig | None = Field(
        default_factory=lambda: TrainConfig(epochs=60, lr=0.005, schedule="cosine", weight_decay=0.0)
    )


def train_sparse(
    net: nn.Module,
    targets: Mapping[str, SparseTarget],
    train: Callable[..., Any],
    recipe: SparseTrainConfig,
    *,
    tag: str,
) -> dict[str, Any]:
    """The ADMM and FT phases on ``net`` (in place; REGULAR is the caller's): ADMM toward ``targets`` with
    ``recipe.admm`` (skipped when ``None``), masks fixed from the block L2 norms, masked finetune with ``recipe.ft``
    (skipped when ``None``); the masks are applied at the end, so ``net`` holds exactly the block-sparse weights.

    Args:
        net: the channel-pruned network (its module names are the targets' keys).
        targets: :func:`admm_targets` of its plan; empty = nothing to do.
        train: ``train(model, recipe, *, tag, callbacks, select)`` (``MethodContext.train``).
        recipe: the phases' recipes. tag: prefix of the phases' checkpoint tags (``{tag}_admm``, ``{tag}_ft``).

    Returns:
        ``{"sparse_layers", "admm_residual" (each layer's last residuals), "density" (kept fraction of the masked
        weights)}``.
    """
    facts: dict[str, Any] = {"sparse_layers": len(targets)}
    if not targets:
        return facts
    admm = ADMMCallback(targets, rho=recipe.rho, rho_growth=recipe.rho_growth)
    if recipe.admm is not None:
        train(net, recipe.admm, tag=f"{tag}_admm", callbacks=[admm], select="last")
        facts["admm_residual"] = admm.history[-1]["layers"] if admm.history else {}
    masks = admm.hard_masks(net)
    masks.apply_(net)
    if recipe.ft is not None:
        train(net, recipe.ft, tag=f"{tag}_ft", callbacks=[MaskCallback(masks)], select="last")
    masks.apply_(net)
    facts["density"] = masks.density()
    return facts
