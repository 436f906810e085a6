"""Model-spec values None/null/true/false, and one-line errors for failures inside a model factory (issue #18)."""

from __future__ import annotations

import json
import textwrap

import pytest
from torch import nn

from prunekit.cli import main
from prunekit.errors import PrunekitError
from prunekit.models import registry
from prunekit.models.registry import ModelSpec, create_model, parse_spec, register_model

FACTORY_FILE = textwrap.dedent(
    """
    import json
    import os
    import urllib.error

    from torch import nn

    RECORD = os.environ["PRUNEKIT_TEST_RECORD"]


    def _record(**kwargs):
        with open(RECORD, "w") as f:
            json.dump(kwargs, f)


    def anything(**kwargs):
        _record(**kwargs)
        return nn.Linear(2, 2)


    def typed(
        weights: str | None = "DEFAULT",
        pretrained: bool = True,
        flag: bool | None = None,
        depth: int | None = 3,
        act: str = "relu",
        num_classes: int = 10,
        in_chans: int = 3,
    ):
        _record(weights=weights, pretrained=pretrained, flag=flag, depth=depth, act=act)
        return nn.Linear(in_chans, num_classes)


    def downloads(weights="DEFAULT", num_classes=10, in_chans=3):
        if weights is not None:
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
        return nn.Linear(in_chans, num_classes)


    def bad_value(num_classes=10, in_chans=3):
        raise ValueError("depth must be one of 18, 34,\\n 50")
    """
)


@pytest.fixture
def factory_file(tmp_path, monkeypatch):
    record = tmp_path / "record.json"
    monkeypatch.setenv("PRUNEKIT_TEST_RECORD", str(record))
    path = tmp_path / "factories.py"
    path.write_text(FACTORY_FILE)
    return path, record


def _recorded(record) -> dict:
    return json.loads(record.read_text())


def _message(spec: str, **kwargs) -> str:
    with pytest.raises(PrunekitError) as info:
        create_model(spec, **kwargs)
    return str(info.value)


# ------------------------------------------------------------------------------------------ value parsing
def test_file_spec_none_and_bools_parse_and_reach_the_factory(factory_file) -> None:
    path, record = factory_file
    spec = f"{path}:anything:a=None,b=null,c=NULL,d=true,e=False,f=TRUE,g=none,h=text"
    parsed = parse_spec(spec)
    assert parsed.kwargs == {
        "a": None,
        "b": None,
        "c": None,
        "d": True,
        "e": False,
        "f": True,
        "g": None,
        "h": "text",
    }
    assert all(type(parsed.kwargs[k]) is bool for k in "def")
    create_model(spec)
    assert _recorded(record) == parsed.kwargs  # json: None -> null, bools stay bools


def test_typed_file_factory_accepts_none_for_optional_and_bools(factory_file) -> None:
    path, record = factory_file
    create_model(f"{path}:typed:weights=None,pretrained=false,flag=True,depth=null")
    assert _recorded(record) == {
        "weights": None,
        "pretrained": False,
        "flag": True,
        "depth": None,
        "act": "relu",
    }
    create_model(f"{path}:typed:flag=none,act=None")  # a plain str option keeps the text
    got = _recorded(record)
    assert got["flag"] is None and got["act"] == "None"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ("pretrained=None", "expected bool, e.g. pretrained=true"),
        ("num_classes=null", "expected int, e.g. num_classes=10"),
        ("depth=yes", "expected int or None"),
    ],
)
def test_typed_file_factory_rejects_wrong_types(factory_file, options, expected) -> None:
    path, _ = factory_file
    msg = _message(f"{path}:typed:{options}")
    assert "wrong type" in msg and expected in msg and "\n" not in msg, msg


@pytest.fixture
def builtin_typed():
    name = "test_spec_values_net"

    def factory(
        num_classes: int = 10,
        in_chans: int = 3,
        bias: bool = True,
        dropout: float | None = None,
        norm: str | None = "bn",
    ) -> nn.Module:
        factory.seen = {"bias": bias, "dropout": dropout, "norm": norm}
        return nn.Linear(in_chans, num_classes, bias=bias)

    register_model(name)(factory)
    yield name, factory
    registry._REGISTRY.pop(name, None)


def test_builtin_typed_options_validate(builtin_typed) -> None:
    name, factory = builtin_typed
    spec = parse_spec(f"{name}:bias=false,dropout=None,norm=null")
    assert spec.kwargs == {"bias": False, "dropout": None, "norm": None}
    assert type(spec.kwargs["bias"]) is bool
    model = create_model(spec)
    assert model.bias is None and factory.seen == {"bias": False, "dropout": None, "norm": None}
    assert parse_spec(f"{name}:bias=True,dropout=0.5").kwargs == {"bias": True, "dropout": 0.5}
    for bad, expected in (("bias=None", "expected bool"), ("dropout=high", "expected float or None")):
        with pytest.raises(PrunekitError, match=expected):
            parse_spec(f"{name}:{bad}")
    with pytest.raises(PrunekitError, match="expected int, e.g. num_classes=10"):
        parse_spec("resnet20:num_classes=None")


