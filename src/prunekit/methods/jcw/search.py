"""JCW's search phase: a weight-sharing supernet on a proxy split, NSGA-II over widths and densities against
(proxy loss, predicted latency), checkpointed every generation.

Per generation (Zhao et al. 2021, §3.3-3.4; seed ``emo_search.py`` + ``ps_evaluator.py``):

1. the searcher proposes the offspring ``Q`` (the first generation: the random initial population);
2. the supernet is trained on the candidates ``R = P ∪ Q`` (one candidate sampled per step,
   :class:`~prunekit.supernets.slimmable.SupernetCallback`): ``retrain`` -- from re-initialised weights, a CNS
   phase (channels only) then a WP phase (masks on), every generation, as the seed does; ``finetune`` (default) --
   the CNS + WP training once, before the first generation, on random encodings of the bounds, then
   ``finetune_epochs`` of WP training on ``R`` per generation;
3. every member of ``R`` is scored on the same supernet: proxy validation loss after BN recalibration
   (:func:`~prunekit.supernets.slimmable.proxy_losses`) and latency predicted by the latency table
   (:meth:`~prunekit.cost.predict.LatencyModel.batch`, densities and all);
4. the parents are rescored and NSGA-II's survival (JCW's target-latency selection by default) keeps ``P``.

The state after each generation (supernet weights, searcher state, history) is written atomically to
``<out>/jcw/search.pt``; a killed search resumes from the last finished generation and, since every random choice is
seeded from the state, ends with the same population.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn as nn

from prunekit.cost.predict import LatencyModel
from prunekit.distributed import map_sharded
from prunekit.errors import PrunekitError
from prunekit.io import load_checkpoint, save_checkpoint
from prunekit.progress import progress_bar
from prunekit.search.encoding import GeneEncoding
from prunekit.search.nsga2 import NSGA2
from prunekit.space import ChannelSpace, Plan
from prunekit.supernets.slimmable import SupernetCallback, proxy_losses
from prunekit.train import TrainConfig, fit

log = logging.getLogger(__name__)

__all__ = [
    "Proxy",
    "SearchOutcome",
    "generation_training",
    "initial_training",
    "latencies",
    "run_search_phase",
    "train_supernet",
    "undertrained",
]

STATE_FORMAT = "prunekit.jcw.search/1"


@dataclass
class Proxy:
    """The proxy task: shuffled, augmented ``train`` and plain ``val`` loaders over a seeded per-class split of the
    training data, and the fixed ``bn_batches`` every candidate's BN statistics are recomputed on."""

    train: Any
    val: Any
    bn_batches: list[Any]
    loss_fn: Any = None  # the user's loss_fn(model, batch) (prunekit.prune), else cross-entropy on (x, y)
    classes: int | None = None  # classes of the proxy split (chance cross-entropy: ln classes), when known


def undertrained(best_loss: float, proxy: Proxy) -> str | None:
    """A warning when the best proxy cross-entropy is within 10% of chance (``ln classes``): the supernet has barely
    learned, so the loss ranks candidates by how much training their widths got rather than by their capacity (the
    MobileNetV2 preset's 3 + 5 supernet epochs: 2.15 against chance 2.30, and a front collapsed to its narrowest
    members). None when the loss is the user's own or the class count is unknown."""
    if proxy.loss_fn is not None or not proxy.classes or proxy.classes < 2:
        return None
    chance = float(np.log(proxy.classes))
    if best_loss < 0.9 * chance:
        return None
    return (
        f"jcw: the supernet has barely learned (best proxy loss {best_loss:.2f}, chance ln {proxy.classes} = "
        f"{chance:.2f}): its ranking of candidates means little; train it longer (method.supernet.cns / wp epochs)"
    )


@dataclass
class SearchOutcome:
    """The final population (genes ``[P, n]``, objectives ``[P, 2]`` = proxy loss, predicted ms), the history
    (one row per generation, with every evaluated candidate's objectives) and the search's facts."""

    genes: np.ndarray
    objectives: np.ndarray
    history: list[dict[str, Any]] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)


