"""``metapruning``: a PruningNet for any model, then an evolutionary search for the best widths under a MACs window.

Liu et al., "MetaPruning: Meta Learning for Automatic Neural Network Channel Pruning", ICCV 2019, generalised from
the seed's per-model scripts (``{mobilenetv1,mobilenetv2,resnet}/{training,searching,evaluating}``) to any model a
:class:`~prunekit.space.ChannelSpace` covers. Three phases, each resumable:

1. **PruningNet training** (§3.2, :mod:`prunekit.pruningnet`). Per-layer weight generators; every batch a
   uniformly random encoding is set (:class:`SampleSubnets`, no MACs constraint -- issue #29: all combinations are
   trained equally). Seed recipe: SGD, label smoothing 0.1, linear LR decay. Runs through
   ``ctx.train(..., tag="pruningnet")`` (checkpointed per epoch). The per-epoch ``train_top1`` is the accuracy of the
   sampled sub-networks; the per-epoch ``val_top1`` is the largest encoding's held-out accuracy *after BN
   recalibration* (the seed's validation used the shared, mixed statistics and read near zero: issues #4/#5/#14).
2. **Evolutionary search** (§3.3, :mod:`prunekit.search.evolution`). Encoding: one gene per channel group (residual
   ties already are one group) indexing a scale table (default 31 values 0.10 ... 1.00); kept channels
   ``legal_width(g, scale * C, mode="floor")`` (the seed's ``int(C * scale)``; ``round_to`` / ``min_channels``
   applied), first k. Per-tag bounds restrict a group's scales (``bounds: {all: [0.3, 1.0], first: [0.5, 1.0],
   last: [1.0, 1.0]}``; a group with several tags gets the intersection). Small networks need a floor: at scale
   0.10 a 16-channel stem keeps one channel, and a PruningNet trained on such bottlenecks learns slowly (measured
   on Fashion-MNIST, MobileNetV1 0.5: sampled-subnet train top-1 22% with the full table against 57% with scales
   >= 0.4 after the same 3 epochs). Candidates whose analytic MACs (``ctx.cost``) fall outside the
   window are rejected **before** evaluation. Fitness: held-out (val split) top-1 of the PruningNet-generated
   weights after BN recalibration on ``recal_batches`` fixed training batches (the same unaugmented batches for every
   candidate, so fitness is deterministic and candidates are compared on equal data). The search state (population,
   cache of evaluated encodings, RNG, history) is written to ``<out>/metapruning/search_state.json`` during every
   iteration; a killed run resumes with the same result.
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
per-choice BNs (the seed's evaluation recalibrates anyway, see :mod:`prunekit.pruningnet`); recalibration uses a
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from prunekit.cost.macs import CostModel
from prunekit.errors import PrunekitError
from prunekit.io import write_json
from prunekit.methods.base import MethodContext, MethodResult, RoundTo, require_target, require_train
from prunekit.methods.uniform import fit_uniform, legal_width
from prunekit.pruningnet import PruningNet
from prunekit.search.evolution import EvolutionConfig, GeneBounds, GeneticSearch
from prunekit.space import ChannelSpace, apply, plan_from_widths
from prunekit.space.channels import TAGS
from prunekit.train import Callback, TrainConfig, TrainState, evaluate
from prunekit.train.bn import recalibrate_bn

__all__ = [
    "Config",
    "MetaPruningConfig",
    "PruningNetFitness",
    "SampleSubnets",
    "WidthEncoding",
    "build_encoding",
    "default_scales",
    "macs_window",
    "run",
]

log = logging.getLogger(__name__)

SEARCH_DIR = "metapruning"
SEARCH_STATE = "search_state.json"


def default_scales() -> list[float]:
    """The seed's scale table: 31 values ``0.10, 0.13, ..., 1.00`` (step 0.03)."""
    return [round(0.1 + 0.03 * i, 2) for i in range(31)]


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
            (:func:`~prunekit.methods.uniform.legal_width`).
        window: MACs window ``[lo, hi]`` as fractions of the run's target MACs (default ``[0.9, 1.0]``).
        macs_window: absolute MACs window ``[min, max]`` (overrides ``window``; the seed: ResNet-50 [1950M, 2050M]).
        hidden, hidden_block, generator_inputs, bn_affine: PruningNet options (:class:`~prunekit.pruningnet.PruningNet`).
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
@dataclass
class WidthEncoding:
    """Genes -> widths: gene ``i`` indexes ``scales`` for channel group ``i``.

    Attributes:
        scales: float ``[K]`` scale table. table: int64 ``[G, K]`` kept channels of group ``g`` at scale ``k``.
        bounds: per-group inclusive gene bounds (from the per-tag scale bounds).
    """

    scales: np.ndarray
    table: np.ndarray
    bounds: GeneBounds

    def widths(self, genes: np.ndarray) -> np.ndarray:
        """Kept channels for genes ``[G]`` or ``[N, G]`` (int64, same shape)."""
        g = np.asarray(genes, dtype=np.int64)
        return self.table[np.arange(self.table.shape[0]), g]

    def scale(self, genes: np.ndarray) -> np.ndarray:
        """Scale values of genes ``[G]`` or ``[N, G]``."""
        return self.scales[np.asarray(genes, dtype=np.int64)]

    def canonical(self, genes: np.ndarray) -> np.ndarray:
        """Map genes ``[G]`` or ``[N, G]`` to the smallest allowed gene of the same width (scales that round to
        the same channel count are one candidate)."""
        g = np.asarray(genes, dtype=np.int64)
        return self._canon[np.arange(self.table.shape[0]), g]

    def __post_init__(self) -> None:
        canon = np.tile(np.arange(self.table.shape[1], dtype=np.int64), (self.table.shape[0], 1))
        for i in range(self.table.shape[0]):
            for k in range(1, self.table.shape[1]):
                if self.table[i, k] == self.table[i, k - 1] and k - 1 >= self.bounds.low[i]:
                    canon[i, k] = canon[i, k - 1]
        self._canon = canon


