"""How `charlstm serve` scales with concurrent streaming clients, against one stream and against its own engine.

    python benchmarks/serve.py                                  # models/shakespeare, 1, 8, 32 and 64 clients
    python benchmarks/serve.py --configs fp32/0 int8/0 fp32/2   # settings compared in the same rounds
    python benchmarks/serve.py --configs fp32/1 fp32/1/ray1      # the same server behind Ray Serve's proxy

For each N: N clients on loopback each stream one completion (different prompts and seeds) at once; the table
gives the aggregate characters per second, the time to the first character and the gaps between chunks (p50,
p99), against the same requests sent one at a time through the server, and against the engine alone (the same
N streams submitted in this process, no HTTP) on the same model and settings. Each round measures all three for
every N in turns; the figures are medians over rounds. The client is asyncio on raw sockets, so its own cost on
the shared cores stays small. The server is started by its own command (`charlstm serve --port 0`) and stopped
by its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = ["ROMEO:", "JULIET:\n", "KING RICHARD III:\n", "First Citizen:\n", "", "To be, or not", "MENENIUS:",
           "O, what a"]


async def stream_one(port: int, body: dict) -> dict:
    """One streaming completion over a raw connection: send time, chunk arrival times and their sizes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = json.dumps({**body, "stream": True}).encode()
    sent = time.perf_counter()
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(data), data))
    await writer.drain()
    arrivals, sizes, buffer = [], [], b""
    while True:
        block = await reader.read(65536)
        if not block:
            break
        now = time.perf_counter()
        buffer += block
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            i = event.find(b"data: ")
            if i < 0 or event[i + 6:].startswith(b"[DONE]"):
                continue
            chars = sum(len(c["text"]) for c in json.loads(event[i + 6:])["choices"])
            if chars:
                arrivals.append(now)
                sizes.append(chars)
    writer.close()
    return {"sent": sent, "arrivals": arrivals, "sizes": sizes}


async def clients(port: int, bodies: list[dict], concurrent: bool) -> list[dict]:
    if concurrent:
        return await asyncio.gather(*(stream_one(port, b) for b in bodies))
    return [await stream_one(port, b) for b in bodies]


def summarize(results: list[dict]) -> dict:
    start = min(r["sent"] for r in results)
    end = max(r["arrivals"][-1] for r in results)
    chars = sum(sum(r["sizes"]) for r in results)
    first = [r["arrivals"][0] - r["sent"] for r in results]
    gaps = [b - a for r in results for a, b in zip(r["arrivals"], r["arrivals"][1:])]
    per_chunk = chars / sum(len(r["sizes"]) for r in results)
    return {"chars": chars, "seconds": end - start, "chars_per_s": chars / (end - start),
            "first_p50_ms": 1e3 * float(np.percentile(first, 50)), "first_p99_ms": 1e3 * float(np.percentile(first, 99)),
            "gap_p50_ms": 1e3 * float(np.percentile(gaps, 50)) if gaps else 0.0,
            "gap_p99_ms": 1e3 * float(np.percentile(gaps, 99)) if gaps else 0.0, "chars_per_chunk": per_chunk}


def sequential_rate(results: list[dict]) -> float:
    """One at a time: characters over the sum of each request's own time."""
    return sum(sum(r["sizes"]) for r in results) / sum(r["arrivals"][-1] - r["sent"] for r in results)


def make_engine(model: Path, int8: bool, threads: int, max_streams: int):
    """The server's engine, with the server's settings, in this process (it idles while the server works)."""
    from charlstm.runtime import Generator, SessionConfig
    from charlstm.runtime.engine import Engine
    return Engine(Generator(model, SessionConfig(device="cpu", int8=int8, threads=threads, spinning=False)),
                  max_streams=max_streams)


def engine_rate(engine, streams: int, length: int) -> float:
    """The same streams submitted to the engine directly: characters per second, no HTTP."""
    from charlstm.runtime import SamplingParams
    start = time.perf_counter()
    handles = [engine.submit(PROMPTS[i % len(PROMPTS)], SamplingParams(temperature=0.5 + 0.01 * i), length,
                             seed=i)[0] for i in range(streams)]
    for h in handles:
        h.wait(600)
    return sum(h.made for h in handles) / (time.perf_counter() - start)