def latencies(enc: GeneEncoding, lm: LatencyModel, genes: np.ndarray) -> np.ndarray:
    """Predicted ms ``[N]`` of encodings ``[N, n]``: widths, densities (dense layers at 1) and group counts."""
    g = np.atleast_2d(genes)
    dens = enc.decode_densities(g)
    densities = {name: dens[:, j] for j, name in enumerate(enc.density_layers)} or None
    return lm.batch(enc.decode_widths(g), densities)


def train_supernet(
    model: nn.Module,
    space: ChannelSpace,
    proxy: Proxy,
    recipe: TrainConfig,
    pool,
    *,
    sparse: bool,
    seed: int,
    device: str,
    ckpt: Path | None = None,
    desc: str,
) -> None:
    """Train the supernet ``model`` in place with ``recipe`` on the proxy task, one candidate of ``pool`` (plans, or
    a callable drawing one) per step; ``sparse``: the WP phase (density masks on), else CNS (channels only);
    checkpointed to ``ckpt`` (resumed when it exists)."""
    if recipe.epochs <= 0:
        return
    sup = SupernetCallback(space, pool, sparse=sparse, seed=seed)
    fit(
        model,
        proxy.train,
        recipe.model_copy(update={"seed": seed}),
        device=device,
        callbacks=[sup],
        ckpt_path=ckpt,
        resume=ckpt is not None and ckpt.is_file(),
        desc=desc,
        select="last",
        batch_loss=proxy.loss_fn,
    )


def initial_training(
    model: nn.Module,
    space: ChannelSpace,
    enc: GeneEncoding,
    proxy: Proxy,
    cns: TrainConfig,
    wp: TrainConfig,
    *,
    seed: int,
    device: str,
    ckpt_dir: Path | None = None,
) -> None:
    """``finetune`` mode's one-off supernet training before the first generation: CNS then WP on uniformly random
    encodings of the bounds (checkpointed under ``ckpt_dir`` when given)."""

    def draw(rng: np.random.Generator) -> Plan:
        return enc.decode(enc.bounds.random(rng, 1)[0])

    cns_ck = ckpt_dir / "supernet_cns.ckpt" if ckpt_dir is not None else None
    wp_ck = ckpt_dir / "supernet_wp.ckpt" if ckpt_dir is not None else None
    train_supernet(
        model,
        space,
        proxy,
        cns,
        draw,
        sparse=False,
        seed=seed,
        device=device,
        ckpt=cns_ck,
        desc="jcw supernet (CNS)",
    )
    train_supernet(
        model,
        space,
        proxy,
        wp,
        draw,
        sparse=True,
        seed=seed + 1,
        device=device,
        ckpt=wp_ck,
        desc="jcw supernet (WP)",
    )


def generation_training(
    model: nn.Module,
    fresh: Callable[[], nn.Module],
    space: ChannelSpace,
    proxy: Proxy,
    cns: TrainConfig,
    wp: TrainConfig,
    plans: list[Plan],
    *,
    mode: str,
    finetune_epochs: float,
    seed: int,
    generation: int,
    device: str,
) -> None:
    """One generation's supernet training on its candidates ``plans``: ``retrain`` -- re-initialised (``fresh()``)
    and trained CNS + WP (the seed); ``finetune`` -- ``finetune_epochs`` of WP training (warm-up off)."""
    gen = generation
    if mode == "retrain":
        model.load_state_dict(fresh().state_dict())
        train_supernet(
            model,
            space,
            proxy,
            cns,
            plans,
            sparse=False,
            seed=seed + 2 * gen,
            device=device,
            desc=f"jcw gen {gen} (CNS)",
        )
        train_supernet(
            model,
            space,
            proxy,
            wp,
            plans,
            sparse=True,
            seed=seed + 2 * gen + 1,
            device=device,
            desc=f"jcw gen {gen} (WP)",
        )
    elif finetune_epochs > 0:
        ft = wp.model_copy(update={"epochs": finetune_epochs, "warmup_epochs": 0.0})
        train_supernet(
            model,
            space,
            proxy,
            ft,
            plans,
            sparse=True,
            seed=seed + 1000 + gen,
            device=device,
            desc=f"jcw gen {gen} (finetune)",
        )


