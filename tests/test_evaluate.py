"""charlstm evaluate: the runtime's figure (ONNX Runtime) and the run's (Keras) are the same number."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytest.importorskip("tf2onnx", reason="the `export` extra is not installed")


@pytest.mark.parametrize("split", ["val", "all"])
def test_model_and_run_agree(tiny_run, tiny_model, corpus_path, split):
    by_model = run_cli("evaluate", "--model", str(tiny_model), "--text", str(corpus_path), "--split", split, "--json")
    by_run = run_cli("evaluate", "--run", str(tiny_run), "--split", split, "--json")
    assert by_model.returncode == 0, by_model.stderr[-2000:]
    assert by_run.returncode == 0, by_run.stderr[-2000:]
    a, b = json.loads(by_model.stdout), json.loads(by_run.stdout)
    assert a["characters"] == b["characters"] > 1000
    assert abs(a["nats_per_char"] - b["nats_per_char"]) <= 0.005
    assert a["bits_per_char"] == pytest.approx(a["nats_per_char"] / 0.6931471805599453)
    # The run's corpus is named as a user would write it, not through the run folder and back out of it
    assert Path(b["text"]).samefile(corpus_path) and ".." not in Path(b["text"]).parts


def test_int8_close_to_float(tiny_model2, corpus_path):
    text = ("--text", str(corpus_path))
    fp = json.loads(run_cli("evaluate", "--model", str(tiny_model2), *text, "--json").stdout)
    q8 = json.loads(run_cli("evaluate", "--model", str(tiny_model2), *text, "--int8", "--json").stdout)
    assert q8["model_file"] == "model.int8.onnx" and abs(q8["nats_per_char"] - fp["nats_per_char"]) < 0.05


def test_a_model_folder_needs_the_text_named(tiny_model, tmp_path):
    """A model folder records its corpus by name and sha256, never a path: the text to score is given."""
    result = run_cli("evaluate", "--model", str(tiny_model))
    assert result.returncode == 2 and "--text is required" in result.stderr and "tiny.txt" in result.stderr
    odd = tmp_path / "odd.txt"
    odd.write_text("KING: héllo wörld, " * 20, encoding="utf-8")
    refused = run_cli("evaluate", "--model", str(tiny_model), "--text", str(odd), "--split", "all")
    assert refused.returncode == 2 and "--unknown skip" in refused.stderr and "Traceback" not in refused.stderr
    skipped = run_cli("evaluate", "--model", str(tiny_model), "--text", str(odd), "--split", "all", "--unknown",
                      "skip", "--json")
    assert skipped.returncode == 0, skipped.stderr
    assert json.loads(skipped.stdout)["skipped"] == 40


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
