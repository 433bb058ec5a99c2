"""Where something ran, for the record: figures only compare on the same machine with the same versions."""

from __future__ import annotations

import contextlib
import importlib
import os
import platform


def processor() -> str:
    """The CPU model (Linux names it in /proc/cpuinfo; platform.processor() says only x86_64)."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine(gpus: list[str] | None = None) -> dict:
    """The platform, CPU model, usable cores and (when the caller knows them) GPUs."""
    from charlstm.runtime.spinning import usable_cores
    return {"platform": platform.platform(), "processor": processor(), "cpus": usable_cores(), "gpus": gpus or []}


def versions(*modules: str) -> dict:
    """Python's version and each named module's, for those that are installed."""
    out = {"python": platform.python_version()}
    for name in modules:
        with contextlib.suppress(ImportError, AttributeError):
            out[name] = importlib.import_module(name).__version__
    return out


def load_average() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
