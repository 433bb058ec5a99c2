"""Verified at export, or no export: the ONNX step against the Keras model it came from.

Two checks, both on ONNX Runtime's CPU provider:
- teacher forcing: the Keras model reads a sequence in one call; the ONNX step reads it one character at a
  time with its state carried. Largest absolute difference of logits at most 1e-4.
- greedy text: a stateful batch-1 Keras model and the ONNX step each pick the argmax and feed it back; the
  two texts must be the same.
"""

from __future__ import annotations

import keras
import numpy as np
import onnx

from charlstm.errors import UserError
from charlstm.export.step_graph import INPUTS, OUTPUTS
from charlstm.training.config import ModelConfig
from charlstm.training.model import build_model, learned_weights, reset_states, set_learned_weights

TOLERANCE = 1e-4


class ParityError(UserError):
    exit_code = 1  # not the user's mistake, but nothing they can use was written either


def ort_session(model: onnx.ModelProto | bytes | str):
    import onnxruntime as ort
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def ort_steps(session, ids: np.ndarray, layers: int, units: int) -> np.ndarray:
    """Logits [time, batch, vocab] for ids [batch, time], state carried from zero."""
    batch = ids.shape[0]
    h = np.zeros((layers, batch, units), np.float32)
    c = np.zeros_like(h)
    out = []
    for t in range(ids.shape[1]):
        logits, h, c = session.run([OUTPUTS["logits"], OUTPUTS["h"], OUTPUTS["c"]],
                                   {INPUTS["token"]: ids[:, t].astype(np.int64), INPUTS["h"]: h, INPUTS["c"]: c})
        out.append(logits)
    return np.stack(out)


def keras_greedy(model: keras.Model, mc: ModelConfig, prompt: np.ndarray, length: int) -> list[int]:
    step = build_model(mc, batch_size=1, stateful=True)
    set_learned_weights(step, learned_weights(model))
    reset_states(step)
    logits = None
    for t in prompt:
        logits = step(np.array([[t]], np.int32), training=False)
    out = []
    for _ in range(length):
        t = int(np.argmax(keras.ops.convert_to_numpy(logits)[0, -1]))
        out.append(t)
        logits = step(np.array([[t]], np.int32), training=False)
    return out


def ort_greedy(session, prompt: np.ndarray, length: int, layers: int, units: int) -> list[int]:
    h = np.zeros((layers, 1, units), np.float32)
    c = np.zeros_like(h)
    fetch = [OUTPUTS["logits"], OUTPUTS["h"], OUTPUTS["c"]]
    run = lambda t, h, c: session.run(  # noqa: E731
        fetch, {INPUTS["token"]: np.array([t], np.int64), INPUTS["h"]: h, INPUTS["c"]: c})
    for t in prompt:
        logits, h, c = run(t, h, c)
    out = []
    for _ in range(length):
        out.append(int(np.argmax(logits[0])))
        logits, h, c = run(out[-1], h, c)
    return out


def check(model: keras.Model, mc: ModelConfig, onnx_model: onnx.ModelProto, ids: np.ndarray,
          greedy_length: int = 200) -> dict:
    """Run both checks; return the figures, or raise ParityError naming the one that failed."""
    onnx.checker.check_model(onnx_model, full_check=True)
    session = ort_session(onnx_model)
    names = {i.name for i in session.get_inputs()}, [o.name for o in session.get_outputs()]
    if names != (set(INPUTS.values()), [OUTPUTS["logits"], OUTPUTS["h"], OUTPUTS["c"]]):
        raise ParityError(f"the ONNX graph's inputs/outputs {names} break the contract")
    if any(n.op_type in ("Loop", "Scan", "If") for n in onnx_model.graph.node):
        raise ParityError("the ONNX graph holds control flow (Loop/Scan/If), which the step contract forbids")
    ref = keras.ops.convert_to_numpy(model(ids[None, :].astype(np.int32), training=False))[0]
    got = ort_steps(session, ids[None, :], mc.layers, mc.units)[:, 0]
    max_diff = float(np.max(np.abs(ref - got)))
    if not max_diff <= TOLERANCE:
        raise ParityError(f"ONNX logits differ from Keras by {max_diff:.3g} (> {TOLERANCE}) over {len(ids)} steps")
    prompt = ids[:20]
    want = keras_greedy(model, mc, prompt, greedy_length)
    have = ort_greedy(session, prompt, greedy_length, mc.layers, mc.units)
    if want != have:
        first = next(i for i, (a, b) in enumerate(zip(want, have)) if a != b)
        raise ParityError(f"greedy text from ONNX differs from Keras at character {first} of {greedy_length}")
    return {"steps": int(len(ids)), "max_abs_logit_diff": max_diff, "tolerance": TOLERANCE,
            "greedy_characters": greedy_length, "greedy_match": True}