def start_server(model: Path, int8: bool, threads: int, max_streams: int,
                 ray_replicas: int = 0) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, "-m", "charlstm", "serve", "--model", str(model), "--port", "0", "--device", "cpu",
           "--max-streams", str(max_streams), "--threads", str(threads), "--int8" if int8 else "--fp32"]
    if ray_replicas:  # each replica reserves what the plain server uses: its threads and a core for HTTP
        cmd += ["--ray", "--replicas", str(ray_replicas), "--replica-cpus", str(threads + 1)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in proc.stderr:
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", line)
        if m:
            # keep reading its stderr, so a chatty server never blocks on a full pipe
            threading.Thread(target=lambda: sum(1 for _ in proc.stderr), daemon=True).start()
            return proc, int(m.group(1))
    raise SystemExit(f"error: charlstm serve did not start (exit {proc.wait()})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=ROOT / "models" / "shakespeare")
    p.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--length", type=int, default=300, help="characters per stream")
    p.add_argument("--configs", nargs="+", default=["fp32/0"], metavar="PRECISION/THREADS[/rayN]",
                   help="server settings to compare in the same rounds, e.g. fp32/0 int8/0 fp32/2 (threads 0: "
                        "serve's default, one per core but one); /rayN: on a local Ray Serve, N replicas")
    p.add_argument("--repeats", type=int, default=3, help="rounds; each figure is the median")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    from charlstm.runtime.machine import load_average, machine, versions
    from charlstm.runtime.spinning import usable_cores
    info = {**machine(), **versions("numpy", "onnxruntime"), "model": str(args.model), "length": args.length,
            "load_average_before": load_average()}
    configs = []
    for c in args.configs:
        m = re.fullmatch(r"(fp32|int8)/(\d+)(?:/ray(\d+))?", c)
        if not m:
            raise SystemExit(f"error: --configs {c!r}: use PRECISION/THREADS[/rayN], e.g. fp32/0, int8/1 or "
                             "fp32/1/ray1")
        # threads 0: charlstm serve's default
        configs.append((m[1], int(m[2]) or max(1, usable_cores() - 1), int(m[3] or 0)))

    def bodies(n):
        return [{"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": args.length, "seed": i,
                 "temperature": 0.5 + 0.01 * i} for i in range(n)]

    live = []  # per config: (server process, port, engine); idle ones sleep (no spinning workers)
    try:
        for precision, threads, ray_replicas in configs:
            proc, port = start_server(args.model, precision == "int8", threads, max(args.streams), ray_replicas)
            live.append((proc, port, make_engine(args.model, precision == "int8", threads, max(args.streams))))
            for n in sorted(set(args.streams) | {1}):  # warm every bucket up, in the server and in the engine
                asyncio.run(clients(port, bodies(n), True))
                engine_rate(live[-1][2], n, args.length)
        runs = {(c, n): [] for c in range(len(configs)) for n in args.streams}
        for r in range(args.repeats):  # in turns, so that the machine's drift hits every figure alike
            for c, (_, port, engine) in enumerate(live):
                for n in args.streams:
                    log(f"round {r + 1}, {args.configs[c]}: {n} streams together, one at a time, the engine alone")
                    together = summarize(asyncio.run(clients(port, bodies(n), True)))
                    together["one_at_a_time_chars_per_s"] = sequential_rate(
                        asyncio.run(clients(port, bodies(n), False)))
                    together["engine_chars_per_s"] = engine_rate(engine, n, args.length)
                    runs[c, n].append(together)
    finally:
        for proc, _, engine in live:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(120)
            engine.close()
    print("  ".join(f"{k}={v}" for k, v in info.items() if k != "platform"))
    tables = []
    for c, (precision, threads, ray_replicas) in enumerate(configs):
        rows = [{"streams": n, **{k: float(np.median([run[k] for run in runs[c, n]])) for k in runs[c, n][0]}}
                for n in args.streams]
        tables.append({"precision": precision, "threads": threads, "ray_replicas": ray_replicas, "rows": rows})
        one = next((r for r in rows if r["streams"] == 1), rows[0])
        print(f"\n{precision}, {threads} ONNX Runtime thread(s)"
              + (f", on Ray Serve ({ray_replicas} replica(s)):" if ray_replicas else ":"))
        print(f"{'streams':>7} {'chars/s':>9} {'x 1 stream':>10} {'x one at a time':>15} {'engine chars/s':>14} "
              f"{'server/engine':>13} {'first p50/p99 ms':>17} {'chunk gap p50/p99 ms':>21} {'chars/chunk':>11}")
        for r in rows:
            print(f"{r['streams']:>7} {r['chars_per_s']:>9,.0f} {r['chars_per_s'] / one['chars_per_s']:>10.2f} "
                  f"{r['chars_per_s'] / r['one_at_a_time_chars_per_s']:>15.2f} {r['engine_chars_per_s']:>14,.0f} "
                  f"{r['chars_per_s'] / r['engine_chars_per_s']:>13.2f} "
                  f"{r['first_p50_ms']:>8.1f}/{r['first_p99_ms']:<8.1f} "
                  f"{r['gap_p50_ms']:>10.2f}/{r['gap_p99_ms']:<10.2f} {r['chars_per_chunk']:>11.1f}")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "configs": tables}, indent=2) + "\n")


if __name__ == "__main__":
    main()
