"""Burst-graph variants on the GPU: how many steps a run, which op picks the character, and how a cell is built.

    python -m benchmarks.burst_variants --model DIR --build [--weights NPZ]  # here: writes DIR/variant-*.onnx
    python -m benchmarks.burst_variants --model DIR                          # on the GPU machine: times them

Each variant file sits beside DIR/model.onnx and reads its weights from it (as model.burst.onnx does); it is
timed with the runtime's own stepper (IOBinding, two state buffer sets, CUDA graphs), zero noise, batch 1 and 64.
With --weights (the bench cache's notebook.npz of the same model) the build also writes the LSTM-node variants
of export/lstm_op.py: variant-lstmop-step.onnx (a step graph with its own weights, timed as a step and checked
against model.onnx on the GPU) and variant-lstmop-16.onnx (its burst graph, reading the step file's weights).
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.timing import per_call_us  # noqa: E402


def build_lstm_op(model_dir: Path, npz: Path) -> list[Path]:
    """variant-lstmop-step.onnx and variant-lstmop-16.onnx from the Keras weights in `npz` (export/lstm_op.py)."""
    import onnx

    from export import burst, lstm_op
    from export.step_graph import folded
    from training.model import Weights

    a = np.load(npz)
    layers = sum(1 for name in a.files if name.startswith("recurrent_kernel_"))
    w = Weights(embedding=a["embedding"], kernels=[a[f"kernel_{i}"] for i in range(layers)],
                recurrent_kernels=[a[f"recurrent_kernel_{i}"] for i in range(layers)],
                biases=[a[f"bias_{i}"] for i in range(layers)], dense_kernel=a["dense_kernel"],
                dense_bias=a["dense_bias"])
    step = model_dir / "variant-lstmop-step.onnx"
    data = lstm_op.step_model(folded(w), layers).SerializeToString()
    step.write_bytes(data)
    unrolled = burst.link_weights(burst.unroll(onnx.load_from_string(data), burst.STEPS), data, location=step.name)
    path = model_dir / f"variant-lstmop-{burst.STEPS}.onnx"
    path.write_bytes(unrolled.SerializeToString())
    return [step, path]


def build(model_dir: Path, npz: Path | None = None) -> list[Path]:
    import onnx
    from onnx import helper

    from export import burst

    step_bytes = (model_dir / "model.onnx").read_bytes()
    written = build_lstm_op(model_dir, npz) if npz is not None else []
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


PLAIN_TOO = ("variant-argmax-16", "variant-lstmop-16")  # also timed without CUDA graphs, for the lever's size


def measure(model_dir: Path, runs: int, repeats: int, device: str = "cuda") -> None:
    """Time every variant file on `device` ("cpu": a dry run of this script before GPU time is spent on it).
    CUDA graphs first; a variant that cannot be captured is timed without them, so it still gets a figure.
    Each file and mode runs in a process of its own: a capture that fails can leave the CUDA context unusable,
    which would take every later variant down with it."""
    print(f"{'variant':36} {'batch':>5} {'us/char':>8}", flush=True)
    modes = (True, False) if device == "cuda" else (False,)  # graphs are CUDA's alone
    for path in [model_dir / "model.onnx", *sorted(model_dir.glob("variant-*-step.onnx"))]:
        for graphs in modes:
            if _child(model_dir, path, device, graphs, runs, repeats) and not path.stem.startswith("variant"):
                break
    for path in sorted(model_dir.glob("variant-*.onnx")):
        if path.stem.endswith("-step"):
            continue
        for graphs in modes:
            if _child(model_dir, path, device, graphs, runs, repeats) and path.stem not in PLAIN_TOO:
                break


def _child(model_dir: Path, path: Path, device: str, graphs: bool, runs: int, repeats: int) -> bool:
    """One file in one mode, in a child process; prints its lines; True when it ran."""
    cmd = [sys.executable, "-m", "benchmarks.burst_variants", "--model", str(model_dir), "--device", device,
           "--only", path.name, "--graphs" if graphs else "--no-graphs", "--runs", str(runs),
           "--repeats", str(repeats)]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    print(p.stdout, end="", flush=True)
    if p.returncode not in (0, 1):  # 1: the child reported the failure itself
        last = [x for x in p.stderr.splitlines() if x.strip()][-1:] or ["no message"]
        _failed(_label(path, graphs), RuntimeError(f"exit {p.returncode}: {last[0]}"))
    return p.returncode == 0


def measure_one(model_dir: Path, name: str, graphs: bool, runs: int, repeats: int, device: str) -> bool:
    """Time one file of `model_dir` in one mode, here: a step graph (*-step.onnx, model.onnx) or a burst graph."""
    from runtime import Generator
    from runtime.session import SessionConfig

    gen = Generator(model_dir, device=device, burst=False)
    if gen.device != device:
        print("skipped: CUDA did not start", file=sys.stderr)
        return False
    config = SessionConfig(device=device)
    path = model_dir / name
    if name == "model.onnx" or path.stem.endswith("-step"):
        return _time_step(path, gen, config, runs, repeats, graphs)
    return _time_burst(path, gen, config, runs, repeats, graphs)


def _label(path: Path, graphs: bool, what: str = "") -> str:
    return f"{path.stem}{what}{'' if graphs else ', no graphs'}"


def _failed(label: str, e: Exception) -> bool:
    print(f"{label:36} did not run: {str(e).strip().splitlines()[-1][:120]}", flush=True)
    return False


def _time_burst(path: Path, gen, config, runs: int, repeats: int, graphs: bool) -> bool:
    """A burst file's µs a character at batch 1 and 64 (zero noise); False when it did not run."""
    from runtime.session import BoundStepper, load_session

    steps = int(path.stem.rsplit("-", 1)[1])
    manifest = dataclasses.replace(gen.manifest, burst=dataclasses.replace(gen.manifest.burst, file=path.name,
                                                                           steps=steps))
    label = _label(path, graphs)
    try:
        session = load_session(path, dataclasses.replace(config, cuda_graph=graphs), gen.device)
        stepper = BoundStepper(gen.session, manifest, gen.device, session, graphs=graphs)
        for batch in (1, 64):
            stepper.reset(batch)
            ids = np.zeros(batch, np.int64)
            noise = np.zeros((steps, batch, len(gen.itos)), np.float32)
            us = per_call_us(lambda: stepper.burst(ids, noise), max(4, runs * 16 // steps), repeats, warmup=8)
            print(f"{label:36} {batch:5d} {us / steps / batch:8.2f}", flush=True)
    except Exception as e:  # noqa: BLE001 - report the variant that failed, time the others
        return _failed(label, e)
    return True


def _time_step(path: Path, gen, config, runs: int, repeats: int, graphs: bool) -> bool:
    """A step graph's µs a character at batch 1 and 64, and (for a variant) its logits against model.onnx's
    over 64 steps of the same tokens on the same device; False when it did not run."""
    from runtime.session import BoundStepper, load_session

    label = _label(path, graphs, " (step)")
    try:
        session = load_session(path, dataclasses.replace(config, cuda_graph=graphs), gen.device)
        stepper = BoundStepper(session, gen.manifest, gen.device, graphs=graphs)
        if path.name != "model.onnx":
            plain = load_session(gen.path, dataclasses.replace(config, cuda_graph=False), gen.device)
            reference = BoundStepper(plain, gen.manifest, gen.device)
            stepper.reset(2), reference.reset(2)
            tokens = np.random.default_rng(0).integers(0, len(gen.itos), (64, 2))
            diff = max(float(np.abs(stepper.step(t) - reference.step(t)).max()) for t in tokens)
            print(f"{label:36} logits against model.onnx, 64 steps on {gen.device}: max difference {diff:.2e}")
        for batch in (1, 64):
            stepper.reset(batch)
            ids = np.zeros(batch, np.int64)
            us = per_call_us(lambda: stepper.step(ids), runs * 16, repeats, warmup=16)
            print(f"{label:36} {batch:5d} {us / batch:8.2f}", flush=True)
    except Exception as e:  # noqa: BLE001 - report the variant that failed, time the others
        return _failed(label, e)
    return True


def main() -> None:
    p = argparse.ArgumentParser(description="burst-graph variants (see the module docstring)")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--build", action="store_true", help="write the variant files (needs onnx)")
    p.add_argument("--weights", type=Path, default=None, help="with --build: the model's notebook.npz, for the "
                                                               "LSTM-node variants")
    p.add_argument("--runs", type=int, default=60, help="16-step runs' worth of characters per timing")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: a dry run of the timing code")
    p.add_argument("--only", default=None, help="time this one file of --model, in this process (what each child "
                                                "of the timing run does)")
    p.add_argument("--graphs", action=argparse.BooleanOptionalAction, default=True, help="with --only: CUDA graphs")
    args = p.parse_args()
    if args.build:
        for path in build(args.model, args.weights):
            print(path)
    elif args.only:
        sys.exit(0 if measure_one(args.model, args.only, args.graphs, args.runs, args.repeats, args.device) else 1)
    else:
        measure(args.model, args.runs, args.repeats, args.device)


if __name__ == "__main__":
    main()
