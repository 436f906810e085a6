"""Where a latency table's prediction and the whole model part: each conv's time inside the model (ONNX Runtime's
node profiler) beside the table's one-layer time (issue #16).

Usage:
    OMP_NUM_THREADS=1 python bench/lut_inmodel.py --lut bench/results/lut-avx512/resnet50-224.lut.json
        [--model resnet50] [--input-size 224] [--plans 1.0 1.0:2 0.5 0.5:2 ...] [--runs 30] [--out DIR]

Each plan (``MULT`` = uniform width multiplier rounded to the table's channel unit, ``MULTu`` = not rounded,
``MULT:G`` = with every eligible dense conv at ``G`` groups) is exported as deployed (BN folded) and run ``--runs`` times in ONNX Runtime
(batch 1, one thread, all optimisations) with ``enable_profiling``; per node, the median kernel time over the runs.
Conv nodes (``Conv`` / ``FusedConv``, blocked ``nchwc`` included) are matched to the table's layers by the module
name the exporter records (:func:`conv_modules`); everything else (reorders, pooling, adds, activations left as nodes) is
summed by op type. Output: ``<out>/<model>.inmodel.json`` and a markdown table per plan on stdout: the model's
measured total, the profiled sum, the table's layer sum and overhead, and per conv kind (dense / grouped, blocked
or not) the in-model over table-alone ratio. Run it with the machine quiet.
"""

from __future__ import annotations

import argparse
import ast
import json
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from prunekit.cost.latency import export_for_timing
from prunekit.cost.lut import load_table
from prunekit.cost.predict import LatencyModel
from prunekit.export import ort_session
from prunekit.io import write_json
from prunekit.models import create_model, parse_spec
from prunekit.space import ChannelSpace, apply, plan_from_widths, uniform_widths
from prunekit.space.plan import add_weight_choices

CONV_OPS = {"Conv", "FusedConv"}


