"""charlstm evaluate: the runtime's figure (ONNX Runtime) and the run's (Keras) are the same number."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli

pytest.importorskip("tf2onnx", reason="the `export` extra is not installed")


@pytest.mark.parametrize("split", ["val", "all"])
def test_model_and_run_agree(tiny_run, tiny_model, split):
    by_model = run_cli("evaluate", "--model", str(tiny_model), "--split", split, "--json")
    by_run = run_cli("evaluate", "--run", str(tiny_run), "--split", split, "--json")
    assert by_model.returncode == 0, by_model.stderr[-2000:]
    assert by_run.returncode == 0, by_run.stderr[-2000:]
    a, b = json.loads(by_model.stdout), json.loads(by_run.stdout)
    assert a["characters"] == b["characters"] > 1000
    assert abs(a["nats_per_char"] - b["nats_per_char"]) <= 0.005
    assert a["bits_per_char"] == pytest.approx(a["nats_per_char"] / 0.6931471805599453)


def test_int8_close_to_float(tiny_model2):
    fp = json.loads(run_cli("evaluate", "--model", str(tiny_model2), "--json").stdout)
    q8 = json.loads(run_cli("evaluate", "--model", str(tiny_model2), "--int8", "--json").stdout)
    assert q8["model_file"] == "model.int8.onnx" and abs(q8["nats_per_char"] - fp["nats_per_char"]) < 0.05


@pytest.mark.parametrize("args, message", [
    ([], "pass exactly one of --model"),
    (["--model", "nowhere"], "nowhere"),
    (["--run", "nowhere"], "not a run folder"),
    (["--model", "nowhere", "--average", "2"], "--average applies to --run"),
    (["--run", "nowhere", "--average", "0"], "greater than or equal to 1"),
])
def test_bad_input(args, message):
    result = run_cli("evaluate", *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_truncated_checkpoint_is_one_line(tiny_run, tmp_path):
    import shutil
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    best = run_dir / "checkpoints" / "best.weights.h5"
    best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    result = run_cli("evaluate", "--run", str(run_dir))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"checkpoint {best} cannot be loaded" in result.stderr
