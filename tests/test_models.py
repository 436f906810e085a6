"""Tests for prunekit.models: reference MACs/params, forward/backward on small inputs, specs and errors."""

from __future__ import annotations

import functools
import importlib
import math
import textwrap

import pytest
import torch
import torch.fx
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from prunekit.errors import PrunekitError
from prunekit.models import ModelSpec, create_model, list_models, model_options, parse_spec, register_model
from prunekit.models import registry as registry_mod
from prunekit.models.mobilenet import make_divisible

BUILTINS = [
    "mobilenet_v1",
    "mobilenet_v2",
    "preresnet",
    "preresnet164",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet34",
    "resnet44",
    "resnet50",
    "resnet56",
    "resnet101",
    "resnet110",
    "vgg16_bn",
    "vgg19_bn",
]


@functools.cache
def cached_model(spec: str, num_classes: int | None = None, in_chans: int | None = None) -> nn.Module:
    """Build each model once per test session (building an ImageNet model takes ~0.5 s)."""
    return create_model(spec, num_classes=num_classes, in_chans=in_chans)


@pytest.fixture(scope="module", autouse=True)
def _free_cached_models():
    yield
    cached_model.cache_clear()


def count_macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Conv + linear multiply-accumulates of one forward pass (FlopCounterMode counts 2 FLOPs per MAC)."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(*shape))
    return counter.get_total_flops() // 2


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def error_message(spec: str, **kwargs) -> str:
    with pytest.raises(PrunekitError) as info:
        create_model(spec, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, f"error message must be one line: {msg!r}"
    return msg


# ------------------------------------------------------------------------------------- reference numbers
# (spec, MACs, params or None, exact params or None); 224x224 input, 1000 classes. Sources: Howard et al.
# 2017 Tables 1/6 (V1), Sandler et al. 2018 Table 4 and the TF-slim model zoo (V2), torchvision model cards
# (ResNet, V2; the exact counts are torchvision's, to the parameter).
REFERENCE = [
    ("mobilenet_v1", 569e6, 4.232e6, None),
    ("mobilenet_v1:width_mult=0.75", 325e6, None, None),
    ("mobilenet_v1:width_mult=0.5", 149e6, None, None),
    ("mobilenet_v1:width_mult=0.25", 41e6, None, None),
    ("mobilenet_v2", 301e6, 3.50e6, 3_504_872),
    ("mobilenet_v2:width_mult=1.4", 582e6, 6.11e6, None),
    ("resnet18", 1.81e9, 11.69e6, 11_689_512),
    ("resnet34", 3.66e9, 21.80e6, 21_797_672),
    ("resnet50", 4.09e9, 25.56e6, 25_557_032),
]


@pytest.mark.parametrize(
    ("spec", "ref_macs", "ref_params", "exact"), REFERENCE, ids=[r[0] for r in REFERENCE]
)
def test_reference_macs_and_params(
    spec: str, ref_macs: float, ref_params: float | None, exact: int | None
) -> None:
    model = create_model(spec)
    assert model.training, "create_model returns a model in training mode"
    macs = count_macs(model, (1, 3, 224, 224))
    assert abs(macs - ref_macs) / ref_macs < 0.01, f"{spec}: {macs / 1e6:.2f}M MACs, expected {ref_macs:.3g}"
    params = count_params(model)
    if ref_params is not None:
        assert abs(params - ref_params) / ref_params < 0.01, f"{spec}: {params} params, expected {ref_params}"
    if exact is not None:
        assert params == exact


@pytest.mark.parametrize(
    ("name", "paper_params"),
    [
        ("resnet20", 0.27e6),
        ("resnet32", 0.46e6),
        ("resnet44", 0.66e6),
        ("resnet56", 0.85e6),
        ("resnet110", 1.7e6),
    ],
)
def test_cifar_resnet_params_match_paper(name: str, paper_params: float) -> None:
    # He et al. 2016 Table 6; projection shortcuts (option B) add 2,752 parameters to the option-A count.
    params = count_params(create_model(name))
    assert abs(params - paper_params) / paper_params < 0.02, f"{name}: {params}"


def test_cifar_resnet56_option_b_sanity() -> None:
    model = create_model("resnet56")
    params = count_params(model)
    assert 850_000 <= params <= 860_000, params
    assert params == 855_770  # 853,018 (option A) + 1x1 projections 16->32 and 32->64 with their BN
    assert 125e6 < count_macs(model, (1, 3, 32, 32)) < 127e6


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_cifar_resnet_structure(depth: int) -> None:
    model = create_model(f"resnet{depth}")
    n = (depth - 2) // 6
    assert model.conv1.stride == (1, 1) and model.conv1.kernel_size == (3, 3)
    assert [len(s) for s in (model.layer1, model.layer2, model.layer3)] == [n, n, n]
    assert [s[0].conv2.out_channels for s in (model.layer1, model.layer2, model.layer3)] == [16, 32, 64]
    main_convs = [
        m for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and "downsample" not in name
    ]
    assert len(main_convs) + 1 == depth  # 6n + 2 weighted layers (convs + fc)
    projections = [name for name, _ in model.named_modules() if name.endswith("downsample")]
    assert projections == ["layer2.0.downsample", "layer3.0.downsample"]
    ds = model.layer2[0].downsample
    assert isinstance(ds[0], nn.Conv2d) and ds[0].kernel_size == (1, 1) and ds[0].stride == (2, 2)
    assert isinstance(ds[1], nn.BatchNorm2d)


def test_mobilenet_v1_structure() -> None:
    model = create_model("mobilenet_v1")
    widths = [model.features[0][0].out_channels] + [b.conv_pw.out_channels for b in model.features[1:]]
    assert widths == [32, 64, 128, 128, 256, 256] + [512] * 6 + [1024, 1024]
    assert all(b.conv_dw.groups == b.conv_dw.in_channels for b in model.features[1:])
    assert model.classifier.in_features == 1024
    small = create_model("mobilenet_v1:width_mult=0.25")
    assert small.features[0][0].out_channels == 8 and small.classifier.in_features == 256


def test_mobilenet_v2_channel_rounding() -> None:
    assert [make_divisible(c * 1.4) for c in (32, 16, 24, 32, 64, 96, 160, 320)] == [
        48,
        24,
        32,
        48,
        88,
        136,
        224,
        448,
    ]
    assert make_divisible(1280 * 1.4) == 1792
    wide = create_model("mobilenet_v2:width_mult=1.4")
    assert wide.features[0][0].out_channels == 48 and wide.classifier[1].in_features == 1792
    narrow = create_model("mobilenet_v2:width_mult=0.5")
    assert narrow.classifier[1].in_features == 1280  # last channel never shrinks below 1280
    assert len(create_model("mobilenet_v2").features) == 19


def test_stem_stride_keeps_resolution() -> None:
    x = torch.randn(1, 3, 32, 32)
    for name in ("mobilenet_v1", "mobilenet_v2"):
        assert create_model(name).features[0](x).shape[-1] == 16
        assert create_model(f"{name}:stem_stride=1").features[0](x).shape[-1] == 32
    assert "stem_stride must be 1 or 2" in error_message("mobilenet_v2:stem_stride=3")


def test_width_mult_scales_widths() -> None:
    half = create_model("resnet20:width_mult=0.5")
    assert [half.conv1.out_channels, half.layer2[0].conv1.out_channels, half.fc.in_features] == [8, 16, 32]
    vgg = create_model("vgg16_bn:width_mult=0.25")
    assert vgg.features[0].out_channels == 16 and vgg.classifier.in_features == 128
    r18 = create_model("resnet18:width_mult=0.5")
    assert r18.conv1.out_channels == 32 and r18.fc.in_features == 256
    tiny = create_model("resnet20:width_mult=0.01")
    assert tiny.conv1.out_channels == 1  # widths never reach 0
    assert count_params(create_model("resnet50:width_mult=0.5")) < count_params(cached_model("resnet50")) / 3


def test_torchvision_parameter_names() -> None:
    r18 = cached_model("resnet18", num_classes=10, in_chans=3).state_dict()
    for key in ("conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight"):
        assert key in r18
    assert "layer1.0.downsample.0.weight" not in r18 and "fc.bias" in r18
    r50 = cached_model("resnet50", num_classes=10, in_chans=3).state_dict()
    assert "layer1.0.downsample.1.weight" in r50 and "layer4.2.conv3.weight" in r50
    assert r50["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)
    assert cached_model("resnet50", num_classes=10, in_chans=3).layer2[0].conv2.stride == (
        2,
        2,
    )  # v1.5: stride on the 3x3 conv
    v2 = cached_model("mobilenet_v2", num_classes=10, in_chans=3).state_dict()
    for key in ("features.0.0.weight", "features.1.conv.0.0.weight", "features.2.conv.3.weight"):
        assert key in v2
    assert "features.18.1.running_var" in v2 and "classifier.1.weight" in v2
    vgg = cached_model("vgg16_bn", num_classes=10, in_chans=3).state_dict()
    assert "features.0.weight" in vgg and "features.1.weight" in vgg and "classifier.weight" in vgg


def test_weight_init() -> None:
    model = create_model("resnet56")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    conv = model.layer3[1].conv1  # fan_out = 64 * 9
    assert abs(conv.weight.std().item() - math.sqrt(2 / (64 * 9))) < 0.01


# ------------------------------------------------------------------------------- forward / backward / fx
def test_list_models() -> None:
    assert list_models() == sorted(BUILTINS)


@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize(
    ("shape", "in_chans"), [((2, 1, 28, 28), 1), ((2, 3, 32, 32), 3)], ids=["28x28x1", "32x32x3"]
)
def test_forward_backward(name: str, shape: tuple[int, ...], in_chans: int) -> None:
    torch.manual_seed(0)
    model = cached_model(name, num_classes=10, in_chans=in_chans).train()
    model.zero_grad(set_to_none=True)
    out = model(torch.randn(*shape))
    assert out.shape == (shape[0], 10)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    model.zero_grad(set_to_none=True)
    assert not missing, f"parameters without gradient: {missing[:5]}"


@pytest.mark.parametrize("name", BUILTINS)
def test_fx_traceable(name: str) -> None:
    model = cached_model(name, num_classes=10, in_chans=3).eval()
    graph_module = torch.fx.symbolic_trace(model)
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(graph_module(x), model(x))


def test_spec_options_reach_the_model() -> None:
    model = create_model("resnet20:num_classes=7,in_chans=1")
    assert model.conv1.in_channels == 1 and model.fc.out_features == 7
    assert create_model("vgg19_bn:num_classes=100").classifier.out_features == 100
    assert create_model("resnet18").fc.out_features == 1000 and create_model("resnet20").fc.out_features == 10


def test_keyword_overrides_beat_spec_options() -> None:
    model = create_model("resnet20:num_classes=7,in_chans=1", num_classes=3, in_chans=2)
    assert model.conv1.in_channels == 2 and model.fc.out_features == 3
    assert "num_classes must be a positive integer" in error_message("resnet20", num_classes=0)
    assert "in_chans must be a positive integer" in error_message("resnet20", in_chans=-1)


# ------------------------------------------------------------------------------------------ spec parsing
def test_parse_spec_values_and_types() -> None:
    spec = parse_spec(" mobilenet_v2 : width_mult = 1.4 , num_classes=10 ")
    assert spec == ModelSpec("builtin", "mobilenet_v2", {"num_classes": 10, "width_mult": 1.4})
    assert isinstance(spec.kwargs["num_classes"], int)
    # an int where a float is expected is converted, so the canonical string says 1.0
    spec = parse_spec("resnet20:width_mult=1")
    assert spec.kwargs == {"width_mult": 1.0} and isinstance(spec.kwargs["width_mult"], float)
    assert spec.to_string() == "resnet20:width_mult=1.0"
    assert parse_spec("resnet20") == ModelSpec("builtin", "resnet20", {})
    file_spec = parse_spec("models/net.py:build:a=1,b=2.5,c=TRUE,d=false,e=hello,f=1e-3")
    assert file_spec.source == "file" and file_spec.path == "models/net.py" and file_spec.name == "build"
    assert file_spec.kwargs == {"a": 1, "b": 2.5, "c": True, "d": False, "e": "hello", "f": 0.001}
    assert [type(v) for v in file_spec.kwargs.values()] == [int, float, bool, bool, str, float]
    tv = parse_spec("torchvision:resnet18:num_classes=5")
    assert (tv.source, tv.name, tv.kwargs) == ("torchvision", "resnet18", {"num_classes": 5})
    hub = parse_spec("timm:hf-hub:timm/resnet18.a1_in1k:num_classes=5")
    assert (hub.source, hub.name, hub.kwargs) == ("timm", "hf-hub:timm/resnet18.a1_in1k", {"num_classes": 5})


@pytest.mark.parametrize(
    ("spec", "canonical"),
    [
        ("resnet20", "resnet20"),
        ("resnet20:num_classes=10,in_chans=1", "resnet20:in_chans=1,num_classes=10"),
        ("mobilenet_v2:width_mult=1.4,stem_stride=1", "mobilenet_v2:stem_stride=1,width_mult=1.4"),
        ("timm:resnet50:pretrained=True", "timm:resnet50:pretrained=true"),
        ("torchvision:mobilenet_v3_small", "torchvision:mobilenet_v3_small"),
        ("timm:hf-hub:org/m", "timm:hf-hub:org/m"),
        ("dir/my.model.py:make:w=0.5,depth=3,act=relu", "dir/my.model.py:make:act=relu,depth=3,w=0.5"),
    ],
)
def test_canonical_round_trip(spec: str, canonical: str) -> None:
    parsed = parse_spec(spec)
    assert parsed.to_string() == canonical
    assert str(parsed) == canonical
    assert parse_spec(canonical) == parsed
    assert hash(parse_spec(canonical)) == hash(parsed)


_ident = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)
_value = st.one_of(
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.from_regex(r"[a-z][a-z0-9_.\-/]{0,10}", fullmatch=True).filter(
        lambda s: (
            s not in ("true", "false", "none", "null", "inf", "nan", "infinity")
            and not s.startswith(("inf", "nan"))
        )
    ),
)


@settings(max_examples=60, deadline=None)
@given(kwargs=st.dictionaries(_ident, _value, max_size=5))
def test_round_trip_property(kwargs: dict) -> None:
    spec = ModelSpec("file", "factory", kwargs, path="some/where.py")
    again = parse_spec(spec.to_string())
    assert again == spec
    assert {k: type(v) for k, v in again.kwargs.items()} == {k: type(v) for k, v in spec.kwargs.items()}


def test_with_options() -> None:
    spec = parse_spec("resnet20:num_classes=10").with_options(num_classes=100, width_mult=2)
    assert spec.to_string() == "resnet20:num_classes=100,width_mult=2.0"
    with pytest.raises(PrunekitError, match="unknown option 'depth'"):
        parse_spec("resnet20").with_options(depth=3)


def test_to_string_rejects_unwritable_values() -> None:
    with pytest.raises(PrunekitError, match="cannot be written"):
        ModelSpec("file", "f", {"x": "a,b"}, path="m.py").to_string()
    with pytest.raises(PrunekitError, match="cannot be written"):
        ModelSpec("timm", "resnet18", {"x": [1, 2]}).to_string()


def test_model_options() -> None:
    assert model_options("resnet20") == {"num_classes": 10, "in_chans": 3, "width_mult": 1.0}
    assert model_options("mobilenet_v2")["stem_stride"] == 2
    assert model_options("resnet50")["num_classes"] == 1000


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("resnet21", "unknown model 'resnet21'"),
        ("RESNET20", "choose one of mobilenet_v1, mobilenet_v2, preresnet"),
        ("", "empty model spec"),
        ("resnet20:num_classes", "write options as key=value"),
        ("resnet20:num_classes=10;in_chans=1", "has the wrong type"),
        ("resnet20:", "no options"),
        ("resnet20:num_classes=", "has no value"),
        ("resnet20:=3", "bad option name ''"),
        ("resnet20:num_classes=1,num_classes=2", "given twice"),
        ("resnet20:depth=3", "accepted options are num_classes, in_chans, width_mult"),
        ("resnet20:widht_mult=2", "did you mean width_mult"),
        ("mobilenet_v2:stem=1", "stem_stride"),
        ("resnet20:num_classes=ten", "expected int, e.g. num_classes=10"),
        ("resnet20:num_classes=2.5", "expected int"),
        ("resnet20:width_mult=wide", "expected float"),
        ("resnet20:width_mult=true", "expected float"),
        ("resnet20:width_mult=0", "width_mult must be a positive number"),
        ("resnet20:num_classes=0", "num_classes must be a positive integer"),
        ("mobilenet_v2:dropout=1.5", "dropout must be in [0, 1)"),
        ("model.py", "names a file but no factory"),
        ("model.py:", "names a file but no factory"),
        ("model.py:1abc", "bad factory name"),
        ("no/such/dir/model.py:build", "model file 'no/such/dir/model.py' not found"),
        ("timm:", "names no model"),
    ],
)
def test_spec_errors(spec: str, expected: str) -> None:
    msg = error_message(spec)
    assert expected in msg, msg


