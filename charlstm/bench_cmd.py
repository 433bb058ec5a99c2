"""`charlstm bench`: how fast generation is, side by side with the notebook, in one table on stdout.

The measuring lives in benchmarks/ (a folder of the source checkout, not of the installed package); this module
parses the options, calls it, and prints. Progress goes to stderr; the table is the output.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from charlstm.errors import UserError, user_errors


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


def bench(
    model: Annotated[Optional[Path], typer.Option(
        "--model", metavar="DIR", help="Model folder to measure. Default: a random-weight model of the notebook's "
                                       "shape, built once into --cache (speed does not depend on the weights).")]
    = None,
    steps: Annotated[int, typer.Option(min=1, help="Characters per timed run (batch 64: an eighth of it, the "
                                                   "notebook: half).")] = 200,
    repeats: Annotated[int, typer.Option(min=1, help="Timed runs per variant, taken in turns; the median is "
                                                     "reported.")] = 5,
    threads: Annotated[int, typer.Option(min=0, help="Threads for ONNX Runtime and for numpy's floor; 0 = one per "
                                                     "CPU this process may use.")] = 0,
    device: Annotated[Device, typer.Option(help="cpu: the CPU table; cuda: the GPU path at batch 1 and 64.")]
    = Device.cpu,
    cold: Annotated[bool, typer.Option("--cold", help="Also time whole processes from a cold start (charlstm "
                                                      "generate vs the notebook as a script) and peak memory: "
                                                      "slow.")] = False,
    cold_runs: Annotated[int, typer.Option(min=1, help="With --cold: runs of each process, after one warm-up.")]
    = 3,
    length: Annotated[int, typer.Option(min=1, help="With --cold: characters each process generates.")] = 500,
    training: Annotated[bool, typer.Option("--training", help="Instead: training characters per second through "
                                                              "CharBatches vs a bare fit (seconds per batch).")]
    = False,
    training_steps: Annotated[int, typer.Option(min=1, help="With --training: batches per timed run.")] = 3,
    json_out: Annotated[Optional[Path], typer.Option("--json", metavar="FILE", help="Also write the results "
                                                                                    "and the machine's state "
                                                                                    "as JSON.")] = None,
    cache: Annotated[Optional[Path], typer.Option(metavar="DIR", help="Where the random-weight model is built "
                                                                      "and kept. Default: "
                                                                      "~/.cache/charlstm/bench.")] = None,
    vocab_size: Annotated[int, typer.Option(min=2, help="Shape of the built model: characters.")] = 92,
    embedding_dim: Annotated[int, typer.Option(min=1, help="Shape of the built model: embedding width.")] = 256,
    units: Annotated[int, typer.Option(min=1, help="Shape of the built model: LSTM width.")] = 1024,
    layers: Annotated[int, typer.Option(min=1, help="Shape of the built model: LSTM layers.")] = 1,
) -> None:
    """Measure generation speed: numpy floor, ONNX float32/int8, batch 64, the notebook's loop; --cold adds whole
    processes and peak memory. Ratios compare variants timed in turns within this one run."""
    with user_errors():
        _import_benchmarks()
        from benchmarks.models import Shape, random_model, random_notebook_weights, shape_of
        from benchmarks.timing import cpu_count, describe, fill_ratios, machine

        log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
        info = machine()  # the load average before this run adds its own
        threads = threads or cpu_count()
        shape = Shape(vocab_size, embedding_dim, units, layers)
        if training:
            from benchmarks.training_pipeline import measure
            rows = measure(shape, steps=training_steps, repeats=repeats, log=log)
        else:
            if model is None:
                model_dir, npz = random_model(shape, cache, log)
                same_weights = True
            else:
                shape = shape_of(model)
                model_dir, same_weights = model, False
                npz = random_notebook_weights(shape, Path(cache or _default_cache()) / f"{shape.key}.npz",
                                              list(_vocab(model)))
            rows = _measure(device.value, model_dir, npz, shape, threads, steps, repeats, same_weights, cold,
                            cold_runs, length, log)
        fill_ratios(rows)
        _print_table(rows, describe(info))
        if json_out is not None:
            json_out.write_text(json.dumps({"machine": info, "threads": threads, "rows": [r.as_dict() for r in rows]},
                                           indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            log(f"wrote {json_out}")


def _measure(device, model_dir, npz, shape, threads, steps, repeats, same_weights, cold, cold_runs, length, log):
    if device == "cuda":
        from benchmarks.gpu import cuda_missing, measure
        why = cuda_missing()
        if why:
            raise UserError(f"--device cuda: {why}; run with --device cpu")
        return measure(model_dir, "cuda", steps, repeats, log)
    from benchmarks.cpu import cold_start, steady_state
    rows = steady_state(model_dir, npz, shape, threads, steps, repeats, same_weights, log)
    if cold:
        rows += cold_start(model_dir, npz, cold_runs, length, log)
    return rows


def _import_benchmarks() -> None:
    """benchmarks/ sits beside charlstm/ in the source checkout; an installed charlstm does not carry it."""
    root = Path(__file__).resolve().parents[1]
    try:
        import benchmarks  # noqa: F401
    except ImportError:
        if not (root / "benchmarks" / "__init__.py").is_file():
            raise UserError("charlstm bench needs the benchmarks/ folder of the source checkout: run it from a "
                            "clone of the repository (pip install -e .)") from None
        sys.path.insert(0, str(root))


def _default_cache() -> Path:
    from benchmarks.models import default_cache
    return default_cache()


def _vocab(model_dir: Path) -> tuple[str, ...]:
    from runtime.manifest import load_manifest
    return load_manifest(model_dir).vocab


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _print_table(rows, caption: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="charlstm bench: time per generated character (median of the timed runs)",
                  caption=caption, caption_justify="left")
    columns = (("device", "left"), ("variant", "left"), ("threads", "right"), ("µs/char", "right"),
               ("chars/s", "right"), ("time vs floor", "right"), ("speed-up vs notebook", "right"), ("note", "left"))
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=name == "variant", overflow="fold")
    for r in rows:
        table.add_row(r.device, r.variant, _fmt(r.threads, "d"), _fmt(r.us_per_char, ",.1f"),
                      _fmt(r.chars_per_s, ",.0f"), _fmt(r.vs_floor, ".2f"), _fmt(r.speedup_vs_notebook, ",.1f"),
                      r.note)
    Console(width=max(200, Console().width)).print(table)  # wide enough for a log file
