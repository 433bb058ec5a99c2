"""`charlstm bench` and the benchmarks/ scripts on tiny models: the table has its rows and positive numbers.

No timing assertions: the figures depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from importlib.util import find_spec

import pytest
import typer
from typer.testing import CliRunner

from benchmarks.timing import Row, fill_ratios, median, round_robin
from charlstm import bench_cmd
from tests.conftest import ROOT
from tests.onnx_fixture import make_model_dir

HAS_TF = find_spec("tensorflow") is not None

try:
    from charlstm.cli import app
except Exception:  # noqa: BLE001 - the other commands may be mid-edit: test bench on its own
    app = typer.Typer()
    app.callback()(lambda: None)
    app.command("bench")(bench_cmd.bench)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("bench") / "tiny", layers=1, units=16, int8=True)


def bench(tmp_path, *args) -> list[dict]:
    """Run `charlstm bench ARGS --json FILE`; returns the rows after checking the table was printed."""
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", *map(str, args), "--cache", str(tmp_path / "cache"),
                                      "--json", str(out)])
    assert result.exit_code == 0, result.output + result.stderr
    rows = json.loads(out.read_text(encoding="utf-8"))["rows"]
    for row in rows:
        assert row["variant"].split(",")[0][:20] in result.stdout
    return rows


def by_variant(rows: list[dict], start: str) -> dict:
    found = [r for r in rows if r["variant"].startswith(start)]
    assert found, f"no row {start!r} in {[r['variant'] for r in rows]}"
    return found[0]


def measured(row: dict) -> None:
    assert row["us_per_char"] > 0 and row["chars_per_s"] > 0, row


def test_cpu_table_has_every_variant(tmp_path, model_dir):
    rows = bench(tmp_path, "--model", model_dir, "--steps", 10, "--repeats", 1, "--threads", 2)
    floor = by_variant(rows, "numpy floor 1x24 @ 24x64")  # embedding 8 + units 16, 4 x 16 gates
    assert floor["threads"] == 2
    measured(floor)
    assert by_variant(rows, "numpy floor")["vs_floor"] == pytest.approx(1.0)
    for name in ("onnx float32 step, batch 1, spinning", "onnx float32 step, batch 1, sleeping",
                 "onnx int8 step, batch 1", "onnx float32 step, batch 64", "generate loop float32, batch 1",
                 "generate loop float32, batch 1 (step + sample), sleeping"):
        row = by_variant(rows, name)
        measured(row)
        assert row["vs_floor"] > 0
    assert "x float32's time" in by_variant(rows, "onnx int8")["note"]
    assert "per round, time vs float32 " in by_variant(rows, "onnx int8")["note"]
    notebook = by_variant(rows, "notebook loop")
    if HAS_TF:
        measured(notebook)
        assert by_variant(rows, "onnx float32 step, batch 1")["speedup_vs_notebook"] > 0
    else:
        assert notebook["note"].startswith("skipped")


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TF or find_spec("tf2onnx") is None, reason="the `export` extra is not installed")
def test_builds_a_random_model_and_times_cold_starts(tmp_path, capsys):
    rows = bench(tmp_path, "--vocab-size", 20, "--embedding-dim", 8, "--units", 16, "--steps", 10, "--repeats", 1,
                 "--threads", 1, "--cold", "--cold-runs", 1, "--length", 20)
    model_dir = tmp_path / "cache" / "random-v20-e8-u16-l1" / "model"
    assert (model_dir / "model.int8.onnx").is_file()
    measured(by_variant(rows, "generate loop float32, batch 1, burst graph"))
    (model_dir / "model.burst.onnx").unlink()  # what an export from before the burst graph left in a cache
    from benchmarks.models import Shape, random_model
    assert random_model(Shape(20, 8, 16, 1), tmp_path / "cache")[0] == model_dir
    assert (model_dir / "model.burst.onnx").is_file()
    # the GPU machine's variant script, built here and dry-run on the CPU
    from benchmarks import burst_variants
    written = {p.name for p in burst_variants.build(model_dir, model_dir.parent / "notebook.npz")}
    assert {"variant-lstmop-step.onnx", "variant-lstmop-16.onnx", "variant-argmax-16.onnx"} <= written
    capsys.readouterr()
    burst_variants.measure(model_dir, runs=1, repeats=1, device="cpu")
    out = capsys.readouterr().out
    assert "variant-lstmop-16" in out and "did not" not in out, out
    assert float(re.search(r"max difference (\S+)", out).group(1)) <= 1e-4
    (model_dir / "variant-broken-16.onnx").write_bytes(b"not onnx")  # each file runs in a process of its own
    assert not burst_variants._child(model_dir, model_dir / "variant-broken-16.onnx", "cpu", False, 1, 1)
    assert "variant-broken-16, no graphs" in capsys.readouterr().out
    assert by_variant(rows, "notebook loop")["note"].startswith("same weights")
    generate, notebook = by_variant(rows, "cold: charlstm generate"), by_variant(rows, "cold: notebook script")
    measured(generate)
    measured(notebook)
    assert generate["speedup_vs_notebook"] > 0
    assert by_variant(rows, "peak RSS")["extra"]["peak_rss_mb"] > 0


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TF, reason="the `train` extra is not installed")
def test_training_pipeline_rows(tmp_path):
    rows = bench(tmp_path, "--training", "--vocab-size", 20, "--embedding-dim", 8, "--units", 16,
                 "--training-steps", 2, "--repeats", 1)
    measured(by_variant(rows, "train: CharBatches"))
    measured(by_variant(rows, "train: bare model.fit"))
    assert "vs the bare fit" in rows[0]["note"]


def test_bench_cuda_without_a_gpu_is_one_line(tmp_path, model_dir):
    result = CliRunner().invoke(app, ["bench", "--device", "cuda", "--model", str(model_dir), "--steps", "5",
                                      "--repeats", "1", "--cache", str(tmp_path)])
    if result.exit_code == 0:  # a machine with a working GPU: the table came out
        assert "batch 64" in result.stdout
    else:
        assert result.exit_code == 2 and result.stderr.startswith("error: --device cuda")
        assert "Traceback" not in result.output


def gpu_script(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.gpu", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_gpu_script_checks_itself_on_the_cpu(model_dir):
    p = gpu_script("--model", model_dir, "--device", "cpu", "--steps", 5, "--repeats", 1)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    timed = [line for line in lines if " batch " in line]  # step, burst and the two loops at batch 1 and 64
    assert lines[0].startswith("device") and len(timed) == 8, p.stdout
    for line in timed:  # "... batch 64   12.3   81,300  note": µs per character, characters per second
        us, per_s = re.search(r"batch (?:1|64)\s+([\d,.]+)\s+([\d,]+)", line).groups()
        assert float(us.replace(",", "")) > 0 and int(per_s.replace(",", "")) > 0, line
    assert any("burst text vs step text" in line and "200/200 characters equal" in line for line in lines)


def test_gpu_script_skips_or_runs(model_dir):
    p = gpu_script("--model", model_dir, "--steps", 5, "--repeats", 1)
    assert p.returncode == 0, p.stderr
    assert p.stderr.startswith("skipped: ") or "batch 64" in p.stdout


def test_gpu_script_bad_model_is_one_line(tmp_path):
    p = gpu_script("--model", tmp_path / "absent", "--device", "cpu")
    assert p.returncode == 2 and p.stderr.startswith("error: model folder") and "Traceback" not in p.stderr


def test_ratios_on_fixed_rows():
    rows = [Row("cpu", "numpy floor 1x4 @ 4x16 float32", 1, 200.0), Row("cpu", "onnx float32 step, batch 1", 1, 100.0),
            Row("cpu", "notebook loop (keras 3 eager), batch 1", None, 5000.0),
            Row("cpu", "cold: charlstm generate, 500 chars", us_per_char=2000.0), Row("cpu", "skipped row")]
    fill_ratios(rows)
    assert rows[1].vs_floor == 0.5 and rows[1].speedup_vs_notebook == 50.0 and rows[1].chars_per_s == 10_000
    assert rows[3].vs_floor is None and rows[4].vs_floor is None and rows[4].chars_per_s is None
    assert median([3.0, 1.0, 2.0]) == 2.0 and median([4.0, 1.0, 2.0, 3.0]) == 2.5


def test_step_variants_script(model_dir):
    p = subprocess.run([sys.executable, "-m", "benchmarks.step_variants", "--model", str(model_dir), "--steps", "5",
                        "--repeats", "1"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 11 and any(line.startswith("4-bit MatMulNBits") for line in lines)
    assert any(line.startswith("float32, 2 thread(s), runtime BoundStepper") for line in lines)


def test_round_robin_settles_before_each_timed_run():
    calls = []

    def fn(n):  # ~1 ms a unit, so the settle call's size follows from the wall time
        calls.append(n)
        start = time.perf_counter()
        while time.perf_counter() - start < n * 1e-3:
            pass
        return float(n)

    runs = {}
    medians = round_robin({"a": (fn, 4)}, repeats=3, gap=0, settle=0.01, runs_out=runs)
    assert calls[0] == 5  # the warm-up: max(5, steps // 4)
    settles, timed = calls[1::2], calls[2::2]
    assert timed == [4, 4, 4] and all(1 <= n <= 10 for n in settles), calls  # 10 ms at >= 1 ms a unit
    assert medians == {"a": 4.0} and runs == {"a": [4.0, 4.0, 4.0]}
    calls.clear()
    round_robin({"a": (fn, 4)}, repeats=2, gap=0, settle=0)
    assert calls == [5, 4, 4]


def test_settle_script(model_dir):
    p = subprocess.run([sys.executable, "-m", "benchmarks.settle", "--model", str(model_dir), "--calls", "5",
                        "--segments", "3", "--repeats", "1", "--gap", "0"], capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["numpy", "float32", "int8"]
    assert all(float(x) > 0 for line in lines[1:] for x in line.split("first / later:")[0].split()[-3:])


def test_spinning_script(model_dir):
    p = subprocess.run([sys.executable, "-m", "benchmarks.spinning", "--model", str(model_dir), "--steps", "5",
                        "--repeats", "1", "--gap", "0", "--settle", "0"], capture_output=True, text=True, cwd=ROOT,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    rows = {line.split("  ")[0].strip(): line for line in p.stdout.strip().splitlines()[1:]}
    assert {"numpy floor", "step, spinning", "step, no spinning", "generate loop, spinning"} <= set(rows), rows
    assert all(float(line.split("µs/char")[0].split()[-1]) > 0 for line in rows.values())
