"""Weight-level plans (issue #11): block-sparse layers and group convolutions realised by apply / mask / cost /
export / rebuild, on random plans over reference models and small hand-built topologies."""

from __future__ import annotations

import functools
import json

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.nets import DenseConcat, DepthwiseChain, FlattenLinear, GroupedConv, ResidualProj, randomize_bn

from prunekit import importance
from prunekit.checks import fill_exact_zeros
from prunekit.cost.macs import CostModel, count_params, measure_effective, measure_macs
from prunekit.errors import PrunekitError
from prunekit.export import export_onnx, fold_batchnorm
from prunekit.models import create_model, list_models
from prunekit.nn import GatherConv
from prunekit.space import (
    ChannelSpace,
    LayerChoice,
    Plan,
    add_weight_choices,
    apply,
    apply_with_masks,
    density_masks,
    mask,
    plan_from_ratio,
    plan_from_widths,
    rebuild,
)
from prunekit.space.plan import weight_options
from prunekit.space.sparsity import DEFAULT_BLOCK, block_mask


def _size(name: str) -> int:
    return (
        32 if name.startswith(("resnet2", "resnet3", "resnet4", "resnet5", "resnet11", "vgg", "pre")) else 64
    )


MODELS = {
    **{name: (f"{name}:num_classes=10", (1, 3, _size(name), _size(name))) for name in list_models()},
    "preresnet": ("preresnet:depth=29,num_classes=10", (1, 3, 32, 32)),  # preresnet164 covers the default
    "mobilenet_v2_x0.5": ("mobilenet_v2:width_mult=0.5,num_classes=10", (1, 3, 32, 32)),
    "residual_proj": (ResidualProj, (1, 3, 16, 16)),
    "depthwise_chain": (DepthwiseChain, (1, 3, 16, 16)),
    "dense_concat": (DenseConcat, (1, 3, 16, 16)),
    "flatten_linear": (FlattenLinear, (1, 3, 16, 16)),
    "grouped_conv": (GroupedConv, (1, 3, 16, 16)),
}
BLOCKS = [(4, 1), (1, 1), (2, 2), (8, 1), (3, 2)]


@functools.cache
def reference(key: str) -> tuple[nn.Module, ChannelSpace]:
    factory, shape = MODELS[key]
    torch.manual_seed(0)
    model = create_model(factory) if isinstance(factory, str) else factory()
    model = fill_exact_zeros(
        randomize_bn(model)
    ).eval()  # non-zero weights are what the effective count counts
    return model, ChannelSpace.build(model, shape, quiet=True)


@st.composite
def weight_plans(draw, key: str) -> Plan:
    """A random channel plan plus, per eligible layer, maybe a density / block / criterion and maybe a legal group
    count with random permutations."""
    model, space = reference(key)
    widths = [draw(st.integers(1, g.channels)) for g in space.groups]
    widths = [
        w - w % g.blocks if g.blocks > 1 and w >= g.blocks else (g.blocks if g.blocks > 1 else w)
        for w, g in zip(widths, space.groups, strict=True)
    ]
    plan = plan_from_widths(space, widths, model=model, importance=importance.l1)
    for name, opt in weight_options(space, plan).items():
        lc = LayerChoice()
        if opt["takes_density"] and draw(st.booleans()):
            lc.density = draw(st.floats(0.05, 1.0))
            lc.block = draw(st.sampled_from(BLOCKS))
            lc.criterion = draw(st.sampled_from([None, "l2"]))
        if opt["conv_groups"] and draw(st.booleans()):
            lc.conv_groups = draw(st.sampled_from(opt["conv_groups"]))
            c_in, c_out = plan.layer_widths(space, name)
            if draw(st.booleans()):
                lc.perm_in = draw(st.permutations(list(range(c_in))))
                lc.perm_out = draw(st.permutations(list(range(c_out))))
        if lc.density is not None or lc.conv_groups is not None:
            plan.layers[name] = lc
    return plan


