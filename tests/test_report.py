"""End-of-run report (prunekit.report): markdown, plots, atomic writing."""

from __future__ import annotations

import copy
import json
import pathlib
import re
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from prunekit.report import (
    DASH,
    Constraint,
    LayerRow,
    Report,
    Side,
    fmt_macs,
    fmt_ms,
    fmt_params,
    fmt_pct,
    plot_tradeoff,
    plot_training,
    render_markdown,
    training_warnings,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BASE = {
    "top1": 0.9123,
    "top5": 0.998,
    "macs": 41022464,
    "params": 272186,
    "latency_ms": 0.71,
    "latency_ms_batch": 45.2,
    "latency_batch": 64,
}
PRUNED = {
    "top1": 0.905,
    "top5": 0.997,
    "macs": 20511232,
    "params": 137000,
    "latency_ms": 0.5,
    "latency_ms_batch": 25.0,
    "latency_batch": 64,
}
POINTS = [
    {"label": "stage 1", "macs": 35_000_000, "top1": 0.910, "latency_ms": 0.66},
    {"label": "stage 2", "macs": 30_000_000, "top1": 0.908, "latency_ms": 0.61},
    {"label": "stage 3", "macs": 25_000_000, "top1": 0.906, "latency_ms": 0.56},
]


def full_report(n_groups: int = 3) -> dict:
    groups = [{"name": "conv1", "channels": 16, "kept": 8, "tags": ["first", "residual"]}]
    groups += [
        {"name": f"layer{i}.conv1", "channels": 32, "kept": 24, "tags": []} for i in range(1, n_groups)
    ]
    return {
        "name": "quickstart",
        "command": "prunekit run configs/quickstart.yaml",
        "created": "2026-11-21T12:00:00Z",
        "dataset": {
            "name": "fashion_mnist",
            "sizes": {"train": 54000, "val": 6000, "test": 10000},
            "input_shape": [1, 1, 28, 28],
            "num_classes": 10,
        },
        "model": "resnet20:in_chans=1,num_classes=10",
        "method": {"name": "magnitude", "config": {"criterion": "l1"}},
        "target": {"macs_ratio": 0.5, "macs": 20511232},
        "baseline": dict(BASE),
        "pruned": dict(PRUNED),
        "wall_s": {
            "baseline": 240.1,
            "method": 3.2,
            "finetune": 160.0,
            "evaluate": 2.0,
            "export": 5.0,
            "total": 410.3,
        },
        "history": {
            "baseline": [
                {"epoch": e, "train_loss": 1.0 / e, "train_top1": 0.8, "val_top1": 0.85 + 0.01 * e, "lr": 0.1}
                for e in range(1, 6)
            ],
            "finetune": [{"epoch": e, "train_loss": 0.3, "val_top1": 0.9 + 0.001 * e} for e in range(1, 4)],
            "method": [
                {"step": 1, "macs": 30_765_348, "val_top1": 0.9071, "note": "a|b"},
                {"step": 2, "macs": 20_511_232, "val_top1": 0.8843, "pruned_groups": 7},
            ],
        },
        "groups": groups,
        "extra": {"points": copy.deepcopy(POINTS), "seed_used": 0},
        "files": {"plan": "plan.json", "weights": "model.safetensors", "onnx": "model.onnx"},
    }


def _row(md: str, label: str) -> list[str]:
    """Cells of the summary-table row whose first cell is ``**label**``."""
    for line in md.splitlines():
        if line.startswith(f"| **{label}** |"):
            return [c.strip() for c in line.strip("|").split("|")]
    raise AssertionError(f"no row {label!r} in:\n{md}")


def _factor(md: str, name: str) -> str:
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells and cells[0].startswith(name):
            return cells[-1]
    raise AssertionError(f"no factor {name!r}")


# ---------------------------------------------------------------------------------------------- formatting


def test_formatters():
    assert fmt_pct(0.9123) == "91.23%"
    assert fmt_pct(1.0) == "100.00%"
    assert fmt_macs(41022464) == "41.02M"
    assert fmt_macs(4.1e9) == "4.10G"
    assert fmt_params(272186) == "272.19K"
    assert fmt_params(11_173_962) == "11.17M"
    assert fmt_params(512) == "512"
    assert fmt_ms(0.7123) == "0.712 ms"
    assert fmt_ms(45.2) == "45.20 ms"
    assert fmt_ms(np.float32(2.5)) == "2.50 ms"
    for f in (fmt_pct, fmt_macs, fmt_params, fmt_ms):
        assert f(None) == DASH
        assert f("n/a") == DASH
        assert f(True) == DASH
    assert fmt_pct(float("nan")) == "NaN"


# ---------------------------------------------------------------------------------------------- markdown


def test_full_report_markdown_numbers_and_factors():
    md = render_markdown(full_report())
    assert md.startswith("# Pruning report: quickstart")
    assert "prunekit run configs/quickstart.yaml" in md
    assert "`fashion_mnist`" in md and "10 classes" in md and "train 54,000" in md

    base, pruned, change = _row(md, "baseline"), _row(md, "pruned"), _row(md, "change")
    assert base[1:] == ["91.23%", "99.80%", "41.02M", "272.19K", "0.710 ms", "45.20 ms"]
    assert pruned[1:] == ["90.50%", "99.70%", "20.51M", "137.00K", "0.500 ms", "25.00 ms"]
    assert change[1] == "-0.73 pp" and change[3] == "-50.0%"
    assert "latency b64" in md
    assert "FLOPs = 2 × MACs" in md

    assert _factor(md, "MACs reduction") == "2.00×"
    assert _factor(md, "params reduction") == f"{272186 / 137000:.2f}×"
    assert _factor(md, "speedup, batch 1") == f"{0.71 / 0.5:.2f}×" == "1.42×"
    assert _factor(md, "speedup, batch 64") == f"{45.2 / 25.0:.2f}×" == "1.81×"
    assert _factor(md, "speedup ÷ MACs reduction[^eff], batch 1") == f"{(0.71 / 0.5) / 2:.2f}" == "0.71"
    assert _factor(md, "speedup ÷ MACs reduction, batch 64") == f"{(45.2 / 25.0) / 2:.2f}" == "0.90"

    assert "asked ≤ 20.51M MACs (50.0% of baseline); achieved 20.51M MACs (50.0% of baseline) — met" in md
    assert "| finetune | 2m 40s | 39% |" in md
    assert "| **total** | **6m 50s** | 100% |" in md
    assert "| 0 | `conv1` | first, residual | 16 → 8 | 50.0% |" in md
    assert "| 1 | `layer1.conv1` |   | 32 → 24 | 75.0% |" not in md  # empty tags show a dash
    assert "| 1 | `layer1.conv1` | – | 32 → 24 | 75.0% |" in md

    # method history: union of keys as columns, numbers formatted by kind, pipes escaped
    assert "| step | macs | val_top1 | note | pruned_groups |" in md
    assert "| 1 | 30.77M | 90.71% | a\\|b | – |" in md
    assert "| 2 | 20.51M | 88.43% | – | 7 |" in md

    # links to files and plots
    for target in (
        "plan.json",
        "model.safetensors",
        "model.onnx",
        "report.json",
        "tradeoff.png",
        "training.png",
    ):
        assert f"]({target})" in md
    assert "stage 2" in md  # extra points table


def test_machine_line_names_where_latency_was_measured():
    r = full_report()
    assert "Latency measured with" not in render_markdown(r)  # no machine recorded: no line
    r["machine"] = {
        "runtime": "ort",
        "version": "onnxruntime 1.2.3",
        "threads": 2,
        "cpu": "Some CPU",
        "isa": [],
    }
    assert (
        "Latency measured with onnxruntime 1.2.3, 2 threads, on Some CPU (no ISA flags read)."
        in render_markdown(r)
    )
    r["machine"].update(threads=1, isa=["avx512f", "avx2"])
    assert "onnxruntime 1.2.3, 1 thread, on Some CPU (avx512f, avx2)." in render_markdown(r)


def test_over_target_is_flagged():
    r = full_report()
    r["pruned"]["macs"] = 22_000_000
    assert "over target by 7.3%" in render_markdown(r)


def test_groups_collapsed_to_40_rows():
    md = render_markdown(full_report(n_groups=57))
    group_rows = [ln for ln in md.splitlines() if re.match(r"\| \d+ \| `", ln)]
    assert len(group_rows) == 40
    assert "first 40 of 57 groups" in md
    assert "57 groups, " in md


def test_minimal_report_renders_with_dashes(tmp_path: Path):
    r = full_report()
    for k in ("history", "groups", "extra", "wall_s", "target", "files", "dataset", "command"):
        del r[k]
    for side in ("baseline", "pruned"):
        for k in ("latency_ms", "latency_ms_batch", "latency_batch", "top5"):
            del r[side][k]
    md = render_markdown(r)
    base = _row(md, "baseline")
    assert base[1] == "91.23%" and base[3] == "41.02M"
    assert base[5] == base[6] == DASH  # no latency
    assert _factor(md, "speedup, batch 1") == DASH
    assert _factor(md, "MACs reduction") == "2.00×"
    assert "## Method history" not in md and "## Training" not in md
    assert "training.png" not in md

    paths = write_report(r, tmp_path)
    assert set(paths) == {"json", "markdown", "tradeoff"}
    assert not (tmp_path / "training.png").exists()
    assert (tmp_path / "tradeoff.png").read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize("report", [{}, {"baseline": None, "pruned": None, "history": {"method": None}}])
def test_empty_or_malformed_report_still_renders(report: dict, tmp_path: Path):
    md = render_markdown(report)
    assert _row(md, "baseline")[1:] == [DASH] * 6
    assert "asked –; achieved –" in md
    write_report(report, tmp_path)
    assert json.loads((tmp_path / "report.json").read_text()) == report


def test_wrongly_typed_section_renders_but_is_not_written(tmp_path: Path):
    """render_markdown reads a dict leniently; write_report validates it first and writes nothing when invalid."""
    report = {"baseline": None, "pruned": "oops", "history": {"method": None}}
    md = render_markdown(report)
    assert _row(md, "pruned")[1:] == [DASH] * 6
    with pytest.raises(ValidationError, match=r"pruned\n"):
        write_report(report, tmp_path)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- files and plots


def test_write_report_files(tmp_path: Path):
    r = full_report()
    out = tmp_path / "run"  # created on demand
    paths = write_report(r, out)
    assert paths == {
        "tradeoff": out / "tradeoff.png",
        "training": out / "training.png",
        "markdown": out / "report.md",
        "json": out / "report.json",
    }
    assert json.loads(paths["json"].read_text()) == r
    assert paths["json"].read_text().startswith('{\n  "name"')  # indented
    assert paths["markdown"].read_text(encoding="utf-8") == render_markdown(r)
    for kind in ("tradeoff", "training"):
        data = paths[kind].read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
        w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")  # IHDR
        assert w > 800 and h > 300
    assert sorted(p.name for p in out.iterdir()) == [
        "report.json",
        "report.md",
        "tradeoff.png",
        "training.png",
    ]


def test_report_json_is_strict(tmp_path: Path):
    r = full_report()
    r["pruned"]["top1"] = np.float64(0.905)
    r["pruned"]["params"] = np.int64(137000)
    r["history"]["finetune"][0]["train_loss"] = float("nan")
    r["files"]["plan"] = Path("plan.json")
    write_report(r, tmp_path)
    text = (tmp_path / "report.json").read_text()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert data["pruned"]["top1"] == 0.905 and data["pruned"]["params"] == 137000
    assert data["history"]["finetune"][0]["train_loss"] is None
    assert data["files"]["plan"] == "plan.json"


def _line(fig, gid: str, panel: int):
    return next(ln for ln in fig.axes[panel].get_lines() if ln.get_gid() == gid)


def test_tradeoff_plot_draws_extra_points():
    fig = plot_tradeoff(full_report())
    assert len(fig.axes) == 2
    pts_m, pts_l = _line(fig, "points", 0), _line(fig, "points", 1)
    assert list(pts_m.get_xdata()) == pytest.approx([35.0, 30.0, 25.0])  # MACs in M
    assert list(pts_m.get_ydata()) == pytest.approx([91.0, 90.8, 90.6])  # top-1 in %
    assert list(pts_l.get_xdata()) == pytest.approx([0.66, 0.61, 0.56])
    assert pts_m.get_linestyle() == "-"  # connected
    labels = {t.get_text() for t in fig.axes[0].texts}
    assert {"stage 1", "stage 2", "stage 3"} <= labels
    assert _line(fig, "baseline", 0).get_xdata()[0] == pytest.approx(41.022464)
    assert _line(fig, "pruned", 1).get_xdata()[0] == pytest.approx(0.5)
    assert _line(fig, "target", 0).get_xdata()[0] == pytest.approx(20.511232)
    assert fig.axes[0].get_xlim()[0] == 0  # linear, from zero
    assert fig.axes[0].get_xscale() == "linear"


def test_tradeoff_without_points_or_latency():
    r = full_report()
    del r["extra"]
    for side in ("baseline", "pruned"):
        del r[side]["latency_ms"]
    fig = plot_tradeoff(r)
    assert not [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_gid() == "points"]
    assert not fig.axes[1].get_lines()
    assert any("no latency" in t.get_text() for t in fig.axes[1].texts)


def test_training_plot_lines():
    fig = plot_training(full_report())
    gids = {ln.get_gid() for ax in fig.axes for ln in ax.get_lines()}
    assert {"baseline:val_top1", "baseline:train_top1", "baseline:train_loss", "finetune:val_top1"} <= gids
    assert not any(g and g.startswith("method:") for g in gids)  # method rows have no epochs
    ft = _line(fig, "finetune:val_top1", 0)
    assert list(ft.get_xdata()) == [6, 7, 8]  # laid after the 5 baseline epochs


def test_no_pyplot_import():
    """The report never touches pyplot (no global backend switch, no display, no leaked figures)."""
    import subprocess
    import sys

    code = (
        "import sys; from prunekit import report; "
        "assert 'matplotlib' not in sys.modules and 'torch' not in sys.modules, 'heavy import at import time'; "
        "report.plot_tradeoff({}); report.plot_training({}); "
        "assert 'matplotlib.pyplot' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------- atomicity


def test_render_failure_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "report.md").write_text("previous run\n")

    def boom(*a, **k):
        raise RuntimeError("png writer failed")

    monkeypatch.setattr("matplotlib.figure.Figure.savefig", boom)
    with pytest.raises(RuntimeError, match="png writer failed"):
        write_report(full_report(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]
    assert (tmp_path / "report.md").read_text() == "previous run\n"


def test_write_failure_midway_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    write_report(full_report(), tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    real = pathlib.Path.write_bytes
    calls = []

    def half_then_fail(self: Path, data: bytes) -> int:
        calls.append(self)
        if len(calls) == 2:  # the second PNG: write half of it, then the disk is "full"
            real(self, data[: len(data) // 2])
            raise OSError(28, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", half_then_fail)
    r = full_report()
    r["name"] = "second run"
    with pytest.raises(OSError, match="No space"):
        write_report(r, tmp_path)
    assert len(calls) == 2
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(after) == set(before)  # no temporary files left behind
    assert after["training.png"] == before["training.png"]  # the old file is intact, not half of the new one
    assert after["report.json"] == before["report.json"]  # written last: still describes a complete report
    assert after["tradeoff.png"] != before["tradeoff.png"]  # written before the failure, complete
    for name, data in after.items():
        if name.endswith(".png"):
            assert data.startswith(PNG_MAGIC) and data.rstrip(b"\x00").endswith(b"IEND\xaeB`\x82")


def test_nan_in_history_is_shown():
    r = full_report()
    r["history"]["method"][0]["val_top1"] = float("nan")
    assert "| 1 | 30.77M | NaN |" in render_markdown(r)


def test_stable_training_has_no_warning():
    rep = full_report()
    assert training_warnings(rep) == []
    assert "Warning" not in render_markdown(rep)


@pytest.mark.parametrize(
    ("losses", "expect"),
    [
        ([3.07, 1.80, 1.55], "epoch 1 train loss 3.070 above chance level ln(10) = 2.303"),
        ([1.87, 2.09, 1.36], "epoch 2 train loss rose 1.870 -> 2.090"),
        ([1.30, 1.32, 1.20], None),  # +1.5%: noise, not a warning
        (
            [2.33, 2.10, 1.90],
            None,
        ),  # a short first epoch from a fresh init averages near chance: not a warning
    ],
)
def test_unstable_training_is_flagged(losses: list[float], expect: str | None):
    rep = full_report()
    rep["history"]["final"] = [
        {"epoch": e, "train_loss": v, "val_top1": 0.5} for e, v in enumerate(losses, 1)
    ]
    warns = training_warnings(rep)
    if expect is None:
        assert warns == []
        return
    assert len(warns) == 1 and warns[0].startswith("`final`:") and expect in warns[0]
    assert "set grad_clip" in warns[0]
    md = render_markdown(rep)
    assert f"> **Warning** {warns[0]}" in md


def test_warning_without_class_count_uses_the_rise_rule_only():
    rep = full_report()
    del rep["dataset"]["num_classes"]
    rep["history"]["final"] = [{"epoch": 1, "train_loss": 9.0}, {"epoch": 2, "train_loss": 8.0}]
    assert training_warnings(rep) == []
    rep["history"]["final"].append({"epoch": 3, "train_loss": 8.9})
    assert "epoch 3 train loss rose" in training_warnings(rep)[0]


# ---------------------------------------------------------------------------------------------- typed report


def _constraints() -> list[dict]:
    return [
        {
            "metric": "macs",
            "asked": 20511232,
            "achieved": 20511232,
            "ratio_of_baseline": 0.5,
            "source": "analytic",
        },
        {"metric": "latency_ms", "asked": 0.45, "achieved": 0.5, "source": "measured"},
        {"metric": "params", "asked": 150_000, "source": "analytic"},
    ]


def test_old_style_dict_validates_and_renders_the_same():
    d = full_report()
    rep = Report.model_validate(d)
    assert rep.pruned.top1 == 0.905 and rep.groups[0].tags == ["first", "residual"]
    assert rep.method.config == {"criterion": "l1"}
    assert rep.constraints == [] and rep.layers == []
    assert rep.to_dict() == d  # same keys back: nothing unset is added, nothing given is dropped
    assert list(rep.to_dict()) == list(d)
    assert render_markdown(rep) == render_markdown(d)
    # the extra keys the pipeline writes, and explicit None values, are kept
    d.update(smoke=True, warnings=[])
    d["pruned"].update(val_top1=None, flops=2 * PRUNED["macs"], latency_threads=1)
    d["target"]["achieved_macs_ratio"] = 0.5
    assert Report.model_validate(d).to_dict() == d


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"pruned": {"top1": "abc"}}, "pruned.top1"),
        ({"pruned": {"top1": 91.2}}, "pruned.top1"),  # a percentage where a fraction is expected
        ({"groups": [{"name": "conv1", "channels": "many"}]}, "groups.0.channels"),
        ({"constraints": [{"metric": "flops", "asked": 1.0, "source": "analytic"}]}, "constraints.0.metric"),
        ({"layers": [{"density": 0.5}]}, "layers.0.name"),
        ({"prunde": {}}, "prunde"),  # unknown top-level key (a typo)
    ],
)
def test_invalid_report_raises_a_clear_error(change: dict, where: str, tmp_path: Path):
    d = {**full_report(), **change}
    with pytest.raises(ValidationError) as exc:
        Report.model_validate(d)
    locs = {".".join(map(str, e["loc"])) for e in exc.value.errors()}
    assert where in locs and where in str(exc.value)
    with pytest.raises(ValidationError):
        write_report(d, tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_invalid_assignment_raises():
    rep = Report.model_validate(full_report())
    with pytest.raises(ValidationError, match="top1"):
        rep.pruned.top1 = "abc"
    rep.pruned.top1 = np.float32(0.5)  # numpy values are accepted
    assert rep.pruned.top1 == 0.5


def test_constraint_met_is_derived():
    rows = [Constraint.model_validate(c) for c in _constraints()]
    assert [c.met for c in rows] == [True, False, None]
    assert (
        Constraint(metric="macs", asked=10, achieved=20, met=True, source="analytic").met is True
    )  # given wins


def test_constraints_table_rendered():
    d = {**full_report(), "constraints": _constraints()}
    for md in (render_markdown(d), render_markdown(Report.model_validate(d))):
        lines = md.splitlines()
        head = lines.index("## Constraints")
        target = next(i for i, ln in enumerate(lines) if ln.startswith("**Target:**"))
        assert head == target + 2 and lines.index("## Wall-clock time") > head  # right after the target line
        assert lines[head + 2 : head + 7] == [
            "| metric | asked | achieved | met | source |",
            "|---|---:|---:|:---:|---|",
            "| MACs | ≤ 20.51M (50.0% of baseline) | 20.51M | ✓ | analytic |",
            "| latency b1 | ≤ 0.450 ms | 0.500 ms | ✗ | measured |",
            "| params | ≤ 150.00K | – | – | analytic |",
        ]
    assert "## Constraints" not in render_markdown(full_report())


def test_layers_table_rendered():
    layers = [
        {
            "name": "conv1",
            "density": 0.5,
            "block": [4, 1],
            "conv_groups": 1,
            "macs": 1_000_000,
            "effective_macs": 500_000,
        },
        {"name": "layer1.0.dw", "conv_groups": 16},
    ]
    md = render_markdown(Report.model_validate({**full_report(), "layers": layers}))
    lines = md.splitlines()
    head = lines.index("## Layers")
    assert lines.index("## Channel groups") < head < lines.index("## Method history")
    assert lines[head + 2] == "| # | layer | block | density | conv groups | MACs | effective MACs |"
    assert "| 0 | `conv1` | 4×1 | 50.0% | 1 | 1.00M | 0.50M |" in lines
    assert "| 1 | `layer1.0.dw` | – | – | 16 | – | – |" in lines
    assert "## Layers" not in render_markdown(full_report())

    many = [{"name": f"conv{i}", "density": 1.0} for i in range(45)]
    md = render_markdown({"layers": many})
    assert "first 40 of 45 layers" in md and "`conv39`" in md and "`conv40`" not in md


def test_report_round_trips_through_json(tmp_path: Path):
    rep = Report.model_validate(full_report())
    rep.constraints.append(Constraint(metric="macs", asked=20511232, achieved=20511232, source="analytic"))
    rep.layers = [LayerRow(name="conv1", density=0.75, block=(4, 1), conv_groups=1)]
    rep.pruned = Side(**{**PRUNED, "effective_macs": 18_000_000, "predicted_latency_ms": 0.48})
    again = Report.model_validate_json(rep.model_dump_json())
    assert again == rep
    assert Report.model_validate(json.loads(json.dumps(rep.to_dict()))) == rep

    paths = write_report(rep, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data == rep.to_dict()
    assert data["constraints"][0]["met"] is True  # appended in place, still written
    assert data["layers"] == [{"name": "conv1", "density": 0.75, "block": [4, 1], "conv_groups": 1}]
    assert data["pruned"]["effective_macs"] == 18_000_000
    assert Report.model_validate(data) == rep
    assert paths["markdown"].read_text(encoding="utf-8") == render_markdown(rep)


def test_eval_fn_score_is_shown_as_a_score_not_a_percentage(tmp_path: Path):
    r = full_report()
    r["baseline"]["top1"], r["pruned"]["top1"] = -0.25, -0.5  # e.g. a negative MSE: out of [0, 1]
    with pytest.raises(ValidationError, match="top1"):
        Report.model_validate(r)  # as top-1 it is invalid...
    r["score"] = "eval_fn"
    rep = Report.model_validate(r)  # ...as the data factory's eval_fn score it is fine
    assert rep.pruned.top1 == -0.5 and rep.to_dict()["score"] == "eval_fn"
    md = render_markdown(rep)
    assert "| score[^score] | top-5 |" in md and "| top-1 |" not in md
    base, pruned, change = _row(md, "baseline"), _row(md, "pruned"), _row(md, "change")
    assert base[1] == "-0.25" and pruned[1] == "-0.5" and change[1] == "-0.25"
    assert "`eval_fn`" in md and "-25.00%" not in md
    write_report(rep, tmp_path)
    assert json.loads((tmp_path / "report.json").read_text())["pruned"]["top1"] == -0.5
