"""ONNX Runtime's NCHWc layout rule (prunekit.cost.ort_layout) against the graphs ONNX Runtime really optimises."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from prunekit.cost.latency import channel_multiple, export_for_timing
from prunekit.cost.macs import CostModel
from prunekit.cost.ort_layout import OrtLayout
from prunekit.space import ChannelSpace

NCHWC = "com.microsoft.nchwc"


class Chain(nn.Module):
    """Convs in a row with the given (out channels, groups); a ReLU after each, pooled logits at the end."""

    def __init__(self, c0: int, layers: list[tuple[int, int]]) -> None:
        super().__init__()
        convs, c = [], c0
        for co, g in layers:
            convs += [nn.Conv2d(c, co, 3, padding=1, groups=g), nn.ReLU()]
            c = co
        self.body = nn.Sequential(*convs)
        self.fc = nn.Linear(c, 5)

    def forward(self, x):
        return self.fc(self.body(x).mean((2, 3)))


def _ort_blocked_convs(model: nn.Module, shape, tmp_path) -> int:
    path = export_for_timing(model.eval(), tmp_path / "m.onnx", shape[1:])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    graph = onnx.load(str(tmp_path / "opt.onnx")).graph
    return sum(1 for n in graph.node if n.op_type == "Conv" and n.domain == NCHWC)


@st.composite
def chains(draw):
    c0 = draw(st.sampled_from([1, 3, 8, 16]))
    layers, c = [], c0
    for _ in range(draw(st.integers(2, 5))):
        kind = draw(st.sampled_from(["dense", "dense", "grouped", "depthwise"]))
        if kind == "depthwise":
            layers.append((c, c))
            continue
        co = draw(st.integers(1, 40))
        if kind == "grouped":
            common = [g for g in range(2, 9) if c % g == 0 and co % g == 0]
            g = draw(st.sampled_from(common)) if common else 1
        else:
            g = 1
        layers.append((co, g))
        c = co
    return c0, layers


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: the message names the chain
)
@given(chains())
def test_the_nchwc_rule_matches_the_graph_onnx_runtime_optimises(tmp_path, chain):
    c0, layers = chain
    torch.manual_seed(0)
    model = Chain(c0, layers)
    shape = (1, c0, 12, 12)
    space = ChannelSpace.build(model, shape, quiet=True)
    cost = CostModel(space)
    names = [n for n in cost.names if space.layers[n].kind in ("conv", "linear")]
    mods = [model.get_submodule(n) for n in names]
    ci = np.array([[m.in_channels if isinstance(m, nn.Conv2d) else m.in_features for m in mods]], dtype=float)
    co = np.array(
        [[m.out_channels if isinstance(m, nn.Conv2d) else m.out_features for m in mods]], dtype=float
    )
    g = np.array([[m.groups if isinstance(m, nn.Conv2d) else 1 for m in mods]])
    layout = OrtLayout(cost, names, channel_multiple(), [144.0] * len(names), [144.0] * len(names))
    expected = int(layout.blocked(ci, co, g).sum())
    assert _ort_blocked_convs(model, shape, tmp_path) == expected, (c0, layers)


def test_blocked_outputs_are_padded_and_small_inputs_read_nchw():
    torch.manual_seed(0)
    b = channel_multiple()
    model = Chain(3, [(b + 3, 1), (2 * b, 1)])
    space = ChannelSpace.build(model, (1, 3, 12, 12), quiet=True)
    cost = CostModel(space)
    names = [n for n in cost.names if space.layers[n].kind in ("conv", "linear")]
    layout = OrtLayout(cost, names, b, [144.0] * len(names), [144.0] * len(names))
    ci = np.array([[3.0, b + 3, 2 * b]])
    co = np.array([[b + 3.0, 2 * b, 5]])
    g = np.ones_like(ci, dtype=np.int64)
    blocked = layout.blocked(ci, co, g)
    # the stem reads the 3-channel image directly and writes a padded blocked tensor; the next conv's b + 3
    # input channels are not a multiple: NCHW; the linear is never blocked
    assert blocked.tolist() == [[True, False, False]]
    assert layout.padded(co, blocked)[0, 0] == 2 * b
    assert layout.blocked_input(ci, g, blocked).tolist() == [[False, False, False]]
    f = layout.features(ci, co, g)
    # the stem alone paid only its output reorder (padded); the model reorders that output for the NCHW conv
    assert f["alone"][0] == pytest.approx(2 * b * 144)
    assert f["transitions"][0] == pytest.approx((b + 3) * 144)
    assert f["unfused"][0] == 0.0  # no adds
