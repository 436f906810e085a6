"""GConv (dense convs -> group convs, Zhao & Luk) vs channel pruning at the same params and latency, plus its ablation.

Usage:
    python bench/gconv_evidence.py [--configs configs/resnet20-params-budget.yaml configs/resnet56-scratch.yaml]
        [--gconv-config configs/resnet20-gconv-search.yaml] [--seeds 0 1 2] [--params-ratio 0.5] [--groups 2]
        [--ablation-groups 4] [--magnitude-round-to auto] [--out bench/results/gconv] [--set KEY=VALUE ...]
        [--overwrite] [--smoke]

Zhao & Luk ("Efficient Structured Pruning and Architecture Searching for Group Convolution", arXiv 1811.09341; method
``gconv``) turn every dense conv into a ``G``-group conv by keeping ``G`` diagonal blocks of kernels under channel
permutations. Two claims are tested, on every model of ``--configs`` (default: Fashion-MNIST ResNet-20 at full width
and ResNet-56 at width 0.5, the data, baseline recipe and export blocks of those presets) and every seed:

1. **GConv vs channel pruning.** ``gconv`` with the paper's group search (``search: true``, ``MAX_COST``, under
   ``target: {params_ratio: --params-ratio}``) and with one ``G`` everywhere (``groups: --groups``) against
   ``magnitude`` channel pruning (global L1 filter ranking, ``round_to: --magnitude-round-to``) at the **same params**
   (``target: {params_ratio: R}``, ``R`` the gconv run's achieved params ratio read from its ``report.json``) and at
   the **same measured latency** (``target: {latency_ratio: L}``, ``L`` the gconv run's paired ONNX Runtime batch-1
   latency ratio from its report; skipped, with the reason, when ``L >= 1``: then the unpruned model is already as
   fast). Reported: test top-1, params, MACs, ONNX Runtime latency at batch 1 and at ``export.latency_batch``.
2. **The permutation ablation** (paper §4): ``heuristic: grps`` vs ``sort`` vs ``same`` at ``groups:
   --ablation-groups`` everywhere: the mean kept criterion mass (``report.json`` -> ``extra.mean_kept_fraction``,
   over every regroupable conv, dense ones counting 1) and test top-1 after the same finetuning.

It also answers whether grouped convs are actually faster on this CPU: every gconv run's latency ratio (batch 1 and
batch ``export.latency_batch``) beside its params and MACs ratios, and the permutation gathers it needed.

The gconv method options (criterion, ``min_factor``, ``exclude``, ``recovery``, ...) come from ``--gconv-config``
(default the ResNet-20 search preset); the uniform-``G`` runs drop ``search`` / ``search_cost`` / ``min_factor``
like ``configs/resnet20-gconv-g2.yaml`` / ``-g4.yaml``. Every pruned run is finetuned with the model config's
``finetune`` recipe, or the gconv config's (the paper's fine-tune shape) where the model config has none
(``resnet56-scratch`` trains from scratch). ``--set`` overrides apply to every ``--configs`` file.

Seeds set ``seed``, ``data.seed`` (validation split, shuffling, augmentation) and every recipe's ``seed``; each
(model, seed) trains **one baseline** (``<out>/<model>/seed<s>/baseline``, ``prunekit train``) that every pruned run
of that pair loads through ``baseline.checkpoint``. Runs go one at a time; each is a normal ``prunekit run``
directory under ``<out>/<model>/seed<s>/`` and a finished one (``report.json`` of the same config) is skipped, so a
killed sweep resumes where it stopped (``--overwrite`` starts every run afresh). ``--smoke`` keeps the first config
and the first seed, shrinks everything (``prunekit run --smoke``: tiny subsets, at most one epoch per phase; no
``model.onnx`` file, latency is still measured) and writes under ``$TMPDIR/prunekit-gconv-evidence-smoke`` unless
``--out`` is given; its numbers mean nothing.

Output: ``<out>/summary.md`` (the tables printed at the end: mean ± std over seeds; a difference not larger than the
seed-to-seed spread, the larger of the two standard deviations, is labelled noise) and ``<out>/summary.json`` (every
run's numbers, the aggregates and the comparisons).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from _study import compare, config_tree, load_avg, mean_std, run_cached, seeded
from prunekit.config import load_config, parse_config
from prunekit.errors import PrunekitError
from prunekit.io import write_json, write_text
from prunekit.pipeline import train_only

HEURISTICS = ("grps", "sort", "same")


# ---------------------------------------------------------------------------------------------- configs
def _tag(spec: str) -> str:
    """A directory name for a model spec (``resnet56:width_mult=0.5`` -> ``resnet56-width_mult-0.5``)."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", spec).strip("-")


