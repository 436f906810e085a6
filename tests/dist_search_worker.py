"""Run by tests/test_search_distributed.py, alone or under torchrun: MetaPruning's GA on a deterministic objective,
every evaluation logged with the rank that made it; rank 0 writes the result."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from prunekit.distributed import cleanup, get_rank, init_from_env
from prunekit.search.base import run_search
from prunekit.search.evolution import EvolutionConfig, GeneticSearch
from prunekit.search.genes import GeneBounds


def main(out: Path) -> None:
    init_from_env("cpu")
    rank = get_rank()
    log = out / f"evals-rank{rank}.jsonl"

    def evaluate(genes: np.ndarray) -> float:
        with log.open("a") as f:
            f.write(json.dumps([int(g) for g in genes]) + "\n")
        return float(np.sin(genes * 0.7).sum() + 0.01 * (genes**2).sum())  # the same on every rank

    bounds = GeneBounds(np.zeros(6, dtype=np.int64), np.full(6, 9))
    cfg = EvolutionConfig(population=12, parents=4, mutations=6, crossovers=6, iterations=4)
    res = run_search(
        GeneticSearch(bounds, cfg, seed=3),
        evaluate,
        checkpoint=out / "search.json",
        checkpoint_every=3,
        progress=False,
    )
    if rank == 0:
        (out / "result.json").write_text(
            json.dumps(
                {
                    "evaluated": [[list(g), list(f)] for g, f in res.evaluated],
                    "best": [res.best[0].tolist(), res.best[1].tolist()],
                    "evaluations": res.evaluations,
                    "cache_hits": res.cache_hits,
                    "history": res.history,
                }
            )
        )
    cleanup()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
