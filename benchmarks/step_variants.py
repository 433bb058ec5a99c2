"""Speed levers for the CPU step, timed in turns: ONNX Runtime threads and spinning, and weight formats.

Not part of `charlstm bench`: an experiment to rerun before changing the runtime's defaults or the export.
Weight formats: model.onnx (float32), model.int8.onnx (dynamic int8, as exported), and MatMulNBits
(com.microsoft, block-wise weight-only 8- and 4-bit, accuracy level 4 = int8 compute) built here from
model.onnx. Each format's largest logit and state difference against float32 is printed beside its time.

    python -m benchmarks.step_variants --model ~/.cache/charlstm/bench/random-v92-e256-u1024-l1/model
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/step_variants.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.timing import round_robin, timed  # noqa: E402


def nbits(path: Path, bits: int, block: int = 32) -> bytes:
    """model.onnx with every constant-weight MatMul as MatMulNBits (symmetric, per block of `block` inputs)."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(path)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    nodes = []
    for n in g.node:
        if n.op_type != "MatMul" or n.input[1] not in inits:
            nodes.append(n)
            continue
        w = numpy_helper.to_array(inits[n.input[1]]).astype(np.float32)  # [K, N]
        k, cols = w.shape
        wt = np.concatenate([w.T, np.zeros((cols, -k % block), np.float32)], 1).reshape(cols, -1, block)
        qmax = 2 ** (bits - 1) - 1
        scale = np.abs(wt).max(-1) / qmax
        scale[scale == 0] = 1.0
        q = (np.clip(np.round(wt / scale[..., None]), -qmax - 1, qmax) + 2 ** (bits - 1)).astype(np.uint8)
        if bits == 4:  # two per byte, the first in the low nibble
            q = q[..., 0::2] | (q[..., 1::2] << 4)
        name = f"{n.input[1]}_q{bits}"
        g.initializer.extend([numpy_helper.from_array(q, name),
                              numpy_helper.from_array(scale.astype(np.float32).reshape(-1), name + "_scale")])
        nodes.append(helper.make_node("MatMulNBits", [n.input[0], name, name + "_scale"], list(n.output),
                                      domain="com.microsoft", K=k, N=cols, bits=bits, block_size=block,
                                      accuracy_level=4, name=f"{n.name or n.output[0]}_nbits"))
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in g.node for i in n.input}
    kept = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return m.SerializeToString()


def session(model, threads: int, spinning: bool = False):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def main() -> None:
    p = argparse.ArgumentParser(description="CPU step variants (see the module docstring)")
    p.add_argument("--model", type=Path, required=True, help="model folder with model.onnx and model.int8.onnx")
    p.add_argument("--steps", type=int, default=200, help="steps per timed run")
    p.add_argument("--repeats", type=int, default=7, help="rounds; the median is reported")
    args = p.parse_args()
    formats = {"float32": (args.model / "model.onnx").read_bytes(),
               "int8 dynamic (model.int8.onnx)": (args.model / "model.int8.onnx").read_bytes(),
               "MatMulNBits 8-bit": nbits(args.model / "model.onnx", 8),
               "MatMulNBits 4-bit": nbits(args.model / "model.onnx", 4)}
    sessions = {f"{name}, {t} thread(s)": session(data, t) for name, data in formats.items() for t in (1, 2)}
    sessions["float32, 2 thread(s), spinning"] = session(formats["float32"], 2, spinning=True)
    units = sessions["float32, 1 thread(s)"].get_inputs()[1].shape[2]
    rng = np.random.default_rng(0)
    probe = {"token": rng.integers(0, 8, 8), "h": rng.uniform(-1, 1, (1, 8, units)).astype(np.float32),
             "c": rng.uniform(-1, 1, (1, 8, units)).astype(np.float32)}
    reference = sessions["float32, 1 thread(s)"].run(None, probe)
    feeds = {"token": np.zeros(1, np.int64), "h": np.zeros((1, 1, units), np.float32),
             "c": np.zeros((1, 1, units), np.float32)}
    variants = {name: (timed(lambda s=s: s.run(None, feeds)), args.steps) for name, s in sessions.items()}
    medians = round_robin(variants, args.repeats, log=lambda m: print(m, file=sys.stderr, flush=True))
    base = medians["float32, 1 thread(s)"]
    for name, us in medians.items():
        out = sessions[name].run(None, probe)
        diff = f"logits {np.abs(out[0] - reference[0]).max():.1e}, h {np.abs(out[1] - reference[1]).max():.1e}"
        print(f"{name:42} {us:8.1f} µs  {us / base:5.2f}x float32 1 thread   max diff: {diff}")


if __name__ == "__main__":
    main()
