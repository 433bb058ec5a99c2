"""`charlstm serve`: load the model once and answer many clients over HTTP (the `serve` extra)."""

from __future__ import annotations

import signal
import socket
import threading
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
    ray: Annotated[bool, typer.Option("--ray", help="Serve on Ray Serve: each replica runs this server's engine "
                                                    "behind Ray's HTTP proxy (the `ray` extra; docs/ray.md).")]
    = False,
    ray_address: Annotated[Optional[str], typer.Option(metavar="ADDRESS", show_default=False,
                                                       help="With --ray: join this Ray cluster (auto, HOST:6379 "
                                                            "or ray://HOST:10001). Default: start a local Ray "
                                                            "on this machine.")] = None,
    replicas: Annotated[int, typer.Option(min=1, max=1024, help="With --ray: replicas, each with its own copy "
                                                                "of the models.")] = 1,
    replica_cpus: Annotated[float, typer.Option(min=0.1, help="With --ray: CPUs each replica reserves.")] = 1.0,
    replica_gpus: Annotated[float, typer.Option(min=0, help="With --ray: GPUs each replica reserves (1: a "
                                                            "replica per GPU).")] = 0.0,
) -> None:
    """Serve completions over HTTP, OpenAI's API: POST /v1/completions, GET /v1/models, /healthz, /metrics, and a
    playground page at /. Concurrent requests are batched step by step."""
    if not ray and (ray_address is not None or replicas != 1 or replica_cpus != 1.0 or replica_gpus != 0.0):
        with user_errors():
            raise UserError("--ray-address, --replicas, --replica-cpus and --replica-gpus are Ray Serve's: add "
                            "--ray, or leave them out")
    if ray:
        return serve_on_ray(model, host, port, device, int8, max_streams, max_queued, max_tokens, max_prompt, max_n,
                            api_key, grace, threads, ray_address, replicas, replica_cpus, replica_gpus)
    with user_errors({"model_dir": "--model"}):
        from charlstm.cli.extras import require
        require("serve", "starlette", "uvicorn", "prometheus_client")
        import uvicorn

        from charlstm.runtime import SessionConfig
        from charlstm.serve.app import Server, create_app, load_models
        from charlstm.serve.protocol import Limits

        from charlstm.runtime.spinning import usable_cores
        # The HTTP side needs a core of its own while ONNX Runtime steps (measured in docs/serving.md).
        config = SessionConfig(device=device.value, int8=int8, threads=threads or max(1, usable_cores() - 1),
                               spinning=False if spin is None else spin)
        served = load_models(model, config, max_streams, max_queued, log)
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


def serve_on_ray(model, host, port, device, int8, max_streams, max_queued, max_tokens, max_prompt, max_n, api_key,
                 grace, threads, ray_address, replicas, replica_cpus, replica_gpus) -> None:
    with user_errors({"model_dir": "--model", "ray_address": "--ray-address", "scaling": "--replicas"}):
        from charlstm.cli.extras import require
        require("ray", "ray.serve", "starlette", "prometheus_client")
        from charlstm.runtime.manifest import load_manifest
        from charlstm.serve import ray_app

        for folder in model or []:
            load_manifest(folder)  # a wrong path is one line here, not a replica that fails on another node
        settings = ray_app.ReplicaSettings(
            models=tuple(str(Path(m).resolve()) for m in model or []), device=device.value, int8=int8,
            max_streams=max_streams, max_queued=max_queued, threads=threads or max(1, int(replica_cpus) - 1),
            max_tokens=max_tokens, max_prompt=max_prompt, max_n=max_n, api_key=api_key, grace=grace)
        scaling = ray_app.Scaling(num_replicas=replicas, num_cpus=replica_cpus, num_gpus=replica_gpus)
        sock = listen(host, port)  # a taken port is one line; --port 0 picks a free one for Ray's proxy
        port = sock.getsockname()[1]
        sock.close()
        log(f"starting Ray Serve: {replicas} replica(s) of {replica_cpus:g} CPU, {replica_gpus:g} GPU"
            + (f", on the cluster at {ray_address}" if ray_address else ", on a local Ray instance"))
        try:
            ray_app.start(settings, scaling, host, port, ray_address)
            # After ray.init, which sets SIGTERM to exit at once: a signal now only wakes this thread, which then
            # takes the application and a local Ray down in order, so no Ray process outlives the command.
            stopping = threading.Event()
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, lambda *_: stopping.set())
            shown = f"[{host}]" if ":" in host else host
            log(f"listening on http://{shown}:{port}/ (playground), /v1/completions, /v1/models, /healthz, /metrics "
                "(Ray Serve)")
            stopping.wait()
            log("stopping: in-flight streams get --grace to finish")
        finally:
            ray_app.stop(local=ray_address is None)
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
