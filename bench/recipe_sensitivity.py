"""A run's pruned architecture and the uniform-width one at the same MACs, each trained from scratch under recipe variants.

Usage:
    python bench/recipe_sensitivity.py RUN_DIR [--variant NAME:KEY=VALUE,KEY=VALUE ...] [--nets plan uniform]
                                       [--out bench/results/recipe_sensitivity] [--smoke]

``RUN_DIR`` is a finished run whose ``config.yaml`` names a from-scratch recipe (``method.final_train``, else
``method.train``, else ``finetune``) and whose ``plan.json`` is the architecture to retrain. Two nets are trained:

* ``plan``: the plan applied to the model spec's initialisation (seed ``config.seed``, first-k channels: the
  ``metapruning`` method's ``init: scratch`` final network, bit-identical to the run's own final training);
* ``uniform``: one width multiplier for every group (``round_to`` / ``min_channels`` of the run's method, else 1),
  the largest within the plan's MACs (:func:`prunekit.methods.uniform.fit_uniform`), same initialisation.

Each ``--variant`` overrides recipe fields (``TrainConfig`` names: ``lr``, ``grad_clip``, ``warmup_epochs``, ...);
``base`` (the recipe as configured) always runs first. Every (variant, net) trains on the run's data (same seed,
same order) and is scored on the test split with the best-on-val weights; per-epoch train loss / val top-1 are kept,
and :func:`prunekit.report.training_warnings` flags unstable runs (loss above chance or rising). Finished pairs are
skipped on a re-run (``<out>/<variant>-<net>/result.json``), so a killed sweep resumes.
Bad input (no finished run, a malformed ``--variant``, an unknown or invalid recipe field) exits 2 with one line,
before any training.

Output: ``<out>/results.json`` and ``<out>/results.md`` (one row per variant: test top-1 of each net, unstable flag).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import yaml
from pydantic import ValidationError

from prunekit.config import parse_config
from prunekit.cost import CostModel
from prunekit.cost.latency import resolve_round_to
from prunekit.data import build_data
from prunekit.errors import PrunekitError, validation_message
from prunekit.io import write_json, write_text
from prunekit.models import create_model
from prunekit.pipeline import resolved_spec, smoke_config
from prunekit.report import training_warnings
from prunekit.search.fit import fit_uniform
from prunekit.space import ChannelSpace, Plan, apply, plan_from_widths
from prunekit.train import TrainConfig, evaluate, fit


def _variant(text: str) -> tuple[str, dict]:
    name, _, body = text.partition(":")
    if not name or not body:
        raise PrunekitError(f"--variant {text!r} is not NAME:KEY=VALUE[,KEY=VALUE]")
    over = {}
    for kv in body.split(","):
        k, sep, v = kv.partition("=")
        if not sep:
            raise PrunekitError(f"--variant {text!r}: {kv!r} is not KEY=VALUE")
        over[k.strip()] = yaml.safe_load(v)
    return name, over


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--variant", action="append", default=[], help="NAME:KEY=VALUE,... recipe overrides")
    ap.add_argument("--nets", nargs="+", choices=["plan", "uniform"], default=["plan", "uniform"])
    ap.add_argument("--out", type=Path, default=Path("bench/results/recipe_sensitivity"))
    ap.add_argument("--smoke", action="store_true", help="small subsets, one epoch (a check of the script)")
    args = ap.parse_args()
    try:
        return _sweep(args)
    except PrunekitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _sweep(args: argparse.Namespace) -> int:
    for name in ("config.yaml", "plan.json"):
        if not (args.run / name).is_file():
            raise PrunekitError(f"{args.run / name} not found: give the directory of a finished run")
    cfg = parse_config(yaml.safe_load((args.run / "config.yaml").read_text()))
    if args.smoke:
        cfg = smoke_config(cfg)
    m = cfg.method
    recipe = getattr(m, "final_train", None) or getattr(m, "train", None) or cfg.finetune
    if recipe is None:
        raise PrunekitError(
            "the run's config has no from-scratch recipe (method.final_train / method.train / finetune)"
        )
    recipes = []  # all overrides validated before any training: a misspelt key fails now, not hours in
    for vname, over in [("base", {})] + [_variant(v) for v in args.variant]:
        try:
            recipes.append((vname, over, TrainConfig.model_validate({**recipe.model_dump(), **over})))
        except ValidationError as e:
            raise PrunekitError(validation_message(e, what=f"recipe (--variant {vname})")) from None
    data = build_data(cfg.data)
    spec = resolved_spec(cfg, data)
    shape = (1, data.in_chans, data.input_size, data.input_size)
    plan = Plan.load(args.run / "plan.json")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        space = ChannelSpace.build(create_model(spec), shape)
    cm = CostModel(space)
    plans = {"plan": plan}
    if "uniform" in args.nets:
        _, widths = fit_uniform(
            space,
            cm,
            float(cm.cost(plan).macs),
            round_to=resolve_round_to(getattr(m, "round_to", 1)),
            min_channels=getattr(m, "min_channels", 1),
        )
        plans["uniform"] = plan_from_widths(space, widths, spec=spec)
    rows, cmd = [], " ".join(sys.argv)
    for vname, over, tc in recipes:
        row = {"variant": vname, "overrides": over}
        for net in args.nets:
            d = args.out / f"{vname}-{net}"
            res_path = d / "result.json"
            if res_path.is_file():
                row[net] = json.loads(res_path.read_text())
                continue
            torch.manual_seed(cfg.seed)
            model = apply(create_model(spec), plans[net], space)
            c = cm.cost(plans[net])
            t0 = time.perf_counter()
            fr = fit(
                model,
                data.train,
                tc,
                val_loader=data.val,
                log_path=d / "log.jsonl",
                desc=f"{vname}/{net}",
                select="best",
            )
            if fr.best_state is not None:
                model.load_state_dict(fr.best_state)
            hist = [
                {k: h.get(k) for k in ("epoch", "train_loss", "train_top1", "val_top1")} for h in fr.history
            ]
            warns = training_warnings({"dataset": {"num_classes": data.num_classes}, "history": {net: hist}})
            r = {
                "macs": float(c.macs),
                "params": int(c.params),
                "test_top1": float(evaluate(model, data.test)["top1"]),
                "wall_s": time.perf_counter() - t0,
                "unstable": bool(warns),
                "warnings": warns,
                "history": hist,
            }
            write_json(res_path, r)
            row[net] = r
            print(f"{vname:>12} {net:>8}: test top-1 {r['test_top1']:.4f}{'  (unstable)' if warns else ''}")
        rows.append(row)
    write_json(
        args.out / "results.json", {"command": cmd, "run": str(args.run), "smoke": args.smoke, "rows": rows}
    )
    macs = {n: rows[0][n]["macs"] for n in args.nets}
    lines = [
        f"`{cmd}`",
        "",
        "| recipe | overrides | "
        + " | ".join(f"{n} test top-1 ({macs[n] / 1e6:.2f}M MACs)" for n in args.nets)
        + " |",
        "|---|---|" + "---:|" * len(args.nets),
    ]
    for r in rows:
        over = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "as configured"
        cells = [
            f"{100 * r[n]['test_top1']:.2f}%{' (unstable)' if r[n]['unstable'] else ''}" for n in args.nets
        ]
        lines.append(f"| {r['variant']} | {over} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    write_text(args.out / "results.md", text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
