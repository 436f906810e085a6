"""GConv channel permutations: which kernels of a dense conv a ``G``-group conv keeps.

Zhao & Luk (arXiv 1811.09341, §3; seed ``gumi/pruning/mask_utils.py``: ``permute_criterion``, ``group_sort``,
``run_mbm_core``). Given the criterion matrix ``S [F, C]`` (:mod:`prunekit.methods.gconv.criterion`) and a group count
``G`` dividing ``F`` and ``C``, a group conv keeps ``G`` blocks of ``F/G x C/G`` kernels: block ``g`` pairs a set of
``F/G`` filters with a set of ``C/G`` input channels, every filter and channel in exactly one block. Pruning looks for
the blocks keeping the most criterion mass (NP-hard in general), in two steps:

1. a heuristic orders rows and columns so that mass gathers in the diagonal blocks: ``same`` (identity), ``sort``
   (rows and columns by their sums, ascending: the seed's ``SORT``), ``grps`` (default; the seed's group sort
   ``GRPS``, :func:`grps_order`);
2. the ``G x G`` matrix of block masses under that order is matched by the Hungarian algorithm
   (``scipy.optimize.linear_sum_assignment``, maximising), pairing each row block with one column block.

The result is returned in :class:`~prunekit.space.plan.LayerChoice`'s convention: group ``g`` of the group conv reads
input channels ``perm_in[g*C/G : (g+1)*C/G]`` and produces output channels ``perm_out[g*F/G : (g+1)*F/G]``
(:func:`block_mask` is its ``[F, C]`` mask, :func:`kept_mass` the mass it keeps). Perms are canonical: sorted within
each group, groups ordered by their smallest output channel (the seed orders groups by their smallest input channel
and leaves them unsorted; both describe the same mask).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from prunekit.errors import PrunekitError

Heuristic = Literal["none", "same", "sort", "grps"]
HEURISTICS: tuple[str, ...] = ("none", "same", "sort", "grps")
SORT_ITERS = 10
"""``N_S``: sort iterations per group index in :func:`grps_order` (the seed's ``--num-sort-iters`` default)."""


class GroupPermutation(NamedTuple):
    """A layer's group-conv choice: ``perm_out [F]``, ``perm_in [C]`` (LayerChoice semantics) and ``kept``, the
    criterion mass inside the ``G`` kept blocks (the seed's "cost" is ``S.sum() - kept``)."""

    perm_out: list[int]
    perm_in: list[int]
    kept: float


# ---------------------------------------------------------------------- checks
def group_shape(out_channels: int, in_channels: int, groups: int) -> tuple[int, int]:
    """``(F/G, C/G)``: the filters and input channels of one group.

    Raises:
        PrunekitError: ``groups`` < 1 or not dividing both channel counts.
    """
    if groups < 1 or out_channels % groups or in_channels % groups:
        raise PrunekitError(
            f"GConv: {groups} groups must be >= 1 and divide the {out_channels} output and {in_channels} input "
            "channels"
        )
    return out_channels // groups, in_channels // groups


def as_criterion(s: np.ndarray | torch.Tensor) -> np.ndarray:
    """``s`` as a float64 numpy ``[F, C]`` matrix (a tensor is detached and copied to the CPU).

    Raises:
        PrunekitError: not 2-D, empty, or not finite.
    """
    arr = s.detach().cpu().numpy() if isinstance(s, torch.Tensor) else np.asarray(s)
    arr = arr.astype(np.float64, copy=False)
    if arr.ndim != 2 or arr.size == 0:
        raise PrunekitError(f"GConv: the criterion must be a non-empty [F, C] matrix, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise PrunekitError("GConv: the criterion matrix has NaN or inf entries")
    return arr


def as_perm(perm: np.ndarray | list[int], size: int, what: str) -> np.ndarray:
    """``perm`` as an int64 array, checked to be a permutation of ``0..size-1``.

    Raises:
        PrunekitError: wrong length or not a permutation.
    """
    arr = np.asarray(perm)
    if arr.shape != (size,) or not np.array_equal(np.sort(arr), np.arange(size)):
        raise PrunekitError(f"GConv: {what} must be a permutation of 0..{size - 1}")
    return arr.astype(np.int64, copy=False)


# ---------------------------------------------------------------------- block masses and masks
def block_sums(s: np.ndarray, rows: np.ndarray, cols: np.ndarray, groups: int) -> np.ndarray:
    """``M [G, G]``: ``M[a, b]`` = mass of ``s`` in row block ``a`` x column block ``b`` of ``s[rows][:, cols]``
    (the seed's MBM cost matrix). ``s [F, C]``, ``rows [F]``, ``cols [C]``, ``G`` dividing ``F`` and ``C``."""
    fg, cg = group_shape(*s.shape, groups)
    return s[np.ix_(rows, cols)].reshape(groups, fg, groups, cg).sum(axis=(1, 3))


def block_mask(
    perm_out: np.ndarray | list[int],
    perm_in: np.ndarray | list[int],
    groups: int,
    out_channels: int,
    in_channels: int,
) -> np.ndarray:
    """The kernels a group conv keeps, bool ``[F, C]``: ``mask[f, c]`` is True when output channel ``f`` and input
    channel ``c`` are in the same group (LayerChoice semantics; ``G`` blocks of ``F/G x C/G`` ones).

    Raises:
        PrunekitError: ``groups`` not dividing ``F`` and ``C``, or a perm that is not a permutation of its size.
    """
    fg, cg = group_shape(out_channels, in_channels, groups)
    gid_out = np.empty(out_channels, dtype=np.int64)
    gid_in = np.empty(in_channels, dtype=np.int64)
    gid_out[as_perm(perm_out, out_channels, "perm_out")] = np.arange(out_channels) // fg
    gid_in[as_perm(perm_in, in_channels, "perm_in")] = np.arange(in_channels) // cg
    return gid_out[:, None] == gid_in[None, :]


def kept_mass(
    s: np.ndarray | torch.Tensor,
    perm_out: np.ndarray | list[int],
    perm_in: np.ndarray | list[int],
    groups: int,
) -> float:
    """Mass of ``s [F, C]`` inside the ``G`` blocks of ``(perm_out, perm_in)``: what the group conv keeps.

    Raises:
        PrunekitError: a malformed criterion, ``groups`` not dividing ``F`` and ``C``, or a malformed perm.
    """
    s = as_criterion(s)
    rows = as_perm(perm_out, s.shape[0], "perm_out")
    cols = as_perm(perm_in, s.shape[1], "perm_in")
    return float(np.trace(block_sums(s, rows, cols, groups)))


# ---------------------------------------------------------------------- heuristics (row / column orders)
def same_order(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``SAME``: the identity orders ``(rows [F], cols [C])``."""
    return np.arange(s.shape[0]), np.arange(s.shape[1])


def sort_order(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``SORT`` (seed ``get_sort_perm``): rows by their sums and columns by their sums, ascending, so the heaviest
    rows and columns meet in the last diagonal block. Returns ``(rows [F], cols [C])``; ties keep index order."""
    return np.argsort(s.sum(axis=1), kind="stable"), np.argsort(s.sum(axis=0), kind="stable")


def _is_identity(perm: np.ndarray) -> bool:
    return bool(np.array_equal(perm, np.arange(perm.size)))


def _sort_step(s: np.ndarray, rows: np.ndarray, cols: np.ndarray, fg: int, cg: int) -> bool:
    """One GRPS sort on the leading sub-matrix ``s[rows][:, cols]`` whose last ``fg`` rows / ``cg`` columns form the
    block being filled: columns by their sum over that block's rows, then rows by their sum over that block's
    columns (ascending, so the heaviest go last, into the block). Reorders the views ``rows`` / ``cols`` in place;
    returns False when neither order changed (a fixed point: later steps would change nothing either)."""
    perm_cols = np.argsort(s[np.ix_(rows[-fg:], cols)].sum(axis=0), kind="stable")
    cols[:] = cols[perm_cols]
    perm_rows = np.argsort(s[np.ix_(rows, cols[-cg:])].sum(axis=1), kind="stable")
    rows[:] = rows[perm_rows]
    return not (_is_identity(perm_cols) and _is_identity(perm_rows))


def grps_order(s: np.ndarray, groups: int, iters: int = SORT_ITERS) -> tuple[np.ndarray, np.ndarray]:
    """``GRPS`` (seed ``group_sort``): fill the diagonal blocks greedily from the last one, by alternating sorts.

    For ``g = G-1 .. 1``, the rows and columns not yet fixed are the leading ``(g+1)F/G x (g+1)C/G`` sub-matrix; its
    block ``g`` (last rows x last columns) is improved by up to ``iters`` (``N_S``) :func:`_sort_step` rounds, each
    a coordinate ascent on that block's mass (best columns for its rows, then best rows for its columns), then
    fixed. Block 0 gets what is left (the seed also runs its ``N_S`` rounds on block 0, where they cannot move
    anything). The rounds for a block stop early at a fixed point, which gives the same orders as running all
    ``N_S``.

    Args:
        s: criterion ``[F, C]``. groups: ``G``, dividing ``F`` and ``C``. iters: ``N_S`` >= 1.

    Returns:
        ``(rows [F], cols [C])``, to be matched by :func:`match_blocks`.

    Notes:
        Same blocks and kept mass as the seed's ``group_sort`` + matching (checked on 300 random matrices, square
        and not, G in 2..8). Seed differences (none changes the algorithm): ``np.argsort`` there is the unstable
        quicksort, here a stable sort (ties resolved by the current order, so results are reproducible and the
        early stop is exact). Seed weakness, kept for fidelity: the first round of block ``g`` sorts columns by the
        block's *current* rows (for ``g = G-1``, the last ``F/G`` rows in index order), so the result depends on the
        channel order it starts from, and a round that starts from rows of two planted blocks stays there (a
        local optimum of the coordinate ascent): on 64 x 64 matrices with 8 planted blocks it missed them 14 times
        in 200. Starting each block from the columns of the remaining row with the largest entry fixed all 200
        and kept the same mass on unstructured matrices (+0.1 to +0.7 % on average), but is not the seed's rule.
    """
    if iters < 1:
        raise PrunekitError(f"GConv: GRPS needs at least one sort iteration (N_S), got {iters}")
    fg, cg = group_shape(*s.shape, groups)
    rows, cols = same_order(s)
    for g in range(groups - 1, 0, -1):
        sub_rows, sub_cols = rows[: (g + 1) * fg], cols[: (g + 1) * cg]
        for _ in range(iters):
            if not _sort_step(s, sub_rows, sub_cols, fg, cg):
                break
    return rows, cols


# ---------------------------------------------------------------------- matching and the public entry point
def canonical(perm_out: np.ndarray, perm_in: np.ndarray, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """The same blocks with each group's channels sorted and groups ordered by their smallest output channel."""
    out_blocks = np.sort(perm_out.reshape(groups, -1), axis=1)
    in_blocks = np.sort(perm_in.reshape(groups, -1), axis=1)
    order = np.argsort(out_blocks[:, 0], kind="stable")
    return out_blocks[order].ravel(), in_blocks[order].ravel()


def match_blocks(
    s: np.ndarray, rows: np.ndarray, cols: np.ndarray, groups: int
) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian step (seed ``run_mbm_core``): pair row block ``a`` of ``rows`` with the column block ``b`` of
    ``cols`` maximising the total kept mass (:func:`block_sums`, ``linear_sum_assignment(maximize=True)``).

    Returns:
        ``(perm_out [F], perm_in [C])``, canonical (:func:`canonical`).
    """
    fg, cg = group_shape(*s.shape, groups)
    row_blocks, col_blocks = linear_sum_assignment(block_sums(s, rows, cols, groups), maximize=True)
    perm_out = rows.reshape(groups, fg)[row_blocks].ravel()
    perm_in = cols.reshape(groups, cg)[col_blocks].ravel()
    return canonical(perm_out, perm_in, groups)


def group_permutation(
    s: np.ndarray | torch.Tensor, groups: int, heuristic: Heuristic = "grps", iters: int = SORT_ITERS
) -> GroupPermutation:
    """The group-conv permutations of one layer: ``heuristic`` orders, then the Hungarian block matching.

    Args:
        s: criterion ``[F, C]`` (:func:`~prunekit.methods.gconv.criterion.criterion_matrix`).
        groups: ``G``, dividing ``F`` and ``C`` (``G = 1`` keeps everything).
        heuristic: ``"same"``, ``"sort"`` or ``"grps"`` (the seed's ``--perm SAME|SORT|GRPS``), or ``"none"``:
            identity permutations without the matching (the diagonal blocks in channel order; a deployed model
            then needs no channel gathers).
        iters: ``N_S`` for ``"grps"``.

    Returns:
        :class:`GroupPermutation` ``(perm_out, perm_in, kept)`` (lists of ints; ``kept`` in ``s``'s units).

    Raises:
        PrunekitError: a malformed criterion, ``groups`` not dividing ``F`` and ``C``, an unknown heuristic, or
            ``iters`` < 1.
    """
    s = as_criterion(s)
    group_shape(*s.shape, groups)
    if heuristic == "none":  # the plain group conv: diagonal blocks in channel order, no matching, no gathers
        rows, cols = same_order(s)
        kept = float(np.trace(block_sums(s, rows, cols, groups)))
        return GroupPermutation([int(i) for i in rows], [int(i) for i in cols], kept)
    if heuristic == "same":
        rows, cols = same_order(s)
    elif heuristic == "sort":
        rows, cols = sort_order(s)
    elif heuristic == "grps":
        rows, cols = grps_order(s, groups, iters)
    else:
        raise PrunekitError(
            f"unknown GConv permutation heuristic {heuristic!r}: choose one of {', '.join(HEURISTICS)}"
        )
    perm_out, perm_in = match_blocks(s, rows, cols, groups)
    kept = float(np.trace(block_sums(s, perm_out, perm_in, groups)))
    return GroupPermutation([int(i) for i in perm_out], [int(i) for i in perm_in], kept)
