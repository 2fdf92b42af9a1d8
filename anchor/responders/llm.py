"""``llm``: any OpenAI-compatible chat completions endpoint, streamed token by token.

Works with vLLM, llama.cpp's server and Ollama (``/v1``): ``POST
{base_url}/chat/completions`` with ``stream: true``, read as server-sent
events (``data: {...}`` lines, ``data: [DONE]`` at the end). Each content
delta is yielded at once, so the voice speaks the first phrase while the
model still writes the rest.

Failures before the first token (connection refused, 5xx, 429, a timeout)
are retried with backoff; after the first token nothing is retried, since
the viewer has already heard the start. Any other client error (a 4xx such
as a wrong model name) fails at once with the server's message. Cancelling
the consumer (barge-in) closes the HTTP response, which ends the
generation on the server.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp

from anchor.core.backoff import Backoff
from anchor.core.config import LlmSettings
from anchor.core.stage import StageContext
from anchor.responders.answer import Turn

log = logging.getLogger(__name__)

_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class LlmError(RuntimeError):
    """The endpoint failed to answer; the message says how."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def chat_messages(system_prompt: str, history: Sequence[Turn], question: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages += [{"role": t.role, "content": t.text} for t in history]
    messages.append({"role": "user", "content": question})
    return messages


def delta_of(data: dict[str, Any]) -> str:
    """The content piece of one streamed chunk ('' for role-only or empty chunks), or ``LlmError``."""
    if "error" in data:
        error = data["error"]
        message = error.get("message", error) if isinstance(error, dict) else error
        raise LlmError(f"the model stream failed: {message}", retryable=False)
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        return ""
    first = choices[0] if isinstance(choices[0], dict) else {}
    delta = first.get("delta") or {}
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) else ""


class LlmAnswerer:
    def __init__(self, settings: LlmSettings) -> None:
        self.settings = settings
        self.url = settings.base_url.rstrip("/") + "/chat/completions"
        headers = {"Accept": "text/event-stream"}
        if settings.api_key is not None:
            headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
        self._http = aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout_s),
            read_bufsize=1 << 16,
        )

    async def aclose(self) -> None:
        await self._http.close()

    async def answer(self, question: str, history: Sequence[Turn]) -> AsyncIterator[str]:
        s = self.settings
        body = {
            "model": s.model,
            "messages": chat_messages(s.system_prompt, history, question),
            "stream": True,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
        }
        backoff = Backoff(0.25, 2.0)
        for attempt in range(s.retries + 1):
            started = False
            try:
                async for piece in self._stream(body):
                    started = True
                    yield piece
                return
            except LlmError as exc:
                if started or not exc.retryable or attempt == s.retries:
                    raise
                delay = backoff.next_delay()
                log.warning("llm: %s; retry %d of %d in %.2f s", exc, attempt + 1, s.retries, delay)
                await asyncio.sleep(delay)

    async def _stream(self, body: dict[str, Any]) -> AsyncIterator[str]:
        """One request. Timeouts guard each wait, never a ``yield`` (the consumer's time is its own)."""
        s = self.settings
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.first_token_timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._http.post(self.url, json=body)
            async with response:
                if response.status != 200:
                    async with asyncio.timeout_at(deadline):
                        text = (await response.text())[:300]
                    raise LlmError(
                        f"{self.url} answered {response.status}: {text}",
                        retryable=response.status in _RETRY_STATUS,
                    )
                while True:
                    try:
                        async with asyncio.timeout_at(deadline):
                            raw = await response.content.readline()
                    except ValueError as exc:  # aiohttp: a line beyond its buffer limit
                        raise LlmError(
                            f"the model stream sent an overlong line: {exc}", retryable=False
                        ) from None
                    if not raw:
                        raise LlmError(f"{self.url} ended the stream without [DONE]", retryable=True)
                    piece = self._piece(raw)
                    if piece is None:
                        return
                    if piece:
                        yield piece
                        deadline = loop.time() + s.token_timeout_s
        except TimeoutError:
            raise LlmError(f"{self.url} sent no token in time", retryable=True) from None
        except aiohttp.ClientError as exc:
            raise LlmError(f"{self.url} failed: {type(exc).__name__}: {exc}", retryable=True) from None

    @staticmethod
    def _piece(raw: bytes) -> str | None:
        """The text in one event-stream line: '' for anything but content, ``None`` at ``[DONE]``."""
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line.startswith("data:"):
            return ""  # blank separators, comments (":"), event names, ids
        payload = line[5:].strip()
        if payload == "[DONE]":
            return None
        try:
            data = json.loads(payload)
        except json.JSONDecodeError:
            raise LlmError(f"the model stream sent bad JSON: {payload[:120]}", retryable=False) from None
        if not isinstance(data, dict):
            raise LlmError(f"the model stream sent {type(data).__name__}, not an object", retryable=False)
        return delta_of(data)


async def llm_answerer(ctx: StageContext) -> LlmAnswerer:
    return LlmAnswerer(ctx.settings.responder.llm)
