"""Block-structured weight sparsity: block norms, top-k block masks and the ADMM projection (pure functions).

JCW (Zhao et al., "Joint Channel and Weight Pruning for Model Acceleration on Mobile Devices", 2021, §3, after the
same authors' ALCS, arXiv 2109.00170) prunes weights in *SIMD-structured* blocks: consecutive output channels are
grouped (``group_size`` = 4) and the filters of a group share one sparsity pattern over the (in_channel, kh, kw)
positions. This module implements that structure for any block shape, as pure functions on weight tensors;
:mod:`prunekit.space.realise` applies it to plans (``LayerChoice.density``) and :mod:`prunekit.cost.macs` counts it.

Block layout
    A weight ``[O, I, *kernel]`` (conv1d/2d/3d ``[O, I, k...]`` or linear ``[O, I]``) is viewed as the matrix
    ``[O, F]`` with ``F = I * prod(kernel)`` (the flattened ``(in_channels, kh, kw)`` axis, in PyTorch's memory
    order). ``block=(bo, bi)`` cuts it into blocks of ``bo`` consecutive output channels x ``bi`` consecutive
    positions of the flattened axis, on the grid of *whole* blocks ``[nbo, nbi] = [O // bo, F // bi]``. Blocks are
    numbered row-major on that grid (``index = r * nbi + c``). The default ``(4, 1)`` is JCW's: 4 filters share one
    pattern over ``(in_channel, kh, kw)``.

Edge rule (``O % bo != 0`` or ``F % bi != 0``)
    The last ``O % bo`` rows and ``F % bi`` columns do not fill a block; they form the *edge*, which is always kept
    (dense), like the remainder loop of a SIMD kernel. Density applies to the whole blocks only: ``n_blocks = nbo *
    nbi`` and ``k = n_kept_blocks(n_blocks, density)`` of them are kept. A weight smaller than one block has no whole
    block and stays dense. Because the edge is fixed, the number of kept *elements* depends only on the shape, the
    block and the density (:func:`kept_elements`), never on the weights: the analytic effective cost of a plan is
    exact. It is slightly above ``density * O * F`` when there is an edge (:func:`effective_density` of the mask).
    :func:`project` is the exact Euclidean projection onto this set (zeroing a block costs its squared L2 norm).

Kept count and ties
    ``k = n_kept_blocks(n_blocks, density)``: the nearest integer to ``density * n_blocks`` (halves up, as
    :func:`~prunekit.space.widths.round_width`), at least 1, at most ``n_blocks``. The ``k`` blocks of largest norm
    are kept; equal norms are broken by block index (the lower index is kept), so masks are deterministic.

Norms
    JCW ranks with the L1 norm of a block during search (``PrunableConv.update_importance``) and with the L2 norm
    during ADMM and fine-tuning (``admm_trainer.py``, ``ft_trainer.py``): :func:`block_mask` defaults to ``p=1``,
    :func:`project` always uses ``p=2`` (the Euclidean projection; Zhang et al., "A Systematic DNN Weight Pruning
    Framework using ADMM", ECCV 2018, Z-update). Norms are computed in float32 (float64 for float64 weights).

Errors
    Invalid arguments (density outside ``(0, 1]``, a malformed block, a weight
    that is not a floating-point tensor with 2 to 5 dims, ``p`` not 1 or 2) raise :class:`SparsityError`, a
    :class:`~prunekit.errors.PrunekitError` that is also a ``ValueError``, with a one-line message.

Example::

    mask = block_mask(conv.weight, 0.3)                    # bool, conv.weight's shape, 4x1 blocks, L1 ranking
    z = project(conv.weight + dual, 0.3)                   # ADMM Z-update: keep the 30 % largest-L2 blocks
    effective_density(mask)                                # ~0.3 (fraction of elements kept)
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
import torch

from prunekit.errors import PrunekitError

__all__ = [
    "DEFAULT_BLOCK",
    "SparsityError",
    "block_grid",
    "block_mask",
    "block_norms",
    "effective_density",
    "kept_blocks",
    "kept_elements",
    "n_kept_blocks",
    "project",
    "refresh_mask",
]

DEFAULT_BLOCK: tuple[int, int] = (4, 1)
"""JCW's SIMD block: 4 consecutive output channels x 1 position of the flattened ``(in, kh, kw)`` axis."""

