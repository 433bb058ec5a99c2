"""Training on several machines with JAX: a group of processes, one per machine, each training on its share of
every global batch, joined by jax.distributed and kept in step by keras.distribution.DataParallel.

    charlstm train ... --coordinator HOST:PORT --num-processes N --process-id I     (KERAS_BACKEND=jax)

Process 0 serves the group's coordination at HOST:PORT and is the only one that writes the run folder (and holds
its lock); the others write nothing. Every process reads the corpus and the run folder itself, so on several
machines both must be on a filesystem they share. Each process feeds the same rows of every global batch (its
share, by JAX's device order), so a stateful stream keeps its row, and its carried LSTM state, from batch to
batch. The variables are replicated: every process ends with the same weights (the tests check bit for bit).

A process that dies takes the group down: the survivors' next collective fails (a Python error, turned into one
line), or JAX itself aborts a process that has lost its coordinator or waited past a timeout; `watch_stderr`
turns that report into one line too. Rerun every process with the same command and the run goes on from its
last resume point.

`CHARLSTM_GROUP_WEIGHTS=FOLDER` makes every process dump its final weights to FOLDER/process-I.npz: how the
tests compare processes that, but for process 0, write nothing.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from charlstm.errors import UserError
from charlstm.training.config import ConfigError

ENV = {"coordinator": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
       "process_id": "JAX_PROCESS_ID"}  # JAX's own names, which cluster launchers set
WEIGHTS_ENV = "CHARLSTM_GROUP_WEIGHTS"
ADDRESS = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.-]+)):(?P<port>\d{1,5})")


class GroupError(ConfigError):
    """A group that cannot form as asked: a bad flag, a busy port, processes that disagree."""


class GroupLost(UserError):
    """A process of the group stopped mid-run. Not the user's mistake, but nothing is lost past the resume point."""

    exit_code = 1


@dataclass(frozen=True)
class Group:
    coordinator: str | None = None  # HOST:PORT of process 0; None = no group, a plain one-process run
    num_processes: int = 1
    process_id: int = 0
    initialization_timeout: int = 300  # JAX's default: seconds for every process to join
    heartbeat_timeout: int = 100  # JAX's default: seconds of silence before a process counts as dead

    @property
    def active(self) -> bool:
        return self.coordinator is not None

    @property
    def is_writer(self) -> bool:
        """Process 0 writes the run folder; a process that is no group's is its own writer."""
        return self.process_id == 0

    @property
    def host(self) -> str:
        m = ADDRESS.fullmatch(self.coordinator or "")
        return m["v6"] or m["host"]

    @property
    def port(self) -> int:
        return int(ADDRESS.fullmatch(self.coordinator or "")["port"])


def parse(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
          env=None) -> Group:
    """The group the flags (or, without flags, JAX's environment variables) ask for, checked; no JAX import."""
    env = os.environ if env is None else env
    values = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    names = {k: "--" + k.replace("_", "-") for k in values}
    jax = env.get("KERAS_BACKEND") == "jax"
    if not any(v is not None for v in values.values()):
        if not jax or not any(env.get(v) for v in ENV.values()):  # the variables mean nothing to TensorFlow
            return Group()
        values, names = {k: env.get(ENV[k]) or None for k in values}, dict(ENV)
    given = [names[k] for k, v in values.items() if v is not None]
    if not jax:
        raise GroupError(f"{given[0]} trains a group of processes with JAX: set KERAS_BACKEND=jax (on TensorFlow "
                         "one machine's GPUs train with --strategy mirrored)", "coordinator")
    missing = [names[k] for k, v in values.items() if v is None]
    if missing:
        raise GroupError(f"{', '.join(given)} without {' and '.join(missing)}: a group needs all three, the same "
                         "--coordinator HOST:PORT and --num-processes N on every process and its own --process-id "
                         "0..N-1", "coordinator")
    n, i = (_whole(values[k], names[k]) for k in ("num_processes", "process_id"))
    if n < 1:
        raise GroupError(f"{names['num_processes']} {n}: pass the number of processes in the group, 1 or more",
                         "num_processes")
    if not 0 <= i < n:
        raise GroupError(f"{names['process_id']} {i} is outside the group of {n}: pass 0 to {n - 1} (0 on the "
                         "coordinator's machine)", "process_id")
    m = ADDRESS.fullmatch(str(values["coordinator"]).strip())
    if not m or not 1 <= int(m["port"]) <= 65535:
        raise GroupError(f"{names['coordinator']} {values['coordinator']!r} is not HOST:PORT: pass process 0's "
                         "host name or IP address and a free port, e.g. 10.0.0.1:8476 or [::1]:8476", "coordinator")
    return Group(m[0], n, i)


