"""The browser against ONNX Runtime in Python: µs per character on the same machine and model, side by side.

    python benchmarks/web.py                  # the notebook-size random model benchmarks/bench.py builds
    python benchmarks/web.py --model models/shakespeare

It writes the site with `charlstm web` (plus model.int8.onnx, to time it too), serves it on loopback with the
headers that make a page cross-origin isolated (which onnxruntime-web needs for more than one WASM thread),
opens one page per browser variant in Debian's Chromium (Playwright), and then, round after round, times a
greedy generation in each page (its worker reports the time) and the same generation through charlstm's runtime
in this process. Also the site's download size, raw and gzipped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SERVER = r"""
import functools, http.server, sys
class Handler(http.server.SimpleHTTPRequestHandler):
    def end_headers(self):
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()
    def log_message(self, *args):
        pass
httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=sys.argv[1]))
print(httpd.server_address[1], flush=True)
httpd.serve_forever()
"""
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="a model folder (default: the notebook-size bench model)")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "charlstm" / "bench")
    p.add_argument("--length", type=int, default=300, help="characters per timed generation")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if args.model is None:
        from benchmarks.bench import bench_model
        args.model = bench_model(args.cache, log)[0]
    from playwright.sync_api import sync_playwright

    from charlstm.runtime import Generator
    from charlstm.runtime.machine import load_average, machine, versions
    from charlstm.web.site import build

    work = Path(tempfile.mkdtemp(prefix="charlstm-web-bench-"))
    site = build(args.model, work / "site")
    int8 = args.model / "model.int8.onnx"
    if int8.is_file():
        shutil.copyfile(int8, work / "site" / "model.int8.onnx")
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(work / "site")], stdout=subprocess.PIPE, text=True)
    port = int(server.stdout.readline())
    variants = {"browser, float32, 1 WASM thread": "file=model.onnx&threads=1",
                "browser, float32, 2 WASM threads (cross-origin isolated)": "file=model.onnx&threads=2"}
    if int8.is_file():
        variants["browser, int8, 1 WASM thread"] = "file=model.int8.onnx&threads=1"
    natives = {f"charlstm runtime (ONNX Runtime in Python), float32, {t} thread(s)":
               Generator(args.model, device="cpu", int8=False, threads=t, spinning=False) for t in (1, 2)}
    runs = {name: [] for name in [*variants, *natives]}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=ARGS)
            pages = {}
            for name, query in variants.items():
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{port}/?{query}&prompt=ROMEO:&temperature=0&length={args.length}")
                page.wait_for_function("!document.getElementById('go').disabled", timeout=300_000)
                pages[name] = page
            isolated = pages[next(iter(pages))].evaluate("self.crossOriginIsolated")

            def in_page(page) -> float:
                page.evaluate("document.body.dataset.done = ''")
                page.click("#go")
                page.wait_for_selector("body[data-done='1']", timeout=600_000)
                return float(page.evaluate("document.body.dataset.usPerChar"))

            for page in pages.values():
                in_page(page)  # warm up
            for gen in natives.values():
                gen.generate("ROMEO:", temperature=0, length=args.length)
            for r in range(args.repeats):
                log(f"round {r + 1} of {args.repeats}")
                for name, page in pages.items():
                    time.sleep(0.3)
                    runs[name].append(in_page(page))
                for name, gen in natives.items():
                    time.sleep(0.3)
                    start = time.perf_counter()
                    gen.generate("ROMEO:", temperature=0, length=args.length)
                    runs[name].append((time.perf_counter() - start) / args.length * 1e6)
            browser.close()
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.wait(30)
    native = next(iter(natives))
    info = {**machine(), **versions("onnxruntime"), "onnxruntime_web": site["onnxruntime_web"], "model": str(args.model),
            "length": args.length, "repeats": args.repeats, "cross_origin_isolated": isolated,
            "load_average_before": load_average()}
    print("  ".join(f"{k}={v}" for k, v in info.items() if k != "platform"))
    print(f"{'variant':64} {'µs/char':>9} {'x native 1 thread (per round)':>32}")
    for name, values in runs.items():
        ratio = np.array(values) / np.array(runs[native])
        print(f"{name:64} {np.median(values):9.1f} {np.median(ratio):12.2f} ({ratio.min():.2f}-{ratio.max():.2f})")
    print(f"\nsite: {site['bytes'] / 1e6:.2f} MB, {site['gzipped_bytes'] / 1e6:.2f} MB gzipped")
    for name, (raw, gz) in site["files"].items():
        print(f"  {name:40} {raw:>12,} {gz:>12,}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
