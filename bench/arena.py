"""The arena (issue #14): every method on the same compute budget, three seeds, one table and one plot per task.

Usage:
    OMP_NUM_THREADS=1 python bench/arena.py [--task 1 2 3] [--only ENTRANT ...] [--seeds 0 1 2] [--jobs 2]
        [--budget 16] [--out bench/results/arena] [--smoke] [--report]

Tasks (Fashion-MNIST, the presets' data: 10% of the training split held out for validation):

1. ResNet-20 at 25% of the reference MACs (10,000 training images);
2. ResNet-20 at half the reference's ONNX Runtime latency (batch 1, one thread), predicted from a latency table
   built on this machine (``prunekit lut build``, into ``OUT/lut/``; JCW's search reads the same table) and
   measured at the end; entrants
   without a latency budget of their own get the MACs ratio uniform width reaches under the table's prediction;
3. MobileNetV2 (width 0.5, stem stride 1: the presets' CPU width) at 50% of the MACs (10,000 training images).

Entrants (``bench/arena_entrants.py``): the dense reference, uniform width from scratch, magnitude, multistage,
pruning from scratch, MetaPruning, JCW (channels only), GConv search, and torch-pruning 1.6's MagnitudePruner and
Taylor-importance MetaPruner through prunekit's finetune loop (``bench/arena_tp.py``).

**Equal budget**: every entrant gets ``--budget`` reference epochs (one training epoch of the reference model on
the task's training images): pretraining, supernet / gate / PruningNet training, search evaluations and finetuning
together, an epoch of a net with half the MACs counting half. The split is planned per entrant (``arena_entrants``)
and what each phase really spent is measured by prunekit's compute ledger (:mod:`prunekit.train.compute`, training
= 3x forward MACs) and reported beside it. The plan counts training passes (and a search's forward passes); the
validation after each training epoch comes on top, in "spent" and its "of which forward" part: 6,000 validation
images after an epoch on 10,000 training images cost 6,000 / (3 x 10,000) = 0.2 of that epoch, so an entrant
that validates after every epoch spends ~1.2x its planned training (16 planned -> ~19.2 spent), the same share for
every entrant that does. The pretraining is shared by the entrants that prune a trained model
(one per task and seed; charged to each). **Sizing** (measured, one torch thread, the other core busy): a pruned
net does not run as much faster as its MACs fall (ResNet-20 at 25% of the MACs trains at ~660 img/s, the reference
at ~340), so a cell's wall time is not its budget: ``uniform`` of task 1 on 20,000 images (64 epochs of the small
net) took 44.5 min, 4x the issue's ~10. Tasks 1 and 2 therefore use 10,000 training images: 16 reference epochs are
~160,000 reference image passes, ~7 min for the reference entrant and ~15-20 min for ``uniform`` on one busy thread.

A cell's wall time is its run's elapsed time (``wall_s``) less ``paused_s``, which a cell.json carries when its
process was stopped (SIGSTOP, to give a timing job a quiet machine) for that long.

Each entrant x task x seed is its own resumable run directory (``OUT/task<N>/<entrant>/seed<S>``, finished when its
``cell.json`` is there); ``--jobs 2`` runs two at a time (one torch thread each); ``--report`` rebuilds
``OUT/arena.{md,json}`` and ``OUT/task<N>.png`` from the directories; ``--smoke`` runs every entrant of task 1 (or
of the ``--task`` given) end to end on tiny data (``prunekit run --smoke``) into a temporary directory.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from _study import config_tree, mean_std, run_cached, seeded
from arena_entrants import ENTRANTS, ROUND_TO, pretrain_tree, tp_finetune, tp_split, tree
from prunekit.io import write_json, write_text

ROOT = Path(__file__).resolve().parents[1]

TASKS = {
    1: {
        "title": "ResNet-20, 25% of the MACs",
        "model": "resnet20",
        "subset_train": 10000,
        "target": {"macs_ratio": 0.25},
    },
    2: {
        "title": "ResNet-20, half the ONNX Runtime latency (batch 1, one thread)",
        "model": "resnet20",
        "subset_train": 10000,
        "target": {"latency_ratio": 0.5},
    },
    3: {
        "title": "MobileNetV2 (x0.5, stem stride 1), 50% of the MACs",
        "model": "mobilenet_v2:width_mult=0.5,stem_stride=1",
        "subset_train": 10000,
        "target": {"macs_ratio": 0.5},
    },
}


# ---------------------------------------------------------------------------------------------- configs
def task_tree(task: int, seed: int, out: Path, smoke: bool = False) -> dict:
    """The task's base config tree (model, data, target, export), seeded; ``smoke``: no ONNX export and no latency
    measurement (the smoke run checks that every entrant runs, not what it measures)."""
    t = TASKS[task]
    target = dict(t["target"])
    if "latency_ratio" in target:
        target["latency_lut"] = str(lut_path(out, task))
        # the smoke table (2 points, 1 round) puts its floor near 0.5: smoke checks plumbing, not numbers
        if smoke:
            target["latency_ratio"] = 0.8
    base = {
        "name": f"arena-task{task}",
        "model": t["model"],
        "seed": seed,
        "data": {
            "name": "fashion_mnist",
            "val_fraction": 0.1,
            "subset_train": t["subset_train"],
            "batch_size": 128,
            "eval_batch_size": 256,
        },
        "baseline": {"train": None},
        "target": target,
        "method": {"name": "uniform"},
        "finetune": None,
        "export": {"onnx": not smoke, "latency": not smoke, "latency_threads": 1, "latency_batch": 64},
    }
    if smoke:  # smaller still than prunekit's smoke subsets: ten entrants must run in a few minutes
        base["data"].update(subset_train=600, subset_val=200, subset_test=300)
    from prunekit.config import parse_config

    return seeded(config_tree(parse_config(base)), seed)


def _space(tree_: dict):
    """``(channel space, cost model)`` of a task tree's model (built once per model and data config)."""
    return _space_of(json.dumps({"model": tree_["model"], "data": tree_["data"]}, sort_keys=True))


