"""Speed levers for the CPU step, timed in turns: ONNX Runtime threads and spinning, and weight formats.

Not part of `charlstm bench`: an experiment to rerun before changing the runtime's defaults or the export.
Weight formats: model.onnx (float32), model.int8.onnx (as exported: MatMulNBits, 8-bit blocks of 128,
accuracy level 4 = int8 compute), and, built here from model.onnx with ONNX Runtime's quantizers, the
per-channel dynamic int8 (MatMulInteger) that `--int8` wrote before, and 4-bit MatMulNBits. Each format's
largest logit and state difference against float32 is printed beside its time.

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


def quantized(path: Path, method: str) -> bytes:
    """model.onnx quantized with ONNX Runtime's tools: "dynamic" (per-channel int8 MatMulInteger, what
    `--int8` wrote before) or "nbits4" (MatMulNBits, 4-bit, blocks of 128, int8 compute)."""
    import logging
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "q.onnx"
        if method == "dynamic":
            from onnxruntime.quantization import QuantType, quantize_dynamic
            logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process the graph
            quantize_dynamic(path, out, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"])
        else:
            from export.int8 import write_nbits
            write_nbits(path, out, bits=4)
        return out.read_bytes()


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
               "int8 MatMulNBits (model.int8.onnx)": (args.model / "model.int8.onnx").read_bytes(),
               "int8 dynamic (the previous export)": quantized(args.model / "model.onnx", "dynamic"),
               "4-bit MatMulNBits": quantized(args.model / "model.onnx", "nbits4")}
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
    # the runtime's own steppers on the same session: numpy feeds (the CPU path) against IOBinding with
    # preallocated ping-pong state buffers (the CUDA path, here on host memory)
    from runtime.manifest import load_manifest
    from runtime.session import BoundStepper, Stepper
    manifest = load_manifest(args.model)
    for name, stepper in (("Stepper", Stepper(sessions["float32, 2 thread(s)"], manifest)),
                          ("BoundStepper", BoundStepper(sessions["float32, 2 thread(s)"], manifest, "cpu"))):
        stepper.reset(1)
        variants[f"float32, 2 thread(s), runtime {name}"] = (
            timed(lambda st=stepper: st.step(np.zeros(1, np.int64))), args.steps)
    medians = round_robin(variants, args.repeats, log=lambda m: print(m, file=sys.stderr, flush=True))
    base = medians["float32, 1 thread(s)"]
    for name, us in medians.items():
        if name not in sessions:
            print(f"{name:50} {us:8.1f} µs  {us / base:5.2f}x float32 1 thread")
            continue
        out = sessions[name].run(None, probe)
        diff = f"logits {np.abs(out[0] - reference[0]).max():.1e}, h {np.abs(out[1] - reference[1]).max():.1e}"
        print(f"{name:50} {us:8.1f} µs  {us / base:5.2f}x float32 1 thread   max diff: {diff}")


if __name__ == "__main__":
    main()
