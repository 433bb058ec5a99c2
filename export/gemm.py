"""The gate products as Gemm on transposed weights, with the addend folded in, and back: pure ONNX passes.

    z = x @ W + a   ->   Gemm(x, W^T, C=a, transB=1)

for each weight matrix W of the LSTM gates ([in, 4*units]), where a is the folded embedding row (layer 0) or the
bias (layers above). ONNX Runtime's CPU Gemm with a transposed B reads W^T as one dot product per output, like
a matrix-vector product, where MatMul + Add (which it fuses into a Gemm on the untransposed matrix) reads it
~1.4x slower for a batch-1 row: 173-214 against 291 µs for 1x1024 @ 1024x4096 + a row, side by side
(`python -m benchmarks.step_variants` times the whole step both ways). The output layer's product stays a
MatMul: on CUDA its transposed form, 1024x92, became two cuBLAS kernels instead of one. ONNX Runtime's weight
quantizers take MatMul, so `--int8` turns the Gemms back first (`gemm_t_to_matmul`).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def matmul_to_gemm_t(g: onnx.GraphProto, width: int) -> int:
    """Rewrite MatMul(x, W) + Add(., a) as Gemm(x, W^T, a, transB=1) where W is a 2-D initializer with `width`
    columns and the product feeds that one Add alone. Returns how many products were rewritten."""
    inits = {t.name: t for t in g.initializer}
    readers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in g.output}
    gemms, dropped, done = {}, set(), 0
    for n in g.node:
        w = inits.get(n.input[1]) if n.op_type == "MatMul" and len(n.input) == 2 else None
        after = readers.get(n.output[0], [])
        if w is None or len(w.dims) != 2 or w.dims[1] != width or len(after) != 1 or after[0].op_type != "Add" \
                or n.output[0] in graph_outputs or id(after[0]) in gemms:  # an Add of two products: fold one
            continue
        add = after[0]
        addend = add.input[1] if add.input[0] == n.output[0] else add.input[0]
        name = n.input[1] + "__T"
        if name not in inits:
            inits[name] = numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(w).T), name)
            g.initializer.append(inits[name])
        gemms[id(add)] = helper.make_node("Gemm", [n.input[0], name, addend], list(add.output), transB=1,
                                          name=(add.name or add.output[0]) + "_GemmT")
        dropped.add(id(n))
        done += 1
    nodes = [gemms.get(id(n), n) for n in g.node if id(n) not in dropped]
    del g.node[:]
    g.node.extend(nodes)
    _drop_unused(g)
    return done


def gemm_t_to_matmul(g: onnx.GraphProto) -> None:
    """The inverse: Gemm(x, W^T, a, transB=1) -> MatMul(x, W) + Add(., a), for ONNX Runtime's quantizers."""
    inits = {t.name: t for t in g.initializer}
    nodes = []
    for n in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        w = inits.get(n.input[1]) if n.op_type == "Gemm" and attrs == {"transB": 1} else None
        if w is None:
            nodes.append(n)
            continue
        name = n.input[1].removesuffix("__T")
        if name not in inits:
            inits[name] = numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(w).T), name)
            g.initializer.append(inits[name])
        if len(n.input) > 2 and n.input[2]:
            product = n.output[0] + "__matmul"
            nodes += [helper.make_node("MatMul", [n.input[0], name], [product], name=product),
                      helper.make_node("Add", [product, n.input[2]], list(n.output), name=n.output[0] + "__add")]
        else:
            nodes.append(helper.make_node("MatMul", [n.input[0], name], list(n.output), name=n.output[0]))
    del g.node[:]
    g.node.extend(nodes)
    _drop_unused(g)


def _drop_unused(g: onnx.GraphProto) -> None:
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
