"""`data: {name: custom, factory: file.py:function}`: the user's own loaders through `prunekit run`, the factory's
arguments, torchrun sharding rules, and one-line errors for every way a factory can be wrong."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import yaml
from tests.test_pipeline import cli

from prunekit.data import DataConfig, build_data
from prunekit.errors import PrunekitError

# sklearn's digits (8x8, 10 classes) as TensorDataset DataLoaders; `calls.json` beside the file records every call's
# keyword arguments
DIGITS = """
import json
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

CALLS = Path(__file__).with_name("calls.json")


def _record(kwargs):
    calls = json.loads(CALLS.read_text()) if CALLS.is_file() else []
    CALLS.write_text(json.dumps(calls + [kwargs]))


def _split(n_val=300, n_test=300):
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = (x - 0.3) / 0.4, y
    x, y = x[perm], y[perm]
    te, va, tr = slice(0, n_test), slice(n_test, n_test + n_val), slice(n_test + n_val, None)
    return (x[tr], y[tr]), (x[va], y[va]), (x[te], y[te])


def make_loaders(batch_size=64, eval_batch_size=128, with_val=True):
    _record({"batch_size": batch_size, "eval_batch_size": eval_batch_size, "with_val": with_val})
    tr, va, te = _split()
    return {
        "train": DataLoader(TensorDataset(*tr), batch_size=batch_size, shuffle=True),
        "val": DataLoader(TensorDataset(*va), batch_size=eval_batch_size) if with_val else None,
        "test": DataLoader(TensorDataset(*te), batch_size=eval_batch_size),
    }


def make_sharded(batch_size=32, rank=0, world_size=1):
    _record({"batch_size": batch_size, "rank": rank, "world_size": world_size})
    tr, va, te = _split()
    train = TensorDataset(tr[0][rank::world_size], tr[1][rank::world_size])
    return {
        "train": DataLoader(train, batch_size=batch_size, shuffle=True),
        "val": DataLoader(TensorDataset(*va), batch_size=100),
        "test": DataLoader(TensorDataset(*te), batch_size=100),
        "num_classes": 10,
        "class_names": [f"digit{i}" for i in range(10)],
    }
"""

# factories that are wrong in one way each (appended to DIGITS, so they can reuse its helpers)
BROKEN = """

class _Obj:
    pass


def raises():
    raise ValueError("no such dataset on this disk")


def returns_tuple():
    return tuple(make_loaders().values())


def no_test():
    d = make_loaders()
    return {"train": d["train"], "val": d["val"]}


def empty_train():
    tr, va, te = _split()
    return {"train": DataLoader(TensorDataset(tr[0][:0], tr[1][:0])), "test": DataLoader(TensorDataset(*te))}


def a_dataset():  # a Dataset where a loader belongs
    tr, va, te = _split()
    return {"train": TensorDataset(*tr), "test": DataLoader(TensorDataset(*te))}


def not_square():
    tr, va, te = _split()
    x = torch.nn.functional.pad(tr[0], (0, 2))
    return {"train": DataLoader(TensorDataset(x, tr[1]), batch_size=64), "test": DataLoader(TensorDataset(*te))}


def float_labels():
    tr, va, te = _split()
    return {"train": DataLoader(TensorDataset(tr[0], tr[1].float()), batch_size=64), "test": DataLoader(TensorDataset(*te))}


def unknown_key():
    return {**make_loaders(), "eval_func": None}


def eval_not_callable():
    return {**make_loaders(), "eval_fn": 0.5}


def objective_without_num_classes():
    return {**make_loaders(), "loss_fn": lambda m, b: m(b[0]).sum(), "eval_fn": lambda m, loader: 0.0}
"""

# the user's objective: regress the digit's value (y = digit / 9, float [N]) with one output; cross-entropy cannot
# even run on these batches, so a run that finishes trained with loss_fn; eval_fn is the negative MSE (below 0)
OBJECTIVE = """

def _mse(model, loader):
    err = n = 0.0
    for x, y in loader:
        err += float(((model(x).squeeze(1) - y) ** 2).sum())
        n += len(y)
    return err / n


def regression_loss(model, batch):
    x, y = batch
    return torch.nn.functional.mse_loss(model(x).squeeze(1), y)


def neg_mse(model, loader):
    return -_mse(model, loader)


