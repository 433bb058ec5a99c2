"""How fast charlstm generates, side by side with the notebook, in one table. Run from a checkout:

    python benchmarks/bench.py                      # the CPU table: a random model of the notebook's shape
    python benchmarks/bench.py --cold               # + whole processes from a cold start, and peak memory
    python benchmarks/bench.py --baseline ../old    # + another checkout's step and loop, timed in turns
    python benchmarks/bench.py --device cuda        # the GPU table (no TensorFlow needed there)

Method: every steady-state variant is timed in turns, `--repeats` rounds (each round starting one variant later),
and the median is reported, so that
background load hits all variants alike and their ratios hold. Before each timed run the bench sleeps 0.3 s (the
previous variant's worker threads busy-wait a while after their work) and makes 30 ms of untimed calls (the
first calls after a pause run slower). The numpy floor is one input row times each layer's weights: the bytes a
step cannot avoid reading. Speed depends on the shapes, not the weights, so the default model is built once
from random weights with the project's own export (needs the `export` extra) and cached.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's charlstm, whatever is installed

from charlstm.runtime.machine import load_average, machine, versions  # noqa: E402

NOTEBOOK = ROOT / "benchmarks" / "notebook.py"
GAP, SETTLE = 0.3, 0.03  # seconds: the pause before each timed run, then the untimed calls
BATCH = 64
SHAPE = dict(vocab_size=92, embedding_dim=256, units=1024, layers=1)  # the notebook's Quijote model

# A child process that times one variant on request: it prints one JSON line when ready, then answers each line
# N on stdin with the microseconds per call over N calls. The floor runs in one so that its BLAS threads are set
# before numpy loads; the generate loops run in one so that a --baseline checkout's code can be timed too.
CHILD = r"""
import json, sys, time
kind, args = sys.argv[1], json.loads(sys.argv[2])
def timed(call):
    def run(n):
        start = time.perf_counter()
        for _ in range(n):
            call()
        return (time.perf_counter() - start) / n * 1e6
    return run
if kind == "floor":
    import numpy as np
    rng = np.random.default_rng(0)
    pairs = [(rng.standard_normal((1, r), dtype=np.float32), rng.standard_normal((r, c), dtype=np.float32))
             for r, c in args["shapes"]]
    run = timed(lambda: [x @ w for x, w in pairs])
    info = {"numpy": np.__version__}
else:
    sys.path.insert(0, args["root"])
    try:
        from charlstm.runtime import Generator
    except ImportError:  # a checkout from before the charlstm namespace
        from runtime import Generator
    import numpy as np
    gen = Generator(args["model"], device="cpu", threads=args["threads"], int8=args["int8"], spinning=args["spin"])
    if kind == "step":
        gen.stepper.reset(args["batch"])
        ids = np.zeros(args["batch"], np.int64)
        step = timed(lambda: gen.stepper.step(ids))
        run = lambda n: step(n) / args["batch"]
    else:  # the generate loop, per character
        run = lambda n: timed(lambda: "".join(gen.stream("", length=n, seed=0)))(1) / n
    info = {"spinning": gen.spinning_note}
print(json.dumps(info), flush=True)
for line in sys.stdin:
    print(run(int(line)), flush=True)