@functools.cache
def _space_of(key: str):
    from prunekit.config import parse_config
    from prunekit.cost.macs import CostModel
    from prunekit.data import build_data
    from prunekit.models import create_model
    from prunekit.pipeline import resolved_spec
    from prunekit.space import ChannelSpace

    tree_ = {**json.loads(key), "target": {"macs_ratio": 1.0}, "method": {"name": "uniform"}}
    cfg = parse_config(tree_)
    data = build_data(cfg.data)
    shape = (1, data.in_chans, data.input_size, data.input_size)
    space = ChannelSpace.build(create_model(resolved_spec(cfg, data)), shape, quiet=True)
    return space, CostModel(space)


def macs_ratio(task: int, tree_: dict) -> float:
    """The MACs ratio ``r`` an entrant of ``task`` is expected to reach: the MACs target, or (latency task) the
    MACs ratio of the widest uniform width (rounded to the channel multiple) predicted to meet the latency ratio."""
    target = TASKS[task]["target"]
    if "macs_ratio" in target:
        return float(target["macs_ratio"])
    from prunekit.cost.predict import LatencyModel
    from prunekit.space import uniform_widths

    space, cost = _space(tree_)
    lm = LatencyModel.load(tree_["target"]["latency_lut"], space)
    full, step = lm(space.channels), ROUND_TO
    lo, hi = 0.05, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        if lm(uniform_widths(space, mid, round_to=step)) <= target["latency_ratio"] * full:
            lo = mid
        else:
            hi = mid
    w = uniform_widths(space, lo, round_to=step)
    return float(cost.macs(w)) / float(cost.cost().macs)