def make_regression(batch_size=64):
    tr, va, te = _split()
    value = lambda s: TensorDataset(s[0], s[1].float() / 9.0)
    return {
        "train": DataLoader(value(tr), batch_size=batch_size, shuffle=True),
        "val": DataLoader(value(va), batch_size=100),
        "test": DataLoader(value(te), batch_size=100),
        "num_classes": 1,
        "loss_fn": regression_loss,
        "eval_fn": neg_mse,
    }
"""


def write_factory(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "my_data.py"
    path.write_text(DIGITS + extra)
    return path


def calls(tmp_path: Path) -> list[dict]:
    path = tmp_path / "calls.json"
    return json.loads(path.read_text()) if path.is_file() else []


def run_config(tmp_path: Path, data: dict, **over) -> Path:
    tree = {
        "name": "custom",
        "model": "resnet20:width_mult=0.25",
        "data": data,
        "baseline": {"train": {"epochs": 1, "lr": 0.1}},
        "target": {"macs_ratio": 0.5},
        "method": {"name": "magnitude", "importance": "l1", "ranking": "global"},
        "finetune": {"epochs": 1, "lr": 0.01},
        "export": {"latency": False},
        **over,
    }
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_custom_factory_runs_end_to_end(tmp_path, capsys, monkeypatch, caplog):
    """`prunekit run --smoke` on the user's digits loaders: in_chans / input size from the first batch, num_classes
    inferred from the labels (and said so), the model built with both, every output written."""
    monkeypatch.setenv("PRUNEKIT_NO_PROGRESS", "1")
    factory = write_factory(tmp_path)
    data = {"name": "custom", "factory": f"{factory}:make_loaders", "options": {"batch_size": 50}}
    out = tmp_path / "run"
    code, _, err = cli(["run", run_config(tmp_path, data), "--smoke", "--out", out], capsys)
    assert code == 0, err
    for name in ("report.json", "report.md", "plan.json", "model.safetensors", "model.onnx", "config.yaml"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"]["name"] == "custom"
    assert report["dataset"]["num_classes"] == 10
    assert report["dataset"]["input_shape"] == [1, 1, 8, 8]
    assert report["dataset"]["sizes"] == {"train": 1197, "val": 300, "test": 300}
    assert "in_chans=1" in report["model"] and "num_classes=10" in report["model"]
    plan = json.loads((out / "plan.json").read_text())
    assert plan["input_shape"] == [1, 1, 8, 8]
    assert report["pruned"]["macs"] <= 0.5 * report["baseline"]["macs"]
    assert 0.0 < report["baseline"]["top1"] <= 1.0
    assert "num_classes=10 inferred" in caplog.text
    # the factory got the options, and no rank / world_size (it does not take them)
    assert calls(tmp_path)[0] == {"batch_size": 50, "eval_batch_size": 128, "with_val": True}
    # the written config reads back (resume, `prunekit eval`) and keeps the factory; smoke did not subset it
    saved = yaml.safe_load((out / "config.yaml").read_text())["data"]
    assert saved["factory"] == f"{factory}:make_loaders" and saved["subset_train"] is None
    code, stdout, err = cli(["eval", out, "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["n"] == 300


def test_factory_objective_runs_end_to_end(tmp_path, capsys, monkeypatch):
    """A factory's loss_fn and eval_fn drive `prunekit run --smoke`: float regression targets (cross-entropy could
    not run on them) and one output; the report's top1 fields hold eval_fn's score (negative here), which `prunekit
    eval` and a direct computation on the saved model reproduce."""
    monkeypatch.setenv("PRUNEKIT_NO_PROGRESS", "1")
    factory = write_factory(tmp_path, OBJECTIVE)
    data = {"name": "custom", "factory": f"{factory}:make_regression"}
    out = tmp_path / "run"
    code, _, err = cli(
        [
            "run",
            run_config(
                tmp_path, data, model="resnet20:width_mult=0.5", baseline={"train": {"epochs": 1, "lr": 0.02}}
            ),
            "--smoke",
            "--out",
            out,
        ],
        capsys,
    )
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["score"] == "eval_fn" and "num_classes=1" in report["model"]
    assert report["pruned"]["macs"] <= 0.5 * report["baseline"]["macs"]
    for side in ("baseline", "pruned"):
        assert report[side]["top1"] < 0 and report[side]["top5"] is None, side  # -MSE, not a fraction
    assert (
        report["baseline"]["top1"] > -0.2
    )  # trained: predicting the mean value (0.5) alone scores about -0.1
    hist = report["history"]["baseline"]
    assert hist and all(row["val_score"] < 0 for row in hist)
    md = (out / "report.md").read_text()
    assert "score[^score]" in md and "`eval_fn`" in md
    # the saved model scores the same through `prunekit eval` and by hand
    code, stdout, err = cli(["eval", out, "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["score"] == pytest.approx(report["pruned"]["top1"], rel=1e-5)
    from prunekit.runs import load_run

    model, _, cfg = load_run(out)
    test = build_data(cfg.data).test
    model.eval()
    with torch.no_grad():
        err2 = sum(float(((model(x).squeeze(1) - y) ** 2).sum()) for x, y in test) / 300
    assert -err2 == pytest.approx(report["pruned"]["top1"], rel=1e-5)


def test_factory_gets_options_and_rank(tmp_path):
    factory = write_factory(tmp_path)
    cfg = DataConfig(name="custom", factory=f"{factory}:make_sharded", options={"batch_size": 40})
    b = build_data(cfg)
    assert calls(tmp_path) == [{"batch_size": 40, "rank": 0, "world_size": 1}]
    assert (b.num_classes, b.in_chans, b.input_size) == (10, 1, 8)
    assert b.class_names[3] == "digit3"
    assert len(b.train) == math.ceil(1197 / 40) and next(iter(b.train))[0].shape == (40, 1, 8, 8)
    assert b.eval_loader("val") is b.val and b.eval_loader("test") is b.test  # the user's own, unchanged
    assert "custom" in b.summary()
    # under torchrun: the factory shards train itself; val / test stay whole and are marked unsharded
    b1 = build_data(cfg, rank=1, world_size=2)
    assert calls(tmp_path)[-1] == {"batch_size": 40, "rank": 1, "world_size": 2}
    assert len(b1.train) == math.ceil(598 / 40) and b1.sizes["train"] == 2 * 598
    val = b1.eval_loader("val")
    assert val.world_size == 1 and len(val) == 3
    assert torch.equal(torch.cat([x for x, _ in val]), torch.cat([x for x, _ in b.val]))


def test_factory_without_rank_refused_under_torchrun(tmp_path):
    factory = write_factory(tmp_path)
    cfg = DataConfig(name="custom", factory=f"{factory}:make_loaders")
    with pytest.raises(PrunekitError, match="does not take rank and world_size"):
        build_data(cfg, rank=0, world_size=2)
    assert calls(tmp_path) == []  # refused before calling it


def test_smoke_caps_the_users_loaders(tmp_path):
    factory = write_factory(tmp_path)
    cfg = DataConfig(name="custom", factory=f"{factory}:make_loaders", options={"batch_size": 50})
    b = build_data(cfg, max_samples={"train": 120, "val": 100, "test": 500})
    assert len(b.train) == 3 and len(list(b.train)) == 3 and b.sizes["train"] == 150
    assert len(b.val) == 1 and b.sizes["val"] == 128  # one eval batch of 128 covers the cap
    assert (
        b.test is not None and len(b.test) == 3 and b.sizes["test"] == 300
    )  # under the cap: the whole split
    assert b.train.dataset is not None  # the loader's own attributes show through


def test_non_custom_config_dump_unchanged():
    """The new fields stay out of a non-custom config's JSON (its hash: existing runs still resume)."""
    dump = json.loads(DataConfig(name="digits", batch_size=32).model_dump_json())
    assert "factory" not in dump and "options" not in dump
    assert list(dump)[:2] == ["name", "data_dir"]


