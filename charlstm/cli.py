"""The `charlstm` command: a thin layer that parses options, calls a library function and prints.

Each subcommand lives in its own module and imports its heavy dependencies (TensorFlow, ONNX Runtime) inside
the function, so `charlstm --help` is fast and works with the runtime-only install.
"""

from __future__ import annotations

import sys

import typer

from charlstm import bench_cmd, evaluate_cmd, export_cmd, generate_cmd, train_cmd

app = typer.Typer(
    help="Character-level LSTM text generation: train with Keras 3, export to ONNX, generate with ONNX Runtime.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("train")(train_cmd.train)
app.command("export")(export_cmd.export)
app.command("generate")(generate_cmd.generate)
app.command("evaluate")(evaluate_cmd.evaluate)
app.command("bench")(bench_cmd.bench)


def main() -> None:
    """Console entry point. Commands turn their own UserErrors into one line (charlstm.errors.user_errors)."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
