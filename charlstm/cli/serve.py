"""`charlstm serve`: load the model once and answer many clients over HTTP (the `serve` extra)."""

from __future__ import annotations

import signal
import socket
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from charlstm.cli.output import log, user_errors
from charlstm.errors import UserError


class Device(str, Enum):
    auto = "auto"
    cuda = "cuda"
    cpu = "cpu"


def serve(
    model: Annotated[Optional[list[Path]], typer.Option(
        "--model", metavar="DIR", help="Model folder to serve (repeat for several; a request names one by its "
                                       "manifest name). Default: $CHARLSTM_MODEL, else the shakespeare model that "
                                       "ships with charlstm.")] = None,
    host: Annotated[str, typer.Option(envvar="CHARLSTM_HOST", help="Address to listen on. 0.0.0.0 serves other "
                                                                   "machines too.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="CHARLSTM_PORT", min=0, max=65535, help="Port to listen on.")] = 8000,
    device: Annotated[Device, typer.Option(help="auto = CUDA if it starts, else the CPU.")] = Device.auto,
    int8: Annotated[bool, typer.Option("--int8/--fp32", help="model.int8.onnx (CPU only) or model.onnx. float32 is "
                                                              "the default: at 32 and more streams it is the faster "
                                                              "one on a CPU; int8 is faster under about 16 streams "
                                                              "(docs/serving.md).")] = False,
    max_streams: Annotated[int, typer.Option(min=1, max=1024, help="Streams generated together in one batch; "
                                                                  "more wait in a queue.")] = 64,
    max_queued: Annotated[Optional[int], typer.Option(min=0, help="Streams that may wait for a row before "
                                                                  "requests get 429. Default: 4 x --max-streams.")]
    = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="Most characters one choice may ask for.")] = 10_000,
    max_prompt: Annotated[int, typer.Option(min=1, help="Most characters in one prompt.")] = 10_000,
    max_n: Annotated[int, typer.Option(min=1, help="Most choices (prompts x n) in one request.")] = 16,
    api_key: Annotated[Optional[str], typer.Option(envvar="CHARLSTM_API_KEY", show_default=False,
                                                   help="Require `Authorization: Bearer KEY` on /v1/ (better set "
                                                        "through $CHARLSTM_API_KEY than on the command line).")]
    = None,
    grace: Annotated[float, typer.Option(min=0, help="On SIGTERM or Ctrl-C: seconds in-flight streams may take "
                                                     "to finish before they are cut.")] = 30.0,
    threads: Annotated[int, typer.Option(min=0, help="ONNX Runtime intra-op threads. Default (0): one per usable "
                                                     "core but one, which is left to the HTTP side.")] = 0,
    spin: Annotated[Optional[bool], typer.Option("--spin/--no-spin", show_default=False,
                                                 help="CPU workers busy-wait between steps. Default: no: the "
                                                      "server's own threads need the cores between steps.")]
    = None,
) -> None:
    """Serve completions over HTTP, OpenAI's API: POST /v1/completions, GET /v1/models, /healthz, /metrics, and a
    playground page at /. Concurrent requests are batched step by step."""
    with user_errors({"model_dir": "--model"}):
        from charlstm.cli.extras import require
        require("serve", "starlette", "uvicorn", "prometheus_client")
        import uvicorn

        from charlstm.runtime import Generator, SessionConfig
        from charlstm.runtime.engine import Engine
        from charlstm.serve.app import Served, Server, create_app
        from charlstm.serve.protocol import Limits

        from charlstm.runtime.spinning import usable_cores
        # The HTTP side needs a core of its own while ONNX Runtime steps (measured in docs/serving.md).
        config = SessionConfig(device=device.value, int8=int8, threads=threads or max(1, usable_cores() - 1),
                               spinning=False if spin is None else spin)
        served = {}
        for folder in model or [None]:
            gen = Generator(folder, config)
            name = gen.manifest.name
            if name in served:
                raise UserError(f"two models are named {name!r} ({served[name].engine.gen.manifest.dir} and "
                                f"{gen.manifest.dir}): export one with another --name")
            engine = Engine(gen, max_streams=max_streams, max_queued=max_queued)
            served[name] = Served(name, engine, {**gen.manifest.summary(), "device": gen.device,
                                                 "file": gen.path.name, "max_streams": max_streams})
            log(f"serving {name} ({gen.manifest.dir}, {gen.path.name}) on {gen.device}"
                + (f"; {gen.device_note}" if gen.device_note else ""))
        server = Server(served, Limits(max_prompt=max_prompt, max_tokens=max_tokens, max_n=max_n), api_key)
        if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
            log(f"note: listening on {host} without --api-key: anyone who can reach this port can use it")
        sock = listen(host, port)  # bound here, so a taken port is one line, and --port 0 says which it got
        shown = f"[{host}]" if ":" in host else host
        log(f"listening on http://{shown}:{sock.getsockname()[1]}/ (playground), /v1/completions, /v1/models, "
            "/healthz, /metrics")
        # uvicorn drains on SIGTERM, then raises the signal again for whatever handler was there before it: this
        # one does nothing, so a drained server exits 0 (Ctrl-C still ends in KeyboardInterrupt, exit 130).
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
        try:
            uvicorn.Server(uvicorn.Config(create_app(server), log_level="warning", access_log=False,
                                          timeout_graceful_shutdown=grace or None)).run(sockets=[sock])
        finally:
            for s in served.values():
                s.engine.close()
        log("stopped")


def listen(host: str, port: int) -> socket.socket:
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror}): choose another --port, or --host") from None
    sock.set_inheritable(True)
    return sock
