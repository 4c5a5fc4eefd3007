"""A minimal client for OpenAI-compatible chat completions (vLLM, Ollama, llama.cpp, hosted).

The standard library suffices for one POST per call, so no SDK is a dependency. Transient
failures (no connection, a timeout, HTTP 408, 429 or 5xx) are retried with exponential
backoff; anything else, or running out of retries, is a one-line UserError.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from saebench.evals.autointerp_config import AutointerpConfig
from store.errors import UserError

_TRANSIENT = {408, 409, 425, 429, 500, 502, 503, 504}


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class ChatClient:
    """POSTs to `<base_url>/chat/completions` and returns the first choice's text."""

    base_url: str
    model: str
    api_key: str | None = None
    retries: int = 3
    retry_wait_s: float = 1.0
    timeout_s: float = 60.0

    @classmethod
    def from_config(cls, cfg: AutointerpConfig) -> ChatClient:
        assert cfg.base_url is not None
        return cls(cfg.base_url, cfg.model, os.environ.get(cfg.api_key_env) or None,
                   cfg.retries, cfg.retry_wait_s, cfg.timeout_s)

    @property
    def url(self) -> str:
        base = self.base_url.rstrip("/")
        return base if base.endswith("/chat/completions") else base + "/chat/completions"

    def _request(self, body: bytes) -> urllib.request.Request:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return urllib.request.Request(self.url, data=body, headers=headers, method="POST")

    def _send(self, body: bytes) -> bytes:
        """One attempt; raises _Transient for what a retry may cure, UserError otherwise."""
        try:
            with urllib.request.urlopen(self._request(body), timeout=self.timeout_s) as resp:
                return resp.read()
        except urllib.error.HTTPError as err:
            detail = _one_line(err.read().decode("utf-8", "replace"))
            why = f"HTTP {err.code} from {self.url}: {detail or err.reason}"
            if err.code in _TRANSIENT:
                raise _Transient(why) from None
            raise UserError(f"autointerp: {why}") from None
        except (TimeoutError, urllib.error.URLError, ConnectionError) as err:
            reason = getattr(err, "reason", err)
            raise _Transient(f"cannot reach {self.url}: {_one_line(str(reason))}") from None

    def complete(self, messages: list[dict], max_tokens: int) -> str:
        """The assistant's reply to `messages` (temperature 0, one completion)."""
        payload = {"model": self.model, "messages": messages, "max_tokens": max_tokens,
                   "temperature": 0.0, "n": 1, "stream": False}
        body = json.dumps(payload).encode()
        wait = self.retry_wait_s
        for attempt in range(self.retries + 1):
            try:
                raw = self._send(body)
                break
            except _Transient as err:
                if attempt == self.retries:
                    raise UserError(
                        f"autointerp: {err} (after {self.retries + 1} attempts)") from None
                time.sleep(wait)
                wait *= 2
        return _content(raw, self.url)


class _Transient(Exception):
    """A failure worth retrying."""


def _content(raw: bytes, url: str) -> str:
    """choices[0].message.content of a chat-completion response, or a one-line UserError."""
    try:
        data = json.loads(raw)
        content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise UserError(
            f"autointerp: {url} did not return a chat completion "
            f"(choices[0].message.content): {_one_line(raw.decode('utf-8', 'replace'))}"
        ) from None
    if not isinstance(content, str):
        raise UserError(f"autointerp: {url} returned no text in choices[0].message.content")
    return content
