"""`prunekit run` under torchrun (issue #15): 2 CPU processes with the gloo backend.

Data parallelism is checked against one process at the same global batch (2 ranks x 32 = 1 process x 64, the
strided shards of one permutation make each global batch the same samples, augmentation off). The model is
BatchNorm-free (``tests/nets.py:plain_cnn``): with BatchNorm each rank normalises by its own half batch (CPU has no
SyncBatchNorm), which is a different computation, not a rounding difference. Tolerance: the plans are identical,
test top-1 agrees to one sample, and every weight tensor agrees to 5% of its largest magnitude: a DDP gradient is
the mean of two half-batch means, and that last-bit difference grows over ~100 SGD steps at lr 0.5 (measured: 1.5%
at worst, on a bias). A run whose ranks trained on unsharded or differently ordered data differs by O(1).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
pytestmark = pytest.mark.skipif(not FMNIST.is_file(), reason="apt-get install dataset-fashion-mnist")

DATA = {
    "name": "fashion_mnist",
    "subset_train": 1024,
    "subset_val": 256,
    "subset_test": 256,
    "batch_size": 32,
}
BASE = {
    "model": f"{ROOT / 'tests' / 'nets.py'}:plain_cnn",
    "seed": 0,
    "data": {**DATA, "augment": False},
    "target": {"macs_ratio": 0.5},
    "export": {"onnx": False, "latency": False},
}
SCRATCH = {
    **BASE,
    "baseline": {"train": {"epochs": 2, "lr": 0.5}},
    "method": {"name": "scratch", "expansion": 1.0, "gate_epochs": 2, "tol": 0.01, "budget": "scratch-b"},
}
METAPRUNING = {  # a BatchNorm model: the search runs on one PruningNet, and BN recalibration is per candidate
    **BASE,
    "model": "resnet20:width_mult=0.5",
    "baseline": {"train": None},
    "method": {
        "name": "metapruning",
        "bounds": {"all": [0.3, 1.0], "last": [0.5, 1.0]},
        "hidden_block": 16,
        "pruningnet_train": {"epochs": 2, "lr": 0.1, "schedule": "linear"},
        "search": {"population": 6, "parents": 3, "mutations": 2, "crossovers": 2, "iterations": 2},
        "recal_batches": 2,
        "recal_batch_size": 64,  # the same BN batches in both runs (the default is data.batch_size, per rank)
        "eval_batches": 2,
        "top_k": 2,
        "final_train": {"epochs": 1, "lr": 0.1, "schedule": "linear"},
    },
}
ENV = {**os.environ, "PRUNEKIT_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmd(cfg: Path, out: Path, ranks: int, *extra: str) -> list[str]:
    run = ["-m", "prunekit.cli", "run", str(cfg), "--out", str(out), *extra]
    if ranks == 1:
        return [sys.executable, *run]
    launch = ["-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_addr", "127.0.0.1"]
    return [sys.executable, *launch, "--master_port", str(_port()), *run]


def _run(cfg: Path, out: Path, ranks: int, *extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(_cmd(cfg, out, ranks, *extra), capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-3000:]
    return proc


def _structure(run: Path) -> dict:
    plan = json.loads((run / "plan.json").read_text())
    plan.pop("meta", None)
    return plan


def _assert_same_model(a: Path, b: Path, tol: float = 5e-2) -> None:
    assert _structure(a) == _structure(b)
    ta, tb = (json.loads((d / "report.json").read_text())["pruned"]["top1"] for d in (a, b))
    assert abs(ta - tb) <= 1 / DATA["subset_test"] + 1e-9
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert set(wa) == set(wb)
    for k in wa:
        x, y = wa[k].double(), wb[k].double()
        assert x.shape == y.shape, k
        assert (x - y).abs().max() <= tol * max(x.abs().max().item(), 1e-12), k


def _write(tmp_path: Path, tree: dict, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_scratch_under_torchrun_is_killed_resumes_and_equals_one_process(tmp_path):
    """One rank is killed in the middle of the gate training (after its first of 2 epochs checkpointed); the same
    command resumes, and the finished 2-rank run equals the one-process run at the same global batch."""
    cfg = _write(tmp_path, SCRATCH, "scratch")
    one, two = tmp_path / "one", tmp_path / "two"
    _run(_write(tmp_path, {**SCRATCH, "data": {**SCRATCH["data"], "batch_size": 64}}, "scratch64"), one, 1)
    job = subprocess.Popen(
        _cmd(cfg, two, 2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, text=True
    )
    deadline = time.monotonic() + 300
    while (
        not (two / "ckpt" / "scratch-gates.ckpt").is_file()
        and job.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    assert job.poll() is None, "the run finished before it could be killed"
    worker = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True).stdout.split()[-1]
    os.kill(int(worker), signal.SIGKILL)
    job.communicate(timeout=120)
    assert job.returncode != 0 and not (two / "report.json").exists()
    state = json.loads((two / "state.json").read_text())
    assert "baseline" in state["phases"] and "method" not in state["phases"]
    proc = _run(cfg, two, 2)
    assert proc.stdout.count("report:") == 1  # rank 0 alone prints the summary
    rows = [json.loads(x) for x in (two / "log.jsonl").read_text().splitlines()]
    gates = [r["epoch"] for r in rows if r["type"] == "epoch" and r["desc"] == "scratch-gates"]
    assert gates == [1, 2]  # the gate training went on from its checkpoint: epoch 1 ran once
    rep = json.loads((two / "report.json").read_text())
    assert (
        rep["baseline"]["top1"] > 0.2
    )  # it learned (chance is 0.1): the comparison below is not of two inits
    assert rep["pruned"]["macs"] <= 0.5 * rep["baseline"]["macs"] * 1.01 < rep["baseline"]["macs"]
    _assert_same_model(one, two)
    # the train split was sharded: each rank ran 16 steps of 32 images per epoch, as the one process ran 16 of 64
    for d in (one, two):
        rows = [json.loads(x) for x in (d / "log.jsonl").read_text().splitlines()]
        (first,) = [r for r in rows if r["type"] == "epoch" and r["desc"] == "baseline" and r["epoch"] == 1]
        assert first["step"] == 16 and first["train_n"] == 1024, d  # train_n: all ranks' images
        assert first["val_n"] == DATA["subset_val"], d  # the whole val split, counted once
    # val and test were sharded too: the 2 ranks together evaluated as many images as the one process
    # (unsharded, each rank would have evaluated the whole splits: twice as many)
    f1, f2 = (json.loads((d / "compute.json").read_text())["forward"] for d in (one, two))
    assert (
        f1["evaluate"]["images"] == f2["evaluate"]["images"] == 2 * (DATA["subset_val"] + DATA["subset_test"])
    )


def test_metapruning_sharded_search_under_torchrun_equals_the_one_process_search(tmp_path):
    """The PruningNet of a one-process run seeds a 2-rank run (its checkpoint, as a resumed run would find it), so
    the two searches see the same PruningNet: the sharded GA must evaluate the same candidates to the same fitness
    exactly (each rank recalibrates BN and evaluates on the same unsharded batches) and choose the same widths.
    The final training then runs data-parallel; with BatchNorm it is not compared weight for weight (see the module
    docstring), only its plan."""
    one, two = tmp_path / "one", tmp_path / "two"
    _run(_write(tmp_path, {**METAPRUNING, "data": {**METAPRUNING["data"], "batch_size": 64}}, "mp64"), one, 1)
    (two / "ckpt").mkdir(parents=True)
    (two / "ckpt" / "pruningnet.ckpt").write_bytes((one / "ckpt" / "pruningnet.ckpt").read_bytes())
    _run(_write(tmp_path, METAPRUNING, "mp"), two, 2)
    r1, r2 = (json.loads((d / "report.json").read_text()) for d in (one, two))
    h1, h2 = r1["history"]["method"], r2["history"]["method"]
    assert max(r["best_val_top1"] for r in h1) > 0.2  # the fitness says something (chance is 0.1)
    assert r1["extra"]["search"]["evaluated"] == r2["extra"]["search"]["evaluated"] == 12
    assert [(r["best_val_top1"], r["mean_val_top1"]) for r in h1] == [
        (r["best_val_top1"], r["mean_val_top1"]) for r in h2
    ]
    assert r1["extra"]["chosen"]["widths"] == r2["extra"]["chosen"]["widths"]
    assert _structure(one) == _structure(two)
    assert r2["pruned"]["macs"] <= 0.5 * r2["baseline"]["macs"] * 1.01


def test_a_measured_latency_target_under_torchrun_is_timed_by_rank_0_and_every_rank_takes_its_plan(tmp_path):
    """magnitude bisects a measured ONNX Runtime latency: were each rank timing its own candidates, the ranks would
    pick different widths and the plan check would stop the run; rank 0 times and broadcasts instead."""
    tree = {
        **SCRATCH,
        "baseline": {"train": None},
        "method": {"name": "magnitude"},
        "target": {"latency_ratio": 0.7},
    }
    out = tmp_path / "lat"
    proc = _run(_write(tmp_path, tree, "lat"), out, 2)
    assert "disagree" not in proc.stderr
    rep = json.loads((out / "report.json").read_text())
    (c,) = rep["constraints"]
    assert c["metric"] == "latency_ms" and rep["pruned"]["macs"] < rep["baseline"]["macs"]
