"""Continuous batching: many streams share one session, each step advancing every active stream by a character.

An LSTM needs exactly one step per character whether a stream is still reading its prompt or already sampling,
so streams can join and leave a running batch at any step. One worker thread owns the generator's session and
stepper. Each step it feeds every active row one id (the next prompt character while the row primes, its last
sample afterwards) in one batched run, then samples each row that has read its whole prompt with that row's
own settings and seeded generator (runtime/sampling.py), exactly as `Generator` would alone. Rows join with a
zero state and leave at their length, their stop string or a cancel; the batch is padded to a bucket size
(1, 2, 4, ... max_streams), so the stepper's IOBinding slots (and CUDA graphs) are reused. Per-row logits do
not depend on the rest of the batch on ONNX Runtime's CPU kernels (tested), so a seeded stream writes the same
text alone, among others and through `charlstm generate`; a GPU library may pick other kernels per batch size.

No web code here: a caller submits, then reads each stream's text with `Stream.take` (an `on_output`
callback, called from the worker thread once per step with the streams that have news, lets an event loop wake
its readers).

    engine = Engine(Generator("models/shakespeare"))
    stream = engine.submit("ROMEO:", SamplingParams(temperature=0.7), length=200, seed=1)
    text = stream.result()
    engine.close()
"""

from __future__ import annotations

import atexit
import collections
import itertools
import threading
import time
from collections.abc import Callable

import numpy as np

from charlstm.errors import UserError
from charlstm.runtime.generator import EMPTY_PROMPT, MAX_LENGTH, Generator
from charlstm.runtime.sampling import Sampler, SamplingParams, row_generators


class EngineFull(UserError):
    """Every row is busy and the queue is full: try again later."""


class EngineClosed(UserError):
    """The engine is shutting down and takes no new streams."""


def buckets(max_streams: int) -> list[int]:
    """Batch sizes a step runs at: powers of two up to max_streams (and max_streams itself)."""
    out = [1]
    while out[-1] * 2 < max_streams:
        out.append(out[-1] * 2)
    return sorted(set(out + [max_streams]))