def multistage_ratio(tree_: dict, r: float) -> float:
    """The per-group channel ratio removed whose per-layer (same ratio everywhere) model has MACs <= ``r`` x the
    reference (bisection on the cost model)."""
    from prunekit.space import uniform_widths

    space, cost = _space(tree_)
    full = cost.cost().macs
    lo, hi = 0.0, 0.99
    for _ in range(30):
        mid = (lo + hi) / 2
        if float(cost.macs(uniform_widths(space, 1 - mid, round_to=1))) <= r * full:
            hi = mid
        else:
            lo = mid
    return round(hi, 4)


def lut_path(out: Path, task: int) -> Path:
    """The latency table of the task's model (shared by the tasks of one model)."""
    return out / "lut" / (TASKS[task]["model"].replace(":", "-").replace(",", "-").replace("=", "") + ".json")


def lut_for(task: int, out: Path, entrants: list[str], smoke: bool) -> None:
    """Build the latency table of the task's model once (``prunekit lut build``, resumable) when the task has a
    latency target or JCW runs (its search objective is predicted latency)."""
    if "latency_ratio" not in TASKS[task]["target"] and "jcw" not in entrants:
        return
    path = lut_path(out, task)
    if path.is_file():
        from prunekit.cost.lut import load_table

        if load_table(path).complete:
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = TASKS[task]["model"] + (",in_chans=1" if ":" in TASKS[task]["model"] else ":in_chans=1")
    cmd = [sys.executable, "-m", "prunekit.cli", "lut", "build", spec, "--input-size", "28", "--batch", "1"]
    grid = (
        ["--points", "2", "--rounds", "1", "--groups", "1,2,4"]
        if smoke
        else ["--points", "7", "--groups", "1,2,4"]
    )
    cmd += [*grid, "--densities", "1", "--out", str(path)]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


# ---------------------------------------------------------------------------------------------- cells
def cell_dir(out: Path, task: int, entrant: str, seed: int) -> Path:
    return out / f"task{task}" / entrant / f"seed{seed}"


def pretrain(out: Path, task: int, seed: int, budget: float, smoke: bool, command: str) -> Path:
    """The shared pretraining of ``task`` / ``seed`` (``prunekit train``; resumable): its directory."""
    from prunekit.config import parse_config
    from prunekit.pipeline import train_only

    d = out / f"task{task}" / "pretrain" / f"seed{seed}"
    if not (d / "baseline.pt").is_file():
        train_only(
            parse_config(pretrain_tree(task_tree(task, seed, out), budget)), d, smoke=smoke, command=command
        )
    return d


def _reference_epochs(d: Path, reference_macs: float, train_images: int) -> tuple[float, float]:
    """What the shared pretraining spent, in reference epochs (its compute ledger): ``(total, of which forward
    passes)``."""
    from prunekit.train.compute import Ledger

    s = Ledger(d / "compute.json").summary(reference_macs, train_images)
    return float(s["reference_epochs"]), forward_epochs(s)


def forward_epochs(compute: dict) -> float:
    """The forward-only part of a ``compute`` summary in reference epochs (its ``forward_reference_epochs``,
    :meth:`prunekit.train.compute.Ledger.summary`; worked out from the phases for cells written before the summary
    reported it)."""
    if "forward_reference_epochs" in compute:
        return float(compute["forward_reference_epochs"])
    ref, n = float(compute.get("reference_macs") or 0.0), int(compute.get("train_images") or 0)
    if ref <= 0 or n <= 0:
        return 0.0
    excluded = set(compute.get("excluded") or ())
    fwd = sum(
        p.get("forward_macs", 0.0) for k, p in (compute.get("phases") or {}).items() if k not in excluded
    )
    return fwd / (float(compute.get("train_factor") or 3.0) * ref * n)


