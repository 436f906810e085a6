"""``prunekit lut build`` / ``prunekit lut eval``: per-layer latency tables and how well they predict."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from prunekit.cli_common import InChans, InputSize, ModelArg, NumClasses, _build, console
from prunekit.errors import PrunekitError

lut_app = typer.Typer(
    no_args_is_help=True,
    help="Per-layer latency lookup tables: build one on this machine, check its predictions.",
)

RuntimeOpt = Annotated[
    str,
    typer.Option(
        "--runtime",
        help="ort (ONNX Runtime CPU), torch (eager CPU), cuda, or deepsparse (optional, its own environment).",
    ),
]
ThreadsOpt = Annotated[int, typer.Option("--threads", min=1, help="Intra-op threads of the runtime.")]
DeepSparseOpt = Annotated[
    str | None,
    typer.Option(
        "--deepsparse-python",
        help="Interpreter of a DeepSparse 1.8 environment (else $PRUNEKIT_DEEPSPARSE_PYTHON); --runtime deepsparse.",
    ),
]


def _use_deepsparse(python: str | None) -> None:
    """Point the DeepSparse backend at ``python`` (checked: one clear line if it has no DeepSparse)."""
    from prunekit.cost.deepsparse import ENV_VAR, find_python, probe

    os.environ[ENV_VAR] = find_python(python)
    probe()


def _ints(text: str, what: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise PrunekitError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise PrunekitError(f"{what} must be positive integers, got {text!r}")
    return vals


def _floats(text: str, what: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise PrunekitError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not vals or not all(0.0 < v <= 1.0 for v in vals):
        raise PrunekitError(f"{what} must lie in (0, 1], got {text!r}")
    return vals


def _reexec_with_malloc_tunables(runtime: str) -> None:
    """torch eager timings need glibc's malloc tunables in the process environment (set before start)."""
    from prunekit.cost.runtimes import GLIBC_TUNABLES

    if (
        runtime == "torch"
        and os.environ.get("GLIBC_TUNABLES") != GLIBC_TUNABLES
        and sys.argv[0].endswith("prunekit")
    ):
        env = {**os.environ, "GLIBC_TUNABLES": GLIBC_TUNABLES}
        os.execve(sys.argv[0], sys.argv, env)


@lut_app.command("build")
def build(
    model: ModelArg,
    out: Annotated[
        str, typer.Option("--out", help="Where to write the table (JSON); an existing one resumes.")
    ],
    input_size: InputSize = None,
    in_chans: InChans = None,
    num_classes: NumClasses = None,
    runtime: RuntimeOpt = "ort",
    threads: ThreadsOpt = 1,
    batch: Annotated[str, typer.Option("--batch", help="Batch sizes, comma-separated, e.g. 1,64.")] = "1",
    points: Annotated[int, typer.Option("--points", min=2, help="Grid points per channel axis.")] = 7,
    groups: Annotated[str, typer.Option("--groups", help="Conv group counts to measure (GConv).")] = "1,2,4",
    densities: Annotated[str, typer.Option("--densities", help="Weight densities to measure.")] = "1,0.5,0.2",
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Interleaved timing rounds.")] = 3,
    deepsparse_python: DeepSparseOpt = None,
) -> None:
    """Measure a per-layer latency table of MODEL in RUNTIME on this machine (resumable)."""
    import time

    from prunekit.cost.lut import build_table
    from prunekit.cost.predict import measure_overhead

    _reexec_with_malloc_tunables(runtime)
    if runtime == "deepsparse":
        _use_deepsparse(deepsparse_python)
    net, shape = _build(model, input_size, in_chans, num_classes)
    t0 = time.perf_counter()
    table = build_table(
        net.eval(),
        shape,
        out,
        spec=model,
        runtime=runtime,
        threads=threads,
        batches=_ints(batch, "--batch"),
        points=points,
        groups=_ints(groups, "--groups"),
        densities=_floats(densities, "--densities"),
        rounds=rounds,
        overhead=measure_overhead(net.eval(), runtime, threads, max(rounds, 5)),
    )
    n_points = sum(len(g.c_in) * len(g.c_out) for e in table.entries.values() for g in e.grids.values())
    Path(out).with_suffix(".md").write_text(_table_markdown(table, out), encoding="utf-8")
    console.print(
        f"{model}: {len(table.layer_entry)} layers, {len(table.entries)} signatures, {n_points} grid points x "
        f"{len(table.batches)} batch sizes in {time.perf_counter() - t0:.0f} s (total build {table.build_s:.0f} s) "
        f"-> {out}"
    )