class StopMatcher:
    """OpenAI's stop sequences: the text ends before the first one, which is not returned. Text that could be
    the start of a stop sequence is held back until it cannot be."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops, self.held = tuple(s for s in stops if s), ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to release, stopped?)"""
        if not self.stops:
            return text, False
        held = self.held + text
        hits = [i for i in (held.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.held = ""
            return held[:min(hits)], True
        keep = max((k for s in self.stops for k in range(1, min(len(s), len(held) + 1)) if held.endswith(s[:k])),
                   default=0)
        self.held = held[len(held) - keep:] if keep else ""
        return held[:len(held) - keep], False

    def flush(self) -> str:
        text, self.held = self.held, ""
        return text


class Stream:
    """One generated text: fed by the worker thread, read by anyone (thread-safe)."""

    _ids = itertools.count()

    def __init__(self, prompt_ids: np.ndarray, sampler: Sampler, length: int, stops: tuple[str, ...]):
        self.id = next(self._ids)
        self.prompt, self.sampler, self.length = prompt_ids, sampler, length
        self.matcher = StopMatcher(stops)
        self.fed = 0  # prompt ids fed so far
        self.made = 0  # characters sampled so far (a stop sequence included)
        self.last = 0  # the id to feed next once the prompt is read
        self.finish_reason: str | None = None  # "length", "stop", "cancelled", or "error"
        self.error: str | None = None
        self.submitted, self.first_at = time.perf_counter(), None
        self._lock, self._done = threading.Lock(), threading.Event()
        self._new: list[str] = []
        self.cancelled = False

    def take(self) -> tuple[str, str | None]:
        """The text made since the last take, and the finish reason once the stream has ended (else None)."""
        with self._lock:
            text, self._new = "".join(self._new), []
            return text, self.finish_reason

    def cancel(self) -> None:
        """Free this stream's row at the next step (a client went away)."""
        self.cancelled = True

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> str:
        """Block until the stream ends; returns its whole text (only for a stream nobody else takes from)."""
        self.wait(timeout)
        return self.take()[0]

    def _emit(self, text: str) -> None:
        if text:
            with self._lock:
                self._new.append(text)

    def _finish(self, reason: str, error: str | None = None) -> None:
        with self._lock:
            self.finish_reason, self.error = reason, error
        self._done.set()


class Engine:
    """The continuous-batching worker over one Generator's session (see the module docstring)."""

    def __init__(self, generator: Generator, max_streams: int = 64, max_queued: int | None = None,
                 on_output: Callable[[list[Stream]], None] | None = None):
        if max_streams < 1:
            raise UserError(f"max_streams {max_streams} is not at least 1", "max_streams")
        self.gen, self.max_streams = generator, max_streams
        self.max_queued = 4 * max_streams if max_queued is None else max_queued
        self.on_output = on_output
        self.sizes = buckets(max_streams)
        self.rows: list[Stream] = []  # active streams, row i of the batch
        self.queue: collections.deque[Stream] = collections.deque()
        self.closing = False
        self.steps = self.characters = 0
        self.step_seconds = 0.0
        self.step_hook: Callable[[float, int], None] | None = None  # (seconds, batch) per step, for metrics
        self._wake = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="charlstm-engine", daemon=True)
        self._thread.start()
        atexit.register(self.close)  # ONNX Runtime aborts the process if its session dies under a running thread

    # -- the caller's side ------------------------------------------------------------------------------------
    def submit(self, prompt: str, sampling: SamplingParams, length: int, seed: int | None = None,
               stop: tuple[str, ...] | list[str] = (), choices: int = 1, unknown: str = "error") -> list[Stream]:
        """Queue `choices` streams of one prompt (choice i draws what row i of `charlstm generate --num-samples`
        would). Raises InputError for a bad prompt, EngineFull or EngineClosed."""
        if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= MAX_LENGTH:
            raise UserError(f"length {length!r} is not an integer from 0 to {MAX_LENGTH:,}", "length")
        ids = self.gen.encode(prompt, unknown)
        if len(ids) == 0:
            ids = np.array([self.gen.stoi.get(EMPTY_PROMPT, 0)], np.int64)
        rngs = row_generators(seed, choices)
        streams = [Stream(ids, Sampler(sampling, [rng], len(self.gen.itos)), length, tuple(stop)) for rng in rngs]
        with self._wake:
            if self.closing:
                raise EngineClosed("the server is shutting down and takes no new requests: retry elsewhere")
            if len(self.queue) + len(streams) > self.max_queued + max(0, self.max_streams - len(self.rows)):
                raise EngineFull(f"all {self.max_streams} streams are busy and {len(self.queue)} are queued: "
                                 "retry in a moment")
            self.queue.extend(streams)
            self._wake.notify()
        return streams

    def close(self, grace: float = 0.0) -> None:
        """Take no new streams; let active and queued ones finish for up to `grace` seconds, cancel the rest,
        and stop the worker."""
        with self._wake:
            self.closing = True
        deadline = time.monotonic() + grace
        while (self.rows or self.queue) and time.monotonic() < deadline:
            time.sleep(0.01)
        with self._wake:
            for stream in list(self.queue) + self.rows:
                stream.cancel()
            self._stop = True
            self._wake.notify()
        self._thread.join(timeout=10)
        atexit.unregister(self.close)

    @property
    def active(self) -> int:
        return len(self.rows)

    @property
    def queued(self) -> int:
        return len(self.queue)

    @property
    def alive(self) -> bool:
        """The worker thread runs: False once closed (a health check restarts what has stopped)."""
        return self._thread.is_alive()

    # -- the worker -------------------------------------------------------------------------------------------
    def _run(self) -> None:
        batch = 0
        while not (self._stop and not self.rows and not self.queue):
            try:
                batch = self._cycle(batch)
            except Exception as e:  # noqa: BLE001 - a bug must end the streams with an error, never hang them
                for s in self.rows:
                    s._finish("error", f"{type(e).__name__}: {e}")
                self._notify(self.rows)
                self.rows, batch = [], 0

    def _cycle(self, batch: int) -> int:
        """Admit and drop rows, run one step (or one burst), hand out the text. Returns the batch size."""
        stepper = self.gen.stepper
        with self._wake:
            while not self.rows and not self.queue and not self._stop:
                self._wake.wait()
            joining = []
            while self.queue and len(self.rows) + len(joining) < self.max_streams:
                joining.append(self.queue.popleft())
        news: list[Stream] = []
        for s in [s for s in joining if s.cancelled or s.length == 0]:  # nothing to compute
            joining.remove(s)
            s._finish("cancelled" if s.cancelled else "length")
            news.append(s)
        leaving = [i for i, s in enumerate(self.rows) if s.cancelled]
        if joining or leaving:
            batch = self._regroup(stepper, batch, joining, leaving, news)
        if not self.rows:
            self._notify(news)
            return batch
        if self._can_burst():
            return self._burst(batch, news)
        tokens = np.zeros(batch, np.int64)
        for i, s in enumerate(self.rows):
            tokens[i] = s.prompt[s.fed] if s.fed < len(s.prompt) else s.last
        start = time.perf_counter()
        try:
            logits = stepper.step(tokens)
        except Exception as e:  # noqa: BLE001 - a failed run ends every stream with an error, not a hang
            for s in self.rows:
                s._finish("error", f"{type(e).__name__}: {e}")
            news += self.rows
            self.rows = []
            self._notify(news)
            return 0
        done, sampled = [], 0
        for i, s in enumerate(self.rows):
            if s.fed < len(s.prompt):
                s.fed += 1
                if s.fed < len(s.prompt):
                    continue
            sampled += 1
            if self._take(s, int(s.sampler.pick(logits[i:i + 1])[0])):
                done.append(i)
            news.append(s)
        self._count(time.perf_counter() - start, batch, sampled)
        if done:
            batch = self._regroup(stepper, batch, [], done, [])
        self._notify(news)
        return batch

    def _take(self, s: Stream, picked: int) -> bool:
        """Row `s` sampled `picked`: emit what the stop matcher releases; returns whether the stream ended."""
        s.last, s.made = picked, s.made + 1
        if s.first_at is None:
            s.first_at = time.perf_counter()
        text, stopped = s.matcher.feed(self.gen.itos[picked])
        s._emit(text)
        if stopped or s.made >= s.length:
            if not stopped:
                s._emit(s.matcher.flush())
            s._finish("stop" if stopped else "length")
            return True
        return False

    def _count(self, seconds: float, batch: int, characters: int) -> None:
        self.steps, self.step_seconds = self.steps + 1, self.step_seconds + seconds
        self.characters += characters
        if self.step_hook:
            self.step_hook(seconds, batch)

    def _can_burst(self) -> bool:
        """The burst graph runs K steps at once when every row samples plainly and none is still priming, and
        no stream waits to join (it would wait up to K steps)."""
        return (self.gen.stepper.burst_session is not None and not self.queue
                and all(s.fed >= len(s.prompt) and s.sampler.params.plain and not s.cancelled for s in self.rows))

    def _burst(self, batch: int, news: list[Stream]) -> int:
        """K characters per row in one run, each row's noise drawn by its own sampler: the very draws K single
        steps would use, so the text is the same."""
        k, vocab = self.gen.manifest.burst.steps, len(self.gen.itos)
        noise = np.zeros((k, batch, vocab), np.float32)
        tokens_in = np.zeros(batch, np.int64)
        for i, s in enumerate(self.rows):
            noise[:, i] = s.sampler.noise(k)[:, 0]
            tokens_in[i] = s.last
        start = time.perf_counter()
        tokens = self.gen.stepper.burst(tokens_in, noise)
        done, made = [], 0
        for i, s in enumerate(self.rows):
            for step in range(k):
                made += 1
                if self._take(s, int(tokens[step, i])):
                    done.append(i)
                    break
            news.append(s)
        self._count(time.perf_counter() - start, batch, made)
        if done:
            batch = self._regroup(self.gen.stepper, batch, [], done, [])
        self._notify(news)
        return batch

    def _regroup(self, stepper, batch: int, joining: list[Stream], leaving: list[int], news: list[Stream]) -> int:
        """Remove the rows in `leaving` (moving the last rows into their places), append `joining` with a zero
        state, and move the state to the smallest bucket that holds them. Returns the new batch size."""
        if batch:
            h, c = stepper.state()
        rows = self.rows
        keep = [i for i in range(len(rows)) if i not in set(leaving)]
        for i in leaving:
            if rows[i].cancelled and not rows[i].done:
                rows[i]._finish("cancelled")
                news.append(rows[i])
        self.rows = [rows[i] for i in keep] + joining
        if not self.rows:
            return 0
        size = next(b for b in self.sizes if b >= len(self.rows))
        shape = (self.gen.manifest.layers, size, self.gen.manifest.units)
        new_h, new_c = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        if batch and keep:
            new_h[:, :len(keep)], new_c[:, :len(keep)] = h[:, keep], c[:, keep]
        stepper.load_state(new_h, new_c)
        return size

    def _notify(self, streams: list[Stream]) -> None:
        if streams and self.on_output is not None:
            self.on_output(streams)
