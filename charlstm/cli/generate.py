"""`charlstm generate`: a thin layer over charlstm.runtime.Generator. Parse, call the library, print the text.

Only typer and the standard library are imported here; numpy and onnxruntime come in inside the command,
so `charlstm --help` stays fast. Generated text is the only thing written to stdout.
"""

from __future__ import annotations

import json
import os
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from charlstm.cli.output import user_errors
from charlstm.errors import UserError


class Device(str, Enum):
    auto = "auto"
    cuda = "cuda"
    cpu = "cpu"


class Unknown(str, Enum):
    error = "error"
    skip = "skip"

ESCAPES = {"\\n": "\n", "\\t": "\t", "\\\\": "\\"}


def _unescape(text: str) -> str:
    """--stop '\\n\\n' means two newlines: a shell cannot easily pass a newline."""
    out, i = [], 0
    while i < len(text):
        pair = text[i:i + 2]
        out.append(ESCAPES.get(pair, text[i]))
        i += 2 if pair in ESCAPES else 1
    return "".join(out)


def _read_prompt(prompt: str | None, prompt_file: Path | None) -> str:
    if prompt is not None and prompt_file is not None:
        raise UserError(f"--prompt {prompt[:20]!r} and --prompt-file {str(prompt_file)!r} were both given: pass one")
    if prompt_file is None:
        return prompt or ""
    try:
        return prompt_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"--prompt-file {str(prompt_file)!r} does not exist: check the path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--prompt-file {str(prompt_file)!r} cannot be read as UTF-8 text "
                        f"({e.__class__.__name__}): pass a text file") from None


def _say(verbose: bool, message: str) -> None:
    if verbose:
        print(message, file=sys.stderr, flush=True)


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _header(row: int, n: int) -> str:
    return f"----- sample {row + 1} of {n} -----\n" if n > 1 else ""


def _print_samples(prompt: str, texts: list[str], start: int = 0) -> None:
    """Samples from `start` on, each as prompt + text, after a header line when there are several."""
    for row in range(start, len(texts)):
        if row:
            _write("\n")  # the header starts on a line of its own
        _write(_header(row, len(texts)) + prompt + texts[row])
    if texts:
        _write("\n")


def _json_line(row: int, prompt: str, text: str, seconds: float, gen, seed, stop, interrupted: bool) -> str:
    return json.dumps({
        "sample": row + 1, "prompt": prompt, "text": text, "characters": len(text), "seconds": round(seconds, 4),
        "chars_per_second": round(len(text) / seconds, 1) if seconds else None, "device": gen.device,
        "model": str(gen.manifest.dir), "model_file": gen.path.name, "model_sha256": gen.sha256, "seed": seed,
        "stopped": bool(stop) and text.endswith(stop), "interrupted": interrupted,
    }, ensure_ascii=False) + "\n"


