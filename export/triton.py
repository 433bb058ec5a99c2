"""A model folder -> a Triton Inference Server model repository for the step (`charlstm export --triton DIR`).

Writes DIR/<name>/config.pbtxt and DIR/<name>/1/model.onnx for the ONNX Runtime backend, with the sequence
batcher keeping the LSTM state inside Triton (implicit state) and batching steps of different sequences together
(the Oldest strategy). A client sends one character id per request with a sequence id, gets logits back, samples,
and sends the next; it never sees h or c.

Why a wrapper graph, not model.onnx as it is:
- With max_batch_size > 0 Triton puts the batch first: each request's state is [1, *dims] and the backend
  concatenates requests along axis 0. Our state is [layers, batch, units], batch in the middle, so the step
  cannot take Triton's state as is (and max_batch_size 0 would give up batching across sequences).
- The ONNX Runtime backend feeds the sequence controls (START, READY) to the model as inputs of shape [batch, 1]
  and refuses a config that names a control the model lacks.
So the wrapper adds a few nodes around the unchanged step:
  TOKEN [batch, 1] int64 -> reshape -> token [batch]
  H, C  [batch, layers, units] -> zeroed where START -> transpose -> h, c [layers, batch, units]
  h_out, c_out -> transpose -> kept where READY, else the state that came in -> H_OUT, C_OUT
  logits -> LOGITS [batch, vocab]
The state starts from zero twice over: `initial_state { zero_data: true }` in the config, and START in the graph
(so a slot reused by a new sequence cannot leak the last one's state, whatever the config says). The wrapper is
checked against the step with ONNX Runtime before anything is written (`check_wrapper`).

The repository can also be made from an existing model folder, without TensorFlow:
    python -m charlstm.export.triton models/shakespeare triton_models [--kind auto|gpu|cpu]

The folder is loaded through the runtime's own checks first (charlstm.runtime.manifest), so a damaged or hostile
one is refused in one line: files must be regular files of the recorded size and sha256, names plain.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from charlstm.errors import UserError
from charlstm.runtime.files import check_writable, new_tmp_dir, publish_dir, remove_stale_temps, write_failure
from charlstm.runtime.manifest import Manifest, load_manifest

TOKEN, START, READY, LOGITS = "TOKEN", "START", "READY", "LOGITS"
STATES = (("H", "H_OUT"), ("C", "C_OUT"))  # Triton's implicit state: (input name, output name), batch first
MAX_BATCH_SIZE = 64  # sequences stepped together in one ORT run; an LSTM step is tiny, so wide batches pay
IDLE_US = 30_000_000  # a sequence idle this long is dropped with its state: the client samples between steps
QUEUE_DELAY_US = 200  # wait this long for more sequences to join a batch: a step takes tens of microseconds
NAME = re.compile(r"^[A-Za-z0-9_.-]+$")  # a Triton model name is a folder name; keep it portable


class TritonError(UserError):
    pass


def wrap(step: onnx.ModelProto, layers: int, units: int, vocab_size: int) -> onnx.ModelProto:
    """The step with Triton's batch-first state and [batch, 1] inputs around it (see the module docstring)."""
    g = step.graph
    names = {i.name for i in g.input} | {o.name for o in g.output} | {i.name for i in g.initializer}
    names |= {n for node in g.node for n in (*node.input, *node.output)}
    ours = {TOKEN, START, READY, LOGITS} | {n for pair in STATES for n in pair}
    if names & ours or any(n.startswith("triton/") for n in names):
        raise TritonError(f"the step graph already uses the names {sorted(names & ours)}: "
                          "re-run `charlstm export`")
    if {i.name for i in g.input} != {"token", "h", "c"} or [o.name for o in g.output] != ["logits", "h_out", "c_out"]:
        raise TritonError("model.onnx does not follow the step contract (token, h, c -> logits, h_out, c_out): "
                          "re-run `charlstm export`")
    opset = next((o.version for o in step.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        raise TritonError(f"model.onnx uses opset {opset}; the Triton wrapper needs 13 or later: "
                          "re-run `charlstm export`")

    consts = [numpy_helper.from_array(np.array([-1], np.int64), "triton/flat"),
              numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "triton/per_row"),
              numpy_helper.from_array(np.array(0.0, np.float32), "triton/zero")]
    pre = [helper.make_node("Reshape", [TOKEN, "triton/flat"], ["token"], name="triton/token")]
    post = [helper.make_node("Identity", ["logits"], [LOGITS], name="triton/logits")]
    for flag in (START, READY):  # int32 0/1 [batch, 1] -> bool [batch, 1, 1], to broadcast over [batch, L, U]
        low = flag.lower()
        pre += [helper.make_node("Cast", [flag], [f"triton/{low}_bool"], to=TensorProto.BOOL,
                                 name=f"triton/{low}_cast"),
                helper.make_node("Reshape", [f"triton/{low}_bool", "triton/per_row"], [f"triton/{low}"],
                                 name=f"triton/{low}_rows")]
    for (state_in, state_out), inner in zip(STATES, ("h", "c")):
        fresh = f"triton/{inner}_fresh"
        pre += [helper.make_node("Where", ["triton/start", "triton/zero", state_in], [fresh], name=fresh),
                helper.make_node("Transpose", [fresh], [inner], perm=[1, 0, 2], name=f"triton/{inner}_in")]
        post += [helper.make_node("Transpose", [f"{inner}_out"], [f"triton/{inner}_next"], perm=[1, 0, 2],
                                  name=f"triton/{inner}_out"),
                 helper.make_node("Where", ["triton/ready", f"triton/{inner}_next", fresh], [state_out],
                                  name=f"triton/{inner}_keep")]

    f32, state = TensorProto.FLOAT, ["batch", layers, units]
    graph = helper.make_graph(
        pre + list(g.node) + post, "charlstm_step_triton",
        inputs=[helper.make_tensor_value_info(TOKEN, TensorProto.INT64, ["batch", 1]),
                helper.make_tensor_value_info(START, TensorProto.INT32, ["batch", 1]),
                helper.make_tensor_value_info(READY, TensorProto.INT32, ["batch", 1]),
                *(helper.make_tensor_value_info(i, f32, state) for i, _ in STATES)],
        outputs=[helper.make_tensor_value_info(LOGITS, f32, ["batch", vocab_size]),
                 *(helper.make_tensor_value_info(o, f32, state) for _, o in STATES)],
        initializer=list(g.initializer) + consts,
        value_info=list(g.value_info),
    )
    model = helper.make_model(graph, opset_imports=list(step.opset_import), producer_name="charlstm",
                              doc_string=f"{step.doc_string} (Triton: batch-first implicit state)".strip())
    model.ir_version = step.ir_version
    onnx.checker.check_model(model)
    return model


def check_wrapper(step: onnx.ModelProto, wrapped: onnx.ModelProto, layers: int, units: int, vocab_size: int,
                  steps: int = 12, batch: int = 3, seed: int = 0) -> float:
    """Run both on ONNX Runtime's CPU provider; returns the largest difference, raises if above 1e-5.

    Row 0 runs one sequence throughout; row 1 starts a new sequence half way (its slot reused, START again);
    row 2 is not READY every third step, so its state must pass through unchanged. Every START comes with
    random state, as an uninitialised Triton slot would: the wrapper must ignore it.
    """
    import onnxruntime as ort
    cpu = ["CPUExecutionProvider"]
    ref = ort.InferenceSession(step.SerializeToString(), providers=cpu)
    run = ort.InferenceSession(wrapped.SerializeToString(), providers=cpu)
    rng = np.random.default_rng(seed)
    h = np.zeros((layers, batch, units), np.float32)  # the reference state, step layout
    c = np.zeros_like(h)
    worst = 0.0
    for t in range(steps):
        start = np.array([t == 0, t in (0, steps // 2), t == 0], np.int32)[:, None]
        ready = np.array([1, 1, t % 3 != 2], np.int32)[:, None]
        token = rng.integers(0, vocab_size, (batch, 1)).astype(np.int64)
        h[:, start[:, 0] == 1] = 0.0
        c[:, start[:, 0] == 1] = 0.0
        h_in, c_in = h.transpose(1, 0, 2).copy(), c.transpose(1, 0, 2).copy()
        junk = rng.normal(0, 1, h_in.shape).astype(np.float32)
        h_in[start[:, 0] == 1], c_in[start[:, 0] == 1] = junk[start[:, 0] == 1], -junk[start[:, 0] == 1]
        logits, h_next, c_next = ref.run(["logits", "h_out", "c_out"], {"token": token[:, 0], "h": h, "c": c})
        got = run.run([LOGITS, "H_OUT", "C_OUT"], {TOKEN: token, START: start, READY: ready, "H": h_in, "C": c_in})
        keep = ready[:, 0] == 1
        h[:, keep], c[:, keep] = h_next[:, keep], c_next[:, keep]
        want = (logits[keep], h.transpose(1, 0, 2), c.transpose(1, 0, 2))
        worst = max(worst, *(float(np.max(np.abs(a - b))) for a, b in zip((got[0][keep], *got[1:]), want)))
    if worst > 1e-5:
        raise TritonError(f"the Triton wrapper differs from model.onnx by {worst:.2e} (limit 1e-5): this is a bug "
                          "in export/triton.py; please report it")
    return worst


def _pbtxt_string(text: str) -> str:
    """A protobuf text-format string literal. JSON-escaped ASCII first, so only \\ and \" need escaping."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_pbtxt(name: str, layers: int, units: int, vocab_size: int, parameters: dict[str, str],
                 max_batch_size: int = MAX_BATCH_SIZE, kind: str = "KIND_AUTO") -> str:
    """config.pbtxt for the wrapped step; dims leave out the batch, which Triton prepends."""
    preferred = ", ".join(str(b) for b in (8, 16, 32, 64, 128) if b <= max_batch_size) or str(max_batch_size)
    controls = "".join(f"""
    {{
      name: "{flag}"
      control [ {{ kind: CONTROL_SEQUENCE_{flag} int32_false_true: [ 0, 1 ] }} ]
    }},""" for flag in (START, READY)).rstrip(",")
    states = "".join(f"""
    {{
      input_name: "{i}"
      output_name: "{o}"
      data_type: TYPE_FP32
      dims: [ {layers}, {units} ]
      initial_state {{ data_type: TYPE_FP32 dims: [ {layers}, {units} ] zero_data: true name: "zero" }}
    }},""" for i, o in STATES).rstrip(",")
    params = "".join(f'\nparameters {{ key: "{k}" value {{ string_value: {_pbtxt_string(v)} }} }}'
                     for k, v in parameters.items())
    return f"""# Written by `charlstm export --triton`: the charlstm step, one character per request (export/triton.py).
name: "{name}"
backend: "onnxruntime"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [
  {{ name: "{TOKEN}" data_type: TYPE_INT64 dims: [ 1 ] }}
]
output [
  {{ name: "{LOGITS}" data_type: TYPE_FP32 dims: [ {vocab_size} ] }}
]
sequence_batching {{
  max_sequence_idle_microseconds: {IDLE_US}
  oldest {{
    max_candidate_sequences: {4 * max_batch_size}
    preferred_batch_size: [ {preferred} ]
    max_queue_delay_microseconds: {QUEUE_DELAY_US}
  }}
  control_input [{controls}
  ]
  state [{states}
  ]
}}
instance_group [ {{ kind: {kind} count: 1 }} ]{params}
"""


KINDS = {"auto": "KIND_AUTO", "gpu": "KIND_GPU", "cpu": "KIND_CPU"}  # Triton's instance group kinds


def load_step(model_dir) -> tuple[Manifest, bytes, str]:
    """The model folder through the runtime's own checks (a manifest of the right types and bounds, regular files
    of the recorded size and sha256), and its step graph probed on ONNX Runtime's CPU provider, so a damaged or
    hostile folder fails in one line before anything is written."""
    from charlstm.runtime.contract import check_contract
    from charlstm.runtime.session import SessionConfig, load_session

    manifest = load_manifest(model_dir)
    path = manifest.onnx_path(int8=False)
    digest = manifest.verify(path)  # size first, then sha256: never reads more than the manifest promised
    data = path.read_bytes()
    session = load_session(path, SessionConfig(device="cpu", int8=False, threads=1, spinning=False), "cpu")
    check_contract(session, manifest, path)
    return manifest, data, digest


def write_repository(model_dir, repo_dir, *, force: bool = False, max_batch_size: int = MAX_BATCH_SIZE,
                     kind: str = "auto") -> Path:
    """Write REPO/<name>/config.pbtxt and REPO/<name>/1/model.onnx from a model folder; returns REPO/<name>.

    Other models in REPO are left alone; REPO/<name> is replaced only with force, and atomically.
    """
    model_dir, repo_dir = Path(model_dir), Path(repo_dir)
    if kind not in KINDS:
        raise TritonError(f"kind {kind!r} is not one of {', '.join(KINDS)}: auto lets Triton choose (a GPU when "
                          "it has one)", "kind")
    if max_batch_size < 1:
        raise TritonError(f"max_batch_size is {max_batch_size}: Triton needs at least 1 to batch sequences",
                          "max_batch_size")
    manifest, data, digest = load_step(model_dir)
    name = manifest.name
    if not NAME.match(name) or name in (".", "..") or name.startswith("."):
        raise TritonError(f"model name {name!r} cannot be a Triton model folder: export with --name using only "
                          "letters, digits, '_', '.' and '-', not starting with '.'", "name")
    out = repo_dir / name
    if (out.exists() or out.is_symlink()) and not force:
        raise TritonError(f"{out} already exists: pass --force to replace it, or another --triton folder", "repo_dir")
    check_writable(repo_dir)
    try:
        step = onnx.load_from_string(data)
        wrapped = wrap(step, manifest.layers, manifest.units, len(manifest.vocab))
        check_wrapper(step, wrapped, manifest.layers, manifest.units, len(manifest.vocab))
    except TritonError:
        raise
    except Exception as e:  # noqa: BLE001 - onnx and ONNX Runtime raise many types for a graph they refuse
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise TritonError(f"{model_dir / 'model.onnx'} cannot be wrapped for Triton ({first}): re-run "
                          "`charlstm export`", "model_dir") from None
    parameters = {  # for clients: get_model_config() tells them the vocabulary and the sampling default
        "charlstm.vocab": json.dumps("".join(manifest.vocab), ensure_ascii=True),  # id i = character i
        "charlstm.temperature": str(manifest.temperature),
        "charlstm.model_sha256": digest,
    }
    config = config_pbtxt(name, manifest.layers, manifest.units, len(manifest.vocab), parameters, max_batch_size,
                          KINDS[kind])
    remove_stale_temps(repo_dir, name)
    tmp = new_tmp_dir(out)
    try:
        (tmp / "1").mkdir()
        (tmp / "1" / "model.onnx").write_bytes(wrapped.SerializeToString())
        (tmp / "config.pbtxt").write_text(config, encoding="utf-8")
        publish_dir(tmp, out, force, "Triton model folder")
    except OSError as e:
        raise write_failure(out, e) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


if __name__ == "__main__":
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="Write a Triton model repository entry for a charlstm model folder.")
    parser.add_argument("model_dir", help="model folder written by `charlstm export`")
    parser.add_argument("repo_dir", help="Triton model repository (the folder given to --model-repository)")
    parser.add_argument("--force", action="store_true", help="replace REPO_DIR/<name> if it exists")
    parser.add_argument("--max-batch-size", type=int, default=MAX_BATCH_SIZE, help="sequences per ORT run")
    parser.add_argument("--kind", choices=sorted(KINDS), default="auto",
                        help="instance group kind: auto (Triton's choice: a GPU when it has one), gpu or cpu")
    args = parser.parse_args()
    try:
        print(write_repository(args.model_dir, args.repo_dir, force=args.force, max_batch_size=args.max_batch_size,
                               kind=args.kind))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
