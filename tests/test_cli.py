"""`prunekit inspect` and `prunekit check` through the real CLI entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from prunekit.cli import main
from prunekit.models import list_models

NETS = Path(__file__).with_name("nets.py")


def run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_inspect_json_fields(capsys):
    code, out, _ = run(
        ["inspect", "resnet20", "--in-chans", "1", "--num-classes", "10", "--input-size", "28", "--json"],
        capsys,
    )
    assert code == 0
    data = json.loads(out)
    assert {"macs", "params", "flops", "groups"} <= set(data)
    assert data["flops"] == 2 * data["macs"]
    assert data["params"] == 272474 - 2 * 64 * 0 - 9 * 16 * 2  # in_chans=1 removes 2*9*16 stem weights
    names = [g["name"] for g in data["groups"]]
    assert names[0] == "conv1" and len(names) == 12  # 3 residual stage groups + 9 block-internal groups
    first = data["groups"][0]
    assert {"first", "residual"} <= set(first["tags"]) and first["channels"] == 16


def test_inspect_table(capsys):
    code, out, _ = run(["inspect", "mobilenet_v1:width_mult=0.25", "--input-size", "64"], capsys)
    assert code == 0
    assert "channel groups" in out and "total" in out and "FLOPs (= 2 x MACs)" in out


@pytest.mark.parametrize(
    "args",
    [
        ["inspect", "resnet21"],
        ["inspect", "resnet20:width=2"],
        ["inspect", "resnet20:width_mult"],
        ["check", "resnet20", "--ratio", "1.0"],
        ["check", "resnet20", "--ratio", "-0.1"],
        ["inspect", "no/such/file.py:make"],
        ["check", "resnet20", "--density", "0"],
        ["check", "resnet20", "--density", "1.5"],
        ["check", "resnet20", "--density", "0.5", "--block", "4by1"],
        ["check", "resnet20", "--density", "0.5", "--block", "0x1"],
        ["check", "resnet20", "--conv-groups", "1"],
    ],
)
def test_user_errors_exit_2_with_one_line(args, capsys):
    code, out, err = run(args, capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.parametrize("name", sorted(list_models()))
def test_check_passes_on_every_reference_model(name, capsys):
    size = (
        "32"
        if name.startswith(("resnet2", "resnet3", "resnet4", "resnet5", "resnet11", "vgg", "pre"))
        else "64"
    )
    spec = "preresnet:depth=29" if name == "preresnet" else name  # preresnet164 covers the default depth
    code, out, _ = run(["check", spec, "--input-size", size, "--json", "--num-classes", "10"], capsys)
    data = json.loads(out)
    assert code == 0, data["checks"]
    assert data["ok"] and len(data["checks"]) == 6
    assert data["pruned"]["macs"] < data["baseline"]["macs"]
    assert data["channels_pruned"] > 0 and data["output_shape"] == data["pruned_output_shape"]


@pytest.mark.parametrize(
    ("name", "size"), [("resnet20", "32"), ("mobilenet_v2:width_mult=0.5", "32"), ("vgg16_bn", "32")]
)
def test_check_passes_with_density_and_conv_groups(name, size, capsys):
    args = ["check", name, "--input-size", size, "--num-classes", "10", "--json"]
    code, out, _ = run(
        [*args, "--ratio", "0.25", "--density", "0.5", "--block", "4x1", "--conv-groups", "2"], capsys
    )
    data = json.loads(out)
    assert code == 0, data["checks"]
    assert data["sparse_layers"] and data["grouped_layers"]
    p = data["pruned"]
    assert p["effective_macs"] < p["macs"] < data["baseline"]["macs"]
    assert p["effective_params"] < p["params"]


def test_check_with_density_only_passes_without_channel_pruning(capsys):
    code, out, _ = run(
        ["check", "resnet20", "--ratio", "0", "--density", "0.3", "--no-onnx", "--json"], capsys
    )
    data = json.loads(out)
    assert code == 0 and data["channels_pruned"] == 0, data["checks"]
    assert data["pruned"]["macs"] == data["baseline"]["macs"]  # dense storage
    assert data["pruned"]["effective_macs"] < 0.4 * data["baseline"]["macs"]


def test_inspect_json_lists_weight_options(capsys):
    code, out, _ = run(["inspect", "mobilenet_v2:width_mult=0.5", "--input-size", "32", "--json"], capsys)
    layers = [r for r in json.loads(out)["layers"] if r["kind"] in ("conv", "linear")]
    dw = [r for r in layers if not r["takes_density"]]
    assert dw and all(r["kind"] == "conv" and r["conv_groups"] == [] for r in dw)  # depthwise convs
    grouped = [r for r in layers if r["conv_groups"]]
    assert grouped and all(r["in"] % g == 0 and r["out"] % g == 0 for r in grouped for g in r["conv_groups"])
    assert all(2 in r["conv_groups"] for r in grouped if r["in"] % 2 == 0 and r["out"] % 2 == 0)
    assert [r["name"] for r in layers if r["output"]] == ["classifier.1"]


def test_check_fails_when_nothing_is_prunable(capsys):
    code, out, _ = run(["check", f"{NETS}:NothingPrunable", "--input-size", "16", "--no-onnx"], capsys)
    assert code == 1
    assert (
        "FAIL something to prune: nothing to prune: every channel group was dropped "
        "(reasons: channels reach the model output: conv)" in " ".join(out.split())
    )
    code, out, _ = run(
        ["check", f"{NETS}:NothingPrunable", "--input-size", "16", "--no-onnx", "--json"], capsys
    )
    data = json.loads(out)
    assert code == 1 and not data["ok"] and data["groups"] == 0
    assert data["dropped_by_reason"] == {"channels reach the model output": ["conv"]}
    first = data["checks"][0]
    assert first["name"] == "something to prune" and not first["ok"]


def test_check_fails_when_the_plan_prunes_nothing(capsys):
    code, out, _ = run(["check", "resnet20", "--ratio", "0", "--no-onnx", "--json"], capsys)
    data = json.loads(out)
    assert code == 1 and data["channels_pruned"] == 0
    bad = [c for c in data["checks"] if not c["ok"]]
    assert [c["name"] for c in bad] == ["something to prune"]
    assert "the plan keeps every channel" in bad[0]["detail"]


def test_check_squeezenet_style_keeps_the_classes(capsys):
    code, out, _ = run(["check", f"{NETS}:SqueezeLike", "--input-size", "32", "--no-onnx", "--json"], capsys)
    data = json.loads(out)
    assert code == 0, data["checks"]
    assert data["output_shape"] == data["pruned_output_shape"] == [[2, 10]]
    assert data["dropped_by_reason"] == {"channels reach the model output": ["classifier.1"]}
    assert data["pruned"]["macs"] < data["baseline"]["macs"]


def test_check_fails_when_the_output_shape_changes(monkeypatch, capsys):
    """With output detection disabled (the old bug) the classifier conv loses classes: the check must say so."""
    import prunekit.space.channels as channels

    monkeypatch.setattr(channels, "_output_reach", lambda dg, name_of: (set(), set()))
    code, out, _ = run(["check", f"{NETS}:SqueezeLike", "--input-size", "32", "--no-onnx", "--json"], capsys)
    data = json.loads(out)
    assert code == 1
    shape = next(c for c in data["checks"] if c["name"] == "output shape == original")
    assert not shape["ok"] and shape["detail"] == "pruned (2, 5) != original (2, 10)"


def test_check_reports_failure_with_exit_1(monkeypatch, capsys):
    import prunekit.checks as checks

    def broken_apply(model, plan, space=None):  # simulate a slicing bug: the pruned model keeps all channels
        return checks.copy.deepcopy(model)

    monkeypatch.setattr(checks, "apply", broken_apply)
    code, out, _ = run(["check", "resnet20", "--no-onnx"], capsys)
    assert code == 1
    assert "FAIL analytic == measured cost" in out


def test_console_script_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "prunekit.cli", "inspect", "resnet20", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and json.loads(proc.stdout)["macs"] > 0


def cli_subprocess(args):
    return subprocess.run(
        [sys.executable, "-m", "prunekit.cli", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["check", "resnet20", "--qqq"],
            "unknown option --qqq for `prunekit check`; see `prunekit check --help`",
        ),
        (
            ["check", "resnet20", "--rato", "0.3"],
            "unknown option --rato for `prunekit check` (did you mean --ratio?)",
        ),
        (["--bogus"], "unknown option --bogus for `prunekit`; see `prunekit --help`"),
        (["run"], "missing argument CONFIG for `prunekit run`; see `prunekit run --help`"),
        (["export", "runs/x"], "missing option --onnx for `prunekit export`"),
        (["frobnicate"], "unknown command 'frobnicate': choose one of inspect, check, run"),
        (["chek"], "unknown command 'chek' (did you mean 'check'?)"),
        (
            ["check", "resnet20", "--ratio", "abc"],
            "invalid value 'abc' for --ratio of `prunekit check`: input should",
        ),
        (
            ["inspect", "resnet20", "--input-size", "3"],
            "invalid value '3' for --input-size of `prunekit inspect`",
        ),
        ([], "missing command: choose one of inspect, check, run"),
        (["check", "resnet20", "extra"], "unexpected extra argument(s) (extra); see `prunekit check --help`"),
        (["check", "resnet20", "--ratio"], "`prunekit check`: option '--ratio' requires an argument"),
        (["check", "resnet20", "--json=1"], "option '--json' does not take a value"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args, message):
    proc = cli_subprocess(args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert message in lines[0]


def test_user_error_in_subprocess_is_one_line():
    proc = cli_subprocess(["check", "resnet20", "--ratio", "1.5"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == ["error: --ratio must be in [0, 1), got 1.5"]


@pytest.mark.parametrize("args", [["--help"], ["check", "--help"]])
def test_help_exits_0(args):
    proc = cli_subprocess(args)
    assert proc.returncode == 0 and proc.stderr == ""
    assert "Usage" in proc.stdout and "--help" in proc.stdout
