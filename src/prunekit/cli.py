"""The ``prunekit`` command line.

Every user error (:class:`~prunekit.errors.PrunekitError`) is printed as one line on stderr and exits with code 2;
``check`` exits 1 when a check fails.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated

import typer
from rich.table import Table

from prunekit.errors import PrunekitError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Structured pruning of CNNs: inspect, check, run, train, eval, export.",
)
from prunekit.cli_common import (  # noqa: E402
    InChans,
    InputSize,
    JsonOpt,
    ModelArg,
    NumClasses,
    _build,
    _fmt,
    console,
)


@app.command()
def inspect(
    model: ModelArg,
    input_size: InputSize = None,
    in_chans: InChans = None,
    num_classes: NumClasses = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the channel groups of MODEL (what can be pruned, and what is coupled) and its per-layer cost."""
    from prunekit.cost.macs import CostModel
    from prunekit.space import ChannelSpace
    from prunekit.space.plan import weight_options

    net, shape = _build(model, input_size, in_chans, num_classes)
    space = ChannelSpace.build(net, shape)
    cost = CostModel(space).cost(per_layer=True)
    rows = space.summary_rows()
    options = weight_options(space)
    for r in cost.layers:
        r.update(options.get(r["name"], {"takes_density": False, "conv_groups": []}))
    if as_json:
        print(
            json.dumps(
                {
                    "model": model,
                    "input_shape": list(shape),
                    "macs": cost.macs,
                    "flops": cost.flops,
                    "params": cost.params,
                    "groups": rows,
                    "layers": cost.layers,
                    "dropped_groups": space.dropped,
                },
                indent=2,
            )
        )
        return
    groups = Table(title=f"channel groups of {model} at {shape[2]}x{shape[3]} ({len(rows)} groups)")
    for col in ("#", "name", "channels", "members", "tags"):
        groups.add_column(col, justify="right" if col in ("#", "channels") else "left")
    for i, r in enumerate(rows):
        members = ", ".join(r["members"][:4]) + (
            f" (+{len(r['members']) - 4})" if len(r["members"]) > 4 else ""
        )
        groups.add_row(str(i), r["name"], str(r["channels"]), members, " ".join(r["tags"]))
    console.print(groups)
    layers = Table(title="per-layer cost (MACs: conv + linear multiply-accumulates, one sample)")
    for col in ("layer", "kind", "in", "out", "MACs", "params", "density", "conv groups"):
        layers.add_column(col, justify="left" if col in ("layer", "kind", "conv groups") else "right")
    for r in cost.layers:
        if r["macs"] or r["params"]:
            groups = r["conv_groups"]
            legal = ",".join(map(str, groups[:6])) + (",..." if len(groups) > 6 else "")
            layers.add_row(
                r["name"],
                r["kind"],
                str(r["in"]),
                str(r["out"]),
                _fmt(r["macs"]),
                _fmt(r["params"]),
                "yes" if r["takes_density"] else "",
                legal,
            )
    layers.add_row("total", "", "", "", _fmt(cost.macs), _fmt(cost.params), "", "", style="bold")
    console.print(layers)
    console.print(
        f"MACs {cost.macs:,} ({_fmt(cost.macs)})  FLOPs (= 2 x MACs) {cost.flops:,}  params {cost.params:,}"
    )
    for d in space.dropped:
        console.print(f"[yellow]left unpruned:[/] {d}")