def generate(
    model: Annotated[Optional[Path], typer.Option(
        "--model", metavar="DIR",
        help="Model folder written by `charlstm export`. Default: $CHARLSTM_MODEL, else the shakespeare model that "
             "ships with charlstm.")] = None,
    prompt: Annotated[Optional[str], typer.Option(
        help="Text to continue; fed one character at a time to warm the state. Empty: start after a newline.")] = None,
    prompt_file: Annotated[Optional[Path], typer.Option(
        metavar="FILE", help="Read the prompt from a UTF-8 file instead of --prompt.")] = None,
    length: Annotated[Optional[int], typer.Option(
        help="Characters to generate per sample, prompt not counted. Default: model.json (usually 500).")] = None,
    temperature: Annotated[Optional[float], typer.Option(
        help="Below 1: safer, more repetitive; above 1: wilder; 0: always the likeliest. Default: model.json "
             "(usually 0.5).")] = None,
    top_k: Annotated[Optional[int], typer.Option(help="Sample only among the k likeliest characters.")] = None,
    top_p: Annotated[Optional[float], typer.Option(
        help="Sample only among the likeliest characters holding probability p, 0 < p <= 1.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed: the same seed gives the same text on the same "
                                                     "device.")] = None,
    num_samples: Annotated[int, typer.Option(help="Samples to make, run together as one batch.")] = 1,
    stop: Annotated[Optional[str], typer.Option(
        help="End a sample once it has generated this string (kept in the text); \\n and \\t are understood.")]
    = None,
    device: Annotated[Device, typer.Option(help="auto = CUDA if it starts, else the CPU.")] = Device.auto,
    int8: Annotated[Optional[bool], typer.Option(
        "--int8/--fp32", show_default=False,
        help="model.int8.onnx (8-bit weights) or model.onnx (float32). Default: int8 on the CPU when the model "
             "has it (2-3x faster, validation loss within 0.001), float32 on CUDA. A seed's text depends on the "
             "choice.")] = None,
    spin: Annotated[Optional[bool], typer.Option(
        "--spin/--no-spin", help="CPU: keep ONNX Runtime's workers busy-waiting between steps (faster on an idle "
                                 "machine, slower beside other busy work). Default: spin when nothing else is "
                                 "running as the model loads.", show_default=False)] = None,
    stream: Annotated[bool, typer.Option(help="Print text as it is made; --no-stream prints it at the end.")] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object per sample: text, characters per "
                                                          "second, device, model sha256.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="Say on stderr which model, file and device ran, and "
                                                            "how fast.")] = False,
    unknown: Annotated[Unknown, typer.Option(help="Prompt characters outside the vocabulary: error = list them and "
                                                  "stop; skip = drop them.")] = Unknown.error,
) -> None:
    """Generate text with a model folder (ONNX Runtime; TensorFlow is not needed).

    The prompt is printed, then the generated text as it is made. An empty prompt starts from the state after a newline.

    With --num-samples N > 1 each sample follows a line '----- sample i of N -----': the first streams, the others follow when the batch is done.

    Ctrl-C stops with what was made so far printed (exit 130).
    """
    with user_errors({"model_dir": "--model", "num_samples": "--num-samples"}):
        try:
            _run(model, prompt, prompt_file, length, temperature, top_k, top_p, seed, num_samples,
                 None if stop is None else _unescape(stop), Device(device).value, int8, spin,
                 stream and not json_out, json_out, verbose, Unknown(unknown).value)
        except KeyboardInterrupt:
            sys.stdout.flush()
            print(file=sys.stderr)  # end the ^C line
            raise SystemExit(130) from None
        except BrokenPipeError:
            # the reader (e.g. `| head`) has gone: stop quietly, and keep Python from flushing into the pipe
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(0) from None


def _run(model, prompt, prompt_file, length, temperature, top_k, top_p, seed, num_samples, stop,
         device, int8, spin, stream, json_out, verbose, unknown) -> None:
    from charlstm.runtime import Generator, SamplingParams, SearchParams, SessionConfig  # numpy + onnxruntime

    text_in = _read_prompt(prompt, prompt_file)
    start = time.perf_counter()
    gen = Generator(model, SessionConfig(device=device, int8=int8, spinning=spin))
    m = gen.manifest
    sampling = SamplingParams(temperature=m.temperature if temperature is None else temperature, top_k=top_k,
                              top_p=top_p)
    search = SearchParams(length=length, num_samples=num_samples, stop=stop, seed=seed)
    _say(verbose, f"model: {m.dir} ({m.name}: {m.layers} layers x {m.units} units, {len(m.vocab)} characters); "
                  f"file {gen.path.name} sha256 {gen.sha256[:12]}; loaded in {time.perf_counter() - start:.2f} s")
    _say(verbose, f"device: {gen.device} ({', '.join(gen.session.get_providers())})"
                  + (f"; {gen.device_note}" if gen.device_note else "") + f"; {gen.path_note(sampling)}"
                  + (f"; {gen.spinning_note}" if gen.device == "cpu" else ""))
    runs = gen.stream_batch(text_in, sampling, search, unknown=unknown)  # a list of strings per run
    shown = text_in if unknown == "error" else gen.decode(gen.encode(text_in, unknown))
    texts: list[list[str]] = [[] for _ in range(num_samples)]
    interrupted = False
    start = time.perf_counter()
    try:
        if stream:
            _write(_header(0, num_samples) + shown)
        for pieces in runs:
            for row, text in enumerate(pieces):
                texts[row].append(text)
            if stream and pieces[0]:
                _write(pieces[0])
    except KeyboardInterrupt:
        interrupted = True
    seconds = time.perf_counter() - start
    outs = ["".join(t) for t in texts]
    if json_out:
        for row, text in enumerate(outs):
            _write(_json_line(row, shown, text, seconds, gen, seed, stop, interrupted))
    elif stream:
        _print_samples(shown, outs, start=1)  # the first sample was streamed; the others follow
    else:
        _print_samples(shown, outs)
    total = sum(len(t) for t in outs)
    _say(verbose, f"generated {total} characters in {seconds:.2f} s ({total / seconds if seconds else 0:.0f} "
                  f"characters/s on {gen.device}, {num_samples} sample(s))")
    if interrupted:
        raise KeyboardInterrupt
