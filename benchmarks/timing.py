"""What every benchmark returns (a Row), how a steady state is timed, and what the machine was doing meanwhile."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from charlstm.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


class BenchError(UserError):
    exit_code = 1  # a measuring child process failed: nothing to compare


@dataclass
class Row:
    """One line of the table. Times are per generated character; a batch of 64 makes 64 characters per step."""

    device: str
    variant: str
    threads: int | None = None  # intra-op threads (ONNX Runtime) or BLAS threads (numpy); None: not applicable
    us_per_char: float | None = None  # None: skipped or not a per-character figure (see note)
    note: str = ""
    vs_floor: float | None = None  # time / the numpy floor's time: at most 1.0 meets target 1
    speedup_vs_notebook: float | None = None  # the notebook's time / this time: target 3 wants 30 (10 cold)
    extra: dict = field(default_factory=dict)  # raw figures for --json (seconds per run, peak RSS)

    @property
    def chars_per_s(self) -> float | None:
        return 1e6 / self.us_per_char if self.us_per_char else None

    def as_dict(self) -> dict:
        return {**asdict(self), "chars_per_s": self.chars_per_s}


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def per_call_us(fn, steps: int, repeats: int, warmup: int | None = None) -> float:
    """Median over `repeats` runs of the µs per call of fn(), after `warmup` untimed calls (default steps // 4)."""
    for _ in range(max(5, steps // 4) if warmup is None else warmup):
        fn()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        runs.append((time.perf_counter() - start) / steps * 1e6)
    return median(runs)


def timed(call):
    """fn(n) -> µs per call of `call()` over n calls: one timed repeat, for round_robin."""
    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            call()
        return (time.perf_counter() - start) / n * 1e6
    return run


GAP = 0.3  # seconds: OpenBLAS workers busy-wait ~0.1 s after their work; ONNX Runtime's and TensorFlow's less
SETTLE = 0.03  # seconds of untimed calls after the gap: the first calls after it can run slower (benchmarks.settle)


def round_robin(variants: dict, repeats: int, log=lambda m: None, gap: float = GAP, settle: float = SETTLE,
                runs_out: dict | None = None) -> dict[str, float]:
    """variants: name -> (fn, steps) with fn(steps) -> µs. Warm each up, then time them in turns, `repeats`
    rounds, and return each one's median: background load hits every variant alike, so ratios hold up.
    `gap` seconds of sleep before each timed run let the previous variant's idle threads stop spinning
    (OpenBLAS, ONNX Runtime and TensorFlow workers busy-wait for a while after their work ends): without it a
    variant ran beside its predecessor's spinning threads, which slowed the numpy floor 1.5-1.7x and kept
    the second core awake for whatever came next (`python -m benchmarks.spinning --gap 0` against `--gap 0.3`).
    Then `settle` seconds of untimed calls, so that each timed run is the steady state: after the gap the
    first 200 calls ran slower than the next 800: the float32 step's 1.30-1.31x, the floor's 1.04-1.15x
    (`python -m benchmarks.settle`, two runs: benchmarks/results/settle-epyc2-2026-11-27.txt)."""
    wall: dict[str, float] = {}  # seconds per unit of fn's argument, for the settle calls

    def call(name: str, n: int) -> float:
        start = time.perf_counter()
        us = variants[name][0](n)
        wall[name] = (time.perf_counter() - start) / n
        return us

    for name, (fn, steps) in variants.items():
        log(f"warming up: {name}")
        call(name, max(5, steps // 4))
    runs: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(repeats):
        log(f"round {r + 1} of {repeats}")
        for name, (fn, steps) in variants.items():
            if gap:
                time.sleep(gap)
            if settle:
                fn(max(1, round(settle / max(wall[name], 1e-9))))
            runs[name].append(call(name, steps))
    if runs_out is not None:  # every timed run, in round order, for ratios paired round by round
        runs_out.update(runs)
    return {name: median(values) for name, values in runs.items()}


def paired(runs: dict[str, list[float]], name: str, base: str) -> str:
    """`name`'s time over `base`'s, round by round (each pair timed moments apart): median and quartiles. It
    shows how far a ratio of medians holds on a machine whose speed drifts during the run."""
    import numpy as np
    ratios = [a / b for a, b in zip(runs[name], runs[base])]
    q1, q2, q3 = np.percentile(ratios, [25, 50, 75])
    return f"{q2:.2f} (quartiles {q1:.2f}-{q3:.2f}, {len(ratios)} rounds)"


class Child:
    """A measuring child process (its own BLAS threads, or TensorFlow kept out of this process).

    It prints one JSON line when ready, then answers each line 'N' on stdin with the µs per call over N calls.
    """

    def __init__(self, cmd: list[str], env: dict | None = None):
        self.cmd, self.err = cmd, tempfile.TemporaryFile(mode="w+")
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True,
                                  cwd=ROOT, env=env)
        self.info = json.loads(self._line())

    def __call__(self, n: int) -> float:
        self.p.stdin.write(f"{n}\n")
        self.p.stdin.flush()
        return float(self._line())

    def _line(self) -> str:
        line = self.p.stdout.readline()
        if not line:
            self.p.wait()
            self.err.seek(0)
            lines = [x for x in self.err.read().splitlines() if x.strip()]
            raise BenchError(f"{' '.join(self.cmd)[:160]} failed (exit {self.p.returncode}): "
                            f"{lines[-1][:300] if lines else 'no message'}")
        return line

    def close(self) -> None:
        try:
            self.p.stdin.close()
        except BrokenPipeError:  # it has already gone
            pass
        self.p.wait()
        self.err.close()


def serve(fn) -> None:
    """The child's side of Child: answer each 'N' line on stdin with fn(N)."""
    import sys
    for line in sys.stdin:
        print(fn(int(line)), flush=True)


def cpu_count() -> int:
    """The cores this process may run on (a container or taskset may allow fewer than the machine has)."""
    from runtime.session import usable_cores
    return usable_cores()


def machine() -> dict:
    """The conditions of the run: timings only compare within one run, and a busy machine says so here."""
    import numpy as np
    info = {"cpus": cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "numpy": np.__version__, "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")}
    try:
        import onnxruntime as ort
        info["onnxruntime"] = ort.__version__
    except ImportError:
        pass
    if hasattr(os, "getloadavg"):
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    return info


def describe(info: dict) -> str:
    """One line for the table's caption."""
    load = info.get("load_average_1min")
    busy = load is not None and load > 0.5
    parts = [f"{info['cpus']} CPU(s)",
             f"load average {load}" + (" before the run: other work shares the cores, timings are noisy; compare "
                                       "ratios within this table" if busy else "") if load is not None else "",
             f"OPENBLAS_CORETYPE={info['OPENBLAS_CORETYPE']}" if info.get("OPENBLAS_CORETYPE") else "",
             f"numpy {info['numpy']}", f"onnxruntime {info.get('onnxruntime', 'absent')}"]
    return "; ".join(p for p in parts if p)


def fill_ratios(rows: list[Row]) -> None:
    """vs_floor against the first 'numpy floor' row, speedup_vs_notebook against the 'notebook loop' row."""
    floor = next((r.us_per_char for r in rows if r.variant.startswith("numpy floor") and r.us_per_char), None)
    notebook = next((r.us_per_char for r in rows if r.variant.startswith("notebook loop") and r.us_per_char), None)
    for r in rows:
        if r.us_per_char is None or r.variant.startswith("cold") or r.variant.startswith("peak"):
            continue
        if floor:
            r.vs_floor = r.us_per_char / floor
        if notebook:
            r.speedup_vs_notebook = notebook / r.us_per_char
