"""The `charlstm` command: a thin layer that parses options, calls a library function and prints.

Each subcommand lives in its own module and imports its heavy dependencies (TensorFlow, ONNX Runtime) inside
the function, so `charlstm --help` is fast and works with the runtime-only install.
"""

from __future__ import annotations

import sys

import typer

from charlstm.cli import evaluate, export, generate, serve, train, web

app = typer.Typer(
    help="Character-level LSTM text generation: train with Keras 3, export to ONNX, generate with ONNX Runtime.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("train")(train.train)
app.command("export")(export.export)
app.command("generate")(generate.generate)
app.command("evaluate")(evaluate.evaluate)
app.command("serve")(serve.serve)
app.command("web")(web.web)


def main() -> None:
    """Console entry point. Commands turn their own UserErrors into one line (charlstm.cli.output.user_errors)."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