def build_encoding(
    space: ChannelSpace,
    scales: list[float] | np.ndarray,
    *,
    bounds: dict[str, tuple[float, float]] | None = None,
    round_to: int = 1,
    min_channels: int = 1,
) -> WidthEncoding:
    """The MetaPruning search space over ``space``: one gene per channel group (see the module docstring).

    Raises:
        PrunekitError: a group's tag bounds leave no scale of the table.
    """
    sc = np.asarray(scales, dtype=np.float64)
    table = np.array(
        [
            [
                legal_width(g, s * g.channels, round_to=round_to, min_channels=min_channels, mode="floor")
                for s in sc
            ]
            for g in space.groups
        ],
        dtype=np.int64,
    ).reshape(len(space.groups), len(sc))
    low = np.zeros(len(space.groups), dtype=np.int64)
    high = np.full(len(space.groups), len(sc) - 1, dtype=np.int64)
    for i, g in enumerate(space.groups):
        lo, hi = 0.0, 1.0
        for tag in ["all", *sorted(g.tags)]:
            if bounds and tag in bounds:
                lo, hi = max(lo, bounds[tag][0]), min(hi, bounds[tag][1])
        ok = np.flatnonzero((sc >= lo - 1e-9) & (sc <= hi + 1e-9))
        if ok.size == 0:
            raise PrunekitError(
                f"channel group {g.name!r} (tags {', '.join(sorted(g.tags)) or 'none'}): the bounds [{lo}, {hi}] "
                "contain no value of the scale table; widen bounds or add scales"
            )
        low[i], high[i] = ok[0], ok[-1]
    return WidthEncoding(scales=sc, table=table, bounds=GeneBounds(low, high))