def test_unknown_model_lists_all_known() -> None:
    msg = error_message("resnet21")
    assert all(name in msg for name in BUILTINS)
    assert "path/to/file.py:factory" in msg and "did you mean" in msg


# ------------------------------------------------------------------------------------------- file models
MODEL_FILE = textwrap.dedent(
    """
    import torch
    from torch import nn

    IMPORTED = True


    def build(
        num_classes: int = 10, in_chans: int = 3, hidden: int = 8, scale: float = 1.0, act: str = "relu"
    ):
        acts = {"relu": nn.ReLU(), "tanh": nn.Tanh()}
        return nn.Sequential(
            nn.Conv2d(in_chans, hidden, 3, padding=1),
            acts[act],
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(hidden, num_classes),
        )


    def build_no_in_chans(num_classes=10):
        return nn.Linear(4, num_classes)


    def build_anything(**kwargs):
        return nn.Linear(2, kwargs.get("out", 1))


    def not_a_model():
        return 42


    class Net(nn.Module):
        def __init__(self, num_classes: int = 2):
            super().__init__()
            self.fc = nn.Linear(3, num_classes)
    """
)


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "user_model.py"
    path.write_text(MODEL_FILE)
    return path


def test_file_factory(model_file) -> None:
    spec = f"{model_file}:build:hidden=4,num_classes=5,act=tanh,scale=2"
    model = create_model(spec, in_chans=1)
    assert isinstance(model[1], nn.Tanh)
    assert model[0].in_channels == 1 and model[0].out_channels == 4 and model[-1].out_features == 5
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 5)
    parsed = parse_spec(spec)
    assert parsed.to_string() == f"{model_file}:build:act=tanh,hidden=4,num_classes=5,scale=2"
    assert isinstance(create_model(parsed.to_string()), nn.Sequential)
    assert isinstance(create_model(f"{model_file}:Net:num_classes=4"), nn.Module)  # a class works too
    assert create_model(f"{model_file}:build_anything:out=3").out_features == 3  # **kwargs: anything goes


