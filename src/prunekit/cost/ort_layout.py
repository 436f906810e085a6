"""ONNX Runtime's NCHWc layout choice per conv, and the layout reorders and unfused adds it implies.

ONNX Runtime's CPU provider rewrites a conv into its blocked ``NCHWc`` kernel (``NchwcTransformer``,
``onnxruntime/core/optimizer/nchwc_transformer.cc``, ``TransformConv``) only when the channel counts fit its block
``B`` (8 with AVX2, 16 with AVX-512; the table's ``unit``). With ``ci`` = input channels *per group* and ``A`` the
input-channel alignment the installed version accepts (:func:`input_alignment`: the 1.16 source asks ``A = B``;
onnxruntime 1.32 on AVX2 blocks any multiple of 4, padding the input channels, measured by probing graphs):

* an ordinary conv (``groups == 1``): ``ci < B`` (the NCHW input is read directly) or ``ci % A == 0``; the
  channels are **padded** up to multiples of ``B`` (an 11-filter conv computes 16, a 12-channel input reads 16);
* a depthwise conv (``c_in == c_out == groups``): ``c % A == 0``; another grouped conv (a channel multiplier
  included): ``c_out % B == 0``, ``ci % B == 0`` and
  ``(c_out / groups) % B == 0``;
* anything else (and transposed convs, linears) runs in plain NCHW (``FusedConv`` / ``Conv`` / ``Gemm``).

Blocked tensors flow between blocked convs; where a blocked producer feeds an NCHW consumer (or the reverse) ONNX
Runtime inserts a ``ReorderOutput`` (``ReorderInput``), a memory-bound copy of the tensor. A blocked conv also
absorbs the residual ``Sum`` and the ``Relu`` after it (``NchwcConvSumFusion`` / ``NchwcConvReluFusion``); an NCHW
conv feeding an add leaves the ``Add`` and ``Relu`` as nodes of their own. A layer timed alone in a one-node graph
(:mod:`prunekit.cost.lut`) paid the reorders of its own input and output when it was blocked.

:class:`OrtLayout` turns this into per-plan quantities (elements per sample, vectorised over a population) that
:class:`~prunekit.cost.predict.LatencyModel` uses: which grid to read (blocked: the aligned grid at the padded
output count; NCHW: the unaligned grid), the reorder elements the layers paid alone, the reorder elements the
model pays at its layout transitions, and the elements of adds left unfused. The transitions are estimated per
channel group: a consumer's input comes from the group's producers, each with an equal share (exact for plain
chains; an average over a residual stage's blocks).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np

from prunekit.cost.macs import CostModel


def _blocked_probe(c_mid: int, block: int, depthwise: bool = False) -> bool:
    """Does ONNX Runtime block the second conv of ``conv(2B -> c_mid) -> conv(c_mid -> B)`` (or the depthwise conv
    of ``conv(2B -> c_mid) -> dwconv(c_mid)``)? Builds the two-node graph, lets ONNX Runtime optimise it, reads
    the node domains."""
    import tempfile
    from pathlib import Path

    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((c_mid, 2 * block, 1, 1)).astype(np.float32)
    w2 = (
        rng.standard_normal((c_mid, 1, 3, 3)) if depthwise else rng.standard_normal((block, c_mid, 1, 1))
    ).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h"], kernel_shape=[1, 1]),
        helper.make_node(
            "Conv",
            ["h", "w2"],
            ["y"],
            kernel_shape=[3, 3] if depthwise else [1, 1],
            pads=[1, 1, 1, 1] if depthwise else [0, 0, 0, 0],
            group=c_mid if depthwise else 1,
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2 * block, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with tempfile.TemporaryDirectory(prefix="prunekit-nchwc-") as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        opt = onnx.load(str(Path(tmp) / "opt.onnx"))
    convs = [n for n in opt.graph.node if n.op_type in ("Conv", "FusedConv")]
    return len(convs) == 2 and convs[1].domain == "com.microsoft.nchwc"


@cache
def input_alignment(block: int) -> int:
    """The input-channel multiple ``A`` at which this ONNX Runtime runs a conv blocked (the smallest of 1, 2, 4, ...
    up to ``block`` for which a ``block + A``-channel input is blocked; ``block`` when none is). Probed once per
    process (a few ms)."""
    a = 1
    while a < block:
        if _blocked_probe(block + a, block):
            return a
        a *= 2
    return block


class OrtLayout:
    """Per-layer NCHWc facts of the table layers ``names`` of ``cost.space`` for block ``block`` (channels).

    Args:
        cost: the model's cost model (its ``A_in`` / ``A_out`` say which channel groups each layer reads / writes).
        names: the conv / linear layers the table covers, in ``cost.names`` order.
        block: ONNX Runtime's NCHWc block (the table's ``unit``).
        in_pos, out_pos: per layer, input / output spatial positions (``H*W``).
        align: the input-channel alignment ``A`` (default: :func:`input_alignment`, probed).
    """

    def __init__(
        self,
        cost: CostModel,
        names: Sequence[str],
        block: int,
        in_pos: Sequence[float],
        out_pos: Sequence[float],
        align: int | None = None,
    ) -> None:
        space = cost.space
        self.block = max(1, int(block))
        self.align = int(align) if align is not None else input_alignment(self.block)
        self.names = list(names)
        rows = [cost.names.index(n) for n in self.names]
        info = [space.layers[n] for n in self.names]
        self.kind = np.array(
            [
                "linear"
                if s.kind == "linear"
                else "transposed"
                if s.transposed
                else "depthwise"
                if s.depthwise
                else "conv"
                for s in info
            ]
        )
        self.base_groups = np.array([1 if s.depthwise else max(1, s.conv_groups) for s in info])
        self.in_pos = np.asarray(in_pos, dtype=np.float64)
        self.out_pos = np.asarray(out_pos, dtype=np.float64)
        a_in = np.abs(cost.A_in[rows]) > 0  # [L, G]
        a_out = np.abs(cost.A_out[rows]) > 0
        # share[l, p]: the fraction of layer l's input produced by table layer p (its groups' producers, equal
        # shares); a layer with no producing table layer reads the model input (NCHW).
        reads = a_in.astype(np.float64) @ a_out.T.astype(np.float64)  # [L, L]: shared groups
        np.fill_diagonal(reads, 0.0)
        total = reads.sum(axis=1, keepdims=True)
        self.share = np.divide(reads, total, out=np.zeros_like(reads), where=total > 0)
        self.from_input = total[:, 0] == 0
        # residual producers: their output group has another producer (an add joins them)
        producers = a_out.sum(axis=0)  # [G]
        self.residual = (a_out & (producers > 1)[None, :]).any(axis=1)
        # peers[p, q]: the other producers of p's output groups (what p's output is added to), equal shares
        peers = a_out.astype(np.float64) @ a_out.T.astype(np.float64)
        np.fill_diagonal(peers, 0.0)
        ptotal = peers.sum(axis=1, keepdims=True)
        self.peers = np.divide(peers, ptotal, out=np.zeros_like(peers), where=ptotal > 0)

    def blocked(self, ci: np.ndarray, co: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """``[N, L]`` bool: the layer runs ONNX Runtime's NCHWc kernel (``ci``, ``co``: total kept input / output
        channels ``[N, L]``; ``groups``: group count per layer ``[N, L]``, ignored for depthwise convs)."""
        b, a = self.block, self.align
        dw = self.kind == "depthwise"
        g = np.where(dw, ci, np.maximum(groups, 1))  # a depthwise conv has one group per input channel
        per_in = ci / g
        plain = (per_in < b) | (per_in % a == 0)
        grouped = (co % b == 0) & (per_in % b == 0) & ((co / g) % b == 0)
        out = np.where(g > 1, grouped, plain)
        out = np.where(dw & (co == ci), co % a == 0, out)  # a channel multiplier > 1 takes the grouped rule
        return out & np.isin(self.kind, ("conv", "depthwise"))

    def blocked_input(self, ci: np.ndarray, groups: np.ndarray, blocked: np.ndarray) -> np.ndarray:
        """``[N, L]``: the layer reads a blocked tensor (a blocked conv with ``ci >= B`` reads NCHWc; one with fewer
        input channels reads NCHW directly)."""
        small = (np.maximum(groups, 1) == 1) & (ci < self.block) & (self.kind != "depthwise")
        return blocked & ~small

    def padded(self, co: np.ndarray, blocked: np.ndarray) -> np.ndarray:
        """Channels a layer computes on: padded up to the block when blocked, else ``co`` (also for inputs)."""
        b = self.block
        return np.where(blocked, np.ceil(co / b) * b, co)

    def features(self, ci: np.ndarray, co: np.ndarray, groups: np.ndarray) -> dict[str, np.ndarray]:
        """Per plan ``[N]`` (elements per sample): ``alone`` (reorders the blocked layers paid when timed alone),
        ``transitions`` (reorders at the model's layout changes: consumer inputs and residual adds), ``unfused``
        (outputs of NCHW convs that feed an add: the ``Add`` and ``Relu`` nodes ONNX Runtime leaves), and the
        activation traffic of ``blocked`` / ``nchw`` layers (input + output elements)."""
        blk = self.blocked(ci, co, groups)
        bin_ = self.blocked_input(ci, groups, blk)
        in_el = ci * self.in_pos
        out_el = self.padded(co, blk) * self.out_pos
        alone = np.where(blk, np.where(bin_, in_el, 0.0) + out_el, 0.0).sum(axis=1)
        out_blk = blk.astype(np.float64)  # [N, L]: the layout each layer writes
        # a consumer's input is blocked with probability share @ out_blk (model input: NCHW)
        p_blocked = out_blk @ self.share.T  # [N, L]
        mismatch = np.where(bin_, 1.0 - p_blocked, p_blocked)
        mismatch = np.where(self.from_input, bin_.astype(np.float64), mismatch)
        consumer = (mismatch * in_el * np.isin(self.kind, ("conv", "depthwise"))).sum(axis=1)
        peer_blocked = out_blk @ self.peers.T
        add_mismatch = np.where(blk, 1.0 - peer_blocked, peer_blocked) * self.residual
        adds = (add_mismatch * co * self.out_pos).sum(axis=1)
        unfused = (np.where(blk, 0.0, 1.0) * self.residual * co * self.out_pos).sum(axis=1)
        traffic = in_el + co * self.out_pos
        return {
            "alone": alone,
            "transitions": consumer + adds,
            "unfused": unfused,
            "blocked_traffic": np.where(blk, traffic, 0.0).sum(axis=1),
            "nchw_traffic": np.where(blk, 0.0, traffic).sum(axis=1),
        }
