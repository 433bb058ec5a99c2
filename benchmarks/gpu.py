"""GPU generation benchmark: the runtime's CUDA path at batch 1 and batch 64, variant by variant.

- step, IOBinding: one `run` a character, h and c kept on the device (two state buffer sets, ping-pong);
- step, IOBinding + CUDA graphs: the same, each state set's run replayed as a captured CUDA graph
  (gpu_graph_id picks it); what top-k and top-p sampling use;
- burst + CUDA graphs: the burst graph (export/burst.py), 16 steps a run with Gumbel-max sampling in the
  graph, so a run uploads noise and downloads 16 ids; what plain temperature sampling uses;
- generate loop: `Generator.generate` as `charlstm generate` runs it (defaults: burst, CUDA graphs).
Exactness rows: the CUDA-graph logits against the plain run's, CUDA against the CPU, and the burst loop's text
against the step loop's for one seed.

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
    """Per-character latency of each variant at batch 1 and 64, then the exactness checks."""
    from runtime import Generator

    rows = []

    def timed_row(variant: str, fn, calls: int, chars_per_call: int) -> None:
        log(f"{dev}: {variant}")
        try:
            rows.append(Row(dev, variant, us_per_char=per_call_us(fn, calls, repeats, warmup=max(3, calls // 4))
                            / chars_per_call))
        except Exception as e:  # noqa: BLE001 - report why one variant failed, keep the others
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            rows.append(Row(dev, variant, note=f"did not run: {first[:160]}"))

    plain = Generator(model_dir, device=device, burst=False, cuda_graph=False)  # DeviceError when CUDA fails
    fast = Generator(model_dir, device=device)  # what charlstm generate runs: burst and graphs on CUDA
    dev = fast.device
    graphs = " + CUDA graphs" if dev == "cuda" else ""
    bursts = [None, None]  # the burst graph's stepper without and with CUDA graphs (CUDA only for the second)
    if fast.manifest.burst is not None:
        bursts[0] = Generator(model_dir, device=device, burst=True, cuda_graph=False).stepper
        bursts[1] = fast.stepper if dev == "cuda" else None
    for batch in BATCHES:
        ids = np.zeros(batch, np.int64)
        plain.stepper.reset(batch)
        timed_row(f"step, IOBinding, batch {batch}", lambda: plain.stepper.step(ids), steps, batch)
        if dev == "cuda":
            fast.stepper.reset(batch)
            timed_row(f"step, IOBinding{graphs}, batch {batch}", lambda: fast.stepper.step(ids), steps, batch)
        if fast.manifest.burst is not None:
            k = fast.manifest.burst.steps
            noise = np.zeros((k, batch, len(fast.itos)), np.float32)
            for label, stepper in ((f"burst ({k} steps a run, sampled in the graph), batch {batch}", bursts[0]),
                                   (f"burst{graphs}, batch {batch}", bursts[1])):
                if stepper is not None:
                    stepper.reset(batch)
                    timed_row(label, lambda: stepper.burst(ids, noise), max(1, steps // k), k * batch)
        for name, top_k in (("generate loop (charlstm generate)", None),
                            ("generate loop, step path (--top-k)", len(fast.itos))):
            timed_row(f"{name}, batch {batch}", lambda: fast.generate("", length=steps, seed=0, num_samples=batch,
                                                                      top_k=top_k), 1, steps * batch)
    by = {r.variant: r for r in rows}
    for r in rows:
        if r.variant.endswith("batch 64") and r.us_per_char:
            b1 = by.get(r.variant.replace("batch 64", "batch 1"))
            if b1 and b1.us_per_char:
                r.note = f"{b1.us_per_char / r.us_per_char:.1f}x batch 1's characters/s"
    log(f"{dev}: exactness checks")
    try:
        rows += exactness(model_dir, plain, fast, device)
    except Exception as e:  # noqa: BLE001 - keep the timings when a check breaks
        rows.append(Row(dev, "check", note=f"did not run: {(str(e).strip().splitlines() or [''])[0][:160]}"))
    return rows


def exactness(model_dir: Path, plain, fast, device: str, steps: int = 200) -> list[Row]:
    """Largest logit difference, CUDA graphs vs plain runs and this device vs the CPU (teacher-forced on the same
    ids), and whether the burst loop's text equals the step loop's for one seed."""
    from runtime import Generator

    rng = np.random.default_rng(0)
    ids = rng.integers(0, len(fast.itos), steps)
    cpu = plain if plain.device == "cpu" else Generator(model_dir, device="cpu")

    def logits(gen):
        gen.stepper.reset(1)
        return np.stack([gen.stepper.step(np.array([i])) for i in ids])

    ref, rows = logits(plain), []
    if fast.device == "cuda":
        rows.append(Row("cuda", "check: CUDA graphs vs plain runs", note=f"max |logit diff| "
                        f"{np.abs(logits(fast) - ref).max():.2e} over {steps} steps"))
    rows.append(Row(plain.device, f"check: {plain.device} vs cpu", note=f"max |logit diff| "
                    f"{np.abs(ref - logits(cpu)).max():.2e} over {steps} steps"))
    if fast.manifest.burst is not None:
        burst = fast if fast.stepper.burst_session is not None else Generator(model_dir, device=device, burst=True)
        a = burst.generate("", length=steps, seed=1)
        b = plain.generate("", length=steps, seed=1)  # the step loop, host-side Gumbel-max on the same draws
        diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
        rows.append(Row(burst.device, "check: burst text vs step text, seed 1",
                        note=f"{steps - len(diff)}/{steps} characters equal"
                        + (f" (first difference at {diff[0]})" if diff else "")))
    return rows


def render(rows: list[Row]) -> str:
    """A plain-text table (the GPU machine may lack rich)."""
    lines = [f"{'device':6}  {'variant':62}  {'us/char':>9}  {'chars/s':>10}  note"]
    for r in rows:
        us = f"{r.us_per_char:9.1f}" if r.us_per_char else f"{'-':>9}"
        cps = f"{r.chars_per_s:10,.0f}" if r.chars_per_s else f"{'-':>10}"
        lines.append(f"{r.device:6}  {r.variant:62}  {us}  {cps}  {r.note}")
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