@pytest.mark.parametrize(
    ("data", "expect"),
    [
        ({"name": "custom"}, "needs factory"),
        ({"name": "custom", "factory": "my_data.py"}, "path/to/file.py:function"),
        ({"name": "digits", "factory": "my_data.py:make_loaders"}, "only applies to name: custom"),
        ({"name": "digits", "options": {"a": 1}}, "only applies to name: custom"),
        ({"name": "custom", "factory": "{f}:make_loaders", "batch_size": 32}, "batch_size does not apply"),
        (
            {"name": "custom", "factory": "{f}:make_loaders", "subset_train": 100},
            "subset_train does not apply",
        ),
        (
            {"name": "custom", "factory": "{f}:make_loaders", "val_fraction": 0.2},
            "val_fraction does not apply",
        ),
        ({"name": "custom", "factory": "{f}:make_loaders", "options": {"rank": 1}}, "may not set rank"),
        ({"name": "custom", "factory": "{d}/nope.py:make_loaders"}, "not found"),
        ({"name": "custom", "factory": "{f}:make_lodaers"}, "'make_lodaers' not found"),
        ({"name": "custom", "factory": "{f}:make_loaders", "options": {"batchsize": 8}}, "batchsize"),
        ({"name": "custom", "factory": "{f}:raises"}, "ValueError: no such dataset"),
        ({"name": "custom", "factory": "{f}:returns_tuple"}, "returned tuple"),
        ({"name": "custom", "factory": "{f}:no_test"}, "no 'test' loader"),
        ({"name": "custom", "factory": "{f}:empty_train"}, "'train' loader is empty"),
        ({"name": "custom", "factory": "{f}:a_dataset"}, "'train' is a TensorDataset, not a loader"),
        ({"name": "custom", "factory": "{f}:not_square"}, "8x10 images"),
        ({"name": "custom", "factory": "{f}:float_labels"}, "int64 class indices"),
        ({"name": "custom", "factory": "{f}:unknown_key"}, "unknown key(s) 'eval_func'"),
        ({"name": "custom", "factory": "{f}:eval_not_callable"}, "eval_fn of type float: give a function"),
        ({"name": "custom", "factory": "{f}:objective_without_num_classes"}, "return num_classes"),
    ],
)
def test_custom_errors_exit_2_with_one_line(tmp_path, capsys, monkeypatch, data, expect):
    monkeypatch.setenv("PRUNEKIT_NO_PROGRESS", "1")
    factory = write_factory(tmp_path, BROKEN)
    if "factory" in data:
        data = {**data, "factory": data["factory"].format(f=factory, d=tmp_path)}
    out = tmp_path / "run"
    code, _, err = cli(["run", run_config(tmp_path, data), "--smoke", "--out", out], capsys)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert expect in err
    assert not out.exists()  # refused before anything was written


