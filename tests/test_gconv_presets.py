"""The gconv presets (configs/*gconv*.yaml): every one loads; the ImageNet / CIFAR-100 ones (no such data here) build
their model at the dataset's shape with a group choice that is legal on it (the seed's JSON group configs import
with matching F / C); every search preset's start (each layer at its largest legal G) is within its params budget,
which the unpruned model is not; and one Fashion-MNIST preset runs end to end with ``--smoke``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prunekit.config import load_config
from prunekit.cost.budget import Budget
from prunekit.cost.macs import CostModel
from prunekit.methods.gconv.groups import GroupRules, read_group_config, table_choice, uniform_choice
from prunekit.methods.gconv.prune import regroupable
from prunekit.models import create_model, parse_spec
from prunekit.space import ChannelSpace, plan_from_widths
from prunekit.space.plan import LayerChoice

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FMNIST_PRESETS = [f"resnet{d}-gconv-{kind}" for d in (20, 56) for kind in ("g2", "g4", "search")]
LARGE_PRESETS = [
    "cifar100-preresnet164-gconv-search",
    "imagenet-resnet34-gconv-A",
    "imagenet-resnet34-gconv-B",
    "imagenet-resnet50-gconv-g2",
    "imagenet-resnet101-gconv-g2",
]
SEARCH_PRESETS = ["resnet20-gconv-search", "resnet56-gconv-search", "cifar100-preresnet164-gconv-search"]
# dataset -> (num_classes, in_chans, image size); ImageNet spaces are built at 64x64 (channel counts, and so the
# legal group counts and the params, do not depend on the resolution; 224x224 only costs time)
DATASETS = {"fashion_mnist": (10, 1, 28), "cifar100": (100, 3, 32), "imagefolder": (1000, 3, 64)}
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def _load(name: str):
    return load_config(CONFIGS / f"{name}.yaml")


def _build(cfg):
    """The preset's model (classes / channels of its dataset), its channel space and cost model."""
    num_classes, in_chans, size = DATASETS[cfg.data.name]
    spec = parse_spec(cfg.model).with_options(num_classes=num_classes, in_chans=in_chans).to_string()
    model = create_model(spec).eval()
    space = ChannelSpace.build(model, (1, in_chans, size, size), quiet=True)
    return spec, model, space, CostModel(space)


def _candidates(cfg, model, space) -> tuple[dict[str, list[int]], dict[str, tuple[int, int]]]:
    """Per regroupable conv its legal G (the method's rules) and its ``(c_in, c_out)``."""
    m = cfg.method
    rules = GroupRules(m.max_groups, m.allow_depthwise, m.min_factor)
    cands, shapes = {}, {}
    for n in regroupable(space, m.exclude):
        conv = model.get_submodule(n)
        shapes[n] = (int(conv.in_channels), int(conv.out_channels))
        cands[n] = rules.candidates(*shapes[n])
    return cands, shapes


def test_every_gconv_preset_is_listed_here_and_loads():
    on_disk = sorted(p.stem for p in CONFIGS.glob("*gconv*.yaml"))
    assert on_disk == sorted(FMNIST_PRESETS + LARGE_PRESETS)
    for name in on_disk:
        cfg = _load(name)
        assert cfg.method.name == "gconv", name
        assert cfg.finetune is not None, name  # GConv recovers by finetuning the kept weights
    for name in FMNIST_PRESETS:
        assert _load(name).data.name == "fashion_mnist"
    for name in SEARCH_PRESETS:
        cfg = _load(name)
        assert cfg.method.search and cfg.target is not None and cfg.target.metrics == ["params"], name


def test_the_cifar100_preset_is_the_seeds_recipe():
    cfg = _load("cifar100-preresnet164-gconv-search")
    assert cfg.data.name == "cifar100" and cfg.model == "preresnet164" and cfg.seed == 42
    assert cfg.target.params == 1_440_000 and cfg.target.params_ratio is None
    m = cfg.method
    assert m.search and m.min_factor == 8 and m.exclude == ["first"] and m.recovery == "finetune"
    ft = cfg.finetune
    assert (ft.epochs, ft.lr, ft.schedule, ft.milestones, ft.weight_decay) == (
        60,
        0.01,
        "multistep",
        [30, 45],
        5e-4,
    )


