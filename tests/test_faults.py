"""Hostile folders and unlucky operators: every case one line on stderr, exit 2, no traceback, nothing lost.

The Triton exporter against damaged and hostile model folders (in a child with a memory limit, so a regression
cannot exhaust the machine), a full disk and a read-only folder (small tmpfs mounts; skipped with a message where
mounting is not allowed), divergence, the export race and the temporary folders a killed export leaves."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import ROOT, SLOW_MACHINE_TIMEOUT, run_cli
from tests.onnx_fixture import file_entry, make_model_dir

MEMORY_LIMIT = 3 << 30  # bytes of address space for a child that reads a hostile folder


def limited():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def one_line_error(done: subprocess.CompletedProcess, *words: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout[-500:], done.stderr[-2000:])
    assert "Traceback" not in done.stderr + done.stdout, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr[-2000:]
    for w in words:
        assert w in errors[0], (w, errors[0])
    return errors[0]


def triton(model: Path, repo: Path, *extra: str) -> subprocess.CompletedProcess:
    pytest.importorskip("onnx", reason="the `export` extra is not installed")
    return subprocess.run([sys.executable, "-m", "charlstm.export.triton", str(model), str(repo), *extra],
                          capture_output=True, text=True, cwd=ROOT, timeout=SLOW_MACHINE_TIMEOUT,
                          preexec_fn=limited)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("hostile") / "good", layers=1, units=8)


def variant(good: Path, dst: Path, edit) -> Path:
    shutil.copytree(good, dst, symlinks=True)
    manifest = json.loads((dst / "model.json").read_text())
    edit(dst, manifest)
    if manifest is not None:
        (dst / "model.json").write_text(json.dumps(manifest))
    return dst


def _swap(d, m):
    other = make_model_dir(d.parent / f"other-{d.name}", layers=1, units=8, seed=5)
    shutil.copy(other / "model.onnx", d / "model.onnx")


def _fifo(d, m):
    (d / "model.onnx").unlink()
    os.mkfifo(d / "model.onnx")


def _dev_zero(d, m):
    (d / "model.onnx").unlink()
    (d / "model.onnx").symlink_to("/dev/zero")


def _external_outside(d, m):
    import onnx
    model = onnx.load(d / "model.onnx")
    init = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    (d.parent / "secret.bin").write_bytes(init.raw_data)
    init.ClearField("raw_data")
    init.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", str(init.dims[0] * init.dims[1] * 4))):
        entry = init.external_data.add()
        entry.key, entry.value = key, value
    onnx.save(model, d / "model.onnx")
    m["files"]["model.onnx"] = file_entry(d / "model.onnx")


HOSTILE = {
    "onnx-is-dev-zero": (_dev_zero, "is not a regular file"),
    "onnx-is-a-fifo": (_fifo, "is not a regular file"),
    "name-dot": (lambda d, m: m.update(name="."), "cannot be a Triton model folder"),
    "name-dotdot": (lambda d, m: m.update(name=".."), "cannot be a Triton model folder"),
    "no-format": (lambda d, m: m.pop("format"), "format is None"),
    "unknown-format": (lambda d, m: m.update(format="other"), "format is 'other'"),
    "duplicate-vocab": (lambda d, m: m["vocab"].__setitem__(1, m["vocab"][0]), "vocab repeats"),
    "multi-character-vocab": (lambda d, m: m["vocab"].__setitem__(0, "ab"), "single characters"),
    "vocab-a-string": (lambda d, m: m.update(vocab="abc"), "single characters"),
    "vocab-a-dict": (lambda d, m: m.update(vocab={"a": 0}), "single characters"),
    "vocab-too-short": (lambda d, m: (m.update(vocab=m["vocab"][:-1]), m["model"].update(vocab_size=64)),
                        "logits of width 65"),
    "model-a-list": (lambda d, m: m.update(model=[1, 2]), "'model' section is [1, 2]"),
    "files-a-string": (lambda d, m: m.update(files="model.onnx"), "'files' section"),
    "sampling-a-list": (lambda d, m: m.update(sampling=[1]), "'sampling' section is [1]"),
    "provenance-a-string": (lambda d, m: m.update(provenance="x"), "'provenance' section"),
    "layers-huge": (lambda d, m: m["model"].update(layers=10**12), "model.layers"),
    "units-huge": (lambda d, m: m["model"].update(units=10**12), "model.units"),
    "burst-steps-huge": (lambda d, m: m["burst"].update(steps=10**12), "burst.steps"),
    "burst-file-outside": (lambda d, m: m["burst"].update(file="../x.onnx"), "burst.file"),
    "swapped-onnx": (_swap, "sha256"),
    "truncated-onnx": (lambda d, m: (d / "model.onnx").write_bytes((d / "model.onnx").read_bytes()[:100]),
                       "changed or truncated"),
    "external-data-outside": (_external_outside, "cannot load"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_the_triton_exporter_refuses_a_hostile_folder_in_one_line(case, good, tmp_path):
    edit, words = HOSTILE[case]
    folder = variant(good, tmp_path / case, edit)
    repo = tmp_path / "repo"
    (repo / "keep").mkdir(parents=True)  # another model in the repository
    (repo / "keep" / "config.pbtxt").write_text("keep me")
    one_line_error(triton(folder, repo, "--force"), words)
    assert sorted(p.name for p in repo.iterdir()) == ["keep"] and (repo / "keep" / "config.pbtxt").read_text() == "keep me"


@pytest.mark.parametrize("case", ["sampling-a-list", "provenance-a-string", "layers-huge", "units-huge",
                                  "burst-steps-huge"])
def test_generate_and_evaluate_refuse_a_malformed_manifest(case, good, tmp_path):
    edit, words = HOSTILE[case]
    folder = variant(good, tmp_path / case, edit)
    text = tmp_path / "t.txt"
    text.write_text("ROMEO: hello there\n", encoding="utf-8")
    one_line_error(run_cli("generate", "--model", str(folder), "--length", "5", "--fp32"), words)
    one_line_error(run_cli("evaluate", "--model", str(folder), "--text", str(text)), words)


@contextmanager
def tmpfs(path: Path, size: str, readonly: bool = False):
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if readonly else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'}): needs root and "
                    "CAP_SYS_ADMIN")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _tiny_train_args(corpus: Path, out: Path, epochs: int = 2) -> list[str]:
    return ["train", "--text", str(corpus), "--out", str(out), "--units", "16", "--layers", "1", "--embedding-dim",
            "8", "--batch-size", "8", "--seq-length", "32", "--epochs", str(epochs), "--sample-every", "0",
            "--dropout", "0", "--recurrent-dropout", "0", "--stateless", "--quiet"]


@pytest.mark.slow
def test_a_full_disk_during_train_and_export(tmp_path, corpus_path, tiny_run):
    with tmpfs(tmp_path / "small", "400k") as small:
        # train: the first epoch's files fit, a later one does not; the one before stays whole
        result = run_cli(*_tiny_train_args(corpus_path, small / "run", epochs=50))
        line = one_line_error(result, "cannot write in", "free some space there or write elsewhere")
        assert str(small / "run") in line
        history = (small / "run" / "history.csv").read_text().splitlines() if (small / "run" / "history.csv").exists() \
            else []
        if len(history) > 1:
            import h5py
            last = len(history) - 1
            with h5py.File(small / "run" / "checkpoints" / f"epoch-{last:03d}.weights.h5", "r"):
                pass  # readable
        assert not list((small / "run").rglob(".tmp-*"))
    with tmpfs(tmp_path / "tiny", "1m") as tiny:
        (tiny / "other").mkdir()
        (tiny / "other" / "kept.txt").write_text("earlier work")
        free = shutil.disk_usage(tiny).free
        (tiny / "filler").write_bytes(b"\0" * (free - 16 * 1024))  # 16 KB left: less than the model folder
        result = run_cli("export", str(tiny_run), "--out", str(tiny / "model"))
        one_line_error(result, "cannot write in", "free some space")
        assert not (tiny / "model").exists() and not list(tiny.glob(".tmp-*"))
        assert (tiny / "other" / "kept.txt").read_text() == "earlier work"


@pytest.mark.slow
def test_a_read_only_folder_is_refused_before_the_work(tmp_path, corpus_path, tiny_run, good):
    with tmpfs(tmp_path / "ro", "1m", readonly=True) as ro:
        one_line_error(run_cli(*_tiny_train_args(corpus_path, ro / "run")), "read-only", str(ro))
        one_line_error(run_cli("export", str(tiny_run), "--out", str(ro / "model")), "read-only", str(ro))
        one_line_error(triton(good, ro / "repo"), "read-only")


def test_divergence_stops_in_one_line_and_keeps_the_best_checkpoint(tmp_path, corpus_path):
    """A loss that becomes NaN: the run stops naming the epoch and the checkpoint that stays the best."""
    pytest.importorskip("keras", reason="the `train` extra is not installed")
    import math

    from charlstm.training import callbacks
    from charlstm.training.config import TrainConfig
    stop = callbacks.Divergence(tmp_path, TrainConfig(learning_rate=1.0), lambda: 3)
    stop.on_epoch_begin(4)
    stop.on_train_batch_end(0, {"loss": 2.0})
    with pytest.raises(callbacks.Diverged) as e:
        stop.on_train_batch_end(6, {"loss": math.nan})
    message = str(e.value)
    assert "at epoch 5, batch 7" in message and "best.weights.h5 (epoch 3)" in message and "\n" not in message
    assert "--learning-rate" in message and e.value.param == "learning_rate"
    bounded = run_cli(*_tiny_train_args(corpus_path, tmp_path / "r"), "--learning-rate", "inf")
    one_line_error(bounded, "--learning-rate must be a positive number up to 1", "inf")
    seed = run_cli(*_tiny_train_args(corpus_path, tmp_path / "r"), "--seed", "4294967296")
    one_line_error(seed, "--seed must be an integer from 0 to 4,294,967,295")


@pytest.mark.slow
def test_two_exports_to_one_folder_one_wins_the_other_says_so(tiny_run, tmp_path):
    out = tmp_path / "model"
    cmd = [sys.executable, "-m", "charlstm", "export", str(tiny_run), "--out", str(out)]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(SLOW_MACHINE_TIMEOUT), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "written by another process meanwhile" in loser or "already exists" in loser
    assert "Traceback" not in loser
    assert (out / "model.json").is_file() and not list(tmp_path.glob(".tmp-*"))


def test_a_killed_exports_temporary_folder_is_removed_by_the_next(tiny_model, tmp_path):
    """A SIGKILL mid-write leaves .tmp-NAME-PID-*; the next export of NAME removes those of dead processes."""
    from charlstm.runtime.files import remove_stale_temps
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".tmp-model-{dead.pid}-abc123"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"half")
    live = tmp_path / f".tmp-model-{os.getpid()}-xyz"  # a live writer's: left alone
    live.mkdir()
    assert remove_stale_temps(tmp_path, "model") == [stale]
    assert not stale.exists() and live.exists()


def test_a_tiny_or_huge_temperature_is_greedy_or_refused(good):
    greedy = run_cli("generate", "--model", str(good), "--length", "30", "--temperature", "0", "--fp32")
    for t in ("1e-320", "1e-9"):
        tiny = run_cli("generate", "--model", str(good), "--length", "30", "--temperature", t, "--top-k", "3",
                       "--fp32")
        assert tiny.returncode == 0 and tiny.stdout == greedy.stdout, tiny.stderr
    one_line_error(run_cli("generate", "--model", str(good), "--temperature", "1e39"), "--temperature 1e+39")


def test_train_and_export_print_no_cuda_start_up_lines(tmp_path, corpus_path):
    result = run_cli(*_tiny_train_args(corpus_path, tmp_path / "run", epochs=1))
    assert result.returncode == 0, result.stderr[-2000:]
    for noise in ("cuInit", "Could not find cuda drivers", "absl::InitializeLog", "cpu_feature_guard"):
        assert noise not in result.stderr, result.stderr[-2000:]

