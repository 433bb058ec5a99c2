"""One product, one namespace: what `pip install` puts in site-packages, and which way the layers import."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, SLOW_MACHINE_TIMEOUT, copy_project

LAYERS = ("runtime", "training", "export")


def imports(folder: Path) -> list[tuple[str, str]]:
    """(file:line, module) for every import statement under `folder`, those inside functions included; relative
    imports resolved against the charlstm package the folder is installed as."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else [f"charlstm.{folder.name}.{node.module or ''}"]
            else:
                continue
            found += [(f"{path.relative_to(ROOT)}:{node.lineno}", n) for n in names]
    return found


@pytest.mark.parametrize("layer", LAYERS)
def test_no_layer_imports_the_command_line(layer):
    upward = [(where, name) for where, name in imports(ROOT / layer) if name.startswith("charlstm.cli")]
    assert not upward, f"{layer}/ imports the CLI (layers point down: the CLI imports the library): {upward}"


def test_the_runtime_imports_no_other_layer_and_no_tensorflow():
    forbidden = ("tensorflow", "keras", "tf_keras", "tf2onnx", "onnx", "charlstm.training", "charlstm.export",
                 "charlstm.cli", "starlette", "uvicorn")
    found = [(where, name) for where, name in imports(ROOT / "runtime")
             if any(name == f or name.startswith(f + ".") for f in forbidden)]
    assert not found, f"runtime/ imports only numpy, onnxruntime and its own modules: {found}"


def test_nothing_imports_the_old_top_level_names():
    old = ("runtime", "training", "export", "benchmarks")
    found = [(where, name) for folder in ("charlstm", *LAYERS) for where, name in imports(ROOT / folder)
             if name.split(".")[0] in old]
    assert not found, f"import charlstm.runtime (and so on), not the folders' own names: {found}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    project = copy_project(out / "project")  # a copy: pip's build writes build/ and *.egg-info beside the source
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(project)],
                          capture_output=True, text=True, timeout=SLOW_MACHINE_TIMEOUT, cwd=out)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (path,) = out.glob("charlstm-*.whl")
    return path


@pytest.mark.slow
def test_the_wheel_installs_one_package_with_the_default_model_and_no_lab(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        top_level = next(z.read(n).decode() for n in names if n.endswith(".dist-info/top_level.txt"))
    assert top_level.split() == ["charlstm"]
    packages = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert packages == {"charlstm"}, packages
    for layer in LAYERS:
        assert f"charlstm/{layer}/__init__.py" in names
    assert {f"charlstm/models/shakespeare/{f}" for f in ("model.json", "model.onnx")} <= set(names)
    assert not [n for n in names if "benchmarks" in n or "/tests/" in n or "quijote" in n or n.startswith("tests/")]
