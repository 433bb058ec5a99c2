"""The generate loop, as stages: encode the prompt → prime the state → loop {sample, emit, step} → decode.

    gen = Generator("models/shakespeare")             # load model.json, check model.onnx, open a session
    text = gen.generate("ROMEO:", length=200, seed=1)  # the continuation only, not the prompt
    for ch in gen.stream("ROMEO:", length=200): ...    # the same, a character at a time

With num_samples N the N samples run as one batch (the ONNX batch dimension), each its own stream with its
own random generator; `generate` then returns a list and `stream` yields a list of N strings per run of the
model: one character each, or up to K on the burst graph (K characters a run, sampled in the graph).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import InputError
from runtime.manifest import Manifest, default_model_dir, load_manifest
from runtime.sampling import (SamplingParams, gumbel_noise, gumbel_uniforms, next_ids, noise_rows,
                              row_generators)
from runtime.session import (SessionConfig, check_burst, check_contract, load_session, make_stepper, open_session,
                             resolve_spinning)

MAX_LENGTH = 10_000_000  # a typo guard: ten million characters is hours of CPU time
UNKNOWN = ("error", "skip")
PREFETCH_MIN = 8 * 64 * 16  # noise values per burst run from which a helper thread draws them ahead
NOISE_BLOCK = 64  # steps of Gumbel noise the step loop draws at once: 4.8 µs a character against 16.4 drawn
# one step at a time (`python -m benchmarks.sampling`, 2-core EPYC)
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
                 burst: bool | None = None, cuda_graph: bool = True, spinning: bool | None = None):
        config = SessionConfig(device=device, int8=int8, threads=threads, cuda_graph=cuda_graph, spinning=spinning)
        spin, why = resolve_spinning(config)  # decided once, for every session this generator opens
        config = dataclasses.replace(config, spinning=spin)
        self.spinning_note = f"{'spinning' if spin else 'sleeping'} CPU workers ({why})"
        self.manifest: Manifest = load_manifest(default_model_dir() if model_dir is None else model_dir)
        self.path: Path = self.manifest.onnx_path(int8)
        self.sha256: str = self.manifest.verify(self.path)
        # Each session has its own workers. Beside a burst session on the CPU the step session only primes the
        # prompt, and its workers spinning on after that slowed the burst loop 1.4-1.5x: they sleep.
        step_config = dataclasses.replace(config, spinning=False) if burst and device != "cuda" else config
        self.session, self.device, self.device_note = open_session(self.path, step_config)
        check_contract(self.session, self.manifest, self.path)
        burst_session = None
        if burst is None:  # on the CPU a burst run saves 10-20% a character but its load costs ~0.1-0.2 s
            burst = self.device == "cuda"
        if burst and not int8 and self.manifest.burst is not None:  # the burst file reads model.onnx
            path = self.manifest.burst_path()
            self.manifest.verify(path)
            burst_session = load_session(path, config, self.device)
            check_burst(burst_session, self.manifest, path)
        self.stepper = make_stepper(self.session, self.manifest, self.device, burst_session, config.cuda_graph)
        self.stoi, self.itos = self.manifest.stoi, self.manifest.vocab
        self._chars, self._nul = np.array(self.itos, dtype="<U1"), "\x00" in self.itos
        self._pool = None  # a helper thread that draws the next burst's noise, made on first use

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
        """Yield the continuation of `prompt` as it is made: one character at a time (num_samples 1), or a list
        of num_samples strings per run of the model ('' for a sample that already stopped; a run makes one
        character, or up to K on the burst graph). The prompt is not yielded.

        length and temperature default to the model's manifest. All arguments are checked before this returns.
        """
        chunks = self.chunks(prompt, length, temperature, top_k, top_p, seed, stop, num_samples, unknown)
        return (ch for chunk in chunks for ch in chunk[0]) if num_samples == 1 else chunks

    def chunks(self, prompt: str = "", length: int | None = None, temperature: float | None = None,
               top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
               stop: str | None = None, num_samples: int = 1, unknown: str = "error") -> Iterator[list[str]]:
        """What `stream` yields for num_samples > 1, for any num_samples: a list of num_samples strings per run."""
        search = SearchParams(length=self.manifest.length if length is None else length,
                              num_samples=num_samples, stop=stop, seed=seed)
        sampling = SamplingParams(temperature=self.manifest.temperature if temperature is None else temperature,
                                  top_k=top_k, top_p=top_p)
        ids = self.encode(prompt, unknown)
        return self._loop(ids, search, sampling)

    def _loop(self, ids: np.ndarray, search: SearchParams, sampling: SamplingParams) -> Iterator[list[str]]:
        n, stop = search.num_samples, search.stop
        if search.length == 0:
            return
        logits = self.prime(ids, n)
        rngs = row_generators(search.seed, n)
        done = [False] * n
        tails = [""] * n  # the last len(stop) - 1 characters of each sample: a stop string may straddle runs

        def emit(texts: list[str]) -> list[str]:
            if not stop:
                return texts
            out = []
            for row, text in enumerate(texts):
                if done[row]:
                    text = ""
                elif (i := (tails[row] + text).find(stop)) >= 0:  # end the sample just after the stop string
                    text, done[row] = text[:i + len(stop) - len(tails[row])], True
                else:
                    joined = tails[row] + text
                    tails[row] = joined[len(joined) - len(stop) + 1:]
                out.append(text)
            return out

        picked = next_ids(logits, sampling, rngs)  # sample the first character from the primed state
        yield emit([self.itos[int(i)] for i in picked])
        made = 1
        burst = self.stepper.burst_session is not None and sampling.plain
        if burst:  # K steps per run, each sampled in the graph: the same draws as the step loop below
            steps, vocab, temperature = self.manifest.burst.steps, len(self.itos), sampling.temperature
            zeros = np.zeros((steps, n, vocab), np.float32)  # greedy: no noise, nothing to draw
            noise = (lambda: zeros) if sampling.greedy else (  # noqa: E731
                lambda: gumbel_noise(gumbel_uniforms(rngs, vocab, steps), temperature))
            # A big batch's noise (~0.35 ms for 64 rows) is drawn in a helper thread while the previous run
            # computes (ONNX Runtime releases the GIL); a small batch's costs less than the hand-over.
            ahead = self._helper().submit(noise) if n * vocab * steps >= PREFETCH_MIN and not sampling.greedy \
                else None
        gumbel = not burst and sampling.plain and not sampling.greedy  # the step loop samples by Gumbel-max
        if gumbel:  # as gumbel_max and the burst graph do, the noise drawn NOISE_BLOCK steps at a time
            rows = noise_rows(rngs, len(self.itos), sampling.temperature, search.length - made, NOISE_BLOCK)
        while made < search.length and not all(done):
            if burst:
                k = min(steps, search.length - made)
                if ahead is None:
                    draws = noise()
                else:
                    draws = ahead.result()
                    ahead = self._helper().submit(noise) if made + k < search.length else None
                tokens = self.stepper.burst(picked, draws)
                picked = tokens[-1]
                yield emit(self._decode_rows(tokens[:k]))
                made += k
            else:
                logits = self.stepper.step(picked)  # feed back
                if gumbel:  # sample
                    picked = np.argmax(logits + next(rows), axis=-1).astype(np.int64)
                else:
                    picked = next_ids(logits, sampling, rngs)
                yield emit([self.itos[int(i)] for i in picked])
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

    def generate(self, prompt: str = "", length: int | None = None, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 stop: str | None = None, num_samples: int = 1, unknown: str = "error") -> str | list[str]:
        """The continuation of `prompt` (without the prompt): a str, or a list of num_samples strs."""
        chunks = self.chunks(prompt, length, temperature, top_k, top_p, seed, stop, num_samples, unknown)
        if num_samples == 1:
            return "".join(chunk[0] for chunk in chunks)
        texts = [[] for _ in range(num_samples)]
        for chunk in chunks:
            for row, text in enumerate(chunk):
                texts[row].append(text)
        return ["".join(t) for t in texts]
