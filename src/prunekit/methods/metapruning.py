"""``metapruning``: a PruningNet for any model, then an evolutionary search for the best widths under a MACs window.

Liu et al., "MetaPruning: Meta Learning for Automatic Neural Network Channel Pruning", ICCV 2019, generalised from
the seed's per-model scripts (``{mobilenetv1,mobilenetv2,resnet}/{training,searching,evaluating}``) to any model a
:class:`~prunekit.space.ChannelSpace` covers. Three phases, each resumable:

1. **PruningNet training** (§3.2, :mod:`prunekit.supernets.pruningnet`). Per-layer weight generators; every batch a
   uniformly random encoding is set (:class:`SampleSubnets`, no MACs constraint -- issue #29: all combinations are
   trained equally). Seed recipe: SGD, label smoothing 0.1, linear LR decay. Runs through
   ``ctx.train(..., tag="pruningnet")`` (checkpointed per epoch). The per-epoch ``train_top1`` is the accuracy of the
   sampled sub-networks; the per-epoch ``val_top1`` is the largest encoding's held-out accuracy *after BN
   recalibration* (the seed's validation used the shared, mixed statistics and read near zero: issues #4/#5/#14).
2. **Evolutionary search** (§3.3, :mod:`prunekit.search.evolution`). Encoding (the shared
   :class:`~prunekit.search.encoding.GeneEncoding`, :func:`search_encoding`): one gene per channel group (residual
   ties already are one group) indexing a scale table (default 31 values 0.10 ... 1.00); kept channels
   ``legal_width(g, scale * C, mode="floor")`` (the seed's ``int(C * scale)``; ``round_to`` / ``min_channels``
   applied), first k. Per-tag bounds restrict a group's scales (``bounds: {all: [0.3, 1.0], first: [0.5, 1.0],
   last: [1.0, 1.0]}``; a group with several tags gets the intersection). Small networks need a floor: at scale
   0.10 a 16-channel stem keeps one channel, and a PruningNet trained on such bottlenecks learns slowly (measured
   on Fashion-MNIST, MobileNetV1 0.5: sampled-subnet train top-1 22% with the full table against 57% with scales
   >= 0.4 after the same 3 epochs). Candidates whose analytic MACs (``ctx.cost``) fall outside the
   window are rejected **before** evaluation. Fitness: held-out (val split) top-1 of the PruningNet-generated
   weights after BN recalibration on ``recal_batches`` fixed training batches (the same unaugmented batches for every
   candidate, so fitness is deterministic and candidates are compared on equal data). The GA runs on
   :func:`~prunekit.search.base.run_search` (objective ``-fitness``); its checkpoint (population, cache of evaluated
   encodings, RNG, history) is written to ``<out>/metapruning/search_state.json`` during every iteration; a killed
   run resumes with the same result, and a checkpoint of another search setup is refused.
3. **Final training.** The best candidate becomes a :class:`~prunekit.space.Plan` (the top ``top_k`` are saved to
   ``<out>/candidates/rank01.json`` ...: never pasted by hand, issues #31/#37), the plain network is built and
   trained with ``final_train`` through ``ctx.train(..., tag="final")`` -- from scratch (``init: scratch``, the seed:
   the model spec's own initialisation, the same one the ``uniform`` baseline starts from) or from the PruningNet's
   generated weights with recalibrated BN (``init: pruningnet``, not in the seed). ``final_train: null`` leaves the
   training to the run's ``finetune`` phase instead.

Report extras: ``extra["figures"]`` lists ``metapruning/search_curve.png`` (best and mean fitness per iteration) and
``metapruning/widths.png`` (chosen widths per group against the reference widths and a uniform model of the same
MACs); ``extra["search"]`` holds the search statistics (evaluations, rejections, wall time, candidates/minute).

Deviations from the seed (documented): one shared BN per position + per-candidate recalibration instead of 31
per-choice BNs (the seed's evaluation recalibrates anyway, see :mod:`prunekit.supernets.pruningnet`); recalibration uses a
cumulative average over fixed batches instead of momentum 0.1 over random ones; the MACs window is checked with the
analytic conv+linear MAC count (the seed also counted BN/ReLU/pool elements); the generated weight is initialised
around the reference layer's weight.

Config (YAML)::

    method:
      name: metapruning
      bounds: {first: [0.5, 1.0], last: [0.5, 1.0]}
      window: [0.9, 1.0]                 # MACs window as fractions of the target (or macs_window: [min, max])
      pruningnet_train: {epochs: 8, lr: 0.1, schedule: linear, label_smoothing: 0.1, weight_decay: 4.0e-5}
      search: {population: 50, parents: 10, mutations: 25, crossovers: 25, iterations: 20}
      recal_batches: 10
      final_train: {epochs: 15, lr: 0.1, schedule: linear, label_smoothing: 0.1, weight_decay: 4.0e-5}
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from prunekit.cost.budget import Budget
from prunekit.cost.latency import resolve_round_to
from prunekit.cost.macs import CostModel
from prunekit.data import NO_VAL_FIX
from prunekit.errors import PrunekitError
from prunekit.methods.base import (
    MethodContext,
    MethodResult,
    RoundTo,
    fresh_model,
    require_target,
    require_train,
)
from prunekit.search.base import Searcher, SearchResult, run_search
from prunekit.search.encoding import GeneEncoding, WidthGenes
from prunekit.search.evolution import EvolutionConfig, GeneticSearch
from prunekit.search.fit import fit_uniform
from prunekit.space import ChannelSpace, Plan, apply, plan_from_widths
from prunekit.space.channels import TAGS
from prunekit.supernets.pruningnet import PruningNet
from prunekit.train import Callback, TrainConfig, TrainState, evaluate, smoke_recipe
from prunekit.train.bn import recalibrate_bn
from prunekit.train.loop import user_score

__all__ = [
    "Config",
    "MetaPruningConfig",
    "PruningNetFitness",
    "SampleSubnets",
    "default_scales",
    "macs_window",
    "run",
    "search_encoding",
]

log = logging.getLogger(__name__)

SEARCH_DIR = "metapruning"
SEARCH_STATE = "search_state.json"


def default_scales() -> list[float]:
    """The seed's scale table: 31 values ``0.10, 0.13, ..., 1.00`` (step 0.03; :meth:`WidthGenes.metapruning`'s)."""
    return list(WidthGenes.metapruning().choices)


def _seed_pruningnet_recipe() -> TrainConfig:
    # MetaPruning seed, MobileNetV1 PruningNet (batch 512): SGD m 0.9, lr 0.25 linear to 0, wd 4e-5 on every generator
    # parameter, label smoothing 0.1, 64 epochs.
    return TrainConfig(
        epochs=64,
        optimizer="sgd",
        lr=0.25,
        momentum=0.9,
        weight_decay=4e-5,
        no_wd_bn_bias=False,
        schedule="linear",
        label_smoothing=0.1,
    )


class MetaPruningConfig(BaseModel):
    """Options of the ``metapruning`` method (see the module docstring for the algorithm).

    Attributes:
        name: ``"metapruning"``.
        scales: the width-scale table (ascending, in (0, 1]); default 31 values 0.10 ... 1.00.
        bounds: ``{tag: [lo, hi]}`` scale bounds for groups with that tag (``first``, ``last``, ``strided``,
            ``residual``, ``depthwise``, ``expansion``, ``grouped``; ``all`` = every group); a group gets the
            intersection of its tags' bounds; ``[1.0, 1.0]`` keeps a group whole.
        round_to, min_channels: kept channels are floored to a multiple of ``round_to`` and kept >= ``min_channels``
            (:func:`~prunekit.space.widths.legal_width`).
        window: MACs window ``[lo, hi]`` as fractions of the run's target MACs (default ``[0.9, 1.0]``).
        macs_window: absolute MACs window ``[min, max]`` (overrides ``window``; the seed: ResNet-50 [1950M, 2050M]).
        hidden, hidden_block, generator_inputs, bn_affine: PruningNet options (:class:`~prunekit.supernets.pruningnet.PruningNet`).
        pruningnet_train: the PruningNet's recipe (default: the seed's MobileNetV1 recipe).
        search: GA hyper-parameters (:class:`~prunekit.search.evolution.EvolutionConfig`, seed defaults).
        random_scales: ``[lo, hi]`` scale range for the GA's random proposals only (seed ResNet: [0.46, 0.79]).
        recal_batches: training batches for each candidate's BN recalibration (seed 100).
        recal_batch_size: their batch size (default: the data config's ``batch_size``).
        eval_batches: validation batches per candidate (None = the whole val split).
        top_k: candidates saved as plans under ``<out>/candidates/``.
        init: ``scratch`` (seed) or ``pruningnet`` (the generated weights) for the final training.
        pruningnet_init: the weights the generators start from (their output bias): ``scratch`` (seed: the model
            spec's own initialisation) or ``model`` (``ctx.model``: the trained baseline when the run has one).
        final_train: recipe of the final training (None: the run's ``finetune`` phase trains the model).
    """

    model_config = ConfigDict(extra="forbid")
    name: Literal["metapruning"] = "metapruning"
    scales: list[float] = Field(default_factory=default_scales)
    bounds: dict[str, tuple[float, float]] = Field(default_factory=dict)
    round_to: RoundTo = 1
    min_channels: int = Field(1, ge=1)
    window: tuple[float, float] = (0.9, 1.0)
    macs_window: tuple[float, float] | None = None
    hidden: int = Field(32, ge=1)
    hidden_block: int = Field(64, ge=1)
    generator_inputs: Literal["block", "layer"] = "block"
    bn_affine: bool = False
    pruningnet_train: TrainConfig = Field(default_factory=_seed_pruningnet_recipe)
    search: EvolutionConfig = Field(default_factory=EvolutionConfig)
    random_scales: tuple[float, float] | None = None
    recal_batches: int = Field(100, ge=1)
    recal_batch_size: int | None = Field(None, ge=1)
    eval_batches: int | None = Field(None, ge=1)
    top_k: int = Field(10, ge=1)
    init: Literal["scratch", "pruningnet"] = "scratch"
    pruningnet_init: Literal["scratch", "model"] = "scratch"
    final_train: TrainConfig | None = None

    @field_validator("scales")
    @classmethod
    def _check_scales(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("scales must list at least one width scale")
        if any(not 0.0 < s <= 1.0 for s in v) or any(b <= a for a, b in zip(v, v[1:], strict=False)):
            raise ValueError(f"scales must be strictly increasing values in (0, 1], got {v}")
        return v

    @field_validator("bounds")
    @classmethod
    def _check_bounds(cls, v: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for tag, (lo, hi) in v.items():
            if tag not in TAGS and tag != "all":
                raise ValueError(
                    f"unknown group tag {tag!r} in bounds: choose all or one of {', '.join(TAGS)}"
                )
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(f"bounds.{tag} must be [lo, hi] with 0 <= lo <= hi <= 1, got [{lo}, {hi}]")
        return v

    @field_validator("window", "random_scales")
    @classmethod
    def _check_pair(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0.0 <= v[0] < v[1]:
            raise ValueError(f"must be [lo, hi] with 0 <= lo < hi, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _check(self) -> MetaPruningConfig:
        if self.macs_window is not None and not 0.0 <= self.macs_window[0] < self.macs_window[1]:
            raise ValueError(
                f"macs_window must be [min, max] with 0 <= min < max, got {list(self.macs_window)}"
            )
        return self


Config = MetaPruningConfig


# ---------------------------------------------------------------------------------------------- encoding
def search_encoding(space: ChannelSpace, cfg: MetaPruningConfig) -> GeneEncoding:
    """The MetaPruning search space over ``space`` (see the module docstring) as the shared
    :class:`~prunekit.search.encoding.GeneEncoding`: one width gene per channel group indexing ``cfg.scales``,
    kept channels ``legal_width(g, scale * C, mode="floor")`` with ``cfg.round_to`` / ``cfg.min_channels``, per-tag
    ``cfg.bounds`` (:meth:`~prunekit.search.encoding.WidthGenes.metapruning`).

    Raises:
        PrunekitError: a group's tag bounds leave no scale of the table.
    """
    return GeneEncoding.build(
        space,
        widths=WidthGenes.metapruning(
            cfg.scales,
            bounds=cfg.bounds,
            round_to=resolve_round_to(cfg.round_to),
            min_channels=cfg.min_channels,
        ),
    )


def macs_window(cfg: MetaPruningConfig, target_macs: float) -> tuple[float, float]:
    """The absolute MACs window ``(min, max)``: ``cfg.macs_window``, else ``cfg.window`` x ``target_macs``."""
    if cfg.macs_window is not None:
        return float(cfg.macs_window[0]), float(cfg.macs_window[1])
    return cfg.window[0] * target_macs, cfg.window[1] * target_macs


# ---------------------------------------------------------------------------------------------- PruningNet training
class SampleSubnets(Callback):
    """Set a uniformly random encoding on the PruningNet before every training batch (MetaPruning §3.2).

    The encoding of optimizer step ``s`` is drawn from ``numpy.random.default_rng([seed, s])``, so a resumed run
    samples exactly what an uninterrupted one does (no callback state needed). After the last batch of every epoch
    that ``fit`` evaluates, the largest encoding is set and -- when ``recal_loader`` is given -- its BN statistics are
    recalibrated on ``recal_batches`` batches, so the epoch's ``val_top1`` is the max-width sub-network's held-out
    accuracy (with the shared, mixed statistics it would be near chance: the seed's issues #4/#5/#14). Training is
    unaffected (train-mode BN uses batch statistics). Adds per-epoch metrics: ``subnet_macs_ratio`` (mean MACs of the
    sampled sub-networks / the reference) and ``subnet_top1_small`` / ``subnet_top1_large`` (train top-1 of the
    sampled sub-networks below / at-or-above the epoch's median MACs).
    """

    def __init__(
        self,
        pnet: PruningNet,
        enc: GeneEncoding,
        cost: CostModel,
        seed: int,
        *,
        recal_loader: Any = None,
        recal_batches: int = 0,
    ) -> None:
        self.pnet, self.enc, self.cost, self.seed = pnet, enc, cost, int(seed)
        self.recal_loader, self.recal_batches = recal_loader, int(recal_batches)
        self.base = float(cost.macs(cost.base_widths))
        self._rows: list[tuple[float, int, int]] = []
        self._ratio = 1.0

    def on_epoch_begin(self, state: TrainState) -> None:
        self._rows = []

    def on_batch_begin(self, state: TrainState, batch: tuple[Any, Any]) -> None:
        genes = self.enc.bounds.random(np.random.default_rng([self.seed, state.step]), 1)[0]
        widths = self.enc.decode_widths(genes)
        self.pnet.set_widths(widths)
        self._ratio = float(self.cost.macs(widths)) / self.base
        return None

    def on_step_end(self, state: TrainState) -> None:
        out, y = state.outputs, state.targets
        if isinstance(out, torch.Tensor) and isinstance(y, torch.Tensor) and out.ndim == 2:
            with torch.no_grad():
                yy = y.argmax(1) if y.ndim == 2 else y
                correct = int((out.argmax(1) == yy).sum())
            self._rows.append((self._ratio, correct, int(out.shape[0])))
        last = min(state.steps_per_epoch, state.total_steps - state.epoch * state.steps_per_epoch)
        evaluated = (state.epoch + 1) % state.cfg.eval_every == 0 or state.epoch + 1 == state.num_epochs
        if state.batch_idx == last - 1 and evaluated:
            self.pnet.set_widths(self.enc.decode_widths(self.enc.high))
            if self.recal_loader is not None and self.recal_batches > 0:
                recalibrate_bn(self.pnet, self.recal_loader, batches=self.recal_batches, device=state.device)

    def on_epoch_end(self, state: TrainState, metrics: dict[str, Any]) -> None:
        if not self._rows:
            return
        r = np.array(self._rows, dtype=np.float64)
        med = float(np.median(r[:, 0]))
        small, large = r[r[:, 0] < med], r[r[:, 0] >= med]
        metrics["subnet_macs_ratio"] = float(np.average(r[:, 0], weights=r[:, 2]))
        metrics["subnet_top1_small"] = float(small[:, 1].sum() / small[:, 2].sum()) if len(small) else None
        metrics["subnet_top1_large"] = float(large[:, 1].sum() / large[:, 2].sum()) if len(large) else None


# ---------------------------------------------------------------------------------------------- fitness
class PruningNetFitness:
    """Fitness of an encoding: held-out top-1 (fraction) of the PruningNet's generated weights at that encoding,
    after BN recalibration (MetaPruning §3.3, issue #15).

    Args:
        pnet: the trained PruningNet. enc: the gene -> widths map.
        recal_loader: training batches for :func:`~prunekit.train.bn.recalibrate_bn` (use a deterministic one).
        val_loader: held-out batches (``(x, y)``). recal_batches / eval_batches: how many of each (None = all val).
        device: where to run. eval_fn: ``eval_fn(net, val_loader) -> score`` replacing top-1 (higher is better).

    ``fitness(genes [G]) -> float``; ``fitness.calls`` counts evaluations.
    """

    def __init__(
        self,
        pnet: PruningNet,
        enc: GeneEncoding,
        recal_loader: Any,
        val_loader: Any,
        *,
        recal_batches: int,
        eval_batches: int | None,
        device: str,
        eval_fn: Callable[[nn.Module, Any], float] | None = None,
    ) -> None:
        self.pnet, self.enc, self.eval_fn = pnet, enc, eval_fn
        self.recal_loader, self.val_loader = recal_loader, val_loader
        self.recal_batches, self.eval_batches, self.device = recal_batches, eval_batches, device
        self.calls = 0

    def prepare(self, genes: np.ndarray) -> PruningNet:
        """Set ``genes`` on the PruningNet and recalibrate its BN statistics; returns the PruningNet (eval mode)."""
        self.pnet.set_widths(self.enc.decode_widths(genes))
        recalibrate_bn(self.pnet, self.recal_loader, batches=self.recal_batches, device=self.device)
        return self.pnet.eval()

    def __call__(self, genes: np.ndarray) -> float:
        self.calls += 1
        net = self.prepare(genes)
        if self.eval_fn is not None:  # the user's score (prunekit.prune's eval_fn), on the whole val loader
            return user_score(net, self.val_loader, self.eval_fn)
        return float(evaluate(net, self.val_loader, self.device, max_batches=self.eval_batches)["top1"])


# ---------------------------------------------------------------------------------------------- helpers
def _smoke_config(cfg: MetaPruningConfig) -> MetaPruningConfig:
    """A tiny version of ``cfg`` for ``--smoke`` runs (one epoch per training: :func:`~prunekit.train.smoke_recipe`;
    a two-iteration search)."""
    s = cfg.search
    pop = min(s.population, 6)
    search = s.model_copy(
        update={
            "population": pop,
            "parents": min(s.parents, 3),
            "mutations": min(s.mutations, pop // 3),
            "crossovers": min(s.crossovers, pop // 3),
            "iterations": min(s.iterations, 2),
        }
    )
    return cfg.model_copy(
        update={
            "pruningnet_train": smoke_recipe(cfg.pruningnet_train, 1.0),
            "final_train": smoke_recipe(cfg.final_train, 1.0) if cfg.final_train is not None else None,
            "search": search,
            "recal_batches": min(cfg.recal_batches, 2),
            "eval_batches": min(cfg.eval_batches or 2, 2),
            "top_k": min(cfg.top_k, 3),
        }
    )


def _recal_loader(ctx: MethodContext, batch_size: int | None) -> Any:
    data = ctx.data
    if hasattr(data, "make_loader"):
        return data.make_loader(
            "train", batch_size=batch_size or data.config.batch_size, shuffle=True, epoch=0
        )
    return data.train


def _fingerprint(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _check_inputs(
    ctx: MethodContext, cfg: MetaPruningConfig, target: float
) -> tuple[GeneEncoding, float, float]:
    """The search space and the MACs window ``(enc, lo, hi)``, after checking the run can do MetaPruning."""
    if getattr(ctx.data, "val", None) is None:
        raise PrunekitError(f"metapruning scores candidates on a held-out split: {NO_VAL_FIX}")
    require_train(ctx, "metapruning")
    lo, hi = macs_window(cfg, target)
    enc = search_encoding(ctx.space, cfg)
    Budget.of_macs(ctx.cost, hi).require_reachable(
        enc.decode_widths(enc.low),
        who="metapruning",
        how="every group at the lowest scale its bounds allow",
        fix="raise the target or the window, or lower the scale bounds",
    )
    smallest = float(np.rint(ctx.cost.macs(enc.decode_widths(enc.low))))
    largest = float(np.rint(ctx.cost.macs(enc.decode_widths(enc.high))))
    if largest < lo:
        raise PrunekitError(
            f"MACs window [{lo:,.0f}, {hi:,.0f}] is outside what the search space reaches ([{smallest:,.0f}, "
            f"{largest:,.0f}] MACs with these scales / bounds); change target, window or bounds"
        )
    return enc, lo, hi


@dataclass
class _PruningNetPhase:
    pnet: PruningNet
    recal_loader: Any
    last_epoch: dict[str, Any]
    wall_s: float


def _train_pruningnet(ctx: MethodContext, cfg: MetaPruningConfig, enc: GeneEncoding) -> _PruningNetPhase:
    """Phase 1: build the PruningNet on the reference architecture and train it on random encodings."""
    t0 = time.perf_counter()
    reference = ctx.model if cfg.pruningnet_init == "model" else fresh_model(ctx)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)
        pnet = PruningNet(
            reference,
            ctx.space,
            hidden=cfg.hidden,
            hidden_block=cfg.hidden_block,
            inputs=cfg.generator_inputs,
            bn_affine=cfg.bn_affine,
        )
    recal_loader = _recal_loader(ctx, cfg.recal_batch_size)
    sampler = SampleSubnets(
        pnet, enc, ctx.cost, seed=ctx.seed, recal_loader=recal_loader, recal_batches=cfg.recal_batches
    )
    pres = ctx.train(pnet, cfg.pruningnet_train, tag="pruningnet", callbacks=[sampler], select="last")
    last = pres.history[-1] if pres.history else {}
    log.info(
        "metapruning: PruningNet trained (%d generator params), sampled-subnet train top1 %.2f%%",
        pnet.generator_params(),
        100 * float(last.get("train_top1") or 0.0),
    )
    return _PruningNetPhase(pnet, recal_loader, last, time.perf_counter() - t0)


def _search(
    ctx: MethodContext,
    cfg: MetaPruningConfig,
    enc: GeneEncoding,
    fitness: PruningNetFitness,
    window: tuple[float, float],
) -> tuple[GeneticSearch, SearchResult]:
    """Phase 2: the GA over ``enc`` within the MACs window, maximising ``fitness`` (resumed from
    ``<out>/metapruning/search_state.json`` when it exists)."""
    lo, hi = window
    cm = ctx.cost

    def feasible(genes: np.ndarray) -> np.ndarray:
        m = np.rint(cm.macs(enc.decode_widths(genes)))
        return (m >= lo) & (m <= hi)

    def on_iteration(g: Searcher, _: dict[str, Any]) -> None:
        row = ga.history[-1]
        log.info(
            "metapruning search %d/%d: best %.2f%%, mean %.2f%%, %d evaluated, %d rejected by the MACs window",
            row["iteration"],
            cfg.search.iterations,
            100 * row["best"],
            100 * (row["mean"] if row["mean"] is not None else float("nan")),
            row["evaluated"],
            row["rejected"],
        )

    random_bounds = None  # the GA's random proposals: only the scales in random_scales (when set)
    if cfg.random_scales is not None:
        try:
            random_bounds = enc.restrict_widths(*cfg.random_scales)
        except PrunekitError:
            raise PrunekitError(
                f"random_scales {list(cfg.random_scales)} contain no value of the scale table"
            ) from None
    ga = GeneticSearch(
        enc.bounds,
        cfg.search,
        seed=ctx.seed,
        random_bounds=random_bounds,
        canonical=enc.canonical,
    )
    fp = _fingerprint(
        cfg.model_dump(mode="json", exclude={"final_train", "init", "top_k"}), [lo, hi], enc.table, ctx.seed
    )
    res = run_search(
        ga,
        lambda genes: -fitness(genes),  # the protocol minimises: objective = -val top-1
        feasible=feasible,
        checkpoint=Path(ctx.out_dir) / SEARCH_DIR / SEARCH_STATE,
        fingerprint=fp,
        checkpoint_every=cfg.search.checkpoint_every,
        on_generation=on_iteration,
        desc="metapruning search",
    )
    if not ga.cache:
        raise PrunekitError("metapruning search evaluated no candidate; widen the MACs window")
    return ga, res


def _save_candidates(
    ctx: MethodContext, enc: GeneEncoding, ranked: list[tuple[np.ndarray, float]]
) -> list[str]:
    """Save the top-k candidates as plans ``<out>/candidates/rank01.json ...``; returns their relative paths."""
    out = Path(ctx.out_dir)
    files = []
    for rank, (genes, fit) in enumerate(ranked, 1):
        plan = plan_from_widths(ctx.space, enc.decode_widths(genes), spec=ctx.spec)
        c = ctx.cost.cost(plan)
        plan.meta.update(
            {
                "method": "metapruning",
                "rank": rank,
                "fitness_val_top1": fit,
                "macs": c.macs,
                "params": c.params,
                "genes": [int(v) for v in genes],
                "scales": [float(s) for s in enc.decode_ratios(genes)],
            }
        )
        fname = out / "candidates" / f"rank{rank:02d}.json"
        plan.save(fname)
        files.append(str(fname.relative_to(out)))
    return files


def _final_network(
    ctx: MethodContext,
    cfg: MetaPruningConfig,
    enc: GeneEncoding,
    pnet: PruningNet,
    fitness: PruningNetFitness,
    genes: np.ndarray,
    fit: float,
) -> tuple[Plan, nn.Module, float | None]:
    """Phase 3: the plain network of ``genes`` (from scratch or the PruningNet's weights), trained with
    ``final_train`` when set; returns ``(plan, model, val top-1 before training with init: pruningnet)``."""
    widths = enc.decode_widths(genes)
    plan = plan_from_widths(ctx.space, widths, spec=ctx.spec)
    if cfg.init == "pruningnet":
        fitness.prepare(genes)
        model, _ = pnet.subnet(widths)
        model.train()
    else:
        model = apply(fresh_model(ctx), plan, ctx.space)
    init_val = None
    if cfg.final_train is not None:
        if cfg.init == "pruningnet":
            init_val = float(ctx.evaluate(model, "val")["top1"])
        ctx.train(model, cfg.final_train, tag="final")
    plan.meta.update(
        {
            "method": "metapruning",
            "fitness_val_top1": fit,
            "genes": [int(v) for v in genes],
            "scales": [float(s) for s in enc.decode_ratios(genes)],
            "init": cfg.init,
        }
    )
    return plan, model, init_val


def _search_history(ga: GeneticSearch, enc: GeneEncoding, cm: CostModel) -> list[dict[str, Any]]:
    """One row per search iteration ``{iteration, best_val_top1, mean_val_top1, best_macs, evaluated,
    rejected}`` (``best_macs``: MACs of the best candidate so far)."""
    items = list(ga.cache.items())  # evaluation order
    history, best_i, done = [], -1, 0
    for row in ga.history:
        for j in range(done, row["evaluated"]):  # best so far = best of the first `evaluated` evaluations
            if best_i < 0 or items[j][1] > items[best_i][1]:
                best_i = j
        done = row["evaluated"]
        history.append(
            {
                "iteration": row["iteration"],
                "best_val_top1": row["best"],
                "mean_val_top1": row["mean"],
                "best_macs": int(np.rint(cm.macs(enc.decode_widths(np.array(items[best_i][0]))))),
                "evaluated": row["evaluated"],
                "rejected": row["rejected"],
            }
        )
    return history


def _figures(
    ctx: MethodContext, cfg: MetaPruningConfig, history: list[dict[str, Any]], widths: np.ndarray, macs: float
) -> dict[str, str]:
    """Draw the search curve and the chosen widths under ``<out>/metapruning/``; returns their relative paths
    (figures are a convenience: a failure is logged, never raised)."""
    out = Path(ctx.out_dir)
    sdir = out / SEARCH_DIR
    space = ctx.space
    figures = {}
    try:
        figures["search_curve"] = str(plot_search_curve(history, sdir / "search_curve.png").relative_to(out))
        try:
            _, uni = fit_uniform(
                space,
                ctx.cost,
                float(macs),
                round_to=resolve_round_to(cfg.round_to),
                min_channels=cfg.min_channels,
            )
        except PrunekitError:
            uni = None
        figures["widths"] = str(
            plot_widths(space.names(), space.channels, widths, uni, sdir / "widths.png").relative_to(out)
        )
    except (ImportError, OSError) as exc:
        log.warning("metapruning: could not draw the figures (%s)", exc)
    return figures


def _search_stats(ga: GeneticSearch, res: SearchResult) -> dict[str, Any]:
    evals_min = ga.evaluated / (res.eval_seconds / 60.0) if res.eval_seconds > 0 else None
    return {
        "iterations": ga.iteration,
        "evaluated": ga.evaluated,
        "rejected": ga.rejected + res.rejected,
        "duplicates": ga.duplicates,
        "proposed": ga.proposed,
        "eval_seconds": round(res.eval_seconds, 2),
        "candidates_per_min": round(evals_min, 2) if evals_min is not None else None,
        "wall_s_this_process": round(res.wall_s, 2),
        "resumed": res.resumed,
    }


# ---------------------------------------------------------------------------------------------- figures
def plot_search_curve(history: list[dict[str, Any]], path: Path) -> Path:
    """Write the search curve (best-so-far and population-mean fitness, top-1 %, per iteration) as a PNG."""
    from prunekit.report import new_figure, png_bytes, write_bytes

    fig = new_figure((6.0, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    it = [r["iteration"] for r in history]
    ax.plot(it, [100 * r["best_val_top1"] for r in history], "o-", label="best so far", gid="best")
    mean = [100 * r["mean_val_top1"] if r["mean_val_top1"] is not None else np.nan for r in history]
    ax.plot(it, mean, "s--", label="population mean", gid="mean")
    ax.set_xlabel("iteration")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("PruningNet val top-1 (%)")
    ax.set_title("MetaPruning evolutionary search")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    write_bytes(path, png_bytes(fig))
    return path


def plot_widths(
    names: list[str], reference: np.ndarray, chosen: np.ndarray, uniform: np.ndarray | None, path: Path
) -> Path:
    """Write a bar chart of the chosen kept channels per group against the reference widths (and a uniform-width
    model of the same MACs, when given) as a PNG."""
    from prunekit.report import new_figure, png_bytes, write_bytes

    n = len(names)
    fig = new_figure((max(6.0, 0.35 * n + 2.0), 4.0))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(n)
    ax.bar(x, reference, color="#dddddd", edgecolor="#888888", label="reference", gid="reference")
    ax.bar(x, chosen, color="#1f77b4", width=0.6, label="MetaPruning", gid="chosen")
    if uniform is not None:
        ax.plot(
            x, uniform, "_", color="#d62728", markersize=14, mew=2, label="uniform, same MACs", gid="uniform"
        )
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=75, ha="right", fontsize=6)
    ax.set_ylabel("channels")
    ax.set_title("kept channels per group")
    ax.legend(fontsize=8)
    write_bytes(path, png_bytes(fig))
    return path


# ---------------------------------------------------------------------------------------------- the method
def run(ctx: MethodContext, cfg: MetaPruningConfig) -> MethodResult:
    """MetaPruning on ``ctx.model``'s channel space to a MACs window around ``ctx.target_macs`` (see the module
    docstring). ``ctx.model`` is not modified (with ``pruningnet_init: model`` its weights initialise the
    generators; otherwise only its architecture is used).

    Returns:
        :class:`MethodResult`: the best candidate's plan (meta: fitness, genes, scales), the (trained) model, one
        history row per search iteration ``{iteration, best_val_top1, mean_val_top1, best_macs, evaluated,
        rejected}``, ``trained=True`` when ``final_train`` is set, and ``extra`` (search statistics, chosen
        candidate, saved candidate plans, figures, PruningNet facts).

    Raises:
        PrunekitError: no target; no validation split; the window is unreachable in the search space (message
            gives the reachable MACs range); bounds leave a group no scale; the model cannot be cropped; the search
            checkpoint belongs to another setup.
    """
    target = require_target(ctx, "metapruning")
    if ctx.smoke:
        cfg = _smoke_config(cfg)
    enc, lo, hi = _check_inputs(ctx, cfg, target)

    # 1. PruningNet: weight generators trained on uniformly random encodings
    pn = _train_pruningnet(ctx, cfg, enc)

    # 2. evolutionary search: fitness = val top-1 of the generated weights after BN recalibration
    fitness = PruningNetFitness(
        pn.pnet,
        enc,
        pn.recal_loader,
        ctx.data.val,
        recal_batches=cfg.recal_batches,
        eval_batches=cfg.eval_batches,
        device=ctx.device,
        eval_fn=ctx.eval_fn,
    )
    ga, res = _search(ctx, cfg, enc, fitness, (lo, hi))
    ranked = ga.top(cfg.top_k)
    cand_files = _save_candidates(ctx, enc, ranked)

    # 3. the best candidate as a plain network, trained by final_train (or by the run's finetune phase)
    best_genes, best_fit = ranked[0]
    plan, model, init_val = _final_network(ctx, cfg, enc, pn.pnet, fitness, best_genes, best_fit)
    cost = ctx.cost.cost(plan)
    widths = enc.decode_widths(best_genes)
    history = _search_history(ga, enc, ctx.cost)
    trained = cfg.final_train is not None
    extra = {
        "target_macs": target,
        "macs_window": [lo, hi],
        "base_macs": float(ctx.cost.cost().macs),
        "macs": cost.macs,
        "chosen": {
            "fitness_val_top1": best_fit,
            "widths": [int(v) for v in widths],
            "scales": [float(s) for s in enc.decode_ratios(best_genes)],
            "init": cfg.init,
            "init_val_top1": init_val,
        },
        "search": _search_stats(ga, res),
        "pruningnet": {
            "generator_params": pn.pnet.generator_params(),
            "reference_params": int(sum(p.numel() for p in ctx.model.parameters())),
            "epochs": cfg.pruningnet_train.epochs,
            "last_epoch_subnet_train_top1": pn.last_epoch.get("train_top1"),
            "wall_s_this_process": round(pn.wall_s, 2),
        },
        "candidates": cand_files,
        "figures": _figures(ctx, cfg, history, widths, cost.macs),
        "trained_by": "final_train" if trained else "finetune",
    }
    return MethodResult(plan=plan, model=model, history=history, trained=trained, extra=extra)