def _whole(value, name: str) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise GroupError(f"{name} {value!r} is not a whole number", name.lstrip("-").replace("-", "_")) from None


def check_plan(group: Group, tc) -> None:
    """The run's settings fit the group: told before anything heavy is imported."""
    if not group.active:
        return
    if tc.strategy != "none":
        raise GroupError("--strategy mirrored is TensorFlow's: a group splits its batches with keras.distribution; "
                         "drop --strategy", "strategy")
    if tc.batch_size % group.num_processes:
        n = group.num_processes
        raise GroupError(f"--batch-size {tc.batch_size} does not split over {n} processes: pass a multiple of {n} "
                         f"(it is the global batch; each process trains batch-size / {n} of its rows)", "batch_size")


def join(group: Group) -> None:
    """jax.distributed.initialize (before any other JAX call: JAX fixes its devices at the first) and
    DataParallel over every process's devices. Blocks until all processes have joined."""
    if not group.active:
        return
    check_address(group)
    import jax
    import keras
    if not jax.distributed.is_initialized():
        jax.distributed.initialize(coordinator_address=group.coordinator, num_processes=group.num_processes,
                                   process_id=group.process_id, initialization_timeout=group.initialization_timeout,
                                   heartbeat_timeout_seconds=group.heartbeat_timeout)
    # auto_shard_dataset=False: each process feeds its own rows of the global batch (`local_rows`); Keras' own
    # sharding is for tf.data only
    keras.distribution.set_distribution(keras.distribution.DataParallel(auto_shard_dataset=False))


def check_address(group: Group) -> None:
    """What JAX would abort on (process 0: a segfault on a busy port) or wait minutes for, in one line now. The
    processes but 0 wait here, cheaply, until process 0 listens."""
    if not group.active:
        return
    host, port = group.host, group.port
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise GroupError(f"--coordinator {group.coordinator}: cannot resolve {host} ({e.strerror}): pass process "
                         "0's host name or IP address", "coordinator") from None
    if group.is_writer:
        if not os.environ.get("JAX_COORDINATOR_BIND_ADDRESS"):
            _check_free(group, port)
        return
    deadline = time.monotonic() + group.initialization_timeout
    while True:  # the others wait for process 0 to listen, as JAX would, but can say what they waited for
        try:
            socket.create_connection((host, port), timeout=5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise GroupError(f"nothing listens at --coordinator {group.coordinator} after "
                                 f"{group.initialization_timeout} s: start process 0 (--process-id 0) on that machine "
                                 "with the same --coordinator", "coordinator") from None
            time.sleep(0.5)


def _check_free(group: Group, port: int) -> None:
    for family, anywhere in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):  # JAX binds [::]:PORT
        try:
            s = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue
        with s:
            # as gRPC binds: a port that the last run's coordinator left in TIME_WAIT is free, a listening one not
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((anywhere, port))
                return
            except OSError as e:
                if e.errno in (errno.EADDRINUSE, errno.EACCES):
                    raise GroupError(f"--coordinator {group.coordinator}: port {port} cannot be served here "
                                     f"({e.strerror}): pick another free port and pass it to every process",
                                     "coordinator") from None


def local_rows(group: Group, batch_size: int) -> slice:
    """The rows of each global batch that this process feeds: those its devices hold under DataParallel."""
    if not group.active:
        return slice(0, batch_size)
    import jax
    import keras
    n = jax.device_count()
    if batch_size % n:
        raise GroupError(f"--batch-size {batch_size} does not split over the group's {n} devices: pass a multiple "
                         f"of {n}", "batch_size")
    layout = keras.distribution.distribution().get_data_layout((batch_size, 1)).backend_layout
    spans = sorted({(s[0].start or 0, batch_size if s[0].stop is None else s[0].stop)
                    for s in layout.addressable_devices_indices_map((batch_size, 1)).values()})
    if any(a[1] != b[0] for a, b in zip(spans, spans[1:])):  # JAX orders devices by process: never seen
        raise GroupError(f"this process's devices hold rows {spans} of each batch, not one run of rows: run one "
                         "process per machine", "num_processes")
    return slice(spans[0][0], spans[-1][1])


@contextmanager
def alone():
    """Process 0's writes, outside the group's distribution: Keras makes a variable while saving weights (a
    reference Optimizer), and under DataParallel a new variable is a collective that the other processes, which
    write nothing, never join; they would pair it with their next one instead."""
    import keras
    group_wide = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(group_wide)


