"""Chat backends for the MLLM: any OpenAI-compatible chat-completions endpoint, or a local model.

The OpenAI-compatible backend (vLLM serving Qwen2-VL / Qwen2.5-VL / Qwen3-VL, DashScope, ...) goes
through the `openai` package with its own timeout and bounded retries (the client's backoff, honouring
`retry-after`), sends images as PNG data URLs, and asks for structured JSON output where the server
takes it: a JSON schema, else `json_object`, else plain text, falling back when the server rejects
the request. The local backend lives in `local_backend.py` (transformers, imported only when used).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from .config import MllmSettings
from .errors import AgentError
from .messages import ChatBackend, Message
from .vision import png_data_url

if TYPE_CHECKING:
    pass

ResponseFormat = Literal["json_schema", "json_object", "text"]
MAX_TOKENS = 2048  # an answer is a short JSON object; this bounds a runaway one
MAX_ERROR_CHARS = 300  # of a server's error text shown to the person


def redact(text: str, secret: str | None) -> str:
    """`text` with `secret` replaced, cut to MAX_ERROR_CHARS."""
    if secret:
        text = text.replace(secret, "***")
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "..."


def openai_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Messages in the chat-completions format, images as `data:image/png;base64,...` URLs."""
    result: list[dict[str, Any]] = []
    for message in messages:
        if message.image is None:
            result.append({"role": message.role, "content": message.text})
            continue
        result.append({"role": message.role, "content": [
            {"type": "image_url", "image_url": {"url": png_data_url(message.image)}},
            {"type": "text", "text": message.text},
        ]})
    return result


def response_format(kind: ResponseFormat, schema: dict[str, Any] | None) -> dict[str, Any] | None:
    if kind == "json_schema" and schema is not None:
        return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    if kind == "json_object":
        return {"type": "json_object"}
    return None


class OpenAIBackend:
    """Chat completions over HTTP through the `openai` client."""

    def __init__(self, settings: MllmSettings) -> None:
        from openai import OpenAI

        if not settings.url:
            raise AgentError("an OpenAI-compatible backend needs --mllm-url")
        self.settings = settings
        self.max_pixels = settings.max_pixels
        self.client = OpenAI(base_url=settings.url, api_key=settings.api_key or "EMPTY", timeout=settings.timeout,
                             max_retries=settings.retries)
        self.formats: list[ResponseFormat] = ["json_schema", "json_object", "text"]
        self.model = settings.model

    def _error(self, exc: Exception) -> AgentError:
        """An openai exception as a message a person can act on, never showing the key."""
        import openai

        where, tries = self.settings.url, self.settings.retries + 1
        if isinstance(exc, openai.APITimeoutError):
            return AgentError(f"the MLLM at {where} did not answer within {self.settings.timeout:g} s "
                              f"({tries} tries); raise --mllm-timeout or check the server")
        if isinstance(exc, openai.APIConnectionError):
            return AgentError(f"cannot reach the MLLM at {where} ({tries} tries); is the server running?")
        if isinstance(exc, openai.AuthenticationError):
            return AgentError(f"the MLLM at {where} refused the API key (HTTP 401); set ELIGEN_MLLM_API_KEY")
        if isinstance(exc, openai.APIStatusError):
            detail = redact(str(exc.message), self.settings.api_key)
            retried = f" after {tries} tries" if exc.status_code in (408, 409, 429) or exc.status_code >= 500 else ""
            return AgentError(f"the MLLM at {where} answered HTTP {exc.status_code}{retried}: {detail}")
        return AgentError(f"the MLLM at {where} gave an unusable response: "
                          f"{redact(str(exc), self.settings.api_key)}")

    def served_model(self) -> str:
        """The model to ask: --mllm-model, else the first model the server lists (vLLM serves one)."""
        import openai

        if self.model is None:
            try:
                models = list(self.client.models.list())
            except openai.OpenAIError as exc:
                raise self._error(exc) from None
            if not models:
                raise AgentError(f"the MLLM at {self.settings.url} lists no model; pass --mllm-model")
            self.model = str(models[0].id)
        return self.model

    def complete(self, messages: Sequence[Message], schema: dict[str, Any] | None = None) -> str:
        """Ask once (the client retries transient failures); fall back to a plainer response format when
        the server rejects the structured one, and remember what it accepted."""
        import openai

        model, payload = self.served_model(), openai_messages(messages)
        while True:
            fmt = response_format(self.formats[0], schema)
            try:
                response = self.client.chat.completions.create(
                    model=model, messages=payload, temperature=0.0, max_tokens=MAX_TOKENS,
                    **({"response_format": fmt} if fmt else {}))
            except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                if fmt is None or len(self.formats) == 1:
                    raise self._error(exc) from None
                self.formats.pop(0)
                continue
            except openai.OpenAIError as exc:
                raise self._error(exc) from None
            choices = getattr(response, "choices", None)
            if not choices:
                raise AgentError(f"the MLLM at {self.settings.url} answered with no choices")
            message = getattr(choices[0], "message", None)
            for text in (getattr(message, "content", None), getattr(message, "refusal", None)):
                if isinstance(text, str) and text:
                    return text
            return ""


def make_backend(settings: MllmSettings) -> ChatBackend:
    """The backend the settings ask for."""
    if settings.local:
        from .local_backend import LocalBackend

        return LocalBackend(settings.local, settings.family, settings.device, settings.max_pixels)
    return OpenAIBackend(settings)
