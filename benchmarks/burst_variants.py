"""Burst-graph variants on the GPU: how many steps a run, and which op picks the character.

    python -m benchmarks.burst_variants --model DIR --build   # here (needs onnx): writes DIR/variant-*.onnx
    python -m benchmarks.burst_variants --model DIR           # on the GPU machine: times every variant file

Each variant file sits beside DIR/model.onnx and reads its weights from it (as model.burst.onnx does); it is
timed with the runtime's own stepper (IOBinding, two state buffer sets, CUDA graphs), zero noise, batch 1 and 64.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.timing import per_call_us  # noqa: E402


def build(model_dir: Path) -> list[Path]:
    import onnx
    from onnx import helper

    from export import burst

    step_bytes = (model_dir / "model.onnx").read_bytes()
    written = []
    for steps in (8, 16, 32):  # 64 cannot be captured: CUDA graphs take a Concat of at most 32 inputs
        graph = burst.unroll(onnx.load_from_string(step_bytes), steps)
        if steps == 16:  # the same graph with TopK(k=1) in place of ArgMax
            topk = onnx.ModelProto()
            topk.CopyFrom(graph)
            k1 = onnx.numpy_helper.from_array(np.array([1], np.int64), "variant/k1")
            topk.graph.initializer.append(k1)
            nodes = []
            for n in topk.graph.node:
                if n.op_type == "ArgMax":  # [1, batch, vocab] -> values, indices [1, batch, 1] -> [1, batch]
                    idx = n.output[0] + "/k"
                    nodes += [helper.make_node("TopK", [n.input[0], "variant/k1"], [idx + "v", idx], axis=-1),
                              helper.make_node("Squeeze", [idx, "variant/axis2"], [n.output[0]])]
                else:
                    nodes.append(n)
            topk.graph.initializer.append(onnx.numpy_helper.from_array(np.array([2], np.int64), "variant/axis2"))
            del topk.graph.node[:]
            topk.graph.node.extend(nodes)
            path = model_dir / "variant-topk-16.onnx"
            path.write_bytes(burst.link_weights(topk, step_bytes).SerializeToString())
            written.append(path)
        path = model_dir / f"variant-argmax-{steps}.onnx"
        path.write_bytes(burst.link_weights(graph, step_bytes).SerializeToString())
        written.append(path)
    return written


def measure(model_dir: Path, runs: int, repeats: int) -> None:
    from runtime import Generator
    from runtime.session import BoundStepper, SessionConfig, load_session

    gen = Generator(model_dir, device="cuda", burst=False)
    if gen.device != "cuda":
        print("skipped: CUDA did not start", file=sys.stderr)
        return
    config = SessionConfig(device="cuda")
    print(f"{'variant':28} {'batch':>5} {'us/char':>8}")
    for path in sorted(model_dir.glob("variant-*.onnx")):
        steps = int(path.stem.rsplit("-", 1)[1])
        manifest = dataclasses.replace(gen.manifest, burst=dataclasses.replace(
            gen.manifest.burst, file=path.name, steps=steps))
        session = load_session(path, config, "cuda")
        stepper = BoundStepper(gen.session, manifest, "cuda", session, graphs=True)
        for batch in (1, 64):
            stepper.reset(batch)
            ids = np.zeros(batch, np.int64)
            noise = np.zeros((steps, batch, len(gen.itos)), np.float32)
            try:
                us = per_call_us(lambda: stepper.burst(ids, noise), max(4, runs * 16 // steps), repeats, warmup=8)
            except Exception as e:  # noqa: BLE001 - report the variant that failed, time the others
                print(f"{path.stem:28} {batch:5d} did not run: {str(e).strip().splitlines()[-1][:120]}", flush=True)
                break
            print(f"{path.stem:28} {batch:5d} {us / steps / batch:8.2f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description="burst-graph variants (see the module docstring)")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--build", action="store_true", help="write the variant files (needs onnx)")
    p.add_argument("--runs", type=int, default=60, help="16-step runs' worth of characters per timing")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    if args.build:
        for path in build(args.model):
            print(path)
    else:
        measure(args.model, args.runs, args.repeats)


if __name__ == "__main__":
    main()
