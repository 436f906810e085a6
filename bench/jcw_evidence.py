"""JCW's claim: the joint channel + weight front dominates a channel-only and a weight-only one (issue #13).

Usage:
    OMP_NUM_THREADS=1 python bench/jcw_evidence.py [--config configs/resnet20-jcw.yaml] [--variants joint channels
        weights] [--budgets 0.5 0.65 0.8] [--seeds 0 1 2] [--runtime ort|deepsparse] [--deepsparse-python PY]
        [--out bench/results/jcw] [--set KEY=VALUE ...] [--searches-only] [--no-train] [--remeasure ROUNDS]
        [--time-fronts ROUNDS] [--overwrite] [--smoke]

For one model (``--config``: data, baseline recipe, JCW search settings, member recipe) and one runtime:

1. **One baseline** (``<out>/<runtime>/baseline``, seed 0) that every search starts its supernet from.
2. **Three searches, same search budget** (the preset's supernet, population and generations; seed 0): ``joint``
   (widths and densities), ``channels`` (``method.weights: false``: densities fixed at 1) and ``weights``
   (``method.channels: false``: widths fixed at 1). A search run trains no member (``member`` phases null); its
   front is ``<dir>/front/front.json``; the run's own target is ``latency_ratio: 1``. Latency: one ``prunekit lut
   build --runtime RUNTIME`` table (batch 1, one thread) shared by the three (``deepsparse``: where density buys
   time).
3. **Hypervolume** of each front in (proxy loss, predicted latency / the unpruned model's predicted latency), with one
   reference point for the three (the largest loss of any front x 1.05, ratio 1.05; pymoo's ``HV``). The proxy
   losses of the three come from three supernets trained the same way: comparable as search outcomes, not as
   accuracies.
4. **Members at each budget**: per variant and ``--budgets`` ratio, the front member with the lowest proxy loss whose
   predicted latency ratio is within it, trained with the preset's member recipe (REGULAR -> ADMM -> FT) through the
   ``plan`` method, once per ``--seeds`` seed: test top-1, MACs (dense / effective), params, measured ONNX Runtime
   latency (batch 1 and the export batch) and the member's predicted latency beside the measured one.

Every run is a normal ``prunekit run`` directory; a finished one (same config hash) is skipped, so a killed sweep
resumes; ``--searches-only`` stops after step 3 (the members train in a later call, which reuses the searches).
Members train seed-major (every variant x budget at seed 0, then seed 1, ...), so a sweep stopped part-way still
compares every variant at every budget; ``--no-train`` trains no member and summarises the ones already trained;
``--remeasure R`` re-times every member's architecture beside the unpruned model in R interleaved rounds (both
sides of each ratio from the same round; run it with the machine quiet), in ``--runtime``; ``--time-fronts R`` times
every front member the same way (also with ``--searches-only``): measured vs predicted ratio and a hypervolume on
the measured ratio, cached in ``<out>/<runtime>/front-timing.json``.
Output: ``<out>/<runtime>/summary.{md,json}`` (mean ± std over seeds; a joint-vs-other difference not larger
than the seed-to-seed spread is labelled noise) and ``fronts.png`` (the three fronts). ``--smoke``: tiny data and
search, one seed, one budget; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _study import compare, config_tree, finished, load_avg, mean_std, run_cached, seeded
from prunekit.config import load_config, parse_config
from prunekit.cost.runtimes import machine_signature
from prunekit.io import write_json, write_text
from prunekit.models import parse_spec
from prunekit.pipeline import train_only

VARIANTS = {
    "joint": {},
    "channels": {"weights": False},
    "weights": {"channels": False},
}


def _search_tree(base: dict, variant: str, ckpt: str, lut: str) -> dict:
    t = json.loads(json.dumps(base))
    t["name"] = f"jcw-search-{variant}"
    t["baseline"] = {"checkpoint": ckpt, "train": None}
    # the search's front is the result; any member may be the run's own. A weight-only search's smallest model is
    # no faster than the unpruned one where density buys no time (ONNX Runtime: predicted at 101%), so its run
    # target is MACs (dense MACs are unchanged by density: always met) instead of a latency it cannot reach
    t["target"] = {"macs_ratio": 1.0} if variant == "weights" else {"latency_ratio": 1.0}
    m = {**t["method"], **VARIANTS[variant]}
    m["member"] = {**m.get("member", {}), "regular": None, "admm": None, "ft": None}
    m["latency_lut"] = lut
    t["method"] = m
    return t


def _member_tree(base: dict, plan_file: Path, seed: int, name: str) -> dict:
    t = seeded(json.loads(json.dumps(base)), seed)
    t["name"] = name
    member = base["method"].get("member") or {}
    t["method"] = {"name": "plan", "plan": str(plan_file), "init": "scratch", "train": member}
    t["target"] = None
    return t


def _hypervolume(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    import numpy as np
    from pymoo.indicators.hv import HV

    return float(HV(ref_point=np.asarray(ref))(np.asarray(points, dtype=np.float64))) if points else 0.0


def _front(run_dir: Path) -> tuple[list[dict], float]:
    """The front rows of a search run and the unpruned model's predicted ms (from its report)."""
    front = json.loads((run_dir / "front" / "front.json").read_text())
    return front["members"], float(front["full_ms"])


