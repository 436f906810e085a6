"""The GConv criterion matrix ``S [F, C]``: how much each ``k x k`` kernel of a conv matters.

Zhao & Luk (arXiv 1811.09341, §3, the per-layer pruning problem; seed ``gumi/pruning/mask_utils.py``: ``get_criterion``,
``get_taylor_criterion`` and the normalisation in ``run_mbm_core``). Entry ``S[f, c]`` scores the kernel connecting
input channel ``c`` to filter ``f``; a group conv keeps the kernels of ``G`` diagonal blocks under channel
permutations (:mod:`prunekit.methods.gconv.permutation`), and the criterion mass it keeps is what those permutations
maximise. Normalising by the Frobenius norm makes masses comparable across layers (the group-count search sums
them).

Deviations from the seed: the seed divides the criterion in place (a 2-D input tensor given to ``run_mbm_core`` is
overwritten) and turns an all-zero criterion into NaNs (``0 / 0``); here the input is never modified and an all-zero
criterion stays zero.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from prunekit.errors import PrunekitError

Criterion = Literal["l2", "taylor"]
CRITERIA: tuple[str, ...] = ("l2", "taylor")


def _check_weight(weight: torch.Tensor) -> None:
    if weight.dim() < 3:
        raise PrunekitError(
            f"GConv criterion needs a conv weight [F, C, k...], got shape {tuple(weight.shape)}"
        )


def kernel_l2(weight: torch.Tensor) -> torch.Tensor:
    """L2 norm of every kernel: ``S[f, c] = ||W[f, c]||_2`` (the seed's default ``get_criterion``).

    Args:
        weight: conv weight ``[F, C, kh, kw]`` (any number of kernel dims, ``[F, C, k...]``).

    Returns:
        float tensor ``[F, C]`` (detached, on ``weight``'s device).

    Raises:
        PrunekitError: ``weight`` has fewer than 3 dims (not a conv weight).
    """
    _check_weight(weight)
    return torch.linalg.vector_norm(weight.detach(), dim=tuple(range(2, weight.dim())))


def kernel_taylor(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """First-order Taylor criterion of every kernel: ``S[f, c] = sum_k |W[f, c, k] * dL/dW[f, c, k]|``
    (the seed's ``crit_type='taylor'``, ``get_taylor_criterion``: an L1 norm over the kernel of ``W * grad``).

    Args:
        weight: conv weight ``[F, C, kh, kw]`` (or ``[F, C, k...]``).
        grad: the loss gradient with respect to ``weight``, same shape (usually accumulated over some batches).

    Returns:
        float tensor ``[F, C]`` (detached).

    Raises:
        PrunekitError: not a conv weight, or ``grad``'s shape differs from ``weight``'s.
    """
    _check_weight(weight)
    if grad.shape != weight.shape:
        raise PrunekitError(
            f"Taylor criterion: gradient shape {tuple(grad.shape)} differs from weight shape {tuple(weight.shape)}"
        )
    return (weight.detach() * grad.detach()).abs().sum(dim=tuple(range(2, weight.dim())))


def normalise(s: np.ndarray) -> np.ndarray:
    """``s / ||s||_F`` as a new array; an all-zero ``s`` is returned as zeros (the seed would give NaNs)."""
    norm = float(np.linalg.norm(s))
    return s / norm if norm > 0.0 else np.zeros_like(s)


def criterion_matrix(
    weight: torch.Tensor,
    kind: Criterion = "l2",
    grad: torch.Tensor | None = None,
    *,
    normalised: bool = True,
) -> np.ndarray:
    """The criterion matrix ``S [F, C]`` of a conv weight, as float64 numpy (the input to the permutation heuristics).

    Args:
        weight: conv weight ``[F, C, kh, kw]`` (any kernel dims), not modified.
        kind: ``"l2"`` (kernel L2 norms, :func:`kernel_l2`) or ``"taylor"`` (``|W * dL/dW|`` summed over the kernel,
            :func:`kernel_taylor`).
        grad: the gradient for ``"taylor"``; ``None`` uses ``weight.grad``. Ignored by ``"l2"``.
        normalised: divide by the Frobenius norm (the seed always does; :func:`normalise`).

    Returns:
        ``S``, float64 ``[F, C]``, non-negative; ``||S||_F = 1`` when normalised (unless ``S`` is all zeros).

    Raises:
        PrunekitError: unknown ``kind``, not a conv weight, a Taylor criterion without a gradient, a gradient of
            another shape, or a non-finite criterion (NaN / inf weights or gradients).
    """
    if kind == "l2":
        s = kernel_l2(weight)
    elif kind == "taylor":
        grad = weight.grad if grad is None else grad
        if grad is None:
            raise PrunekitError(
                "Taylor criterion needs the weight's gradient: run backward passes first or pass grad="
            )
        s = kernel_taylor(weight, grad)
    else:
        raise PrunekitError(f"unknown GConv criterion {kind!r}: choose one of {', '.join(CRITERIA)}")
    out = s.to(torch.float64).cpu().numpy()
    if not np.isfinite(out).all():
        raise PrunekitError(f"GConv {kind} criterion is not finite (NaN or inf in the weight or gradient)")
    return normalise(out) if normalised else out
