"""The optional DeepSparse backend (prunekit.cost.deepsparse and its worker script).

The protocol tests need no DeepSparse: a fake ``deepsparse`` package on PYTHONPATH (models are text files holding
the ms one call sleeps, or real ONNX run by onnxruntime) and the current interpreter as the "DeepSparse python".
The real test runs only where PRUNEKIT_DEEPSPARSE_PYTHON names an environment with deepsparse==1.8.0 installed.
"""

from __future__ import annotations

import ast
import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from prunekit.cost import deepsparse as ds
from prunekit.errors import PrunekitError

FAKE = textwrap.dedent(
    '''
    """A stand-in for deepsparse with its compile_model / Engine surface."""
    import os
    import time

    import numpy as np

    __version__ = "0.0.fake"


    def _log(line):
        if os.environ.get("FAKE_DS_LOG"):
            with open(os.environ["FAKE_DS_LOG"], "a") as f:
                f.write(line + "\\n")


    class Engine:
        def __init__(self, path, batch_size, num_cores):
            self.name = os.path.basename(path)
            data = open(path, "rb").read()
            try:
                self.sleep_s, self.sess, self.shape = float(data) / 1e3, None, (batch_size, 4)
            except ValueError:
                import onnx
                import onnxruntime

                proto = onnx.load_from_string(data)  # DeepSparse 1.8's loader: IR <= 9, opset <= 19
                opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
                if proto.ir_version > 9 or opset > 19:
                    raise RuntimeError(f"Unsupported model IR version: {proto.ir_version}, opset {opset}")
                self.sess = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
                dims = self.sess.get_inputs()[0].shape  # a symbolic batch dimension runs at batch_size
                self.shape = tuple(d if isinstance(d, int) else batch_size for d in dims)
            _log(f"compile {self.name} batch={batch_size} cores={num_cores}")

        def generate_random_inputs(self):
            return [np.ones(self.shape, dtype=np.float32)]

        def run(self, inp, val_inp=True):
            _log(self.name)
            if self.sess is None:
                time.sleep(self.sleep_s)
                return [inp[0]]
            return self.sess.run(None, {self.sess.get_inputs()[0].name: inp[0]})


    def compile_model(model, batch_size=1, num_cores=None):
        if os.environ.get("NM_DISABLE_ANALYTICS") != "1":
            raise RuntimeError("analytics not disabled")
        print("fake DeepSparse banner on stdout")  # the worker must keep these out of its JSON
        os.write(1, b"native banner on fd 1\\n")
        if not os.path.exists(model) or "broken" in os.path.basename(model):
            raise ValueError(f"cannot parse {model}")
        return Engine(model, batch_size, num_cores)
    '''
)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """The fake deepsparse on PYTHONPATH, this interpreter as the DeepSparse python; the call log's path."""
    pkg = tmp_path / "fake" / "deepsparse"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(FAKE)
    monkeypatch.setenv("PYTHONPATH", str(pkg.parent))
    monkeypatch.setenv(ds.ENV_VAR, sys.executable)
    monkeypatch.setenv("FAKE_DS_LOG", str(tmp_path / "calls.log"))
    ds._probe.cache_clear()
    yield tmp_path / "calls.log"
    ds._probe.cache_clear()


def _sleep_models(tmp_path: Path, ms: list[float]) -> list[Path]:
    paths = []
    for i, m in enumerate(ms):
        paths.append(tmp_path / f"m{i}.onnx")
        paths[-1].write_text(str(m))
    return paths