def agree(group: Group, run_dir: Path, facts: dict[str, int]) -> None:
    """Every process must start from the same state (the same resume point of the same run): compared across the
    group, since a run folder that is not shared shows each machine another run, or none."""
    if not group.active:
        return
    import numpy as np
    from jax.experimental import multihost_utils
    mine = np.array([v % (1 << 31) for v in facts.values()], dtype=np.int32)  # JAX's default integers: 32 bits
    every = np.asarray(multihost_utils.process_allgather(mine))
    for i, row in enumerate(every):
        differ = [f"{k} {a} here, {b} on process 0" for k, a, b in zip(facts, row, every[0]) if a != b]
        if differ:
            raise GroupError(f"process {i} sees another run in {run_dir} than process 0 ({'; '.join(differ)}): every "
                             "process must read the same --out and --text: put them on a filesystem that all the "
                             "machines share", "out")


def _lost(e: BaseException) -> bool:
    """A collective or the coordination service failed: another process is gone (gloo on CPUs, NCCL on GPUs)."""
    said = str(e).lower()
    return any(s in said for s in ("gloo", "nccl", "coordination service", "connection reset", "socket closed",
                                   "unavailable:", "deadline_exceeded"))


@contextmanager
def lost_as_error(group: Group):
    """A failed collective in a group becomes GroupLost's one line."""
    try:
        yield
    except Exception as e:
        if not group.active or isinstance(e, UserError) or not _lost(e):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise GroupLost(f"process {group.process_id}: the group at {group.coordinator} lost a process ({first}): "
                        f"start all {group.num_processes} processes again with the same command, and the run goes "
                        "on from its last resume point") from None


def dump_weights(group: Group, weights: list) -> None:
    folder = os.environ.get(WEIGHTS_ENV)
    if folder:
        import numpy as np
        Path(folder).mkdir(parents=True, exist_ok=True)
        np.savez(Path(folder) / f"process-{group.process_id}.npz", *weights)


_filter_pipe = None  # the write end of the stderr filter's pipe, kept open for the life of the process


def watch_stderr(group: Group) -> None:
    """JAX ends a process that has lost its group (the coordinator gone, a process that never joined, a peer
    silent past the heartbeat timeout) with abort() and a C++ stack trace; no Python runs. In a group, stderr goes
    through a small process that passes it on and turns that report into one line. Stdout goes there too: gloo
    prints its connections on it, and training prints nothing else there. The filter ends when this one does."""
    global _filter_pipe
    if not group.active or _filter_pipe is not None:
        return
    import inspect
    import subprocess
    code = inspect.getsource(_stderr_filter) + "\n_stderr_filter(sys.argv[1:])\n"
    sys.stderr.flush()
    child = subprocess.Popen([sys.executable, "-c", "import sys\n" + code, str(group.process_id),
                              str(group.num_processes), group.coordinator, str(group.initialization_timeout)],
                             stdin=subprocess.PIPE, stdout=sys.stderr.fileno())
    _filter_pipe = child.stdin
    sys.stdout.flush()
    os.dup2(child.stdin.fileno(), 1)
    os.dup2(child.stdin.fileno(), 2)


def _stderr_filter(argv):  # runs in an interpreter of its own: standard library only
    import re
    import signal
    import sys
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle; this ends at its end
    pid, n, coordinator, timeout = argv
    chatter = re.compile(r"\[Gloo\] Rank \d+ is connected|[EW]\d{4} [\d:.]+ +\d+ "
                         r"(coordination_service\S*|client|preemption_sync_manager)\.(cc|h):\d+\] ")
    out, report = sys.stdout.buffer, None
    for raw in sys.stdin.buffer:
        line = raw.decode(errors="replace")
        if report is not None:
            report.append(line)
        elif "Terminating process because the JAX distributed service detected fatal errors" in line:
            report = [line.split("absl::Status:", 1)[-1]]
        elif not chatter.match(line):
            out.write(raw)
            out.flush()
    if report is None:
        return
    text = "".join(report[:6])
    status = " ".join(text.split("*** Check failure")[0].split())[:120]
    if "RegisterTask" in text:
        said = (f"not all {n} processes joined the group at {coordinator} within {timeout} s ({status}): start "
                f"every process with the same --coordinator and --num-processes {n}, each with its own --process-id")
    else:
        said = (f"the group at {coordinator} lost a process ({status}): another of the {n} processes stopped, or the "
                f"coordinator (process 0) did; start all {n} again with the same command, and the run goes on from "
                "its last resume point")
    out.write(f"error: process {pid}: {said}\n".encode())
    out.flush()