def run_cell(out: Path, task: int, entrant: str, seed: int, budget: float, smoke: bool, command: str) -> dict:
    """Run one entrant x task x seed (skipped when finished) and write its ``cell.json`` row."""
    d = cell_dir(out, task, entrant, seed)
    done = d / "cell.json"
    if done.is_file():
        return json.loads(done.read_text())
    from prunekit.config import parse_config

    e = ENTRANTS[entrant]
    t0 = time.perf_counter()
    base = task_tree(task, seed, out, smoke)
    r = macs_ratio(task, base)
    if not e.latency_budget and base["target"].get("latency_ratio"):
        base["target"] = {"macs_ratio": round(r, 4)}  # the latency task's MACs proxy
    pre = pretrain(out, task, seed, budget, smoke, command) if e.pretrained else None
    if e.kind == "tp":
        from arena_tp import run_tp

        cfg = parse_config(base)
        if smoke:
            from prunekit.pipeline import smoke_config

            cfg = smoke_config(cfg)
        _, cost = _space(base)
        rep = run_tp(
            entrant, cfg, pre, d, r * cost.cost().macs, tp_finetune(budget, r), steps=7 if smoke else 14
        )
        split = tp_split(budget)
    else:
        final = multistage_ratio(base, r) if entrant == "multistage" else None
        tr, split = tree(entrant, base, budget, r, str(pre / "baseline.pt") if pre else None, final)
        if entrant == "jcw":
            tr["method"]["latency_lut"] = str(lut_path(out, task))
        rep, _, _ = run_cached(tr, d, entrant, overwrite=False, smoke=smoke, command=command)
    comp = rep.get("compute") or {}
    shared = shared_fwd = 0.0
    if pre is not None:
        shared, shared_fwd = _reference_epochs(
            pre, comp.get("reference_macs", 0.0), comp.get("train_images", 0)
        )
    spent = float(comp.get("reference_epochs") or 0.0) + shared
    row = {
        "task": task,
        "entrant": entrant,
        "label": e.label,
        "seed": seed,
        "rounding": e.rounding,
        "budget": "latency x{:g} (predicted)".format(base["target"]["latency_ratio"])
        if base["target"].get("latency_ratio")
        else f"MACs x{r:.3f}",
        "top1": rep["pruned"]["top1"],
        "macs": rep["pruned"]["macs"],
        "params": rep["pruned"]["params"],
        "latency_ms": rep["pruned"].get("latency_ms"),
        "latency_ms_batch": rep["pruned"].get("latency_ms_batch"),
        "reference": {
            k: rep["baseline"].get(k) for k in ("macs", "params", "latency_ms", "latency_ms_batch")
        },
        "reference_epochs_planned": split,
        "reference_epochs_spent": spent,
        "reference_epochs_shared_pretraining": shared,
        "reference_epochs_forward": forward_epochs(comp) + shared_fwd,
        "wall_s": time.perf_counter() - t0,
    }
    write_json(done, row)
    return row


# ---------------------------------------------------------------------------------------------- report
def _rows(out: Path) -> list[dict]:
    rows = []
    for p in sorted(out.glob("task*/*/seed*/cell.json")):
        row = json.loads(p.read_text())
        if "reference_epochs_forward" not in row:  # a cell from before the split was recorded
            row["reference_epochs_forward"] = _forward_of(p.parent, row)
        rows.append(row)
    return rows


def _forward_of(d: Path, row: dict) -> float:
    comp = json.loads((d / "report.json").read_text()).get("compute") or {}
    fwd = forward_epochs(comp)
    if row.get("reference_epochs_shared_pretraining"):
        pre = d.parents[1] / "pretrain" / d.name
        fwd += _reference_epochs(pre, comp.get("reference_macs", 0.0), comp.get("train_images", 0))[1]
    return fwd


def _ms(xs: list) -> str:
    m, s = mean_std(xs)
    return "–" if np.isnan(m) else f"{m:.2f} ± {s:.2f}"


