"""The arena's entrants (issue #14): what each one runs, and how the one compute budget is split among its phases.

Imported by ``bench/arena.py`` (run as a script, so ``bench/`` is on the path). A budget ``B`` is in reference
epochs (one training epoch of the unpruned model on the task's training images; :mod:`prunekit.train.compute`
counts what every phase really spent, and the arena reports that beside the plan). ``r`` is the MACs ratio the
entrant's pruned net is expected to have (the task's MACs target, or for the latency task the MACs ratio uniform
reached under the latency target): an epoch of the pruned net costs ``r`` reference epochs.

Every entrant that starts from a trained model shares one pretraining per task and seed (``B / 2`` epochs of the
reference model, :func:`pretrain_tree`); its compute is charged to each of them.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

from prunekit.methods.multistage.schedules import stage_ratios

RECIPE = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5.0e-4, "schedule": "cosine", "warmup_epochs": 0.2}
"""Training from scratch and pretraining (the presets' Fashion-MNIST recipe)."""

FINETUNE = {"lr": 0.02, "momentum": 0.9, "weight_decay": 5.0e-4, "schedule": "cosine"}
"""Recovery training of a pruned net (the quickstart's finetune recipe)."""

ROUND_TO = 8
"""Channel multiple of the rounding entrants on every machine. ``round_to: auto`` would resolve to 16 on AVX-512
(ONNX Runtime's NCHWc block), where ResNet-20's 16-channel stage cannot shrink and 25% of its MACs is out of reach;
one fixed multiple also keeps cells run on different machines comparable (8 is the block on AVX2)."""

PRETRAIN_SHARE = 0.5
"""Share of the budget spent pretraining, for the entrants that prune a trained model."""


@dataclass(frozen=True)
class Entrant:
    """One arena entrant: ``kind`` ``run`` (a ``prunekit run`` config built by :func:`tree`), ``tp`` (a
    torch-pruning pruner through prunekit's finetune loop, ``bench/arena_tp.py``) or ``dense``."""

    name: str
    label: str
    kind: str
    pretrained: bool
    latency_budget: bool  # takes a latency target itself (else the latency task gives it the MACs proxy)
    rounding: str


ENTRANTS: dict[str, Entrant] = {
    e.name: e
    for e in (
        Entrant("dense", "dense reference", "run", False, True, "-"),
        Entrant("uniform", "uniform width, from scratch", "run", False, True, "8"),
        Entrant("magnitude", "magnitude (L1, global) + finetune", "run", True, True, "8"),
        Entrant("multistage", "multistage (8stage, AGP)", "run", True, False, "1"),
        Entrant("scratch", "pruning from scratch (gates + Scratch-B)", "run", False, False, "1"),
        Entrant("metapruning", "MetaPruning (PruningNet + evolution)", "run", False, False, "1"),
        Entrant(
            "jcw", "JCW (NSGA-II, channels only, member nearest the target)", "run", True, True, "group 4"
        ),
        # GConv's own budget is params / ops (seed 003), and on the latency task no group-count plan reaches it:
        # every eligible conv of the task's ResNet-20 (28x28) at 2 or 4 groups measures 0.97x of the dense
        # latency (ONNX Runtime, batch 1, one thread, 2026-12-05), so it gets the MACs proxy as the others do
        Entrant("gconv", "GConv search (group counts) + finetune", "run", True, False, "-"),
        Entrant("tp-magnitude", "torch-pruning MagnitudePruner (L1) + finetune", "tp", True, False, "1"),
        Entrant(
            "tp-taylor", "torch-pruning MetaPruner, Taylor importance + finetune", "tp", True, False, "1"
        ),
    )
}


def _recipe(epochs: float, base: dict | None = None) -> dict:
    tc = dict(base or RECIPE)
    tc["epochs"] = round(max(epochs, 0.05), 3)
    if "warmup_epochs" in tc:
        tc["warmup_epochs"] = min(tc["warmup_epochs"], tc["epochs"] / 2)
    return tc


def pretrain_tree(task_tree: dict, budget: float) -> dict:
    """The shared pretraining (``prunekit train``): ``PRETRAIN_SHARE x B`` epochs of the reference model."""
    tree = copy.deepcopy(task_tree)
    tree["baseline"] = {"train": _recipe(PRETRAIN_SHARE * budget)}
    tree["target"] = {"macs_ratio": 1.0}
    tree["method"] = {"name": "uniform"}
    tree["finetune"] = None
    return tree


def tree(
    entrant: str,
    task_tree: dict,
    budget: float,
    r: float,
    pretrained: str | None,
    final_ratio: float | None = None,
) -> tuple[dict, dict]:
    """``(prunekit run config tree, planned split in reference epochs)`` of a ``run`` entrant.

    ``task_tree``: the task's config (model, data, target, export); ``pretrained``: the shared pretraining's
    ``baseline.pt`` for the entrants that prune a trained model; ``final_ratio``: multistage's last stage (the
    per-layer channel ratio removed that meets the MACs target), which sets how many stages share its budget."""
    t = copy.deepcopy(task_tree)
    rest = budget * (1 - PRETRAIN_SHARE)
    split: dict[str, float] = {}
    if ENTRANTS[entrant].pretrained:
        t["baseline"] = {"checkpoint": pretrained}
        split["pretraining (shared)"] = budget * PRETRAIN_SHARE
    if entrant == "dense":
        t["baseline"] = {"train": _recipe(budget)}
        t["target"] = {"macs_ratio": 1.0}
        t["method"] = {"name": "uniform"}
        t["finetune"] = None
        split["training"] = budget
    elif entrant == "uniform":
        t["baseline"] = {"checkpoint": None, "train": None}
        t["method"] = {"name": "uniform", "importance": "first", "round_to": ROUND_TO}
        t["finetune"] = _recipe(budget / r)
        split["training from scratch"] = budget
    elif entrant == "magnitude":
        t["method"] = {"name": "magnitude", "importance": "l1", "ranking": "global", "round_to": ROUND_TO}
        t["finetune"] = _recipe(rest / r, FINETUNE)
        split["finetune"] = rest
    elif entrant == "multistage":  # masked training: every stage epoch costs a reference epoch
        if final_ratio is None:
            raise ValueError("multistage needs final_ratio (the arena's multistage_ratio)")
        # the 8stage ratios below final_ratio, then final_ratio itself: 0.5078 -> 1/8 ... 4/8, 0.5078 (5 stages)
        stages = len(stage_ratios("8stage", final_ratio))
        stage = {**FINETUNE, "epochs": round(rest / stages, 3)}
        t["method"] = {
            "name": "multistage",
            "final_ratio": final_ratio,
            "schedule": "8stage",
            "importance": "l1",
            "ranking": "per_layer",
            "ramp_epochs": round(min(0.5, stage["epochs"] / 2), 3),
            "prune_every": 16,
            "stage": stage,
            "latency": False,
        }
        t["finetune"] = None
        split["stages (masked, dense cost)"] = rest
    elif (
        entrant == "scratch"
    ):  # gates on the 1.25x model (1.5625x MACs), then Scratch-B: epochs / r of the net
        gate = 0.1 * budget / 1.5625
        t["baseline"] = {"checkpoint": None, "train": None}
        t["method"] = {
            "name": "scratch",
            "expansion": 1.25,
            "gate_epochs": round(gate, 3),
            "budget": "scratch-b",
            "train": _recipe(budget - 1.5625 * gate),
        }
        t["finetune"] = None
        split["gates (1.25x model)"] = 1.5625 * gate
        split["Scratch-B training"] = budget - 1.5625 * gate
    elif (
        entrant == "metapruning"
    ):  # PruningNet on sub-nets of ~0.6x MACs, search, then the best net from scratch
        pn, search = 0.4 * budget / 0.6, 0.05 * budget
        t["baseline"] = {"checkpoint": None, "train": None}
        t["method"] = {
            "name": "metapruning",
            "bounds": {"all": [0.3, 1.0], "first": [0.5, 1.0]},
            "window": [0.9, 1.0],
            "hidden": 32,
            "hidden_block": 32,
            "pruningnet_train": {**RECIPE, "epochs": round(pn, 3), "label_smoothing": 0.1},
            "search": {"population": 20, "parents": 5, "mutations": 10, "crossovers": 10, "iterations": 5},
            "recal_batches": 4,
            "eval_batches": 4,
            "top_k": 5,
            "init": "scratch",
            "final_train": _recipe((budget - 0.4 * budget - search) / r),
        }
        t["finetune"] = None
        split["PruningNet (~0.6x MACs)"] = 0.4 * budget
        split["search (forward passes, estimate)"] = search
        split["final training"] = budget - 0.4 * budget - search
    elif (
        entrant == "jcw"
    ):  # supernet from the pretrained net, masked in place (dense cost); member from scratch
        sup = 0.15 * budget
        # widths scale MACs about quadratically: bounds around sqrt(r) on every tag (a gene's lower bound is the
        # max of its tags' bounds, so the seed's residual 0.9 would keep ResNet-20 above 50% of the MACs)
        lo, hi = round(0.6 * math.sqrt(r), 2), round(min(1.0, 1.5 * math.sqrt(r)), 2)
        t["method"] = {
            "name": "jcw",
            "weights": False,
            "group_size": 4,
            "width_bounds": {tag: [lo, hi] for tag in ("all", "first", "last", "strided", "residual")},
            "supernet": {
                "cns": {**FINETUNE, "epochs": round(sup * 0.4, 3)},
                "wp": {**FINETUNE, "epochs": round(sup * 0.6, 3)},
                "mode": "finetune",
                "finetune_epochs": 0.0,
            },
            "search": {"population": 12, "generations": 6},
            "member": {"regular": _recipe((rest - sup) / r), "admm": None, "ft": None},
        }
        t["finetune"] = None
        split["supernet (masked, dense cost)"] = sup
        split["member training"] = rest - sup
    elif entrant == "gconv":
        t["method"] = {"name": "gconv", "search": True, "search_cost": "macs"}
        t["finetune"] = _recipe(rest / r, FINETUNE)
        split["finetune"] = rest
    else:
        raise KeyError(entrant)
    return t, split


def tp_split(budget: float) -> dict[str, float]:
    """The torch-pruning entrants: the shared pretraining, then finetuning of the pruned net."""
    return {"pretraining (shared)": budget * PRETRAIN_SHARE, "finetune": budget * (1 - PRETRAIN_SHARE)}


def tp_finetune(budget: float, r: float) -> dict[str, Any]:
    """The finetune recipe of the torch-pruning entrants (the same as magnitude's)."""
    return _recipe(budget * (1 - PRETRAIN_SHARE) / r, FINETUNE)