def profile(onnx_path: Path, shape: tuple[int, ...], runs: int) -> tuple[list[tuple[str, str, float]], float]:
    """``([(node name, op type, median µs)] in execution order, median whole-run µs)`` of ``runs`` profiled runs."""
    with tempfile.TemporaryDirectory(prefix="prunekit-prof-") as tmp:
        sess = ort_session(onnx_path, threads=1, profile_prefix=str(Path(tmp) / "prof"))
        name = sess.get_inputs()[0].name
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        for _ in range(5 + runs):  # 5 warm-up runs; the last `runs` of every node are kept
            sess.run(None, {name: x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    runs_us = [e["dur"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"][-runs:]
    per: dict[str, list[float]] = defaultdict(list)
    order: list[tuple[str, str]] = []
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        node = e["name"][: -len("_kernel_time")]
        if node not in per:
            order.append((node, e.get("args", {}).get("op_name", "?")))
        per[node].append(float(e["dur"]))
    return [(n, op, statistics.median(per[n][-runs:])) for n, op in order], statistics.median(runs_us)


def conv_modules(onnx_path: Path, prof_nodes: list[str]) -> dict[str, str]:
    """``{profiled conv node: module name}``. ONNX Runtime names a node it rewrites after its output tensor
    (``<tensor>_nchwc``) and a fused conv after the activation / add it absorbed; the exporter records each conv's
    module in its ``pkg.torch.onnx.name_scopes``. A profiled name is traced back from its tensor through non-conv
    nodes to the convs behind it, less those profiled under names of their own (an add fused into one of two
    convs)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    producer = {o: n for n in graph.node for o in n.output}
    by_name = {n.name: n for n in graph.node}

    def module(n) -> str:
        meta = {m.key: m.value for m in n.metadata_props}
        scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))  # a Python list's repr
        return scopes[-2] if len(scopes) >= 2 else n.name

    def convs_behind(node, seen=None) -> list:
        seen = seen if seen is not None else set()
        if node is None or node.name in seen:
            return []
        seen.add(node.name)
        if node.op_type == "Conv":
            return [node]
        return [c for i in node.input for c in convs_behind(producer.get(i), seen)]

    found: dict[str, list] = {}
    for name in prof_nodes:
        base = name[: -len("_nchwc")] if name.endswith("_nchwc") else name
        start = by_name.get(base) or producer.get(base)
        found[name] = convs_behind(start)
    direct = {c.name for cs in found.values() if len(cs) == 1 for c in cs}
    out = {}
    for name, cs in found.items():
        left = [c for c in cs if c.name not in direct] if len(cs) > 1 else cs
        if len(left) == 1:
            out[name] = module(left[0])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lut", required=True)
    ap.add_argument("--model", default=None, help="default: the table's model")
    ap.add_argument("--plans", nargs="+", default=["1.0", "1.0:2", "0.75", "0.75:2", "0.5", "0.5:2", "0.3:2"])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--out", default="bench/results/lut-avx512")
    args = ap.parse_args()
    table = load_table(args.lut)
    spec = args.model or table.model
    model = create_model(parse_spec(spec).to_string()).eval()
    shape = tuple(table.input_shape)
    space = ChannelSpace.build(model, shape, quiet=True)
    lm = LatencyModel(table, space, batch=1)
    layers = list(lm._rows)
    results = []
    for label in args.plans:
        mult, _, g = label.partition(":")
        step = 1 if mult.endswith("u") else table.unit  # "0.55u": unrounded
        plan = plan_from_widths(space, uniform_widths(space, float(mult.rstrip("u")), round_to=step))
        if g:
            plan = add_weight_choices(plan, space, conv_groups=int(g), permute=False)[0]
        widths = plan.widths(space).reshape(1, -1)
        grp = {n: np.array([lc.conv_groups]) for n, lc in plan.layers.items() if lc.conv_groups} or None
        ci, co, gg = lm._channels(widths, grp)
        blocked = lm._blocked(ci, co, gg)[0]
        table_ms = lm.layer_ms(widths, None, grp)
        overhead = float(lm.overhead_ms(widths, grp)[0])
        net = apply(model, plan, space).eval()
        with tempfile.TemporaryDirectory(prefix="prunekit-inmodel-") as tmp:
            path = export_for_timing(net, Path(tmp) / "m.onnx", shape)
            nodes, total_us = profile(path, (1, *shape[1:]), args.runs)
            names = conv_modules(path, [n for n, op, _ in nodes if op in CONV_OPS])
        convs = {names[n]: us for n, op, us in nodes if op in CONV_OPS and n in names}
        others: dict[str, float] = defaultdict(float)
        for _, op, us in nodes:
            if op not in CONV_OPS:
                others[op] += us / 1e3
        n_conv = sum(1 for n in layers if space.layers[n].kind == "conv")
        if len(convs) != n_conv:
            print(f"{label}: {len(convs)} of {n_conv} conv layers matched to profiled nodes")
        rows = []
        for j, name in enumerate(layers):
            if name not in convs:
                continue
            rows.append(
                {
                    "layer": name,
                    "c_in": int(ci[0, j]),
                    "c_out": int(co[0, j]),
                    "groups": int(gg[0, j]),
                    "blocked": bool(blocked[j]),
                    "table_ms": float(table_ms[name][0]),
                    "inmodel_ms": convs[name] / 1e3,
                }
            )
        kinds: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            kinds[
                f"{'grouped' if r['groups'] > 1 else 'dense'}, {'blocked' if r['blocked'] else 'NCHW'}"
            ].append(r)
        summary = {
            k: {
                "layers": len(v),
                "table_ms": sum(r["table_ms"] for r in v),
                "inmodel_ms": sum(r["inmodel_ms"] for r in v),
            }
            for k, v in kinds.items()
        }
        res = {
            "plan": label,
            "measured_ms": total_us / 1e3,
            "profiled_sum_ms": sum(us for _, _, us in nodes) / 1e3,
            "table_layers_ms": float(sum(v[0] for v in table_ms.values())),
            "table_overhead_ms": overhead,
            "other_nodes_ms": dict(sorted(others.items(), key=lambda kv: -kv[1])),
            "by_kind": summary,
            "convs": rows,
        }
        results.append(res)
        print(
            f"{label}: measured {res['measured_ms']:.2f} ms, profiled nodes {res['profiled_sum_ms']:.2f}, "
            f"table layers {res['table_layers_ms']:.2f} + overhead {overhead:.2f}",
            flush=True,
        )
        for k, v in summary.items():
            print(
                f"   {k:18s} {v['layers']:3d} layers  table {v['table_ms']:7.2f}  in model {v['inmodel_ms']:7.2f}  "
                f"(x{v['inmodel_ms'] / max(v['table_ms'], 1e-9):.2f})",
                flush=True,
            )
        top = ", ".join(f"{op} {ms:.2f}" for op, ms in list(res["other_nodes_ms"].items())[:5])
        print(f"   other nodes: {top}", flush=True)
    out = Path(args.out) / f"{parse_spec(spec).name}.inmodel.json"
    write_json(out, {"lut": args.lut, "runs": args.runs, "plans": results, "command": " ".join(sys.argv)})
    print(f"-> {out}")


if __name__ == "__main__":
    main()
