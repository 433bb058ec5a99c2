"""A tiny real stepwise char-LSTM model folder, built with `onnx.helper` (no TensorFlow, no mocks).

The graph follows the model-folder contract that `charlstm export` writes: inputs `token` int64 [batch],
`h`/`c` float32 [layers, batch, units]; outputs `logits` [batch, vocab], `h_out`/`c_out`. Each layer is a
Keras LSTM cell: z = x@W + h@U + b split into i, f, g, o; c' = sig(f)*c + sig(i)*tanh(g); h' = sig(o)*tanh(c').
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from charlstm.runtime import reference
from charlstm.runtime.manifest import Burst, Manifest
from charlstm.runtime.reference import Weights

SHAKESPEARE_VOCAB = list("\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def _lstm_layer(nodes: list, inits: list, rng, layer: int, x: str, in_dim: int, units: int):
    """Append one Keras LSTM cell; returns the names of its h' and c' outputs, each [batch, units]."""
    p = f"l{layer}_"
    scale = 1.0 / np.sqrt(units)
    inits += [
        numpy_helper.from_array(rng.uniform(-scale, scale, (in_dim, 4 * units)).astype(np.float32), p + "W"),
        numpy_helper.from_array(rng.uniform(-scale, scale, (units, 4 * units)).astype(np.float32), p + "U"),
        numpy_helper.from_array(rng.uniform(-0.5, 0.5, (4 * units,)).astype(np.float32), p + "b"),
        numpy_helper.from_array(np.array([layer], dtype=np.int64), p + "idx"),
        numpy_helper.from_array(np.array([units] * 4, dtype=np.int64), p + "split"),
    ]
    nodes += [
        # This layer's slice of the state: Gather on axis 0 of [layers, batch, units] -> [batch, units].
        helper.make_node("Gather", ["h", p + "idx"], [p + "h3"], axis=0),
        helper.make_node("Squeeze", [p + "h3", "axis0"], [p + "h"]),
        helper.make_node("Gather", ["c", p + "idx"], [p + "c3"], axis=0),
        helper.make_node("Squeeze", [p + "c3", "axis0"], [p + "c"]),
        helper.make_node("MatMul", [x, p + "W"], [p + "xw"]),
        helper.make_node("MatMul", [p + "h", p + "U"], [p + "hu"]),
        helper.make_node("Add", [p + "xw", p + "hu"], [p + "z0"]),
        helper.make_node("Add", [p + "z0", p + "b"], [p + "z"]),
        helper.make_node("Split", [p + "z", p + "split"], [p + g for g in "ifgo"], axis=1),
        helper.make_node("Sigmoid", [p + "i"], [p + "si"]),
        helper.make_node("Sigmoid", [p + "f"], [p + "sf"]),
        helper.make_node("Tanh", [p + "g"], [p + "tg"]),
        helper.make_node("Sigmoid", [p + "o"], [p + "so"]),
        helper.make_node("Mul", [p + "sf", p + "c"], [p + "fc"]),
        helper.make_node("Mul", [p + "si", p + "tg"], [p + "ig"]),
        helper.make_node("Add", [p + "fc", p + "ig"], [p + "c_new"]),
        helper.make_node("Tanh", [p + "c_new"], [p + "tc"]),
        helper.make_node("Mul", [p + "so", p + "tc"], [p + "h_new"]),
    ]
    return p + "h_new", p + "c_new"


def build_model(vocab_size: int, layers: int, units: int, embedding_dim: int, seed: int) -> onnx.ModelProto:
    """The stepwise graph with random weights (seeded, so the same arguments give the same bytes)."""
    rng = np.random.default_rng(seed)
    nodes: list = []
    inits = [
        numpy_helper.from_array(rng.normal(0, 1, (vocab_size, embedding_dim)).astype(np.float32), "embedding"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axis0"),
    ]
    nodes.append(helper.make_node("Gather", ["embedding", "token"], ["x0"], axis=0))
    x, in_dim, hs, cs = "x0", embedding_dim, [], []
    for layer in range(layers):
        h_new, c_new = _lstm_layer(nodes, inits, rng, layer, x, in_dim, units)
        for name, out in ((h_new, hs), (c_new, cs)):
            nodes.append(helper.make_node("Unsqueeze", [name, "axis0"], [name + "3"]))
            out.append(name + "3")
        x, in_dim = h_new, units
    nodes.append(helper.make_node("Concat", hs, ["h_out"], axis=0))
    nodes.append(helper.make_node("Concat", cs, ["c_out"], axis=0))
    scale = 3.0 / np.sqrt(units)  # wide enough that sampling strategies differ visibly
    inits += [
        numpy_helper.from_array(rng.uniform(-scale, scale, (units, vocab_size)).astype(np.float32), "dense_W"),
        numpy_helper.from_array(rng.uniform(-0.1, 0.1, (vocab_size,)).astype(np.float32), "dense_b"),
    ]
    nodes += [
        helper.make_node("MatMul", [x, "dense_W"], ["dense"]),
        helper.make_node("Add", ["dense", "dense_b"], ["logits"]),
    ]
    f32, state = TensorProto.FLOAT, [layers, "batch", units]
    graph = helper.make_graph(
        nodes, "charlstm_step",
        inputs=[helper.make_tensor_value_info("token", TensorProto.INT64, ["batch"]),
                helper.make_tensor_value_info("h", f32, state),
                helper.make_tensor_value_info("c", f32, state)],
        outputs=[helper.make_tensor_value_info("logits", f32, ["batch", vocab_size]),
                 helper.make_tensor_value_info("h_out", f32, state),
                 helper.make_tensor_value_info("c_out", f32, state)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10  # onnxruntime 1.31 reads IR versions up to 11
    onnx.checker.check_model(model)
    return model


def file_entry(path: Path) -> dict:
    """The manifest's record of a file: its sha256 and size."""
    data = path.read_bytes()
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def make_model_dir(path, vocab=None, layers: int = 1, units: int = 16, embedding_dim: int = 8,
                   seed: int = 0, int8: bool = False, burst: bool = True) -> Path:
    """Write model.onnx (+ model.int8.onnx when int8, + model.burst.onnx when burst) and model.json into
    `path`, as `charlstm export` would; returns the folder."""
    vocab = list(SHAKESPEARE_VOCAB if vocab is None else vocab)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(len(vocab), layers, units, embedding_dim, seed)
    onnx.save(model, out / "model.onnx")
    files = {"model.onnx": file_entry(out / "model.onnx")}
    if int8:
        from charlstm.export.int8 import write_nbits  # what `charlstm export --int8` writes

        write_nbits(out / "model.onnx", out / "model.int8.onnx")
        files["model.int8.onnx"] = file_entry(out / "model.int8.onnx")
    burst_spec = None
    if burst:
        from charlstm.export import burst as burst_graph  # what `charlstm export` writes (imports no TensorFlow)

        burst_graph.write(out)
        files[burst_graph.FILE] = file_entry(out / burst_graph.FILE)
        burst_spec = Burst(file=burst_graph.FILE, steps=burst_graph.STEPS)
    parameters = sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == TensorProto.FLOAT)
    Manifest(name="fixture", vocab=tuple(vocab), layers=layers, units=units, embedding_dim=embedding_dim,
             parameters=parameters, files=files, val_fraction=0.1, burst=burst_spec,
             provenance={"source": "tests/onnx_fixture.py", "seed": seed}).write(out)
    return out


def weights(model_dir: Path) -> Weights:
    """The fixture's weights as the runtime's reference cell takes them."""
    model = onnx.load(Path(model_dir) / "model.onnx")
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    layers = sum(1 for name in w if name.endswith("_U"))
    return Weights(embedding=w["embedding"], kernels=[w[f"l{i}_W"] for i in range(layers)],
                   recurrent_kernels=[w[f"l{i}_U"] for i in range(layers)], biases=[w[f"l{i}_b"] for i in range(layers)],
                   dense_kernel=w["dense_W"], dense_bias=w["dense_b"])


def numpy_step(model_dir: Path, token: np.ndarray, h: np.ndarray, c: np.ndarray):
    """The same step in plain numpy (charlstm.runtime.reference): the reference for ONNX Runtime's results."""
    return reference.numpy_step(weights(model_dir), token, h, c)