def _random_bounds(enc: WidthEncoding, rs: tuple[float, float] | None) -> GeneBounds | None:
    if rs is None:
        return None
    ok = np.flatnonzero((enc.scales >= rs[0] - 1e-9) & (enc.scales <= rs[1] + 1e-9))
    if ok.size == 0:
        raise PrunekitError(f"random_scales {list(rs)} contain no value of the scale table")
    low = np.clip(ok[0], enc.bounds.low, enc.bounds.high)
    high = np.clip(ok[-1], enc.bounds.low, enc.bounds.high)
    return GeneBounds(low, np.maximum(low, high))


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
        enc: WidthEncoding,
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
        widths = self.enc.widths(genes)
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
            self.pnet.set_widths(self.enc.widths(self.enc.bounds.high))
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
        device: where to run.

    ``fitness(genes [G]) -> float``; ``fitness.calls`` counts evaluations.
    """

    def __init__(
        self,
        pnet: PruningNet,
        enc: WidthEncoding,
        recal_loader: Any,
        val_loader: Any,
        *,
        recal_batches: int,
        eval_batches: int | None,
        device: str,
    ) -> None:
        self.pnet, self.enc = pnet, enc
        self.recal_loader, self.val_loader = recal_loader, val_loader
        self.recal_batches, self.eval_batches, self.device = recal_batches, eval_batches, device
        self.calls = 0

    def prepare(self, genes: np.ndarray) -> PruningNet:
        """Set ``genes`` on the PruningNet and recalibrate its BN statistics; returns the PruningNet (eval mode)."""
        self.pnet.set_widths(self.enc.widths(genes))
        recalibrate_bn(self.pnet, self.recal_loader, batches=self.recal_batches, device=self.device)
        return self.pnet.eval()

    def __call__(self, genes: np.ndarray) -> float:
        self.calls += 1
        net = self.prepare(genes)
        return float(evaluate(net, self.val_loader, self.device, max_batches=self.eval_batches)["top1"])


# ---------------------------------------------------------------------------------------------- helpers
def _shrunk(tc: TrainConfig, epochs: float) -> TrainConfig:
    e = min(tc.epochs, epochs)
    return tc.model_copy(
        update={
            "epochs": e,
            "warmup_epochs": min(tc.warmup_epochs, e / 2),
            "milestones": [m for m in tc.milestones if m < e],
        }
    )


def _smoke_config(cfg: MetaPruningConfig) -> MetaPruningConfig:
    """A tiny version of ``cfg`` for ``--smoke`` runs (one epoch per training, a two-iteration search)."""
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
            "pruningnet_train": _shrunk(cfg.pruningnet_train, 1.0),
            "final_train": _shrunk(cfg.final_train, 1.0) if cfg.final_train is not None else None,
            "search": search,
            "recal_batches": min(cfg.recal_batches, 2),
            "eval_batches": min(cfg.eval_batches or 2, 2),
            "top_k": min(cfg.top_k, 3),
        }
    )


def _fresh_model(ctx: MethodContext) -> nn.Module:
    """The model spec's own initialisation (seeded with the run's seed, as the pipeline builds its model), or a
    copy of ``ctx.model`` with every layer's ``reset_parameters()`` when the spec cannot be built."""
    from prunekit.models import create_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)
        try:
            return create_model(ctx.spec)
        except PrunekitError:
            import copy

            model = copy.deepcopy(ctx.model)
            for m in model.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
            return model


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


def _load_search(path: Path, fingerprint: str, ga: GeneticSearch) -> bool:
    if not path.is_file():
        return False
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        log.warning("metapruning: unreadable search state %s; starting the search afresh", path)
        return False
    if saved.get("fingerprint") != fingerprint:
        log.warning("metapruning: %s belongs to a different search setup; starting the search afresh", path)
        return False
    ga.load_state_dict(saved["ga"])
    return True


# ---------------------------------------------------------------------------------------------- figures
def plot_search_curve(history: list[dict[str, Any]], path: Path) -> Path:
    """Write the search curve (best-so-far and population-mean fitness, top-1 %, per iteration) as a PNG."""
    from prunekit.report import _new_figure, _png_bytes, _write_bytes

    fig = _new_figure((6.0, 3.6))
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
    _write_bytes(path, _png_bytes(fig))
    return path


