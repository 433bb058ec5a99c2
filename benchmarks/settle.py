"""How long a variant takes to reach its steady state after the bench's pause between timed runs.

`benchmarks.timing.round_robin` sleeps GAP seconds before each timed run (so that no variant runs beside the
previous one's spinning threads). This shows what the first calls after such a pause cost: for the numpy floor,
the runtime's float32 step and its int8 step, each round sleeps the gap, then times `--segments` back-to-back
segments of `--calls` calls, in turns; it prints each segment's median µs per call over the rounds. Segments
after the first that run faster are the transient that round_robin's SETTLE calls leave out of the timed run.

    python -m benchmarks.settle --model ~/.cache/charlstm/bench/random-v92-e256-u1024-l1/model
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/settle.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.cpu import floor_child, model_shape  # noqa: E402
from benchmarks.timing import GAP, cpu_count, describe, machine, timed  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description="the first calls after the bench's pause (see the module docstring)")
    p.add_argument("--model", type=Path, required=True, help="model folder (the bench's notebook-size model)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime and numpy threads; 0 = one per core")
    p.add_argument("--calls", type=int, default=200, help="calls per segment (the bench times 200 a run)")
    p.add_argument("--segments", type=int, default=5, help="segments timed back to back after each pause")
    p.add_argument("--repeats", type=int, default=9, help="rounds; the median of each segment is reported")
    p.add_argument("--gap", type=float, default=GAP, help="seconds of sleep before each round's segments")
    args = p.parse_args()
    threads = args.threads or cpu_count()
    from runtime import Generator

    shape = model_shape(args.model)
    info = machine()
    floor = floor_child(shape, threads)
    try:
        variants = {"numpy floor": floor}
        for int8 in (False, True) if (args.model / "model.int8.onnx").is_file() else (False,):
            gen = Generator(args.model, device="cpu", int8=int8, threads=threads, spinning=True)
            gen.stepper.reset(1)
            variants[f"{'int8' if int8 else 'float32'} step, spinning"] = timed(
                lambda g=gen: g.stepper.step(np.zeros(1, np.int64)))
        for fn in variants.values():
            fn(args.calls)  # warm-up
        segments: dict[str, list[list[float]]] = {name: [] for name in variants}
        for r in range(args.repeats):
            print(f"round {r + 1} of {args.repeats}", file=sys.stderr, flush=True)
            for name, fn in variants.items():
                time.sleep(args.gap)
                segments[name].append([fn(args.calls) for _ in range(args.segments)])
    finally:
        floor.close()
    print(f"{threads} thread(s); {args.gap} s pause, then {args.segments} segments of {args.calls} calls; "
          f"median over {args.repeats} rounds, µs per call; {describe(info)}")
    for name, runs in segments.items():
        medians = np.median(np.array(runs), axis=0)
        later = float(np.median(medians[1:])) if len(medians) > 1 else float(medians[0])
        print(f"{name:24} " + " ".join(f"{x:7.1f}" for x in medians) + f"   first / later: {medians[0] / later:.2f}")


if __name__ == "__main__":
    main()
