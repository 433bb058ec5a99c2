"""Spinning ONNX Runtime workers or sleeping ones, on an idle machine and beside busy processes.

With spinning off, a worker sleeps between parallel sections and the next step has to wake it; with spinning on,
it busy-waits and takes the next step's work at once, but burns a core that other work could use. This times the
runtime's own batch-1 step and generate loop both ways, against the numpy floor with the same thread count, in
turns within one run; `--busy N` first starts N processes that spin on a core each, for the whole run.

    python -m benchmarks.spinning --model ~/.cache/charlstm/bench/random-v92-e256-u1024-l1/model --busy 0
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/spinning.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.cpu import floor_child, model_shape  # noqa: E402
from benchmarks.timing import GAP, SETTLE, Child, cpu_count, describe, machine, round_robin, timed  # noqa: E402

BUSY_CODE = "while True: pass"


def main() -> None:
    p = argparse.ArgumentParser(description="ONNX Runtime spinning on and off (see the module docstring)")
    p.add_argument("--model", type=Path, required=True, help="model folder (the bench's notebook-size model)")
    p.add_argument("--busy", type=int, default=0, help="processes spinning on a core each during the run")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime and numpy threads; 0 = one per core")
    p.add_argument("--steps", type=int, default=300, help="steps per timed run")
    p.add_argument("--repeats", type=int, default=11, help="rounds; the median is reported")
    p.add_argument("--gap", type=float, default=GAP, help="seconds of sleep before each timed run (0: none, to see "
                                                         "what the spinning threads of one variant do to the next)")
    p.add_argument("--settle", type=float, default=SETTLE, help="seconds of untimed calls after the gap (0: none)")
    args = p.parse_args()
    threads = args.threads or cpu_count()
    from runtime import Generator
    from runtime.manifest import load_manifest

    m = load_manifest(args.model)
    shape = model_shape(args.model)
    info = machine()
    busy = [subprocess.Popen([sys.executable, "-c", BUSY_CODE]) for _ in range(args.busy)]
    children: list[Child] = []
    try:
        children.append(floor_child(shape, threads))
        variants = {"numpy floor": (children[-1], args.steps)}
        for spin in (False, True):
            gen = Generator(args.model, device="cpu", threads=threads, spinning=spin)
            gen.stepper.reset(1)
            name = "spinning" if spin else "no spinning"
            variants[f"step, {name}"] = (timed(lambda g=gen: g.stepper.step(np.zeros(1, np.int64))), args.steps)
            variants[f"generate loop, {name}"] = (
                lambda n, g=gen: timed(lambda: g.generate("", length=n, seed=0))(1) / n, args.steps)
            if m.burst is not None:
                burst = Generator(args.model, device="cpu", threads=threads, spinning=spin, burst=True)
                variants[f"burst loop, {name}"] = (
                    lambda n, g=burst: timed(lambda: g.generate("", length=n, seed=0))(1) / n, args.steps)
        medians = round_robin(variants, args.repeats, log=lambda s: print(s, file=sys.stderr, flush=True),
                              gap=args.gap, settle=args.settle)
    finally:
        for child in children:
            child.close()
        for b in busy:
            b.kill()
            b.wait()
    floor = medians["numpy floor"]
    print(f"{threads} thread(s), {args.busy} busy process(es); {describe(info)}")
    for name, us in medians.items():
        print(f"{name:28} {us:8.1f} µs/char  {us / floor:5.2f}x the floor")


if __name__ == "__main__":
    main()
