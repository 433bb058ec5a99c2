"""charlstm on Ray Serve: `charlstm serve`'s engine and HTTP app in every replica, behind Ray's HTTP proxy.

Each replica loads the models once and runs the same continuous-batching engine and the same Starlette app as
`charlstm serve` (charlstm.serve.app), so the API, the streaming and the errors are the same; Ray adds replicas
across a cluster's nodes and GPUs, replaces a replica that dies, and spreads requests over them. A stream's state
lives in the replica that generates it: the whole stream is one request, so there is nothing to hand over.

    charlstm serve --ray --replicas 2                          # a local Ray instance, or --ray-address auto
    serve run deploy/ray-serve.yaml                            # Ray's own CLI, settings in YAML
    serve run charlstm.serve.ray_app:app num_replicas=2 model=/abs/path/to/model

Needs the `ray` extra: pip install "charlstm[ray]".
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import asdict, dataclass, fields

from ray import serve

from charlstm.errors import UserError
from charlstm.runtime import SessionConfig
from charlstm.serve.app import Server, create_app, load_models
from charlstm.serve.protocol import Limits

APP = "charlstm"  # the Serve application's name, and its deployment's


@dataclass(frozen=True)
class ReplicaSettings:
    """What each replica loads and how it answers; the same meanings as `charlstm serve`'s options."""

    models: tuple[str, ...] = ()  # model folders, readable on every node; () = the default model
    device: str = "auto"  # a replica given num_gpus=1 sees one GPU, so auto takes it
    int8: bool = False  # float32 batches better (docs/serving.md)
    max_streams: int = 64
    max_queued: int | None = None
    threads: int = 1  # ONNX Runtime intra-op threads; set it to the replica's num_cpus less one for HTTP
    max_tokens: int = 10_000
    max_prompt: int = 10_000
    max_n: int = 16
    api_key: str | None = None
    grace: float = 30.0  # seconds in-flight streams may take when the replica is stopped
    # Seconds a stream's text gathers between events. Every event is a message from the replica to Ray's proxy, a
    # cost plain `serve` does not pay (docs/ray.md measures it): fewer, longer chunks than plain serve's 10 ms.
    stream_interval: float = 0.05


@dataclass(frozen=True)
class Scaling:
    """How many replicas and what each one reserves of a node."""

    num_replicas: int = 1
    min_replicas: int | None = None  # set both min and max to autoscale on ongoing requests instead
    max_replicas: int | None = None
    target_ongoing_requests: int | None = None  # per replica, when autoscaling; None: half of max_streams
    num_cpus: float = 1.0  # a node's CPU count over this is how many replicas it takes
    num_gpus: float = 0.0  # 1: one replica per GPU


@serve.deployment(name=APP, health_check_period_s=5, health_check_timeout_s=30)
@serve.ingress()
class CharLSTM:
    """One replica: the models, their engines and `charlstm serve`'s Starlette app."""

    def __init__(self, settings: dict):
        s = ReplicaSettings(**settings)
        config = SessionConfig(device=s.device, int8=s.int8, threads=s.threads, spinning=False)
        self.served = load_models(list(s.models), config, s.max_streams, s.max_queued)
        self.server = Server(self.served, Limits(max_prompt=s.max_prompt, max_tokens=s.max_tokens, max_n=s.max_n),
                             s.api_key, stream_interval=s.stream_interval)
        self.grace = s.grace

    def __serve_build_asgi_app__(self):
        return create_app(self.server, grace=self.grace)

    def check_health(self) -> None:
        """Ray restarts a replica whose engine worker has stopped."""
        for name, s in self.served.items():
            if not s.engine.alive:
                raise RuntimeError(f"the engine of {name} has stopped")