def _floor(x: float, digits: int = 6) -> float:
    """``x`` rounded down (a target at most the gconv run's value, readable in config.yaml)."""
    return math.floor(x * 10**digits) / 10**digits


# ---------------------------------------------------------------------------------------------- runs
def _run(tree: dict, d: Path, label: str, args: argparse.Namespace, command: str) -> tuple[dict, float, bool]:
    """The run's report, its wall seconds and whether it ran now (False: finished before, skipped)."""
    rep, wall, ran = run_cached(tree, d, label, overwrite=args.overwrite, smoke=args.smoke, command=command)
    if ran:
        r = _metrics(rep)
        print(
            f"  {label}: done in {wall:.0f} s: top-1 {100 * r['top1']:.2f}% (baseline {100 * r['baseline_top1']:.2f}%), "
            f"params x{r['params_ratio']:.3f}, MACs x{r['macs_ratio']:.3f}, latency b1 x{r['latency_ratio']:.3f}",
            flush=True,
        )
    return rep, wall, ran


def _metrics(rep: dict) -> dict:
    b, p = rep["baseline"], rep["pruned"]
    lat, latb = p.get("latency_ms"), p.get("latency_ms_batch")
    ex = rep.get("extra", {})
    go = ex.get("gather_overhead") or {}
    return {
        "top1": p["top1"],
        "val_top1": p.get("val_top1"),
        "params": p["params"],
        "macs": p["macs"],
        "latency_ms": lat,
        "latency_ms_batch": latb,
        "latency_batch": p.get("latency_batch"),
        "baseline_top1": b["top1"],
        "baseline_params": b["params"],
        "baseline_macs": b["macs"],
        "baseline_latency_ms": b.get("latency_ms"),
        "baseline_latency_ms_batch": b.get("latency_ms_batch"),
        "params_ratio": p["params"] / b["params"],
        "macs_ratio": p["macs"] / b["macs"],
        "latency_ratio": lat / b["latency_ms"] if lat and b.get("latency_ms") else None,
        "latency_ratio_batch": latb / b["latency_ms_batch"] if latb and b.get("latency_ms_batch") else None,
        "constraints": [
            {k: c.get(k) for k in ("metric", "ratio_of_baseline", "achieved_ratio", "met")}
            for c in rep.get("constraints") or []
        ],
        "targets_met": all(c.get("met") for c in rep.get("constraints") or []),
        "mean_kept_fraction": ex.get("mean_kept_fraction"),
        "regrouped": ex.get("regrouped"),
        "regroupable": ex.get("regroupable"),
        "gathers": go.get("gathers"),
        "gather_overhead": go.get("overhead"),
    }


