"""The host-side cost of plain temperature sampling per character: one draw a step against a block of steps.

The step loop (runtime/generator.py) draws Gumbel noise for NOISE_BLOCK steps at once and adds one row per step;
`next_ids` draws a step's noise on each call. Both consume the same uniforms in the same order (the same text).

    python -m benchmarks.sampling [--vocab 92] [--batch 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.timing import round_robin, timed  # noqa: E402
from runtime.generator import NOISE_BLOCK  # noqa: E402
from runtime.sampling import SamplingParams, next_ids, noise_rows, row_generators  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description="per-character sampling cost (see the module docstring)")
    p.add_argument("--vocab", type=int, default=92)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=9)
    args = p.parse_args()
    rngs, params = row_generators(0, args.batch), SamplingParams(temperature=0.5)
    logits = np.random.default_rng(1).standard_normal((args.batch, args.vocab)).astype(np.float32)
    rows = noise_rows(rngs, args.vocab, 0.5, 10**9, NOISE_BLOCK)

    def blocked():
        np.argmax(logits + next(rows), axis=-1).astype(np.int64)

    variants = {"next_ids (one draw a step)": (timed(lambda: next_ids(logits, params, rngs)), 20 * NOISE_BLOCK),
                f"a block of {NOISE_BLOCK} steps' noise": (timed(blocked), 20 * NOISE_BLOCK)}
    for name, us in round_robin(variants, args.repeats, gap=0).items():
        print(f"{name:32} {us:6.2f} µs a step of batch {args.batch} (vocab {args.vocab})")


if __name__ == "__main__":
    main()
