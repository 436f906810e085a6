"""Search evaluations sharded across torchrun ranks (issue #15): the same candidates, objectives and result as one
process, with the work really split."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("dist_search_worker.py")
MAP_WORKER = Path(__file__).with_name("dist_map_worker.py")


def _run(out: Path, ranks: int, worker: Path = WORKER) -> dict:
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parent.parent / "src")}
    if ranks == 1:
        cmd = [sys.executable, str(worker), str(out)]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks)]
        cmd += ["--master_addr", "127.0.0.1", "--master_port", str(port), str(worker), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "result.json").read_text())


def _evals(out: Path, rank: int) -> list:
    path = out / f"evals-rank{rank}.jsonl"
    return [tuple(json.loads(line)) for line in path.read_text().splitlines()] if path.is_file() else []


def test_a_sharded_search_equals_the_one_process_search(tmp_path):
    one = _run(tmp_path / "one", 1)
    two = _run(tmp_path / "two", 2)
    assert two["evaluated"] == one["evaluated"]  # same candidates, same order, same objectives (exact)
    assert two["best"] == one["best"] and two["history"] == one["history"]
    r0, r1 = _evals(tmp_path / "two", 0), _evals(tmp_path / "two", 1)
    assert r0 and r1 and not set(r0) & set(r1)  # both ranks evaluated, never the same candidate
    assert len(r0) + len(r1) == one["evaluations"] == len(_evals(tmp_path / "one", 0))
    assert abs(len(r0) - len(r1)) <= 4 * 3  # balanced within a chunk per round


def test_map_sharded_splits_the_items_over_the_ranks_and_keeps_their_order(tmp_path):
    """JCW's NSGA-II scores each generation's candidates this way (every world-th per rank)."""
    got = _run(tmp_path / "two", 2, MAP_WORKER)
    assert got == [i * i for i in range(11)]
    r0 = json.loads((tmp_path / "two" / "items-rank0.json").read_text())
    r1 = json.loads((tmp_path / "two" / "items-rank1.json").read_text())
    assert r0 == list(range(0, 11, 2)) and r1 == list(range(1, 11, 2))
