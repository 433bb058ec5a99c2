"""An experiment, not what `charlstm export` writes: the step graph with each layer as one ONNX `LSTM` node.

The traced step (export/step_graph.py) computes a layer's cell as ~17 small ops, and on a GPU each is a kernel
launch of 1-3 µs: the profile of the burst graph counts ~18 kernels and ~31.5 µs a character on the H200, where
the issue's stretch target is 25. ONNX Runtime's CUDA provider runs an `LSTM` node through cuDNN's RNN, which
fuses the cell; whether that is faster, and whether it can be captured in a CUDA graph, is what
`python -m benchmarks.burst_variants` measures on the GPU machine. On this 2-core CPU the LSTM node was slower
than the traced cell, so the CPU has no use for it.

Same contract and the same numbers as the traced step: inputs token int64 [batch], h and c float32
[layers, batch, units]; outputs logits [batch, vocab], h_out and c_out. Layer 0's input is the token as a one-hot
row times the folded [vocab, 4*units] table (export/step_graph.folded), so the embedding and the input
projection stay one table: the product picks one row exactly (1 * x + 0 * the rest). Keras orders the gates
i, f, c, o; ONNX orders them i, o, f, c. The state is sliced per layer as [1, batch, units], which is what an
LSTM node reads and writes, so no Squeeze or Unsqueeze is needed.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from charlstm.export.step_graph import INPUTS, IR_VERSION, OPSET, OUTPUTS

KERAS_TO_ONNX = (0, 3, 1, 2)  # ONNX gate k is Keras gate KERAS_TO_ONNX[k]: i, o, f, c from i, f, c, o


def onnx_gates(w: np.ndarray) -> np.ndarray:
    """A Keras [inputs, 4*units] kernel (or [4*units] bias) as ONNX's [4*units, inputs] (or [4*units])."""
    blocks = np.split(w, 4, axis=-1)
    reordered = np.concatenate([blocks[k] for k in KERAS_TO_ONNX], axis=-1)
    return np.ascontiguousarray(reordered.T) if w.ndim == 2 else reordered


def step_model(k: dict[str, np.ndarray], layers: int) -> onnx.ModelProto:
    """The step graph from export/step_graph.folded's constants, one LSTM node a layer."""
    vocab, units = k["table"].shape[0], k["u0"].shape[0]
    f32 = np.float32
    inits = [numpy_helper.from_array(np.eye(vocab, dtype=f32), "one_hot"),
             numpy_helper.from_array(np.array([0], np.int64), "axis0"),
             numpy_helper.from_array(k["dense_kernel"].astype(f32), "dense_kernel"),
             numpy_helper.from_array(k["dense_bias"].astype(f32), "dense_bias")]
    nodes = [helper.make_node("Gather", ["one_hot", INPUTS["token"]], ["x0_2d"], axis=0, name="one_hot"),
             helper.make_node("Unsqueeze", ["x0_2d", "axis0"], ["x0"], name="x0")]
    x, hs, cs = "x0", [], []
    for i in range(layers):
        if i == 0:  # the table already holds embedding @ kernel + bias
            w, r, b = k["table"], k["u0"], np.zeros(4 * units, f32)
        else:  # folded holds [kernel; recurrent kernel] stacked, and the bias
            w, r, b = k[f"wu{i}"][:units], k[f"wu{i}"][units:], k[f"b{i}"]
        inits += [numpy_helper.from_array(onnx_gates(w.astype(f32))[None], f"W{i}"),
                  numpy_helper.from_array(onnx_gates(r.astype(f32))[None], f"R{i}"),
                  numpy_helper.from_array(np.concatenate([onnx_gates(b.astype(f32)), np.zeros(4 * units, f32)])[None],
                                          f"B{i}"),
                  numpy_helper.from_array(np.array([i], np.int64), f"start{i}"),
                  numpy_helper.from_array(np.array([i + 1], np.int64), f"stop{i}")]
        for s in ("h", "c"):
            nodes.append(helper.make_node("Slice", [INPUTS[s], f"start{i}", f"stop{i}", "axis0"], [f"{s}{i}"],
                                          name=f"{s}{i}"))
        nodes.append(helper.make_node("LSTM", [x, f"W{i}", f"R{i}", f"B{i}", "", f"h{i}", f"c{i}"],
                                      ["", f"h{i}_new", f"c{i}_new"], hidden_size=units, name=f"lstm{i}"))
        x = f"h{i}_new"  # [1, batch, units]: the next layer's input sequence of one step
        hs.append(f"h{i}_new")
        cs.append(f"c{i}_new")
    nodes += [helper.make_node("Concat", hs, [OUTPUTS["h"]], axis=0, name="h_out"),
              helper.make_node("Concat", cs, [OUTPUTS["c"]], axis=0, name="c_out"),
              helper.make_node("Squeeze", [x, "axis0"], ["top"], name="top"),
              helper.make_node("MatMul", ["top", "dense_kernel"], ["dense"], name="dense"),
              helper.make_node("Add", ["dense", "dense_bias"], [OUTPUTS["logits"]], name="logits")]
    state = [layers, "batch", units]
    graph = helper.make_graph(
        nodes, "charlstm_step_lstm_op",
        [helper.make_tensor_value_info(INPUTS["token"], TensorProto.INT64, ["batch"]),
         helper.make_tensor_value_info(INPUTS["h"], TensorProto.FLOAT, state),
         helper.make_tensor_value_info(INPUTS["c"], TensorProto.FLOAT, state)],
        [helper.make_tensor_value_info(OUTPUTS["logits"], TensorProto.FLOAT, ["batch", vocab]),
         helper.make_tensor_value_info(OUTPUTS["h"], TensorProto.FLOAT, state),
         helper.make_tensor_value_info(OUTPUTS["c"], TensorProto.FLOAT, state)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="charlstm",
                              doc_string=f"charlstm step, LSTM nodes: {layers} x LSTM({units}), vocab {vocab}")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model
