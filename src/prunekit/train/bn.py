"""BatchNorm recalibration: recompute running statistics of a (sub-)network on a few training batches.

Weight-sharing evaluators (MetaPruning's PruningNet, slimmable / one-shot supernets, JCW's proxy supernet) share BN
layers between sub-networks of different widths. The running statistics accumulated during training are a mixture
over all sampled sub-networks and do not match the statistics of any one of them: evaluating a candidate with them
gives near-chance accuracy (MetaPruning issues #4/#5/#14). The fix used by those papers is to *recalibrate*: reset
the running statistics, run ``N`` training batches through the candidate in train mode without gradients, then
evaluate in eval mode (Liu et al., "MetaPruning", ICCV 2019, §3.3 / ``searching/search.py``: 100 batches of 1000
images, momentum 0.1; Yu & Huang, "Universally Slimmable Networks", ICCV 2019, §3.3: post-statistics with a
cumulative moving average).

:func:`recalibrate_bn` implements that once for everyone. By default the momentum is ``None`` (PyTorch's cumulative
moving average), so after ``N`` batches the running mean is exactly the mean of the ``N`` per-batch means and the
result does not depend on the order of the batches. Only the BN layers run in train mode; every other module
(dropout, ...) stays in eval mode, so recalibration sees the activations evaluation will see.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn

from prunekit.distributed import get_world_size
from prunekit.errors import PrunekitError
from prunekit.train.compute import charge_forward

__all__ = ["bn_layers", "recalibrate_bn", "reset_bn_stats"]


def bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer (``BatchNorm1d/2d/3d``, ``SyncBatchNorm`` and subclasses) of ``model`` that tracks
    running statistics, in module order."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and m.track_running_stats
        and m.running_mean is not None
    ]


@torch.no_grad()
def reset_bn_stats(model: nn.Module) -> int:
    """Reset every BN layer's running statistics (mean 0, variance 1, ``num_batches_tracked`` 0) in place.

    Returns:
        the number of BN layers reset.
    """
    layers = bn_layers(model)
    for bn in layers:
        bn.reset_running_stats()
    return len(layers)


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    batches: int,
    device: str | torch.device = "cpu",
    momentum: float | None = None,
) -> int:
    """Recompute the running statistics of every BN layer of ``model`` from the first ``batches`` batches of
    ``loader`` (in place; the model's train/eval modes and BN momenta are restored afterwards).

    Args:
        model: the network (moved to ``device`` in place). Its BN layers must accept the batches' activations.
        loader: iterable of ``(x, y)`` (only ``x``, shape ``(N, C, H, W)``, is used); a deterministic loader
            (fixed order and augmentation) makes the result deterministic.
        batches: number of batches to run (>= 1); fewer are used when the loader is shorter.
        device: where to run.
        momentum: BN momentum during recalibration: ``None`` (default) = cumulative moving average (exact mean
            of the per-batch statistics); a float (e.g. ``0.1``, the MetaPruning seed) = exponential average
            starting from the reset statistics (mean 0, var 1).

    Returns:
        the number of batches actually run (0 when the model has no BN layer: nothing to do).

    Raises:
        PrunekitError: ``batches < 1``, or the loader yields no batch.
    """
    if batches < 1:
        raise PrunekitError(f"BN recalibration needs at least one batch, got batches={batches}")
    layers = bn_layers(model)
    if not layers:
        return 0
    dev = torch.device(device)
    model.to(dev)
    modes = {m: m.training for m in model.modules()}
    momenta = [bn.momentum for bn in layers]
    n = 0
    try:
        model.eval()
        for bn in layers:
            bn.reset_running_stats()
            bn.momentum = momentum
            bn.train()
        images, sample = 0, None
        for batch in loader:
            if n >= batches:
                break
            x = batch[0] if isinstance(batch, list | tuple) else batch
            x = x.to(dev, non_blocking=True)
            if sample is None:
                sample = x[:1]
            model(x)
            n += 1
            images += int(x.shape[0]) if x.dim() else 1
        if sample is not None:  # every rank recalibrates on its own batches
            charge_forward(model, sample, images * get_world_size())
    finally:
        for bn, mom in zip(layers, momenta, strict=True):
            bn.momentum = mom
        for m, mode in modes.items():
            m.training = mode
    if n == 0:
        raise PrunekitError("BN recalibration loader yielded no batches; check the training split")
    return n
