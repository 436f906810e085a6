"""BatchNorm folding and ONNX export (prunekit.export)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.export import ExportError, eval_mode, export_onnx, fold_batchnorm, ort_session


class Net(nn.Module):
    """conv-bn-relu stem, residual block, depthwise-separable block (bias=False convs), linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.c1 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False)
        self.bn_dw = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 16, 1, bias=False)
        self.bn_pw = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = torch.relu(self.bn1(self.c1(x)))
        x = torch.relu(x + self.bn2(self.c2(y)))
        x = torch.relu(self.bn_dw(self.dw(x)))
        x = torch.relu(self.bn_pw(self.pw(x)))
        return self.head(x.mean((2, 3)))


def _bn_count(m: nn.Module) -> int:
    return sum(isinstance(x, nn.BatchNorm2d) for x in m.modules())


def _trained(net: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine parameters."""
    torch.manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 2.0)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    net.train()
    with torch.no_grad():
        for _ in range(5):
            net(torch.randn(16, 3, 16, 16) * 3 + 1)
    return net


@pytest.fixture
def net() -> nn.Module:
    return _trained(Net())


def test_fold_batchnorm_equivalent(net: nn.Module) -> None:
    assert net.bn1.running_var.sub(1).abs().max() > 0.05  # stats really moved away from init
    folded = fold_batchnorm(net)
    assert _bn_count(net) == 5 and net.training, "the original model must not be modified"
    assert _bn_count(folded) == 0
    assert not folded.training
    assert isinstance(folded.dw, nn.Conv2d) and folded.dw.groups == 8
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad(), eval_mode(net):
        ref = net(x)
        out = folded(x)
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert net.training and all(m.training for m in net.modules()), "eval_mode must restore train flags"


def test_fold_skips_conv_with_other_consumers() -> None:
    class Branch(nn.Module):  # conv output feeds the BN *and* the residual: folding would be wrong
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y) + y

    net = _trained_generic(Branch())
    folded = fold_batchnorm(net)
    assert _bn_count(folded) == 1
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net.eval()(x))


def _trained_generic(net: nn.Module) -> nn.Module:
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(8, 3, 8, 8) * 2 + 0.5)
    return net


def test_fold_untraceable_top_level_folds_children() -> None:
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # fx cannot trace this
                return self.body(x)
            return -self.body(x)

    net = _trained_generic(DataDependent())
    folded = fold_batchnorm(net)
    assert _bn_count(folded) == 0
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net.eval()(x), rtol=1e-5, atol=1e-5)


def test_export_onnx_dynamic_batch_matches_torch(net: nn.Module, tmp_path) -> None:
    path = tmp_path / "sub" / "net.onnx"
    info = export_onnx(net, path, (1, 3, 16, 16))
    assert path.is_file() and info.path == path
    assert info.size_bytes == path.stat().st_size > 0
    assert info.bn_folded == 5 and info.dynamic_batch
    assert info.exporter in ("dynamo", "torchscript")
    assert info.max_abs_diff is not None and info.max_abs_diff < 1e-4
    assert net.training, "export must not change the caller's model mode"
    onnx.checker.check_model(str(path))
    proto = onnx.load(str(path))
    assert info.opset == next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node)
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["net.onnx"], "no temp files left"

    sess = ort_session(path, threads=1)
    name = sess.get_inputs()[0].name
    net.eval()
    for batch in (1, 5):
        x = torch.randn(batch, 3, 16, 16)
        with torch.no_grad():
            ref = net(x).numpy()
        out = sess.run(None, {name: x.numpy()})[0]
        assert out.shape == (batch, 5)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_export_fixed_batch(net: nn.Module, tmp_path) -> None:
    path = tmp_path / "fixed.onnx"
    info = export_onnx(net, path, (2, 3, 16, 16), dynamic_batch=False, fold_bn=False)
    assert info.bn_folded == 0 and not info.dynamic_batch
    assert ort_session(path).get_inputs()[0].shape[0] == 2


def test_failed_export_leaves_nothing(tmp_path) -> None:
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("broken forward")

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    path = out_dir / "broken.onnx"
    with pytest.raises(ExportError, match="broken forward"):
        export_onnx(Broken(), path, (1, 3, 8, 8))
    assert not path.exists()
    assert list(out_dir.iterdir()) == []


def test_verification_mismatch_raises_and_leaves_nothing(tmp_path) -> None:
    class Liar(nn.Module):  # the exported graph computes something else than eager PyTorch
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return y * 2 if torch.onnx.is_in_onnx_export() else y

    path = tmp_path / "liar.onnx"
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_onnx(Liar(), path, (1, 3, 8, 8))
    assert list(tmp_path.iterdir()) == []
    info = export_onnx(Liar(), path, (1, 3, 8, 8), verify=False)
    assert info.max_abs_diff is None and path.is_file()


def test_bad_input_shape_and_session_errors(net: nn.Module, tmp_path) -> None:
    with pytest.raises(PrunekitError, match="input_shape"):
        export_onnx(net, tmp_path / "x.onnx", (3, 16, 16))
    with pytest.raises(PrunekitError, match="not found"):
        ort_session(tmp_path / "missing.onnx")
    with pytest.raises(PrunekitError, match="threads"):
        ort_session(b"", threads=0)