def test_run_without_val_says_so(tmp_path, capsys, monkeypatch):
    """A factory without a val loader: a baseline that keeps its best epoch needs one, and the error says how."""
    monkeypatch.setenv("PRUNEKIT_NO_PROGRESS", "1")
    factory = write_factory(tmp_path)
    data = {"name": "custom", "factory": f"{factory}:make_sharded"}
    b = build_data(DataConfig(**data))
    assert b.val is not None
    data = {"name": "custom", "factory": f"{factory}:make_loaders", "options": {"with_val": False}}
    b = build_data(DataConfig(**data))
    assert b.val is None and b.eval_loader("val") is None and b.sizes["val"] == 0
    code, _, err = cli(["run", run_config(tmp_path, data), "--smoke", "--out", tmp_path / "o"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "return a 'val' loader from data.factory" in err


def test_shared_file_helper(tmp_path):
    """`model: file.py:factory` and `data.factory` import files through the same helper (prunekit.userfile)."""
    from prunekit.userfile import load_file_callable, split_file_ref

    factory = write_factory(tmp_path)
    assert split_file_ref(f"{factory}:make_loaders") == (str(factory), "make_loaders")
    assert split_file_ref("no_colon.py") is None and split_file_ref("x.py:") is None
    fn = load_file_callable(str(factory), "make_sharded", what="data factory file")
    assert callable(fn)
    with pytest.raises(PrunekitError, match=r"data factory file .* not found"):
        load_file_callable(str(tmp_path / "missing.py"), "f", what="data factory file")


def test_custom_file_relative_to_cwd(tmp_path, monkeypatch):
    write_factory(tmp_path)
    monkeypatch.chdir(tmp_path)
    b = build_data(DataConfig(name="custom", factory="my_data.py:make_sharded"))
    assert b.num_classes == 10
    cfg = DataConfig(name="custom", factory="sub/my_data.py:make_sharded")
    with pytest.raises(PrunekitError, match=re.escape(f"(looked in {tmp_path})")):
        build_data(cfg)