_MIN_DIMS, _MAX_DIMS = 2, 5


class SparsityError(PrunekitError, ValueError):
    """An invalid argument to a sparsity function (one-line message); both a PrunekitError and a ValueError."""


# ---------------------------------------------------------------------------------------------- validation
def _check_weight(weight: object) -> tuple[int, int]:
    """``(O, F)`` of the weight's matrix view; raises :class:`SparsityError` if it is not a valid weight."""
    if not isinstance(weight, torch.Tensor):
        raise SparsityError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if not (_MIN_DIMS <= weight.dim() <= _MAX_DIMS):
        raise SparsityError(
            f"weight must have 2 (linear [O, I]) to 5 (conv [O, I, k...]) dims, got shape {list(weight.shape)}"
        )
    if not weight.is_floating_point():
        raise SparsityError(f"weight must be a floating-point tensor, got dtype {weight.dtype}")
    o = int(weight.shape[0])
    f = int(math.prod(weight.shape[1:]))
    if o == 0 or f == 0:
        raise SparsityError(f"weight must not be empty, got shape {list(weight.shape)}")
    return o, f


def _check_block(block: object) -> tuple[int, int]:
    """``block`` as ``(bo, bi)`` after checking it is two positive ints."""
    try:
        bo, bi = block  # type: ignore[misc]
    except (TypeError, ValueError):
        raise SparsityError(f"block must be a pair (out_channels, in_positions), got {block!r}") from None
    if not all(isinstance(b, Integral) and not isinstance(b, bool) for b in (bo, bi)):
        raise SparsityError(f"block must be a pair of ints, got {block!r}")
    bo, bi = int(bo), int(bi)
    if bo < 1 or bi < 1:
        raise SparsityError(f"block sizes must be >= 1, got {(bo, bi)}")
    return bo, bi


def _check_density(density: object) -> float:
    if isinstance(density, bool) or not isinstance(density, Real) or not math.isfinite(float(density)):
        raise SparsityError(f"density must be a number in (0, 1], got {density!r}")
    d = float(density)
    if not (0.0 < d <= 1.0):
        raise SparsityError(f"density must lie in (0, 1] (the fraction of blocks kept), got {d}")
    return d


def _check_p(p: object) -> int:
    if isinstance(p, bool) or p not in (1, 2):
        raise SparsityError(f"p must be 1 (L1 norm) or 2 (L2 norm), got {p!r}")
    return int(p)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- public API
def block_grid(
    shape: torch.Size | tuple[int, ...], block: tuple[int, int] = DEFAULT_BLOCK
) -> tuple[int, int]:
    """The grid of whole blocks ``(nbo, nbi) = (O // bo, F // bi)`` of a weight shape (``F = I * prod(kernel)``).

    ``nbo * nbi`` is the number of blocks density applies to (0 for a weight smaller than one block); the edge rows
    and columns outside the grid are always kept (see the module's edge rule).

    Raises:
        SparsityError: the shape has not 2 to 5 dims or is empty, or the block is malformed.
    """
    shape = tuple(int(s) for s in shape)
    if not (_MIN_DIMS <= len(shape) <= _MAX_DIMS):
        raise SparsityError(
            f"weight must have 2 (linear [O, I]) to 5 (conv [O, I, k...]) dims, got shape {list(shape)}"
        )
    o, f = shape[0], int(math.prod(shape[1:]))
    if o == 0 or f == 0:
        raise SparsityError(f"weight must not be empty, got shape {list(shape)}")
    bo, bi = _check_block(block)
    return o // bo, f // bi


def kept_elements(
    o: np.ndarray | int, f: np.ndarray | int, density: float, block: tuple[int, int] = DEFAULT_BLOCK
) -> np.ndarray:
    """Elements :func:`block_mask` keeps in an ``[O, F]`` weight matrix, without the weight (vectorised).

    ``k * bo * bi`` (the kept whole blocks, ``k = n_kept_blocks(nbo * nbi, density)``) plus the edge
    ``O * F - nbo * bo * nbi * bi``; ``O * F`` when there is no whole block. ``o`` and ``f`` may be arrays (a
    population of widths); non-integral values are floored (they come from affine width maps).

    Returns:
        float64 array of the broadcast shape of ``o`` and ``f``.

    Raises:
        SparsityError: invalid density or block.
    """
    d = _check_density(density)
    bo, bi = _check_block(block)
    o = np.floor(np.asarray(o, dtype=np.float64) + 1e-9)
    f = np.floor(np.asarray(f, dtype=np.float64) + 1e-9)
    n = np.floor(o / bo) * np.floor(f / bi)
    k = np.clip(np.floor(d * n + 0.5 + 1e-9), np.minimum(n, 1.0), n)
    return k * bo * bi + (o * f - n * bo * bi)