def _parse_block(text: str) -> tuple[int, int]:
    """``"4x1"`` -> ``(4, 1)``; one-line error otherwise."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) >= 1 for p in parts):
        raise PrunekitError(
            f"--block must look like 4x1 (output channels x input positions, each >= 1), got {text!r}"
        )
    return int(parts[0]), int(parts[1])


@app.command()
def check(
    model: ModelArg,
    ratio: Annotated[
        float, typer.Option("--ratio", help="Fraction of every group to prune, in [0, 1).")
    ] = 0.5,
    input_size: InputSize = None,
    in_chans: InChans = None,
    num_classes: NumClasses = None,
    density: Annotated[
        float | None,
        typer.Option(
            "--density",
            help="Also keep this fraction of the weight blocks of every conv/linear (not depthwise, not outputs).",
        ),
    ] = None,
    block: Annotated[
        str, typer.Option("--block", help="Weight block for --density: OUTxIN (output channels x positions).")
    ] = "4x1",
    conv_groups: Annotated[
        int | None,
        typer.Option(
            "--conv-groups",
            help="Also turn every dense conv into a group conv with G groups (random channel permutations).",
        ),
    ] = None,
    onnx: Annotated[
        bool, typer.Option("--onnx/--no-onnx", help="Also export to ONNX and compare in ONNX Runtime.")
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Prune RATIO of every group of MODEL by L1 norm (and optionally weight blocks, group convs) and verify
    something is pruned, output shapes, pruned == masked, dense and effective cost and ONNX export; exits 1 when a
    check fails (nothing prunable is a failure)."""
    from prunekit.checks import results_json, run_checks

    if not 0.0 <= ratio < 1.0:
        raise PrunekitError(f"--ratio must be in [0, 1), got {ratio}")
    if density is not None and not 0.0 < density <= 1.0:
        raise PrunekitError(f"--density must be in (0, 1], got {density}")
    if conv_groups is not None and conv_groups < 2:
        raise PrunekitError(f"--conv-groups must be an integer >= 2, got {conv_groups}")
    blk = _parse_block(block)
    net, shape = _build(model, input_size, in_chans, num_classes)
    results, facts = run_checks(
        net, shape, ratio, density=density, block=blk, conv_groups=conv_groups, onnx=onnx
    )
    ok = all(r.ok for r in results)
    if as_json:
        print(
            json.dumps({"model": model, "input_shape": list(shape), **results_json(results, facts)}, indent=2)
        )
    else:
        b, p = facts["baseline"], facts["pruned"]
        console.print(
            f"{model} at {shape[2]}x{shape[3]}: {facts['groups']} groups in the space "
            f"({len(facts['dropped_groups'])} dropped), {facts['channels_pruned']} of {facts['channels']} "
            f"channels pruned at ratio {ratio}: MACs {_fmt(b['macs'])} -> {_fmt(p['macs'])}, "
            f"params {_fmt(b['params'])} -> {_fmt(p['params'])}"
            + (
                f" (effective MACs {_fmt(p['effective_macs'])}, params {_fmt(p['effective_params'])})"
                if density is not None
                else ""
            )
        )
        if density is not None or conv_groups is not None:
            console.print(
                f"weights: {len(facts['sparse_layers'])} layers at density {density} (block {block}), "
                f"{len(facts['grouped_layers'])} convs with {conv_groups} groups"
                + (f", {len(facts['not_grouped'])} convs left dense" if facts["not_grouped"] else "")
            )
        for reason, names in facts["dropped_by_reason"].items():
            console.print(f"[yellow]dropped[/] ({len(names)}): {reason}: {', '.join(names)}")
        for r in results:
            mark = "[green]PASS[/]" if r.ok else "[red]FAIL[/]"
            console.print(f"{mark} {r.name}: {r.detail}")
    if not ok:
        raise typer.Exit(1)


ConfigArg = Annotated[str, typer.Argument(help="Run config (YAML), e.g. configs/quickstart.yaml.")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override a config key: dotted.key=value (repeatable).")
]
OutOpt = Annotated[str | None, typer.Option("--out", help="Run directory (default runs/<config name>).")]
SmokeOpt = Annotated[
    bool, typer.Option("--smoke", help="Same pipeline on a tiny subset with at most 1 epoch per phase.")
]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace an existing run directory instead of resuming it.")
]


def _command_line() -> str:
    return (
        "prunekit " + " ".join(sys.argv[1:])
        if sys.argv and sys.argv[0].endswith("prunekit")
        else "prunekit run"
    )


def _launched_rank0() -> bool:
    """True unless torchrun launched this process as a rank other than 0 (only rank 0 prints the summary)."""
    return os.environ.get("RANK", "0") == "0"


