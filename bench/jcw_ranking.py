"""How well does JCW's supernet rank candidates, and what does each supernet mode cost? (issue #13)

Usage:
    OMP_NUM_THREADS=1 python bench/jcw_ranking.py [--config configs/resnet20-jcw.yaml] [--candidates 8]
        [--train '{"epochs": 3, "lr": 0.1}'] [--ft '{"epochs": 1, "lr": 0.01}'] [--seed 0]
        [--out bench/results/jcw-ranking] [--smoke]

``--candidates`` random encodings of the preset's joint search space (seeded) are scored by the proxy loss of a
weight-sharing supernet (:mod:`prunekit.supernets.slimmable`, the preset's proxy split and BN recalibration) in the
two modes of ``method.supernet.mode``, both starting from the same trained baseline:

* ``finetune`` (prunekit's default): CNS + WP training once on random encodings of the bounds, then
  ``finetune_epochs`` of WP training on the candidates;
* ``retrain`` (the seed): the supernet re-initialised and trained CNS + WP on the candidates (what every generation
  of the seed's search does).

Each candidate is also trained briefly from scratch on the run's data for its test top-1, through the ``plan``
method: REGULAR (``--train``, the dense channel-pruned net), then its block densities applied by L2 and a masked
finetune (``--ft``) -- without that finetune the freshly masked nets sit near chance (measured: 10-46% top-1), which
ranks the masks' damage, not the candidates. Reported per mode: Kendall's
tau between proxy loss and -top-1 (scipy; 1 = the same order), its p-value, the supernet training wall time and its
image passes. Every training run is a ``prunekit run`` directory (resumable); the supernets are trained in this
process. Output: ``<out>/summary.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from _study import config_tree, run_cached, seeded
from prunekit.config import load_config, parse_config
from prunekit.io import write_json, write_text
from prunekit.pipeline import train_only


def _context(cfg, out: Path, seed: int):
    from prunekit.cost.macs import CostModel
    from prunekit.data import build_data
    from prunekit.pipeline import resolved_spec
    from prunekit.runs import load_baseline
    from prunekit.space import ChannelSpace

    data = build_data(cfg.data)
    model, _ = load_baseline(out / "baseline" / "baseline.pt")
    spec = resolved_spec(cfg, data)
    space = ChannelSpace.build(model, (1, data.in_chans, data.input_size, data.input_size), quiet=True)
    return SimpleNamespace(
        model=model,
        spec=spec,
        space=space,
        cost=CostModel(space),
        data=data,
        seed=seed,
        smoke=False,
        budget=None,
        out_dir=out,
        device="cpu",
    )


def _supernet(ctx, mcfg, enc, proxy, plans, mode: str, seed: int) -> tuple[object, float, int]:
    """Train a supernet in ``mode`` as one generation of the search does (``finetune``: after the one-off training
    on random encodings); returns (model, wall s, image passes)."""
    import copy

    from prunekit.methods.base import fresh_model
    from prunekit.methods.jcw.search import generation_training, initial_training

    sn = mcfg.supernet
    n_img = len(proxy.train) * proxy.train.batch_size if hasattr(proxy.train, "batch_size") else 0
    t0 = time.perf_counter()
    model = copy.deepcopy(ctx.model)
    epochs = sn.cns.epochs + sn.wp.epochs
    if mode == "finetune":
        initial_training(model, ctx.space, enc, proxy, sn.cns, sn.wp, seed=seed, device="cpu")
        epochs += sn.finetune_epochs
    generation_training(
        model,
        lambda: fresh_model(ctx),
        ctx.space,
        proxy,
        sn.cns,
        sn.wp,
        plans,
        mode=mode,
        finetune_epochs=sn.finetune_epochs,
        seed=seed,
        generation=0,
        device="cpu",
    )
    return model, time.perf_counter() - t0, int(epochs * n_img)


def main() -> None:
    from scipy.stats import kendalltau

    from prunekit.methods.jcw import proxy_task, search_space
    from prunekit.supernets.slimmable import proxy_losses

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/resnet20-jcw.yaml")
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument(
        "--train", default='{"epochs": 3, "lr": 0.1}', help="REGULAR recipe of the from-scratch runs"
    )
    ap.add_argument(
        "--ft",
        default='{"epochs": 1, "lr": 0.01}',
        help="masked finetune after REGULAR (the densities applied)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    out = Path(
        args.out
        or (
            Path(tempfile.gettempdir()) / "prunekit-jcw-ranking-smoke"
            if args.smoke
            else "bench/results/jcw-ranking"
        )
    )
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    base = config_tree(load_config(args.config))
    if args.smoke:
        base["data"]["subset_train"], base["data"]["subset_test"] = 400, 200
        base["baseline"]["train"]["epochs"] = 0.3
        tiny = {"epochs": 0.2, "lr": 0.05}
        base["method"]["supernet"].update({"cns": tiny, "wp": tiny, "finetune_epochs": 0.1})
        base["method"]["proxy"].update({"train_per_class": 20, "val_per_class": 5})
        args.candidates = min(args.candidates, 3)
        args.train = args.ft = json.dumps(tiny)
    cfg = parse_config(seeded(base, args.seed))
    print(f"[baseline] -> {out / 'baseline'}", flush=True)
    train_only(cfg, out / "baseline", smoke=False, overwrite=False, command=command)
    ctx = _context(cfg, out, args.seed)
    mcfg = cfg.method
    enc = search_space(ctx, mcfg, unit=8)
    proxy = proxy_task(ctx, mcfg)
    genes = enc.bounds.random(np.random.default_rng(args.seed), args.candidates)
    plans = [enc.decode(g, spec=ctx.spec) for g in genes]
    cand_dir = out / "candidates"
    cand_dir.mkdir(parents=True, exist_ok=True)
    top1 = []
    for i, plan in enumerate(plans):
        f = cand_dir / f"candidate-{i}.json"
        plan.save(f)
        t = seeded(json.loads(json.dumps(base)), args.seed)
        t["name"] = f"jcw-ranking-candidate-{i}"
        t["baseline"] = {"checkpoint": str(out / "baseline" / "baseline.pt"), "train": None}
        t["target"] = None
        t["method"] = {
            "name": "plan",
            "plan": str(f),
            "init": "scratch",
            "train": {"regular": json.loads(args.train), "admm": None, "ft": json.loads(args.ft)},
        }
        t["finetune"] = None
        rep, _, _ = run_cached(
            t,
            out / f"scratch-{i}",
            f"candidate {i} from scratch",
            overwrite=False,
            smoke=False,
            command=command,
        )
        top1.append(rep["pruned"]["top1"])
    modes = {}
    for mode in ("finetune", "retrain"):
        print(f"[supernet: {mode}]", flush=True)
        sup, wall, passes = _supernet(ctx, mcfg, enc, proxy, plans, mode, args.seed)
        loss = proxy_losses(sup, ctx.space, plans, proxy.bn_batches, proxy.val)
        tau, p = kendalltau(loss, -np.asarray(top1))
        modes[mode] = {
            "proxy_loss": [float(x) for x in loss],
            "kendall_tau": float(tau),
            "p_value": float(p),
            "supernet_wall_s": wall,
            "image_passes": passes,
        }
    summary = {
        "command": command,
        "candidates": [[int(x) for x in g] for g in genes],
        "top1": top1,
        "modes": modes,
    }
    write_json(out / "summary.json", summary)
    lines = [
        f"`{command}`",
        "",
        f"{len(plans)} random candidates; from-scratch recipe: REGULAR {args.train}, masked FT {args.ft}.",
        "",
        "| supernet mode | Kendall tau (proxy loss vs -top-1) | p | supernet training | image passes |",
        "|---|---:|---:|---:|---:|",
    ]
    for mode, m in modes.items():
        lines.append(
            f"| {mode} | {m['kendall_tau']:+.3f} | {m['p_value']:.3f} | {m['supernet_wall_s']:.0f} s | "
            f"{m['image_passes']:,} |"
        )
    write_text(out / "summary.md", "\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
