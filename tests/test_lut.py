"""Per-layer latency tables (issue #16): grid construction, interpolation, signature checks, resume, the CLI, and a
latency budget predicted from a table through `prunekit run`. Timings are synthetic where the test is about the
table's logic (so it cannot be flaky); one build times real one-layer ONNX models."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml
from tests.nets import DepthwiseChain, ResidualProj

from prunekit.cli import main
from prunekit.cost import lut as lut_mod
from prunekit.cost.lut import build_table, load_table, plan_entries
from prunekit.cost.predict import LatencyModel, _Reader
from prunekit.cost.runtimes import LayerConfig, runnable
from prunekit.errors import PrunekitError
from prunekit.models import create_model
from prunekit.space import ChannelSpace, plan_from_widths, uniform_widths

SHAPE = (1, 3, 16, 16)


def fake_avx2(monkeypatch):
    """Make the table's channel unit and ONNX Runtime's layout rule those of an AVX2 machine (block 8, inputs blocked
    at multiples of 4), whatever this machine is: the synthetic timings below are an AVX2 runtime's. Without it an
    AVX-512 machine (block 16) reads them through the wrong rule."""
    from prunekit.cost import latency, ort_layout

    monkeypatch.setattr(latency, "channel_multiple", lambda: 8)
    monkeypatch.setattr(ort_layout, "input_alignment", lambda block: block // 2)


def fake_time(monkeypatch, calls: list | None = None):
    """Replace timing by a deterministic cost: ms = 1e-6 * the layer's MACs, doubled when its input channels are not a
    multiple of 8 (as ONNX Runtime's unblocked kernels are slower), on an AVX2 layout (:func:`fake_avx2`)."""
    fake_avx2(monkeypatch)

    def fake_runnable(cfg: LayerConfig, batch, runtime, threads):
        k = int(np.prod(cfg.kernel)) if cfg.kind != "linear" else 1
        pos = int(np.prod(cfg.in_spatial)) if cfg.in_spatial else 1
        ms = 1e-6 * batch * pos * k * cfg.c_in * cfg.c_out / cfg.groups * (2.0 if cfg.c_in % 8 else 1.0)
        return lambda ms=ms: ms

    def fake_interleaved(fns, runtime, **kw):
        if calls is not None:
            calls.append(len(fns))
        return [fn() for fn in fns]

    monkeypatch.setattr(lut_mod, "runnable", fake_runnable)
    monkeypatch.setattr(lut_mod, "time_interleaved", fake_interleaved)


def fake_overhead(table, space):
    from prunekit.cost.lut import Overhead

    names = LatencyModel(table, space).feature_names()
    rest = [0.0] * (len(names) - 1)
    return Overhead(
        labels=["full"],
        names=names,
        features=[[1.0, *rest]],
        residual_ms={b: [0.01] for b in map(str, table.batches)},
        measured_ms={b: [1.0] for b in map(str, table.batches)},
        coef={b: [0.01, *rest] for b in map(str, table.batches)},
    )


def test_grid_points_sit_on_channel_block_multiples():
    model = ResidualProj().eval()
    space = ChannelSpace.build(model, SHAPE, quiet=True)
    entries, layer_entry = plan_entries(model, space, unit=8, points=4, groups=(1, 2, 4), densities=(0.5,))
    assert set(layer_entry) == {n for n, s in space.layers.items() if s.kind in ("conv", "linear")}
    stem = entries[layer_entry["stem"]]
    assert stem.grids["1"].c_in == [3]  # the image: a fixed axis
    assert all(c % 8 == 0 or c == stem.c_out_full for c in stem.grids["1"].c_out)
    assert stem.grids["1"].c_out[-1] == stem.c_out_full and len(stem.grids["1"].c_out) <= 4
    assert all(c % 8 for c in stem.grids["1u"].c_out)  # the unaligned grid sits between the multiples
    b1 = entries[layer_entry["b1c1"]]
    assert {"1", "1u", "2", "4"} <= set(b1.grids) and all(c % 4 == 0 for c in b1.grids["4"].c_in)
    assert entries[layer_entry["b1c1"]] is entries[layer_entry["b1c2"]]  # same signature: measured once
    fc = entries[layer_entry["fc"]]
    assert fc.grids["1"].c_out == [fc.c_out_full]  # the logits are never pruned: fixed


def test_interpolation_reproduces_the_measured_grid_points_exactly(monkeypatch, tmp_path):
    fake_time(monkeypatch)
    model = ResidualProj().eval()
    table = build_table(model, SHAPE, tmp_path / "t.json", points=4, groups=(1, 2), overhead=fake_overhead)
    for e in table.entries.values():
        for grid in e.grids.values():
            reader = _Reader(grid, "1", e.tied)
            ci, co = np.meshgrid(grid.c_in, grid.c_out, indexing="ij")  # a depthwise conv has one c_in point
            got = reader(ci.ravel().astype(float), co.ravel().astype(float))
            np.testing.assert_array_equal(got, np.asarray(grid.ms["1"]).ravel())
    space = ChannelSpace.build(model, SHAPE, quiet=True)
    lm = LatencyModel(table, space)
    full = sum(table.entries[table.layer_entry[n]].grids["1"].ms["1"][-1][-1] for n in table.layer_entry)
    assert lm(space.channels) == pytest.approx(
        full + 0.01, rel=1e-12
    )  # full widths: every layer's last point


def test_predictions_are_monotone_vectorised_and_use_the_unaligned_grid(monkeypatch, tmp_path):
    fake_time(monkeypatch)
    model = create_model("resnet20")
    table = build_table(
        model, (1, 3, 32, 32), tmp_path / "t.json", points=5, groups=(1,), overhead=fake_overhead
    )
    space = ChannelSpace.build(model, (1, 3, 32, 32), quiet=True)
    lm = LatencyModel(table, space)
    mults = np.linspace(0.25, 1.0, 7)
    widths = np.stack([uniform_widths(space, m, round_to=8) for m in mults])
    pred = lm.batch(widths)
    assert (np.diff(pred) > 0).all()
    assert pred == pytest.approx([lm(w) for w in widths], rel=1e-12)
    aligned = uniform_widths(space, 0.5, round_to=8)
    unaligned = aligned - 1  # one channel fewer everywhere: the fake runtime charges unaligned inputs extra
    assert lm(unaligned) > lm(aligned)
    plan = plan_from_widths(space, aligned)
    assert lm.predict(plan) == pytest.approx(lm(aligned))


def test_narrow_layers_below_the_channel_unit_are_measured_not_floored(monkeypatch, tmp_path):
    """A conv with fewer input channels than ONNX Runtime's block runs blocked at a cost that still falls with them
    (the input is read directly): the table measures counts below the unit, so a plan at 1-3 channels per group is
    predicted cheaper than one at the unit (before: every count under the unit read as the unit -- a floor)."""
    fake_time(monkeypatch)
    model = create_model("resnet20")
    table = build_table(
        model, (1, 3, 32, 32), tmp_path / "t.json", points=5, groups=(1,), overhead=fake_overhead
    )
    e = table.entries[table.layer_entry["layer1.0.conv2"]]
    # up to one below the unit: the direct read's cost rises to there, and the unit itself pays a reorder instead
    assert e.grids["1"].c_in[:6] == [1, 2, 4, 6, 7, 8] and e.grids["1u"].c_out[0] == 1
    space = ChannelSpace.build(model, (1, 3, 32, 32), quiet=True)
    lm = LatencyModel(table, space)
    group = next(i for i, g in enumerate(space.groups) if g.name == "layer1.0.conv1")  # conv1 -> conv2
    w = space.channels.copy()
    w[group] = 3  # layer1.0.conv2 reads 3 channels: blocked (< 8), computed on 16 output channels
    got = float(lm.layer_ms(w[None])["layer1.0.conv2"][0])
    assert got == pytest.approx(1e-6 * 32 * 32 * 9 * 3 * 16 * 2.0, rel=1e-9)  # linear in c_in between 2 and 4
    one = np.ones_like(space.channels)
    unit = np.minimum(space.channels, 8)
    assert lm(one) < 0.5 * lm(unit)


def test_a_grouped_conv_reads_the_grid_of_the_regime_it_runs_in(monkeypatch, tmp_path):
    """ONNX Runtime blocks a G-group conv only where every group's channels are multiples of its block (else a
    slower kernel, here 3x): the table measures the two regimes on separate grids -- multiples of G x block, and
    multiples of G off them -- so each layer's prediction is exact for a cost bilinear within each regime. Before,
    one grid held both (the block's multiples that G divides) and interpolation mixed them: a 2-group 64 -> 64
    conv on AVX-512 read 0.71 ms between its unblocked neighbours where it runs in 0.29 ms."""
    fake_time(monkeypatch)

    def cost(cfg: LayerConfig, batch: int) -> float:
        k = int(np.prod(cfg.kernel)) if cfg.kind != "linear" else 1
        pos = int(np.prod(cfg.in_spatial)) if cfg.in_spatial else 1
        base = 1e-6 * batch * pos * k * cfg.c_in * cfg.c_out / cfg.groups
        g = cfg.groups
        unblocked = g > 1 and ((cfg.c_in // g) % 8 or (cfg.c_out // g) % 8)
        return base * (3.0 if unblocked else 2.0 if cfg.c_in % 8 else 1.0)

    monkeypatch.setattr(lut_mod, "runnable", lambda cfg, batch, runtime, threads: lambda: cost(cfg, batch))
    model = create_model("resnet20")
    shape = (1, 3, 32, 32)
    table = build_table(model, shape, tmp_path / "t.json", points=5, groups=(1, 2), overhead=fake_overhead)
    e = table.entries[table.layer_entry["layer3.1.conv1"]]  # 64 -> 64
    assert e.grids["2"].c_in == [16, 32, 48, 64] and all(c % 16 == 0 for c in e.grids["2"].c_out)
    assert e.grids["2u"].c_in and all(c % 2 == 0 and c % 16 for c in e.grids["2u"].c_in + e.grids["2u"].c_out)
    space = ChannelSpace.build(model, shape, quiet=True)
    lm = LatencyModel(table, space)
    from prunekit.space.plan import add_weight_choices

    checked = {True: 0, False: 0}
    for mult in (0.5, 0.75):  # widths 8 / 16 / 32 and 16 / 24 / 48: groups of 4, 8, 12, 16, 24 channels
        plan = add_weight_choices(
            plan_from_widths(space, uniform_widths(space, mult, round_to=8)),
            space,
            conv_groups=2,
            permute=False,
        )[0]
        grp = {n: np.array([lc.conv_groups]) for n, lc in plan.layers.items() if lc.conv_groups}
        widths = plan.widths(space)[None]
        got = lm.layer_ms(widths, None, grp)
        ci, co, _ = lm._channels(widths, grp)
        for j, n in enumerate(lm._rows):
            if n not in grp:
                continue
            cfg = lut_mod._cfg(table.entries[table.layer_entry[n]], int(ci[0, j]), int(co[0, j]), 2)
            want = cost(cfg, 1)
            assert float(got[n][0]) == pytest.approx(want, rel=1e-9), (n, cfg.c_in, cfg.c_out)
            checked[bool((cfg.c_in // 2) % 8 == 0 and (cfg.c_out // 2) % 8 == 0)] += 1
    assert checked[True] >= 4 and checked[False] >= 4, checked  # both regimes were read


def test_a_depthwise_conv_off_multiples_of_4_reads_its_own_unblocked_grid(monkeypatch, tmp_path):
    """ONNX Runtime blocks a depthwise conv only at channel counts that are multiples of 4 (off them it costs ~2.3x
    on this machine): the table must measure such counts (``1o``), not read the blocked ones of ``1u``."""

    def dw_runnable(cfg: LayerConfig, batch, runtime, threads):
        depthwise = cfg.groups > 1 and cfg.groups == cfg.c_in == cfg.c_out
        ms = 1e-3 * cfg.c_out * (3.0 if cfg.c_out % 4 else 1.0) if depthwise else 1e-6 * cfg.c_in * cfg.c_out
        return lambda ms=ms: ms

    monkeypatch.setattr(lut_mod, "runnable", dw_runnable)
    monkeypatch.setattr(lut_mod, "time_interleaved", lambda fns, runtime, **kw: [fn() for fn in fns])
    model = DepthwiseChain().eval()
    table = build_table(model, SHAPE, tmp_path / "t.json", points=4, groups=(1,), overhead=fake_overhead)
    dw = table.entries[table.layer_entry["dw2"]]
    assert dw.tied and dw.grids["1o"].c_out and all(c % 4 for c in dw.grids["1o"].c_out)
    assert all(c % 4 == 0 for c in dw.grids["1u"].c_out)
    space = ChannelSpace.build(model, SHAPE, quiet=True)
    lm = LatencyModel(table, space)
    group = next(i for i, g in enumerate(space.groups) if "dw2" in g.member_modules())
    for c, factor in ((7, 3.0), (12, 1.0)):  # 7: unblocked (1o); 12: blocked, computed on 16 channels
        w = space.channels.copy()
        w[group] = c
        got = float(lm.layer_ms(w[None])["dw2"][0])
        assert got == pytest.approx(1e-3 * (c if factor > 1 else 16) * factor, rel=1e-9), c


def test_a_table_from_another_machine_is_refused(monkeypatch, tmp_path):
    fake_time(monkeypatch)
    path = tmp_path / "t.json"
    build_table(DepthwiseChain().eval(), SHAPE, path, points=3, groups=(1,), overhead=fake_overhead)
    assert load_table(path).complete
    data = json.loads(path.read_text())
    data["machine"]["cpu"] = "Some Other CPU"
    path.write_text(json.dumps(data))
    with pytest.raises(PrunekitError, match="measured with cpu 'Some Other CPU'"):
        load_table(path)
    assert load_table(path, allow_mismatch=True).machine["cpu"] == "Some Other CPU"
    with pytest.raises(PrunekitError, match="threads"):
        load_table(path, threads=4, allow_mismatch=False)


def test_an_interrupted_build_resumes_where_it_stopped(monkeypatch, tmp_path):
    calls: list[int] = []
    fake_time(monkeypatch, calls)
    model = ResidualProj().eval()
    path = tmp_path / "t.json"
    real = lut_mod.measure_entry
    done = []

    def dying(e, *a, **kw):
        if len(done) == 2:
            raise KeyboardInterrupt  # the build is killed after two signatures
        real(e, *a, **kw)
        done.append(e)

    monkeypatch.setattr(lut_mod, "measure_entry", dying)
    with pytest.raises(KeyboardInterrupt):
        build_table(model, SHAPE, path, points=3, groups=(1,), overhead=fake_overhead)
    partial = json.loads(path.read_text())
    assert (
        partial["overhead"] is None
        and sum(bool(e["grids"]["1"]["ms"]) for e in partial["entries"].values()) == 2
    )
    with pytest.raises(PrunekitError, match="incomplete"):
        load_table(path)
    monkeypatch.setattr(lut_mod, "measure_entry", real)
    calls.clear()
    table = build_table(model, SHAPE, path, points=3, groups=(1,), overhead=fake_overhead)
    assert len(calls) == len(table.entries) - 2  # only the signatures not measured before
    assert table.complete
    # resuming a complete table measures nothing and leaves the file byte for byte as it was
    before = path.read_bytes()
    calls.clear()
    again = build_table(model, SHAPE, path, points=3, groups=(1,), overhead=fake_overhead)
    assert calls == [] and path.read_bytes() == before and again.build_s == table.build_s
    with pytest.raises(PrunekitError, match="other points"):
        build_table(model, SHAPE, path, points=4, groups=(1,), overhead=fake_overhead)


def test_one_layer_onnx_models_run_in_onnx_runtime():
    for cfg in (
        LayerConfig("conv", 8, 16, kernel=(3, 3), padding=(1, 1), in_spatial=(8, 8)),
        LayerConfig("conv", 16, 16, groups=16, kernel=(3, 3), padding=(1, 1), in_spatial=(8, 8)),
        LayerConfig("conv", 16, 16, groups=4, kernel=(1, 1), in_spatial=(8, 8), density=0.5),
        LayerConfig("conv_transpose", 8, 4, kernel=(2, 2), stride=(2, 2), in_spatial=(4, 4)),
        LayerConfig("linear", 32, 10, in_spatial=()),
    ):
        runnable(cfg, 2, "ort", 1)()  # builds the graph, creates the session, runs it


def test_lut_build_and_eval_cli_on_a_small_net(tmp_path, capsys):
    out = tmp_path / "dw.lut.json"
    args = [
        "lut",
        "build",
        "tests/nets.py:DepthwiseChain",
        "--input-size",
        "16",
        "--points",
        "2",
        "--groups",
        "1",
    ]
    assert main([*args, "--rounds", "1", "--densities", "1", "--out", str(out)]) == 0
    table = load_table(out)
    assert table.complete and (tmp_path / "dw.lut.md").is_file()
    assert all(np.all(np.asarray(g.ms["1"]) > 0) for e in table.entries.values() for g in e.grids.values())
    capsys.readouterr()
    code = main(
        [
            "lut",
            "eval",
            "tests/nets.py:DepthwiseChain",
            "--input-size",
            "16",
            "--lut",
            str(out),
            "--plans",
            "2",
            "--rounds",
            "1",
            "--out",
            str(tmp_path / "eval.json"),
        ]
    )
    assert code == 0
    data = json.loads((tmp_path / "eval.json").read_text())
    assert data["plans"] == 2 and all(r["measured_ms"] > 0 and r["predicted_ms"] > 0 for r in data["rows"])


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            ["lut", "build", "resnet20", "--groups", "x", "--out", "o.json"],
            "--groups must be comma-separated",
        ),
        (
            ["lut", "build", "resnet20", "--densities", "0", "--out", "o.json"],
            "--densities must lie in (0, 1]",
        ),
        (["lut", "build", "resnet20", "--runtime", "tpu", "--out", "o.json"], "unknown runtime 'tpu'"),
        (["lut", "eval", "resnet20", "--lut", "missing.json"], "latency table not found: missing.json"),
    ],
)
def test_lut_cli_errors_are_one_line(args, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err
    assert not (tmp_path / "o.json").exists()


FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.mark.skipif(not FMNIST.is_file(), reason="apt-get install dataset-fashion-mnist")
def test_latency_ratio_target_predicted_from_a_table_end_to_end(tmp_path, capsys, monkeypatch):
    """`prunekit run` with target {latency_ratio, latency_lut} and round_to: lut: uniform bisects on predicted latency
    (unrounded widths, then snapped where the table says rounding up is free); the report
    shows asked, the prediction and the final measurement (full width: at width 0.5 the 8-channel first stage is
    already ONNX Runtime's smallest block, and a 1-channel plan is not much faster)."""
    monkeypatch.setenv("PRUNEKIT_NO_PROGRESS", "1")
    spec = "resnet20:in_chans=1"
    lut = tmp_path / "r20.lut.json"
    # synthetic timings (the measured build and its CLI are tested above); prunekit run still measures the result
    fake_time(monkeypatch)
    build_table(
        create_model(spec).eval(),
        (1, 1, 28, 28),
        lut,
        spec=spec,
        points=3,
        groups=(1,),
        densities=(1.0,),
        overhead=fake_overhead,
    )
    cfg = {
        "model": "resnet20",
        "data": {"name": "fashion_mnist", "subset_train": 300, "subset_val": 100, "subset_test": 200},
        "baseline": {"train": {"epochs": 1, "lr": 0.1}},
        "target": {"latency_ratio": 0.6, "latency_lut": str(lut)},
        "method": {"name": "uniform", "round_to": "lut"},  # the table also decides the rounding
        "finetune": {"epochs": 1, "lr": 0.05},
        "export": {"latency_batch": 4},
    }
    path = tmp_path / "lat.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out)]) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    (row,) = [c for c in report["constraints"] if c["metric"] == "latency_ms"]
    assert row["source"] == "measured" and row["predicted"] > 0 and row["achieved"] > 0
    base_pred = LatencyModel(load_table(lut), ChannelSpace.build(create_model(spec), (1, 1, 28, 28))).__call__
    assert row["predicted"] <= 0.6 * base_pred(
        ChannelSpace.build(create_model(spec), (1, 1, 28, 28)).channels
    ) * (1 + 1e-9)
    assert report["pruned"]["macs"] < report["baseline"]["macs"]
    assert report["method"]["resolved"] == {"round_to": "lut (latency table)"}
    assert "predicted" in (out / "report.md").read_text()


def test_the_overhead_fit_resists_one_calibration_model_timed_in_a_slow_phase():
    from prunekit.cost.predict import robust_fit

    rng = np.random.default_rng(0)
    x = np.column_stack([np.ones(12), rng.uniform(0, 1e5, 12), rng.uniform(0, 1e4, 12)])
    truth = np.array([0.1, 2e-6, -1e-5])
    y = x @ truth + rng.normal(0, 0.01, 12)
    clean = robust_fit(x, y)
    np.testing.assert_allclose(clean, np.linalg.lstsq(x, y, rcond=None)[0], rtol=0.2, atol=0.02)
    y[3] += 5.0  # one model measured 5 ms too slow
    fit = robust_fit(x, y)
    assert abs(fit[0] - truth[0]) < 0.1 and abs(np.linalg.lstsq(x, y, rcond=None)[0][0] - truth[0]) > 1.0


def test_the_overhead_fit_keeps_each_coefficient_on_its_physical_side():
    from prunekit.cost.predict import robust_fit

    rng = np.random.default_rng(1)
    x = np.column_stack([np.ones(14), rng.uniform(0, 1e6, 14), rng.uniform(0, 1e6, 14)])
    feasible = x @ np.array([0.5, -1e-6, 2e-6]) + rng.normal(0, 0.01, 14)
    np.testing.assert_allclose(
        robust_fit(x, feasible, signs=[0, -1, 1]), robust_fit(x, feasible), rtol=1e-3, atol=1e-3
    )
    wrong = x @ np.array([0.5, -1e-6, -2e-6])  # the best fit would make a reorder save time
    assert robust_fit(x, wrong)[2] < 0
    fit = robust_fit(x, wrong, signs=[0, -1, 1])
    assert fit[1] <= 0 and fit[2] >= 0 and fit[2] < 1e-9


def test_paired_ratio_cancels_load_drift_between_rounds():
    """A net at 0.5x the reference, timed while the machine's load rises 10x after round 3: the ratio of the two
    medians says 5x, the median of the per-round ratios 0.5x (one round caught a spike on the net alone)."""
    from prunekit.cost.predict import paired_ratio

    ref = [1.0, 1.0, 1.0, 10.0, 10.0]
    net = [0.5, 0.5, 5.0, 5.0, 5.0]
    assert statistics.median(net) / statistics.median(ref) == 5.0
    assert paired_ratio(net, ref) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        paired_ratio(net[:-1], ref)
