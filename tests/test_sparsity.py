"""Block-structured weight sparsity (prunekit.space.sparsity): block masks, norms and the ADMM projection."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.errors import PrunekitError
from prunekit.space.sparsity import (
    SparsityError,
    block_grid,
    block_mask,
    block_norms,
    effective_density,
    kept_blocks,
    kept_elements,
    n_kept_blocks,
    project,
    refresh_mask,
)

# ------------------------------------------------------------------------------------------------ helpers


def brute_blocks(shape, block):
    """Row-major list of (row slice, col slice) of every whole block of the [O, F] matrix view (independent of the
    module); the edge rows/columns that do not fill a block are not blocks."""
    o, f = shape[0], math.prod(shape[1:])
    bo, bi = block
    rows = [slice(r, r + bo) for r in range(0, o - bo + 1, bo)]
    cols = [slice(c, c + bi) for c in range(0, f - bi + 1, bi)]
    return [(r, c) for r in rows for c in cols]


def edge(mask, block):
    """The elements outside every whole block (flattened [O, F] view)."""
    mat = mask.reshape(mask.shape[0], -1)
    o, f = mat.shape
    inside = torch.zeros(o, f, dtype=torch.bool)
    inside[: o // block[0] * block[0], : f // block[1] * block[1]] = True
    return mat[~inside]


def brute_norms(weight, block, p):
    mat = weight.detach().double().reshape(weight.shape[0], -1)
    out = []
    for r, c in brute_blocks(weight.shape, block):
        b = mat[r, c]
        out.append(float(b.abs().sum()) if p == 1 else float((b * b).sum().sqrt()))
    return out


def brute_top(norms, k):
    """Indices of the k largest norms, ties to the lower index."""
    return set(sorted(range(len(norms)), key=lambda i: (-norms[i], i))[:k])


def mask_blocks(mask, block):
    """Per block: True (all kept), False (all dropped); fails on a mixed block."""
    mat = mask.reshape(mask.shape[0], -1)
    out = []
    for r, c in brute_blocks(mask.shape, block):
        b = mat[r, c]
        assert bool(b.all()) or not bool(b.any()), f"mixed block at rows {r}, cols {c}"
        out.append(bool(b.all()))
    assert bool(edge(mask, block).all()), "an edge element was dropped"
    return out


@st.composite
def cases(draw, max_o=12, max_i=12, ints=False):
    """(weight, block, density): a random linear or conv weight, a block fitting it, a density in (0, 1]."""
    if draw(st.booleans()):
        shape = (draw(st.integers(1, max_o)), draw(st.integers(1, max_i)))
    else:
        shape = (
            draw(st.integers(1, max_o)),
            draw(st.integers(1, 4)),
            draw(st.integers(1, 3)),
            draw(st.integers(1, 3)),
        )
    f = math.prod(shape[1:])
    block = (draw(st.integers(1, shape[0] + 2)), draw(st.integers(1, f + 2)))  # may exceed: dense
    density = draw(st.floats(min_value=1e-4, max_value=1.0, allow_nan=False))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if ints:  # integer values: many exact ties between block norms
        weight = torch.randint(-2, 3, shape, generator=g).double()
    else:
        weight = torch.randn(shape, generator=g, dtype=torch.float64)
    return weight, block, density


# ------------------------------------------------------------------------------------------------ counting


@settings(max_examples=150, deadline=None)
@given(cases())
def test_mask_keeps_exactly_round_d_n_whole_blocks(case):
    weight, block, density = case
    mask = block_mask(weight, density, block)
    assert mask.dtype == torch.bool and mask.shape == weight.shape
    per_block = mask_blocks(mask, block)  # every block all-True or all-False
    n = len(per_block)
    assert block_grid(weight.shape, block)[0] * block_grid(weight.shape, block)[1] == n
    expected = min(n, max(1, math.floor(density * n + 0.5 + 1e-9))) if n else 0
    assert sum(per_block) == expected == (n_kept_blocks(n, density) if n else 0)
    assert int(kept_blocks(weight, density, block).sum()) == expected
    # the kept element count follows from the shape alone (exact analytic effective cost)
    o, f = weight.shape[0], math.prod(weight.shape[1:])
    assert int(mask.sum()) == int(kept_elements(o, f, density, block))


@settings(max_examples=150, deadline=None)
@given(cases(), st.sampled_from([1, 2]))
def test_kept_blocks_are_largest_by_norm(case, p):
    weight, block, density = case
    norms = brute_norms(weight, block, p)
    assert np.allclose(block_norms(weight, block, p).reshape(-1).numpy(), norms, rtol=1e-12, atol=1e-12)
    k = n_kept_blocks(len(norms), density) if norms else 0
    kept = {i for i, b in enumerate(mask_blocks(block_mask(weight, density, block, p), block)) if b}
    assert kept == brute_top(norms, k)


@settings(max_examples=100, deadline=None)
@given(cases(ints=True), st.sampled_from([1, 2]))
def test_ties_broken_by_block_index(case, p):
    weight, block, density = case
    norms = brute_norms(weight, block, p)  # integer weights: exact sums, exact ties
    k = n_kept_blocks(len(norms), density) if norms else 0
    kept = {i for i, b in enumerate(mask_blocks(block_mask(weight, density, block, p), block)) if b}
    assert kept == brute_top(norms, k)


def test_tie_break_explicit():
    weight = torch.ones(8, 2)  # block (4, 1): 2 x 2 = 4 equal blocks
    keep = kept_blocks(weight, 0.5, (4, 1))
    assert keep.tolist() == [[True, True], [False, False]]
    assert torch.equal(block_mask(weight, 0.5), block_mask(weight.clone(), 0.5))


def test_jcw_default_block_four_filters_share_one_pattern():
    weight = torch.randn(8, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    mask = block_mask(weight, 0.4)  # default (4, 1)
    for g in (0, 4):
        for j in range(1, 4):
            assert torch.equal(mask[g], mask[g + j])
    assert not torch.equal(mask[0], mask[4]) or mask.all()  # groups choose independently (not all equal here)
    n = 2 * 27
    assert int(mask.sum()) == 4 * n_kept_blocks(n, 0.4)


def test_l1_and_l2_rankings_differ():
    # block A: [3, 0, 0, 0] (L1 3, L2 3); block B: [1, 1, 1, 1] (L1 4, L2 2)
    weight = torch.tensor([[3.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    assert kept_blocks(weight, 0.5, (4, 1), p=1).tolist() == [[False, True]]
    assert kept_blocks(weight, 0.5, (4, 1), p=2).tolist() == [[True, False]]


# ------------------------------------------------------------------------------------------------ projection


@settings(max_examples=150, deadline=None)
@given(cases())
def test_projection_idempotent_and_equals_masked_weight(case):
    weight, block, density = case
    z = project(weight, density, block)
    assert z.shape == weight.shape and z.dtype == weight.dtype
    assert torch.equal(project(z, density, block), z)
    assert torch.equal(z, weight * block_mask(weight, density, block, p=2))
    assert torch.equal(z, project(weight, density, block, p=2))
    z1 = project(weight, density, block, p=1)
    assert torch.equal(project(z1, density, block, p=1), z1)
    assert torch.equal(z1, weight * block_mask(weight, density, block, p=1))
    assert torch.equal(weight, case[0])  # input untouched


@settings(max_examples=80, deadline=None)
@given(cases(max_o=4, max_i=4))
def test_projection_is_nearest_k_block_point(case):
    weight, block, density = case
    blocks = brute_blocks(weight.shape, block)
    if len(blocks) > 10:  # keep the enumeration tiny
        block = (weight.shape[0], max(block[1], -(-math.prod(weight.shape[1:]) // 4)))
        blocks = brute_blocks(weight.shape, block)
    n = len(blocks)
    k = n_kept_blocks(n, density) if n else 0
    z = project(weight, density, block)
    zm = z.reshape(weight.shape[0], -1)
    assert sum(bool(zm[r, c].any()) for r, c in blocks) <= k  # feasible: nonzeros in at most k blocks
    dist = float((weight - z).norm())
    mat = weight.reshape(weight.shape[0], -1)
    best = math.inf
    for subset in itertools.combinations(range(n), k):
        other = mat.clone()  # the edge is always kept
        for r, c in blocks:
            other[r, c] = 0.0
        for i in subset:
            r, c = blocks[i]
            other[r, c] = mat[r, c]
        d = float((mat - other).norm())
        assert dist <= d + 1e-12
        best = min(best, d)
    assert dist == pytest.approx(best, abs=1e-12)


def test_projection_beats_l1_choice_and_keeps_gradient():
    weight = torch.tensor([[3.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]], requires_grad=True)
    z = project(weight, 0.5, (4, 1))
    assert z.detach()[:, 0].tolist() == [3.0, 0.0, 0.0, 0.0] and not z.detach()[:, 1].any()
    z.sum().backward()
    assert weight.grad[:, 0].tolist() == [1.0] * 4 and not weight.grad[:, 1].any()


# ------------------------------------------------------------------------------------------------ edge blocks


def test_edge_rows_and_columns_are_always_kept():
    # [6, 3] with block (4, 2): one whole block (rows 0-3, cols 0-1); rows 4-5 and col 2 are the edge
    weight = torch.zeros(6, 3)
    weight[4:6, :] = 10.0  # large edge values are kept, whatever the density
    weight[0:4, 0:2] = 3.0
    assert block_grid(weight.shape, (4, 2)) == (1, 1)
    assert block_norms(weight, (4, 2)).tolist() == [[24.0]]
    mask = block_mask(weight, 0.01, (4, 2))
    assert mask.all()  # one whole block, and at least one block is kept
    assert int(kept_elements(6, 3, 0.01, (4, 2))) == 18
    # [8, 3] with block (4, 2): two whole blocks (rows 0-3 and 4-7, cols 0-1); column 2 is the edge
    weight = torch.zeros(8, 3)
    weight[0:4, 0:2] = 1.0
    weight[4:8, 0:2] = 2.0
    mask = block_mask(weight, 0.5, (4, 2))
    assert mask[4:8, 0:2].all() and not mask[0:4, 0:2].any() and mask[:, 2].all()
    assert effective_density(mask) == pytest.approx(16 / 24)  # above the block density: the edge is dense
    assert int(kept_elements(8, 3, 0.5, (4, 2))) == 16


def test_weight_smaller_than_a_block_stays_dense():
    weight = torch.randn(3, 5)
    assert block_grid(weight.shape, (4, 1)) == (0, 5)
    assert block_mask(weight, 0.1).all() and torch.equal(project(weight, 0.1), weight)
    assert kept_blocks(weight, 0.1).numel() == 0
    assert int(kept_elements(3, 5, 0.1)) == 15


def test_kept_elements_vectorised():
    o = np.array([8, 16, 10, 3])
    got = kept_elements(o, 9, 0.5, (4, 1))
    want = [int(block_mask(torch.randn(int(n), 9), 0.5).sum()) for n in o]
    assert got.tolist() == want


def test_partial_blocks_conv_flattened_axis():
    # conv [5, 2, 3, 3]: F = 18; block (4, 4) -> grid 1 x 4 of whole blocks; row 4 and cols 16-17 are the edge
    weight = torch.randn(5, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    assert block_grid(weight.shape, (4, 4)) == (1, 4)
    mask = block_mask(weight, 0.3, (4, 4))
    assert sum(mask_blocks(mask, (4, 4))) == 1
    g2 = block_norms(weight, (4, 4), p=2)
    assert g2[0, 3].item() == pytest.approx(float(weight.reshape(5, 18)[0:4, 12:16].norm()), rel=1e-6)


def test_density_one_keeps_everything_tiny_density_keeps_one_block():
    weight = torch.randn(6, 3, 3, 3, generator=torch.Generator().manual_seed(2))
    assert block_mask(weight, 1.0, (4, 2)).all()
    assert torch.equal(project(weight, 1.0, (4, 2)), weight)
    assert effective_density(block_mask(weight, 1.0)) == 1.0
    tiny = block_mask(weight, 1e-9, (4, 2))
    assert sum(mask_blocks(tiny, (4, 2))) == 1
    assert n_kept_blocks(1000, 1e-9) == 1 and n_kept_blocks(1, 0.01) == 1


def test_n_kept_blocks_rounding():
    assert n_kept_blocks(10, 0.25) == 3  # 2.5 -> 3 (halves up)
    assert n_kept_blocks(10, 0.15) == 2  # decimal half, float 1.5000000000000002 or 1.4999...: still up
    assert n_kept_blocks(10, 0.24) == 2
    assert n_kept_blocks(5, 0.5) == 3
    assert n_kept_blocks(7, 1.0) == 7
    assert n_kept_blocks(np.int64(10), np.float64(0.3)) == 3


def test_refresh_mask_follows_current_weights():
    weight = torch.tensor([[5.0, 0.0, 1.0]])
    assert refresh_mask(weight, 0.34, (1, 1)).tolist() == [[True, False, False]]
    weight[0, 1] = 9.0  # weights move during training: the refreshed mask follows
    assert refresh_mask(weight, 0.34, (1, 1)).tolist() == [[False, True, False]]
    assert torch.equal(refresh_mask(weight, 0.5, (1, 1), p=2), block_mask(weight, 0.5, (1, 1), p=2))


def test_effective_density():
    assert effective_density(torch.tensor([True, False, False, True])) == 0.5
    assert effective_density(torch.tensor([[1.0, 0.0, 0.0]])) == pytest.approx(1 / 3)
    assert effective_density(np.ones((2, 2), dtype=bool)) == 1.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_norms_in_float32(dtype):
    weight = torch.full((4, 2), 300.0, dtype=dtype)  # 300^2 * 4 overflows float16
    norms = block_norms(weight, (4, 1), p=2)
    assert norms.dtype == torch.float32 and torch.isfinite(norms).all()
    assert project(weight, 0.5, (4, 1)).dtype == dtype


# ------------------------------------------------------------------------------------------------ errors

W = torch.zeros(4, 3, 3, 3)


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: block_mask(W, 0.0), "density"),
        (lambda: block_mask(W, -0.1), "density"),
        (lambda: block_mask(W, 1.5), "density"),
        (lambda: block_mask(W, float("nan")), "density"),
        (lambda: block_mask(W, True), "density"),
        (lambda: block_mask(W, "0.5"), "density"),
        (lambda: project(W, 2.0), "density"),
        (lambda: block_mask(W, 0.5, (0, 1)), ">= 1"),
        (lambda: block_mask(W, 0.5, (4, 1, 1)), "pair"),
        (lambda: block_mask(W, 0.5, 4), "pair"),
        (lambda: block_mask(W, 0.5, (4.0, 1)), "ints"),
        (lambda: block_mask(torch.zeros(8), 0.5), "dims"),
        (lambda: block_mask(torch.tensor(1.0), 0.5), "dims"),
        (lambda: block_mask(torch.zeros(4, 1, 1, 1, 1, 1), 0.5), "dims"),
        (lambda: block_mask(torch.zeros(4, 3, dtype=torch.int64), 0.5), "floating"),
        (lambda: block_mask(np.zeros((4, 3)), 0.5), "torch.Tensor"),
        (lambda: block_mask(torch.zeros(4, 0), 0.5), "empty"),
        (lambda: block_norms(W, (4, 1), p=3), "p must be"),
        (lambda: project(W, 0.5, p=0), "p must be"),
        (lambda: block_mask(W, 0.5, p=True), "p must be"),
        (lambda: block_grid((4,), (1, 1)), "dims"),
        (lambda: n_kept_blocks(0, 0.5), "n_blocks"),
        (lambda: n_kept_blocks(2.5, 0.5), "n_blocks"),
        (lambda: n_kept_blocks(10, 0), "density"),
        (lambda: effective_density(torch.zeros(0)), "empty"),
        (lambda: effective_density([1, 0]), "mask must be"),
    ],
)
def test_errors_are_one_line(call, needle):
    with pytest.raises(SparsityError) as info:
        call()
    err = info.value
    assert isinstance(err, PrunekitError) and isinstance(err, ValueError)
    msg = str(err)
    assert msg and "\n" not in msg and needle in msg
