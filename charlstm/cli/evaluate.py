"""`charlstm evaluate`: cross-entropy of a text, through the runtime (a model folder) or Keras (a run folder)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from charlstm.cli.output import progress, user_errors
from charlstm.errors import UserError


class Split(str, Enum):
    val = "val"
    all = "all"


class Unknown(str, Enum):
    error = "error"
    skip = "skip"


def evaluate(
    model: Annotated[Optional[Path], typer.Option(help="Model folder written by `charlstm export` (scored with ONNX Runtime, no TensorFlow).")] = None,
    run: Annotated[Optional[Path], typer.Option("--run", help="Run folder written by `charlstm train` (scored with Keras; needs the `train` extra).")] = None,
    text: Annotated[Optional[Path], typer.Option(help="UTF-8 text to score. Default with --run: the run's corpus, where the run recorded it.")] = None,
    split: Annotated[Split, typer.Option(help="val = the last fraction the training run held out; all = the whole text.")] = Split.val,
    int8: Annotated[bool, typer.Option("--int8", help="Score with model.int8.onnx.")] = False,
    checkpoint: Annotated[str, typer.Option(help="With --run: best, last, or a .weights.h5 path.")] = "best",
    average: Annotated[int, typer.Option(min=1, help="With --run: score the mean weights of this many epochs ending at --checkpoint (as `charlstm export --average`).")] = 1,
    unknown: Annotated[Unknown, typer.Option(help="Characters of the text outside the model's vocabulary: error = list them and stop; skip = drop them (their count is reported).")] = Unknown.error,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
) -> None:
    """Cross-entropy (nats and bits per character) of a text, with the state carried across the whole text."""
    with user_errors({"model_dir": "--model", "run_dir": "--run"}):
        if (model is None) == (run is None):
            raise UserError("pass exactly one of --model DIR (a model folder) or --run DIR (a run folder)")
        if model is not None and average != 1:
            raise UserError("--average applies to --run; a model folder already holds the weights it was exported with")
        from charlstm.runtime import text as text_io  # numpy only: no TensorFlow behind it
        if model is not None:
            from charlstm.runtime.manifest import load_manifest
            manifest = load_manifest(model)
            keep_newlines = manifest.provenance.get("run_config", {}).get("train", {}).get("keep_newlines", False)
            val_fraction = manifest.val_fraction or text_io.VAL_FRACTION
            if text is None:
                name = (manifest.evaluation or {}).get("corpus") or "its training text"
                raise UserError(f"--text is required with --model: pass the text to score (this model was "
                                f"scored on {name})")
        else:
            from charlstm.training import run as run_folder
            cfg = run_folder.read_config(run)
            keep_newlines = cfg["train"].get("keep_newlines", False)
            val_fraction = cfg["train"].get("val_fraction", text_io.VAL_FRACTION)
            text = text or run_folder.corpus_path(run, cfg)
            if text is None:
                raise UserError(f"the corpus of {run} ({cfg['corpus'].get('name') or cfg['corpus'].get('path')}) is "
                                "not where the run recorded it: pass --text FILE")
        full = text_io.read_text(text, keep_newlines=keep_newlines)
        scored = text_io.split(full, val_fraction)[1] if split == Split.val else full
        with progress(f"scoring {len(scored):,} characters") as report:
            if model is not None:
                from charlstm.runtime.evaluate import evaluate_text
                result = evaluate_text(model, scored, int8=int8, progress=report, unknown=unknown.value)
            else:
                from charlstm.cli.extras import require_keras
                require_keras("train")
                from charlstm.training.evaluate import evaluate_run
                result = evaluate_run(run, scored, checkpoint, progress=report, average=average)
        result.update({"text": str(text), "split": split.value, "val_fraction": val_fraction})
        if as_json:
            typer.echo(json.dumps(result))
        else:
            skipped = f", {result['skipped']:,} unknown characters skipped" if result.get("skipped") else ""
            typer.echo(f"{result['nats_per_char']:.4f} nats/char ({result['bits_per_char']:.4f} bits/char) over "
                       f"{result['characters']:,} characters of {text} ({split.value} split{skipped})")