def _outputs(model: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    x = torch.randn(2, *shape[1:], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.eval()(x)


def _assert_realised(key: str, plan: Plan) -> nn.Module:
    """applied == masked (eval), analytic == measured dense and effective cost; returns the applied model."""
    model, space = reference(key)
    shape = space.input_shape
    applied = apply(model, plan, space)
    masked, _ = mask(model, plan, space)
    ya, ym = _outputs(applied, shape), _outputs(masked, shape)
    assert ya.shape == _outputs(model, shape).shape
    scale = max(1.0, ym.abs().max().item())
    assert (ya - ym).abs().max().item() <= 1e-4 * scale
    cost = CostModel(space).cost(plan)
    assert (cost.macs, cost.params) == (measure_macs(applied, shape), count_params(applied))
    assert (cost.effective_macs, cost.effective_params) == measure_effective(applied, shape)
    grouped = {n: lc.conv_groups for n, lc in plan.layers.items() if lc.grouped}
    for n, g in grouped.items():
        mod = applied.get_submodule(n)
        conv = mod.conv if isinstance(mod, GatherConv) else mod
        assert isinstance(conv, nn.Conv2d) and conv.groups == g
    return applied


SMALL = [k for k in MODELS if not isinstance(MODELS[k][0], str)] + ["resnet20", "mobilenet_v2_x0.5"]


@pytest.mark.parametrize("key", SMALL)
@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(data=st.data())
def test_random_weight_plans_applied_equals_masked_and_cost_is_exact(key, data):
    plan = data.draw(weight_plans(key))
    _assert_realised(key, plan)


@pytest.mark.parametrize("key", sorted(set(list_models()) - {"resnet20"}))
@settings(
    max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(data=st.data())
def test_random_weight_plans_on_every_reference_model(key, data):
    plan = data.draw(weight_plans(key))
    _assert_realised(key, plan)


@pytest.mark.parametrize("key", ["resnet20", "mobilenet_v2_x0.5", "vgg16_bn"])
def test_density_and_groups_export_to_onnx_with_group_convs(key, tmp_path):
    model, space = reference(key)
    plan = plan_from_ratio(space, 0.5, model=model, importance=importance.l1)
    plan, skipped = add_weight_choices(plan, space, density=0.5, conv_groups=2, seed=3)
    grouped = [n for n, lc in plan.layers.items() if lc.grouped]
    assert grouped and all(plan.layers[n].perm_in for n in grouped)
    applied = _assert_realised(key, plan)
    info = export_onnx(applied, tmp_path / "m.onnx", space.input_shape, verify=True)
    assert info.max_abs_diff < 1e-4
    graph = onnx.load(tmp_path / "m.onnx").graph
    group_attr = [
        a.i for n in graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group" and a.i == 2
    ]
    assert len(group_attr) == len(grouped)
    assert not any(n.op_type == "BatchNormalization" for n in graph.node)  # folded, through the gathers too
    # the dropped blocks are exported as zeros
    sparse = [n for n, lc in plan.layers.items() if lc.sparse]
    assert sparse and measure_effective(applied, space.input_shape)[0] < measure_macs(
        applied, space.input_shape
    )


def test_gather_conv_folds_batchnorm_through_its_output_gather():
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=2)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    net = nn.Sequential(GatherConv(conv, perm, torch.flip(perm, [0])), nn.BatchNorm2d(8))
    randomize_bn(net).eval()
    folded = fold_batchnorm(net)
    assert isinstance(folded[1], nn.Identity)
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        assert torch.allclose(folded(x), net(x), atol=1e-5)


def test_one_group_conv_in_a_chain_needs_no_gather():
    """A dense chain conv -> bn -> conv: the producer emits the order the group conv reads, the consumer reads the
    order it emits, so no gather is left; the outputs are unchanged."""
    model, space = reference("residual_proj")
    name = "b1c2"
    plan = Plan(input_shape=list(space.input_shape))
    c_in, c_out = plan.layer_widths(space, name)
    rng = np.random.default_rng(0)
    plan.layers[name] = LayerChoice(
        conv_groups=2, perm_in=rng.permutation(c_in).tolist(), perm_out=rng.permutation(c_out).tolist()
    )
    applied = _assert_realised("residual_proj", plan)
    assert type(applied.get_submodule(name)) is nn.Conv2d  # both orders folded into the neighbours
    assert not any(isinstance(m, GatherConv) for m in applied.modules())


def test_weight_masks_hold_the_zeros_while_the_applied_model_trains():
    model, space = reference("resnet20")
    plan = plan_from_ratio(space, 0.25, model=model, importance=importance.l1)
    plan, _ = add_weight_choices(plan, space, density=0.4, conv_groups=2, seed=0)
    applied, masks = apply_with_masks(model, plan, space)
    assert masks.params and 0.3 < masks.density() < 0.6
    zeros = {n: (applied.get_parameter(n) == 0) for n in masks.params}
    opt = torch.optim.SGD(applied.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    applied.train()
    for _ in range(2):
        opt.zero_grad()
        applied(torch.randn(4, 3, 32, 32)).sum().backward()
        masks.mask_grads_(applied)
        opt.step()
        masks.apply_(applied)
    for n, z in zeros.items():
        assert (applied.get_parameter(n)[z] == 0).all()
        assert (applied.get_parameter(n)[~z] != 0).any()
    # the zeros of the trained weights give back the same masks (what the pipeline and load_masks do)
    again = density_masks(applied, plan, from_zeros=True)
    assert all(torch.equal(again.params[n], masks.params[n]) for n in masks.params)


def test_grouped_sparse_plan_survives_save_rebuild_eval(tmp_path):
    from safetensors.torch import load_file, save_file

    spec = "mobilenet_v2:width_mult=0.5,num_classes=10"
    torch.manual_seed(0)
    model = randomize_bn(create_model(spec)).eval()
    space = ChannelSpace.build(model, (1, 3, 32, 32))
    plan = plan_from_ratio(space, 0.5, model=model, importance=importance.l1, spec=spec)
    plan, _ = add_weight_choices(plan, space, density=0.5, block=(2, 2), conv_groups=2, seed=1)
    applied = apply(model, plan, space)
    plan.save(tmp_path / "plan.json")
    save_file({k: v.contiguous() for k, v in applied.state_dict().items()}, tmp_path / "w.safetensors")
    loaded = Plan.load(tmp_path / "plan.json")
    assert loaded == plan and json.loads((tmp_path / "plan.json").read_text())["version"] == 2
    again = rebuild(loaded, load_file(tmp_path / "w.safetensors"))
    assert torch.equal(_outputs(again, (1, 3, 32, 32)), _outputs(applied, (1, 3, 32, 32)))
    assert measure_effective(again, (1, 3, 32, 32)) == measure_effective(applied, (1, 3, 32, 32))


def test_v1_plans_load_and_drop_their_unrealised_layer_options(tmp_path):
    model, space = reference("resnet20")
    plan = plan_from_ratio(space, 0.5, model=model, importance=importance.l1)
    v1 = json.loads(plan.to_json())
    v1["version"] = 1
    v1["layers"] = {"layer1.0.conv1": {"density": 0.5, "conv_groups": 2}}  # v1 never realised these
    (tmp_path / "plan.json").write_text(json.dumps(v1))
    loaded = Plan.load(tmp_path / "plan.json")
    assert loaded.version == 2 and loaded.layers == {} and loaded.groups == plan.groups
    assert torch.equal(
        _outputs(apply(model, loaded, space), space.input_shape),
        _outputs(apply(model, plan, space), space.input_shape),
    )
    with pytest.raises(PrunekitError, match="newer than this prunekit"):
        Plan.from_json(json.dumps({**v1, "version": 3}))


@pytest.mark.parametrize(
    ("layer", "choice", "needle"),
    [
        (
            "layer1.0.conv1",
            {"conv_groups": 3},
            "conv_groups=3 on 'layer1.0.conv1' does not divide its 16 input",
        ),
        (
            "layer1.0.conv1",
            {"conv_groups": 2, "perm_in": [0, 1]},
            "perm_in of 'layer1.0.conv1' has 2 entries",
        ),
        ("bn1", {"density": 0.5}, "only convs and linears"),
        ("fc", {"conv_groups": 2}, "not a dense conv"),
    ],
)
def test_invalid_weight_choices_name_the_layer_and_the_legal_values(layer, choice, needle):
    model, space = reference("resnet20")
    plan = Plan(input_shape=list(space.input_shape), layers={layer: LayerChoice(**choice)})
    with pytest.raises(PrunekitError) as info:
        plan.validate_against(space)
    assert needle in str(info.value) and "\n" not in str(info.value)
    if "divide" in needle:
        assert "legal: 1, 2, 4, 8, 16" in str(info.value)


def test_density_on_a_depthwise_conv_is_refused():
    model, space = reference("mobilenet_v2_x0.5")
    dw = next(n for n, s in space.layers.items() if s.depthwise)
    plan = Plan(input_shape=list(space.input_shape), layers={dw: LayerChoice(density=0.5)})
    with pytest.raises(PrunekitError, match="depthwise convs stay dense"):
        plan.validate_against(space)
    assert weight_options(space)[dw] == {"takes_density": False, "conv_groups": [], "output": False}


def test_density_masks_are_ranked_on_the_channel_pruned_weight():
    """Density applies to the weights kept by channel pruning: the mask of the applied layer is exactly the block
    mask of its sliced weight."""
    model, space = reference("resnet20")
    plan = plan_from_ratio(space, 0.5, model=model, importance=importance.l1)
    plan.layers["layer2.0.conv2"] = LayerChoice(density=0.3, block=(4, 1))
    plain = apply(model, plan.model_copy(update={"layers": {}}), space)
    w = plain.get_submodule("layer2.0.conv2").weight.detach()
    applied = apply(model, plan, space)
    got = applied.get_submodule("layer2.0.conv2").weight.detach() != 0
    assert torch.equal(got, block_mask(w, 0.3, DEFAULT_BLOCK))


FMNIST = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"


@pytest.mark.skipif(not __import__("os").path.isfile(FMNIST), reason="apt-get install dataset-fashion-mnist")
def test_pipeline_runs_a_sparse_grouped_plan_end_to_end(tmp_path, capsys, monkeypatch):
    """`prunekit run` with a method whose plan has densities and group convs (uniform, patched to add them): the
    finetuned model keeps its zeros, masks.safetensors is written, the report shows dense and effective MACs, and
    eval / export / resume work from the run directory."""
    import yaml

    from prunekit.cli import main
    from prunekit.methods import uniform
    from prunekit.runs import load_masks, load_run

    original = uniform.run

    def sparse_uniform(ctx, cfg):
        res = original(ctx, cfg)
        plan, _ = add_weight_choices(res.plan, ctx.space, density=0.5, conv_groups=2, seed=0)
        res.plan, res.model = plan, apply(ctx.model, plan, ctx.space)
        return res

    monkeypatch.setattr(uniform, "run", sparse_uniform)
    monkeypatch.setenv("PRUNEKIT_NO_PROGRESS", "1")
    cfg = {
        "model": "resnet20:width_mult=0.5",
        "data": {"name": "fashion_mnist", "subset_train": 600, "subset_val": 100, "subset_test": 200},
        "baseline": {"train": {"epochs": 1, "lr": 0.1}},
        "target": {"macs_ratio": 0.6},
        "method": {"name": "uniform"},
        "finetune": {"epochs": 1, "lr": 0.05},
        "export": {"latency": False},
    }
    path = tmp_path / "sparse.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out)]) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    pruned = report["pruned"]
    assert pruned["effective_macs"] < 0.7 * pruned["macs"] and pruned["effective_params"] < pruned["params"]
    assert any(r["conv_groups"] == 2 for r in report["layers"])
    assert "effective MACs" in (out / "report.md").read_text()
    model, plan, _ = load_run(out)
    masks = load_masks(out)
    assert masks.params and (out / "masks.safetensors").is_file()
    for name, keep in masks.params.items():  # finetuning kept every dropped block at zero
        w = model.get_parameter(name)
        assert (w[~keep] == 0).all() and (w[keep] != 0).all()
    cost = CostModel(ChannelSpace.build(create_model(plan.model), tuple(plan.input_shape))).cost(plan)
    assert measure_effective(model, tuple(plan.input_shape)) == (cost.effective_macs, cost.effective_params)
    capsys.readouterr()
    assert main(["eval", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(pruned["top1"], abs=1e-6)
    assert main(["export", str(out), "--onnx", str(tmp_path / "again.onnx")]) == 0
    assert main(["run", str(path), "--out", str(out)]) == 0  # resumes: nothing retrained, same result
    assert json.loads((out / "report.json").read_text())["pruned"]["top1"] == pruned["top1"]
