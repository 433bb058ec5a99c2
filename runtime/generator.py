"""The generate loop, as stages: encode the prompt → prime the state → loop {sample, emit, step} → decode.

    gen = Generator("models/shakespeare")                  # load model.json, check model.onnx, open a session
    text = gen.generate("ROMEO:", length=200, seed=1)       # the continuation only, not the prompt: a str
    for piece in gen.stream("ROMEO:", length=200): ...      # the same text, as it is made: strs
    texts = gen.generate_batch("ROMEO:", num_samples=4)     # four samples run as one batch: a list of strs
    for pieces in gen.stream_batch("ROMEO:", num_samples=4): ...  # a list of strs per run of the model

Settings come as `SamplingParams` (how a character is picked) and `SearchParams` (how long, how many, when to
stop, the seed), as onnxruntime-genai splits them, or as keyword shortcuts (`temperature=0.7, length=200`). Each
row of a batch has its own random generator (runtime/sampling.py), so a row's text depends on the seed and its
row index only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charlstm.runtime.contract import check_burst, check_contract
from charlstm.runtime.errors import InputError
from charlstm.runtime.manifest import INT8_FILE, Manifest, default_model_dir, load_manifest
from charlstm.runtime.sampling import Sampler, SamplingParams, row_generators
from charlstm.runtime.session import SessionConfig, load_session, open_session, resolve_device
from charlstm.runtime.stepper import make_stepper

MAX_LENGTH = 10_000_000  # a typo guard: ten million characters is hours of CPU time
MAX_SAMPLES = 4096  # rows of one batch
MAX_SEED = 2**64 - 1  # numpy's SeedSequence takes any non-negative int; this keeps seeds portable
UNKNOWN = ("error", "skip")
PREFETCH_MIN = 8 * 64 * 16  # noise values per burst run from which a helper thread draws them ahead
EMPTY_PROMPT = "\n"  # an empty prompt starts from the state after a newline, where the corpus starts speeches
SAMPLING_KEYS = {f.name for f in dataclasses.fields(SamplingParams)}


def _int_in(value, low: int, high: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and low <= value <= high


@dataclass(frozen=True)
class SearchParams:
    """How long and how many: the loop's settings besides the sampler (onnxruntime-genai's `search`)."""

    length: int | None = None  # characters per sample, the prompt not counted; None: the manifest's default
    num_samples: int = 1  # rows of one batch; each row is an independent sample
    stop: str | None = None  # a sample ends once its generated text ends with this string (kept in the text)
    seed: int | None = None  # None: fresh randomness each run; an int: the same text on the same device

    def __post_init__(self):
        if self.length is not None and not _int_in(self.length, 0, MAX_LENGTH):
            raise InputError(f"length {self.length!r} is not an integer from 0 to {MAX_LENGTH:,}: use e.g. 500",
                             "length")
        if not _int_in(self.num_samples, 1, MAX_SAMPLES):
            raise InputError(f"num_samples {self.num_samples!r} is not an integer from 1 to {MAX_SAMPLES}: use 1 "
                             "for one sample", "num_samples")
        if self.stop is not None and (not isinstance(self.stop, str) or self.stop == ""):
            raise InputError(f"stop {self.stop!r} is not a non-empty string: give the text that ends a sample, "
                             "e.g. a blank line", "stop")
        if self.seed is not None and not _int_in(self.seed, 0, MAX_SEED):
            raise InputError(f"seed {self.seed!r} is not an integer from 0 to 2**64 - 1: use e.g. 1", "seed")


SEARCH_KEYS = {f.name for f in dataclasses.fields(SearchParams)}


def make_params(sampling: SamplingParams | None, search: SearchParams | None, defaults: Manifest,
                **shortcuts) -> tuple[SamplingParams, SearchParams]:
    """The two params objects from objects and/or keyword shortcuts; the manifest fills what neither says."""
    unknown = set(shortcuts) - SAMPLING_KEYS - SEARCH_KEYS
    if unknown:
        raise TypeError(f"unexpected keyword arguments {sorted(unknown)}: use {sorted(SAMPLING_KEYS | SEARCH_KEYS)}")
    pick = {k: v for k, v in shortcuts.items() if k in SAMPLING_KEYS and v is not None}
    loop = {k: v for k, v in shortcuts.items() if k in SEARCH_KEYS and v is not None}
    if sampling is not None and pick or search is not None and loop:
        raise TypeError("pass either a params object or its keyword shortcuts, not both")
    sampling = sampling or SamplingParams(**{"temperature": defaults.temperature, **pick})
    search = search or SearchParams(**loop)
    if search.length is None:
        search = dataclasses.replace(search, length=defaults.length)
    return sampling, search


class Generator:
    """A loaded model folder, ready to generate. Errors are InputError / ModelError / DeviceError (UserErrors).

    Generator(model_dir, SessionConfig(device="cpu")) or Generator(model_dir, device="cpu"): the keywords are
    SessionConfig's fields.
    """

    def __init__(self, model_dir=None, config: SessionConfig | None = None, **session_options):
        if config is not None and session_options:
            raise TypeError("pass either a SessionConfig or its keyword shortcuts, not both")
        config = config or SessionConfig(**session_options)
        self.manifest: Manifest = load_manifest(default_model_dir() if model_dir is None else model_dir)
        self.device, self.device_note = resolve_device(config)
        if config.int8 is None:  # the CPU default: the 8-bit graph when the folder has one
            config = dataclasses.replace(config, int8=self.device == "cpu" and (self.manifest.dir / INT8_FILE).exists())
        self.path: Path = self.manifest.onnx_path(config.int8)
        self.sha256: str = self.manifest.verify(self.path)
        config, why = config.resolved()  # decided once, before any session starts its workers
        self.config, self.spinning_note = config, f"{'spinning' if config.spinning else 'sleeping'} CPU workers ({why})"
        want_burst = config.burst is not False and not config.int8 and self.manifest.burst is not None
        burst = want_burst and (config.burst or self.device == "cuda")
        # Each session has its own workers. Beside a CPU burst session the step session only primes the prompt,
        # and its workers spinning on after that would take a core from the burst: they sleep.
        step_config = dataclasses.replace(config, spinning=False) if burst and self.device == "cpu" else config
        self.session = open_session(self.path, step_config, self.device)
        check_contract(self.session, self.manifest, self.path)
        burst_session = None
        if burst:
            path = self.manifest.burst_path()
            self.manifest.verify(path)
            burst_session = load_session(path, config, self.device)
            check_burst(burst_session, self.manifest, path)
        self.stepper = make_stepper(self.session, self.manifest, self.device, burst_session, config.cuda_graph)
        self.stoi, self.itos = self.manifest.stoi, self.manifest.vocab
        self._chars, self._nul = np.array(self.itos, dtype="<U1"), "\x00" in self.itos
        self._pool = None  # a helper thread that draws the next burst's noise, made on first use

    def path_note(self, sampling: SamplingParams | None = None) -> str:
        """What the loop will run, for --verbose: the burst graph or one step a run, CUDA graphs or not."""
        burst = self.stepper.burst_session is not None and (sampling is None or sampling.plain)
        how = f"burst graph ({self.manifest.burst.steps} characters a run)" if burst else "one step a run"
        return how + (", CUDA graphs" if self.stepper.graphs else "")

    # -- stage 1: encode --------------------------------------------------------------------------------------
    def encode(self, text: str, unknown: str = "error", param: str = "prompt") -> np.ndarray:
        """Character ids of `text`; characters outside the vocabulary raise InputError, or are dropped (skip).
        `param` names the argument `text` came in as, for the error."""
        if unknown not in UNKNOWN:
            raise InputError(f"unknown {unknown!r} is not one of {', '.join(UNKNOWN)}: use error (stop and list "
                             "them) or skip (drop them)", "unknown")
        if not isinstance(text, str):
            raise InputError(f"{param} {str(text)[:40]!r} is not a string", param)
        bad = self.unknown_characters(text)
        if bad and unknown == "error":
            shown = ", ".join(repr(ch) for ch in bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
            raise InputError(f"{param} has {len(bad)} character(s) outside the model's vocabulary of "
                             f"{len(self.itos)}: {shown}; remove them, or pass `unknown=skip` to drop them", param)
        return np.array([self.stoi[ch] for ch in text if ch in self.stoi], dtype=np.int64)

    def unknown_characters(self, text: str) -> list[str]:
        return sorted({ch for ch in text if ch not in self.stoi})

    def decode(self, ids) -> str:
        return "".join(self.itos[int(i)] for i in ids)

    # -- stage 2: prime ---------------------------------------------------------------------------------------
    def prime(self, ids: np.ndarray, batch: int = 1) -> np.ndarray:
        """Zero the state and feed the prompt one character at a time (char-rnn); returns the last logits."""
        if len(ids) == 0:
            ids = np.array([self.stoi.get(EMPTY_PROMPT, 0)], dtype=np.int64)
        self.stepper.reset(batch)
        for i in ids:
            logits = self.stepper.step(np.full(batch, i, dtype=np.int64))
        return logits

    # -- the four ways in -------------------------------------------------------------------------------------
    def generate(self, prompt: str = "", sampling: SamplingParams | None = None,
                 search: SearchParams | None = None, unknown: str = "error", **shortcuts) -> str:
        """The continuation of `prompt` (without the prompt), one sample."""
        return "".join(self.stream(prompt, sampling, search, unknown, **shortcuts))

    def stream(self, prompt: str = "", sampling: SamplingParams | None = None,
               search: SearchParams | None = None, unknown: str = "error", **shortcuts) -> Iterator[str]:
        """One sample's continuation as it is made: a str per run of the model (one character, or up to K on
        the burst graph). Every argument is checked before this returns."""
        sampling, search = make_params(sampling, search, self.manifest, **shortcuts)
        if search.num_samples != 1:
            raise InputError(f"num_samples {search.num_samples}: stream and generate make one sample; use "
                             "stream_batch or generate_batch for several", "num_samples")
        runs = self._loop(self.encode(prompt, unknown), search, sampling)
        return (texts[0] for texts in runs if texts[0])

    def generate_batch(self, prompt: str = "", sampling: SamplingParams | None = None,
                       search: SearchParams | None = None, unknown: str = "error", **shortcuts) -> list[str]:
        """num_samples continuations of `prompt`, run together as one batch."""
        texts: list[list[str]] | None = None
        for pieces in self.stream_batch(prompt, sampling, search, unknown, **shortcuts):
            texts = texts or [[] for _ in pieces]
            for row, piece in enumerate(pieces):
                texts[row].append(piece)
        n = (search.num_samples if search else shortcuts.get("num_samples")) or 1
        return ["".join(t) for t in texts] if texts else [""] * n

    def stream_batch(self, prompt: str = "", sampling: SamplingParams | None = None,
                     search: SearchParams | None = None, unknown: str = "error",
                     **shortcuts) -> Iterator[list[str]]:
        """A list of num_samples strs per run of the model ('' for a sample that already stopped)."""
        sampling, search = make_params(sampling, search, self.manifest, **shortcuts)
        return self._loop(self.encode(prompt, unknown), search, sampling)

    # -- stages 3 and 4: the loop, then decode ----------------------------------------------------------------
    def _loop(self, ids: np.ndarray, search: SearchParams, sampling: SamplingParams) -> Iterator[list[str]]:
        n, length = search.num_samples, search.length
        if length == 0:
            return
        logits = self.prime(ids, n)
        sampler = Sampler(sampling, row_generators(search.seed, n), len(self.itos))
        stops = StopStrings(search.stop, n)
        picked = sampler.pick(logits)  # the first character, from the primed state
        yield stops.emit([self.itos[int(i)] for i in picked])
        made = 1
        burst = self.stepper.burst_session is not None and sampling.plain
        if burst:  # K steps a run, each sampled in the graph: the very draws the step loop would use
            steps = self.manifest.burst.steps
            # A big batch's noise is drawn in a helper thread while the previous run computes (ONNX Runtime
            # releases the GIL); a small batch's costs less than the hand-over.
            prefetch = n * len(self.itos) * steps >= PREFETCH_MIN and not sampling.greedy
            ahead = self._helper().submit(sampler.noise, steps) if prefetch else None
        while made < length and not stops.all_done:
            if burst:
                k = min(steps, length - made)
                noise = ahead.result() if ahead else sampler.noise(steps)
                ahead = self._helper().submit(sampler.noise, steps) if ahead and made + k < length else None
                tokens = self.stepper.burst(picked, noise)
                picked = tokens[-1]
                yield stops.emit(self._decode_rows(tokens[:k]))
                made += k
            else:
                picked = sampler.pick(self.stepper.step(picked))  # feed back, then sample
                yield stops.emit([self.itos[int(i)] for i in picked])
                made += 1

    def _helper(self):
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="charlstm-noise")
        return self._pool

    def _decode_rows(self, tokens: np.ndarray) -> list[str]:
        """ids [steps, batch] -> one string per row: a numpy gather, then each row's characters as one str."""
        chars = self._chars[tokens.T]  # [batch, steps] of single characters
        if self._nul:  # numpy drops trailing NULs from a str: join by hand
            return ["".join(row) for row in chars.tolist()]
        return np.ascontiguousarray(chars).view(f"<U{tokens.shape[0]}").ravel().tolist()


class StopStrings:
    """Ends each row just after its first occurrence of the stop string, which may straddle runs."""

    def __init__(self, stop: str | None, rows: int):
        self.stop, self.done = stop, [False] * rows
        self.tails = [""] * rows  # the last len(stop) - 1 characters of each row

    @property
    def all_done(self) -> bool:
        return bool(self.stop) and all(self.done)

    def emit(self, texts: list[str]) -> list[str]:
        stop = self.stop
        if not stop:
            return texts
        out = []
        for row, text in enumerate(texts):
            if self.done[row]:
                text = ""
            elif (i := (self.tails[row] + text).find(stop)) >= 0:  # end the row just after the stop string
                text, self.done[row] = text[:i + len(stop) - len(self.tails[row])], True
            else:
                joined = self.tails[row] + text
                self.tails[row] = joined[len(joined) - len(stop) + 1:]
            out.append(text)
        return out
