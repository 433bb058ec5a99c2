"""Where a run's time goes on the GPU: every CUDA kernel ONNX Runtime launches, from PyTorch's profiler.

PyTorch's profiler reads CUPTI, which sees all kernels in the process, those inside replayed CUDA graphs too,
so it can time ONNX Runtime's kernels. Needs torch with CUDA (the GPU machine has it; nothing else here does).

    python -m benchmarks.gpu_profile --model DIR [--batch 1] [--runs 50]

Prints, for the burst graph and the step graph (both with CUDA graphs): wall time per run, kernel time per
run, and the kernels by total time with their count per run.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def kernels(prof) -> dict[str, list[float]]:
    """Kernel name -> durations in µs, from a finished torch profiler."""
    out = defaultdict(list)
    for e in prof.events():
        kind = str(getattr(e, "device_type", ""))
        if not kind.endswith("CUDA"):
            continue
        us = getattr(e, "device_time", None) or getattr(e, "cuda_time", None) or (e.time_range.end -
                                                                                  e.time_range.start)
        out[e.name].append(float(us))
    return out


def profile(name: str, call, runs: int, chars_per_run: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for _ in range(10):  # ORT captures a graph after a few plain runs
        call()
    start = time.perf_counter()
    for _ in range(runs):
        call()
    wall = (time.perf_counter() - start) / runs * 1e6
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            call()
    by = kernels(prof)
    total = sum(sum(v) for v in by.values()) / runs
    print(f"\n{name}: wall {wall:.1f} µs a run ({wall / chars_per_run:.1f} a character), kernels {total:.1f} µs "
          f"a run ({total / chars_per_run:.1f} a character), {sum(len(v) for v in by.values()) / runs:.0f} "
          "kernels a run")
    print(f"{'µs/run':>8} {'share':>6} {'per run':>7}  kernel")
    for kname, v in sorted(by.items(), key=lambda kv: -sum(kv[1]))[:25]:
        print(f"{sum(v) / runs:8.1f} {sum(v) / runs / total:6.1%} {len(v) / runs:7.1f}  {kname[:110]}")


def main() -> None:
    p = argparse.ArgumentParser(description="CUDA kernels of the burst and step graphs (see the docstring)")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--runs", type=int, default=50)
    args = p.parse_args()
    try:
        import torch
        if not torch.cuda.is_available():
            raise ImportError("no CUDA device")
    except ImportError as e:
        print(f"skipped: needs torch with CUDA ({e})", file=sys.stderr)
        return
    from runtime import Generator

    gen = Generator(args.model, device="cuda", burst=True)
    st, b = gen.stepper, args.batch
    st.reset(b)
    ids = np.zeros(b, np.int64)
    if gen.manifest.burst is not None:
        k = gen.manifest.burst.steps
        noise = np.zeros((k, b, len(gen.itos)), np.float32)
        profile(f"burst graph + CUDA graphs, batch {b}", lambda: st.burst(ids, noise), args.runs, k * b)
    profile(f"step graph + CUDA graphs, batch {b}", lambda: st.step(ids), args.runs, b)


if __name__ == "__main__":
    main()