"""


class Child:
    def __init__(self, kind: str, args: dict, env: dict | None = None, cmd: list[str] | None = None):
        self.err = tempfile.TemporaryFile(mode="w+")
        self.cmd = cmd or [sys.executable, "-c", CHILD, kind, json.dumps(args)]
        self.p = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err,
                                  text=True, cwd=ROOT, env=env)
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
            said = [x for x in self.err.read().splitlines() if x.strip()]
            sys.exit(f"error: a measuring process failed (exit {self.p.returncode}): {said[-1] if said else ''}")
        return line

    def close(self) -> None:
        self.p.stdin.close()
        self.p.wait()


def median(values: list[float]) -> float:
    return float(np.median(values))


def round_robin(variants: dict, repeats: int, log) -> dict[str, list[float]]:
    """name -> (fn, calls) with fn(n) -> µs per character: every timed run, by round."""
    wall = {}
    for name, (fn, calls) in variants.items():
        log(f"warming up: {name}")
        start = time.perf_counter()
        fn(max(5, calls // 4))
        wall[name] = (time.perf_counter() - start) / max(5, calls // 4)
    runs = {name: [] for name in variants}
    names = list(variants)
    for r in range(repeats):
        log(f"round {r + 1} of {repeats}")
        for name in names[r % len(names):] + names[:r % len(names)]:  # each round starts one later: no variant
            fn, calls = variants[name]                                  # always follows the same neighbour
            time.sleep(GAP)
            fn(max(1, round(SETTLE / max(wall[name], 1e-9))))
            runs[name].append(fn(calls))
    return runs


def bench_model(cache: Path, log) -> tuple[Path, Path]:
    """(model folder, notebook weights .npz) of a random-weight model of the notebook's shape, built once."""
    folder = cache / "random-v{vocab_size}-e{embedding_dim}-u{units}-l{layers}".format(**SHAPE)
    model_dir, npz = folder / "model", folder / "notebook.npz"
    if (model_dir / "model.int8.onnx").is_file() and npz.is_file():
        return model_dir, npz
    from charlstm.export.export import export_model
    from charlstm.training.config import ModelConfig
    from charlstm.training.model import build_model, get_weights
    log(f"building a random-weight model of the notebook's shape in {folder} (once; it is reused)")
    chars = sorted(set("\n !\"'(),-.0123456789:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                       "¡«»¿ÁÉÍÑÓÚàáéíïñóúü—‘’“”#$%&*+"))[:SHAPE["vocab_size"]]
    text = "".join(np.random.default_rng(0).choice(chars, 4000))
    mc = ModelConfig(**SHAPE, dropout=0.0, recurrent_dropout=0.0)
    model = build_model(mc)
    w = get_weights(model)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "notebook.tmp.npz", vocab=np.array(chars), embedding=w.embedding, kernel_0=w.kernels[0],
             recurrent_kernel_0=w.recurrent_kernels[0], bias_0=w.biases[0], dense_kernel=w.dense_kernel,
             dense_bias=w.dense_bias)
    stoi = {ch: i for i, ch in enumerate(chars)}
    export_model(model, mc, chars, model_dir, name="bench", force=True, int8=True, val_text=text, log=log,
                 provenance={"source": "benchmarks/bench.py", "weights": "random"},
                 parity_text=np.array([stoi[ch] for ch in text[:128]], np.int64))
    os.replace(folder / "notebook.tmp.npz", npz)
    return model_dir, npz


def cpu_variants(model_dir: Path, npz: Path, threads: int, steps: int, baseline: Path | None, children: list,
                 only: str | None = None, processes: int = 1):
    from charlstm.runtime.manifest import load_manifest
    m = load_manifest(model_dir)
    shapes = [((m.embedding_dim if i == 0 else m.units) + m.units, 4 * m.units) for i in range(m.layers)]
    blas = {**os.environ, **dict.fromkeys(("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"),
                                          str(threads))}

    variants = {}

    def add(name: str, calls: int, kind: str, env=None, cmd=None, **args) -> None:
        if only and not re.search(only, name) and kind != "floor":
            return
        # Each variant runs in `processes` processes, taken in turns by round: a process's memory placement
        # moves its speed by several percent on a virtual machine, and that should not decide a ratio.
        mine = [Child(kind, args, env, cmd) for _ in range(processes)]
        children.extend(mine)
        turn = iter(range(1 << 30))
        variants[name.format(info=mine[0].info)] = (lambda n: mine[next(turn) % len(mine)](n), calls)

    label = " + ".join(f"1x{r} @ {r}x{c}" for r, c in shapes)
    add(f"numpy floor: {label} float32", steps, "floor", blas, shapes=shapes)
    common = dict(model=str(model_dir), threads=threads, spin=True)
    roots = [("", ROOT)] + ([(f"baseline {baseline.name}: ", baseline.resolve())] if baseline else [])
    for prefix, root in roots:
        add(f"{prefix}ONNX float32 step, batch 1", steps, "step", root=str(root), int8=False, batch=1, **common)
        add(f"{prefix}generate loop float32, batch 1", steps, "loop", root=str(root), int8=False, **common)
    here = dict(root=str(ROOT), **common)
    if (model_dir / "model.int8.onnx").is_file():
        add("ONNX int8 step, batch 1", steps, "step", int8=True, batch=1, **here)
        add("generate loop int8, batch 1", steps, "loop", int8=True, **here)
    for int8 in (False, True) if (model_dir / "model.int8.onnx").is_file() else (False,):
        add(f"ONNX {'int8' if int8 else 'float32'} step, batch {BATCH} (per character)", max(5, steps // 8),
            "step", int8=int8, batch=BATCH, **here)
    add("generate loop float32, batch 1, sleeping workers", steps, "loop", int8=False, **{**here, "spin": False})
    import importlib.util
    if importlib.util.find_spec("tensorflow") and npz.is_file():  # the notebook's weights come with the bench model
        add("the notebook's loop ({info[keras]} eager + tf.random.categorical)", max(10, steps // 2), "notebook",
            cmd=[sys.executable, str(NOTEBOOK), str(npz), "--serve"])
    return variants


def cold_start(model_dir: Path, npz: Path, runs: int, length: int, log) -> list[tuple[str, float, str]]:
    """Whole processes, `length` characters each: charlstm generate against the notebook as a script."""
    launcher = ("import json, os, subprocess, sys, time\nstart = time.perf_counter()\n"
                "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)\n_, status, usage = os.wait4(p.pid, 0)\n"
                "print(json.dumps({'s': time.perf_counter() - start, 'code': os.waitstatus_to_exitcode(status), "
                "'kb': usage.ru_maxrss}))")
    cmds = {"charlstm generate": [sys.executable, "-m", "charlstm", "generate", "--model", str(model_dir),
                                  "--length", str(length), "--device", "cpu", "--seed", "0"]}
    if npz.is_file():
        cmds["the notebook as a script"] = [sys.executable, str(NOTEBOOK), str(npz), "--length", str(length)]
    times, peak = {k: [] for k in cmds}, 0
    for i in range(runs + 1):  # the first round warms the disk cache and is not counted
        log(f"cold start round {i + 1} of {runs + 1}")
        for name, cmd in cmds.items():
            out = json.loads(subprocess.run([sys.executable, "-c", launcher, *cmd], capture_output=True, text=True,
                                            cwd=ROOT).stdout.strip().splitlines()[-1])
            if out["code"] != 0:
                sys.exit(f"error: {' '.join(cmd)[:120]} failed (exit {out['code']})")
            if i:
                times[name].append(out["s"])
            if name == "charlstm generate":
                peak = max(peak, out["kb"])
    g = median(times["charlstm generate"])
    note = f"{g:.2f} s, median of {runs}"
    if times.get("the notebook as a script"):
        n = median(times["the notebook as a script"])
        note += f"; {n / g:.1f}x faster than the notebook as a script ({n:.2f} s)"
    return [(f"cold start, {length} characters: charlstm generate (whole process)", g / length * 1e6, note),
            ("peak memory of charlstm generate (MB)", peak / 1024, "MB")]


def gpu_rows(model_dir: Path, steps: int, repeats: int, log) -> list[tuple[str, float, str]]:
    """The CUDA path at batch 1 and 64: step and burst graphs, with and without CUDA graphs, and the loop."""
    from charlstm.runtime import Generator
    rows = []

    def time_it(name, fn, calls, chars):
        log(name)
        fn()
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            runs.append((time.perf_counter() - start) / (calls * chars) * 1e6)
        rows.append((name, median(runs), ""))

    plain = Generator(model_dir, device="cuda", burst=False, cuda_graph=False)
    fast = Generator(model_dir, device="cuda")  # what charlstm generate runs: burst graph and CUDA graphs
    k = fast.manifest.burst.steps if fast.manifest.burst else 0
    for batch in (1, BATCH):
        ids = np.zeros(batch, np.int64)
        for label, gen in (("step graph, IOBinding", plain), ("step graph, IOBinding + CUDA graphs", fast)):
            gen.stepper.reset(batch)
            time_it(f"{label}, batch {batch}", lambda g=gen: g.stepper.step(ids), steps, batch)
        if k:
            noise = np.zeros((k, batch, len(fast.itos)), np.float32)
            fast.stepper.reset(batch)
            time_it(f"burst graph ({k} steps) + CUDA graphs, batch {batch}",
                    lambda: fast.stepper.burst(ids, noise), max(1, steps // k), k * batch)
        time_it(f"generate loop (charlstm generate), batch {batch}",
                lambda: fast.generate_batch("", length=steps, seed=0, num_samples=batch), 1, steps * batch)
    rng = np.random.default_rng(0).integers(0, len(fast.itos), 200)
    cpu = Generator(model_dir, device="cpu")
    logits = lambda g: (g.stepper.reset(1), np.stack([g.stepper.step(np.array([i])) for i in rng]))[1]  # noqa: E731
    rows.append(("check: CUDA graphs vs plain runs, max |logit diff|", float(np.abs(logits(fast) - logits(plain)).max()), ""))
    rows.append(("check: CUDA vs CPU, max |logit diff|", float(np.abs(logits(plain) - logits(cpu)).max()), ""))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description="charlstm's generation speed in one table (see the module docstring)")
    p.add_argument("--model", type=Path, help="a model folder to time (default: a random model of the "
                                             "notebook's shape, built into --cache)")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "charlstm" / "bench")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--steps", type=int, default=200, help="characters per timed run")
    p.add_argument("--repeats", type=int, default=7, help="timed runs per variant, taken in turns")
    p.add_argument("--threads", type=int, default=0, help="threads (0: one per usable core)")
    p.add_argument("--cold", action="store_true", help="also time whole processes from a cold start")
    p.add_argument("--cold-runs", type=int, default=3)
    p.add_argument("--baseline", type=Path, help="another checkout whose step and generate loop to time in turns")
    p.add_argument("--only", help="time only the variants whose names match this regular expression (the floor "
                                  "always runs, as the reference)")
    p.add_argument("--processes", type=int, default=1, help="processes per variant, used in turns (more: less "
                                                              "weight on one process's luck; use 3 with --baseline)")
    p.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = p.parse_args()
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    from charlstm.runtime.spinning import resolve, usable_cores
    threads = args.threads or usable_cores()
    load_before, (spin, why) = load_average(), resolve(None, threads)
    model_dir, npz = (args.model, args.model / "notebook.npz") if args.model else bench_model(args.cache, log)
    if args.device == "cuda":
        rows, stats = gpu_rows(model_dir, args.steps, args.repeats, log), {}
    else:
        children = []
        try:
            variants = cpu_variants(model_dir, npz, threads, args.steps, args.baseline, children, args.only,
                                    args.processes)
            runs = round_robin(variants, args.repeats, log)
        finally:
            for c in children:
                c.close()
        stats = {name: median(r) for name, r in runs.items()}
        floor = next(v for k, v in stats.items() if k.startswith("numpy floor"))
        notebook = next((v for k, v in stats.items() if k.startswith("the notebook")), None)
        rows = []
        for name, us in stats.items():
            note = f"{us / floor:.2f}x the floor's time"
            if notebook and not name.startswith("the notebook"):
                note += f"; {notebook / us:.1f}x the notebook's speed"
            base = f"baseline {args.baseline.name}: {name}" if args.baseline else None
            if base in runs:
                paired = np.array(runs[name]) / np.array(runs[base])
                note += f"; {np.median(paired):.2f}x the baseline's time (per round {paired.min():.2f}-{paired.max():.2f})"
            rows.append((name, us, note))
        if args.cold:
            rows += cold_start(model_dir, npz, args.cold_runs, 500, log)
    info = {**machine(), **versions("numpy", "onnxruntime"), "threads": threads, "load_average_before": load_before,
            "spinning_choice_at_start": f"{'spin' if spin else 'sleep'} ({why})", "steps": args.steps,
            "repeats": args.repeats, "model": str(model_dir)}
    print("  ".join(f"{k}={v}" for k, v in info.items() if k != "platform"))
    print(f"{'variant':84} {'µs/char':>9} {'chars/s':>9}  note")
    for name, value, note in rows:
        if note in ("MB", ""):
            print(f"{name:84} {value:9.3g} {'':>9}  {note}")
        else:
            print(f"{name:84} {value:9.1f} {1e6 / value:9,.0f}  {note}")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "rows": rows}, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
