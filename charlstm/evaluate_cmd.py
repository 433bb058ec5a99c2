"""`charlstm evaluate`: cross-entropy of a text, through the runtime (a model folder) or Keras (a run folder)."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from charlstm.errors import UserError, user_errors


class Split(str, Enum):
    val = "val"
    all = "all"


def evaluate(
    model: Annotated[Optional[Path], typer.Option(help="Model folder written by `charlstm export` (scored with ONNX Runtime, no TensorFlow).")] = None,
    run: Annotated[Optional[Path], typer.Option("--run", help="Run folder written by `charlstm train` (scored with Keras; needs the `train` extra).")] = None,
    text: Annotated[Optional[Path], typer.Option(help="UTF-8 text to score (default: the training corpus recorded in the model or run).")] = None,
    split: Annotated[Split, typer.Option(help="val = the last fraction the training run held out; all = the whole text.")] = Split.val,
    int8: Annotated[bool, typer.Option("--int8", help="Score with model.int8.onnx.")] = False,
    checkpoint: Annotated[str, typer.Option(help="With --run: best, last, or a .weights.h5 path.")] = "best",
    average: Annotated[int, typer.Option(min=1, help="With --run: score the mean weights of this many epochs ending at --checkpoint (as `charlstm export --average`).")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
) -> None:
    """Cross-entropy (nats and bits per character) of a text, with the state carried across the whole text."""
    with user_errors():
        if (model is None) == (run is None):
            raise UserError("pass exactly one of --model DIR (a model folder) or --run DIR (a run folder)")
        if model is not None and average != 1:
            raise UserError("--average applies to --run; a model folder already holds the weights it was exported with")
        if model is not None:
            from runtime.manifest import load_manifest
            manifest = load_manifest(model)
            train_cfg = (manifest.raw.get("provenance", {}).get("run_config") or {}).get("train", {})
            corpus_path = (manifest.raw.get("provenance", {}).get("run_config") or {}).get("corpus", {}).get("path")
            val_fraction = manifest.val_fraction or 0.1  # the training default
        else:
            cfg_path = run / "config.json"
            if not cfg_path.is_file():
                raise UserError(f"{run} is not a run folder (no config.json): pass the --out of `charlstm train`")
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            train_cfg, corpus_path = cfg["train"], cfg["corpus"]["path"]
            val_fraction = train_cfg["val_fraction"]
        source = text or (Path(corpus_path) if corpus_path else None)
        if source is None or not source.is_file():
            raise UserError(f"text to score not found: {source} (pass --text FILE)")
        from training.corpus import read_text  # numpy only: no TensorFlow behind it
        full = read_text(source, keep_newlines=train_cfg.get("keep_newlines", False))
        scored = full[int(len(full) * (1.0 - val_fraction)):] if split == Split.val else full
        with _progress(f"scoring {len(scored):,} characters") as progress:
            if model is not None:
                from runtime.evaluate import evaluate_text
                result = evaluate_text(model, scored, int8=int8, progress=progress)
            else:
                from charlstm.extras import require
                require("train", "keras")
                from training.evaluate import evaluate_run
                result = evaluate_run(run, scored, checkpoint, progress=progress, average=average)
        result.update({"text": str(source), "split": split.value, "val_fraction": val_fraction})
        if as_json:
            typer.echo(json.dumps(result))
        else:
            typer.echo(f"{result['nats_per_char']:.4f} nats/char ({result['bits_per_char']:.4f} bits/char) over "
                       f"{result['characters']:,} characters of {source} ({split.value} split)")


class _progress:
    """A rich progress bar on stderr, fed by progress(done, total) callbacks."""

    def __init__(self, description: str):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                            TimeRemainingColumn(), console=Console(file=sys.stderr), transient=True)
        self.description = description

    def __enter__(self):
        self.bar.start()
        self.task = self.bar.add_task(self.description, total=None)
        return lambda done, total: self.bar.update(self.task, completed=done, total=total)

    def __exit__(self, *exc):
        self.bar.stop()