def _table_markdown(table, out: str) -> str:
    oh = table.overhead
    lines = [
        f"# Latency table: {table.model} at {table.input_shape}",
        "",
        f"{table.machine['runtime']} ({table.machine['version']}), {table.machine['threads']} thread(s), "
        f"{table.machine['cpu']} ({', '.join(table.machine['isa'])}); channel unit {table.unit}; batch sizes "
        f"{table.batches}; build {table.build_s:.0f} s. Table: `{Path(out).name}`.",
        "",
        "| signature (first layer) | layers | grids | full-width ms (batch "
        f"{table.batches[0]}) | density factors |",
        "|---|---:|---|---:|---|",
    ]
    b = str(table.batches[0])
    for e in table.entries.values():
        g = e.grids["1"]
        full = g.ms[b][-1][-1]
        dens = ", ".join(
            f"{d:g}: {f:.2f}" for d, f in zip(e.densities, e.density_factor.get(b, []), strict=False)
        )
        lines.append(f"| {e.layers[0]} | {len(e.layers)} | {', '.join(e.grids)} | {full:.4f} | {dens} |")
    if oh is not None:
        lines += ["", "Overhead calibration (whole model, measured vs sum of layers):", ""]
        lines += ["| model | measured ms | residual ms |", "|---|---:|---:|"]
        for i, label in enumerate(oh.labels):
            lines.append(f"| {label} | {oh.measured_ms[b][i]:.4f} | {oh.residual_ms[b][i]:+.4f} |")
    return "\n".join(lines) + "\n"


@lut_app.command("eval")
def eval_(
    model: ModelArg,
    lut: Annotated[str, typer.Option("--lut", help="A table written by `prunekit lut build`.")],
    input_size: InputSize = None,
    in_chans: InChans = None,
    num_classes: NumClasses = None,
    plans: Annotated[int, typer.Option("--plans", min=1, help="Random plans to measure.")] = 30,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Batch size (one of the table's).")] = 1,
    weights: Annotated[
        bool, typer.Option("--weights/--no-weights", help="Also plans with density 0.5 and 2-group convs.")
    ] = False,
    threads: ThreadsOpt = 1,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Interleaved timing rounds.")] = 3,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random plans.")] = 0,
    out: Annotated[str | None, typer.Option("--out", help="Write the result as JSON here.")] = None,
    allow_mismatch: Annotated[
        bool, typer.Option("--allow-mismatch", help="Use a table measured on another machine / runtime.")
    ] = False,
    deepsparse_python: DeepSparseOpt = None,
) -> None:
    """Measure random plans of MODEL end to end in the table's runtime and compare with its predictions."""
    from prunekit.cost.lut import check_machine, load_table
    from prunekit.cost.lut_eval import evaluate, random_plans
    from prunekit.cost.predict import LatencyModel
    from prunekit.io import write_json
    from prunekit.space import ChannelSpace

    table = load_table(lut, allow_mismatch=True)
    runtime = str(table.machine.get("runtime", "ort"))
    _reexec_with_malloc_tunables(runtime)
    if runtime == "deepsparse":
        _use_deepsparse(deepsparse_python)  # the signature check asks DeepSparse for its version
    if not allow_mismatch:
        check_machine(table, lut, runtime=runtime, threads=threads)
    net, shape = _build(model, input_size, in_chans, num_classes)
    space = ChannelSpace.build(net.eval(), shape, quiet=True)
    lm = LatencyModel(table, space, batch=batch)
    result = evaluate(
        net,
        space,
        lm,
        random_plans(space, table.unit, plans, seed=seed, weights=weights),
        threads=threads,
        rounds=rounds,
    )
    data = {"model": model, "lut": lut, **result.to_dict()}
    if out:
        write_json(out, data)
    s = result.summary()
    rows = Table(title=f"{model}: predicted vs measured (ms, batch {batch}; ratio = to the unpruned model)")
    for col in ("plan", "predicted", "measured", "error", "ratio error", "noise"):
        rows.add_column(col, justify="left" if col == "plan" else "right")
    for r in result.rows:
        rows.add_row(
            r.label,
            f"{r.predicted_ms:.4f}",
            f"{r.measured_ms:.4f}",
            f"{r.error:+.1%}",
            f"{r.ratio_error:+.1%}",
            f"{r.noise:.1%}",
        )
    console.print(rows)
    console.print(
        f"median |error| {s['median_abs_error']:.1%}, 90th pct {s['p90_abs_error']:.1%}, within ±10%: "
        f"{s['within_10pct']:.0%}; ratios: median {s['ratio_median_abs_error']:.1%}, 90th pct "
        f"{s['ratio_p90_abs_error']:.1%}, within ±10%: {s['ratio_within_10pct']:.0%}; median measurement noise "
        f"{s['median_noise']:.1%}"
    )
    if out:
        console.print(f"-> {out}")
    json.dumps(data)  # fail loudly here, not in a later reader, if anything is not JSON-serialisable