def test_timm_and_torchvision_specs_parse_none_and_bools() -> None:
    tv = parse_spec("torchvision:lraspp_mobilenet_v3_large:num_classes=10,weights_backbone=None,weights=null")
    assert tv.kwargs == {"num_classes": 10, "weights": None, "weights_backbone": None}
    timm = parse_spec("timm:resnet18:pretrained=False,drop_rate=0.1")
    assert timm.kwargs == {"drop_rate": 0.1, "pretrained": False}
    assert type(timm.kwargs["pretrained"]) is bool


# ------------------------------------------------------------------------------------------ round trip
@pytest.mark.parametrize(
    ("spec", "canonical"),
    [
        (
            "torchvision:lraspp_mobilenet_v3_large:weights_backbone=None,num_classes=10,weights=null",
            "torchvision:lraspp_mobilenet_v3_large:num_classes=10,weights=None,weights_backbone=None",
        ),
        ("timm:resnet18:pretrained=False", "timm:resnet18:pretrained=false"),
        ("m.py:make:x=NULL,y=True,z=none", "m.py:make:x=None,y=true,z=None"),
    ],
)
def test_round_trip_is_stable(spec, canonical) -> None:
    parsed = parse_spec(spec)
    assert parsed.to_string() == canonical
    again = parse_spec(canonical)
    assert again == parsed and again.to_string() == canonical
    assert hash(again) == hash(parsed)


def test_round_trip_of_constructed_spec(builtin_typed) -> None:
    name, _ = builtin_typed
    spec = ModelSpec("file", "f", {"a": None, "b": True, "c": False, "d": 0.5}, path="x.py")
    assert spec.to_string() == "x.py:f:a=None,b=true,c=false,d=0.5"
    assert parse_spec(spec.to_string()) == spec
    builtin = parse_spec(name).with_options(dropout=None, bias=False)
    assert builtin.to_string() == f"{name}:bias=false,dropout=None"
    assert parse_spec(builtin.to_string()) == builtin


# ------------------------------------------------------------------------------------------ factory failures
def test_download_attempt_becomes_one_line_with_advice(factory_file) -> None:
    path, _ = factory_file
    msg = _message(f"{path}:downloads")
    assert "\n" not in msg
    assert f"{path}:downloads" in msg
    assert "never downloads" in msg and "URLError" in msg
    assert "weights=None" in msg and "pretrained=False" in msg and "baseline.checkpoint" in msg
    assert isinstance(create_model(f"{path}:downloads:weights=None"), nn.Linear)  # the advice works


def test_factory_value_error_becomes_one_line_naming_the_spec(factory_file) -> None:
    path, _ = factory_file
    msg = _message(f"{path}:bad_value")
    assert "\n" not in msg
    assert f"{path}:bad_value" in msg and "ValueError: depth must be one of 18, 34, 50" in msg
    assert "download" not in msg


def test_errors_are_chained_and_own_errors_pass_unchanged(builtin_typed) -> None:
    name, factory = builtin_typed

    def raising(**kwargs):
        raise PrunekitError("test_spec_values_net: a message of our own")

    registry._REGISTRY[name] = raising
    with pytest.raises(PrunekitError) as info:
        create_model(name)
    assert str(info.value) == "test_spec_values_net: a message of our own"

    def interrupted(**kwargs):
        raise KeyboardInterrupt

    registry._REGISTRY[name] = interrupted
    with pytest.raises(KeyboardInterrupt):
        create_model(name)

    def network(**kwargs):
        raise RuntimeError("Error downloading https://example.com/w.pth")

    registry._REGISTRY[name] = network
    with pytest.raises(PrunekitError, match="never downloads") as info:
        create_model(name)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_cli_download_error_exits_2_with_one_line(factory_file, capsys) -> None:
    path, _ = factory_file
    code = main(["inspect", f"{path}:downloads", "--input-size", "28"])
    out = capsys.readouterr()
    assert code == 2
    assert out.err.startswith("error: ") and out.err.count("\n") == 1
    assert "Traceback" not in out.err + out.out
    assert "never downloads" in out.err and "weights=None" in out.err


def test_cli_factory_value_error_exits_2_with_one_line(factory_file, capsys) -> None:
    path, _ = factory_file
    code = main(["inspect", f"{path}:bad_value", "--input-size", "28"])
    out = capsys.readouterr()
    assert code == 2
    assert out.err.startswith("error: ") and out.err.count("\n") == 1
    assert f"{path}:bad_value" in out.err and "ValueError" in out.err
