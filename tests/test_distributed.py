"""Training as a group of processes with JAX (training/distributed.py): two real `charlstm train` processes on
127.0.0.1, as two machines would run them, end with the same weights bit for bit, equal to one process on the same
global batches within float noise; a group that loses a process mid-epoch (SIGKILL) stops with one line on the
survivor, and the same command resumes the group where its last resume point was. Bad flags are one line each,
before Keras is imported."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, SLOW_MACHINE_TIMEOUT, make_text, run_cli

pytest.importorskip("keras", reason="the `train` extra is not installed")
from charlstm.training import resume, run  # noqa: E402
from tests.test_resume import same_run  # noqa: E402

# Two layers, stateful streams, dropout and recurrent dropout: the rows each process feeds must be the right ones
# for its streams' carried state and for the dropout masks to match one process's.
TINY = ["--units", "16", "--layers", "2", "--embedding-dim", "8", "--batch-size", "8", "--seq-length", "20",
        "--dropout", "0.1", "--recurrent-dropout", "0.1", "--learning-rate", "0.01", "--sample-every", "0",
        "--lr-decay", "0.9", "--lr-decay-after", "1", "--patience", "0", "--seed", "11", "--quiet",
        "--epochs", "2", "--save-every", "5"]
SURVIVOR_TIMEOUT = 120  # seconds for a survivor to notice its group is gone (JAX's heartbeat timeout is 100)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text(make_text(5000), encoding="utf-8")  # 27 batches of 8 x 20 an epoch
    return path


def one_line_error(stderr: str) -> str:
    assert "Traceback" not in stderr and "Check failure stack trace" not in stderr, stderr[-3000:]
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), stderr[-3000:]
    return line


def test_bad_group_flags_are_one_line_errors_before_keras(tmp_path, small_corpus):
    out = tmp_path / "run"
    base = ["train", "--text", str(small_corpus), "--out", str(out), "--batch-size", "8", "--seq-length", "20"]
    jax = {"KERAS_BACKEND": "jax"}
    cases = [
        (["--coordinator", "127.0.0.1:8476"], jax, "without --num-processes and --process-id"),
        (["--coordinator", "nohost", "--num-processes", "2", "--process-id", "0"], jax, "'nohost' is not HOST:PORT"),
        (["--coordinator", "h:70000", "--num-processes", "2", "--process-id", "0"], jax, "is not HOST:PORT"),
        (["--coordinator", "h:1", "--num-processes", "0", "--process-id", "0"], jax, "--num-processes 0: pass"),
        (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"], jax,
         "--process-id 2 is outside the group of 2: pass 0 to 1"),
        (["--coordinator", "h:1", "--num-processes", "3", "--process-id", "1"], jax,
         "--batch-size 8 does not split over 3 processes: pass a multiple of 3"),
        (["--coordinator", "nosuch.invalid:1", "--num-processes", "2", "--process-id", "0"], jax,
         "cannot resolve nosuch.invalid"),
        (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "0"], {"KERAS_BACKEND": "tensorflow"},
         "set KERAS_BACKEND=jax"),
        ([], {**jax, "JAX_COORDINATOR_ADDRESS": "127.0.0.1:8476", "JAX_PROCESS_ID": "0"},
         "JAX_COORDINATOR_ADDRESS, JAX_PROCESS_ID without JAX_NUM_PROCESSES"),
    ]
    for flags, env, wanted in cases:
        started = time.monotonic()
        done = run_cli(*base, *flags, env=env)
        line = one_line_error(done.stderr)
        assert done.returncode == 2 and wanted in line, (flags, line)
        assert time.monotonic() - started < 30  # before Keras (seconds of imports) in any case
    with socket.socket() as busy:  # process 0 on a port that something else serves: JAX would segfault
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_cli(*base, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", "0",
                       env=jax)
    assert done.returncode == 2 and f"port {port} cannot be served here" in one_line_error(done.stderr)
    assert not (out / "config.json").exists()
    # TensorFlow ignores JAX's variables: nothing changes without the flags
    assert run_cli("train", "--out", str(tmp_path / "none"), "--resume",
                   env={"KERAS_BACKEND": "tensorflow", "JAX_COORDINATOR_ADDRESS": "h:1"}).stderr.strip() \
        .endswith("drop --resume to start one")


class Group:
    """Two `charlstm train` processes on this machine, started together as two machines would start them."""

    def __init__(self, tmp_path: Path, port: int, env: dict):
        self.tmp_path, self.port, self.env, self.procs, self.logs, self.round = tmp_path, port, env, [], [], 0

    def start(self, args: list[str], by_env: tuple[int, ...] = ()) -> None:
        """Processes 0 and 1; those in `by_env` are told their place by JAX's variables instead of flags."""
        self.round += 1
        self.procs, self.logs = [], []
        for i in (0, 1):
            place = {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{self.port}", "JAX_NUM_PROCESSES": "2",
                     "JAX_PROCESS_ID": str(i)}
            flags = [] if i in by_env else ["--coordinator", place["JAX_COORDINATOR_ADDRESS"], "--num-processes",
                                            "2", "--process-id", str(i)]
            log = self.tmp_path / f"round{self.round}-process{i}.log"
            with open(log, "w") as f:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "charlstm", *args, *flags], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                    env={**os.environ, **self.env, **(place if i in by_env else {})}))
            self.logs.append(log)

    def wait(self, timeout: float = SLOW_MACHINE_TIMEOUT) -> list[int]:
        return [p.wait(timeout=timeout) for p in self.procs]

    def said(self, i: int) -> str:
        return self.logs[i].read_text(errors="replace")

    def kill_after_new_point(self, out: Path, victim: int, rng) -> None:
        """SIGKILL process `victim` a moment after process 0 writes a new resume point: mid-epoch, maybe mid-save."""
        seen = resume.points(out)
        deadline = time.monotonic() + SLOW_MACHINE_TIMEOUT
        while resume.points(out) == seen and time.monotonic() < deadline:
            assert all(p.poll() is None for p in self.procs), self.said(0)[-2000:] + self.said(1)[-2000:]
            time.sleep(0.02)
        time.sleep(float(rng.uniform(0.0, 0.3)))
        self.procs[victim].send_signal(signal.SIGKILL)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()


