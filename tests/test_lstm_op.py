"""export/lstm_op.py: the step as ONNX LSTM nodes (a GPU experiment) computes the traced step's numbers."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from benchmarks import lstm_op
from charlstm.export import burst
from charlstm.export.step_graph import INPUTS, OUTPUTS

VOCAB, UNITS = 11, 8


def folded_constants(layers: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random constants in export/step_graph.folded's layout (Keras gate order i, f, c, o)."""
    rng = np.random.default_rng(seed)
    u = lambda *shape: rng.uniform(-0.6, 0.6, shape).astype(np.float32)  # noqa: E731
    k = {"table": u(VOCAB, 4 * UNITS), "u0": u(UNITS, 4 * UNITS), "dense_kernel": u(UNITS, VOCAB),
         "dense_bias": u(VOCAB)}
    for i in range(1, layers):
        k[f"wu{i}"], k[f"b{i}"] = u(2 * UNITS, 4 * UNITS), u(4 * UNITS)
    return k


def numpy_step(k, token, h, c):
    """The Keras cell on the folded constants, in float64."""
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    hs, cs, x = [], [], None
    for i in range(h.shape[0]):
        z = k["table"][token] + h[i] @ k["u0"] if i == 0 else np.concatenate([x, h[i]], -1) @ k[f"wu{i}"] + k[f"b{i}"]
        zi, zf, zc, zo = np.split(z.astype(np.float64), 4, axis=-1)
        c_new = sig(zf) * c[i] + sig(zi) * np.tanh(zc)
        x = sig(zo) * np.tanh(c_new)
        hs.append(x)
        cs.append(c_new)
    return x @ k["dense_kernel"] + k["dense_bias"], np.stack(hs), np.stack(cs)


@pytest.mark.parametrize("layers", [1, 2])
def test_lstm_nodes_compute_the_keras_cell(layers):
    k = folded_constants(layers)
    model = lstm_op.step_model(k, layers)
    assert [n.op_type for n in model.graph.node].count("LSTM") == layers
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    h = rng.uniform(-1, 1, (layers, 3, UNITS)).astype(np.float32)
    c = rng.uniform(-1, 1, (layers, 3, UNITS)).astype(np.float32)
    rh, rc = h.astype(np.float64), c.astype(np.float64)
    for _ in range(5):  # a few steps, the state carried: errors would compound
        token = rng.integers(0, VOCAB, 3)
        logits, h, c = session.run(list(OUTPUTS.values()), {INPUTS["token"]: token, INPUTS["h"]: h, INPUTS["c"]: c})
        ref_logits, rh, rc = numpy_step(k, token, rh, rc)
        assert np.abs(logits - ref_logits).max() < 1e-5
        assert max(np.abs(h - rh).max(), np.abs(c - rc).max()) < 1e-5


def test_the_burst_graph_unrolls_lstm_nodes_with_the_state_kept_per_layer(tmp_path):
    step = lstm_op.step_model(folded_constants(2), 2)
    data = step.SerializeToString()
    (tmp_path / "model.onnx").write_bytes(data)
    unrolled = burst.unroll(onnx.load_from_string(data), 4)
    # only the first step slices the stacked state; later steps read the previous step's LSTM outputs
    assert [n.op_type for n in unrolled.graph.node].count("Slice") == 2 * 2
    (tmp_path / burst.FILE).write_bytes(burst.link_weights(unrolled, data).SerializeToString())
    figures = burst.check(tmp_path, steps=4, runs=3, batch=2, temperature=0.8)
    assert figures["max_pick_gap"] <= 1e-4 and figures["max_abs_state_diff"] <= 1e-4
