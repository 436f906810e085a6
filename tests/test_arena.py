"""bench/arena.py --smoke: entrants of task 1 end to end on real (tiny) Fashion-MNIST subsets, their cells, the
compute ledger's equal budget and the report (issue #14).

The smoke runs six of the ten entrants (every kind of cell: the dense reference, from-scratch training, pruning the
shared pretraining in prunekit and through torch-pruning, GConv, Scratch-B); MetaPruning, JCW, multistage and
torch-pruning's Taylor pruner go through the same cell code, are checked as configs below, and have their own end-to-end
tests (tests/test_metapruning.py, test_jcw_method.py, test_multistage.py): running them here cost the suite ~2 minutes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
SMOKE = ("dense", "uniform", "magnitude", "tp-magnitude", "gconv", "scratch")


@pytest.mark.skipif(not FMNIST.is_file(), reason="apt-get install dataset-fashion-mnist")
def test_arena_smoke_runs_six_entrants_and_rebuilds_its_report(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from arena_entrants import ENTRANTS
    finally:
        sys.path.pop(0)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PRUNEKIT_NO_PROGRESS": "1"}
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "arena.py"),
        "--smoke",
        "--out",
        str(tmp_path),
        "--only",
        *SMOKE,
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    logs = "\n".join(p.read_text()[-2000:] for p in sorted((tmp_path / "logs").glob("*.log")))
    assert done.returncode == 0 and "failed" not in done.stdout, done.stdout + done.stderr + logs
    cells = {
        p.parent.parent.name: json.loads(p.read_text()) for p in tmp_path.glob("task1/*/seed0/cell.json")
    }
    assert set(cells) == set(SMOKE) and set(SMOKE) <= set(ENTRANTS), sorted(cells)
    ref = cells["dense"]["reference"]["macs"]
    assert cells["dense"]["macs"] == ref  # the dense reference is not pruned
    for name, c in cells.items():
        assert 0.0 < c["top1"] <= 1.0, name
        assert c["reference_epochs_spent"] > 0, name  # the ledger saw its training
        assert c["reference"]["macs"] == ref, name  # every entrant is measured against the same reference
        if name != "dense":
            assert c["macs"] <= 0.26 * ref, (name, c["macs"] / ref)
    # the entrants that prune a trained model were each charged the one shared pretraining, the others nothing
    shared = {n: c["reference_epochs_shared_pretraining"] for n, c in cells.items()}
    assert shared["magnitude"] > 0 and shared["magnitude"] == shared["tp-magnitude"] == shared["gconv"]
    assert shared["uniform"] == shared["scratch"] == shared["dense"] == 0
    assert cells["magnitude"]["reference_epochs_spent"] > shared["magnitude"]
    md = (tmp_path / "arena.md").read_text()
    assert all(ENTRANTS[e].label in md for e in SMOKE)
    assert (tmp_path / "task1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # re-running skips every finished cell and rebuilds the same table
    again = subprocess.run(cmd + ["--report"], env=env, capture_output=True, text=True, timeout=120)
    body = md.split("\n", 1)[1]  # below the command line, which now ends in --report
    assert again.returncode == 0 and (tmp_path / "arena.md").read_text().split("\n", 1)[1] == body


def test_every_entrant_of_every_task_is_a_valid_config_that_plans_the_whole_budget(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from arena import TASKS, task_tree
        from arena_entrants import ENTRANTS, pretrain_tree, tp_split, tree
    finally:
        sys.path.pop(0)
    from prunekit.config import parse_config

    budget = 16.0
    for task in TASKS:
        base = task_tree(task, 1, tmp_path)
        assert base["seed"] == base["data"]["seed"] == 1
        parse_config(pretrain_tree(base, budget))
        for name, e in ENTRANTS.items():
            if e.kind == "tp":
                split = tp_split(budget)
            else:
                final = 0.5078 if name == "multistage" else None
                t, split = tree(name, base, budget, 0.25, str(tmp_path / "baseline.pt"), final)
                cfg = parse_config(t)  # every option exists and validates
                assert cfg.method.name == ("uniform" if name == "dense" else name)
                assert (cfg.baseline.checkpoint is not None) == e.pretrained, name
                # multistage: the stages it will run (1/8 ... 4/8, 0.5078) share its planned epochs
                if name == "jcw":  # its width bounds span the MACs target (the seed's residual 0.9 did not)
                    from arena import _space
                    from prunekit.space import uniform_widths

                    space, cost = _space(base)
                    full = cost.cost().macs
                    ((lo, hi),) = {tuple(b) for b in cfg.method.width_bounds.values()}
                    small, large = (cost.macs(uniform_widths(space, m, round_to=4)) for m in (lo, hi))
                    assert small < 0.25 * full < large, (task, small / full, large / full)
                if name == "multistage":
                    assert cfg.method.final_ratio == final
                    run = 5 * cfg.method.stage.epochs
                    assert run == pytest.approx(split["stages (masked, dense cost)"], rel=1e-3)
            assert sum(split.values()) == pytest.approx(budget), (task, name, split)
