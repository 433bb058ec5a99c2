"""Whether ONNX Runtime's CPU workers busy-wait between steps: the one place this policy is decided.

A step is a few hundred microseconds. A worker that sleeps between steps has to be woken for every one, and on
an idle (virtual) machine the wake-up costs about as much as the step's arithmetic; a worker that spins is ready
at once. Beside other busy work it is the other way round: a spinning worker holds a core the other work wants,
and both slow down (docs/performance.md has the figures and the commands that measured them).

So the runtime spins when nothing else is running at the moment the model loads, and sleeps otherwise. "At the
moment" is the count of runnable threads the kernel reports (the fourth field of /proc/loadavg), sampled a few
times over a few milliseconds, minus this process's own thread. Unlike the load average it does not remember
the user's previous `charlstm generate`, which has exited. One thread has no workers to wake, and more threads
than usable cores never spin. Where /proc/loadavg is missing (macOS, Windows) the workers spin, ONNX Runtime's
own default. In a container the count is the host's. `spinning=True/False` (`--spin/--no-spin`) overrides it.
"""

from __future__ import annotations

import os
import time

SAMPLES = 5  # /proc/loadavg reads, INTERVAL apart: 4 ms in all, a fraction of a model load
INTERVAL = 0.001
LOADAVG = "/proc/loadavg"


def usable_cores() -> int:
    """The cores this process may run on (a container or taskset may allow fewer than the machine has)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def runnable_elsewhere(samples: int = SAMPLES, interval: float = INTERVAL, path: str = LOADAVG) -> float | None:
    """The mean number of other runnable threads on the machine over a few milliseconds, or None if unknown.

    Call it while this process runs one thread (before a session starts its workers): that thread is the one
    subtracted."""
    counts = []
    for i in range(samples):
        try:
            with open(path) as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return None
        counts.append(max(running - 1, 0))
        if i + 1 < samples:
            time.sleep(interval)
    return sum(counts) / len(counts)


def decide(threads: int, cores: int, others: float | None) -> tuple[bool, str]:
    """(spin?, why) for `threads` intra-op threads (0 = one per core) on `cores` usable cores, with `others`
    runnable threads elsewhere (None: unknown)."""
    threads = threads or cores
    if threads <= 1:
        return False, "one thread"
    if threads > cores:  # a spinning worker would hold a core another thread of ours is waiting for
        return False, f"{threads} threads on {cores} usable cores"
    if others is None:
        return True, "no runnable-thread count on this system: ONNX Runtime's default"
    if others < cores / 2:
        return True, f"{others:.1f} other runnable threads on {cores} cores: the machine is idle"
    return False, f"{others:.1f} other runnable threads on {cores} cores: other work shares them"


def resolve(spinning: bool | None, threads: int) -> tuple[bool, str]:
    """The setting a session gets: the one asked for, or decide()'s choice for this moment."""
    if spinning is not None:
        return spinning, "as asked"
    return decide(threads, usable_cores(), runnable_elsewhere())
