"""End-to-end `prunekit run/train/eval/export` on a real Fashion-MNIST subset, and config/data error handling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from prunekit.cli import main

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
needs_fmnist = pytest.mark.skipif(not FMNIST.is_file(), reason="apt-get install dataset-fashion-mnist")

TINY = {
    "model": "resnet20:width_mult=0.5",
    "data": {
        "name": "fashion_mnist",
        "subset_train": 2000,
        "subset_val": 300,
        "subset_test": 400,
        "batch_size": 64,
    },
    "baseline": {"train": {"epochs": 2, "lr": 0.1}},
    "target": {"macs_ratio": 0.5},
    "method": {"name": "magnitude", "importance": "l1", "ranking": "global"},
    "finetune": {"epochs": 1, "lr": 0.01},
    "export": {"latency_batch": 8},
}


def write_cfg(tmp_path: Path, tree: dict, name: str = "tiny") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def cli(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@needs_fmnist
def test_run_end_to_end_writes_every_output(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_NO_PROGRESS", "1")
    out = tmp_path / "run"
    code, stdout, err = cli(["run", write_cfg(tmp_path, TINY), "--out", out], capsys)
    assert code == 0, err
    for name in (
        "report.json",
        "report.md",
        "plan.json",
        "model.safetensors",
        "model.onnx",
        "baseline.pt",
        "log.jsonl",
        "tradeoff.png",
        "config.yaml",
        "state.json",
    ):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"]["name"] == "fashion_mnist"
    assert report["model"].startswith("resnet20:") and "in_chans=1" in report["model"]
    assert report["method"]["name"] == "magnitude" and report["target"]["macs_ratio"] == 0.5
    for side in ("baseline", "pruned"):
        for key in ("top1", "macs", "params", "latency_ms", "latency_ms_batch"):
            assert report[side][key] is not None and report[side][key] > 0, (side, key)
        assert 0.0 < report[side]["top1"] <= 1.0
    assert report["pruned"]["macs"] <= 0.5 * report["baseline"]["macs"]
    assert report["pruned"]["params"] < report["baseline"]["params"]
    assert report["baseline"]["top1"] > 0.3  # two epochs on 2,000 real images is far above chance (0.1)
    assert {"baseline", "method", "finetune", "export"} <= set(report["wall_s"])
    # the compute ledger: 2 baseline epochs are 2 reference epochs (of training; the per-epoch validation comes on
    # top); the finetune epoch of the pruned net costs its MACs ratio of one; the run's own test / val evaluations
    # are listed but not in the total
    comp, c = report["compute"]["phases"], report["compute"]
    epoch = 3 * c["reference_macs"] * report["dataset"]["sizes"]["train"]
    assert c["reference_macs"] == report["baseline"]["macs"]
    assert comp["baseline"]["train_macs"] / epoch == pytest.approx(2.0, rel=0.02)  # drop_last: 1,984 of 2,000
    assert comp["baseline"]["forward_macs"] == pytest.approx(2 * 300 * c["reference_macs"])  # 2 validations
    ratio = report["pruned"]["macs"] / report["baseline"]["macs"]
    assert comp["finetune"]["train_macs"] / epoch == pytest.approx(ratio, rel=0.02) and ratio < 0.55
    assert report["compute"]["excluded"] == ["evaluate"] and comp["evaluate"]["forward_macs"] > 0
    total = sum(p["total_macs"] for k, p in comp.items() if k != "evaluate")
    assert report["compute"]["total_macs"] == pytest.approx(total)
    assert "## Compute" in (out / "report.md").read_text()
    # where the latencies were measured: ONNX Runtime, the configured threads, this CPU
    machine = report["machine"]
    assert machine["runtime"] == "ort" and machine["version"].startswith("onnxruntime ")
    assert machine["threads"] == 1 and machine["cpu"]
    assert f"on {machine['cpu']}" in (out / "report.md").read_text()
    lines = (out / "log.jsonl").read_text().splitlines()
    assert lines and all(json.loads(line) for line in lines)
    assert (out / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "top-1" in stdout

    # the run directory reloads into a working model through plan.json + weights (no pickles)
    code, stdout, _ = cli(["eval", out, "--json"], capsys)
    assert code == 0
    assert json.loads(stdout)["top1"] == pytest.approx(report["pruned"]["top1"], abs=1e-6)
    code, _, _ = cli(["export", out, "--onnx", tmp_path / "again.onnx"], capsys)
    assert code == 0 and (tmp_path / "again.onnx").stat().st_size > 1000
    code, stdout, _ = cli(["eval", out / "baseline.pt", "--json"], capsys)
    assert json.loads(stdout)["top1"] == pytest.approx(report["baseline"]["top1"], abs=1e-6)

    # re-running the same command resumes: nothing is retrained, the result is the same
    mtime = (out / "baseline.pt").stat().st_mtime_ns
    code, _, _ = cli(["run", write_cfg(tmp_path, TINY), "--out", out], capsys)
    assert code == 0 and (out / "baseline.pt").stat().st_mtime_ns == mtime
    again = json.loads((out / "report.json").read_text())
    assert again["pruned"]["top1"] == report["pruned"]["top1"]
    assert again["compute"]["phases"]["baseline"] == report["compute"]["phases"]["baseline"]  # charged once
    assert again["compute"]["total_macs"] == pytest.approx(report["compute"]["total_macs"])

    # a run written by an older prunekit (its config predates a field, here export.latency_threads, so its hash
    # differs) resumes when its config.yaml reads the same under today's defaults; nothing is retrained
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["export"].pop("latency_threads") == 1
    (out / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    state = json.loads((out / "state.json").read_text())
    now = state["config_hash"]
    (out / "state.json").write_text(json.dumps({**state, "config_hash": "0123456789abcdef"}))
    code, _, err = cli(["run", write_cfg(tmp_path, TINY), "--out", out], capsys)
    assert code == 0, err
    assert (out / "baseline.pt").stat().st_mtime_ns == mtime
    assert json.loads((out / "state.json").read_text())["config_hash"] == now

    # a different config into the same directory is refused, naming what differs
    changed = {**TINY, "seed": 3}
    code, _, err = cli(["run", write_cfg(tmp_path, changed, "other"), "--out", out], capsys)
    assert (
        code == 2
        and "different config (name: 'tiny' -> 'other'; seed: 0 -> 3)" in err
        and err.count("\n") == 1
    ), err


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"bogus": 1}, "unknown key 'bogus'"),
        ({"data": {"name": "fashion_mnist", "batchsize": 3}}, "unknown key 'data.batchsize'"),
        ({"method": {"name": "magnitude", "ranking": "sideways"}}, "method.ranking"),
        ({"method": {"name": "nope"}}, "method"),
        ({"target": {"macs_ratio": 0.5, "macs": 10}}, "target.macs or target.macs_ratio, not both"),
        ({"target": {}}, "give at least one of target.macs_ratio"),
        ({"target": {"params_ratio": 0.3}, "method": {"name": "scratch"}}, "cannot prune to a params target"),
        ({"target": {"macs_ratio": 1.5}}, "target.macs_ratio"),
        ({"target": {"macs": 10}}, "below the smallest model prunekit can reach"),
        ({"target": {"params": 10}}, "params <= 10 params is below the smallest model"),
        ({"model": "resnet21"}, "unknown model"),
        ({"baseline": {"train": {"epochs": 1, "lr": -1}}}, "lr"),
    ],
)
def test_bad_configs_exit_2_and_write_nothing(tmp_path, capsys, patch, message):
    tree = {**TINY, **patch}
    out = tmp_path / "out"
    code, _, err = cli(["run", write_cfg(tmp_path, tree), "--out", out], capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message in err
    assert not out.exists()


def test_missing_dataset_exit_2(tmp_path, capsys, monkeypatch):
    tree = {**TINY, "data": {"name": "cifar10", "data_dir": str(tmp_path / "nowhere")}}
    out = tmp_path / "out"
    code, _, err = cli(["run", write_cfg(tmp_path, tree), "--out", out], capsys)
    assert code == 2 and "cifar" in err.lower() and not out.exists()


def test_set_overrides_and_bad_set(tmp_path, capsys):
    cfg = write_cfg(tmp_path, TINY)
    code, _, err = cli(["run", cfg, "--set", "target.macs_ratio=2", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "target.macs_ratio" in err
    code, _, err = cli(["run", cfg, "--set", "novalue", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "dotted.key=value" in err
    code, _, err = cli(["run", tmp_path / "missing.yaml"], capsys)
    assert code == 2 and "not found" in err


def test_corrupt_baseline_checkpoint_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    tree = {**TINY, "baseline": {"checkpoint": str(bad)}, "data": {**TINY["data"], "name": "digits"}}
    code, _, err = cli(["run", write_cfg(tmp_path, tree), "--out", tmp_path / "o"], capsys)
    assert code == 2 and "bad.pt" in err


def test_presets_are_valid_configs():
    from prunekit.config import load_config

    presets = sorted(Path("configs").glob("*.yaml"))
    assert presets
    for p in presets:
        load_config(p)


def test_train_under_torchrun_two_ranks(tmp_path):
    """`prunekit train` launched by torchrun (2 CPU processes, gloo) trains with DDP; rank 0 writes baseline.pt."""
    import os
    import socket
    import subprocess
    import sys

    import torch

    tree = {
        **TINY,
        "data": {"name": "digits", "batch_size": 32},
        "baseline": {"train": {"epochs": 4, "lr": 0.1}},
    }
    cfg = write_cfg(tmp_path, tree)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PRUNEKIT_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(port),
            "-m",
            "prunekit.cli",
            "train",
            str(cfg),
            "--out",
            str(tmp_path / "ddp"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    ck = torch.load(tmp_path / "ddp" / "baseline.pt", weights_only=True)
    assert ck["top1"] > 0.3  # 4 epochs of digits through DDP learn (chance is 0.1)
    log = (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()
    assert log  # written once, by rank 0


def test_config_hash_does_not_depend_on_the_machine(monkeypatch):
    """`round_to: auto` stays "auto" in the config: the same YAML hashes the same on an AVX2 and an AVX-512 machine,
    so a run directory copied between them resumes."""
    from prunekit.config import parse_config
    from prunekit.cost import latency
    from prunekit.pipeline import config_hash

    tree = {**TINY, "method": {"name": "magnitude", "round_to": "auto"}}
    monkeypatch.setattr(latency, "channel_multiple", lambda: 16)
    a = parse_config(tree)
    monkeypatch.setattr(latency, "channel_multiple", lambda: 8)
    b = parse_config(tree)
    assert a.method.round_to == "auto" and config_hash(a) == config_hash(b)
    assert latency.resolve_round_to(b.method.round_to) == 8