def _ratios(er: list[dict], key: str) -> list[float]:
    """Each cell's latency over its reference's, both timed in the same interleaved rounds at the end of the cell:
    the machine's speed drifts by up to 2x between cells run hours apart on a shared 2-core VM, the ratio much
    less."""
    return [r[key] / r["reference"][key] for r in er if r.get(key) and (r.get("reference") or {}).get(key)]


def report(out: Path, command: str) -> str:
    """Rebuild ``OUT/arena.{md,json}`` and one plot per task from the cells."""
    rows = _rows(out)
    lines = [f"`{command}`", ""]
    summary: dict = {}
    for task, spec in TASKS.items():
        trows = [r for r in rows if r["task"] == task]
        if not trows:
            continue
        uni = {r["seed"]: r["top1"] for r in trows if r["entrant"] == "uniform"}
        lines += [f"### Task {task}: {spec['title']}", ""]
        lines += [
            "| entrant | seeds | top-1 % | Δ vs uniform (paired) | MACs M | params K | ORT b1 ms | ORT b1 x ref "
            "| ORT b64 ms | ORT b64 x ref | ref. epochs spent (of which forward) | planned split | budget | rounding "
            "| wall min |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|---:|",
        ]
        summary[task] = {}
        for name in ENTRANTS:
            er = [r for r in trows if r["entrant"] == name]
            if not er:
                continue
            diffs = [100 * (r["top1"] - uni[r["seed"]]) for r in er if r["seed"] in uni]
            split = ", ".join(f"{k} {v:.1f}" for k, v in er[0]["reference_epochs_planned"].items())
            lines.append(
                f"| {er[0]['label']} | {len(er)} | {_ms([100 * r['top1'] for r in er])} | "
                f"{_ms(diffs) if name != 'uniform' else '–'} | {_ms([r['macs'] / 1e6 for r in er])} | "
                f"{_ms([r['params'] / 1e3 for r in er])} | {_ms([r['latency_ms'] for r in er])} | "
                f"{_ms(_ratios(er, 'latency_ms'))} | {_ms([r['latency_ms_batch'] for r in er])} | "
                f"{_ms(_ratios(er, 'latency_ms_batch'))} | {_ms([r['reference_epochs_spent'] for r in er])} "
                f"({_ms([r['reference_epochs_forward'] for r in er])}) | "
                f"{split} | {er[0]['budget']} | {er[0]['rounding']} | {_ms([(r['wall_s'] - r.get('paused_s', 0.0)) / 60 for r in er])} |"
            )
            summary[task][name] = er
        lines.append("")
        _plot(out / f"task{task}.png", spec["title"], summary[task])
        lines += [f"![task {task}](task{task}.png)", ""]
    md = "\n".join(lines) + "\n"
    write_text(out / "arena.md", md)
    write_json(out / "arena.json", {"command": command, "tasks": {str(k): v for k, v in summary.items()}})
    return md


