"""Run by tests/test_search_distributed.py under torchrun: ``map_sharded`` over 11 items, every call logged with the
rank that made it; rank 0 writes the gathered result."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from prunekit.distributed import cleanup, get_rank, init_from_env, map_sharded


def main(out: Path) -> None:
    init_from_env("cpu")
    rank = get_rank()

    def square(items: list[int]) -> list[int]:
        (out / f"items-rank{rank}.json").write_text(json.dumps(items))
        return [i * i for i in items]

    got = map_sharded(square, list(range(11)))
    if rank == 0:
        (out / "result.json").write_text(json.dumps(got))
    cleanup()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
