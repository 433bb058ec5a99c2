"""Train several recipes side by side on one machine, within a time budget, and print one table of their
validation figures by epoch (a column per recipe). Made for the lent GPU (docs/models.md: issue 22's sweep), where an epoch of
tinyshakespeare takes seconds and many runs share one device; it runs anywhere `charlstm train` does.

    KERAS_BACKEND=jax python benchmarks/sweep.py --text ../shared/data/tinyshakespeare.txt --out runs/sweep \\
        --budget-s 540 --parallel 4
    python benchmarks/sweep.py --text T --out O --recipe "wd3=--units 640 --weight-drop 0.3 --recurrent-dropout 0"

Each recipe is `NAME=FLAGS`: flags of `charlstm train` added to `--text --out OUT/NAME --epochs --sample-every 0
--quiet`. Every run is a normal run folder, so a sweep stopped by its budget continues where it was with the
same command (`charlstm train` resumes). The table (stdout, and OUT/sweep.md) reads each run's history.csv;
OUT/sweep.json has the same figures. JAX's default of taking 75% of GPU memory per process is turned off, so
the parallel runs share the device.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's charlstm, whatever is installed

from charlstm.training.config import ModelConfig, from_dict  # noqa: E402  (no Keras behind it)

# Issue 22's levers at the 6M-parameter budget: weight drop without recurrent dropout (which keeps the fused
# cuDNN kernel usable), at two strengths; the budget spent as width or as depth; the CPU run of 2 x 640
# with both kinds of recurrent regularisation (docs/models.md), for its speed and figures on the GPU; and
# AWD-LSTM's full set (weight drop with embedding and input dropout), all of which keep the fused kernel.
RECIPES = {
    "640-wd3": "--units 640 --dropout 0.3 --recurrent-dropout 0 --weight-drop 0.3",
    "640-wd5": "--units 640 --dropout 0.4 --recurrent-dropout 0 --weight-drop 0.5",
    "3x512-wd3": "--layers 3 --dropout 0.3 --recurrent-dropout 0 --weight-drop 0.3",
    "640-rd-wd2": "--units 640 --dropout 0.3 --weight-drop 0.2",
    "640-awd": "--units 640 --dropout 0.3 --recurrent-dropout 0 --weight-drop 0.3 --embedding-dropout 0.1 "
               "--input-dropout 0.3",
}


def parse_recipe(text: str) -> tuple[str, list[str]]:
    name, sep, flags = text.partition("=")
    if not sep or not name or "/" in name:
        raise SystemExit(f"sweep: --recipe {text!r} is not NAME=FLAGS, e.g. 'wd3=--weight-drop 0.3'")
    return name, shlex.split(flags)


def history(run_dir: Path) -> list[dict]:
    path = run_dir / "history.csv"
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def parameters(run_dir: Path) -> int | None:
    try:
        cfg = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return from_dict(ModelConfig, cfg["model"]).parameters()


def table(out: Path, names: list[str]) -> tuple[str, dict]:
    """One column per recipe, one row per epoch (Keras' validation nats/char), then the best and the speed."""
    figures = {name: {"parameters": parameters(out / name), "epochs": history(out / name)} for name in names}
    rows = [["recipe", *names], ["parameters", *[f"{f['parameters'] / 1e6:.2f} M" if f["parameters"] else "?"
                                               for f in figures.values()]]]
    for e in range(max((len(f["epochs"]) for f in figures.values()), default=0)):
        rows.append([f"epoch {e + 1}", *[f"{f['epochs'][e]['val_loss']:.4f}" if e < len(f["epochs"]) else ""
                                          for f in figures.values()]])
    best = [min(f["epochs"], key=lambda r: r["val_loss"]) if f["epochs"] else None for f in figures.values()]
    rows.append(["best (epoch)", *[f"{b['val_loss']:.4f} ({int(b['epoch'])})" if b else "" for b in best]])
    rows.append(["s/epoch", *[f"{sum(r['seconds'] for r in f['epochs']) / len(f['epochs']):.1f}" if f["epochs"]
                              else "" for f in figures.values()]])
    lines = ["| " + " | ".join(r) + " |" for r in rows]
    lines.insert(1, "|---|" + "---:|" * len(names))
    return "\n".join(lines) + "\n", figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--text", type=Path, help="UTF-8 corpus to train every recipe on (required but with --list).")
    ap.add_argument("--out", type=Path, help="Folder of the run folders, one per recipe (required but with --list).")
    ap.add_argument("--recipe", action="append", default=None,
                    help="NAME=FLAGS, repeatable; default: the built-in grid (--list shows it).")
    ap.add_argument("--epochs", type=int, default=30, help="Epochs per run (default 30).")
    ap.add_argument("--parallel", type=int, default=4, help="Runs at once (default 4).")
    ap.add_argument("--budget-s", type=float, default=540.0,
                    help="Stop every run after this many seconds (default 540); rerun to continue.")
    ap.add_argument("--list", action="store_true", help="Print the built-in grid and exit.")
    args = ap.parse_args(argv)
    if args.list:
        for name, flags in RECIPES.items():
            print(f"{name}={flags}")
        return 0
    if args.text is None or args.out is None:
        ap.error("--text and --out are required (or --list to print the built-in grid)")
    recipes = dict(parse_recipe(r) for r in args.recipe) if args.recipe else \
        {k: shlex.split(v) for k, v in RECIPES.items()}
    if not args.text.is_file():
        raise SystemExit(f"sweep: --text {args.text} is not a file: pass the corpus to train on")
    if args.parallel < 1 or args.epochs < 1 or args.budget_s <= 0:
        raise SystemExit("sweep: --parallel, --epochs and --budget-s must be positive")
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false", "PYTHONUNBUFFERED": "1"}
    env.setdefault("KERAS_BACKEND", "jax")
    deadline = time.monotonic() + args.budget_s
    waiting, running, codes, stopped = list(recipes.items()), {}, {}, set()
    while waiting or running:
        while waiting and len(running) < args.parallel:
            name, flags = waiting.pop(0)
            cmd = [sys.executable, "-m", "charlstm", "train", "--text", str(args.text), "--out",
                   str(args.out / name), "--epochs", str(args.epochs), "--sample-every", "0", "--quiet", *flags]
            log = open(args.out / f"{name}.log", "ab")
            print(f"sweep: {name}: {shlex.join(cmd[1:])}", file=sys.stderr)
            running[name] = (subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log), log)
        time.sleep(1.0)
        for name, (proc, log) in list(running.items()):
            if proc.poll() is None and time.monotonic() > deadline:
                proc.terminate()  # it continues from its last resume point when the sweep is run again
                stopped.add(name)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.poll() is not None:
                codes[name] = proc.returncode
                log.close()
                del running[name]
                done = len(history(args.out / name))
                why = ("stopped by --budget-s (run the sweep again to continue)" if name in stopped
                       else f"exit {proc.returncode}" + ("" if proc.returncode == 0 else f", see {log.name}"))
                print(f"sweep: {name}: {done} epochs, {why}", file=sys.stderr)
        if time.monotonic() > deadline:
            for name, _ in waiting:
                print(f"sweep: {name}: not started (budget spent)", file=sys.stderr)
            waiting = []
    text, figures = table(args.out, list(recipes))
    (args.out / "sweep.md").write_text(text, encoding="utf-8")
    (args.out / "sweep.json").write_text(json.dumps({"recipes": {k: shlex.join(v) for k, v in recipes.items()},
                                                     "exit": codes, "stopped": sorted(stopped),
                                                     "figures": figures}, indent=1),
                                         encoding="utf-8")
    print(text, end="")
    return 0 if all(c == 0 or n in stopped for n, c in codes.items()) else 1


if __name__ == "__main__":
    sys.exit(main())
