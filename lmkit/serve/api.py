"""The OpenAI completions API as lmkit serves it: the request schema, errors, and the response objects.

Kept apart from the HTTP framework so that the rules (defaults, limits, error shape) read in one place.
Defaults follow OpenAI's (max_tokens 16, temperature 1, top_p 1), not `lmkit generate`'s.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lmkit.errors import InputError, first_error, validation_error_message
from lmkit.fileio import parse_json
from lmkit.serve.engine import Finished

MAX_SEED = 2**63 - 1
# Limits that keep one request from taking the server's memory: a decoded sequence holds its token ids.
MAX_TOKENS = 1_000_000
MAX_CHOICES = 128
# Fields of OpenAI's completions request that this server does not implement: named as such, not as typos.
UNSUPPORTED_FIELDS = frozenset({"best_of", "frequency_penalty", "logit_bias", "presence_penalty", "suffix"})
MAX_LOGPROBS = 20


class APIError(Exception):
    """A request the server refuses: an HTTP status and OpenAI's error object."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers  # e.g. Retry-After on 429

    def body(self) -> dict[str, Any]:
        """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    """`stream_options`: include_usage adds a last chunk with the token counts (and no choices)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool = False


class _Sampling(BaseModel):
    """The fields /v1/completions and /v1/chat/completions share. Unknown fields and values of the wrong type
    are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str
    max_tokens: int = Field(default=16, ge=1, le=MAX_TOKENS, description="new tokens per choice, at most")
    temperature: float = Field(default=1.0, ge=0, allow_inf_nan=False, description="0: greedy (argmax)")
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=1, description="an extension: sample among the k most likely")
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED - 128, description="choice j uses seed + j")
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=MAX_CHOICES, description="choices per prompt")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if stop == "" or (isinstance(stop, list) and "" in stop):
            raise ValueError("a stop string must not be empty")
        return stop

    @property
    def stops(self) -> tuple[str, ...]:
        """The stop strings as a tuple."""
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


Prompt = str | list[int]


class CompletionRequest(_Sampling):
    """The body of POST /v1/completions."""

    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="a text or token ids, or a list of either (each gets n choices)"
    )
    max_tokens: int = Field(default=16, ge=0, le=MAX_TOKENS, description="new tokens per choice; 0 with echo")
    echo: bool = Field(default=False, description="put the prompt before each choice's text")
    logprobs: int | None = Field(
        default=None, ge=0, le=MAX_LOGPROBS, description="log-probabilities of each token, and of the k most likely"
    )

    @field_validator("prompt")
    @classmethod
    def _some_prompt(cls, prompt: str | list) -> str | list:
        if isinstance(prompt, list) and not prompt:
            raise ValueError("give at least one prompt")
        prompts = [prompt] if isinstance(prompt, str) or isinstance(prompt[0], int) else prompt
        if any(len(one) == 0 for one in prompts):
            raise ValueError("a prompt must not be empty; give some text (or token ids) for the model to continue")
        return prompt

    @model_validator(mode="after")
    def _scoring_only_with_echo(self) -> CompletionRequest:
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens = 0 generates nothing: it is for scoring a prompt, with echo = true")
        if self.logprobs is not None and self.stream:
            raise ValueError("logprobs are not streamed by this server; leave out stream")
        return self

    @model_validator(mode="after")
    def _not_too_many_choices(self) -> CompletionRequest:
        if len(self.prompts) * self.n > MAX_CHOICES:
            raise ValueError(f"prompts x n must be at most {MAX_CHOICES}, got {len(self.prompts)} x {self.n}")
        return self

    @property
    def prompts(self) -> list[Prompt]:
        """The prompts as a list (texts, or lists of token ids)."""
        if isinstance(self.prompt, str) or isinstance(self.prompt[0], int):
            return [self.prompt]
        return self.prompt


class ChatMessage(BaseModel):
    """One message of a chat request."""

    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "user", "assistant"]
    content: str
    name: str | None = None


class ChatCompletionRequest(_Sampling):
    """The body of POST /v1/chat/completions: the conversation so far; the answer is the assistant's next turn."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS, description="as max_tokens")

    @model_validator(mode="after")
    def _one_length(self) -> ChatCompletionRequest:
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self

    @property
    def echo(self) -> bool:
        """Chat responses never repeat the prompt."""
        return False


def parse_request(body: bytes, schema: type[BaseModel]) -> BaseModel:
    """The request in `body` as `schema`; APIError 400 for invalid JSON, an unknown field or a bad value."""
    try:
        data = parse_json(body, "the request body")
    except InputError as err:
        raise APIError(400, str(err)) from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        first = first_error(err)
        field = str(first["loc"][0]) if first["loc"] else None
        if first["type"] == "extra_forbidden" and field in UNSUPPORTED_FIELDS:
            raise APIError(400, f"{field!r} is not supported by this server", param=field) from None
        raise APIError(400, validation_error_message(err), param=field) from None


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's usage object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(
    ident: str, model: str, choices: list[dict[str, Any]], token_counts: dict[str, int] | None
) -> dict[str, Any]:
    """A text_completion object (a whole response, or one streamed chunk when `token_counts` is None)."""
    body: dict[str, Any] = {
        "id": ident,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    if token_counts is not None:
        body["usage"] = token_counts
    return body


def choice(
    index: int, text: str, finish_reason: str | None = None, logprobs: dict[str, list] | None = None
) -> dict[str, Any]:
    """One entry of `choices`."""
    return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}


def finished_choice(finished: Finished, prefix: str, logprobs: dict[str, list] | None = None) -> dict[str, Any]:
    """The choice for a whole, non-streamed sequence; `prefix` is the prompt when echo is on, else ""."""
    return choice(finished.index, prefix + finished.text, finished.finish_reason, logprobs)


def logprobs_object(tokens: list[str], scores: list[tuple[float | None, dict[str, float] | None]]) -> dict[str, list]:
    """OpenAI's (legacy completions) logprobs object for `tokens` (their texts) and each one's (log-probability,
    {token text: log-probability} of the most likely tokens), None for the first token of an echoed prompt."""
    offsets, at = [], 0
    for token in tokens:
        offsets.append(at)
        at += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": [score for score, _ in scores],
        "top_logprobs": [top for _, top in scores],
        "text_offset": offsets,
    }


def chat_completion(
    ident: str, model: str, choices: list[dict[str, Any]], token_counts: dict[str, int] | None, chunk: bool
) -> dict[str, Any]:
    """A chat.completion object, or a chat.completion.chunk of a stream (with `token_counts`: the last one)."""
    body = completion(ident, model, choices, token_counts)
    body["object"] = "chat.completion.chunk" if chunk else "chat.completion"
    return body


def chat_choice(index: int, text: str, finish_reason: str | None) -> dict[str, Any]:
    """One entry of a whole chat response's `choices`: the assistant's message."""
    message = {"role": "assistant", "content": text}
    return {"index": index, "message": message, "logprobs": None, "finish_reason": finish_reason}


def chat_delta(index: int, text: str, finish_reason: str | None, first: bool) -> dict[str, Any]:
    """One entry of a streamed chat chunk's `choices`: the text added (and the role, in a choice's first)."""
    delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def server_sent_event(data: dict[str, Any] | str) -> str:
    """One `data: ...` event of a server-sent event stream."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n"
