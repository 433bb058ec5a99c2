"""`charlstm serve`: the HTTP layer over the continuous-batching engine (charlstm.runtime.engine).

Starlette on uvicorn. Routes: `POST /v1/completions` (plain or server-sent events), `GET /v1/models`,
`GET /healthz`, `GET /metrics` (Prometheus) and the playground at `/`. The engine knows nothing of HTTP: this
module parses (protocol.py), submits, and turns each stream's text into a response as the worker thread makes
it. One call from the worker per step wakes every reader that has news; a reader sends all the text it has, so
a slow client gets fewer, longer chunks rather than slowing anyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from charlstm.errors import UserError
from charlstm.runtime.engine import Engine, EngineClosed, EngineFull, Stream
from charlstm.runtime.sampling import SamplingParams
from charlstm.serve import protocol
from charlstm.serve.protocol import APIError, Limits

PLAYGROUND = Path(__file__).parent / "static" / "index.html"
DRAIN_LIMIT = 16 << 20  # bytes of a too-large body read and dropped before the 413: closing on unread bytes
# resets the connection, and the client sees 'connection reset' instead of the answer (nginx's lingering close)
STREAM_INTERVAL = 0.01  # seconds between a stream's events at most: the first comes at once, then text gathers for
# up to this long, so a fast stream costs the server one event per interval rather than one per character


@dataclass
class Served:
    """One model the server answers for: its engine and what /v1/models says of it."""

    name: str
    engine: Engine
    summary: dict


def load_models(folders, config, max_streams: int = 64, max_queued: int | None = None, log=None) -> dict[str, Served]:
    """An engine per model folder (None: the default model), keyed by manifest name; `charlstm serve` and each
    Ray Serve replica load their models the same way."""
    from charlstm.runtime import Generator
    served: dict[str, Served] = {}
    for folder in folders or [None]:
        gen = Generator(folder, config)
        name = gen.manifest.name
        if name in served:
            raise UserError(f"two models are named {name!r} ({served[name].engine.gen.manifest.dir} and "
                            f"{gen.manifest.dir}): export one with another --name")
        engine = Engine(gen, max_streams=max_streams, max_queued=max_queued)
        served[name] = Served(name, engine, {**gen.manifest.summary(), "device": gen.device,
                                             "file": gen.path.name, "max_streams": max_streams})
        if log is not None:
            log(f"serving {name} ({gen.manifest.dir}, {gen.path.name}) on {gen.device}"
                + (f"; {gen.device_note}" if gen.device_note else ""))
    return served


class Metrics:
    def __init__(self, served: dict[str, Served]):
        self.registry = r = CollectorRegistry()
        self.active = Gauge("charlstm_active_streams", "Streams being generated", ["model"], registry=r)
        self.queued = Gauge("charlstm_queued_streams", "Streams waiting for a row", ["model"], registry=r)
        self.characters = Counter("charlstm_characters", "Characters generated", ["model"], registry=r)
        self.requests = Counter("charlstm_requests", "Completion requests answered", ["status"], registry=r)
        self.step = Histogram("charlstm_step_seconds", "Time of one batched step (all active streams)", ["model"],
                              registry=r, buckets=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0))
        self.first = Histogram("charlstm_time_to_first_character_seconds", "From submission to the first character",
                               ["model"], registry=r, buckets=(1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0))
        for name, s in served.items():
            self.active.labels(name).set_function(lambda e=s.engine: e.active)
            self.queued.labels(name).set_function(lambda e=s.engine: e.queued)
            step, chars, engine = self.step.labels(name), self.characters.labels(name), s.engine
            last = [0]

            def hook(seconds, batch, step=step, chars=chars, engine=engine, last=last):
                step.observe(seconds)
                chars.inc(engine.characters - last[0])
                last[0] = engine.characters
            s.engine.step_hook = hook


class Server:
    """The application's state: the served models, the limits, the key, and the bridge from the worker threads
    to the event loop."""

    def __init__(self, served: dict[str, Served], limits: Limits = Limits(), api_key: str | None = None,
                 stream_interval: float = STREAM_INTERVAL):
        self.served, self.limits, self.api_key = served, limits, api_key
        self.stream_interval = stream_interval
        self.metrics = Metrics(served)
        self.created = int(time.time())
        self.loop: asyncio.AbstractEventLoop | None = None
        self.waiters: dict[int, asyncio.Event] = {}
        self._woken: set[int] = set()  # stream ids with news, not yet handed to the loop
        self._lock = threading.Lock()
        for s in served.values():
            s.engine.on_output = self._from_worker

    # -- the bridge: one call per engine step -----------------------------------------------------------------
    def _from_worker(self, streams: list[Stream]) -> None:
        """Called by an engine's worker after each step: at most one wake-up of the loop is pending at a time,
        so a busy loop is not flooded with a call per step."""
        if self.loop is None:
            return
        with self._lock:
            schedule = not self._woken
            self._woken.update(s.id for s in streams)
        if schedule:
            self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        with self._lock:
            ids, self._woken = self._woken, set()
        for i in ids:
            event = self.waiters.get(i)
            if event is not None:
                event.set()

    # -- helpers ----------------------------------------------------------------------------------------------
    def check_key(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
            raise APIError(401, "missing or wrong API key: send the header Authorization: Bearer KEY", None,
                           "invalid_api_key")

    def model(self, name: str | None) -> Served:
        if name is None or (len(self.served) == 1 and name in ("", "default")):
            return next(iter(self.served.values()))
        if name not in self.served:
            raise APIError(404, f"model {name!r} is not served here: use one of {sorted(self.served)}", "model",
                           "model_not_found")
        return self.served[name]

    async def body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        declared = int(declared) if declared and declared.isdigit() else None
        chunks, size = [], 0
        if declared is None or declared <= DRAIN_LIMIT:
            async for part in request.stream():
                size += len(part)
                if size > DRAIN_LIMIT:
                    break
                if size <= self.limits.max_body:
                    chunks.append(part)
        if max(size, declared or 0) > self.limits.max_body:
            said = f"has {declared:,} bytes, more than" if declared else "is over"
            raise APIError(413, f"the request body {said} this server's {self.limits.max_body:,} bytes", None,
                           "body_too_large")
        return b"".join(chunks)


def error(e: APIError, server: Server | None = None) -> JSONResponse:
    if server is not None:
        server.metrics.requests.labels(str(e.status)).inc()
    return JSONResponse(e.body(), status_code=e.status)


async def completions(request: Request) -> Response:
    server: Server = request.app.state.server
    server.loop = server.loop or asyncio.get_running_loop()
    try:
        server.check_key(request)
        req = protocol.parse_completion(await server.body(request), server.limits)
        served = server.model(req.model)
        streams = submit(served, req)
    except APIError as e:
        return error(e, server)
    except ClientDisconnect:
        return Response(status_code=499)
    news = asyncio.Event()  # set by the worker (through the loop) when any of these streams has text or ends
    for s in streams:
        server.waiters[s.id] = news
    prompt_chars = sum(len(p) for p in req.prompts) * req.n
    if req.stream:
        server.metrics.requests.labels("200").inc()
        return StreamingResponse(events(server, served, req, streams, news, prompt_chars),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        texts = [""] * len(streams)
        watch = asyncio.ensure_future(disconnected(request))
        try:
            while not all(s.done for s in streams):
                wait = asyncio.ensure_future(news.wait())
                finished, _ = await asyncio.wait([wait, watch], return_when=asyncio.FIRST_COMPLETED)
                wait.cancel()
                if watch in finished:
                    return Response(status_code=499)  # the client is gone: nobody reads this
                news.clear()
            for i, s in enumerate(streams):
                texts[i] += s.take()[0]
        finally:
            watch.cancel()
        failed = next((s for s in streams if s.finish_reason == "error"), None)
        if failed is not None:
            return error(APIError(500, f"generation failed: {failed.error}", None, "engine_error"), server)
        choices = [protocol.choice(i, texts[i], streams[i].finish_reason) for i in range(len(streams))]
        server.metrics.requests.labels("200").inc()
        for s in streams:
            if s.first_at:
                server.metrics.first.labels(served.name).observe(s.first_at - s.submitted)
        return JSONResponse(protocol.completion(req, served.name, choices, prompt_chars, sum(s.made for s in streams)))
    finally:
        for s in streams:
            s.cancel()  # a no-op for a finished stream; frees the row of one whose client went away
            server.waiters.pop(s.id, None)


def submit(served: Served, req: protocol.CompletionRequest) -> list[Stream]:
    """Every (prompt, choice) as an engine stream; library errors become 400s, a full engine 429/503."""
    m = served.engine.gen.manifest
    try:
        sampling = SamplingParams(temperature=m.temperature if req.temperature is None else req.temperature,
                                  top_k=req.top_k, top_p=req.top_p)
        length = m.length if req.max_tokens is None else req.max_tokens
        streams = []
        for prompt in req.prompts:
            streams += served.engine.submit(prompt, sampling, length, req.seed, req.stop, req.n)
    except EngineFull as e:
        for s in streams:
            s.cancel()
        raise APIError(429, str(e), None, "server_busy") from None
    except EngineClosed as e:
        raise APIError(503, str(e), None, "shutting_down") from None
    except UserError as e:
        for s in streams:
            s.cancel()
        message = str(e).replace(", or pass `unknown=skip` to drop them", "")  # the API has no such option
        raise APIError(400, message, e.param, "invalid_value") from None
    return streams


async def disconnected(request: Request) -> None:
    """Returns when the client closes the connection."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def events(server: Server, served: Served, req: protocol.CompletionRequest, streams: list[Stream],
                 news: asyncio.Event, prompt_chars: int):
    """Server-sent events: a chunk with whatever text each choice has, as soon as it has some; a last chunk per
    choice with its finish reason; the usage if asked for; then [DONE]."""
    try:
        finished = [False] * len(streams)
        while not all(finished):
            await news.wait()
            news.clear()  # before taking: news that comes while we send sets it again
            sent = False
            for i, s in enumerate(streams):
                if finished[i]:
                    continue
                text, reason = s.take()
                if reason == "error":
                    yield protocol.error_event(f"generation failed: {s.error}")
                    finished = [True] * len(streams)
                    break
                if text or reason:
                    yield protocol.chunk(req, served.name, [protocol.choice(i, text, reason)])
                    sent = True
                if reason:
                    finished[i] = True
                    if s.first_at:
                        server.metrics.first.labels(served.name).observe(s.first_at - s.submitted)
            if sent and not all(finished):
                await asyncio.sleep(server.stream_interval)  # let text gather: one event per interval, not per step
        if req.include_usage:
            yield protocol.chunk(req, served.name, [], protocol.usage(prompt_chars, sum(s.made for s in streams)))
        yield protocol.DONE
    finally:
        for s in streams:
            s.cancel()  # a client that went away frees its rows at the next step
            server.waiters.pop(s.id, None)


