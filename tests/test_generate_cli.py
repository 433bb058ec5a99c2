"""`charlstm generate` through typer's CliRunner and a real subprocess, on the tiny ONNX fixture."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from charlstm.cli import app
from tests.conftest import SLOW_MACHINE_TIMEOUT
from tests.onnx_fixture import file_entry, make_model_dir

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("cli") / "fixture", layers=1, units=16, int8=True)


def run(*args):
    return CliRunner().invoke(app, ["generate", *map(str, args)])


def ok(*args):
    result = run(*args)
    assert result.exit_code == 0, result.stderr
    return result


def test_prints_prompt_then_text_and_nothing_else(model_dir):
    result = ok("--model", model_dir, "--prompt", "ROMEO:", "--length", 50, "--seed", 1, "--device", "cpu")
    assert result.stdout.startswith("ROMEO:") and len(result.stdout) == len("ROMEO:") + 50 + 1
    assert result.stderr == ""
    assert result.stdout == ok("--model", model_dir, "--prompt", "ROMEO:", "--length", 50, "--seed", 1).stdout
    assert result.stdout == ok("--model", model_dir, "--prompt", "ROMEO:", "--length", 50, "--seed", 1,
                               "--no-stream").stdout


def test_verbose_goes_to_stderr_only(model_dir):
    quiet = ok("--model", model_dir, "--length", 30, "--seed", 2)
    loud = ok("--model", model_dir, "--length", 30, "--seed", 2, "--verbose")
    assert loud.stdout == quiet.stdout
    assert "device: cpu" in loud.stderr and "characters/s" in loud.stderr
    assert "CPU workers (" in loud.stderr  # spinning or sleeping, and why
    for flag, said in (("--spin", "spinning CPU workers (as asked)"), ("--no-spin", "sleeping CPU workers (as asked)")):
        result = ok("--model", model_dir, "--length", 30, "--seed", 2, "--verbose", flag)
        assert result.stdout == quiet.stdout and said in result.stderr


def test_json_gives_one_object_per_sample(model_dir):
    result = ok("--model", model_dir, "--prompt", "KING", "--length", 20, "--seed", 3, "--num-samples", 3, "--json")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["sample"] for r in rows] == [1, 2, 3]
    assert all(len(r["text"]) == 20 and r["prompt"] == "KING" and r["device"] == "cpu" for r in rows)
    assert rows[0]["model_file"] == "model.int8.onnx"  # the CPU default where the folder has it
    assert rows[0]["model_sha256"] == file_entry(model_dir / "model.int8.onnx")["sha256"]
    assert rows[0]["chars_per_second"] > 0


def test_several_samples_are_printed_one_after_another(model_dir):
    result = ok("--model", model_dir, "--prompt", "A", "--length", 15, "--seed", 4, "--num-samples", 2)
    lines = result.stdout.split("\n")
    assert lines[0] == "----- sample 1 of 2 -----" and "----- sample 2 of 2 -----" in lines
    assert result.stdout == ok("--model", model_dir, "--prompt", "A", "--length", 15, "--seed", 4,
                               "--num-samples", 2, "--no-stream").stdout


def test_prompt_file_stop_and_unknown_skip(model_dir, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("KING:\n", encoding="utf-8")
    from_file = ok("--model", model_dir, "--prompt-file", prompt, "--length", 40, "--seed", 5)
    assert from_file.stdout == ok("--model", model_dir, "--prompt", "KING:\n", "--length", 40, "--seed", 5).stdout
    skipped = ok("--model", model_dir, "--prompt", "KING:é\n", "--unknown", "skip", "--length", 40, "--seed", 5)
    assert skipped.stdout == from_file.stdout
    text = from_file.stdout[len("KING:\n"):-1]
    stop = text[10:12].replace("\n", "\\n")
    stopped = ok("--model", model_dir, "--prompt-file", prompt, "--length", 40, "--seed", 5, "--stop", stop)
    assert len(stopped.stdout) < len(from_file.stdout) and from_file.stdout.startswith(stopped.stdout[:-1])


def test_int8_and_fp32(model_dir):
    result = ok("--model", model_dir, "--int8", "--length", 25, "--seed", 1, "--verbose")
    assert len(result.stdout) == 26 and "model.int8.onnx" in result.stderr
    assert result.stdout == ok("--model", model_dir, "--length", 25, "--seed", 1).stdout  # the CPU default
    fp32 = ok("--model", model_dir, "--fp32", "--length", 25, "--seed", 1, "--verbose")
    assert len(fp32.stdout) == 26 and "file model.onnx" in fp32.stderr


def _variant(src: Path, dst: Path, edit) -> Path:
    """A copy of the fixture folder with one thing broken by `edit(folder, manifest)`."""
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    original = (dst / "model.json").read_text()
    manifest = json.loads(original)
    edit(dst, manifest)
    if manifest != json.loads(original):  # the edit changed the manifest, not only the files
        (dst / "model.json").write_text(json.dumps(manifest))
    return dst


def _flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


def _corrupt(d, m):
    (d / "model.onnx").write_bytes(b"not an onnx model")
    m["files"]["model.onnx"] = file_entry(d / "model.onnx")  # the checksum matches: ONNX Runtime must refuse it


def _wider_vocab(d, m):
    m["vocab"] = m["vocab"] + ["~"]
    m["model"]["vocab_size"] += 1


BROKEN_FOLDERS = {
    "no-manifest": (lambda d, m: (d / "model.json").unlink(), "model.json does not exist"),
    "not-json": (lambda d, m: (d / "model.json").write_text("{oops"), "not valid JSON"),
    "manifest-is-a-folder": (lambda d, m: ((d / "model.json").unlink(), (d / "model.json").mkdir()),
                             "model.json is not a regular file"),
    "wrong-format": (lambda d, m: m.update(format="keras-model"), "'keras-model'"),
    "wrong-version": (lambda d, m: m.update(format_version=2), "format_version 2"),
    "no-onnx": (lambda d, m: (d / "model.onnx").unlink(), "model.onnx does not exist"),
    "size-mismatch": (lambda d, m: (d / "model.onnx").write_bytes((d / "model.onnx").read_bytes() + b"\0"),
                      "changed or truncated"),
    "sha-mismatch": (lambda d, m: (d / "model.onnx").write_bytes(_flip_last_byte((d / "model.onnx").read_bytes())),
                     "sha256"),
    "corrupt-onnx": (_corrupt, "ONNX Runtime cannot load"),
    "logits-width": (_wider_vocab, "logits of width 65"),
    "no-int8": (lambda d, m: ((d / "model.int8.onnx").unlink(), m["files"].pop("model.int8.onnx")),
                "model.int8.onnx does not exist"),
}


def assert_one_line_error(result, *quoted):
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for q in quoted:
        assert q in lines[0], (q, lines[0])
    assert result.stdout == ""


@pytest.mark.parametrize("case", sorted(BROKEN_FOLDERS))
def test_broken_model_folders_are_one_line_errors(case, model_dir, tmp_path):
    edit, quoted = BROKEN_FOLDERS[case]
    folder = _variant(model_dir, tmp_path / case, edit)
    extra = ["--int8"] if case == "no-int8" else ["--fp32"]  # the CPU default reads model.int8.onnx
    assert_one_line_error(run("--model", folder, "--length", 5, *extra), quoted)


@pytest.mark.parametrize("args, quoted", [
    (["--prompt", "héllo~ü"], ["'é'", "'ü'", "--unknown skip"]),
    (["--temperature", "-1"], ["--temperature -1.0"]),
    (["--temperature", "nan"], ["--temperature nan"]),
    (["--temperature", "inf"], ["--temperature inf"]),
    (["--length", "-5"], ["--length -5"]),
    (["--length", "20000000"], ["--length 20000000"]),
    (["--top-p", "0"], ["--top-p 0.0"]),
    (["--top-p", "1.5"], ["--top-p 1.5"]),
    (["--top-k", "0"], ["--top-k 0"]),
    (["--num-samples", "0"], ["--num-samples 0"]),
    (["--prompt", "A", "--prompt-file", "p.txt"], ["--prompt 'A'", "p.txt", "both"]),
    (["--prompt-file", "missing.txt"], ["missing.txt"]),
    (["--int8", "--device", "cuda"], ["--int8", "--device cpu"]),
    (["--temperature", "1e39"], ["--temperature 1e+39"]),
    (["--seed", "-5"], ["--seed -5"]),
    (["--seed", str(2**64)], ["--seed 18446744073709551616"]),
])
def test_bad_options_are_one_line_errors(args, quoted, model_dir):
    assert_one_line_error(run("--model", model_dir, *args), *quoted)


def test_missing_model_folder(tmp_path):
    assert_one_line_error(run("--model", tmp_path / "nowhere"), "--model", "nowhere", "does not exist")


def test_the_default_model_needs_no_folder(tmp_path, monkeypatch):
    """Without --model or $CHARLSTM_MODEL, generate uses the model that ships inside the package."""
    monkeypatch.delenv("CHARLSTM_MODEL", raising=False)
    monkeypatch.chdir(tmp_path)
    result = ok("--length", 5, "--seed", 1, "--verbose")
    assert len(result.stdout) == 6 and "shakespeare" in result.stderr


def test_device_cuda_works_or_says_why_in_one_line(model_dir):
    result = run("--model", model_dir, "--device", "cuda", "--length", 5)
    if result.exit_code != 0:  # no GPU here: ONNX Runtime fell back, and that must be an error
        assert_one_line_error(result, "--device cuda", "--device cpu")


def _subprocess(*args, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "charlstm", "generate", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_a_real_subprocess(model_dir):
    proc = _subprocess("--model", model_dir, "--prompt", "ROMEO:", "--length", 50, "--seed", 1)
    out, err = proc.communicate(timeout=SLOW_MACHINE_TIMEOUT)
    assert proc.returncode == 0 and err == b""
    cli = ok("--model", model_dir, "--prompt", "ROMEO:", "--length", 50, "--seed", 1).stdout
    assert out.decode() == cli
    proc = _subprocess("--model", model_dir, "--top-k", "0")
    out, err = proc.communicate(timeout=SLOW_MACHINE_TIMEOUT)
    assert proc.returncode == 2 and err.decode().strip() == err.decode().strip().splitlines()[0]
    assert b"Traceback" not in err and err.startswith(b"error: --top-k 0")


def test_ctrl_c_stops_cleanly_with_exit_130(model_dir):
    proc = _subprocess("--model", model_dir, "--prompt", "ROMEO:", "--length", 10_000_000, "--seed", 1)
    head = proc.stdout.read(20)  # the loop is running and streaming
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=SLOW_MACHINE_TIMEOUT)
    assert proc.returncode == 130, err.decode()
    assert b"Traceback" not in err
    assert (head + out).startswith(b"ROMEO:") and len(head + out) > 20