def run_pair(args, base: dict, gmethod: dict, model: str, seed: int, command: str) -> list[dict]:
    """Every run of one (model, seed): baseline, gconv search / uniform G, magnitude at their params and latency,
    the heuristic ablation. One row per pruned run (or a skipped row with its reason)."""
    tree = seeded(base, seed)
    root = Path(args.out) / _tag(model) / f"seed{seed}"
    print(f"[{model}, seed {seed}] baseline -> {root / 'baseline'}", flush=True)
    t0 = time.perf_counter()
    train_only(
        parse_config(tree), root / "baseline", smoke=args.smoke, overwrite=args.overwrite, command=command
    )
    print(f"  baseline ready ({time.perf_counter() - t0:.0f} s)", flush=True)
    ckpt = str(root / "baseline" / "baseline.pt")

    def pruned(name: str, method: dict, target: dict | None) -> dict:
        t = json.loads(json.dumps(tree))
        t["name"] = f"{_tag(model)}-{name}-seed{seed}"
        t["baseline"] = {"checkpoint": ckpt, "train": None}
        t["method"] = method
        t["target"] = target
        return t

    rows: list[dict] = []

    def add(key: str, label: str, kind: str, t: dict, **info) -> dict:
        rep, wall, ran = _run(t, root / key, f"{key} ({label})", args, command)
        row = {"model": model, "seed": seed, "key": key, "label": label, "kind": kind, **info}
        row.update(
            _metrics(rep),
            wall_s=wall,
            resumed=not ran,
            load_avg=load_avg() if ran else None,
            dir=str(root / key),
        )
        rows.append(row)
        return row

    search = {
        **gmethod,
        "search": True,
        "groups": None,
        "mcpg": None,
        "group_config": None,
    }
    uniform = {
        k: v for k, v in gmethod.items() if k not in ("search", "search_cost", "min_factor", "groups", "mcpg")
    }
    uniform["group_config"] = None
    gconv_runs = [
        (
            "gconv-search",
            f"gconv search, params <= {args.params_ratio:g}",
            pruned("gconv-search", search, {"params_ratio": args.params_ratio}),
        ),
        (
            f"gconv-g{args.groups}",
            f"gconv G={args.groups}",
            pruned(f"gconv-g{args.groups}", {**uniform, "groups": args.groups}, None),
        ),
    ]
    mag = {
        "name": "magnitude",
        "importance": "l1",
        "ranking": "global",
        "round_to": args.magnitude_round_to,
    }
    for key, label, t in gconv_runs:
        g = add(key, label, "gconv", t)
        r = _floor(g["params_ratio"])
        add(
            f"magnitude-params-of-{key}",
            f"magnitude @ params of {key}",
            "magnitude",
            pruned(f"magnitude-params-of-{key}", mag, {"params_ratio": r}),
            matched_to=key,
            match="params",
            match_ratio=r,
        )
        lat = g["latency_ratio"]
        mkey, mlabel = f"magnitude-latency-of-{key}", f"magnitude @ latency of {key}"
        if lat is None or lat >= 1.0:
            why = (
                "no latency measured"
                if lat is None
                else f"{key} is not faster than the unpruned model at batch 1 (latency x{lat:.3f})"
            )
            print(f"  {mkey}: not run: {why}", flush=True)
            rows.append(
                {
                    "model": model,
                    "seed": seed,
                    "key": mkey,
                    "label": mlabel,
                    "kind": "magnitude",
                    "matched_to": key,
                    "match": "latency",
                    "match_ratio": lat,
                    "skipped": why,
                }
            )
            continue
        L = _floor(lat)
        add(
            mkey,
            mlabel,
            "magnitude",
            pruned(mkey, mag, {"latency_ratio": L}),
            matched_to=key,
            match="latency",
            match_ratio=L,
        )
    G = args.ablation_groups
    for h in HEURISTICS:
        key = f"ablation-g{G}-{h}"
        add(key, f"gconv G={G}, {h}", "ablation", pruned(key, {**uniform, "groups": G, "heuristic": h}, None))
    return rows


# ---------------------------------------------------------------------------------------------- statistics
def _by_seed(rows: list[dict], model: str, key: str, field: str) -> dict[int, float]:
    return {
        r["seed"]: r[field]
        for r in rows
        if r["model"] == model and r["key"] == key and r.get(field) is not None and not r.get("skipped")
    }


def _pm(m: float, s: float, scale: float = 100.0, digits: int = 2, unit: str = "%") -> str:
    if math.isnan(m):
        return "–"
    return f"{scale * m:.{digits}f}{unit} ± {scale * s:.{digits}f}"