def application(settings: ReplicaSettings = ReplicaSettings(), scaling: Scaling = Scaling()):
    """The Ray Serve application: bind it and `serve.run` it, or let `serve run` build it from YAML."""
    options: dict = {"ray_actor_options": {"num_cpus": scaling.num_cpus, "num_gpus": scaling.num_gpus},
                     # every stream is a request that stays open while it generates: let a replica hold as many
                     # as its engine batches and queues, rather than Ray's default of 5
                     "max_ongoing_requests": settings.max_streams + (settings.max_queued
                                                                     if settings.max_queued is not None
                                                                     else 4 * settings.max_streams),
                     "graceful_shutdown_timeout_s": settings.grace}
    if scaling.min_replicas is not None or scaling.max_replicas is not None:
        low = scaling.min_replicas if scaling.min_replicas is not None else 1
        high = scaling.max_replicas if scaling.max_replicas is not None else max(low, scaling.num_replicas)
        if not 0 <= low <= high:
            raise UserError(f"min_replicas {low} and max_replicas {high}: need 0 <= min <= max", "scaling")
        # each ongoing request is a stream: scale up before a replica's batch is full and streams queue
        target = scaling.target_ongoing_requests or max(1, settings.max_streams // 2)
        options["autoscaling_config"] = {"min_replicas": low, "max_replicas": high,
                                         "target_ongoing_requests": target}
    else:
        options["num_replicas"] = scaling.num_replicas
    return CharLSTM.options(**options).bind(asdict(settings))


def app_builder(args: dict):
    """For `serve run charlstm.serve.ray_app:app key=value ...` and the `args:` of a YAML config: each
    ReplicaSettings or Scaling field by name; `model` (or `models`, a list) names the model folders, as paths
    that every node can read (absolute: a replica's working directory is Ray's, not the shell's)."""
    args = dict(args)
    models = args.pop("models", None) or args.pop("model", None) or ()
    models = (models,) if isinstance(models, str) else tuple(models)
    kinds = {f.name: f for f in fields(ReplicaSettings)} | {f.name: f for f in fields(Scaling)}
    unknown = sorted(set(args) - set(kinds))
    if unknown:
        raise UserError(f"unknown setting(s) {', '.join(unknown)} for charlstm's Ray app: use "
                        f"{', '.join(['model', *kinds])}", "args")
    values = {k: _parse(k, v) for k, v in args.items()}
    replica = {k: v for k, v in values.items() if k in {f.name for f in fields(ReplicaSettings)}}
    scaling = {k: v for k, v in values.items() if k in {f.name for f in fields(Scaling)}}
    return application(ReplicaSettings(models=models, **replica), Scaling(**scaling))


app = app_builder  # `serve run charlstm.serve.ray_app:app`: Ray calls a builder function with the args


def _parse(key: str, value):
    """`serve run ... key=value` passes strings; YAML passes typed values."""
    if not isinstance(value, str):
        return value
    if key in ("int8",):
        return value.lower() in ("1", "true", "yes")
    if key in ("device", "api_key"):
        return value
    try:
        return float(value) if key in ("num_cpus", "num_gpus", "grace", "stream_interval") else int(value)
    except ValueError:
        raise UserError(f"{key}={value!r} is not a number", key) from None


def start(settings: ReplicaSettings, scaling: Scaling, host: str = "127.0.0.1", port: int = 8000,
          address: str | None = None) -> None:
    """Start a local Ray instance (address None) or join a cluster ('auto', 'HOST:6379', 'ray://...'), start
    Serve's HTTP proxy on host:port and deploy; returns once every replica is up."""
    import ray
    if address not in (None, "auto", "local"):
        reachable(address)
    quiet = logging.WARNING  # Ray's INFO lines are its own progress; the CLI says what happened in its own words
    try:
        if address is None:
            # A Ray instance that `charlstm serve` starts unasked does not report usage to Ray's servers unless
            # the user opts in; only Serve's HTTP proxy listens on `host` (Ray's own ports are on every interface).
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level=quiet)
        else:
            ray.init(address=address, log_to_driver=False, logging_level=quiet)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise UserError(f"cannot join the Ray cluster at {address!r} ({str(e).splitlines()[0]}): start one with "
                        "`ray start --head`, or leave out --ray-address for a local one", "ray_address") from None
    logging.getLogger("ray.serve").setLevel(quiet)
    serve.start(http_options={"host": host, "port": port})
    try:
        serve.run(application(settings, scaling), name=APP, route_prefix="/")
    except RuntimeError as e:  # Ray gives up on a deployment whose replicas keep failing to start
        raise UserError(f"the replicas did not start ({str(e).splitlines()[0]}): see the replica logs under "
                        "/tmp/ray/session_latest/logs/serve/ on their node") from None


def reachable(address: str) -> None:
    """A cluster address that nothing answers at, told in seconds: ray.init would retry it for minutes."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--ray-address {address!r} is not HOST:PORT, ray://HOST:PORT or auto: pass the head "
                        "node's address, e.g. 10.0.0.1:6379", "ray_address")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise UserError(f"cannot join the Ray cluster at {address!r}: nothing answers there ({e.strerror or e}): "
                        "start one with `ray start --head`, or leave out --ray-address for a local one",
                        "ray_address") from None


def stop(local: bool) -> None:
    """Take the application down (in-flight streams get the deployment's grace); a local Ray goes with it."""
    import ray
    if not ray.is_initialized():
        return
    try:
        serve.delete(APP)
        if local:
            serve.shutdown()
    finally:
        ray.shutdown()
