"""GPU generation benchmark: runtime's CUDA path (BoundStepper: IOBinding, state kept on the device) at batch 1
and batch 64, plus an experiment the runtime does not do yet: two captured CUDA graphs chosen by `gpu_graph_id`.

Needs no TensorFlow: build the model folder where TensorFlow is, then carry it to the GPU machine.

    python -m benchmarks.models --cache models/bench     # here: prints models/bench/random-v92-e256-u1024-l1/model
    python -m benchmarks.gpu --model models/bench/random-v92-e256-u1024-l1/model   # there: prints the table

On a machine without CUDA it prints why it skipped and exits 0. `--device cpu` runs the same code on the CPU
(IOBinding on host buffers) to check the script itself, not to measure anything.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/gpu.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.timing import Row, per_call_us  # noqa: E402

BATCHES = (1, 64)


def cuda_missing() -> str | None:
    """Why CUDA cannot run here, or None when ONNX Runtime offers its CUDA provider."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed (pip install onnxruntime-gpu)"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return f"this onnxruntime ({ort.__version__}) has no CUDA provider (pip install onnxruntime-gpu)"
    return None


def measure(model_dir: Path, device: str = "cuda", steps: int = 500, repeats: int = 5, log=lambda m: None
            ) -> list[Row]:
    """Per-character latency of the stepper alone, of the whole generate loop, and of CUDA graphs."""
    from runtime import Generator
    from runtime.session import BoundStepper

    rows = []
    gen = Generator(model_dir, device=device)  # --device cuda: DeviceError (one line) when CUDA does not start
    stepper = gen.stepper if isinstance(gen.stepper, BoundStepper) else BoundStepper(gen.session, gen.manifest,
                                                                                     gen.device)
    for batch in BATCHES:
        log(f"{gen.device}: IOBinding step, batch {batch}")
        stepper.reset(batch)
        ids = np.zeros(batch, np.int64)
        us = per_call_us(lambda: stepper.step(ids), steps, repeats) / batch
        rows.append(Row(gen.device, f"IOBinding step (BoundStepper), batch {batch}", us_per_char=us))
    for batch in BATCHES:
        log(f"{gen.device}: generate loop, batch {batch}")
        us = per_call_us(lambda: gen.generate("", length=steps, seed=0, num_samples=batch), 1, repeats, warmup=1)
        rows.append(Row(gen.device, f"generate loop (step + sample on host), batch {batch}",
                        us_per_char=us / steps / batch))
    if gen.device == "cuda":
        for batch in BATCHES:
            log(f"cuda: captured CUDA graphs, batch {batch}")
            rows.append(cuda_graph_row(gen.path, gen.manifest, batch, steps, repeats))
    for i in range(0, len(rows), 2):
        b1, b64 = rows[i], rows[i + 1]
        if b1.us_per_char and b64.us_per_char:
            b64.note = f"{b1.us_per_char / b64.us_per_char:.1f}x batch 1's characters/s"
    return rows


def cuda_graph_row(path: Path, manifest, batch: int, steps: int, repeats: int) -> Row:
    """Two state buffer sets (ping-pong) and one captured CUDA graph per set, picked by the run option
    gpu_graph_id: a step is one graph replay plus the token upload and the logits download."""
    import onnxruntime as ort

    variant = f"experiment: 2 CUDA graphs + IOBinding, batch {batch}"
    try:
        session = ort.InferenceSession(str(path), providers=[("CUDAExecutionProvider", {"enable_cuda_graph": "1"})])

        def buffer(shape, dtype):
            value = ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, "cuda", 0)
            value.update_inplace(np.zeros(shape, dtype))
            return value

        state = [manifest.layers, batch, manifest.units]
        sets = [(buffer(state, np.float32), buffer(state, np.float32)) for _ in range(2)]
        token, logits = buffer([batch], np.int64), buffer([batch, len(manifest.vocab)], np.float32)
        bindings, options = [], []
        for k in (0, 1):
            b = session.io_binding()
            b.bind_ortvalue_input(manifest.inputs["token"], token)
            b.bind_ortvalue_input(manifest.inputs["h"], sets[k][0])
            b.bind_ortvalue_input(manifest.inputs["c"], sets[k][1])
            b.bind_ortvalue_output(manifest.outputs["logits"], logits)  # on the device: graphs need fixed addresses
            b.bind_ortvalue_output(manifest.outputs["h"], sets[1 - k][0])
            b.bind_ortvalue_output(manifest.outputs["c"], sets[1 - k][1])
            ro = ort.RunOptions()
            ro.add_run_config_entry("gpu_graph_id", str(k + 1))
            bindings.append(b)
            options.append(ro)
        ids, k = np.zeros(batch, np.int64), [0]

        def step():
            token.update_inplace(ids)
            session.run_with_iobinding(bindings[k[0]], options[k[0]])
            k[0] = 1 - k[0]
            return logits.numpy()  # the only copy back, as the runtime's stepper

        for _ in range(6):  # ORT runs a graph id normally a few times before it captures it
            step()
        return Row("cuda", variant, us_per_char=per_call_us(step, steps, repeats) / batch)
    except Exception as e:  # noqa: BLE001 - an experiment: report why it did not run, keep the other rows
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return Row("cuda", variant, note=f"did not run: {first[:160]}")


def render(rows: list[Row]) -> str:
    """A plain-text table (the GPU machine may lack rich)."""
    lines = [f"{'device':6}  {'variant':58}  {'us/char':>9}  {'chars/s':>10}  note"]
    for r in rows:
        us = f"{r.us_per_char:9.1f}" if r.us_per_char else f"{'-':>9}"
        cps = f"{r.chars_per_s:10,.0f}" if r.chars_per_s else f"{'-':>10}"
        lines.append(f"{r.device:6}  {r.variant:58}  {us}  {cps}  {r.note}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description="runtime's CUDA path at batch 1 and 64 (see the module docstring)")
    p.add_argument("--model", type=Path, required=True,
                   help="model folder (charlstm export, or python -m benchmarks.models)")
    p.add_argument("--steps", type=int, default=500, help="characters per timed run")
    p.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cpu only checks this script on a machine without a GPU")
    args = p.parse_args()
    if args.device == "cuda" and (why := cuda_missing()):
        print(f"skipped: {why}", file=sys.stderr)
        return
    from charlstm.errors import UserError
    from runtime.errors import DeviceError
    try:
        rows = measure(args.model, args.device, args.steps, args.repeats,
                       log=lambda m: print(m, file=sys.stderr, flush=True))
    except DeviceError as e:  # CUDA listed but not starting (no GPU, no driver): a skip, not a crash
        print(f"skipped: {e}", file=sys.stderr)
        return
    except UserError as e:  # a bad --model: one line, as the CLI would
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    print(render(rows))


if __name__ == "__main__":
    main()
