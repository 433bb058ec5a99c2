"""CPU generation benchmarks, side by side in one run: each returns Rows for `charlstm bench`.

- numpy floor: one input row times each layer's weights ([embedding + units] x 4*units for layer 0), the
  bytes a step cannot avoid reading; in a child process whose BLAS has the same thread count as ONNX Runtime;
  all these steady-state variants are timed in turns, so background load hits them alike, with a pause before
  each timed run so that no variant runs beside the previous one's busy-waiting threads;
- ONNX steps through runtime's own Stepper (float32 and int8 at batch 1, float32 at batch 64), ONNX Runtime's
  workers spinning; the float32 batch-1 step also with them sleeping (see runtime.session.auto_spinning);
- the whole generate loop (step + sample + decode) through runtime.Generator, both ways;
- the notebook's loop (benchmarks/notebook_loop.py, TensorFlow eager) with the same weights;
- cold starts: whole processes, `charlstm generate` against the notebook as a script, runs interleaved so
  both see the same background load; the generate runs also give its peak resident memory (wait4).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from benchmarks.models import ROOT, Shape
from benchmarks.timing import BenchError, Child, Row, median, paired, round_robin, timed

NOTEBOOK_SCRIPT = ROOT / "benchmarks" / "notebook_loop.py"
BATCH = 64  # the batch row: 64 independent samples in one step
SPIN = {True: ", spinning workers", False: ", sleeping workers"}  # ONNX Runtime's allow_spinning
FLOOR_CODE = """
import json, sys
import numpy as np
from benchmarks.timing import serve, timed
shapes = json.loads(sys.argv[1])
rng = np.random.default_rng(0)
pairs = [(rng.standard_normal((1, r), dtype=np.float32), rng.standard_normal((r, c), dtype=np.float32))
         for r, c in shapes]
def step():
    for x, w in pairs:
        x @ w
print(json.dumps({"numpy": np.__version__}), flush=True)
serve(timed(step))
"""


def floor_shapes(shape: Shape) -> list[tuple[int, int]]:
    """Each layer's [input width + units, 4 * units]: the weights one step has to read."""
    return [((shape.embedding_dim if i == 0 else shape.units) + shape.units, 4 * shape.units)
            for i in range(shape.layers)]


