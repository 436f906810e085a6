"""BatchNorm folding and ONNX export with verification.

Deployment latency in prunekit is measured with ONNX Runtime on CPU, so every pruned model goes through
:func:`export_onnx`:

1. :func:`fold_batchnorm` folds each ``Conv2d -> BatchNorm2d`` pair (found in the ``torch.fx`` graph) into
   the convolution, exactly as an inference engine would;
2. ``torch.onnx.export(..., dynamo=True)`` writes the graph with a dynamic batch dimension (falling back to
   the legacy TorchScript exporter, with a logged warning, if the dynamo exporter fails);
3. the file is checked with ``onnx.checker`` and, optionally, run in ONNX Runtime and compared with the
   PyTorch eval-mode output of the *original* (unfolded) model;
4. only then is it renamed over the target path (:func:`prunekit.io.atomic_path`), so a failed or
   mismatching export never leaves a file behind.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.io import atomic_path
from prunekit.nn import GatherConv

__all__ = [
    "ExportError",
    "ExportInfo",
    "eval_mode",
    "export_onnx",
    "fold_batchnorm",
    "ort_session",
]

log = logging.getLogger(__name__)

# Loggers that the ONNX exporter / torch.export use for (very) chatty output.
_NOISY_LOGGERS = (
    "torch.onnx",
    "torch.export",
    "torch._export",
    "torch._dynamo",
    "torch.fx",
    "onnxscript",
    "onnx_ir",
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class ExportError(PrunekitError):
    """The model could not be exported to ONNX, or the exported graph does not reproduce PyTorch."""


@dataclass(frozen=True)
class ExportInfo:
    """Result of :func:`export_onnx`.

    Attributes:
        path: the written ``.onnx`` file.
        opset: default-domain ONNX opset of the written model.
        size_bytes: file size in bytes (weights included; no external data).
        max_abs_diff: ``max |onnxruntime - torch|`` over the verification inputs, or ``None`` if not verified.
        exporter: ``"dynamo"`` (``torch.onnx.export(dynamo=True)``) or ``"torchscript"`` (legacy fallback).
        input_shape: the ``(N, C, H, W)`` shape the model was exported with.
        dynamic_batch: whether dimension 0 of the input/output is symbolic (``"batch"``).
        bn_folded: number of BatchNorm2d layers folded into convolutions.
    """

    path: Path
    opset: int
    size_bytes: int
    max_abs_diff: float | None
    exporter: str
    input_shape: tuple[int, int, int, int]
    dynamic_batch: bool
    bn_folded: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (``path`` as a string)."""
        d = asdict(self)
        d["path"] = str(self.path)
        d["input_shape"] = list(self.input_shape)
        return d


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` (and all submodules) in eval mode; restore every module's ``training`` flag on exit."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter: Python warnings, stdout/stderr prints and the torch/onnxscript loggers."""
    saved: list[tuple[logging.Logger, int]] = []
    names = set(_NOISY_LOGGERS)
    names.update(
        n for n in list(logging.root.manager.loggerDict) if any(n.startswith(p + ".") for p in _NOISY_LOGGERS)
    )
    for name in names:
        lg = logging.getLogger(name)
        saved.append((lg, lg.level))
        lg.setLevel(logging.CRITICAL)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in saved:
            lg.setLevel(level)


def _first_line(exc: BaseException) -> str:
    """One clean line describing ``exc`` and, if different, its innermost cause."""

    def line(e: BaseException) -> str:
        text = _ANSI.sub("", str(e)).strip()
        first = text.splitlines()[0].strip() if text else ""
        return f"{type(e).__name__}: {first}"[:300] if first else type(e).__name__

    root = exc
    seen = {id(root)}
    while (nxt := root.__cause__ or root.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        root = nxt
    if root is exc or line(root) == line(exc):
        return line(exc)
    return f"{type(exc).__name__} caused by {line(root)}"


def _check_shape(input_shape: Any) -> tuple[int, int, int, int]:
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 4 or any(s <= 0 for s in shape):
        raise PrunekitError(
            f"input_shape must be 4 positive ints (N, C, H, W), got {input_shape!r} (e.g. (1, 3, 32, 32))"
        )
    return shape  # type: ignore[return-value]


def _flat_outputs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flat_outputs(o)]
    raise ExportError(
        f"model output of type {type(out).__name__} is not a tensor / tuple / list / dict of tensors"
    )


# --------------------------------------------------------------------------------------------------------------
# BatchNorm folding
# --------------------------------------------------------------------------------------------------------------


class _LeafTracer(torch.fx.Tracer):
    """fx tracer that keeps :class:`~prunekit.nn.GatherConv` whole, so a BN after it can be folded into it."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, GatherConv) or super().is_leaf_module(m, qualname)


def _fold_in(root: nn.Module, module: nn.Module, prefix: str) -> int:
    """Fold conv->bn pairs in ``module`` (a submodule of ``root`` at ``prefix``); return the number folded.

    ``module`` is traced with ``torch.fx``; if that fails its children are tried one by one, so a model whose
    top-level ``forward`` is untraceable still gets its traceable blocks folded.
    """
    try:
        graph = _LeafTracer().trace(module)
    except Exception as exc:  # fx raises many types (TraceError, TypeError, NotImplementedError, ...)
        children = list(module.named_children())
        if children:
            log.debug("fx tracing %s failed (%s); trying its children", prefix or "model", _first_line(exc))
        return sum(_fold_in(root, child, f"{prefix}{name}.") for name, child in children)

    mods = dict(module.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1

    folded = 0
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), nn.BatchNorm2d):
            continue
        bn = mods[node.target]
        if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], torch.fx.Node):
            continue
        src = node.args[0]
        if src.op != "call_module" or type(mods.get(src.target)) not in (nn.Conv2d, GatherConv):
            continue
        conv = mods[src.target]
        # Folding rewrites the conv's output, so the conv must feed only this BN, and neither module may be
        # called elsewhere (shared modules); the BN needs running statistics (eval-mode arithmetic).
        if len(src.users) != 1 or calls[src.target] != 1 or calls[node.target] != 1:
            continue
        if bn.running_mean is None or bn.running_var is None:
            continue
        if isinstance(conv, GatherConv):  # BN after the output gather: folded in the conv's channel order
            if conv.conv.out_channels != bn.num_features:
                continue
            conv.fold_batchnorm_(bn)
            root.set_submodule(prefix + node.target, nn.Identity())
            folded += 1
            continue
        if conv.out_channels != bn.num_features:
            continue
        fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
        root.set_submodule(prefix + src.target, fused)
        root.set_submodule(prefix + node.target, nn.Identity())
        folded += 1
    return folded


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Return an eval-mode deep copy of ``model`` with every ``Conv2d -> BatchNorm2d`` pair folded.

    A pair is folded when, in the ``torch.fx`` symbolic trace, a ``BatchNorm2d`` module's only input is the
    output of a plain ``nn.Conv2d`` (or a :class:`~prunekit.nn.GatherConv`, a group conv with channel gathers) module
    that has no other consumer, and neither module is called more than
    once (shared modules are left alone). The BN's eval-mode affine transform is folded into the conv's weight
    and bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``) and the BN is replaced by ``nn.Identity``, so the
    module structure (names, classes) of the copy is otherwise unchanged and its output equals the original
    eval-mode output up to float rounding.

    If the model's ``forward`` cannot be traced, its children are traced instead (recursively); modules that
    cannot be traced at all are copied unfolded. ``model`` itself is never modified.

    Args:
        model: any ``nn.Module`` (train or eval mode).

    Returns:
        The folded copy, in eval mode.
    """
    folded_model = copy.deepcopy(model).eval()
    with torch.no_grad():
        n = _fold_in(folded_model, folded_model, "")
    log.debug("folded %d BatchNorm2d layers", n)
    return folded_model


def _count_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


# --------------------------------------------------------------------------------------------------------------
# ONNX export
# --------------------------------------------------------------------------------------------------------------


def ort_session(
    path_or_bytes: str | os.PathLike | bytes, threads: int = 1, *, profile_prefix: str | None = None
):
    """Create a CPU ONNX Runtime session tuned for latency measurement.

    Args:
        path_or_bytes: path to an ``.onnx`` file, or the serialised model bytes.
        threads: ``intra_op_num_threads`` (>= 1); ``inter_op_num_threads`` is always 1.
        profile_prefix: turn on ONNX Runtime's profiler, writing its JSON trace (per-node kernel times in µs) to a
            file with this prefix when ``session.end_profiling()`` is called (it returns the path).

    Returns:
        ``onnxruntime.InferenceSession`` with ``ORT_ENABLE_ALL`` graph optimisation on
        ``CPUExecutionProvider``.

    Raises:
        PrunekitError: ``threads < 1``, the file does not exist, or ONNX Runtime cannot load the model.
    """
    import onnxruntime as ort

    if int(threads) < 1:
        raise PrunekitError(f"threads must be >= 1, got {threads}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile_prefix)
    if isinstance(path_or_bytes, (bytes, bytearray)):
        model: str | bytes = bytes(path_or_bytes)
        where = "<bytes>"
    else:
        where = str(path_or_bytes)
        if not Path(where).is_file():
            raise PrunekitError(f"ONNX file not found: {where} (export one with prunekit.export.export_onnx)")
        model = where
    try:
        return ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise PrunekitError(f"ONNX Runtime cannot load {where}: {_first_line(exc)}") from None


def _export_dynamo(model: nn.Module, x: torch.Tensor, dest: Path, opset: int | None, dynamic: bool) -> None:
    kwargs: dict[str, Any] = {}
    if dynamic:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=1 << 16)},)
    with _quiet():
        program = torch.onnx.export(
            model,
            (x,),
            None,
            dynamo=True,
            verbose=False,
            opset_version=opset,
            input_names=["input"],
            **kwargs,
        )
        program.save(dest, external_data=False)


def _export_torchscript(
    model: nn.Module, x: torch.Tensor, dest: Path, opset: int | None, dynamic: bool
) -> None:
    with _quiet():
        torch.onnx.export(
            model,
            (x,),
            str(dest),
            dynamo=False,
            verbose=False,
            opset_version=opset if opset is not None else 17,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}} if dynamic else None,
            do_constant_folding=True,
        )


def _run_verification(
    reference: nn.Module, dest: Path, shape: tuple[int, int, int, int], batches: list[int], atol: float
) -> float:
    """Max abs diff between ORT (file ``dest``) and ``reference`` (eval, no_grad) on random inputs."""
    session = ort_session(dest)
    in_name = session.get_inputs()[0].name
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for b in batches:
        x = torch.randn((b, *shape[1:]), generator=gen)
        with torch.no_grad(), eval_mode(reference):
            refs = [t.detach().float().cpu().numpy() for t in _flat_outputs(reference(x))]
        try:
            outs = session.run(None, {in_name: x.numpy()})
        except Exception as exc:
            raise ExportError(
                f"the exported ONNX model fails in ONNX Runtime at batch {b}: {_first_line(exc)}"
            ) from None
        if len(outs) != len(refs):
            raise ExportError(f"ONNX model has {len(outs)} outputs but the PyTorch model returns {len(refs)}")
        for i, (o, r) in enumerate(zip(outs, refs, strict=True)):
            if tuple(o.shape) != tuple(r.shape):
                raise ExportError(
                    f"ONNX output {i} has shape {tuple(o.shape)} but PyTorch gives {tuple(r.shape)} "
                    f"at batch {b} (is the batch dimension hard-coded in forward, e.g. x.view(1, -1)?)"
                )
            diff = float(np.max(np.abs(o.astype(np.float64) - r))) if r.size else 0.0
            scale = max(1.0, float(np.max(np.abs(r)))) if r.size else 1.0
            if not np.isfinite(diff) or diff > atol * scale:
                raise ExportError(
                    f"ONNX Runtime output {i} differs from PyTorch at batch {b}: max abs diff {diff:.3g} > "
                    f"{atol:g} x output scale {scale:.3g} (does forward branch on torch.onnx.is_in_onnx_export(),"
                    " the input values, or use an op the exporter translates differently?)"
                )
            worst = max(worst, diff)
    return worst


def onnx_opset(proto: Any) -> int:
    """The default-domain (``ai.onnx``) opset an ``onnx.ModelProto`` imports; -1 if it imports none."""
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), -1)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_shape: tuple[int, int, int, int],
    *,
    fold_bn: bool = True,
    dynamic_batch: bool = True,
    opset: int | None = None,
    verify: bool = True,
    atol: float = 1e-4,
    exporter: str = "auto",
) -> ExportInfo:
    """Export ``model`` (eval mode, on CPU) to an ONNX file at ``path`` and verify it.

    The graph has one input named ``"input"`` of shape ``(N, C, H, W)`` (float32). With ``dynamic_batch``
    dimension 0 is symbolic (``"batch"``), so one file runs at batch 1 and batch 64. The file is written
    atomically: if export, ``onnx.checker`` or verification fails nothing is left at ``path``.

    The modern ``torch.onnx.export(dynamo=True)`` exporter is tried first (its console output is silenced);
    if it fails, the legacy TorchScript exporter (``dynamo=False``) is used and a warning is logged.
    ``ExportInfo.exporter`` says which one wrote the file.

    Args:
        model: the network; it is deep-copied, so neither its weights nor its train/eval mode change.
        path: destination ``.onnx`` file (parent directories are created).
        input_shape: ``(N, C, H, W)`` example shape. Without ``dynamic_batch`` N is baked into the graph; with
            it the example batch used for tracing is ``max(N, 2)`` (torch.export specialises size-1 dims).
        fold_bn: fold Conv2d->BatchNorm2d pairs first (:func:`fold_batchnorm`), as deployment engines do.
        dynamic_batch: make the batch dimension symbolic.
        opset: ONNX opset, or ``None`` for the exporter's default (18+ for dynamo, 17 for the fallback).
        verify: run the file in ONNX Runtime on random ``N(0, 1)`` input (batch 1 and 3 if ``dynamic_batch``,
            else N) and compare with the original model's eval output.
        atol: tolerance of the verification: ``max |ort - torch| <= atol * max(1, max |torch|)``.
        exporter: ``"auto"`` (dynamo, the TorchScript exporter if it fails) or ``"torchscript"`` (only the legacy
            exporter, opset 17 by default, ONNX IR 8: for runtimes that read no newer file, such as DeepSparse 1.8;
            the dynamo exporter writes opset 18+ whatever ``opset`` asks).

    Returns:
        :class:`ExportInfo` (path, opset, size in bytes, max abs diff, exporter used, ...).

    Raises:
        PrunekitError: malformed ``input_shape`` or an unknown ``exporter``.
        ExportError: both exporters fail, ``onnx.checker`` rejects the file, or (with ``verify``) ONNX Runtime
            cannot run it or its output differs from PyTorch beyond ``atol``.
    """
    import onnx

    shape = _check_shape(input_shape)
    if exporter not in ("auto", "torchscript"):
        raise PrunekitError(f"unknown ONNX exporter {exporter!r}: use 'auto' or 'torchscript'")
    path = Path(path)
    n_bn = _count_bn(model)
    net = (fold_batchnorm(model) if fold_bn else copy.deepcopy(model).eval()).cpu()
    bn_folded = n_bn - _count_bn(net) if fold_bn else 0
    example_batch = max(shape[0], 2) if dynamic_batch else shape[0]
    x = torch.randn((example_batch, *shape[1:]), generator=torch.Generator().manual_seed(0))

    with atomic_path(path) as tmp:
        dynamo_error = "not tried (exporter='torchscript')"
        if exporter == "auto":
            try:
                _export_dynamo(net, x, tmp, opset, dynamic_batch)
                exporter = "dynamo"
            except Exception as dyn_exc:
                dynamo_error = _first_line(dyn_exc)
                log.warning(
                    "dynamo ONNX export failed (%s); falling back to the TorchScript exporter", dynamo_error
                )
        if exporter != "dynamo":
            exporter = "torchscript"
            try:
                _export_torchscript(net, x, tmp, opset, dynamic_batch)
            except Exception as ts_exc:
                raise ExportError(
                    f"cannot export {type(model).__name__} to ONNX: dynamo exporter: {dynamo_error}; "
                    f"TorchScript exporter: {_first_line(ts_exc)} (make forward traceable: no data-dependent "
                    "Python control flow)"
                ) from None
        try:
            onnx.checker.check_model(str(tmp))
        except Exception as exc:
            raise ExportError(f"exported ONNX model fails onnx.checker: {_first_line(exc)}") from None
        proto = onnx.load(str(tmp), load_external_data=False)
        opset_used = onnx_opset(proto)
        max_diff: float | None = None
        if verify:
            batches = [1, 3] if dynamic_batch else [shape[0]]
            on_cpu = all(t.device.type == "cpu" for t in (*model.parameters(), *model.buffers()))
            reference = model if on_cpu else copy.deepcopy(model).cpu()
            max_diff = _run_verification(reference, tmp, shape, batches, atol)
        size = tmp.stat().st_size

    info = ExportInfo(
        path=path,
        opset=int(opset_used),
        size_bytes=int(size),
        max_abs_diff=max_diff,
        exporter=exporter,
        input_shape=shape,
        dynamic_batch=dynamic_batch,
        bn_folded=bn_folded,
    )
    log.info(
        "exported %s -> %s (%s, opset %d, %.1f KiB, max abs diff %s)",
        type(model).__name__,
        path,
        exporter,
        info.opset,
        size / 1024,
        "n/a" if max_diff is None else f"{max_diff:.2e}",
    )
    return info