def _plot(path: Path, title: str, by_entrant: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, er in by_entrant.items():
        lat = _ratios(er, "latency_ms")
        top = [100 * r["top1"] for r in er]
        if not lat:
            continue
        ax.errorbar(
            np.mean(lat), np.mean(top), xerr=np.std(lat), yerr=np.std(top), fmt="o", capsize=3, label=name
        )
    ax.set_xlabel("ONNX Runtime latency / the reference's, batch 1, one thread (timed together)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    else:  # nothing timed (--smoke): an empty plot says so
        ax.text(0.5, 0.5, "no latency measured", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------- main
def _job(args, out: Path, command: str, task: int, entrant: str, seed: int) -> None:
    """One job: the shared pretraining (``entrant == "pretrain"``) or a cell."""
    if entrant == "pretrain":
        pretrain(out, task, seed, args.budget, args.smoke, command)
    else:
        run_cell(out, task, entrant, seed, args.budget, args.smoke, command)


def _cell_here(args, out: Path, command: str, task: int, entrant: str, seed: int) -> int:
    """Run one job in this process; a failure is reported (with its traceback in the log) and counted."""
    import traceback

    log = out / "logs" / f"task{task}-{entrant}-seed{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[task {task}] {entrant} seed {seed}", flush=True)
    try:
        _job(args, out, command, task, entrant, seed)
    except (Exception, SystemExit):
        log.write_text(traceback.format_exc())
        print(f"[task {task}] {entrant} seed {seed}: FAILED (see {log})", flush=True)
        return 1
    print(f"[task {task}] {entrant} seed {seed}: done", flush=True)
    return 0


def _cell_subprocess(args, task: int, entrant: str, seed: int) -> int:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--cell", str(task), entrant, str(seed)]
    cmd += ["--out", str(args.out), "--budget", str(args.budget)] + (["--smoke"] if args.smoke else [])
    log = Path(args.out) / "logs" / f"task{task}-{entrant}-seed{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        print(f"[task {task}] {entrant} seed {seed} -> {log}", flush=True)
        rc = subprocess.run(
            cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}
        ).returncode
    print(
        f"[task {task}] {entrant} seed {seed}: {'done' if rc == 0 else f'FAILED (exit {rc}, see {log})'}",
        flush=True,
    )
    return rc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--task", type=int, nargs="+", default=None, choices=list(TASKS), help="default: all (smoke: 1)"
    )
    ap.add_argument("--only", nargs="+", default=list(ENTRANTS), choices=list(ENTRANTS), metavar="ENTRANT")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--budget", type=float, default=16.0, help="reference epochs per entrant (default 16)")
    ap.add_argument("--out", default=None, help="default bench/results/arena ($TMPDIR/... with --smoke)")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--report", action="store_true", help="only rebuild the tables and plots")
    ap.add_argument("--cell", nargs=3, metavar=("TASK", "ENTRANT", "SEED"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.smoke:
        args.task, args.seeds, args.budget = args.task or [1], [0], min(args.budget, 2.0)
    args.task = args.task or list(TASKS)
    if args.out is None:
        args.out = (
            tempfile.mkdtemp(prefix="arena-smoke-") if args.smoke else str(ROOT / "bench/results/arena")
        )
    out = Path(args.out)
    command = "python bench/arena.py " + " ".join(a for a in sys.argv[1:] if not a.startswith("--cell"))
    if args.cell:
        task, entrant, seed = int(args.cell[0]), args.cell[1], int(args.cell[2])
        _job(args, out, command, task, entrant, seed)
        return
    codes: list[int] = []
    if not args.report:
        for task in args.task:
            lut_for(task, out, args.only, args.smoke)
        needs = [
            (t, s) for t in args.task for s in args.seeds if any(ENTRANTS[e].pretrained for e in args.only)
        ]
        cells = [(t, e, s) for t in args.task for s in args.seeds for e in args.only]
        jobs = [(t, "pretrain", s) for t, s in needs] + cells  # the shared pretrainings first
        if args.jobs <= 1:  # in this process, one after another
            codes = [_cell_here(args, out, command, *c) for c in jobs]
        else:  # each job a subprocess with one torch thread; two cells of one task and seed never pretrain at once
            with ThreadPoolExecutor(max_workers=args.jobs) as pool:
                codes = list(pool.map(lambda c: _cell_subprocess(args, *c), jobs[: len(needs)]))
                codes += list(pool.map(lambda c: _cell_subprocess(args, *c), cells))
        if any(codes):
            print(
                f"{sum(1 for c in codes if c)} cell(s) failed; rerun the same command to retry them",
                flush=True,
            )
    print(report(out, command), flush=True)
    print(f"-> {out / 'arena.md'}", flush=True)
    if not args.report and any(codes):
        sys.exit(1)  # the tables hold the cells that finished; a failed cell fails the command


if __name__ == "__main__":
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    main()
