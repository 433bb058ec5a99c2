"""Importing an optional extra with a one-line message that quotes the exact install command."""

from __future__ import annotations

import importlib
import os
import sys
import tempfile

from charlstm.errors import UserError


# What TensorFlow's C++ side prints on every machine without a GPU, before its logging can be configured: users
# read these as errors. Anything else it prints is passed on.
TF_NOISE = ("Could not find cuda drivers", "failed call to cuInit", "absl::InitializeLog", "cpu_feature_guard",
            "To enable the following instructions", "rebuild TensorFlow with the appropriate compiler flags",
            "Unable to register cu", "computation placer already registered", "TF-TRT Warning",
            "oneDNN custom operations are on", "TF_ENABLE_ONEDNN_OPTS")


def require(extra: str, *modules: str) -> None:
    """Fail with one line if any of `modules` is missing, naming the extra that brings it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # TensorFlow first: keras imports it too, and its start-up lines must be caught whoever imports it first
    for name in sorted(modules, key=lambda m: m != "tensorflow"):
        try:
            if name == "tensorflow":
                import_tensorflow_quietly()
            else:
                importlib.import_module(name)
        except ImportError:
            raise UserError(f"`charlstm {extra}` needs {name}, which is not installed: "
                            f"pip install 'charlstm[{extra}]'") from None


def import_tensorflow_quietly() -> None:
    """Import TensorFlow and let it probe for GPUs with stderr (fd 2) caught, then pass on what is not noise."""
    if "tensorflow" in sys.modules:
        return
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            import tensorflow as tf
            tf.config.list_physical_devices()  # where "failed call to cuInit" is printed
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            said = caught.read().decode(errors="replace")
    kept = [line for line in said.splitlines() if line.strip() and not any(n in line for n in TF_NOISE)]
    if kept:
        print("\n".join(kept), file=sys.stderr, flush=True)


def require_keras(extra: str) -> None:
    """Keras, and TensorFlow when it is the backend (KERAS_BACKEND, Keras' own default)."""
    if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
        require(extra, "tensorflow", "keras")
    else:
        require(extra, "keras")