def _one_line_error(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(PrunekitError, match=match) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and msg.strip() == msg
    return msg


# ---------------------------------------------------------------------------------------------- protocol
def test_probe_reports_versions(fake):
    info = ds.probe()
    assert info["deepsparse"] == "0.0.fake"
    assert info["python"] == ".".join(map(str, sys.version_info[:3]))
    assert isinstance(info["cpu"], str) and info["cpu"]
    assert ds.probe() == info  # cached per interpreter


def test_time_models_shape_sizing_and_rotation(fake, tmp_path):
    paths = _sleep_models(tmp_path, [4.0, 1.0, 2.0])
    ms = ds.time_models(paths, 2, threads=3, rounds=3, warmup=1, min_time_s=0.01, min_runs=2, max_runs=6)
    assert len(ms) == 3 and all(len(m) == 3 for m in ms)
    med = [sorted(m)[1] for m in ms]
    assert med[0] >= 4.0 and med[1] >= 1.0 and med[2] >= 2.0
    assert med[1] < med[2] < med[0]
    calls = [line for line in fake.read_text().splitlines() if not line.startswith("compile")]
    assert fake.read_text().count("batch=2 cores=3") == 3  # compiled once each, at the job's batch and cores
    # validation + warm-up, then rounds rotated by one model each
    order = [k for k, _ in itertools.groupby(calls)]
    assert order == ["m0.onnx", "m1.onnx", "m2.onnx"] + ["m0.onnx", "m1.onnx", "m2.onnx"] + [
        "m1.onnx",
        "m2.onnx",
        "m0.onnx",
    ] + ["m2.onnx", "m0.onnx", "m1.onnx"]
    # runs per round sized from the warm-up: 0.01 s / 4 ms -> min_runs 2..3; 0.01 s / 1 ms -> capped at 6
    runs = {name: (len(list(g)) - 2) // 3 for name, g in itertools.groupby(sorted(calls))}  # minus 2 untimed
    assert 2 <= runs["m0.onnx"] <= 3 and runs["m1.onnx"] == 6


def test_time_interleaved_onnx_runs_real_graphs(fake):
    from prunekit.cost.runtimes import LayerConfig, onnx_model

    cfgs = [
        LayerConfig("conv", 8, 8, kernel=(3, 3), padding=(1, 1), in_spatial=(8, 8), density=d)
        for d in (1.0, 0.5)
    ]
    out = ds.time_interleaved_onnx([onnx_model(c, 2) for c in cfgs], 2, rounds=2, min_time_s=0.001)
    assert len(out) == 2 and all(isinstance(t, float) and t > 0 for t in out)
    assert ds.time_interleaved_onnx([], 1) == [] and ds.time_models([], 1) == []


def test_newer_onnx_files_are_handed_over_as_ir_9(fake, tmp_path):
    """onnx 1.16+ writes IR 10, which DeepSparse 1.8 (onnx < 1.15) refuses: the worker gets an IR-9 copy, the
    caller's file is left as it was, and an opset DeepSparse cannot run is one clear error."""
    import onnx

    from prunekit.cost.runtimes import LayerConfig, onnx_model

    cfg = LayerConfig("conv", 4, 4, kernel=(3, 3), padding=(1, 1), in_spatial=(6, 6))
    proto = onnx.load_from_string(onnx_model(cfg, 1))
    proto.ir_version = 10
    new = tmp_path / "ir10.onnx"
    onnx.save(proto, str(new))
    (ms,) = ds.time_models([new], 1, rounds=1, min_time_s=0.001)
    assert len(ms) == 1 and ms[0] > 0
    assert "compile 0-ir10.onnx" in fake.read_text()  # the copy, not the file itself
    assert onnx.load(str(new)).ir_version == 10
    proto.opset_import[0].version = 20
    onnx.save(proto, str(tmp_path / "opset20.onnx"))
    _one_line_error(
        "opset 20.*TorchScript exporter at opset 17", ds.time_models, [tmp_path / "opset20.onnx"], 1
    )


def test_whole_models_are_exported_as_deepsparse_reads_them(fake):
    """The dynamo exporter writes opset 18+ and IR 10, which DeepSparse 1.8 does not load (the fake refuses it as
    the real one does): whole-model timing (a table's overhead calibration, ``lut eval``) exports for it with the
    TorchScript exporter."""
    import torch.nn as nn

    from prunekit.cost.predict import whole_model_rounds

    nets = [nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1)) for c in (4, 8)]
    out = whole_model_rounds(nets, (3, 8, 8), (1, 2), runtime="deepsparse", rounds=2)
    assert len(out) == 2 and all(sorted(d) == [1, 2] and len(d[1]) == 2 and min(d[2]) > 0 for d in out)


def test_unknown_exporter_is_refused(tmp_path):
    import torch.nn as nn

    from prunekit.export import export_onnx

    with pytest.raises(PrunekitError, match="unknown ONNX exporter 'jit'"):
        export_onnx(nn.Conv2d(1, 2, 3), tmp_path / "m.onnx", (1, 1, 8, 8), exporter="jit")
    assert not (tmp_path / "m.onnx").exists()


# ---------------------------------------------------------------------------------------------- errors
def test_missing_python_says_how_to_set_it_up(monkeypatch):
    monkeypatch.delenv(ds.ENV_VAR, raising=False)
    msg = _one_line_error("none is given", ds.find_python)
    assert "pip install deepsparse==1.8.0" in msg and ds.ENV_VAR in msg and "--deepsparse-python" in msg
    assert "evaluation" in msg
    _one_line_error("not an executable", ds.find_python, "/nonexistent/bin/python")
    _one_line_error("none is given", ds.time_models, ["a.onnx"], 1)
    assert ds.find_python(sys.executable) == os.path.abspath(sys.executable)


