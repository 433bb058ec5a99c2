"""The runtime needs no TensorFlow: nothing under runtime/ imports it and generating never loads it."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.onnx_fixture import make_model_dir

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {"tensorflow", "keras", "tf_keras", "tf2onnx", "training", "export", "onnx", "pandas"}


def test_nothing_under_runtime_imports_tensorflow_training_or_export():
    """Every import statement, including ones inside functions."""
    found = []
    for path in sorted((REPO / "runtime").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            found += [f"{path.name}:{node.lineno} {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert not found, f"runtime/ must import only numpy, onnxruntime and charlstm.errors: {found}"


CHECK_MODULES = """
import sys
from runtime import Generator
text = Generator(sys.argv[1], device="cpu").generate("ROMEO:", length=20, seed=1)
assert len(text) == 20
from typer.testing import CliRunner
from charlstm.cli import app
result = CliRunner().invoke(app, ["generate", "--model", sys.argv[1], "--length", "20", "--seed", "1"])
assert result.exit_code == 0, result.output
loaded = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2].split(",")))
print(",".join(loaded))
"""


def test_generating_loads_no_tensorflow(tmp_path):
    """In a fresh interpreter, so that other tests' imports do not count."""
    model = make_model_dir(tmp_path / "model")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", CHECK_MODULES, str(model), ",".join(sorted(FORBIDDEN))],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"generating imported {done.stdout.strip()}"


# The fresh-virtual-environment proof (the plain install, no extras, generates; `import tensorflow` fails there)
# is tests/test_deploy.py::test_generate_recipe_installs_and_generates_without_tensorflow: it installs with the
# generate image's own script, so one venv build proves both the runtime's promise and the container recipe.