async def models(request: Request) -> Response:
    server: Server = request.app.state.server
    try:
        server.check_key(request)
    except APIError as e:
        return error(e)
    return JSONResponse(protocol.models_list([s.summary for s in server.served.values()], server.created))


async def healthz(request: Request) -> Response:
    server: Server = request.app.state.server
    closing = any(s.engine.closing for s in server.served.values())
    return JSONResponse({"status": "shutting down" if closing else "ok",
                         "models": sorted(server.served)}, status_code=503 if closing else 200)


async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.server.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def playground(request: Request) -> Response:
    return FileResponse(PLAYGROUND, media_type="text/html")


async def not_found(request: Request, exc: HTTPException) -> Response:
    status = exc.status_code
    message = {404: f"no route {request.url.path}: the API is POST /v1/completions and GET /v1/models",
               405: f"{request.method} is not allowed on {request.url.path}"}.get(status, str(exc.detail))
    return JSONResponse(APIError(status, message, None, "not_found" if status == 404 else "method_not_allowed",
                                 "invalid_request_error").body(), status_code=status)


def create_app(server: Server, grace: float = 30.0) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app):
        server.loop = asyncio.get_running_loop()
        yield
        for s in server.served.values():  # uvicorn has let in-flight responses finish (or given up) by now
            s.engine.close(grace=0)

    app = Starlette(routes=[Route("/", playground), Route("/healthz", healthz), Route("/metrics", metrics),
                            Route("/v1/models", models), Route("/v1/completions", completions, methods=["POST"])],
                    exception_handlers={HTTPException: not_found}, lifespan=lifespan)
    app.state.server = server
    return app
