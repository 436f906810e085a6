"""The training compute a run spends, in MACs and reference-epoch equivalents.

Methods spend their compute in very different places -- pretraining, supernet / PruningNet / gate training, the
forward passes of a search's candidate evaluations and BN recalibrations, finetuning -- and a fair comparison of
methods (issue #14's arena) gives them the same total. Every one of those passes goes through three functions of
:mod:`prunekit.train` (:func:`~prunekit.train.fit`, :func:`~prunekit.train.evaluate`,
:func:`~prunekit.train.bn.recalibrate_bn`); while a :class:`Ledger` is active (:func:`use_ledger`; ``prunekit run``
keeps one in ``RUN/compute.json``) each of them charges it:

* a training run: ``steps x batch size x world size`` images at ``3 x`` the model's forward MACs per image (a
  backward pass costs about two forward passes: the gradients of the activations and of the weights; the usual
  ``6N`` FLOPs-per-token rule of Kaplan et al., 2020, "Scaling Laws for Neural Language Models", §2.1);
* a forward-only pass (evaluation, BN recalibration): images x forward MACs.

The forward MACs are those of the module as it runs, measured once per call with
:class:`torch.utils.flop_counter.FlopCounterMode` on one sample (:func:`prunekit.cost.macs.measure_macs`; RNG
state and train/eval mode restored): a masked model (gates, masks, a weight-sharing supernet masked in place)
costs its dense size, because dense hardware does not skip the zeros; a physically pruned net costs its own MACs,
so "an epoch of a net with half the MACs counts half". A generator network (MetaPruning's PruningNet) is counted
at the encoding set when the call starts.

A **reference epoch** is one training epoch of the reference (unpruned) model: ``train images x 3 x its MACs``.

Resume: a training run with a checkpoint file is keyed by that file and charged its *total* steps when it returns
(also when it resumed, or returned at once from a complete checkpoint), so a killed and resumed phase is charged
once; training runs without a checkpoint and forward passes are added up as they happen. The ledger is written
atomically after every training run and every 10 s of forward passes, so what a kill loses is at most those 10 s
(the resumed search re-runs them, so the total stays close).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from prunekit.errors import PrunekitError

TRAIN_FACTOR = 3.0
"""MACs of one training image over its forward MACs (forward + backward)."""

MEASUREMENT_PHASES = ("evaluate",)
"""Phases that measure a result rather than produce it (the run's test / val evaluations): listed in the summary,
left out of its total."""

_ACTIVE: contextvars.ContextVar[Ledger | None] = contextvars.ContextVar("prunekit_compute", default=None)


class Ledger:
    """The compute of one run, per phase; persisted to ``path`` (JSON) when given.

    ``fits[key] = {"phase", "desc", "images", "macs_per_image"}`` (training runs, forward MACs per image),
    ``forward[phase] = {"images", "macs"}`` (forward-only passes: total images and total MACs).
    """

    FORMAT = "prunekit-compute-1"

    def __init__(self, path: str | Path | None = None, *, flush_s: float = 10.0) -> None:
        self.path = Path(path) if path is not None else None
        self.phase = "run"
        self.fits: dict[str, dict[str, Any]] = {}
        self.forward: dict[str, dict[str, float]] = {}
        self._anon = 0
        self._flush_s = flush_s
        self._last_save = time.monotonic()
        if self.path is not None and self.path.is_file():
            self._load()

    def _load(self) -> None:
        assert self.path is not None
        try:
            data = json.loads(self.path.read_text())
            if data.get("format") != self.FORMAT:
                raise ValueError(f"format {data.get('format')!r}")
            self.fits = {str(k): dict(v) for k, v in data["fits"].items()}
            self.forward = {str(k): dict(v) for k, v in data["forward"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise PrunekitError(
                f"{self.path} is not a prunekit compute ledger ({e}); delete it, or rerun with --overwrite"
            ) from None
        self._anon = sum(1 for k in self.fits if k.startswith("#"))

    # ------------------------------------------------------------------ charging
    def charge_fit(self, key: str | None, desc: str, images: int, macs_per_image: float) -> None:
        """One training run: ``images`` trained at ``macs_per_image`` forward MACs (replaces an earlier charge of
        the same ``key``; ``None``: a new entry)."""
        if key is None:
            self._anon += 1
            key = f"#{self._anon}"
        self.fits[key] = {
            "phase": self.phase,
            "desc": desc,
            "images": int(images),
            "macs_per_image": float(macs_per_image),
        }
        self.save()

    def charge_forward(self, images: int, macs_per_image: float) -> None:
        """Forward-only passes (evaluation, BN recalibration) of ``images`` images."""
        row = self.forward.setdefault(self.phase, {"images": 0, "macs": 0.0})
        row["images"] += int(images)
        row["macs"] += float(images) * float(macs_per_image)
        if time.monotonic() - self._last_save >= self._flush_s:
            self.save()

    @contextlib.contextmanager
    def in_phase(self, name: str) -> Iterator[Ledger]:
        """Charges inside the block go to phase ``name``; the ledger is saved when it ends."""
        old, self.phase = self.phase, name
        try:
            yield self
        finally:
            self.phase = old
            self.save()

    def save(self) -> None:
        self._last_save = time.monotonic()
        if self.path is None:
            return
        from prunekit.io import write_json

        write_json(self.path, {"format": self.FORMAT, "fits": self.fits, "forward": self.forward})

    # ------------------------------------------------------------------ totals
    def phase_macs(self) -> dict[str, dict[str, float]]:
        """Per phase: ``train_macs`` (images x 3 x forward MACs), ``forward_macs`` and ``train_images``."""
        out: dict[str, dict[str, float]] = {}
        for row in self.fits.values():
            p = out.setdefault(row["phase"], {"train_macs": 0.0, "forward_macs": 0.0, "train_images": 0})
            p["train_macs"] += TRAIN_FACTOR * row["images"] * row["macs_per_image"]
            p["train_images"] += row["images"]
        for phase, row in self.forward.items():
            p = out.setdefault(phase, {"train_macs": 0.0, "forward_macs": 0.0, "train_images": 0})
            p["forward_macs"] += row["macs"]
        return out

    def summary(self, reference_macs: float, train_images: int) -> dict[str, Any]:
        """The report's ``compute`` section: per phase and in total, MACs and reference epochs (one training epoch
        of a model of ``reference_macs`` forward MACs over ``train_images`` images); ``forward_reference_epochs``:
        the part of the total spent in forward-only passes (validation, search evaluations, BN recalibration; a
        forward pass costs ``1 / TRAIN_FACTOR`` of a training pass, so validating 6,000 images after each of 16
        epochs on 10,000 training images is 16 x 6,000 / (3 x 10,000) = 3.2 reference epochs)."""
        epoch = TRAIN_FACTOR * float(reference_macs) * max(1, int(train_images))
        phases = {}
        for name, p in self.phase_macs().items():
            total = p["train_macs"] + p["forward_macs"]
            phases[name] = {**p, "total_macs": total, "reference_epochs": total / epoch}
        counted = {k: p for k, p in phases.items() if k not in MEASUREMENT_PHASES}
        total = sum(p["total_macs"] for p in counted.values())
        return {
            "reference_macs": float(reference_macs),
            "train_images": int(train_images),
            "train_factor": TRAIN_FACTOR,
            "phases": phases,
            "excluded": [k for k in phases if k in MEASUREMENT_PHASES],
            "total_macs": total,
            "reference_epochs": total / epoch,
            "forward_reference_epochs": sum(p["forward_macs"] for p in counted.values()) / epoch,
        }


@contextlib.contextmanager
def use_ledger(ledger: Ledger | None) -> Iterator[Ledger | None]:
    """Make ``ledger`` the one :func:`fit`, :func:`evaluate` and :func:`recalibrate_bn` charge inside the block."""
    token = _ACTIVE.set(ledger)
    try:
        yield ledger
    finally:
        _ACTIVE.reset(token)


def active() -> Ledger | None:
    """The ledger charged now, or None (then nothing is counted and nothing costs extra)."""
    return _ACTIVE.get()


def forward_macs(model: nn.Module, sample: Any) -> float:
    """Forward MACs per image of ``model`` (``sample``: a batch, or a tensor ``(N, ...)``; one image of it is run
    under :class:`~torch.utils.flop_counter.FlopCounterMode`, on the model's device, in eval mode, without
    gradients and with the RNG state restored, so training is not perturbed). 0 for inputs it cannot slice."""
    from torch.utils.flop_counter import FlopCounterMode

    x = sample[0] if isinstance(sample, list | tuple) else sample
    if not torch.is_tensor(x) or x.dim() == 0:
        return 0.0
    one = x[:1]
    modes = {m: m.training for m in model.modules()}  # BN recalibration runs with only its BNs training
    devices: Sequence[int] = [x.device.index or 0] if x.is_cuda else []
    with torch.random.fork_rng(devices=devices):
        model.eval()
        try:
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                model(one)
        finally:
            for m, mode in modes.items():
                m.training = mode
    return float(counter.get_total_flops()) / 2.0


def charge_forward(model: nn.Module, batch: Any, images: int) -> None:
    """Charge the active ledger (if any) ``images`` forward passes of ``model`` (measured on ``batch``)."""
    ledger = _ACTIVE.get()
    if ledger is not None and images > 0:
        ledger.charge_forward(images, forward_macs(model, batch))