def test_deepsparse_not_importable(monkeypatch):
    if subprocess.run([sys.executable, "-c", "import deepsparse"], capture_output=True).returncode == 0:
        pytest.skip("deepsparse is importable in this interpreter")
    monkeypatch.delenv("PYTHONPATH", raising=False)
    ds._probe.cache_clear()
    msg = _one_line_error("deepsparse is not importable", ds.probe, sys.executable)
    assert "pip install deepsparse==1.8.0" in msg


def test_compile_failure_names_the_file(fake, tmp_path):
    good, bad = _sleep_models(tmp_path, [0.1]), tmp_path / "broken.onnx"
    bad.write_text("1")
    _one_line_error(r"cannot compile .*broken\.onnx: ValueError", ds.time_models, [*good, bad], 1)
    _one_line_error(r"cannot compile .*missing\.onnx", ds.time_models, [tmp_path / "missing.onnx"], 1)


def test_bad_jobs_get_an_error_reply(fake):
    worker = [sys.executable, str(ds.WORKER)]
    env = {**os.environ, "NM_DISABLE_ANALYTICS": "1"}
    for job, match in [
        ("not json", "not JSON"),
        ("[1]", "JSON object"),
        ('{"models": "x"}', "needs 'models'"),
    ]:
        proc = subprocess.run(worker, input=job, capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr
        assert match in json.loads(proc.stdout)["error"]
    _one_line_error("bad job", ds._run, sys.executable, {"models": ["a"], "batch": 1}, 30)
    _one_line_error("batch, threads, rounds", ds.time_models, ["a.onnx"], 0)


@pytest.mark.parametrize(
    "script, match",
    [
        ("echo 'Traceback'; echo 'boom' >&2; exit 1", "exited with code 1 without a result: boom"),
        ("echo '{\"ms\": [[1.0]]}'", "malformed result"),
        ("exec sleep 5", "did not finish within 1 s"),
    ],
)
def test_broken_worker_replies(tmp_path, script, match):
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\ncat > /dev/null\n{script}\n")
    python.chmod(0o755)
    paths = _sleep_models(tmp_path, [1.0, 1.0])
    _one_line_error(match, ds.time_models, paths, 1, rounds=1, python=str(python), timeout_s=1)


def test_prunekit_never_imports_deepsparse():
    code = "import sys, prunekit.cost.deepsparse; assert 'deepsparse' not in sys.modules, 'imported'"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
    tree = ast.parse(ds.WORKER.read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= set(sys.stdlib_module_names) | {"numpy", "deepsparse", "__future__"}, imported


# ---------------------------------------------------------------------------------------------- real DeepSparse
@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get(ds.ENV_VAR), reason=f"{ds.ENV_VAR} is not set (no DeepSparse environment)"
)
def test_real_deepsparse_skips_zero_weights():
    from prunekit.cost.runtimes import LayerConfig, onnx_model

    info = ds.probe()
    assert info["deepsparse"].startswith("1.8")
    conv3 = dict(c_in=64, c_out=64, kernel=(3, 3), padding=(1, 1), in_spatial=(28, 28))
    conv1 = dict(c_in=256, c_out=256, kernel=(1, 1), in_spatial=(14, 14))
    cfgs = [LayerConfig("conv", density=d, **kw) for kw in (conv3, conv1) for d in (1.0, 0.1)]
    ms = ds.time_interleaved_onnx([onnx_model(c, 1) for c in cfgs], 1, rounds=5, min_time_s=0.1)
    assert all(t > 0 for t in ms), ms
    # at density 0.1 (4x1 blocks), batch 1, one core: 3x3 ~1.3x and 1x1 ~2.2x faster on an AVX2 EPYC, more on
    # AVX-512 (shared/reference/cpu-runtimes.md); ONNX Runtime would time both like the dense layer
    assert ms[1] < ms[0] and ms[3] < 0.8 * ms[2], ms
    # a whole model as torch exports it (IR 10, opset 18+ from the dynamo exporter) loads and runs
    import torch.nn as nn

    from prunekit.cost.predict import whole_model_rounds

    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    (out,) = whole_model_rounds([net], (3, 16, 16), (1,), runtime="deepsparse", rounds=2)
    assert len(out[1]) == 2 and min(out[1]) > 0
