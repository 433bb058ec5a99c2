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

from charlstm.runtime.manifest import BURST_FILE as FILE
from charlstm.runtime.manifest import BURST_OUTPUTS, MAX_BURST_STEPS
from charlstm.runtime.manifest import GRAPH_INPUTS as INPUTS
from charlstm.runtime.manifest import GRAPH_OUTPUTS as OUTPUTS

STEPS = 16  # characters per run: amortises a run's fixed cost 16-fold; streamed text comes in bursts of 16
MAX_STEPS = MAX_BURST_STEPS  # ONNX Runtime's CUDA Concat takes at most 32 inputs while a CUDA graph is captured
LINK_MIN_BYTES = 1024  # smaller constants stay inline: not worth a file read each


def _consts(g: onnx.GraphProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in g.initializer}


def _layer_reads(g: onnx.GraphProto, state: str, layers: int) -> tuple[dict[int, str], bool] | None:
    """(layer -> the tensor the step reads state[layer] into, squeezed): Slice or Gather on axis 0 of the state
    input, then Squeeze to [batch, units] (the traced step), or not, [1, batch, units] (export/lstm_op.py).
    None when the step reads its state some other way."""
    consts, found = _consts(g), {}
    squeezes = {n.input[0]: n for n in g.node if n.op_type == "Squeeze"}
    for n in g.node:
        if not n.input or n.input[0] != state:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        try:
            if n.op_type == "Slice":
                start, stop = int(consts[n.input[1]][0]), int(consts[n.input[2]][0])
                axes = consts[n.input[3]].tolist() if len(n.input) > 3 else [0]
                layer = start if (axes == [0] and stop == start + 1) else None
            elif n.op_type == "Gather" and attrs.get("axis", 0) == 0 and consts[n.input[1]].shape == (1,):
                layer = int(consts[n.input[1]][0])
            else:
                return None
        except KeyError:  # not a constant index
            return None
        if layer is None:
            return None
        squeeze = squeezes.get(n.output[0])
        found[layer] = (squeeze.output[0], True) if squeeze is not None else (n.output[0], False)
    if sorted(found) != list(range(layers)) or len({sq for _, sq in found.values()}) != 1:
        return None
    return {i: t for i, (t, _) in found.items()}, found[0][1]


def _layer_writes(g: onnx.GraphProto, state_out: str) -> tuple[list[str], bool] | None:
    """(the per-layer tensors that Concat(axis 0) stacks into a state output, unsqueezed): [batch, units] each
    through an Unsqueeze (the traced step), or [1, batch, units] each as they are (export/lstm_op.py)."""
    producer = {o: n for n in g.node for o in n.output}
    concat = producer.get(state_out)
    if concat is None or concat.op_type != "Concat":
        return None
    kinds = {producer[x].op_type == "Unsqueeze" for x in concat.input if x in producer}
    if len(kinds) != 1 or any(x not in producer for x in concat.input):
        return None
    unsqueezed = kinds.pop()
    return [producer[x].input[0] if unsqueezed else x for x in concat.input], unsqueezed


def _prune(nodes: list, outputs: list[str]) -> list:
    """Drop nodes whose outputs nothing reads (walking back from the graph outputs)."""
    needed, kept = set(outputs), []
    for n in reversed(nodes):
        if any(o in needed for o in n.output):
            kept.append(n)
            needed.update(n.input)
    return kept[::-1]


