"""The Triton repository against a real Triton server: the `tritonserver` binary that PyPI's nvidia-pytriton wheel
bundles (2.51, with only the python backend). It reads the exported config.pbtxt with its own schema, and the
model fails only for want of the onnxruntime backend library, which no registry here has."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, SLOW_MACHINE_TIMEOUT
from tests.onnx_fixture import make_model_dir

PYTRITON = "nvidia-pytriton==0.7.0"
CACHE = Path.home() / ".cache" / "charlstm" / "pytriton"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tritonserver() -> Path:
    """The bundled binary, unpacked once from the wheel (downloaded without its dependencies)."""
    binary = CACHE / "pytriton" / "tritonserver" / "bin" / "tritonserver"
    if not binary.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        got = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(CACHE), PYTRITON],
                             capture_output=True, text=True, timeout=SLOW_MACHINE_TIMEOUT)
        wheels = sorted(CACHE.glob("nvidia_pytriton-*.whl"))
        if got.returncode != 0 or not wheels:
            pytest.skip(f"cannot download {PYTRITON} ({(got.stderr.strip().splitlines() or ['?'])[-1][:160]})")
        with zipfile.ZipFile(wheels[-1]) as z:
            z.extractall(CACHE)
        binary.chmod(0o755)
    libs = subprocess.run(["ldd", str(binary)], capture_output=True, text=True)
    if "not found" in libs.stdout:
        pytest.skip(f"{binary} cannot run here: {libs.stdout.strip()[:200]}")
    return binary


def serve_once(binary: Path, repo: Path) -> str:
    """Start Triton on 127.0.0.1 against `repo`; it exits once loading has failed (--exit-on-error). Its log."""
    backends = binary.parents[1] / "backends"
    done = subprocess.run([str(binary), f"--model-repository={repo}", f"--backend-directory={backends}",
                           "--http-address=127.0.0.1", "--http-port=0", "--grpc-address=127.0.0.1", "--grpc-port=1",
                           "--allow-grpc=false", "--allow-metrics=false", "--exit-on-error=true", "--log-verbose=1"],
                          capture_output=True, text=True, timeout=SLOW_MACHINE_TIMEOUT)
    return done.stdout + done.stderr


def export(model: Path, repo: Path, *extra: str) -> Path:
    pytest.importorskip("onnx", reason="the `export` extra is not installed")
    done = subprocess.run([sys.executable, "-m", "charlstm.export.triton", str(model), str(repo), *extra],
                          capture_output=True, text=True, cwd=ROOT, timeout=SLOW_MACHINE_TIMEOUT)
    assert done.returncode == 0, done.stderr
    return repo / "fixture"


def test_triton_reads_the_exported_config_and_lacks_only_the_onnxruntime_backend(tritonserver, tmp_path):
    model = make_model_dir(tmp_path / "m", layers=2, units=8)
    export(model, tmp_path / "repo")
    log = serve_once(tritonserver, tmp_path / "repo")
    assert "failed to read text proto" not in log and "Error parsing text-format" not in log, log[-3000:]
    status = re.search(r"\| fixture\s+\| 1\s+\| (.*?)\s*\|\n", log)
    assert status, log[-3000:]
    assert "unable to find backend library for backend 'onnxruntime'" in status.group(1), status.group(1)
    # Triton echoes the configuration it parsed into its ModelConfig (with its own defaults filled in): the
    # inputs and outputs, the sequence batcher with its controls and implicit state (enum values that are 0,
    # CONTROL_SEQUENCE_START and KIND_AUTO, it leaves out, as text-format protobuf does)
    for parsed in ('name: "TOKEN"', 'name: "LOGITS"', "sequence_batching {", 'name: "START"',
                   "kind: CONTROL_SEQUENCE_READY", 'input_name: "H"', 'output_name: "C_OUT"', "zero_data: true",
                   'default_model_filename: "model.onnx"'):
        assert parsed in log, parsed


def test_a_config_triton_cannot_parse_fails_differently(tritonserver, tmp_path):
    """The control: the check above would notice a config Triton refuses."""
    model = make_model_dir(tmp_path / "m", layers=1, units=8)
    folder = export(model, tmp_path / "repo")
    config = folder / "config.pbtxt"
    config.write_text(config.read_text().replace("max_batch_size: 64", 'max_batch_size: "many"'))
    log = serve_once(tritonserver, tmp_path / "repo")
    assert "failed to read text proto" in log and "unable to find backend library" not in log


