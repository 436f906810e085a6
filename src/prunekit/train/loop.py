"""The one training loop every prunekit method reuses: :func:`fit`, :func:`evaluate` and :class:`Callback`.

Pruning methods plug in through callbacks instead of writing their own loops. Per optimizer step::

    on_batch_begin(state, batch)      # may return a replacement (x, y); e.g. sample a sub-network
    outputs = model(x); loss = criterion(outputs, y)
    extra_loss(state, model)          # every callback may add a regulariser term (sparsity, ADMM, KD)
    (loss + extras).backward()
    on_after_backward(state)          # e.g. mask gradients of pruned channels
    clip_grad_norm_ (cfg.grad_clip); optimizer.step(); scheduler.step()
    on_step_end(state)                # e.g. re-apply masks, ADMM Z/U updates every k steps

and per run: ``on_train_begin`` -> for each epoch [``set_epoch``, ``on_epoch_begin``, steps, evaluation,
``on_epoch_end(state, metrics)``, JSONL record, checkpoint] -> ``on_train_end``.

Checkpoints are written atomically after every epoch and hold only plain tensors/numbers/strings (loadable
with ``weights_only=True``), including optimizer, scheduler, callback and RNG state, so ``resume=True``
after a kill reproduces an uninterrupted run bit for bit on deterministic (CPU) kernels.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from tqdm.auto import tqdm

from prunekit.distributed import (
    all_gather_objects,
    all_reduce_sum,
    barrier,
    get_rank,
    get_world_size,
    is_distributed,
)
from prunekit.errors import PrunekitError
from prunekit.io import load_checkpoint, save_checkpoint
from prunekit.progress import progress_enabled
from prunekit.train.compute import active as compute_active
from prunekit.train.compute import charge_forward, forward_macs
from prunekit.train.recipes import (
    TrainConfig,
    build_criterion,
    build_optimizer,
    build_scheduler,
    parse_train_config,
    total_steps,
)

__all__ = ["CKPT_FORMAT", "Callback", "FitResult", "TrainState", "evaluate", "fit", "progress_enabled"]

CKPT_FORMAT = "prunekit.train/1"
_log = logging.getLogger("prunekit.train")


# ----------------------------------------------------------------------------------------------- state / API


@dataclass
class TrainState:
    """Mutable view of a running :func:`fit`, passed to every callback hook.

    Attributes:
        model: the bare network (never the DDP wrapper): mask / regularise / inspect this one.
        train_model: what the forward pass runs through (the DDP wrapper when distributed, else ``model``).
        optimizer, scheduler: the live optimizer and per-iteration LR scheduler.
        cfg: the validated recipe.
        device: training device.
        epoch: 0-based index of the current epoch during an epoch; after the last ``on_epoch_end`` it is the
            number of epochs completed (also what a checkpoint stores).
        step: optimizer steps completed so far (global over epochs; incremented before ``on_step_end``).
        batch_idx: 0-based batch index within the epoch.
        steps_per_epoch: ``len(train_loader)``; total_steps: steps of the whole run; num_epochs: epochs of the
            run (``ceil(cfg.epochs)``; the last may be partial).
        history: per-epoch metric dicts so far (see :func:`fit`).
        best_top1, best_epoch: best validation top-1 (fraction) so far and its 1-based epoch.
        inputs, targets, outputs, loss: current batch on ``device``, model outputs and task loss (no extras);
            set during a step, cleared at epoch end.
        resumed: True when this run continued from a checkpoint.
        stop_training: set True (e.g. in ``on_epoch_end``) to stop after the current epoch (early stopping).
        rank, world_size: distributed position (0 / 1 when not distributed).
    """

    model: nn.Module
    optimizer: Optimizer
    scheduler: LRScheduler
    cfg: TrainConfig
    device: torch.device
    steps_per_epoch: int
    total_steps: int
    num_epochs: int
    train_model: nn.Module | None = None
    epoch: int = 0
    step: int = 0
    batch_idx: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_top1: float | None = None
    best_epoch: int | None = None
    inputs: Any = None
    targets: Any = None
    outputs: Any = None
    loss: torch.Tensor | None = None
    resumed: bool = False
    stop_training: bool = False
    rank: int = 0
    world_size: int = 1
    desc: str = "train"
    sample: Any = None
    scaler: Any = None  # torch.amp.GradScaler under amp: fp16


class Callback:
    """Base class for training hooks; every hook is a no-op, override what you need.

    Call order per run: ``on_train_begin`` -> per epoch: ``on_epoch_begin`` -> per step: ``on_batch_begin``,
    ``extra_loss``, ``on_after_backward``, ``on_step_end`` -> ``on_epoch_end`` -> ``on_train_end``.
    Callbacks run in the order given to :func:`fit`. In distributed runs every hook runs on every rank.

    State that must survive a kill/resume goes in :meth:`state_dict` (plain tensors, numbers, strings, lists,
    dicts only: checkpoints are loaded with ``weights_only=True``); on resume :meth:`load_state_dict` is
    called before ``on_train_begin`` (where ``state.resumed`` is True).
    """

    def on_train_begin(self, state: TrainState) -> None:
        """Once before the first epoch (also after a resume, with the checkpoint already loaded)."""

    def on_epoch_begin(self, state: TrainState) -> None:
        """At each epoch start, after ``model.train()`` and ``train_loader.set_epoch(epoch)``."""

    def on_batch_begin(self, state: TrainState, batch: tuple[Any, Any]) -> tuple[Any, Any] | None:
        """Before the forward pass, with ``batch = (x, y)`` already on the device.

        Return a replacement ``(x, y)`` (e.g. mixup) or None to keep the batch. Configure the model here for
        per-batch sub-network sampling.
        """
        return None

    def extra_loss(self, state: TrainState, model: nn.Module) -> torch.Tensor | None:
        """Return a scalar tensor added to the task loss before backward (a regulariser), or None.

        ``model`` is the bare network (not the DDP wrapper); ``state.outputs`` / ``state.targets`` hold this
        batch's logits and labels (for distillation-style terms).
        """
        return None

    def on_after_backward(self, state: TrainState) -> None:
        """After ``backward()`` (grads all-reduced under DDP), before clipping and ``optimizer.step()``."""

    def on_step_end(self, state: TrainState) -> None:
        """After ``optimizer.step()`` and ``scheduler.step()`` (``state.step`` already incremented)."""

    def on_epoch_end(self, state: TrainState, metrics: dict[str, Any]) -> None:
        """After evaluation, before the JSONL record and the checkpoint; may add keys to ``metrics``
        (numbers/strings) and set ``state.stop_training``."""

    def on_train_end(self, state: TrainState) -> None:
        """Once after the last epoch (before the best weights are loaded when ``select='best'``)."""

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state (plain data only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


@dataclass
class FitResult:
    """Outcome of :func:`fit`.

    Attributes:
        history: one dict per epoch (all epochs, including those before a resume); keys: ``epoch`` (1-based),
            ``epochs_done`` (float), ``step``, ``lr`` (LR of the first param group at the epoch's last step),
            ``train_loss`` (task loss, nats), ``train_top1`` (fraction), ``train_extra`` (mean extra loss),
            ``val_top1``, ``val_top5`` (fractions), ``val_loss`` (nats), ``val_n`` (None when not evaluated),
            ``img_s`` (training images/s, all ranks), ``train_s`` and ``wall_s`` (seconds), + callback keys.
        best_top1, best_epoch: best validation top-1 and its 1-based epoch (None without validation).
        best_state: CPU copy of the best weights (only with ``select='best'``).
        epochs_run: epochs trained by this call (0 when the checkpoint was already complete).
        steps: total optimizer steps of the run; wall_s: seconds spent in this call.
        stopped_early: a callback set ``state.stop_training``.
    """

    history: list[dict[str, Any]]
    best_top1: float | None
    best_epoch: int | None
    best_state: dict[str, torch.Tensor] | None
    epochs_run: int
    steps: int
    wall_s: float
    stopped_early: bool = False

    @property
    def final(self) -> dict[str, Any] | None:
        """Metrics of the last epoch (None when no epoch ran)."""
        return self.history[-1] if self.history else None


# ----------------------------------------------------------------------------------------------- helpers


def _split_batch(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, Mapping) or not isinstance(batch, Sequence) or len(batch) < 2:
        raise PrunekitError(
            f"loader batches must be (inputs, targets) pairs, got {type(batch).__name__}; "
            "wrap the loader so it yields (x, y)"
        )
    return batch[0], batch[1]


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


def _logits(out: Any) -> torch.Tensor:
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise PrunekitError(f"model must return logits of shape (batch, classes), got {shape}")
    return out


def _hard_targets(y: torch.Tensor) -> torch.Tensor:
    return y.argmax(dim=1) if y.ndim == 2 else y


def _batch_size(x: Any) -> int:
    while isinstance(x, (list, tuple)):
        x = x[0]
    if isinstance(x, dict):
        x = next(iter(x.values()))
    return int(x.shape[0])


def _topk_correct(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    k = min(5, logits.shape[1])
    pred = logits.topk(k, dim=1).indices
    hit = pred == _hard_targets(y).view(-1, 1)
    return hit[:, 0].sum(), hit.any(dim=1).sum()


def _plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _resolve_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise PrunekitError(f"invalid device {device!r}: use 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise PrunekitError(f"device {device!r} requested but no CUDA GPU is available; use device 'cpu'")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    device: str | torch.device = "cpu",
    *,
    max_batches: int | None = None,
    distributed: bool | None = None,
) -> dict[str, float]:
    """Classification metrics of ``model`` over ``loader`` (eval mode, no grad; the mode is restored after).

    Args:
        model: maps inputs ``(N, ...)`` to logits ``(N, C)`` (a tuple output uses its first element). It is
            moved to ``device`` in place.
        loader: iterable of ``(x, y)`` with ``y`` class indices ``(N,)`` (or ``(N, C)`` probabilities).
        device: where to run.
        max_batches: evaluate only the first N batches (smoke runs).
        distributed: all-reduce the sums over ranks (each rank evaluated its own shard; ``n`` is the global
            sample count). Default: when ``torch.distributed`` is initialised and the loader is sharded (its
            ``world_size`` attribute, where it has one, is above 1); an unsharded loader (the pipeline's val / test,
            a search's held-out batches) gives every rank the whole split's metrics without a collective, so ranks
            may evaluate different models at the same time.

    Returns:
        ``{"top1": fraction, "top5": fraction (top-min(5, C)), "loss": mean CE in nats, "n": samples}``.

    Raises:
        PrunekitError: the loader is empty, or the model does not return ``(N, C)`` logits.
    """
    dev = _resolve_device(device)
    model.to(dev)
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=dev)  # loss_sum, correct1, correct5, n
    sample = None
    try:
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            x, y = _to_device(_split_batch(batch), dev)
            sample = x if sample is None else sample
            logits = _logits(model(x))
            loss = F.cross_entropy(logits.float(), y, reduction="sum")
            c1, c5 = _topk_correct(logits, y)
            sums += torch.stack([loss.double(), c1.double(), c5.double(), sums.new_tensor(logits.shape[0])])
    finally:
        model.train(was_training)
    if distributed is None:
        distributed = is_distributed() and getattr(loader, "world_size", 2) > 1
    if distributed:
        sums = all_reduce_sum(sums)
    loss_sum, c1, c5, n = sums.tolist()
    if n == 0:
        raise PrunekitError("validation loader yielded no batches; check the dataset split / path")
    if sample is not None:  # the ledger counts every rank's work: an unsharded pass ran on each of them
        charge_forward(model, sample, int(n) * (1 if distributed else get_world_size()))
    return {"top1": c1 / n, "top5": c5 / n, "loss": loss_sum / n, "n": int(n)}


# ----------------------------------------------------------------------------------------------- RNG


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _rng_state() -> dict[str, Any]:
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, py_state, gauss_next = random.getstate()
    st: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": int(version),
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = list(torch.cuda.get_rng_state_all())
    return st


def _set_rng_state(st: Mapping[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    npst = st["numpy"]
    np.random.set_state(
        (
            "MT19937",
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    py = st["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    cuda = st.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# ----------------------------------------------------------------------------------------------- checkpoints


def _shape(t: Any) -> str:
    return str(list(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def _check_model_compat(model: nn.Module, saved: Mapping[str, Any], path: Path) -> None:
    mine = model.state_dict()
    missing = [k for k in mine if k not in saved]
    unexpected = [k for k in saved if k not in mine]
    mismatched = [
        k
        for k in mine
        if k in saved and (not isinstance(saved[k], torch.Tensor) or saved[k].shape != mine[k].shape)
    ]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if mismatched:
        k = mismatched[0]
        parts.append(
            f"{len(mismatched)} shape mismatch(es) (first: {k} is {_shape(saved[k])} in the checkpoint "
            f"vs {_shape(mine[k])} in the model)"
        )
    if missing:
        parts.append(f"{len(missing)} tensor(s) missing from the checkpoint (first: {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensor(s) (first: {unexpected[0]})")
    raise PrunekitError(
        f"checkpoint {path} was written for a different model: {'; '.join(parts)}; resume with the same "
        "model and pruning plan, or delete the checkpoint (or drop resume) to start fresh"
    )


def _config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return [f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in new if k in old and old[k] != new[k]]


def _restore(
    ckpt: dict[str, Any],
    state: TrainState,
    callbacks: Sequence[Callback],
    path: Path,
    keep_best: bool,
) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any] | None]:
    """Load a training checkpoint into ``state``; returns (best_state, this rank's RNG state or None).

    Called by :func:`_resume` from :func:`fit`: its warnings (``stacklevel=4``) point at ``fit``'s caller.
    """
    required = ("model", "optimizer", "scheduler", "epoch", "step", "history")
    missing = [k for k in required if k not in ckpt]
    if missing or ckpt.get("format") != CKPT_FORMAT:
        raise PrunekitError(
            f"{path} is not a prunekit training checkpoint (missing {', '.join(missing) or 'format tag'}); "
            "point ckpt_path at a file written by prunekit training, or drop resume"
        )
    _check_model_compat(state.model, ckpt["model"], path)
    state.model.load_state_dict(ckpt["model"])
    saved_opt = ckpt.get("optimizer_class")
    if saved_opt is not None and saved_opt != type(state.optimizer).__name__:
        raise PrunekitError(
            f"checkpoint {path} was trained with optimizer {saved_opt} but this run uses "
            f"{type(state.optimizer).__name__}; resume with the same optimizer or start fresh"
        )
    for name, obj in (("optimizer", state.optimizer), ("scheduler", state.scheduler)):
        try:
            obj.load_state_dict(ckpt[name])
        except (ValueError, KeyError, RuntimeError, TypeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise PrunekitError(
                f"cannot restore the {name} state from {path}: {first}; resume with the same model, "
                "optimizer and parameter groups, or start fresh"
            ) from None
    if state.scaler is not None and ckpt.get("scaler"):
        state.scaler.load_state_dict(ckpt["scaler"])
    saved_cbs = list(ckpt.get("callbacks", []))
    got = [type(cb).__name__ for cb in callbacks]
    want = [str(c.get("name")) for c in saved_cbs]
    if got != want:
        raise PrunekitError(
            f"checkpoint {path} holds state for callbacks {want} but this run has {got}; resume with the "
            "same callbacks (same method and options) or start fresh"
        )
    for cb, saved in zip(callbacks, saved_cbs, strict=True):
        try:
            cb.load_state_dict(saved.get("state", {}))
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise PrunekitError(
                f"cannot restore callback {type(cb).__name__} from {path}: {exc!s:.160}; start fresh"
            ) from None
    state.epoch = int(ckpt["epoch"])
    state.step = int(ckpt["step"])
    state.history = list(ckpt["history"])
    state.best_top1 = ckpt.get("best_top1")
    state.best_epoch = ckpt.get("best_epoch")
    state.stop_training = bool(ckpt.get("stopped", False))
    state.resumed = True

    diff = _config_diff(ckpt.get("config", {}), state.cfg.model_dump(mode="json"))
    if diff:
        warnings.warn(f"resuming {path} with a changed train config: {', '.join(diff)}", stacklevel=4)
    saved_spe = ckpt.get("steps_per_epoch")
    if saved_spe is not None and saved_spe != state.steps_per_epoch:
        warnings.warn(
            f"resuming {path}: steps per epoch changed from {saved_spe} to {state.steps_per_epoch} "
            "(different dataset, batch size or world size); the LR schedule is recomputed",
            stacklevel=4,
        )
    rngs = ckpt.get("rng")
    rng = None
    if isinstance(rngs, list) and len(rngs) == state.world_size:
        rng = rngs[state.rank]
    else:
        warnings.warn(
            f"checkpoint {path} has no RNG state for world size {state.world_size}; reseeding "
            "(the resumed run will not be bit-identical to an uninterrupted one)",
            stacklevel=4,
        )
    best_state = ckpt.get("best_state") if keep_best else None
    return best_state, rng


def _checkpoint_dict(
    state: TrainState,
    callbacks: Sequence[Callback],
    best_state: dict[str, torch.Tensor] | None,
    rngs: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "format": CKPT_FORMAT,
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "optimizer_class": type(state.optimizer).__name__,
        "scheduler": state.scheduler.state_dict(),
        "callbacks": [{"name": type(cb).__name__, "state": cb.state_dict()} for cb in callbacks],
        "epoch": state.epoch,
        "step": state.step,
        "steps_per_epoch": state.steps_per_epoch,
        "world_size": state.world_size,
        "history": state.history,
        "best_top1": state.best_top1,
        "best_epoch": state.best_epoch,
        "best_state": best_state,
        "stopped": state.stop_training,
        "rng": rngs,
        "config": state.cfg.model_dump(mode="json"),
        **({"scaler": state.scaler.state_dict()} if state.scaler is not None else {}),
    }


class _JsonlLog:
    def __init__(self, path: str | os.PathLike | None):
        self._fh = None
        if path is not None:
            p = Path(path)
            p.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(p, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, record: dict[str, Any]) -> None:
        if self._fh is not None:
            self._fh.write(json.dumps(_plain(record), default=str) + "\n")
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _cpu_copy(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in sd.items()}


# ----------------------------------------------------------------------------------------------- fit


def fit(
    model: nn.Module,
    train_loader: Iterable[Any],
    cfg: TrainConfig | Mapping[str, Any],
    *,
    val_loader: Iterable[Any] | None = None,
    device: str | torch.device = "cpu",
    callbacks: Sequence[Callback] = (),
    ckpt_path: str | os.PathLike | None = None,
    resume: bool = False,
    log_path: str | os.PathLike | None = None,
    desc: str = "train",
    select: Literal["last", "best"] = "last",
    optimizer: Optimizer | None = None,
    scheduler: LRScheduler | None = None,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    find_unused_parameters: bool = False,
    batch_loss: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    eval_fn: Callable[[nn.Module, Iterable[Any]], float] | None = None,
) -> FitResult:
    """Train ``model`` in place with the recipe ``cfg`` and return per-epoch metrics.

    Args:
        model: network mapping ``x`` to logits ``(N, C)``; moved to ``device`` in place.
        train_loader: iterable of ``(x, y)`` batches with ``len()`` (batches per epoch) and optionally
            ``set_epoch(epoch)`` (called with the 0-based epoch at each epoch start; a loader shuffling from
            it makes resume exact). Under ``torch.distributed`` it must already be sharded per rank (same
            length on every rank).
        cfg: :class:`TrainConfig` (or a mapping validated into one). ``cfg.epochs`` may be fractional: the run
            takes ``round(epochs * len(train_loader))`` steps, the last epoch being partial.
        val_loader: evaluated every ``cfg.eval_every`` epochs and after the last epoch (see :func:`evaluate`).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        callbacks: :class:`Callback` hooks, run in order.
        ckpt_path: checkpoint written atomically after every epoch (rank 0 only). Without resume an existing
            file is overwritten.
        resume: continue from ``ckpt_path`` (model, optimizer, scheduler, callbacks, history, best, RNG) at
            its next epoch; a complete checkpoint returns at once with its history.
        log_path: JSONL file appended with one ``{"type": "step", ...}`` record every ``cfg.log_every`` steps
            (rank 0's local loss/LR/img/s) and one ``{"type": "epoch", ...}`` record per epoch (the history
            entry). After a resume, step records of the interrupted epoch appear twice.
        desc: label for the progress bar, the log records and log messages.
        select: ``"last"`` keeps the final weights; ``"best"`` loads the weights of the epoch with the best
            validation top-1 at the end (needs ``val_loader``).
        optimizer, scheduler: override :func:`build_optimizer` / :func:`build_scheduler` (per-iteration
            scheduler, stepped after every optimizer step).
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` replacing cross-entropy with ``cfg.label_smoothing``.
        find_unused_parameters: passed to DDP (needed when batches use only a sub-network).
        batch_loss: ``batch_loss(model, batch) -> scalar``: the user's objective on a whole batch (moved to
            ``device``; any structure: a tuple, a dict, several inputs) instead of ``criterion(model(x), y)``; the
            epoch's ``train_top1`` is then None and the batch's size is that of its first tensor. Callbacks see the
            batch as ``(batch, None)``. No compute-ledger charge (the forward MACs need a plain input).
        eval_fn: ``eval_fn(model, val_loader) -> float``, higher is better: the validation score (``val_score``
            in the history) that ``select='best'`` maximises instead of the classification ``val_top1``.

    Returns:
        :class:`FitResult` (history, best val top-1 and epoch, best weights, steps, wall seconds).

    Raises:
        PrunekitError: invalid config/select/device, empty or unsized loader, ``resume`` without
            ``ckpt_path``, a missing/corrupt checkpoint or one from a different model/optimizer/callbacks,
            divergence (non-finite loss), loaders of different length across ranks.

    Seeds python ``random``, numpy and torch with ``cfg.seed + rank`` at the start. Prints a progress bar
    when stderr is a TTY and ``PRUNEKIT_NO_PROGRESS`` is not set; logs an epoch summary on the logger
    ``prunekit.train``.
    Under ``torch.distributed`` the model is wrapped in ``DistributedDataParallel``, buffers (BN statistics)
    are broadcast from rank 0 at each epoch end (so all ranks hold identical models), epoch metrics are
    all-reduced, each rank's RNG state is checkpointed, and only rank 0 writes checkpoints, logs and progress.
    """
    t_call = time.perf_counter()
    cfg, spe, dev, callbacks = _check_fit_args(
        cfg, train_loader, val_loader, device, callbacks, select=select, resume=resume, ckpt_path=ckpt_path
    )
    distributed = is_distributed()
    state = _new_state(model, cfg, spe, dev, optimizer, scheduler, desc)  # seeds RNGs: cfg.seed + rank
    criterion = loss_fn if loss_fn is not None else build_criterion(cfg)
    ckpt_file = Path(ckpt_path) if ckpt_path is not None else None
    best_state, rng = _resume(state, callbacks, ckpt_file, select == "best") if resume else (None, None)
    start_epoch = state.epoch  # 0, or the checkpoint's epoch after a resume
    _begin_training(state, callbacks, rng, distributed, find_unused_parameters)

    main = state.rank == 0
    jlog = _JsonlLog(log_path if main else None)
    show = main and progress_enabled()
    try:
        while state.epoch < state.num_epochs and not state.stop_training:
            metrics = _run_epoch(
                state, train_loader, criterion, callbacks, jlog, show, distributed, batch_loss
            )
            _validate_epoch(state, val_loader, metrics, distributed, eval_fn)
            metrics = _end_epoch(state, callbacks, metrics, distributed)
            state.history.append(metrics)
            best_state = _track_best(state, metrics, best_state, keep=select == "best")
            state.epoch += 1
            _log_epoch(state, jlog, metrics)
            if ckpt_file is not None:
                _save_checkpoint(ckpt_file, state, callbacks, best_state)
    finally:
        jlog.close()
    for cb in callbacks:
        cb.on_train_end(state)
    if batch_loss is None:
        _charge_compute(state, train_loader, ckpt_file)
    if select == "best" and best_state is not None:
        model.load_state_dict(best_state)
    return FitResult(
        history=list(state.history),
        best_top1=state.best_top1,
        best_epoch=state.best_epoch,
        best_state=best_state,
        epochs_run=state.epoch - start_epoch,
        steps=state.step,
        wall_s=time.perf_counter() - t_call,
        stopped_early=state.stop_training,
    )


# ----------------------------------------------------------------------------------------------- fit: its parts


def _charge_compute(state: TrainState, loader: Iterable[Any], ckpt: Path | None) -> None:
    """Charge the active compute ledger (:mod:`prunekit.train.compute`) with this run's trained images (every
    epoch of its history, resumed ones included), keyed by its checkpoint file."""
    ledger = compute_active()
    if ledger is None:
        return
    images = sum(int(h.get("train_n") or 0) for h in state.history)
    if images == 0:
        return
    sample = state.sample
    if sample is None:  # returned at once from a complete checkpoint: one batch for the MACs (RNG restored)
        with torch.random.fork_rng(devices=[]):
            sample = _to_device(_split_batch(next(iter(loader))), state.device)[0]
    macs = forward_macs(state.model, sample)
    ledger.charge_fit(str(ckpt.resolve()) if ckpt is not None else None, state.desc, images, macs)


def _check_fit_args(
    cfg: TrainConfig | Mapping[str, Any],
    train_loader: Iterable[Any],
    val_loader: Iterable[Any] | None,
    device: str | torch.device,
    callbacks: Sequence[Callback],
    *,
    select: str,
    resume: bool,
    ckpt_path: str | os.PathLike | None,
) -> tuple[TrainConfig, int, torch.device, list[Callback]]:
    """Validate :func:`fit`'s arguments; returns ``(recipe, steps per epoch, device, callbacks as a list)``.

    Under ``torch.distributed`` also checks that every rank's loader has the same length (a collective call).

    Raises:
        PrunekitError: an invalid recipe / ``select`` / device, ``select='best'`` without ``val_loader``,
            ``resume`` without ``ckpt_path``, an unsized or empty train loader, a callback that is not a
            :class:`Callback`, or loaders of different lengths across ranks.
    """
    cfg = parse_train_config(cfg)
    if select not in ("last", "best"):
        raise PrunekitError(f"select must be 'last' or 'best', got {select!r}")
    if select == "best" and val_loader is None:
        raise PrunekitError("select='best' needs a val_loader to pick the best epoch; pass one or use 'last'")
    if resume and ckpt_path is None:
        raise PrunekitError("resume needs a checkpoint path (ckpt_path / --ckpt)")
    try:
        spe = len(train_loader)  # type: ignore[arg-type]
    except TypeError:
        raise PrunekitError(
            f"train loader {type(train_loader).__name__} has no len(); fit needs the batches per epoch"
        ) from None
    if spe == 0:
        raise PrunekitError("train loader is empty (0 batches); check the dataset and batch size")
    dev = _resolve_device(device)
    if cfg.amp == "fp16" and dev.type != "cuda":
        raise PrunekitError(
            f"amp: fp16 needs a CUDA device (it is {dev}); use amp: bf16 on the CPU, or amp: none"
        )
    callbacks = list(callbacks)
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise PrunekitError(f"callbacks must subclass prunekit.train.Callback, got {type(cb).__name__}")
    if is_distributed():
        lens = all_gather_objects(spe)
        if len(set(lens)) > 1:
            raise PrunekitError(
                f"train loaders have different lengths per rank {lens}; shard the data evenly (drop_last)"
            )
    return cfg, spe, dev, callbacks


def _new_state(
    model: nn.Module,
    cfg: TrainConfig,
    spe: int,
    dev: torch.device,
    optimizer: Optimizer | None,
    scheduler: LRScheduler | None,
    desc: str,
) -> TrainState:
    """Seed python ``random``, numpy and torch with ``cfg.seed + rank``, move ``model`` to ``dev``, build the
    optimizer and per-iteration scheduler (unless given) and return the fresh :class:`TrainState` at epoch 0
    (``total_steps = round(cfg.epochs * spe)``, ``num_epochs = ceil(total_steps / spe)``)."""
    rank, world = get_rank(), get_world_size()
    _seed_everything(cfg.seed + rank)
    model.to(dev)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if optimizer is None:
        optimizer = build_optimizer(model, cfg)
    if scheduler is None:
        scheduler = build_scheduler(optimizer, cfg, spe)
    n_total = total_steps(cfg, spe)
    return TrainState(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        cfg=cfg,
        device=dev,
        steps_per_epoch=spe,
        total_steps=n_total,
        num_epochs=math.ceil(n_total / spe),
        rank=rank,
        world_size=world,
        desc=desc,
        scaler=torch.amp.GradScaler(dev.type) if cfg.amp == "fp16" else None,
    )


def _resume(
    state: TrainState, callbacks: Sequence[Callback], ckpt_file: Path | None, keep_best: bool
) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any] | None]:
    """Load the checkpoint ``ckpt_file`` into ``state`` and ``callbacks`` (see :func:`_restore`); returns
    ``(best weights or None, this rank's RNG state or None)``. The RNG state is applied later, after
    ``on_train_begin`` (:func:`_begin_training`).

    Raises:
        PrunekitError: a missing or corrupt checkpoint, or one of another model / optimizer / callbacks.
    """
    assert ckpt_file is not None  # checked by _check_fit_args
    best_state, rng = _restore(load_checkpoint(ckpt_file), state, callbacks, ckpt_file, keep_best)
    if state.rank == 0:
        _log.info("%s: resumed from %s at epoch %d (step %d)", state.desc, ckpt_file, state.epoch, state.step)
    return best_state, rng


def _begin_training(
    state: TrainState,
    callbacks: Sequence[Callback],
    rng: Mapping[str, Any] | None,
    distributed: bool,
    find_unused_parameters: bool,
) -> None:
    """Run every ``on_train_begin``, set ``state.train_model`` (the DDP wrapper when distributed, else the model)
    and, after a resume, restore the checkpoint's RNG state (or, without one, reseed with
    ``cfg.seed + rank + 1_000_003 * epoch``)."""
    for cb in callbacks:
        cb.on_train_begin(state)
    train_model: nn.Module = state.model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [state.device.index] if state.device.type == "cuda" else None
        train_model = DDP(state.model, device_ids=ids, find_unused_parameters=find_unused_parameters)
    state.train_model = train_model
    if state.resumed:
        if rng is not None:
            _set_rng_state(rng)
        else:
            _seed_everything(state.cfg.seed + state.rank + 1_000_003 * state.epoch)


def _validate_epoch(
    state: TrainState,
    val_loader: Iterable[Any] | None,
    metrics: dict[str, Any],
    distributed: bool,
    eval_fn: Callable[[nn.Module, Iterable[Any]], float] | None = None,
) -> None:
    """Evaluate on ``val_loader`` every ``cfg.eval_every`` epochs and after the last one, filling ``metrics``'
    ``val_top1``, ``val_top5`` (fractions), ``val_loss`` (nats) and ``val_n`` (samples, all ranks) in place; with
    ``eval_fn`` its score (``val_score``) instead, the model in eval mode (restored after)."""
    if val_loader is None:
        return
    done = state.epoch + 1
    if (done % state.cfg.eval_every == 0 or done == state.num_epochs) and eval_fn is not None:
        metrics["val_score"] = user_score(state.model, val_loader, eval_fn, when=f"after epoch {done}")
        return
    if done % state.cfg.eval_every == 0 or done == state.num_epochs:
        # distributed: evaluate's own rule (all-reduce a sharded loader; an unsharded one is whole on every rank)
        ev = evaluate(state.model, val_loader, state.device, distributed=None if distributed else False)
        metrics.update(val_top1=ev["top1"], val_top5=ev["top5"], val_loss=ev["loss"], val_n=ev["n"])


def _end_epoch(
    state: TrainState, callbacks: Sequence[Callback], metrics: dict[str, Any], distributed: bool
) -> dict[str, Any]:
    """Close the epoch's metrics: ``wall_s`` (seconds since the epoch started), every ``on_epoch_end`` (which
    may add keys and set ``state.stop_training``), plain Python values; under ``torch.distributed`` one rank
    asking to stop stops all. Returns the epoch's history entry."""
    metrics["wall_s"] = time.perf_counter() - metrics.pop("_t0")
    for cb in callbacks:
        cb.on_epoch_end(state, metrics)
    metrics = _plain(metrics)
    if distributed:
        stop = all_reduce_sum(torch.tensor([float(state.stop_training)], device=state.device))
        state.stop_training = bool(stop.item() > 0)
    return metrics


def _track_best(
    state: TrainState, metrics: Mapping[str, Any], best_state: dict[str, torch.Tensor] | None, *, keep: bool
) -> dict[str, torch.Tensor] | None:
    """Update ``state.best_top1`` / ``best_epoch`` when this epoch's ``val_top1`` (or ``val_score``, the user's
    ``eval_fn``) beats the best so far (strictly: the earliest of equal epochs wins; epochs without either never do).
    Returns the best weights: a CPU copy of the model's when this epoch is the new best and ``keep``
    (``select='best'``), else ``best_state``."""
    val = metrics.get("val_score", metrics.get("val_top1"))
    if val is not None and (state.best_top1 is None or val > state.best_top1):
        state.best_top1, state.best_epoch = float(val), int(metrics["epoch"])
        if keep:
            return _cpu_copy(state.model.state_dict())
    return best_state


def _log_epoch(state: TrainState, jlog: _JsonlLog, metrics: Mapping[str, Any]) -> None:
    """On rank 0: the epoch's ``{"type": "epoch", "desc", "time", **metrics}`` JSONL record and its one-line
    summary on the ``prunekit.train`` logger."""
    if state.rank == 0:
        jlog.write({"type": "epoch", "desc": state.desc, "time": time.time(), **metrics})
        _log.info("%s %s", state.desc, _summary(metrics, state.num_epochs))


def _save_checkpoint(
    path: Path, state: TrainState, callbacks: Sequence[Callback], best_state: dict[str, torch.Tensor] | None
) -> None:
    """Write the :data:`CKPT_FORMAT` checkpoint (:func:`_checkpoint_dict`, every rank's RNG state gathered) to
    ``path`` atomically on rank 0; all ranks wait for it (barrier)."""
    rngs = all_gather_objects(_rng_state())
    if state.rank == 0:
        save_checkpoint(path, _checkpoint_dict(state, callbacks, best_state, rngs))
    barrier()


def _summary(m: Mapping[str, Any], num_epochs: int) -> str:
    s = f"epoch {m['epoch']}/{num_epochs}: loss {m['train_loss']:.4f}"
    if m.get("train_top1") is not None:
        s += f" top1 {100 * m['train_top1']:.2f}%"
    if m.get("val_score") is not None:
        s += f" | val score {m['val_score']:.4g}"
    if m.get("val_top1") is not None:
        s += f" | val top1 {100 * m['val_top1']:.2f}% top5 {100 * m['val_top5']:.2f}%"
    return s + f" | lr {m['lr']:.4g} | {m['img_s']:.0f} img/s | {m['wall_s']:.1f}s"


def _run_epoch(
    state: TrainState,
    loader: Iterable[Any],
    criterion: Callable[[Any, Any], torch.Tensor],
    callbacks: Sequence[Callback],
    jlog: _JsonlLog,
    show: bool,
    distributed: bool,
    batch_loss: Callable[[nn.Module, Any], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Train one (possibly partial) epoch; returns the train part of the epoch's metrics."""
    t0 = time.perf_counter()
    cfg, dev, model, opt, sched = state.cfg, state.device, state.model, state.optimizer, state.scheduler
    assert state.train_model is not None
    e, spe = state.epoch, state.steps_per_epoch
    n_batches = min(spe, state.total_steps - e * spe)
    set_epoch = getattr(loader, "set_epoch", None)
    if callable(set_epoch):
        set_epoch(e)
    state.train_model.train()
    for cb in callbacks:
        cb.on_epoch_begin(state)

    acc = torch.zeros(4, dtype=torch.float64, device=dev)  # task-loss sum, correct, samples, extra-loss sum
    win_loss, win_n, t_win = acc.new_zeros(()), 0, time.perf_counter()
    lr_used = opt.param_groups[0]["lr"]
    bar = tqdm(
        total=n_batches,
        desc=f"{state.desc} {e + 1}/{state.num_epochs}",
        disable=not show,
        leave=False,
        dynamic_ncols=True,
        unit="batch",
        file=sys.stderr,
    )
    try:
        for i, batch in enumerate(loader):
            if i >= n_batches:
                break
            state.batch_idx = i
            if batch_loss is None:
                x, y = _to_device(_split_batch(batch), dev)
            else:
                x, y = _to_device(batch, dev), None
            for cb in callbacks:
                new = cb.on_batch_begin(state, (x, y))
                if new is not None:
                    x, y = _split_batch(new)
            if cfg.channels_last and torch.is_tensor(x) and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            state.inputs, state.targets = x, y
            if state.sample is None and batch_loss is None:
                state.sample = x[:1].detach() if torch.is_tensor(x) else x
            with _autocast(cfg.amp, dev):
                if batch_loss is None:
                    out = state.train_model(x)
                    loss = criterion(out, y)
                else:
                    out, loss = None, _user_loss(batch_loss(state.train_model, x))
                state.outputs, state.loss = out, loss
                extra: torch.Tensor | None = None
                for cb in callbacks:
                    term = cb.extra_loss(state, model)
                    if term is not None:
                        extra = term if extra is None else extra + term
                objective = loss if extra is None else loss + extra
            opt.zero_grad(set_to_none=True)
            scaler = state.scaler
            (objective if scaler is None else scaler.scale(objective)).backward()
            if scaler is not None:
                scaler.unscale_(opt)  # callbacks and clipping see the true gradients
            for cb in callbacks:
                cb.on_after_backward(state)
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            lr_used = opt.param_groups[0]["lr"]
            if scaler is None:
                opt.step()
            else:  # skips the step when the float16 gradients overflowed, then adapts the scale
                scaler.step(opt)
                scaler.update()
            sched.step()
            state.step += 1
            for cb in callbacks:
                cb.on_step_end(state)

            bs = _batch_size(x)
            with torch.no_grad():
                c1 = (
                    _topk_correct(_logits(out).detach(), y)[0]
                    if out is not None
                    else torch.zeros((), device=dev)
                )
                ld = loss.detach().double()
                ed = extra.detach().double() if extra is not None else ld.new_zeros(())
                acc += torch.stack([ld * bs, c1.double(), ld.new_tensor(float(bs)), ed * bs])
                win_loss += ld * bs
            win_n += bs
            bar.update(1)
            if state.step % cfg.log_every == 0 or (show and i % 10 == 9):
                now = time.perf_counter()
                wl = win_loss.item() / max(win_n, 1)
                if not distributed and not math.isfinite(wl):
                    raise PrunekitError(_diverged_msg(state, wl))
                if state.step % cfg.log_every == 0:
                    jlog.write(
                        {
                            "type": "step",
                            "desc": state.desc,
                            "time": time.time(),
                            "epoch": e + 1,
                            "step": state.step,
                            "loss": wl,
                            "lr": lr_used,
                            "img_s": win_n / max(now - t_win, 1e-9),
                        }
                    )
                    win_loss.zero_()
                    win_n, t_win = 0, now
                if show:
                    a = acc.tolist()
                    bar.set_postfix(
                        loss=f"{a[0] / a[2]:.4f}",
                        top1=f"{a[1] / a[2]:.3f}",
                        img_s=f"{a[2] / max(now - t0, 1e-9):.0f}",
                        refresh=False,
                    )
    finally:
        bar.close()
        state.inputs = state.targets = state.outputs = state.loss = None
    train_s = time.perf_counter() - t0
    if distributed:
        acc = all_reduce_sum(acc)
        _sync_buffers(model)
    loss_sum, correct, n, extra_sum = acc.tolist()
    if n == 0:
        raise PrunekitError(f"train loader yielded no batches in epoch {e + 1} although len() is {spe}")
    train_loss = loss_sum / n
    if not math.isfinite(train_loss) or not math.isfinite(extra_sum):
        raise PrunekitError(_diverged_msg(state, train_loss))
    return {
        "epoch": e + 1,
        "epochs_done": state.step / spe,
        "step": state.step,
        "lr": lr_used,
        "train_loss": train_loss,
        "train_top1": correct / n if batch_loss is None else None,
        "train_extra": extra_sum / n,
        "val_top1": None,
        "val_top5": None,
        "val_loss": None,
        "val_n": None,
        "img_s": n / max(train_s, 1e-9),
        "train_s": train_s,
        "train_n": int(n),
        "_t0": t0,
    }


def user_score(
    model: nn.Module,
    loader: Iterable[Any],
    eval_fn: Callable[[nn.Module, Iterable[Any]], float],
    when: str = "",
) -> float:
    """``eval_fn(model, loader)`` (the user's score, higher is better) with ``model`` in eval mode and no grad (its
    mode restored after).

    Raises:
        PrunekitError: the score is not finite.
    """
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            score = float(eval_fn(model, loader))
    finally:
        model.train(was)
    if not math.isfinite(score):
        raise PrunekitError(
            f"eval_fn returned {score}{' ' + when if when else ''}: it must return a finite score"
        )
    return score


def score_metrics(
    model: nn.Module,
    loader: Iterable[Any],
    device: str | torch.device = "cpu",
    eval_fn: Callable[[nn.Module, Iterable[Any]], float] | None = None,
) -> dict[str, Any]:
    """:func:`evaluate`'s metrics, or with ``eval_fn`` the user's score in their place.

    With ``eval_fn`` (higher is better; :func:`user_score`) the result is ``{"top1": score, "score": score,
    "top5": None, "loss": None, "n": None}``: ``top1`` is what the methods and the pipeline compare, so it carries
    the score (``model`` is moved to ``device`` first).

    Raises:
        PrunekitError: as :func:`evaluate`, or a non-finite score.
    """
    if eval_fn is None:
        return evaluate(model, loader, device)
    model.to(_resolve_device(device))
    score = user_score(model, loader, eval_fn)
    return {"top1": score, "score": score, "top5": None, "loss": None, "n": None}


def _user_loss(loss: Any) -> torch.Tensor:
    """A ``batch_loss`` result checked: a scalar tensor that carries gradients."""
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise PrunekitError(f"batch_loss must return a scalar tensor, got {shape}")
    return loss.reshape(())


def _autocast(amp: str, dev: torch.device):
    """``torch.autocast`` for the recipe's ``amp`` (bfloat16 / float16), a no-op context for ``none``."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(dev.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _sync_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BN running stats) to all ranks, so every rank ends the epoch identical."""
    import torch.distributed as dist

    for buf in model.buffers():
        dist.broadcast(buf, src=0)


def _diverged_msg(state: TrainState, loss: float) -> str:
    return (
        f"training diverged: loss is {loss} in epoch {state.epoch + 1} (step {state.step}); "
        "lower lr, add warmup_epochs or set grad_clip"
    )