def block_norms(weight: torch.Tensor, block: tuple[int, int] = DEFAULT_BLOCK, p: int = 1) -> torch.Tensor:
    """The L1 (``p=1``) or L2 (``p=2``) norm of every whole block of ``weight``.

    Args:
        weight: conv ``[O, I, k...]`` or linear ``[O, I]`` weight, floating point (any device; not modified).
        block: ``(bo, bi)``: output channels x flattened ``(in, kernel)`` positions per block (default JCW's
            ``(4, 1)``).
        p: 1 (sum of absolute values) or 2 (square root of the sum of squares).

    Returns:
        Norms ``[nbo, nbi]`` (see :func:`block_grid`; a dim is 0 for a weight smaller than one block), in the
        weight's units, on the weight's device, float32 (float64 for a float64 weight), detached.

    Raises:
        SparsityError: invalid weight, block or ``p`` (one line).
    """
    o, f = _check_weight(weight)
    bo, bi = _check_block(block)
    p = _check_p(p)
    nbo, nbi = o // bo, f // bi
    dtype = torch.promote_types(weight.dtype, torch.float32)
    mat = weight.detach().reshape(o, f)[: nbo * bo, : nbi * bi].to(dtype)
    mat = mat.abs() if p == 1 else mat * mat
    norms = mat.reshape(nbo, bo, nbi, bi).sum(dim=(1, 3))
    return norms if p == 1 else norms.sqrt()


def n_kept_blocks(n_blocks: int, density: float) -> int:
    """Blocks kept at ``density``: the nearest integer to ``density * n_blocks`` (halves up), in ``[1, n_blocks]``.

    Matches JCW's ``round(density * n)`` except on exact halves, which go up here (as
    :func:`~prunekit.space.widths.round_width`), and never returns 0 (a layer keeps at least one block).

    Raises:
        SparsityError: ``n_blocks`` not a positive int, or ``density`` outside ``(0, 1]``.
    """
    if isinstance(n_blocks, bool) or not isinstance(n_blocks, Integral) or n_blocks < 1:
        raise SparsityError(f"n_blocks must be a positive int, got {n_blocks!r}")
    d = _check_density(density)
    n = int(n_blocks)
    k = int(math.floor(d * n + 0.5 + 1e-9))  # the 1e-9 keeps decimal halves (0.15 * 10) rounding up
    return min(n, max(1, k))


def kept_blocks(
    weight: torch.Tensor, density: float, block: tuple[int, int] = DEFAULT_BLOCK, p: int = 1
) -> torch.Tensor:
    """Which whole blocks :func:`block_mask` keeps: bool ``[nbo, nbi]`` with exactly
    ``n_kept_blocks(nbo*nbi, density)`` True entries (none when there is no whole block), the blocks of largest
    ``p``-norm (ties: lower row-major block index first).

    Raises:
        SparsityError: invalid weight, density, block or ``p`` (one line).
    """
    norms = block_norms(weight, block, p)
    if norms.numel() == 0:
        _check_density(density)
        return torch.zeros(norms.shape, dtype=torch.bool, device=norms.device)
    k = n_kept_blocks(norms.numel(), density)
    flat = norms.reshape(-1)
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k == flat.numel():
        keep[:] = True
    else:
        # stable descending sort: equal norms keep their index order, so the lower block index wins a tie
        order = torch.argsort(flat, descending=True, stable=True)
        keep[order[:k]] = True
    return keep.reshape(norms.shape)


