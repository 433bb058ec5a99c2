"""benchmarks/bench.py runs from a checkout on a tiny model and prints its table (no timing assertions: the
figures depend on the machine and on what else runs on it)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, SLOW_MACHINE_TIMEOUT
from tests.onnx_fixture import make_model_dir


@pytest.mark.slow
def test_the_cpu_table_has_its_rows(tmp_path):
    model = make_model_dir(tmp_path / "tiny", layers=1, units=16, int8=True)
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "benchmarks/bench.py", "--model", str(model), "--steps", "10",
                           "--repeats", "2", "--cold", "--cold-runs", "1", "--baseline", str(ROOT), "--json",
                           str(out)], capture_output=True, text=True, cwd=ROOT, timeout=SLOW_MACHINE_TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {name: (value, note) for name, value, note in json.loads(out.read_text())["rows"]}
    for name in ("ONNX float32 step, batch 1", "ONNX int8 step, batch 1", "generate loop float32, batch 1",
                 "generate loop int8, batch 1", "ONNX float32 step, batch 64 (per character)",
                 "ONNX int8 step, batch 64 (per character)", "peak memory of charlstm generate (MB)"):
        assert rows[name][0] > 0 and name in done.stdout, name
    assert "x the baseline's time" in rows["ONNX float32 step, batch 1"][1]
    assert any(name.startswith("numpy floor") for name in rows)
    assert any(name.startswith("cold start") for name in rows)
    assert "spinning_choice_at_start=" in done.stdout
