"""The OpenAI completions API as charlstm speaks it: request parsing, response bodies and errors, no HTTP here.

The convention vLLM, llama.cpp's server and TGI follow, so the official `openai` client works unchanged:
`POST /v1/completions` with `model`, `prompt` (a string or a list of strings), `max_tokens`, `temperature`,
`top_p`, `n`, `stop` (a string or a list), `seed`, `stream` (+ `stream_options.include_usage`) and the extension
`top_k`. A token is a character. Omitted values take the model's defaults (model.json: temperature 0.5,
500 characters), as `charlstm generate` does, so the same request gives the same text. As in OpenAI's API the
stop sequence is not part of the returned text. Errors have OpenAI's shape:
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field

# Parameters the API takes and ignores (they do not change what a character model does), so that clients that
# always send them still work; anything else unknown is refused, naming it.
IGNORED = {"user", "logit_bias", "presence_penalty", "frequency_penalty", "best_of", "suffix", "echo", "logprobs"}
KNOWN = {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "n", "stop", "seed", "stream",
         "stream_options"} | IGNORED
MAX_STOPS = 4  # OpenAI's limit


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; the server's options set them."""

    max_prompt: int = 10_000  # characters per prompt: priming costs one step a character
    max_tokens: int = 10_000  # characters per choice
    max_n: int = 16  # choices per request (prompts x n)
    max_body: int = 1 << 20  # bytes of request body


class APIError(Exception):
    """An error response: status, OpenAI's type, the parameter at fault and a code."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                             413: "invalid_request_error", 422: "invalid_request_error",
                             429: "rate_limit_error", 503: "server_error"}.get(status, "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class CompletionRequest:
    model: str | None
    prompts: tuple[str, ...]
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    top_k: int | None
    n: int
    stop: tuple[str, ...]
    seed: int | None
    stream: bool
    include_usage: bool = False
    created: int = field(default_factory=lambda: int(time.time()))
    id: str = field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex[:24]}")


def _malformed(param: str, expected: str, value) -> APIError:
    shown = json.dumps(value)[:60]
    return APIError(422, f"{param} is {shown}, expected {expected}", param, "invalid_type")


def _bad(param: str, message: str) -> APIError:
    return APIError(400, f"{param} {message}", param, "invalid_value")


def _number(body: dict, key: str, low: float, high: float, fix: str, integer: bool = False):
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise _malformed(key, "an integer" if integer else "a number", value)
    if not (math.isfinite(value) and low <= value <= high):
        raise _bad(key, f"{value!r} is out of range: {fix}")
    return value


def parse_completion(raw: bytes, limits: Limits) -> CompletionRequest:
    """The request body -> CompletionRequest; APIError 422 for a malformed body, 400 for a bad value."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise APIError(422, f"the request body is not JSON ({e.__class__.__name__}: {str(e)[:80]}): send a JSON "
                            "object", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(422, f"the request body is a JSON {type(body).__name__}, expected an object", None,
                       "invalid_json")
    unknown = sorted(set(body) - KNOWN)
    if unknown:
        raise APIError(400, f"unknown parameter {unknown[0]!r}: the completions API takes "
                            f"{', '.join(sorted(KNOWN - IGNORED))}", unknown[0], "unknown_parameter")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _malformed("model", "a string", model)
    prompt = body.get("prompt", "")
    if isinstance(prompt, str):
        prompts = (prompt,)
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = tuple(prompt)
    else:
        raise _malformed("prompt", "a string or a non-empty list of strings (token ids are not supported: a "
                                   "token is a character)", prompt)
    longest = max(len(p) for p in prompts)
    if longest > limits.max_prompt:
        raise APIError(413, f"prompt has {longest:,} characters, more than this server's {limits.max_prompt:,}: "
                            "send a shorter prompt", "prompt", "prompt_too_long")
    n = _number(body, "n", 1, limits.max_n, f"use 1 to {limits.max_n}", integer=True) or 1
    if n * len(prompts) > limits.max_n:
        raise _bad("n", f"{n} times {len(prompts)} prompts makes {n * len(prompts)} choices, more than this "
                        f"server's {limits.max_n}: ask for fewer")
    stop = body.get("stop")
    if stop is None:
        stops = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = tuple(stop)
    else:
        raise _malformed("stop", "a string or a list of strings", stop)
    if len(stops) > MAX_STOPS or any(s == "" for s in stops):
        raise _bad("stop", f"{json.dumps(list(stops))[:60]} is not up to {MAX_STOPS} non-empty strings")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _malformed("stream", "true or false", stream)
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise _malformed("stream_options", 'an object such as {"include_usage": true}', options)
    return CompletionRequest(
        model=model, prompts=prompts,
        max_tokens=_number(body, "max_tokens", 0, limits.max_tokens, f"use 0 to {limits.max_tokens:,} characters",
                           integer=True),
        temperature=_number(body, "temperature", 0, 100, "use 0 (greedy) to 100, e.g. 0.5"),
        top_p=_number(body, "top_p", 1e-9, 1, "use a number in (0, 1], e.g. 0.9"),
        top_k=_number(body, "top_k", 1, 1 << 20, "use an integer >= 1, e.g. 5", integer=True),
        n=n, stop=stops,
        seed=_number(body, "seed", 0, 2**63 - 1, "use an integer from 0 to 2**63 - 1", integer=True),
        stream=stream, include_usage=bool(options.get("include_usage", False)))


def usage(prompt_characters: int, completion_characters: int) -> dict:
    return {"prompt_tokens": prompt_characters, "completion_tokens": completion_characters,
            "total_tokens": prompt_characters + completion_characters}


def completion(req: CompletionRequest, model: str, choices: list[dict], prompt_characters: int,
               completion_characters: int) -> dict:
    return {"id": req.id, "object": "text_completion", "created": req.created, "model": model,
            "choices": choices, "usage": usage(prompt_characters, completion_characters)}


def choice(index: int, text: str, finish_reason: str | None) -> dict:
    return {"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}


def chunk(req: CompletionRequest, model: str, choices: list[dict], usage_: dict | None = None) -> str:
    """One server-sent event."""
    body = {"id": req.id, "object": "text_completion", "created": req.created, "model": model, "choices": choices}
    if usage_ is not None:
        body["usage"] = usage_
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


DONE = "data: [DONE]\n\n"


def error_event(message: str) -> str:
    """An error after the stream has started (its status is already 200): an event in the error shape."""
    return f"data: {json.dumps(APIError(500, message, None, 'engine_error').body())}\n\n"


def models_list(summaries: list[dict], created: int) -> dict:
    return {"object": "list", "data": [{"id": s["name"], "object": "model", "created": created,
                                        "owned_by": "charlstm", "charlstm": s} for s in summaries]}