def unroll(step: onnx.ModelProto, steps: int = STEPS) -> onnx.ModelProto:
    """The step graph chained `steps` times with a Gumbel-max pick between steps (see the module docstring).

    Between steps the state stays per layer: step k reads the tensors step k-1 computed, not a stacked
    [layers, batch, units] copy sliced apart again, and the noise is split once, so on a GPU a step launches
    fewer small kernels. Only the last step stacks h and c into the outputs.
    """
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"a burst of {steps} steps: use 1 to {MAX_STEPS} (the tokens output is one Concat of a "
                         f"row per step, and CUDA graphs take at most {MAX_STEPS} inputs to a Concat)")
    g = step.graph
    shared = {t.name for t in g.initializer}
    vocab = next(o for o in g.output if o.name == OUTPUTS["logits"]).type.tensor_type.shape.dim[1].dim_value
    layers = next(i for i in g.input if i.name == INPUTS["h"]).type.tensor_type.shape.dim[0].dim_value
    found = [_layer_reads(g, INPUTS[s], layers) for s in ("h", "c")] + \
        [_layer_writes(g, OUTPUTS[s]) for s in ("h", "c")]
    # a step's per-layer writes can feed the next step's per-layer reads when both have the same shape
    short_circuit = all(f is not None for f in found) and len({f[1] for f in found}) == 1
    reads, writes = ([f[0] for f in found[:2]], [f[0] for f in found[2:]]) if short_circuit else (None, None)
    noise = [f"noise/s{k}" for k in range(steps)]
    nodes = [helper.make_node("Split", ["noise"], noise, axis=0, name="noise/split", **(
        {"num_outputs": steps} if max(o.version for o in step.opset_import if o.domain in ("", "ai.onnx")) >= 18
        else {}))]
    extra, picks = [numpy_helper.from_array(np.array([0], np.int64), "burst/axis0")], []
    token = INPUTS["token"]
    for k in range(steps):
        wire = {INPUTS["token"]: token}
        if k > 0:  # the stacked state, for any reader other than the per-layer ones (kept only if read)
            wire.update({INPUTS["h"]: f"{OUTPUTS['h']}/s{k - 1}", INPUTS["c"]: f"{OUTPUTS['c']}/s{k - 1}"})
        if k > 0 and short_circuit:  # read the previous step's per-layer tensors directly
            for r, w in zip(reads, writes):
                wire.update({r[i]: f"{w[i]}/s{k - 1}" for i in range(layers)})

        def name(x: str, k=k, wire=wire) -> str:
            return x if (x == "" or x in shared or (k == 0 and x in (INPUTS["h"], INPUTS["c"]))) \
                else wire.get(x, f"{x}/s{k}")

        for j, n in enumerate(g.node):
            copy = onnx.NodeProto()
            copy.CopyFrom(n)
            copy.name = f"{n.name or n.op_type}/n{j}/s{k}"  # unique even where the step's names are not
            del copy.input[:], copy.output[:]
            copy.input.extend(name(x) for x in n.input)
            copy.output.extend(x and f"{x}/s{k}" for x in n.output)  # "" is an output left out (LSTM's Y)
            nodes.append(copy)
        # noise/s{k} is [1, batch, vocab]: the sum broadcasts to [1, batch, vocab], its argmax is a [1, batch] row
        nodes += [helper.make_node("Add", [f"{OUTPUTS['logits']}/s{k}", noise[k]], [f"scored/s{k}"],
                                   name=f"scored/s{k}"),
                  helper.make_node("ArgMax", [f"scored/s{k}"], [f"row/s{k}"], axis=-1, keepdims=0,
                                   name=f"pick/s{k}"),
                  helper.make_node("Squeeze", [f"row/s{k}", "burst/axis0"], [f"pick/s{k}"], name=f"token/s{k}")]
        token = f"pick/s{k}"
        picks.append(f"row/s{k}")
    last = steps - 1
    nodes += [helper.make_node("Concat", picks, [BURST_OUTPUTS["tokens"]], axis=0, name="tokens"),
              helper.make_node("Identity", [f"{OUTPUTS['h']}/s{last}"], [BURST_OUTPUTS["h"]], name="h_out"),
              helper.make_node("Identity", [f"{OUTPUTS['c']}/s{last}"], [BURST_OUTPUTS["c"]], name="c_out")]
    nodes = _prune(nodes, list(BURST_OUTPUTS.values()))
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
    onnx.checker.check_model(model)
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

    from charlstm.export.verify import TOLERANCE, ParityError
    from charlstm.runtime.sampling import gumbel_noise

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
        noise = gumbel_noise(rng.random((steps, batch, vocab), dtype=np.float32), temperature)
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
