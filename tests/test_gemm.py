"""export/gemm.py: gate products as Gemm on transposed weights, and back, on tiny real graphs (same numbers)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export.gemm import gemm_t_to_matmul, matmul_to_gemm_t
from tests.onnx_fixture import build_model


def run(model: onnx.ModelProto, layers: int, units: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {"token": rng.integers(0, 60, 5), "h": rng.uniform(-1, 1, (layers, 5, units)).astype(np.float32),
             "c": rng.uniform(-1, 1, (layers, 5, units)).astype(np.float32)}
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.mark.parametrize("layers", [1, 2])
def test_gemm_t_and_back_keep_the_numbers(layers):
    units = 16
    model = build_model(65, layers, units, 8, seed=0)
    ref = run(model, layers, units)
    fast = onnx.ModelProto()
    fast.CopyFrom(model)
    # the fixture adds two products (x @ W + h @ U) per layer: one folds into the Gemm, the other stays
    assert matmul_to_gemm_t(fast.graph, 4 * units) == layers
    onnx.checker.check_model(fast)
    ops = [n.op_type for n in fast.graph.node]
    assert ops.count("Gemm") == layers and ops.count("MatMul") == layers + 1  # the other product, the output layer
    assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(ref, run(fast, layers, units)))
    back = onnx.ModelProto()
    back.CopyFrom(fast)
    gemm_t_to_matmul(back.graph)
    onnx.checker.check_model(back)
    assert "Gemm" not in {n.op_type for n in back.graph.node}
    assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(ref, run(back, layers, units)))
