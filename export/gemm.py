"""Weight products as Gemm(transB=1) and back: pure ONNX graph passes (no TensorFlow, no Keras).

The float step graph stores each weight matrix transposed and multiplies with Gemm(transB=1): ONNX Runtime's
CPU kernel then reads it as one dot product per output, which on a batch-1 step ran like numpy's
matrix-vector product where MatMul with the same weights did not (301 against 393 µs a notebook-size step,
side by side). ONNX Runtime's weight quantizers take MatMul, so `--int8` turns them back first.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper


def matmul_to_gemm_t(g: onnx.GraphProto) -> None:
    """MatMul(x, W) with a 2-D weight initializer -> Gemm(x, W^T, transB=1): the same numbers, and on a
    batch-1 CPU step ONNX Runtime's transposed-B Gemm runs like a plain matrix-vector product."""
    inits = {t.name: t for t in g.initializer}
    nodes, replaced = [], set()
    for n in g.node:
        w = inits.get(n.input[1]) if n.op_type == "MatMul" and len(n.input) == 2 else None
        if w is None or len(w.dims) != 2:
            nodes.append(n)
            continue
        name = n.input[1] + "__T"
        if name not in inits:
            inits[name] = onnx.numpy_helper.from_array(
                np.ascontiguousarray(onnx.numpy_helper.to_array(w).T), name)
            g.initializer.append(inits[name])
        replaced.add(n.input[1])
        nodes.append(helper.make_node("Gemm", [n.input[0], name], list(n.output), transB=1,
                                      name=(n.name or "MatMul") + "_GemmT"))
    del g.node[:]
    g.node.extend(nodes)
    _drop_unused(g, replaced)


def gemm_t_to_matmul(g: onnx.GraphProto) -> None:
    """The inverse, for ONNX Runtime's weight quantizers, which take MatMul (MatMulNBits stores W^T itself)."""
    inits = {t.name: t for t in g.initializer}
    nodes, replaced = [], set()
    for n in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        w = inits.get(n.input[1]) if n.op_type == "Gemm" and len(n.input) == 2 else None
        if w is None or attrs != {"transB": 1}:
            nodes.append(n)
            continue
        name = n.input[1].removesuffix("__T")
        if name not in inits:
            inits[name] = onnx.numpy_helper.from_array(
                np.ascontiguousarray(onnx.numpy_helper.to_array(w).T), name)
            g.initializer.append(inits[name])
        replaced.add(n.input[1])
        nodes.append(helper.make_node("MatMul", [n.input[0], name], list(n.output), name=n.name + "_MatMul"))
    del g.node[:]
    g.node.extend(nodes)
    _drop_unused(g, replaced)


def _drop_unused(g: onnx.GraphProto, names: set[str]) -> None:
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name not in names or t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