def block_mask(
    weight: torch.Tensor, density: float, block: tuple[int, int] = DEFAULT_BLOCK, p: int = 1
) -> torch.Tensor:
    """Element mask keeping the ``n_kept_blocks(n_blocks, density)`` whole blocks of largest norm, and the edge.

    Args:
        weight: conv ``[O, I, k...]`` or linear ``[O, I]`` weight, floating point (not modified).
        density: fraction of *blocks* kept, in ``(0, 1]`` (1 keeps everything; a tiny density keeps one block).
        block: ``(bo, bi)`` block shape (default JCW's ``(4, 1)``: 4 filters share one pattern).
        p: norm ranking the blocks: 1 (JCW's search-time L1) or 2 (JCW's ADMM / fine-tuning L2).

    Returns:
        Bool tensor of ``weight``'s shape and device; every block is all-True or all-False, the edge all-True
        (:func:`kept_elements` counts it); ties between equal norms are broken by block index (lower kept), so the
        mask is deterministic.

    Raises:
        SparsityError: density outside ``(0, 1]``, a malformed block, a weight that is not a floating-point
            tensor with 2 to 5 dims, or ``p`` not 1 or 2 (one line).
    """
    o, f = _check_weight(weight)
    keep = kept_blocks(weight, density, block, p)
    bo, bi = int(block[0]), int(block[1])
    nbo, nbi = keep.shape
    mat = torch.ones(o, f, dtype=torch.bool, device=weight.device)  # the edge is always kept
    mat[: nbo * bo, : nbi * bi] = keep.repeat_interleave(bo, dim=0).repeat_interleave(bi, dim=1)
    return mat.reshape(weight.shape)


def refresh_mask(
    weight: torch.Tensor, density: float, block: tuple[int, int] = DEFAULT_BLOCK, p: int = 1
) -> torch.Tensor:
    """The block mask recomputed from the current weights (same as :func:`block_mask`), for training-time use.

    JCW refreshes the mask every iteration of its proxy-supernet weight-pruning phase (L1, ``p=1``) and fixes it
    once from the ADMM result before fine-tuning (L2, ``p=2``). Call it with the live ``module.weight``; it does not
    modify the weight. Arguments, result and errors as :func:`block_mask`.
    """
    return block_mask(weight, density, block, p)


def project(
    weight: torch.Tensor, density: float, block: tuple[int, int] = DEFAULT_BLOCK, p: int = 2
) -> torch.Tensor:
    """Euclidean projection of ``weight`` onto the weights whose nonzeros lie in at most ``k`` whole blocks plus the
    edge.

    ``k = n_kept_blocks(n_blocks, density)``. The projection keeps the ``k`` blocks of largest L2 norm unchanged and
    zeroes the others: zeroing a block costs its squared L2 norm, so this minimises ``||weight - z||_2`` over the
    feasible ``z`` (ties broken by block index, as :func:`block_mask` with ``p=2``). This is ADMM's Z-update
    (Zhang et al., ECCV 2018, the Z-update; JCW's ``admm_trainer.py`` applies it to ``W + dual`` after every epoch). It is
    idempotent and equals ``weight * block_mask(weight, density, block, p=2)``.

    Args:
        weight: conv ``[O, I, k...]`` or linear ``[O, I]`` tensor (e.g. ``W + U``), floating point (not modified).
        density: fraction of blocks kept, in ``(0, 1]``.
        block: ``(bo, bi)`` block shape (default ``(4, 1)``).
        p: the norm ranking the blocks. 2 (default) is the Euclidean projection described above; 1 keeps the
            largest-L1 blocks instead (a hard threshold, *not* the Euclidean projection; still idempotent).

    Returns:
        A new tensor of ``weight``'s shape, dtype and device (differentiable in ``weight`` on the kept entries).

    Raises:
        SparsityError: invalid weight, density, block or ``p`` (one line).
    """
    mask = block_mask(weight, density, block, p=p)
    return torch.where(mask, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))


def effective_density(mask: torch.Tensor | np.ndarray) -> float:
    """Fraction of the elements of ``mask`` that are kept (nonzero), in ``[0, 1]``.

    With an edge this is above the block density (see the module's edge rule).

    Raises:
        SparsityError: ``mask`` is not a tensor / array, or is empty.
    """
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(mask)
    if not isinstance(mask, torch.Tensor):
        raise SparsityError(f"mask must be a torch.Tensor or numpy array, got {type(mask).__name__}")
    if mask.numel() == 0:
        raise SparsityError("mask must not be empty")
    return float(torch.count_nonzero(mask).item()) / mask.numel()