@app.command()
def run(
    config: ConfigArg,
    set_: SetOpt = None,
    out: OutOpt = None,
    smoke: SmokeOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Baseline -> prune to the budget (target) -> finetune -> evaluate -> export -> report. Re-running resumes."""
    from prunekit.config import load_config
    from prunekit.pipeline import run as run_pipeline
    from prunekit.report import fmt_macs, fmt_ms, fmt_pct

    cfg = load_config(config, set_ or [])
    res = run_pipeline(cfg, out, smoke=smoke, overwrite=overwrite, command=_command_line())
    if not _launched_rank0():
        return
    b, p = res.report["baseline"], res.report["pruned"]
    console.print(
        f"[bold]{cfg.name}[/]: top-1 {fmt_pct(b['top1'])} -> {fmt_pct(p['top1'])}, "
        f"MACs {fmt_macs(b['macs'])} -> {fmt_macs(p['macs'])}, "
        f"latency {fmt_ms(b.get('latency_ms'))} -> {fmt_ms(p.get('latency_ms'))} (batch 1)"
    )
    for c in res.report.get("constraints") or []:
        met = {True: "[green]met[/]", False: "[red]NOT met[/]", None: "not measured"}[c.get("met")]
        console.print(f"  {c['metric']} <= {c['asked']:.6g}: {c.get('achieved')} ({c.get('source')}) {met}")
    console.print(f"report: {res.out_dir / 'report.md'}")


@app.command()
def train(
    config: ConfigArg,
    set_: SetOpt = None,
    out: OutOpt = None,
    smoke: SmokeOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Train (or load) the config's baseline only; writes baseline.pt. Re-running resumes after a kill."""
    from prunekit.config import load_config
    from prunekit.pipeline import train_only

    cfg = load_config(config, set_ or [])
    res = train_only(cfg, out, smoke=smoke, overwrite=overwrite, command=_command_line())
    if not _launched_rank0():
        return
    console.print(
        f"baseline top-1 {res.report['baseline']['top1']:.4f}; weights: {res.out_dir / 'baseline.pt'}"
    )


@app.command("eval")
def eval_(
    target: Annotated[str, typer.Argument(help="A run directory, or a baseline.pt checkpoint.")],
    split: Annotated[str, typer.Option("--split", help="test or val.")] = "test",
    as_json: JsonOpt = False,
) -> None:
    """Evaluate a finished run's pruned model (plan.json + weights) or a baseline checkpoint."""
    from pathlib import Path

    from prunekit.data import DataConfig, build_data
    from prunekit.runs import load_baseline, load_run
    from prunekit.train import score_metrics

    if split not in ("test", "val"):
        raise PrunekitError(f"--split must be test or val, got {split!r}")
    path = Path(target)
    if path.is_dir():
        model, _, cfg = load_run(path)
        data_cfg = cfg.data
    else:
        model, ck = load_baseline(path)
        data_cfg = DataConfig.model_validate_json(ck["data"])
    data = build_data(data_cfg)
    loader = data.test if split == "test" else data.val
    if loader is None:
        raise PrunekitError("this dataset configuration has no validation split")
    metrics = score_metrics(model, loader, eval_fn=data.eval_fn)  # a data factory's eval_fn replaces top-1
    if as_json:
        print(json.dumps(metrics))
    elif data.eval_fn is not None:
        console.print(f"{split}: score {metrics['score']:.6g} (the data factory's eval_fn)")
    else:
        console.print(
            f"{split}: top-1 {metrics['top1']:.4f}  top-5 {metrics['top5']:.4f}  loss {metrics['loss']:.4f}  "
            f"({metrics['n']} images)"
        )


@app.command()
def export(
    run_dir: Annotated[str, typer.Argument(help="A finished run directory.")],
    onnx: Annotated[str, typer.Option("--onnx", help="Destination .onnx file.")],
    fold_bn: Annotated[
        bool, typer.Option("--fold-bn/--no-fold-bn", help="Fold BatchNorm into convs.")
    ] = True,
) -> None:
    """Export a finished run's pruned model to ONNX (verified in ONNX Runtime)."""
    from prunekit.export import export_onnx
    from prunekit.runs import load_run

    model, plan, _ = load_run(run_dir)
    info = export_onnx(model, onnx, tuple(plan.input_shape), fold_bn=fold_bn)
    console.print(
        f"wrote {info.path} ({info.size_bytes:,} bytes, opset {info.opset}, max|diff| {info.max_abs_diff:.1e})"
    )


from prunekit.cli_lut import lut_app  # noqa: E402  (after `app`: the sub-app registers on it)

app.add_typer(lut_app, name="lut")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``) and return the exit code.

    Never raises for bad input: a user error (:class:`~prunekit.errors.PrunekitError`) or a command-line usage error
    (unknown command or option, missing or extra argument, bad option value, no command) prints one line on stderr
    and returns 2; ``--help`` returns 0; Ctrl-C returns 130.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    if not _launched_rank0():  # under torchrun the other ranks stay quiet but for errors
        import logging

        logging.getLogger("prunekit").setLevel(logging.ERROR)
    try:
        rv = app(args=args, prog_name="prunekit", standalone_mode=False)
        if isinstance(rv, int):  # typer returns the code of a typer.Exit in non-standalone mode
            return rv
    except PrunekitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except typer.TyperException as exc:  # usage errors (typer's parser) in non-standalone mode
        print(f"error: {_usage_message(exc, args)}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    return 0


def _usage_message(exc: typer.TyperException, args: list[str]) -> str:
    """One line for a usage error raised by typer's parser: the problem, then ``see `prunekit CMD --help```.

    Typer exports only the base class of its usage errors, so the kind is read from the class names (stable since
    click 7) and the error's attributes; anything unrecognised falls back to typer's own message.
    """
    from difflib import get_close_matches

    kinds = {c.__name__ for c in type(exc).__mro__}
    commands = list(typer.main.get_command(app).commands)
    ctx = getattr(exc, "ctx", None)
    words = [a for a in args if not a.startswith("-")]  # the top level takes no option values
    sub = words[0] if words else None
    fallback = f"prunekit {sub}" if sub in commands else "prunekit"  # some parser errors carry no context
    path = ctx.command_path if ctx is not None else fallback
    see = f"see `{path} --help`"
    param = getattr(exc, "param", None)
    if "NoSuchOption" in kinds:
        close = sorted(getattr(exc, "possibilities", None) or [])
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        return f"unknown option {exc.option_name} for `{path}`{hint}; {see}"
    if path == "prunekit" and ("NoArgsIsHelpError" in kinds or sub is None or sub not in commands):
        choose = f"choose one of {', '.join(commands)}; {see}"
        if sub is None or "NoArgsIsHelpError" in kinds:
            return f"missing command: {choose}"
        close = get_close_matches(sub, commands, n=1)
        return (
            f"unknown command {sub!r}" + (f" (did you mean {close[0]!r}?)" if close else "") + f": {choose}"
        )
    if param is not None and "BadParameter" in kinds:
        is_option = getattr(param, "param_type_name", "") == "option"
        opts = list(getattr(param, "opts", None) or [])
        name = opts[0] if is_option and opts else str(param.name).upper()
        if "MissingParameter" in kinds:
            return f"missing {'option' if is_option else 'argument'} {name} for `{path}`; {see}"
        given = _option_value(args, opts) if is_option else None
        value = f" {given!r}" if given is not None else ""
        reason = " ".join(str(exc.message).split()).rstrip(".")
        return f"invalid value{value} for {name} of `{path}`: {reason[:1].lower()}{reason[1:]}; {see}"
    message = " ".join(exc.format_message().split()).rstrip(".")
    return f"`{path}`: {message[:1].lower()}{message[1:]}; {see}"


def _option_value(args: list[str], opts: list[str]) -> str | None:
    """The last value given on the command line for an option spelled as one of ``opts`` (``--x v`` or ``--x=v``)."""
    value = None
    for i, a in enumerate(args):
        for o in opts:
            if a == o and i + 1 < len(args):
                value = args[i + 1]
            elif a.startswith(o + "="):
                value = a[len(o) + 1 :]
    return value


def _console_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    _console_main()
