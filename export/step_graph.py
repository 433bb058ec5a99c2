"""The stepwise graph: one character in, logits and the next state out, traced with tf2onnx.

The step is written from the trained weights as plain TensorFlow ops (not the Keras LSTM layer, which tf2onnx
turns into an ONNX Loop, and whose cuDNN path it cannot convert at all). Two folds make the step cheaper with the
same numbers:
- layer 0: the embedding row times the input kernel, plus the bias, is one row of a [vocab, 4*units] table
  computed at export, so a step reads a fifth fewer bytes and does one matrix product less;
- layer k > 0: [x, h] @ [[W], [U]] + b, one product instead of two.

Contract (the runtime and every check rely on it): inputs token int64 [batch], h and c float32
[layers, batch, units]; outputs logits float32 [batch, vocab], h_out and c_out like h and c.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from charlstm.runtime.manifest import GRAPH_INPUTS as INPUTS
from charlstm.runtime.manifest import GRAPH_OUTPUTS as OUTPUTS
from charlstm.runtime.reference import Weights

OPSET = 17
IR_VERSION = 8  # onnxruntime 1.17 and later read IR 8 (opset 17); newer IRs buy this graph nothing


def folded(w: Weights) -> dict[str, np.ndarray]:
    """The constants of the step graph, computed in float64 then rounded once to float32."""
    out = {"table": (w.embedding.astype(np.float64) @ w.kernels[0] + w.biases[0]).astype(np.float32),
           "u0": w.recurrent_kernels[0]}
    for i in range(1, w.layers):
        out[f"wu{i}"] = np.concatenate([w.kernels[i], w.recurrent_kernels[i]], axis=0)
        out[f"b{i}"] = w.biases[i]
    out["dense_kernel"], out["dense_bias"] = w.dense_kernel, w.dense_bias
    return out


def trace(w: Weights) -> onnx.ModelProto:
    """Trace the step with tf2onnx and return an ONNX model that follows the contract."""
    import tensorflow as tf
    import tf2onnx

    k = folded(w)
    layers, units = w.layers, w.units
    signature = [tf.TensorSpec([None], tf.int64, name="token"),
                 tf.TensorSpec([layers, None, units], tf.float32, name="h"),
                 tf.TensorSpec([layers, None, units], tf.float32, name="c")]

    @tf.function(input_signature=signature)
    def step(token, h, c):
        # Constants are created inside the function so tf2onnx embeds them as initializers.
        hs, cs = [], []
        x = None
        for i in range(layers):
            if i == 0:
                z = tf.gather(tf.constant(k["table"]), token) + tf.matmul(h[0], tf.constant(k["u0"]))
            else:
                z = tf.matmul(tf.concat([x, h[i]], axis=-1), tf.constant(k[f"wu{i}"])) + tf.constant(k[f"b{i}"])
            zi, zf, zc, zo = tf.split(z, 4, axis=-1)  # Keras' gate order
            c_new = tf.sigmoid(zf) * c[i] + tf.sigmoid(zi) * tf.tanh(zc)
            x = tf.sigmoid(zo) * tf.tanh(c_new)
            hs.append(x)
            cs.append(c_new)
        logits = tf.matmul(x, tf.constant(k["dense_kernel"])) + tf.constant(k["dense_bias"])
        return {"logits": tf.identity(logits, name="logits"),
                "h_out": tf.stack(hs, name="h_out"), "c_out": tf.stack(cs, name="c_out")}

    model, _ = tf2onnx.convert.from_function(step, input_signature=signature, opset=OPSET)
    return _tidy(model, layers, units, w.dense_bias.shape[0])


def _tidy(model: onnx.ModelProto, layers: int, units: int, vocab: int) -> onnx.ModelProto:
    """Contract order and readable dimension names; Gemm split into MatMul + Add so int8 can quantize it."""
    g = model.graph
    order = [OUTPUTS["logits"], OUTPUTS["h"], OUTPUTS["c"]]
    outs = sorted(g.output, key=lambda o: order.index(o.name))
    del g.output[:]
    g.output.extend(outs)
    for value in list(g.input) + list(g.output):
        for d in value.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.dim_param = "batch"
    _gemm_to_matmul(g)
    model.ir_version = IR_VERSION
    model.producer_name, model.doc_string = "charlstm", f"charlstm step: {layers} x LSTM({units}), vocab {vocab}"
    return model


def _gemm_to_matmul(g: onnx.GraphProto) -> None:
    """onnxruntime's int8 quantizers take MatMul and leave Gemm in float; MatMul + Add computes the same thing."""
    nodes = []
    for n in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type != "Gemm" or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 \
                or attrs.get("beta", 1.0) != 1.0:
            nodes.append(n)
            continue
        b = n.input[1]
        if attrs.get("transB", 0):
            init = next(i for i in g.initializer if i.name == b)
            arr = onnx.numpy_helper.to_array(init).T.copy()
            init.CopyFrom(onnx.numpy_helper.from_array(arr, b))
        product = n.output[0] + "__matmul"
        nodes.append(helper.make_node("MatMul", [n.input[0], b], [product], name=n.name + "_MatMul"))
        nodes.append(helper.make_node("Add", [product, n.input[2]], list(n.output), name=n.name + "_Add")
                     if len(n.input) > 2 else helper.make_node("Identity", [product], list(n.output)))
    del g.node[:]
    g.node.extend(nodes)