def steady_state(model_dir: Path, npz: Path, shape: Shape, threads: int, steps: int, repeats: int,
                 same_weights: bool, log=lambda m: None) -> list[Row]:
    """Every per-character variant, timed in turns (timing.round_robin) so they share the machine's load."""
    children: list[Child] = []
    try:
        variants = {**_floors(shape, threads, steps, children), **_onnx(model_dir, threads, steps)}
        if find_spec("tensorflow") is not None:
            log("starting the notebook's loop (TensorFlow) in a child process")
            children.append(Child([sys.executable, str(NOTEBOOK_SCRIPT), str(npz), "--serve"]))
            variants[f"notebook loop ({children[-1].info['keras']} eager), batch 1"] = (children[-1],
                                                                                       max(10, steps // 2))
        runs: dict[str, list[float]] = {}
        medians = round_robin(variants, repeats, log, runs_out=runs)
    finally:
        for child in children:
            child.close()
    rows = [Row("cpu", name, None if name.startswith("notebook") else 1 if "(1 thread" in name else threads, us)
            for name, us in medians.items()]
    _annotate(rows, model_dir, same_weights)
    _paired_notes(rows, runs)
    return rows


def _paired_notes(rows: list[Row], runs: dict[str, list[float]]) -> None:
    """The targets' ratios round by round: the batch-1 float32 steps against the floor (at most 1), the int8
    step against the float32 one (at most 0.4), the generate loops' speed-up over the notebook's (at least 30)."""
    floor = next(r.variant for r in rows if r.variant.startswith("numpy floor"))
    notebook = next((r.variant for r in rows if r.variant.startswith("notebook")), None)
    f32 = f"onnx float32 step, batch 1{SPIN[True]}"
    for r in rows:
        if r.variant.startswith("onnx float32 step, batch 1,"):
            r.note = _join(r.note, "per round, time vs floor " + paired(runs, r.variant, floor))
        elif r.variant.startswith("onnx int8 step, batch 1,") and f32 in runs:
            r.note = _join(r.note, "per round, time vs float32 " + paired(runs, r.variant, f32))
        elif r.variant.startswith("generate loop") and notebook:
            r.note = _join(r.note, "per round, speed-up vs notebook " + paired(runs, notebook, r.variant))


def _join(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


def floor_child(shape: Shape, threads: int) -> Child:
    """The numpy floor of `shape` in a child process whose BLAS runs `threads` threads."""
    env = {**os.environ, **dict.fromkeys(("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"), str(threads))}
    return Child([sys.executable, "-c", FLOOR_CODE, json.dumps(floor_shapes(shape))], env=env)


def model_shape(model_dir: Path) -> Shape:
    """The Shape of an exported model folder (for its floor)."""
    from runtime.manifest import load_manifest
    m = load_manifest(model_dir)
    return Shape(vocab_size=len(m.vocab), embedding_dim=int(m.raw["model"]["embedding_dim"]), units=m.units,
                 layers=m.layers)


def _floors(shape: Shape, threads: int, steps: int, children: list) -> dict:
    """The floor with ONNX Runtime's thread count, and with one thread: on a busy machine a multi-threaded
    BLAS can be far slower than one thread, which would flatter every ratio to the floor."""
    label = " + ".join(f"1x{r} @ {r}x{c}" for r, c in floor_shapes(shape))
    variants = {}
    for n in sorted({threads, 1}, reverse=True):
        children.append(floor_child(shape, n))
        suffix = " (1 thread, for reference)" if n != threads else ""
        variants[f"numpy floor {label} float32{suffix}"] = (children[-1], steps)
    return variants


def _onnx(model_dir: Path, threads: int, steps: int) -> dict:
    """runtime's own Stepper (float32, int8 when exported, batch 64) and the whole generate loop, with ONNX
    Runtime's workers spinning (the runtime's choice on an idle machine); the float32 batch-1 step and loop
    also with sleeping workers (its choice when other work keeps the cores busy)."""
    from runtime import Generator

    has_int8 = (Path(model_dir) / "model.int8.onnx").is_file()
    variants = {}
    for int8, batch, spin in [(False, 1, True), (False, 1, False)] + [(True, 1, True)] * has_int8 + [
            (False, BATCH, True)]:
        gen = Generator(model_dir, device="cpu", int8=int8, threads=threads, spinning=spin)
        gen.stepper.reset(batch)
        step = timed(lambda g=gen, ids=np.zeros(batch, np.int64): g.stepper.step(ids))
        # per character: a batch step makes `batch` characters and costs tens of batch-1 steps
        variants[f"onnx {'int8' if int8 else 'float32'} step, batch {batch}{SPIN[spin]}"] = (
            lambda n, s=step, b=batch: s(n) / b, steps if batch == 1 else max(5, steps // 8))
    for spin in (True, False):
        loop = Generator(model_dir, device="cpu", threads=threads, spinning=spin)
        variants[f"generate loop float32, batch 1 (step + sample){SPIN[spin]}"] = (
            lambda n, g=loop: timed(lambda: g.generate("", length=n, seed=0))(1) / n, steps)
    if loop.manifest.burst is not None:  # off by default on the CPU: its load costs more than 500 characters save
        burst = Generator(model_dir, device="cpu", threads=threads, burst=True, spinning=True)
        variants[f"generate loop float32, batch 1, burst graph (Generator(burst=True)){SPIN[True]}"] = (
            lambda n: timed(lambda: burst.generate("", length=n, seed=0))(1) / n, steps)
    return variants


def _annotate(rows: list[Row], model_dir: Path, same_weights: bool) -> None:
    """Notes for the targets: int8 against float32, batch 64 against batch 1; rows for what was skipped."""
    by = {r.variant: r for r in rows}
    f32, b64, q8 = (by.get(f"onnx {k} step, batch {b}{SPIN[True]}") for k, b in (("float32", 1), ("float32", BATCH),
                                                                                  ("int8", 1)))
    b64.note = f"{f32.us_per_char / b64.us_per_char:.1f}x batch 1's characters/s"
    if q8:
        q8.note = f"{q8.us_per_char / f32.us_per_char:.2f}x float32's time" + _int8_loss(model_dir)
    else:
        rows.append(Row("cpu", "onnx int8 step, batch 1", note="skipped: no model.int8.onnx (export with --int8)"))
    notebook = next((r for r in rows if r.variant.startswith("notebook")), None)
    if notebook is None:
        rows.append(Row("cpu", "notebook loop", note="skipped: TensorFlow is not installed "
                                                     "(pip install 'charlstm[train]')"))
    else:
        notebook.note = ("same weights, tf.random.categorical per character" if same_weights else
                         "same shapes, random weights (speed does not depend on them)")


def _int8_loss(model_dir: Path) -> str:
    figures = json.loads((Path(model_dir) / "model.json").read_text()).get("export", {}).get("int8") or {}
    change = figures.get("val_loss_change")
    return "" if change is None else f"; val loss {change:+.4f} nats/char (model.json)"


def cold_start(model_dir: Path, npz: Path, runs: int, length: int, log=lambda m: None) -> list[Row]:
    """Whole processes from a cold start, `length` characters each: charlstm generate against the notebook."""
    generate = [sys.executable, "-m", "charlstm.cli", "generate", "--model", str(model_dir), "--length",
                str(length), "--device", "cpu", "--seed", "0"]
    notebook = [sys.executable, str(NOTEBOOK_SCRIPT), str(npz), "--length", str(length)]
    if shutil.which("hyperfine"):
        log("the same comparison with hyperfine: hyperfine --warmup 1 --runs "
            f"{runs} {shlex.quote(shlex.join(generate))} {shlex.quote(shlex.join(notebook))}")
    has_tf = find_spec("tensorflow") is not None
    times: dict[str, list[float]] = {"generate": [], "notebook": []}
    peak_kb = 0
    for i in range(runs + 1):  # the first round warms the disk cache and is not counted
        log(f"cold start round {i + 1} of {runs + 1}")
        seconds, kb = run_process(generate)
        peak_kb = max(peak_kb, kb or 0)
        if i:
            times["generate"].append(seconds)
        if has_tf:
            seconds, _ = run_process(notebook)
            if i:
                times["notebook"].append(seconds)
    gen_s = median(times["generate"])
    rows = [Row("cpu", f"cold: charlstm generate, {length} chars (whole process)", us_per_char=gen_s / length * 1e6,
                note=f"median of {runs}: {gen_s:.2f} s", extra={"seconds": times["generate"]})]
    if has_tf:
        nb_s = median(times["notebook"])
        rows.append(Row("cpu", f"cold: notebook script, {length} chars (whole process)",
                        us_per_char=nb_s / length * 1e6, note=f"median of {runs}: {nb_s:.2f} s",
                        extra={"seconds": times["notebook"]}))
        rows[0].speedup_vs_notebook = nb_s / gen_s
    else:
        rows.append(Row("cpu", "cold: notebook script", note="skipped: TensorFlow is not installed"))
    mb = peak_kb * 1024 / 1e6
    rows.append(Row("cpu", f"peak RSS: charlstm generate, {length} chars", extra={"peak_rss_mb": mb or None},
                    note=f"{mb:.0f} MB (largest of {runs + 1} runs)" if peak_kb else "not measured (no wait4 here)"))
    return rows


# A small launcher runs each whole-process measurement: a child's ru_maxrss starts from its parent's peak,
# and this process may have peaked in the gigabytes (TensorFlow built the model), the launcher at ~15 MB.
LAUNCHER = """
import json, os, subprocess, sys, time
start = time.perf_counter()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
if hasattr(os, "wait4"):
    _, status, usage = os.wait4(p.pid, 0)
    code, kb = os.waitstatus_to_exitcode(status), usage.ru_maxrss
else:  # Windows: no rusage
    code, kb = p.wait(), None
print(json.dumps({"seconds": time.perf_counter() - start, "code": code, "maxrss_kb": kb}))
"""


def run_process(cmd: list[str]) -> tuple[float, int | None]:
    """Wall seconds and peak resident KiB of one whole run of `cmd` (its stdout discarded)."""
    p = subprocess.run([sys.executable, "-c", LAUNCHER, *cmd], capture_output=True, text=True, cwd=ROOT)
    out = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 and p.stdout.strip() else {}
    if out.get("code") != 0:
        _fail(cmd, out.get("code", p.returncode), p.stderr)
    return out["seconds"], out["maxrss_kb"]


def _fail(cmd: list[str], code: int, stderr: str):
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    raise BenchError(f"{shlex.join(cmd)[:200]} failed (exit {code}): {lines[-1][:300] if lines else 'no message'}")