def test_file_factory_relative_path(model_file, monkeypatch) -> None:
    monkeypatch.chdir(model_file.parent)
    assert create_model("user_model.py:build", num_classes=3)[-1].out_features == 3


def test_file_factory_errors(model_file, tmp_path) -> None:
    msg = error_message(f"{model_file}:missing")
    assert "factory 'missing' not found" in msg and "build" in msg and "Net" in msg
    assert "unknown option 'depth'" in error_message(f"{model_file}:build:depth=3")
    assert "accepted options are num_classes, in_chans, hidden, scale, act" in error_message(
        f"{model_file}:build:depth=3"
    )
    assert "expected int" in error_message(f"{model_file}:build:hidden=big")
    assert "unknown option 'in_chans'" in error_message(f"{model_file}:build_no_in_chans", in_chans=1)
    assert "not a torch.nn.Module" in error_message(f"{model_file}:not_a_model")
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\nraise RuntimeError('boom\\nsecond line')\n")
    msg = error_message(f"{broken}:build")
    assert "RuntimeError: boom second line" in msg and "fix the file" in msg
    missing = tmp_path / "nope.py"
    assert "not found" in error_message(f"{missing}:build")


# -------------------------------------------------------------------------------------- timm/torchvision
def _imports(package: str) -> bool:
    try:
        importlib.import_module(package)
    except Exception:
        return False
    return True


@pytest.mark.parametrize("source", ["timm", "torchvision"])
def test_optional_sources_report_install_command(source: str) -> None:
    if _imports(source) and _imports("torchvision"):
        pytest.skip(f"{source} imports here")
    msg = error_message(f"{source}:resnet18:num_classes=10")
    assert "pip install -c constraints.txt timm torchvision" in msg


# ---------------------------------------------------------------------------------------------- registry
def test_register_model() -> None:
    @register_model("tiny_test_net")
    def tiny(*, num_classes: int = 10, in_chans: int = 3, bias: bool = True) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes, bias=bias))

    try:
        assert "tiny_test_net" in list_models()
        model = create_model("tiny_test_net:bias=false", num_classes=4)
        assert model[1].bias is None
        assert "expected bool" in error_message("tiny_test_net:bias=1")
        with pytest.raises(PrunekitError, match="already registered"):
            register_model("tiny_test_net")(lambda: nn.Identity())
    finally:
        registry_mod._REGISTRY.pop("tiny_test_net", None)
    with pytest.raises(PrunekitError, match="reserved"):
        register_model("timm")
    with pytest.raises(PrunekitError, match="invalid model name"):
        register_model("bad:name")