def _num(x: float | None, spec: str) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


# ---------------------------------------------------------------------------------------------- summary
FIELDS = (
    "top1",
    "params",
    "macs",
    "latency_ms",
    "latency_ms_batch",
    "params_ratio",
    "macs_ratio",
    "latency_ratio",
    "latency_ratio_batch",
    "mean_kept_fraction",
    "baseline_top1",
    "baseline_params",
    "baseline_macs",
    "baseline_latency_ms",
    "baseline_latency_ms_batch",
    "gathers",
    "gather_overhead",
    "match_ratio",
)


def aggregate(rows: list[dict]) -> list[dict]:
    """Per (model, run): mean and std over seeds of every numeric field; skipped seeds listed."""
    out = []
    for model, key in dict.fromkeys((r["model"], r["key"]) for r in rows):
        sel = [r for r in rows if r["model"] == model and r["key"] == key]
        done = [r for r in sel if not r.get("skipped")]
        entry: dict[str, Any] = {
            "model": model,
            "key": key,
            "label": sel[0]["label"],
            "kind": sel[0]["kind"],
            "matched_to": sel[0].get("matched_to"),
            "match": sel[0].get("match"),
            "n": len(done),
            "seeds": [r["seed"] for r in done],
            "skipped": {r["seed"]: r["skipped"] for r in sel if r.get("skipped")},
            "targets_met": sum(bool(r.get("targets_met")) for r in done),
        }
        for f in FIELDS:
            m, s = mean_std([r.get(f) for r in done])
            entry[f] = {"mean": m, "std": s}
        out.append(entry)
    return out