@pytest.mark.slow
def test_two_processes_train_as_one_and_a_killed_group_resumes(tmp_path, small_corpus):
    pytest.importorskip("jax", reason="jax is not installed")
    weights = {"ref": tmp_path / "ref-weights", "group": tmp_path / "group-weights"}
    env = {"KERAS_BACKEND": "jax", "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax-cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    ref, out = tmp_path / "ref", tmp_path / "group"
    one = run_cli("train", "--text", str(small_corpus), "--out", str(ref), *TINY,
                  env={**env, "CHARLSTM_GROUP_WEIGHTS": str(weights["ref"])})  # one process, the same batches
    assert one.returncode == 0, one.stderr[-2000:]

    group, rng = Group(tmp_path, free_port(), {**env, "CHARLSTM_GROUP_WEIGHTS": str(weights["group"])}), \
        np.random.default_rng(5)
    args = ["train", "--text", str(small_corpus), "--out", str(out), *TINY]
    try:
        group.start(args)  # 1: process 1 dies; process 0's next collective fails
        group.kill_after_new_point(out, victim=1, rng=rng)
        code = group.procs[0].wait(timeout=SURVIVOR_TIMEOUT)
        line = one_line_error(group.said(0))
        assert code != 0 and line.startswith(f"error: process 0: the group at 127.0.0.1:{group.port} lost a process")
        assert "start all 2 processes again with the same command" in line
        assert resume.latest(out) is not None and run.read_config(out)["replicas"] == 2
        assert not list(out.rglob(".tmp-*"))  # nothing half-written

        group.start(args, by_env=(1,))  # 2: the same command (process 1 placed by JAX's variables); process 0 dies
        group.kill_after_new_point(out, victim=0, rng=rng)
        code = group.procs[1].wait(timeout=SURVIVOR_TIMEOUT)
        line = one_line_error(group.said(1))  # JAX aborts a process that lost its coordinator: still one line
        assert code != 0 and line.startswith(f"error: process 1: the group at 127.0.0.1:{group.port} lost a process")
        assert "from batch" in group.said(0)  # round 2 resumed mid-epoch

        group.start(["train", "--out", str(out), "--resume", "--save-every", "5", "--quiet"])  # 3: to the end
        assert group.wait() == [0, 0], group.said(0)[-3000:] + group.said(1)[-3000:]
    finally:
        group.stop()
    said = group.said(1).splitlines()
    assert any(line.startswith("process 1: training ") and "from batch" in line for line in said)
    assert "[Gloo]" not in group.said(0) + group.said(1)

    mine = [np.load(weights["group"] / f"process-{i}.npz") for i in (0, 1)]
    for name in mine[0].files:  # replicated variables: bit for bit
        np.testing.assert_array_equal(mine[0][name], mine[1][name])
    alone = np.load(weights["ref"] / "process-0.npz")
    # One process sums the gradients of 8 rows, two sum 4 each and add: float noise, grown by 54 Adam steps
    # (2.9e-6 at most when measured)
    assert max(np.abs(mine[0][k] - alone[k]).max() for k in alone.files) < 1e-5
    same_run(ref, out, 2, atol=1e-5)  # the checkpoints process 0 wrote, and the history
    assert not list(out.rglob(".tmp-*")) and len(resume.points(out)) == resume.KEEP