def plot_widths(
    names: list[str], reference: np.ndarray, chosen: np.ndarray, uniform: np.ndarray | None, path: Path
) -> Path:
    """Write a bar chart of the chosen kept channels per group against the reference widths (and a uniform-width
    model of the same MACs, when given) as a PNG."""
    from prunekit.report import _new_figure, _png_bytes, _write_bytes

    n = len(names)
    fig = _new_figure((max(6.0, 0.35 * n + 2.0), 4.0))
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
    _write_bytes(path, _png_bytes(fig))
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
            gives the reachable MACs range); bounds leave a group no scale; the model cannot be cropped.
    """
    target = require_target(ctx, "metapruning")
    if ctx.smoke:
        cfg = _smoke_config(cfg)
    space, cm = ctx.space, ctx.cost
    if getattr(ctx.data, "val", None) is None:
        raise PrunekitError("metapruning scores candidates on a held-out split: set data.val_fraction > 0")
    require_train(ctx, "metapruning")
    lo, hi = macs_window(cfg, target)
    enc = build_encoding(
        space, cfg.scales, bounds=cfg.bounds, round_to=cfg.round_to, min_channels=cfg.min_channels
    )
    smallest = float(np.rint(cm.macs(enc.widths(enc.bounds.low))))
    largest = float(np.rint(cm.macs(enc.widths(enc.bounds.high))))
    if smallest > hi or largest < lo:
        raise PrunekitError(
            f"MACs window [{lo:,.0f}, {hi:,.0f}] is outside what the search space reaches ([{smallest:,.0f}, "
            f"{largest:,.0f}] MACs with these scales / bounds); change target, window or bounds"
        )
    base_macs = float(cm.cost().macs)
    out = Path(ctx.out_dir)
    sdir = out / SEARCH_DIR

    # ---- 1. PruningNet
    t0 = time.perf_counter()
    reference = ctx.model if cfg.pruningnet_init == "model" else _fresh_model(ctx)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)
        pnet = PruningNet(
            reference,
            space,
            hidden=cfg.hidden,
            hidden_block=cfg.hidden_block,
            inputs=cfg.generator_inputs,
            bn_affine=cfg.bn_affine,
        )
    ptc = cfg.pruningnet_train
    recal_loader = _recal_loader(ctx, cfg.recal_batch_size)
    sampler = SampleSubnets(
        pnet, enc, cm, seed=ctx.seed, recal_loader=recal_loader, recal_batches=cfg.recal_batches
    )
    pres = ctx.train(pnet, ptc, tag="pruningnet", callbacks=[sampler], select="last")
    pnet_s = time.perf_counter() - t0
    last = pres.history[-1] if pres.history else {}
    log.info(
        "metapruning: PruningNet trained (%d generator params), sampled-subnet train top1 %.2f%%",
        pnet.generator_params(),
        100 * float(last.get("train_top1") or 0.0),
    )

    # ---- 2. search
    fitness = PruningNetFitness(
        pnet,
        enc,
        recal_loader,
        ctx.data.val,
        recal_batches=cfg.recal_batches,
        eval_batches=cfg.eval_batches,
        device=ctx.device,
    )

    def feasible(genes: np.ndarray) -> np.ndarray:
        m = np.rint(cm.macs(enc.widths(genes)))
        return (m >= lo) & (m <= hi)

    ga = GeneticSearch(
        enc.bounds,
        cfg.search,
        feasible=feasible,
        seed=ctx.seed,
        random_bounds=_random_bounds(enc, cfg.random_scales),
        canonical=enc.canonical,
    )
    fp = _fingerprint(
        cfg.model_dump(mode="json", exclude={"final_train", "init", "top_k"}), [lo, hi], enc.table, ctx.seed
    )
    state_path = sdir / SEARCH_STATE
    resumed = _load_search(state_path, fp, ga)
    if resumed:
        log.info(
            "metapruning: resuming the search at iteration %d (%d evaluated)", ga.iteration + 1, ga.evaluated
        )

    def checkpoint(g: GeneticSearch) -> None:
        write_json(state_path, {"fingerprint": fp, "ga": g.state_dict()})

    def on_iteration(g: GeneticSearch, row: dict[str, Any]) -> None:
        log.info(
            "metapruning search %d/%d: best %.2f%%, mean %.2f%%, %d evaluated, %d rejected by the MACs window",
            row["iteration"],
            g.cfg.iterations,
            100 * row["best"],
            100 * (row["mean"] if row["mean"] is not None else float("nan")),
            row["evaluated"],
            row["rejected"],
        )

    t1 = time.perf_counter()
    ga.run(fitness, checkpoint=checkpoint, on_iteration=on_iteration)
    search_s = time.perf_counter() - t1
    ranked = ga.top(cfg.top_k)
    if not ranked:
        raise PrunekitError("metapruning search evaluated no candidate; widen the MACs window")

    # ---- top-k plans
    cand_files = []
    for rank, (genes, fit) in enumerate(ranked, 1):
        w = enc.widths(genes)
        plan = plan_from_widths(space, w, spec=ctx.spec)
        c = cm.cost(plan)
        plan.meta.update(
            {
                "method": "metapruning",
                "rank": rank,
                "fitness_val_top1": fit,
                "macs": c.macs,
                "params": c.params,
                "genes": [int(v) for v in genes],
                "scales": [float(s) for s in enc.scale(genes)],
            }
        )
        fname = out / "candidates" / f"rank{rank:02d}.json"
        plan.save(fname)
        cand_files.append(str(fname.relative_to(out)))

    # ---- 3. final network
    best_genes, best_fit = ranked[0]
    widths = enc.widths(best_genes)
    plan = plan_from_widths(space, widths, spec=ctx.spec)
    if cfg.init == "pruningnet":
        fitness.prepare(best_genes)
        model, _ = pnet.subnet(widths)
        model.train()
    else:
        model = apply(_fresh_model(ctx), plan, space)
    init_val = None
    trained = cfg.final_train is not None
    if trained:
        assert cfg.final_train is not None
        if cfg.init == "pruningnet":
            init_val = float(ctx.evaluate(model, "val")["top1"])
        ctx.train(model, cfg.final_train, tag="final")
    cost = cm.cost(plan)
    plan.meta.update(
        {
            "method": "metapruning",
            "fitness_val_top1": best_fit,
            "genes": [int(v) for v in best_genes],
            "scales": [float(s) for s in enc.scale(best_genes)],
            "init": cfg.init,
        }
    )

    # ---- history, figures, extras
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
                "best_macs": int(np.rint(cm.macs(enc.widths(np.array(items[best_i][0]))))),
                "evaluated": row["evaluated"],
                "rejected": row["rejected"],
            }
        )
    figures = {}
    try:
        figures["search_curve"] = str(plot_search_curve(history, sdir / "search_curve.png").relative_to(out))
        try:
            _, uni = fit_uniform(
                space, cm, float(cost.macs), round_to=cfg.round_to, min_channels=cfg.min_channels
            )
        except PrunekitError:
            uni = None
        figures["widths"] = str(
            plot_widths(space.names(), space.channels, widths, uni, sdir / "widths.png").relative_to(out)
        )
    except (ImportError, OSError) as exc:  # figures are a convenience: never fail the run for them
        log.warning("metapruning: could not draw the figures (%s)", exc)
    evals_min = ga.evaluated / (ga.eval_seconds / 60.0) if ga.eval_seconds > 0 else None
    extra = {
        "target_macs": target,
        "macs_window": [lo, hi],
        "base_macs": base_macs,
        "macs": cost.macs,
        "chosen": {
            "fitness_val_top1": best_fit,
            "widths": [int(v) for v in widths],
            "scales": [float(s) for s in enc.scale(best_genes)],
            "init": cfg.init,
            "init_val_top1": init_val,
        },
        "search": {
            "iterations": ga.iteration,
            "evaluated": ga.evaluated,
            "rejected": ga.rejected,
            "duplicates": ga.duplicates,
            "proposed": ga.proposed,
            "eval_seconds": round(ga.eval_seconds, 2),
            "candidates_per_min": round(evals_min, 2) if evals_min is not None else None,
            "wall_s_this_process": round(search_s, 2),
            "resumed": resumed,
        },
        "pruningnet": {
            "generator_params": pnet.generator_params(),
            "reference_params": int(sum(p.numel() for p in ctx.model.parameters())),
            "epochs": ptc.epochs,
            "last_epoch_subnet_train_top1": last.get("train_top1"),
            "wall_s_this_process": round(pnet_s, 2),
        },
        "candidates": cand_files,
        "figures": figures,
        "trained_by": "final_train" if trained else "finetune",
    }
    return MethodResult(plan=plan, model=model, history=history, trained=trained, extra=extra)
