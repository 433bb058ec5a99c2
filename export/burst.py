"""The burst graph: K steps per ONNX Runtime run, each picking its character inside the graph (Gumbel-max).

A generate loop on the step graph pays, per character, one `run` call, a copy of the logits to the host and a
host-side draw. The burst graph unrolls the step K times and samples in the graph:

    step k:  logits_k, state = step(token_k, state);  token_{k+1} = argmax(logits_k + noise[k])

With noise = T * g and g = -log(-log(u)) drawn by the host's seeded generator, argmax(logits + T*g) is exactly
a draw from softmax(logits / T) (the Gumbel-max trick); noise = 0 is greedy. Only K tokens come back per run.
Plain temperature sampling, the default, runs on it; top-k and top-p stay on the step graph.

Contract: inputs token int64 [batch] (the last character chosen), h and c as the step's, noise float32
[K, batch, vocab]; outputs tokens int64 [K, batch], h_out and c_out (the state after the K steps).

The burst file holds no weights of its own: every large initializer is ONNX external data pointing at the
same bytes inside model.onnx (whose sha256 the manifest records), so a model folder grows by a few KB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from runtime.manifest import BURST_INPUTS, BURST_OUTPUTS  # noqa: F401 - the runtime reads these names
from runtime.manifest import GRAPH_INPUTS as INPUTS
from runtime.manifest import GRAPH_OUTPUTS as OUTPUTS

STEPS = 16  # characters per run: amortises a run's fixed cost 16-fold; streamed text comes in bursts of 16
FILE = "model.burst.onnx"
LINK_MIN_BYTES = 1024  # smaller constants stay inline: not worth a file read each


def unroll(step: onnx.ModelProto, steps: int = STEPS) -> onnx.ModelProto:
    """The step graph chained `steps` times with a Gumbel-max pick between steps (see the module docstring)."""
    g = step.graph
    shared = {t.name for t in g.initializer}
    vocab = next(o for o in g.output if o.name == OUTPUTS["logits"]).type.tensor_type.shape.dim[1].dim_value
    nodes, extra, picks = [], [], []
    token, h, c = INPUTS["token"], INPUTS["h"], INPUTS["c"]
    for k in range(steps):
        wire = {INPUTS["token"]: token, INPUTS["h"]: h, INPUTS["c"]: c}

        def name(x: str, k=k, wire=wire) -> str:
            return x if (x == "" or x in shared) else wire.get(x, f"{x}/s{k}")

        for j, n in enumerate(g.node):
            copy = onnx.NodeProto()
            copy.CopyFrom(n)
            copy.name = f"{n.name or n.op_type}/n{j}/s{k}"  # unique even where the step's names are not
            del copy.input[:], copy.output[:]
            copy.input.extend(name(x) for x in n.input)
            copy.output.extend(f"{x}/s{k}" for x in n.output)
            nodes.append(copy)
        index = f"burst/k{k}"
        extra.append(numpy_helper.from_array(np.array(k, np.int64), index))
        nodes += [helper.make_node("Gather", ["noise", index], [f"noise/s{k}"], axis=0, name=f"noise/s{k}"),
                  helper.make_node("Add", [f"{OUTPUTS['logits']}/s{k}", f"noise/s{k}"], [f"scored/s{k}"],
                                   name=f"scored/s{k}"),
                  helper.make_node("ArgMax", [f"scored/s{k}"], [f"pick/s{k}"], axis=-1, keepdims=0,
                                   name=f"pick/s{k}"),
                  helper.make_node("Unsqueeze", [f"pick/s{k}", "burst/axis0"], [f"row/s{k}"], name=f"row/s{k}")]
        token, h, c = f"pick/s{k}", f"{OUTPUTS['h']}/s{k}", f"{OUTPUTS['c']}/s{k}"
        picks.append(f"row/s{k}")
    extra.append(numpy_helper.from_array(np.array([0], np.int64), "burst/axis0"))
    nodes += [helper.make_node("Concat", picks, [BURST_OUTPUTS["tokens"]], axis=0, name="tokens"),
              helper.make_node("Identity", [h], [BURST_OUTPUTS["h"]], name="h_out"),
              helper.make_node("Identity", [c], [BURST_OUTPUTS["c"]], name="c_out")]
    state_in = [i for i in g.input if i.name in (INPUTS["h"], INPUTS["c"])]
    state_out = [o for o in g.output if o.name in (OUTPUTS["h"], OUTPUTS["c"])]
    inputs = [next(i for i in g.input if i.name == INPUTS["token"]), *state_in,
              helper.make_tensor_value_info("noise", TensorProto.FLOAT, [steps, "batch", vocab])]
    outputs = [helper.make_tensor_value_info(BURST_OUTPUTS["tokens"], TensorProto.INT64, [steps, "batch"]),
               *state_out]
    graph = helper.make_graph(nodes, "charlstm_burst", inputs, outputs, [*g.initializer, *extra])
    model = helper.make_model(graph, opset_imports=step.opset_import, ir_version=step.ir_version,
                              producer_name="charlstm", doc_string=f"charlstm burst: {steps} steps per run, "
                                                                   "Gumbel-max sampling in the graph")
    return model


def link_weights(model: onnx.ModelProto, step_bytes: bytes, location: str = "model.onnx") -> onnx.ModelProto:
    """Point each large initializer at the identical bytes inside the serialized step model (external data)."""
    for t in model.graph.initializer:
        raw = numpy_helper.to_array(t).tobytes()
        offset = step_bytes.find(raw) if len(raw) >= LINK_MIN_BYTES else -1
        if offset < 0:
            continue
        t.ClearField("raw_data"), t.ClearField("float_data"), t.ClearField("int64_data")
        t.data_location = TensorProto.EXTERNAL
        del t.external_data[:]
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(raw)))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
    return model


def write(folder: Path, steps: int = STEPS) -> bytes:
    """Write folder/model.burst.onnx from folder/model.onnx; returns the bytes written."""
    step_bytes = (folder / "model.onnx").read_bytes()
    burst = link_weights(unroll(onnx.load_from_string(step_bytes), steps), step_bytes)
    data = burst.SerializeToString()
    (folder / FILE).write_bytes(data)
    return data


def check(folder: Path, steps: int = STEPS, runs: int = 4, batch: int = 2, temperature: float = 0.5,
          seed: int = 0) -> dict:
    """The burst file against model.onnx on ONNX Runtime's CPU provider: each pick is the argmax of the step's
    logits plus the same noise (within 1e-4 of the best score), and the state after each run matches."""
    import onnxruntime as ort

    from export.verify import TOLERANCE, ParityError

    cpu = ["CPUExecutionProvider"]
    stepper = ort.InferenceSession(str(folder / "model.onnx"), providers=cpu)
    burst = ort.InferenceSession(str(folder / FILE), providers=cpu)
    h_info = next(i for i in stepper.get_inputs() if i.name == INPUTS["h"])
    layers, units = h_info.shape[0], h_info.shape[2]
    vocab = stepper.get_outputs()[0].shape[1]
    rng = np.random.default_rng(seed)
    token = rng.integers(0, vocab, batch).astype(np.int64)
    h = np.zeros((layers, batch, units), np.float32)
    c = np.zeros_like(h)
    worst_pick, worst_state = 0.0, 0.0
    for _ in range(runs):
        u = np.clip(rng.random((steps, batch, vocab)), np.finfo(np.float64).tiny, 1 - 2**-53)
        noise = (temperature * -np.log(-np.log(u))).astype(np.float32)
        tokens, bh, bc = burst.run(list(BURST_OUTPUTS.values()), {INPUTS["token"]: token, INPUTS["h"]: h,
                                                                  INPUTS["c"]: c, "noise": noise})
        for k in range(steps):  # teacher-force the burst's own picks through the step graph
            logits, h, c = stepper.run(list(OUTPUTS.values()), {INPUTS["token"]: token, INPUTS["h"]: h,
                                                                 INPUTS["c"]: c})
            scored = logits + noise[k]
            gap = scored.max(axis=-1) - np.take_along_axis(scored, tokens[k][:, None], axis=-1)[:, 0]
            worst_pick = max(worst_pick, float(gap.max()))
            token = tokens[k]
        worst_state = max(worst_state, float(np.abs(bh - h).max()), float(np.abs(bc - c).max()))
    if not (worst_pick <= TOLERANCE and worst_state <= TOLERANCE):
        raise ParityError(f"the burst graph's picks trail the step graph's best by {worst_pick:.3g} or its state "
                          f"differs by {worst_state:.3g} (> {TOLERANCE}): a bug in export/burst.py")
    return {"steps": steps, "characters": runs * steps * batch, "max_pick_gap": worst_pick,
            "max_abs_state_diff": worst_state, "tolerance": TOLERANCE}