def summarize(
    rows: list[dict], args, models: list[str], setup: list[str], command: str, wall: float
) -> tuple:
    agg = aggregate(rows)
    batch = next((r["latency_batch"] for r in rows if r.get("latency_batch")), 64)
    lines = [
        f"# GConv evidence ({'SMOKE, numbers meaningless' if args.smoke else 'full run'})",
        "",
        f"`{command}`",
        "",
        f"Seeds {args.seeds}; mean ± std over seeds (std: sample standard deviation; 0 with one seed). A difference "
        "not larger than the seed-to-seed spread (the larger of the two standard deviations) is labelled noise. "
        f"Latency: ONNX Runtime, {args.latency_threads} thread(s), median, paired with the unpruned model in each run "
        f"(ratios are paired); b{batch} = batch {batch}. Wall time of this invocation {wall / 60:.1f} min.",
        "",
        *setup,
        "",
    ]
    loads = [r["load_avg"] for r in rows if r.get("load_avg") is not None]
    if loads:
        lines[-1:-1] = [
            f"- 1-minute load average at the end of each run this invocation: {min(loads):.1f} to "
            f"{max(loads):.1f} on {os.cpu_count()} CPUs over {len(loads)} runs (latency on a loaded machine is "
            "noisy; runs finished by an earlier invocation are not counted)",
        ]

    def top(e: dict) -> str:
        return _pm(e["top1"]["mean"], e["top1"]["std"])

    comparisons, ablation_cmp, speed = [], [], []
    for model in models:
        ents = [e for e in agg if e["model"] == model]
        if not ents:
            continue
        g0 = ents[0]
        lines += [
            f"## {model}: GConv vs channel pruning (magnitude) at the same params / the same latency",
            "",
            f"Unpruned baseline: top-1 {_pm(g0['baseline_top1']['mean'], g0['baseline_top1']['std'])}, "
            f"{g0['baseline_params']['mean'] / 1e3:.1f}K params, {g0['baseline_macs']['mean'] / 1e6:.2f}M MACs, "
            f"ORT b1 {_num(g0['baseline_latency_ms']['mean'], '.3f')} ms, "
            f"b{batch} {_num(g0['baseline_latency_ms_batch']['mean'], '.2f')} ms (mean of the runs' paired "
            "measurements).",
            "",
            "| run | target | test top-1 | Δ vs baseline | params (ratio) | MACs (ratio) | ORT ms b1 (ratio) | "
            f"ORT ms b{batch} (ratio) | targets met | n |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for e in ents:
            if e["kind"] == "ablation":
                continue
            if e["n"] == 0:
                why = "; ".join(sorted(set(e["skipped"].values())))
                lines.append(f"| {e['label']} | not run | – | – | – | – | – | – | – | 0 ({why}) |")
                continue
            if e["kind"] == "gconv":
                tgt = f"params ≤ {args.params_ratio:g}" if e["key"] == "gconv-search" else "none (one G)"
            else:
                tgt = f"{e['match']} ≤ x{e['match_ratio']['mean']:.4f}" + (
                    f" ± {e['match_ratio']['std']:.4f}" if e["n"] > 1 else ""
                )
            dtop = e["top1"]["mean"] - e["baseline_top1"]["mean"]
            met = (
                f"{e['targets_met']}/{e['n']}" if e["kind"] != "gconv" or e["key"] == "gconv-search" else "–"
            )
            lines.append(
                f"| {e['label']} | {tgt} | {top(e)} | {100 * dtop:+.2f} pp | "
                f"{e['params']['mean'] / 1e3:.1f}K (x{e['params_ratio']['mean']:.3f}) | "
                f"{e['macs']['mean'] / 1e6:.2f}M (x{e['macs_ratio']['mean']:.3f}) | "
                f"{_num(e['latency_ms']['mean'], '.3f')} (x{_num(e['latency_ratio']['mean'], '.3f')}) | "
                f"{_num(e['latency_ms_batch']['mean'], '.2f')} (x{_num(e['latency_ratio_batch']['mean'], '.3f')}) | "
                f"{met} | {e['n']} |"
            )
        lines += [
            "",
            "| gconv run | vs | Δ test top-1 (gconv − magnitude, paired mean ± std) | seed spread | verdict |",
            "|---|---|---:|---:|---|",
        ]
        for e in ents:
            if e["kind"] != "magnitude":
                continue
            src = e["matched_to"]
            if e["n"] == 0:
                lines.append(f"| {src} | {e['label']} | – | – | not run |")
                continue
            c = compare(
                _by_seed(rows, model, src, "top1"), _by_seed(rows, model, e["key"], "top1"), src, "magnitude"
            )
            c.update(model=model, gconv=src, against=e["key"], metric="top1")
            comparisons.append(c)
            lines.append(
                f"| {src} | {e['label']} | {100 * c['diff_mean']:+.2f} ± {100 * c['diff_std']:.2f} pp | "
                f"{100 * c['spread']:.2f} pp | {c['verdict']} |"
            )

        # ---- ablation
        abl = [e for e in ents if e["kind"] == "ablation"]
        lines += [
            "",
            f"## {model}: permutation heuristics at G={args.ablation_groups} everywhere (GRPS / SORT / SAME)",
            "",
            "| heuristic | mean kept criterion mass | test top-1 | Δ vs baseline | params (ratio) | "
            "ORT ms b1 (ratio) | n |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for e in abl:
            dtop = e["top1"]["mean"] - e["baseline_top1"]["mean"]
            lines.append(
                f"| {e['key'].rsplit('-', 1)[1].upper()} | "
                f"{_pm(e['mean_kept_fraction']['mean'], e['mean_kept_fraction']['std'])} | {top(e)} | "
                f"{100 * dtop:+.2f} pp | {e['params']['mean'] / 1e3:.1f}K (x{e['params_ratio']['mean']:.3f}) | "
                f"{_num(e['latency_ms']['mean'], '.3f')} (x{_num(e['latency_ratio']['mean'], '.3f')}) | {e['n']} |"
            )
        G = args.ablation_groups
        lines += [
            "",
            "| comparison | metric | Δ (paired mean ± std) | seed spread | verdict |",
            "|---|---|---:|---:|---|",
        ]
        for other in ("sort", "same"):
            for field, what in (("mean_kept_fraction", "kept mass"), ("top1", "test top-1")):
                c = compare(
                    _by_seed(rows, model, f"ablation-g{G}-grps", field),
                    _by_seed(rows, model, f"ablation-g{G}-{other}", field),
                    "GRPS",
                    other.upper(),
                )
                c.update(model=model, metric=field)
                ablation_cmp.append(c)
                lines.append(
                    f"| GRPS − {other.upper()} | {what} | {100 * c['diff_mean']:+.2f} ± "
                    f"{100 * c['diff_std']:.2f} pp | {100 * c['spread']:.2f} pp | {c['verdict']} |"
                )

        # ---- speed of group convs
        lines += [
            "",
            f"## {model}: are grouped convs faster on this CPU?",
            "",
            f"| gconv run | params ratio | MACs ratio | latency ratio b1 | latency ratio b{batch} | gathers "
            "(overhead b1) | faster than unpruned at b1? | latency vs params (b1) |",
            "|---|---:|---:|---:|---:|---:|---|---|",
        ]
        for e in ents:
            if e["kind"] == "magnitude" or e["n"] == 0:
                continue
            lr, pr = e["latency_ratio"], e["params_ratio"]["mean"]
            if math.isnan(lr["mean"]):
                faster = "not measured"
            elif e["n"] < 2:
                faster = f"{'yes' if lr['mean'] < 1 else 'no'} (one seed: no spread)"
            elif lr["mean"] + lr["std"] < 1.0:
                faster = "yes"
            elif lr["mean"] - lr["std"] > 1.0:
                faster = "no, slower"
            else:
                faster = "no difference (within seed spread)"
            if math.isnan(lr["mean"]):
                vs = "–"
            else:
                vs = (
                    f"latency falls {'as much as or more than' if lr['mean'] <= pr else 'less than'} params "
                    f"({lr['mean'] / pr:.2f}x the params ratio)"
                )
            go = e["gather_overhead"]["mean"]
            speed.append(
                {
                    "model": model,
                    "run": e["key"],
                    "params_ratio": pr,
                    "macs_ratio": e["macs_ratio"]["mean"],
                    "latency_ratio": lr,
                    "latency_ratio_batch": e["latency_ratio_batch"],
                    "gathers": e["gathers"]["mean"],
                    "gather_overhead": go,
                    "faster_b1": faster,
                    "latency_vs_params": vs,
                }
            )
            lines.append(
                f"| {e['label']} | {pr:.3f} | {e['macs_ratio']['mean']:.3f} | "
                f"{_pm(lr['mean'], lr['std'], 1.0, 3, '')} | "
                f"{_pm(e['latency_ratio_batch']['mean'], e['latency_ratio_batch']['std'], 1.0, 3, '')} | "
                f"{_num(e['gathers']['mean'], '.0f')} ({_num(None if math.isnan(go) else 100 * go, '+.1f')}%) | "
                f"{faster} | {vs} |"
            )
        lines.append("")
    summary = {
        "aggregates": agg,
        "comparisons": comparisons,
        "ablation": ablation_cmp,
        "speed": speed,
    }
    return "\n".join(lines), summary


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--configs",
        nargs="+",
        default=["configs/resnet20-params-budget.yaml", "configs/resnet56-scratch.yaml"],
        help="one per model: model, data, baseline recipe, finetune recipe (if any), export",
    )
    ap.add_argument("--gconv-config", default="configs/resnet20-gconv-search.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--params-ratio", type=float, default=0.5, help="params target of the gconv search")
    ap.add_argument("--groups", type=int, default=2, help="G of the uniform gconv run")
    ap.add_argument("--ablation-groups", type=int, default=4, help="G of the GRPS / SORT / SAME ablation")
    ap.add_argument(
        "--magnitude-round-to", default="auto", help="round_to of the magnitude runs (int or auto)"
    )
    ap.add_argument("--out", default=None, help="default bench/results/gconv ($TMPDIR/... with --smoke)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--overwrite", action="store_true", help="start every run afresh (default: resume)")
    ap.add_argument("--smoke", action="store_true", help="first config, first seed, tiny data and epochs")
    args = ap.parse_args(argv)
    command = "python bench/gconv_evidence.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    if not 0.0 < args.params_ratio < 1.0 or args.groups < 2 or args.ablation_groups < 2:
        ap.error("--params-ratio must be in (0, 1), --groups and --ablation-groups >= 2")
    if args.magnitude_round_to != "auto":
        args.magnitude_round_to = int(args.magnitude_round_to)
    if args.smoke:
        args.configs, args.seeds = args.configs[:1], args.seeds[:1]
    if args.out is None:
        args.out = (
            str(Path(tempfile.gettempdir()) / "prunekit-gconv-evidence-smoke")
            if args.smoke
            else "bench/results/gconv"
        )
    out = Path(args.out)
    try:
        gcfg = load_config(args.gconv_config)
        if gcfg.method.name != "gconv":
            raise PrunekitError(
                f"{args.gconv_config} must configure method: gconv (it has {gcfg.method.name})"
            )
        gmethod = config_tree(gcfg)["method"]
        bases, models, setup = [], [], ["Setup:", ""]
        for path in args.configs:
            cfg = load_config(path, args.overrides)
            if args.smoke:
                cfg.export.onnx = False  # the .onnx file is not used here; exporting it costs seconds per run
            if not cfg.export.latency:
                raise PrunekitError(f"{path}: export.latency is off; the latency-matched runs need it")
            tree = config_tree(cfg)
            tree["target"] = None
            if tree.get("finetune") is None:
                tree["finetune"] = config_tree(gcfg)["finetune"]
            if tree["finetune"] is None:
                raise PrunekitError(f"neither {path} nor {args.gconv_config} has a finetune recipe")
            bases.append(tree)
            models.append(cfg.model)
            d, bt = tree["data"], tree["baseline"]["train"]
            setup.append(
                f"- `{cfg.model}` ({path}): {d['name']}, train subset {d.get('subset_train') or 'all'}, "
                f"val fraction {d['val_fraction']}; baseline "
                + (f"{bt['epochs']:g} epochs lr {bt['lr']:g} {bt['schedule']}" if bt else "from checkpoint")
                + f"; every pruned run finetuned {tree['finetune']['epochs']:g} epochs lr "
                f"{tree['finetune']['lr']:g} {tree['finetune']['schedule']}"
            )
        gm = {
            k: v for k, v in gmethod.items() if k not in ("groups", "mcpg", "group_config", "search", "name")
        }
        setup.append(f"- gconv options ({args.gconv_config}): {json.dumps(gm)}")
        setup.append(
            f"- magnitude: global L1 filter ranking, round_to {args.magnitude_round_to}; "
            "same baseline and finetune recipe as the gconv runs"
        )
        args.latency_threads = bases[0]["export"]["latency_threads"]
        t_all = time.perf_counter()
        rows: list[dict] = []
        for tree, model in zip(bases, models, strict=True):
            for seed in args.seeds:
                rows += run_pair(args, tree, gmethod, model, seed, command)
                write_json(out / "summary.json", {"command": command, "partial": True, "rows": rows})
        wall = time.perf_counter() - t_all
    except PrunekitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text, summary = summarize(rows, args, models, setup, command, wall)
    print(text)
    write_json(
        out / "summary.json",
        {
            "command": command,
            "configs": args.configs,
            "gconv_config": args.gconv_config,
            "overrides": args.overrides,
            "seeds": args.seeds,
            "params_ratio": args.params_ratio,
            "groups": args.groups,
            "ablation_groups": args.ablation_groups,
            "magnitude_round_to": args.magnitude_round_to,
            "smoke": args.smoke,
            "wall_s": wall,
            **summary,
            "rows": rows,
        },
    )
    write_text(out / "summary.md", text + "\n")
    print(f"wrote {out / 'summary.md'} and {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))  # 2 cores unless told
    sys.exit(main())