def _pick(rows: list[dict], full: float, budget: float) -> dict | None:
    ok = [r for r in rows if r["predicted_ms"] <= budget * full * (1 + 1e-9)]
    return min(ok, key=lambda r: r["proxy_loss"]) if ok else None


def _lut(base: dict, out: Path, runtime: str, python: str | None, smoke: bool) -> str:
    """One latency table for every search (``prunekit lut build``, resumable), batch 1, one thread."""
    path = out / f"lut-{runtime}.json"
    data = base["data"]
    gray = data["name"] in ("fashion_mnist", "mnist", "digits")
    size = "28" if gray else str(data.get("image_size") or 32)
    spec = parse_spec(base["model"]).with_options(in_chans=1).to_string() if gray else base["model"]
    cmd = [
        sys.executable,
        "-m",
        "prunekit.cli",
        "lut",
        "build",
        spec,
        "--input-size",
        size,
        "--runtime",
        runtime,
    ]
    cmd += ["--groups", "1", "--points", "2" if smoke else "5", "--out", str(path)]
    # DeepSparse is not monotone in density (BENCHMARKS: d = 0.5 can be slower than d = 1, sparsity pays at d <= 0.3)
    # and JCW's density genes stop at 0.3: measure the bounds' floor and a point between it and 1, not 0.2
    cmd += ["--densities", "1,0.7,0.5,0.3"] if runtime == "deepsparse" and not smoke else []
    cmd += ["--rounds", "1"] if smoke else []
    cmd += ["--deepsparse-python", python] if python and runtime == "deepsparse" else []
    if path.exists() and runtime == "ort":
        table = json.loads(path.read_text())
        here = machine_signature(runtime, 1)
        if table.get("machine") != here:
            # the searches ran on this table; a later session on another CPU trains the members and measures
            # their latency ratios on its own CPU (each row records which): keep the table, do not rebuild it
            print(
                f"  latency table {path} was measured on {table['machine']['cpu']}, this is {here['cpu']}: "
                "kept (the searches used it); measured ratios come from this CPU",
                flush=True,
            )
            return str(path)
    print(f"  latency table: {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, check=True)
    return str(path)


def _plot(fronts: dict[str, tuple[list[dict], float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for v, (rows, full) in fronts.items():
        ax.plot([r["predicted_ms"] / full for r in rows], [r["proxy_loss"] for r in rows], "o-", label=v)
    ax.set_xlabel("predicted latency / unpruned (batch 1)")
    ax.set_ylabel("proxy validation loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/resnet20-jcw.yaml")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.65, 0.8])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--runtime", choices=["ort", "deepsparse"], default="ort")
    ap.add_argument("--deepsparse-python", default=None)
    ap.add_argument("--out", default=None, help="default bench/results/jcw ($TMPDIR/... with --smoke)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument(
        "--searches-only",
        action="store_true",
        help="stop after the searches (fronts, hypervolumes, plot): the members train in a later call",
    )
    ap.add_argument(
        "--no-train",
        action="store_true",
        help="train nothing: summarise the members already trained (a partial sweep)",
    )
    ap.add_argument(
        "--remeasure",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="re-time every trained member's architecture beside the unpruned model in ROUNDS interleaved rounds",
    )
    ap.add_argument(
        "--time-fronts",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="time every front member in the runtime beside the unpruned model (ROUNDS interleaved rounds; quiet "
        "machine): measured vs predicted ratio, hypervolume on the measured ratio",
    )
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.deepsparse_python:  # the searches check a DeepSparse table's signature in that environment too
        os.environ["PRUNEKIT_DEEPSPARSE_PYTHON"] = args.deepsparse_python
    if args.smoke:
        args.seeds, args.budgets = args.seeds[:1], args.budgets[-1:]
    default_out = (
        Path(tempfile.gettempdir()) / "prunekit-jcw-evidence-smoke"
        if args.smoke
        else Path("bench/results/jcw")
    )
    out = Path(args.out or default_out) / args.runtime
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    base = config_tree(load_config(args.config, overrides=args.set))
    # the preset's extra deployments (method.train) are this script's members, trained per seed below; without
    # them the baseline's and the searches' configs are the ones the committed runs were made with
    base["method"].pop("train", None)
    print(f"[baseline] -> {out / 'baseline'}", flush=True)
    train_only(
        parse_config(seeded(base, 0)),
        out / "baseline",
        smoke=args.smoke,
        overwrite=args.overwrite,
        command=command,
    )
    ckpt = str(out / "baseline" / "baseline.pt")
    lut = _lut(base, out, args.runtime, args.deepsparse_python, args.smoke)

    fronts: dict[str, tuple[list[dict], float]] = {}
    searches: dict[str, dict] = {}
    for v in args.variants:
        d = out / f"search-{v}"
        rep, wall, ran = run_cached(
            seeded(_search_tree(base, v, ckpt, lut), 0),
            d,
            f"search {v}",
            overwrite=args.overwrite,
            smoke=args.smoke,
            command=command,
        )
        fronts[v] = _front(d)
        rows, full = fronts[v]
        searches[v] = {
            "wall_s": wall,
            "load_avg": load_avg() if ran else None,
            "front_size": len(rows),
            "front_ratio_range": [
                min(r["predicted_ms"] for r in rows) / full,
                max(r["predicted_ms"] for r in rows) / full,
            ],
            "front_mean_density": sum(r["mean_density"] for r in rows) / len(rows),
            "front_mean_width_ratio": sum(r["mean_width_ratio"] for r in rows) / len(rows),
            **rep["extra"]["search"],
        }
    worst = max(r["proxy_loss"] for rows, _ in fronts.values() for r in rows)
    ref = (worst * 1.05, 1.05)
    hv = {
        v: _hypervolume([(r["proxy_loss"], r["predicted_ms"] / full) for r in rows], ref)
        for v, (rows, full) in fronts.items()
    }
    members: list[dict[str, Any]] = []
    picks = {(v, b): _pick(rows, full, b) for v, (rows, full) in fronts.items() for b in args.budgets}
    for (v, b), m in [] if args.searches_only else picks.items():
        if m is None:
            print(f"  {v} @ {b:g}: no front member within the budget", flush=True)
            members.append({"variant": v, "budget": b, "skipped": "no front member within the budget"})
    # a front member that is the pick of several budgets trains once, in the directory of the first of them
    first = {}
    for (v, b), m in picks.items():
        if m is not None:
            first.setdefault((v, m["file"]), b)
    # seed-major: every variant x budget once before any second seed, so a partial sweep compares them all
    for s in [] if args.searches_only else args.seeds:
        for (v, b), m in picks.items():
            if m is None:
                continue
            b0 = first[(v, m["file"])]
            d = out / f"member-{v}-{b0:g}" / f"seed{s}"
            tree = _member_tree(base, out / f"search-{v}" / "front" / m["file"], s, f"jcw-{v}-{b0:g}-seed{s}")
            tree["baseline"] = {"checkpoint": ckpt, "train": None}
            label = f"member {v} @ {b:g}, seed {s}"
            if args.no_train:
                rep = finished(parse_config(tree), d, args.smoke)
                if rep is None:
                    print(f"  {label}: not trained yet, left out (--no-train)", flush=True)
                    continue
                wall, ran = float(rep["wall_s"].get("total", 0.0)), False
            else:
                rep, wall, ran = run_cached(
                    tree, d, label, overwrite=args.overwrite, smoke=args.smoke, command=command
                )
            full = fronts[v][1]
            p, bl = rep["pruned"], rep["baseline"]
            members.append(
                {
                    "variant": v,
                    "budget": b,
                    "seed": s,
                    "member": m["member"],
                    "trained_for_budget": b0,  # != budget: the same member as that budget's
                    "predicted_ratio": m["predicted_ms"] / full,
                    "mean_density": m["mean_density"],
                    "mean_width_ratio": m["mean_width_ratio"],
                    "top1": p["top1"],
                    "macs": p["macs"],
                    "effective_macs": p.get("effective_macs"),
                    "params": p["params"],
                    "latency_ms": p.get("latency_ms"),
                    "latency_ratio": (p["latency_ms"] / bl["latency_ms"]) if p.get("latency_ms") else None,
                    "latency_ms_batch": p.get("latency_ms_batch"),
                    "wall_s": wall,
                    "load_avg": load_avg() if ran else None,
                    "cpu": (rep.get("machine") or {}).get("cpu")
                    or (machine_signature("ort", 1)["cpu"] if ran else None),
                }
            )
    if args.remeasure and not args.searches_only:
        _remeasure(members, picks, out, args.remeasure, args.runtime)
    timing = (
        _time_fronts(fronts, out, args.runtime, args.time_fronts, args.overwrite) if args.time_fronts else {}
    )
    summary = _summarize(args, hv, ref, fronts, searches, members)
    if timing:
        summary["front_timing"] = _timing_summary(timing, ref)
    write_json(out / "summary.json", summary)
    write_text(out / "summary.md", _markdown(summary, command))
    try:
        _plot(fronts, out / "fronts.png")
    except (ImportError, OSError) as exc:
        print(f"no plot: {exc}", flush=True)
    print(_markdown(summary, command), flush=True)


def _time_plans(files: list[Path], runtime: str, rounds: int) -> list[tuple[float, float]]:
    """``(ratio, noise)`` per plan file: its architecture (the plan applied to a fresh model: sliced channels, and
    the dropped weight blocks of each density zeroed) timed beside the unpruned model in ``rounds`` interleaved
    rounds in ``runtime`` (batch 1, one thread, BN folded as deployed); ratio = median over rounds of plan /
    unpruned in the same round, noise = (slowest - fastest) / median of the plan's rounds.

    ONNX Runtime's dense kernels cost the same whatever the weights; DeepSparse skips zero blocks, and a fresh
    model's zeros sit where a trained member's do in number per layer (the same block count at the same density),
    not in place."""
    from prunekit.cost.predict import paired_ratio, whole_model_rounds
    from prunekit.models import create_model
    from prunekit.space import ChannelSpace, Plan, apply

    if not files:
        return []
    nets, shape = [], None
    for f in files:
        plan = Plan.load(f)
        model = create_model(plan.model).eval()
        shape = tuple(plan.input_shape)
        if not nets:
            nets.append(model)  # the unpruned model first: every ratio's denominator
        nets.append(apply(model, plan, ChannelSpace.build(model, shape, quiet=True)).eval())
    res = whole_model_rounds(nets, shape, (1,), runtime=runtime, threads=1, rounds=rounds)
    full = res[0][1]
    return [(paired_ratio(t[1], full), (max(t[1]) - min(t[1])) / statistics.median(t[1])) for t in res[1:]]


def _remeasure(members: list[dict], picks: dict, out: Path, rounds: int, runtime: str) -> None:
    """Re-time every trained member's architecture beside the unpruned model (:func:`_time_plans`, ``rounds``
    rounds in ``runtime``) and record ``remeasured_ratio`` / ``remeasured_noise`` on each member row (in place).

    A member's own ``latency_ratio`` divides two ONNX Runtime medians timed minutes apart, at the ends of two runs,
    whatever else the machine did in between; here both sides of every ratio come from the same round. Members
    trained in earlier sessions, whose weights are not kept, are re-timed too."""
    # one timing per architecture: budgets that picked the same front member share it
    arch = {
        (m["variant"], m["budget"]): (m["variant"], picks[(m["variant"], m["budget"])]["file"])
        for m in members
        if "top1" in m
    }
    keys = sorted(set(arch.values()))
    if not keys:
        return
    print(
        f"  re-timing {len(keys)} member architectures + the unpruned model, {rounds} rounds ({runtime})",
        flush=True,
    )
    timed = _time_plans([out / f"search-{v}" / "front" / f for v, f in keys], runtime, rounds)
    for key, (ratio, noise) in zip(keys, timed, strict=True):
        for m in members:
            if "top1" in m and arch[(m["variant"], m["budget"])] == key:
                m["remeasured_ratio"], m["remeasured_noise"] = ratio, noise
                m["remeasured_cpu"] = machine_signature("ort", 1)["cpu"]
                m["remeasured_runtime"] = runtime


def _time_fronts(
    fronts: dict, out: Path, runtime: str, rounds: int, overwrite: bool
) -> dict[str, list[dict]]:
    """Every front member of every search timed in ``runtime`` beside the unpruned model (:func:`_time_plans`, one
    interleaved set of rounds for all of them), cached in ``<out>/front-timing.json`` (re-timed only when a front
    changed, or with ``--overwrite``): ``{variant: [{"file", "proxy_loss", "predicted_ratio", "measured_ratio",
    "noise", "mean_density"}]}``."""
    path = out / "front-timing.json"
    want = {v: [r["file"] for r in rows] for v, (rows, _) in fronts.items()}
    if path.exists() and not overwrite:
        old = json.loads(path.read_text())
        if old.get("files") == want and old.get("rounds") == rounds:
            return old["fronts"]
    flat = [(v, r, full) for v, (rows, full) in fronts.items() for r in rows]
    print(f"  timing {len(flat)} front members + the unpruned model, {rounds} rounds ({runtime})", flush=True)
    timed = _time_plans([out / f"search-{v}" / "front" / r["file"] for v, r, _ in flat], runtime, rounds)
    res: dict[str, list[dict]] = {v: [] for v in fronts}
    for (v, r, full), (ratio, noise) in zip(flat, timed, strict=True):
        res[v].append(
            {
                "file": r["file"],
                "proxy_loss": r["proxy_loss"],
                "predicted_ratio": r["predicted_ms"] / full,
                "measured_ratio": ratio,
                "noise": noise,
                "mean_density": r["mean_density"],
            }
        )
    write_json(
        path,
        {
            "runtime": runtime,
            "rounds": rounds,
            "cpu": machine_signature("ort", 1)["cpu"],
            "load_avg": load_avg(),
            "files": want,
            "fronts": res,
        },
    )
    return res


def _summarize(args, hv, ref, fronts, searches, members) -> dict:
    agg = []
    for v in args.variants:
        for b in args.budgets:
            rows = [m for m in members if m["variant"] == v and m["budget"] == b and not m.get("skipped")]
            if not rows:
                continue
            t, ts = mean_std([r["top1"] for r in rows])
            lr, lrs = mean_std([r["latency_ratio"] for r in rows])
            agg.append(
                {
                    "variant": v,
                    "budget": b,
                    "n": len(rows),
                    "top1": t,
                    "top1_std": ts,
                    "latency_ratio": lr,
                    "latency_ratio_std": lrs,
                    "member": rows[0].get("member"),
                    "predicted_ratio": rows[0]["predicted_ratio"],
                    "remeasured_ratio": rows[0].get("remeasured_ratio"),
                    "remeasured_noise": rows[0].get("remeasured_noise"),
                    "mean_density": rows[0]["mean_density"],
                    "mean_width_ratio": rows[0]["mean_width_ratio"],
                }
            )
    comps = []
    for other in ("channels", "weights"):
        if "joint" not in args.variants or other not in args.variants or not members:
            continue
        for b in args.budgets:
            a = {
                m["seed"]: m["top1"]
                for m in members
                if m["variant"] == "joint" and m["budget"] == b and "top1" in m
            }
            o = {
                m["seed"]: m["top1"]
                for m in members
                if m["variant"] == other and m["budget"] == b and "top1" in m
            }
            comps.append({"budget": b, **compare(a, o, "joint", other)})
    joint = fronts.get("joint", ([], 1.0))[0]
    return {
        "runtime": args.runtime,
        "hypervolume": hv,
        "reference_point": list(ref),
        "searches": searches,
        "joint_front_mean_density": (sum(r["mean_density"] for r in joint) / len(joint)) if joint else None,
        "members": members,
        "aggregates": agg,
        "comparisons": comps,
    }


def _timing_summary(timing: dict[str, list[dict]], ref: tuple[float, float]) -> dict[str, dict]:
    """Per variant: the measured ratio range, the median |predicted - measured| / measured and the hypervolume of
    (proxy loss, measured ratio) against the same reference point as the predicted one."""
    out = {}
    for v, rows in timing.items():
        if not rows:
            continue
        meas = [r["measured_ratio"] for r in rows]
        out[v] = {
            "members": len(rows),
            "measured_ratio_range": [min(meas), max(meas)],
            "median_abs_error": statistics.median(
                abs(r["predicted_ratio"] - r["measured_ratio"]) / r["measured_ratio"] for r in rows
            ),
            "median_noise": statistics.median(r["noise"] for r in rows),
            "hypervolume_measured": _hypervolume([(r["proxy_loss"], r["measured_ratio"]) for r in rows], ref),
        }
    return out


def _markdown(s: dict, command: str) -> str:
    lines = [
        f"`{command}`",
        "",
        f"Runtime: {s['runtime']}.",
        "",
        "| front | hypervolume | members | predicted latency ratio | mean density | mean width | search wall |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for v, h in s["hypervolume"].items():
        q = s["searches"][v]
        lo, hi = q["front_ratio_range"]
        lines.append(
            f"| {v} | {h:.4f} | {q['front_size']} | {lo:.2f}-{hi:.2f} | {q['front_mean_density']:.2f} | "
            f"{q['front_mean_width_ratio']:.2f} | {q['wall_s']:.0f} s |"
        )
    lines += [
        "",
        f"Reference point (proxy loss, latency ratio): {s['reference_point'][0]:.3f}, {s['reference_point'][1]:.2f}.",
        f"Joint front mean density: {s['joint_front_mean_density']:.3f}."
        if s["joint_front_mean_density"]
        else "",
    ]
    if s.get("front_timing"):
        lines += [
            "",
            f"Every front member timed in {s['runtime']} beside the unpruned model (`--time-fronts`, interleaved "
            "rounds, batch 1, one thread):",
            "",
            "| front | members | measured latency ratio | median \\|predicted - measured\\| / measured | noise (median) | "
            "hypervolume (measured ratio) |",
            "|---|---:|---|---:|---:|---:|",
        ]
        for v, t in s["front_timing"].items():
            lo, hi = t["measured_ratio_range"]
            lines.append(
                f"| {v} | {t['members']} | {lo:.2f}-{hi:.2f} | {t['median_abs_error']:.1%} | "
                f"{t['median_noise']:.1%} | {t['hypervolume_measured']:.4f} |"
            )
    if not s["aggregates"]:
        return "\n".join(lines + ["", "No members trained yet."]) + "\n"
    lines += [
        "",
        "| variant | budget | member | n | top-1 | measured latency ratio (per run) | re-timed ratio (interleaved; noise) | "
        "predicted ratio | mean density | mean width |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for a in s["aggregates"]:
        again = (
            f"{a['remeasured_ratio']:.3f} ({a['remeasured_noise']:.0%})"
            if a.get("remeasured_ratio") is not None
            else "–"
        )
        lines.append(
            f"| {a['variant']} | {a['budget']:g} | {a.get('member', '–')} | {a['n']} | {100 * a['top1']:.2f} ± {100 * a['top1_std']:.2f} | "
            f"{_f(a['latency_ratio'])} ± {_f(a['latency_ratio_std'])} | {again} | {a['predicted_ratio']:.3f} | "
            f"{a['mean_density']:.2f} | {a['mean_width_ratio']:.2f} |"
        )
    lines += ["", "| budget | joint vs | Δ top-1 (pp) | spread | verdict |", "|---:|---|---:|---:|---|"]
    for c in s["comparisons"]:
        lines.append(
            f"| {c['budget']:g} | {c['b']} | {_f(100 * c['diff_mean'], '+.2f')} | {_f(100 * c['spread'], '.2f')} | {c['verdict']} |"
        )
    return "\n".join(lines) + "\n"


def _f(x: float | None, spec: str = ".3f") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


if __name__ == "__main__":
    main()