def run_search_phase(
    *,
    model: nn.Module,
    fresh: Callable[[], nn.Module],
    space: ChannelSpace,
    enc: GeneEncoding,
    lm: LatencyModel,
    searcher: NSGA2,
    proxy: Proxy,
    cns: TrainConfig,
    wp: TrainConfig,
    mode: str,
    finetune_epochs: float,
    seed: int,
    device: str,
    out_dir: Path,
    fingerprint: str,
) -> SearchOutcome:
    """Run (or resume) the search (see the module docstring); ``model`` is the supernet, trained in place.

    Raises:
        PrunekitError: a search state of another setup in ``out_dir`` (the fingerprint differs).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "search.pt"
    history: list[dict[str, Any]] = []
    t_eval = 0.0
    if path.is_file():
        state = load_checkpoint(path)
        if state.get("format") != STATE_FORMAT or state.get("fingerprint") != fingerprint:
            raise PrunekitError(
                f"{path} holds a JCW search of another setup (model, encoding, proxy or search options changed); "
                "use a new --out directory or --overwrite"
            )
        model.load_state_dict(state["supernet"])
        searcher.load_state_dict(state["searcher"])
        history = list(state["history"])
        t_eval = float(state.get("eval_s", 0.0))
        log.info("jcw: resuming the search after generation %d", searcher.generation)
    elif mode == "finetune":
        initial_training(model, space, enc, proxy, cns, wp, seed=seed, device=device, ckpt_dir=out_dir)
    bar = progress_bar(total=searcher.max_generations, desc="jcw search", unit="gen")
    bar.update(searcher.generation)
    try:
        while not searcher.done:
            gen = searcher.generation
            offspring = searcher.ask()
            parents = searcher.pop.copy()
            R = np.concatenate([parents, offspring]) if len(parents) else offspring
            plans = [enc.decode(g) for g in R]
            generation_training(
                model,
                fresh,
                space,
                proxy,
                cns,
                wp,
                plans,
                mode=mode,
                finetune_epochs=finetune_epochs,
                seed=seed,
                generation=gen,
                device=device,
            )
            t0 = time.perf_counter()
            # under torchrun each rank scores every world-th candidate (same supernet, same unsharded proxy data)
            loss = np.asarray(
                map_sharded(
                    lambda ps: proxy_losses(
                        model, space, ps, proxy.bn_batches, proxy.val, device=device, loss_fn=proxy.loss_fn
                    ).tolist(),
                    plans,
                ),
                dtype=np.float64,
            )
            t_eval += time.perf_counter() - t0
            if gen == 0 and (msg := undertrained(float(loss.min()), proxy)):
                log.warning(msg)
            lat = latencies(enc, lm, R)
            F = np.stack([loss, lat], axis=1)
            if len(parents):
                searcher.rescore(F[: len(parents)])
            searcher.tell(offspring, F[len(parents) :])
            history.append(
                {
                    "generation": gen,
                    "evaluated": len(R),
                    "targets": list(searcher.last_targets),
                    "loss": [float(x) for x in loss],
                    "latency_ms": [float(x) for x in lat],
                    "best_loss": float(loss.min()),
                    "population_loss": [float(x) for x in searcher.objs[:, 0]],
                    "population_latency_ms": [float(x) for x in searcher.objs[:, 1]],
                }
            )
            save_checkpoint(
                path,
                {
                    "format": STATE_FORMAT,
                    "fingerprint": fingerprint,
                    "supernet": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "searcher": searcher.state_dict(),
                    "history": history,
                    "eval_s": t_eval,
                },
            )
            bar.update(1)
            bar.set_postfix(best_loss=f"{loss.min():.3f}", ms=f"{lat.min():.2f}-{lat.max():.2f}")
    finally:
        bar.close()
    facts = {
        "generations": searcher.generation,
        "evaluations": int(sum(h["evaluated"] for h in history)),
        "eval_s": round(t_eval, 2),
        "duplicates": searcher.duplicates,
        "screened_out": searcher.screened_out,  # proposals over a MACs / params budget, never evaluated
        "mode": mode,
    }
    return SearchOutcome(searcher.pop.copy(), searcher.objs.copy(), history, facts)