@pytest.mark.parametrize("name", [n for n in LARGE_PRESETS if n.startswith("imagenet")])
def test_imagenet_presets_follow_the_seeds_finetune(name):
    cfg = _load(name)
    assert cfg.data.name == "imagefolder" and cfg.data.image_size == 224
    assert (
        cfg.baseline.checkpoint and cfg.baseline.train is None
    )  # pretrained weights, never a 90-epoch baseline
    ft = cfg.finetune
    assert (ft.epochs, ft.lr, ft.schedule, ft.milestones) == (30, 0.01, "multistep", [10, 20])


@pytest.mark.parametrize("name", LARGE_PRESETS)
def test_large_preset_builds_with_a_legal_group_choice(name):
    cfg = _load(name)
    spec, model, space, cm = _build(cfg)
    cands, shapes = _candidates(cfg, model, space)
    assert cands, "no regroupable conv"
    m = cfg.method
    if m.group_config is not None:
        table, expected = read_group_config(CONFIGS.parent / m.group_config)
        choice = table_choice(cands, table, shapes=shapes, expected=expected)  # raises on an illegal entry
        assert choice == table and all(g > 1 for g in choice.values())
        assert all(
            f is not None and c is not None for f, c in expected.values()
        )  # the seed's format: F, C given
    elif m.groups is not None:
        choice, skipped = uniform_choice(cands, m.groups)
        assert not skipped, skipped  # every regroupable conv of these ResNets takes G=2
    else:
        return  # the search preset: see test_search_preset_budget_is_reachable
    plan = plan_from_widths(space, space.channels, spec=spec)
    plan.layers = {n: LayerChoice(conv_groups=g) for n, g in choice.items()}
    plan.validate_against(space)
    assert cm.cost(plan).params < cm.cost().params


def _stage_groups(table: dict[str, int]) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for n, g in table.items():
        key = n.split(".")[0] + (".downsample" if "downsample" in n else "")
        out.setdefault(key, set()).add(g)
    return out


def test_resnet34_group_configs_are_the_seeds_A_and_B():
    _, model, space, _ = _build(_load("imagenet-resnet34-gconv-A"))
    convs = set(regroupable(space, ["first"]))
    a, _ = read_group_config(CONFIGS / "gconv" / "resnet34_A.json")
    b, _ = read_group_config(CONFIGS / "gconv" / "resnet34_B.json")
    assert _stage_groups(a) == {
        "layer1": {8},
        "layer2": {4},
        "layer2.downsample": {4},
        "layer3": {2},
        "layer3.downsample": {2},
    }
    assert _stage_groups(b) == {"layer1": {16}, "layer2": {8}, "layer3": {4}, "layer4": {2}}
    # A: every conv of stages 1-3 (downsample included), stage 4 dense; B: every conv but the downsamples
    assert set(a) == {n for n in convs if not n.startswith("layer4")}
    assert set(b) == {n for n in convs if "downsample" not in n}
    raw = json.loads((CONFIGS / "gconv" / "resnet34_A.json").read_text())
    assert all(k.startswith("module.") and set(v) == {"G", "F", "C", "id"} for k, v in raw.items())


@pytest.mark.parametrize("name", SEARCH_PRESETS)
def test_search_preset_budget_is_reachable(name):
    """The local search starts with every layer at its largest legal G: that start must fit the params budget
    (the method refuses otherwise), and the unpruned model must not (else the search has nothing to do)."""
    cfg = _load(name)
    spec, model, space, cm = _build(cfg)
    cands, _ = _candidates(cfg, model, space)
    start = plan_from_widths(space, space.channels, spec=spec)
    start.layers = {n: LayerChoice(conv_groups=c[-1]) for n, c in cands.items() if c[-1] > 1}
    start.validate_against(space)
    limit = Budget.from_target(cfg.target, cm).limit("params")
    start_params = cm.cost(start).params
    assert start_params <= limit, (start_params, limit)
    assert cm.cost().params > limit


@pytest.mark.slow
@pytest.mark.skipif(not FMNIST.is_file(), reason="apt-get install dataset-fashion-mnist")
def test_resnet20_gconv_search_preset_runs_with_smoke(tmp_path, capsys, monkeypatch):
    from prunekit.cli import main

    monkeypatch.setenv("PRUNEKIT_NO_PROGRESS", "1")
    monkeypatch.chdir(CONFIGS.parent)
    out = tmp_path / "run"
    code = main(["run", "configs/resnet20-gconv-search.yaml", "--smoke", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["method"]["name"] == "gconv"
    assert report["pruned"]["params"] <= 0.5 * report["baseline"]["params"]
    extra = report["extra"]
    assert extra["regrouped"] > 0 and extra["moves"], extra
    assert (out / "model.onnx").is_file()
