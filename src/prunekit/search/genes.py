"""Integer genes with per-gene bounds, their variation operators, and JSON-able RNG state.

Shared by every searcher over integer encodings (:mod:`prunekit.search.evolution`, :mod:`prunekit.search.nsga2`,
:mod:`prunekit.search.local`): :class:`GeneBounds` (inclusive bounds; random / mutation / crossover operators on
``numpy`` Generators) and :func:`rng_state` / :func:`rng_from_state` (a PCG64 Generator as plain JSON data, so a
search state restores the exact random stream).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["GeneBounds", "new_rng", "rng_from_state", "rng_state"]


@dataclass(frozen=True)
class GeneBounds:
    """Inclusive integer bounds per gene, ``low`` / ``high`` int64 ``[G]``, and the variation operators.

    Every operator returns int64 arrays ``[N, G]`` within the bounds; genes with ``low == high`` never change.
    """

    low: np.ndarray
    high: np.ndarray

    def __post_init__(self) -> None:
        lo, hi = np.asarray(self.low, dtype=np.int64), np.asarray(self.high, dtype=np.int64)
        if lo.ndim != 1 or lo.shape != hi.shape or (hi < lo).any():
            raise ValueError("gene bounds must be 1-D int arrays of equal length with low <= high")
        object.__setattr__(self, "low", lo)
        object.__setattr__(self, "high", hi)

    @property
    def size(self) -> int:
        return int(self.low.size)

    def contains(self, genes: np.ndarray) -> np.ndarray:
        """Whether each row of ``genes`` ``[N, G]`` lies within the bounds (bool ``[N]``)."""
        g = np.asarray(genes, dtype=np.int64).reshape(-1, self.size)
        return ((g >= self.low) & (g <= self.high)).all(axis=1)

    def random(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` uniformly random encodings."""
        return rng.integers(self.low, self.high + 1, size=(n, self.size), dtype=np.int64)

    def mutate(self, rng: np.random.Generator, parents: np.ndarray, prob: float) -> np.ndarray:
        """Seed mutation of each row of ``parents`` ``[N, G]``: every gene with probability ``prob`` moves to a
        different value, ``low + (old - low + r) mod n`` with ``r`` uniform in ``1..n-1``."""
        n = self.high - self.low + 1
        hit = (rng.random(parents.shape) < prob) & (n > 1)
        r = rng.integers(1, np.maximum(n, 2), size=parents.shape)  # in 1..n-1
        moved = self.low + (parents - self.low + r) % n
        return np.where(hit, moved, parents).astype(np.int64)

    def crossover(self, rng: np.random.Generator, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Uniform crossover: each gene from ``a`` or ``b`` (``[N, G]`` each) with probability 1/2."""
        return np.where(rng.random(a.shape) < 0.5, a, b).astype(np.int64)

    def sbx(
        self, rng: np.random.Generator, a: np.ndarray, b: np.ndarray, *, eta: float, prob: float
    ) -> np.ndarray:
        """Simulated binary crossover (Deb & Agrawal, Complex Systems 9, 1995; pymoo's bounded ``cross_sbx``) of the
        pairs ``a[i], b[i]`` (``[N, G]`` each) on the gene indices: each gene crosses with probability ``prob``
        (distribution index ``eta``), the two children swap it with probability 1/2; children are rounded to the
        nearest index (for a uniform choice grid, JCW's snapping to ``candidate_list``) and clipped to the bounds.

        Returns:
            int64 ``[2N, G]``: the first children, then the second.
        """
        from pymoo.operators.crossover.sbx import cross_sbx

        n = len(a)
        if n == 0:
            return np.zeros((0, self.size), dtype=np.int64)
        X = np.stack([np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)])
        lo, hi = self.low.astype(np.float64), self.high.astype(np.float64)
        Q = cross_sbx(
            X,
            lo,
            hi,
            np.full((n, 1), float(eta)),
            np.full((n, 1), float(prob)),
            np.full((n, 1), 0.5),
            random_state=rng,
        )
        return self._snap(Q.reshape(2 * n, self.size))

    def polynomial(
        self, rng: np.random.Generator, genes: np.ndarray, *, eta: float, prob: float
    ) -> np.ndarray:
        """Polynomial mutation (Deb & Goyal 1996; pymoo's ``mut_pm``) of each row of ``genes`` ``[N, G]``: every gene
        with ``low < high`` mutates with probability ``prob`` (distribution index ``eta``), then is rounded to the
        nearest index and clipped (JCW's ``PLM`` + ``find_nearest`` + clip)."""
        from pymoo.operators.mutation.pm import mut_pm

        g = np.asarray(genes, dtype=np.float64).reshape(-1, self.size)
        if len(g) == 0:
            return g.astype(np.int64)
        lo, hi = self.low.astype(np.float64), self.high.astype(np.float64)
        out = mut_pm(
            g, lo, hi, np.full(len(g), float(eta)), np.full(len(g), float(prob)), False, random_state=rng
        )
        return self._snap(out)

    def _snap(self, x: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(x), self.low, self.high).astype(np.int64)


def new_rng(seed: int) -> np.random.Generator:
    """The searchers' Generator: PCG64 seeded with ``seed`` (its state round-trips through :func:`rng_state`)."""
    return np.random.Generator(np.random.PCG64(int(seed)))


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """``rng``'s bit-generator state with only JSON types (PCG64 state is nested dicts of Python ints)."""
    return _plain(rng.bit_generator.state)


def rng_from_state(state: dict[str, Any]) -> np.random.Generator:
    """A PCG64 Generator restored from :func:`rng_state` output (continues the exact stream)."""
    bitgen = np.random.PCG64()
    bitgen.state = state
    return np.random.Generator(bitgen)


def _plain(state: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in state.items():
        if isinstance(v, dict):
            out[k] = _plain(v)
        elif isinstance(v, np.integer):
            out[k] = int(v)
        else:
            out[k] = v
    return out
