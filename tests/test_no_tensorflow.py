"""The runtime needs no TensorFlow: generating never loads it (tests/test_layout.py checks the import statements)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SLOW_MACHINE_TIMEOUT
from tests.onnx_fixture import make_model_dir

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {"tensorflow", "keras", "tf_keras", "tf2onnx", "onnx", "pandas", "charlstm.training",
             "charlstm.export"}


CHECK_MODULES = """
import sys
from charlstm.runtime import Generator
text = Generator(sys.argv[1], device="cpu").generate("ROMEO:", length=20, seed=1)
assert len(text) == 20
from typer.testing import CliRunner
from charlstm.cli import app
result = CliRunner().invoke(app, ["generate", "--model", sys.argv[1], "--length", "20", "--seed", "1"])
assert result.exit_code == 0, result.output
wanted = sys.argv[2].split(",")
loaded = sorted({w for w in wanted for m in sys.modules if m == w or m.startswith(w + ".")})
print(",".join(loaded))
"""


def test_generating_loads_no_tensorflow(tmp_path):
    """In a fresh interpreter, so that other tests' imports do not count."""
    model = make_model_dir(tmp_path / "model")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", CHECK_MODULES, str(model), ",".join(sorted(FORBIDDEN))],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=SLOW_MACHINE_TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"generating imported {done.stdout.strip()}"


# The fresh-virtual-environment proof (the plain install, no extras, generates; `import tensorflow` fails there)
# is tests/test_deploy.py::test_generate_recipe_installs_and_generates_without_tensorflow: it installs with the
# generate image's own script, so one venv build proves both the runtime's promise and the container recipe.
