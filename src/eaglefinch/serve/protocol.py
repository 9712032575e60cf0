"""The OpenAI request bodies the server accepts, and their translation to engine settings.

Fields follow the OpenAI API. Besides them, ``top_k``, ``min_p`` and ``penalty_decay`` (ChatRWKV's
``alpha_decay``) are accepted as extensions. Fields the API has but this server cannot honour
(``n`` > 1, ``logprobs``, ``echo``, ``best_of`` > 1, ``logit_bias``, ``suffix``, tools) are refused
with a 400 rather than silently ignored; fields the API does not have are ignored.

Penalties follow the OpenAI definition, ``logit[t] -= presence_penalty * (count[t] > 0) +
frequency_penalty * count[t]`` over the tokens generated so far, computed as the ChatRWKV pipeline
does (whose counts skip tokens that are only spaces, tabs or digits; see
``eaglefinch.generation.sampling``), so a request equals ``eaglefinch.generate`` with
``alpha_presence``, ``alpha_frequency`` and ``alpha_decay`` set from it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from eaglefinch.generation.sampling import SamplingConfig


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = None
    n: int | None = None
    logprobs: bool | int | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # extensions
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0, le=1)
    penalty_decay: float | None = Field(default=None, ge=0, le=1)

    def unsupported(self) -> str | None:
        """The first field set to something this server cannot do, as a message; else None."""
        if self.n not in (None, 1):
            return "n must be 1: run one request per completion (each has its own state)"
        if self.logprobs not in (None, False, 0):
            return "logprobs is not supported by this server"
        if self.logit_bias:
            return "logit_bias is not supported by this server"
        return None

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k or 0,
            min_p=self.min_p or 0.0,
            alpha_presence=self.presence_penalty or 0.0,
            alpha_frequency=self.frequency_penalty or 0.0,
            alpha_decay=1.0 if self.penalty_decay is None else self.penalty_decay,
            seed=self.seed,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Common):
    """``POST /v1/completions``: continue ``prompt`` (text, or token ids; a list gives one choice each)."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=16, ge=0)  # the OpenAI default
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    def unsupported(self) -> str | None:
        if self.echo:
            return "echo is not supported by this server"
        if self.best_of not in (None, 1):
            return "best_of must be 1"
        if self.suffix:
            return "suffix (insertion) is not supported by RWKV models"
        return super().unsupported()


class ContentPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_Common):
    """``POST /v1/chat/completions``: the messages rendered in the World chat format."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=0)
    max_completion_tokens: int | None = Field(default=None, ge=0)
    tools: list | None = None

    def unsupported(self) -> str | None:
        if self.tools:
            return "tools (function calling) are not supported by this server"
        return super().unsupported()

    def token_limit(self, default: int) -> int:
        for value in (self.max_completion_tokens, self.max_tokens):
            if value is not None:
                return value
        return default

    def chat_messages(self) -> list[dict]:
        """As ``eaglefinch.chat_format`` messages (the "developer" role is a system message)."""
        return [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in self.messages
        ]


def error_body(message: str, type_: str = "invalid_request_error", param=None, code=None) -> dict:
    """The OpenAI error shape, which the official client turns into its exception classes."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
