"""The generate loop, as stages: encode the prompt → prime the state → loop {sample, emit, step} → decode.

    gen = Generator("models/shakespeare")             # load model.json, check model.onnx, open a session
    text = gen.generate("ROMEO:", length=200, seed=1)  # the continuation only, not the prompt
    for ch in gen.stream("ROMEO:", length=200): ...    # the same, a character at a time

With num_samples N the N samples run as one batch (the ONNX batch dimension), each its own stream with its
own random generator; `generate` then returns a list and `stream` yields a list of N chunks per step.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import InputError
from runtime.manifest import Manifest, default_model_dir, load_manifest
from runtime.sampling import SamplingParams, gumbel_noise, next_ids, row_generators, uniforms
from runtime.session import SessionConfig, check_burst, check_contract, load_session, make_stepper, open_session

MAX_LENGTH = 10_000_000  # a typo guard: ten million characters is hours of CPU time
UNKNOWN = ("error", "skip")
EMPTY_PROMPT = "\n"  # an empty prompt starts from the state after a newline, where the corpus starts speeches


@dataclass(frozen=True)
class SearchParams:
    """How long and how many: the loop's settings besides the sampler (onnxruntime-genai's `search`)."""

    length: int  # characters to generate per sample, the prompt not counted
    num_samples: int = 1  # rows of one batch; each row is an independent sample
    stop: str | None = None  # a sample ends once its generated text ends with this string (kept in the text)
    seed: int | None = None  # None: fresh randomness each run; an int: the same text on the same device

    def __post_init__(self):
        n = self.length
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= MAX_LENGTH:
            raise InputError(f"--length {n!r} is not an integer between 0 and {MAX_LENGTH:,}: use e.g. 500")
        n = self.num_samples
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise InputError(f"--num-samples {n!r} is not an integer >= 1: use 1 for one sample")
        if self.stop is not None and (not isinstance(self.stop, str) or self.stop == ""):
            raise InputError(f"--stop {self.stop!r} is empty: give the text that ends a sample, e.g. a blank line")
        s = self.seed
        if s is not None and (isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0):
            raise InputError(f"--seed {s!r} is not an integer >= 0: use e.g. --seed 1")


class Generator:
    """A loaded model folder, ready to generate. Errors are InputError / ModelError / DeviceError (UserErrors)."""

    def __init__(self, model_dir=None, device: str = "auto", int8: bool = False, threads: int = 0,
                 burst: bool | None = None, cuda_graph: bool = True):
        config = SessionConfig(device=device, int8=int8, threads=threads, cuda_graph=cuda_graph)
        self.manifest: Manifest = load_manifest(default_model_dir() if model_dir is None else model_dir)
        self.path: Path = self.manifest.onnx_path(int8)
        self.sha256: str = self.manifest.verify(self.path)
        self.session, self.device, self.device_note = open_session(self.path, config)
        check_contract(self.session, self.manifest, self.path)
        burst_session = None
        if burst is None:  # on the CPU a burst run saves ~5% a character but its load costs ~0.1-0.2 s
            burst = self.device == "cuda"
        if burst and not int8 and self.manifest.burst is not None:  # the burst file reads model.onnx
            path = self.manifest.burst_path()
            self.manifest.verify(path)
            burst_session = load_session(path, config, self.device)
            check_burst(burst_session, self.manifest, path)
        self.stepper = make_stepper(self.session, self.manifest, self.device, burst_session, config.cuda_graph)
        self.stoi, self.itos = self.manifest.stoi, self.manifest.vocab

    def path_note(self, top_k=None, top_p=None) -> str:
        """What the loop will run, for --verbose: the burst graph or one step a run, CUDA graphs or not."""
        stepper = self.stepper
        burst = stepper.burst_session is not None and top_k is None and top_p is None
        how = f"burst graph ({self.manifest.burst.steps} characters a run)" if burst else "one step a run"
        return how + (", CUDA graphs" if stepper.graphs else "")

    # -- stage 1: encode --------------------------------------------------------------------------------------
    def encode(self, text: str, unknown: str = "error") -> np.ndarray:
        """Character ids of `text`; characters outside the vocabulary raise InputError, or are dropped (skip)."""
        if unknown not in UNKNOWN:
            raise InputError(f"--unknown {unknown!r} is not one of {', '.join(UNKNOWN)}: use error (stop and list "
                             "them) or skip (drop them)")
        bad = sorted({ch for ch in text if ch not in self.stoi})
        if bad and unknown == "error":
            shown = ", ".join(repr(ch) for ch in bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
            raise InputError(f"{len(bad)} character(s) are not in the model's vocabulary of {len(self.itos)}: "
                             f"{shown}; remove them, or pass --unknown skip to drop them")
        return np.array([self.stoi[ch] for ch in text if ch in self.stoi], dtype=np.int64)

    def decode(self, ids) -> str:
        return "".join(self.itos[int(i)] for i in ids)

    # -- stage 2: prime ---------------------------------------------------------------------------------------
    def prime(self, ids: np.ndarray, batch: int = 1) -> np.ndarray:
        """Zero the state and feed the prompt one character at a time (char-rnn); returns the last logits."""
        if len(ids) == 0:
            start = EMPTY_PROMPT if EMPTY_PROMPT in self.stoi else self.itos[0]
            ids = np.array([self.stoi[start]], dtype=np.int64)
        self.stepper.reset(batch)
        for i in ids:
            logits = self.stepper.step(np.full(batch, i, dtype=np.int64))
        return logits

    # -- stages 3 and 4: the loop, then decode ----------------------------------------------------------------
    def stream(self, prompt: str = "", length: int | None = None, temperature: float | None = None,
               top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
               stop: str | None = None, num_samples: int = 1, unknown: str = "error") -> Iterator:
        """Yield the continuation of `prompt` as it is made: one character per step (num_samples 1), or a list
        of num_samples chunks per step ('' for a sample that already stopped). The prompt is not yielded.

        length and temperature default to the model's manifest. All arguments are checked before this returns.
        """
        search = SearchParams(length=self.manifest.length if length is None else length,
                              num_samples=num_samples, stop=stop, seed=seed)
        sampling = SamplingParams(temperature=self.manifest.temperature if temperature is None else temperature,
                                  top_k=top_k, top_p=top_p)
        ids = self.encode(prompt, unknown)
        chunks = self._loop(ids, search, sampling)
        return (chunk[0] for chunk in chunks) if num_samples == 1 else chunks

    def _loop(self, ids: np.ndarray, search: SearchParams, sampling: SamplingParams) -> Iterator[list[str]]:
        n, stop = search.num_samples, search.stop
        if search.length == 0:
            return
        logits = self.prime(ids, n)
        rngs = row_generators(search.seed, n)
        done = [False] * n
        tails = [""] * n  # the last len(stop) characters of each sample, to spot the stop string

        def emit(picked: np.ndarray) -> list[str]:
            chunk = []
            for row, i in enumerate(picked):
                ch = "" if done[row] else self.itos[int(i)]
                if stop and ch:
                    tails[row] = (tails[row] + ch)[-len(stop):]
                    done[row] = tails[row] == stop
                chunk.append(ch)
            return chunk

        picked = next_ids(logits, sampling, rngs)  # sample the first character from the primed state
        yield emit(picked)
        made = 1
        burst = self.stepper.burst_session is not None and sampling.plain
        while made < search.length and not all(done):
            if burst:  # K steps per run, each sampled in the graph: the same draws as the step loop below
                steps = self.manifest.burst.steps
                noise = gumbel_noise(uniforms(rngs, len(self.itos), steps), sampling.temperature)
                for picked in self.stepper.burst(picked, noise)[:search.length - made]:
                    yield emit(picked)
                    made += 1
                    if all(done):
                        return
            else:
                logits = self.stepper.step(picked)  # feed back
                picked = next_ids(logits, sampling, rngs)  # sample
                yield emit(picked)
                made += 1

    def generate(self, prompt: str = "", length: int | None = None, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 stop: str | None = None, num_samples: int = 1, unknown: str = "error") -> str | list[str]:
        """The continuation of `prompt` (without the prompt): a str, or a list of num_samples strs."""
        chunks = self.stream(prompt, length, temperature, top_k, top_p, seed, stop, num_samples, unknown)
        if num_samples == 1:
            return "".join(chunks)
        texts = [[] for _ in range(num_samples)]
        for chunk in chunks:
            for row, ch in enumerate(chunk):
                texts[row].append(ch)
        return ["".join(t) for t in texts]
