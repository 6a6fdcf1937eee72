"""Captions from any OpenAI-compatible chat API: OpenAI and the online services that copy its API, and local
vLLM / llama.cpp / Ollama servers (`base_url` http://127.0.0.1:8000/v1 and the like).

The frames go as JPEG images in one user message (`image_url` data URLs, the format every such server
reads). A busy server (429, 5xx) or a timeout is retried with exponential backoff (honouring Retry-After);
`requests_per_minute` spaces requests out. Python's own urllib does the HTTP: one POST needs no client
library, and the retry rules stay ours to test.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from cinetune.errors import ConfigError
from cinetune.prep.captioners import CaptionError, ClipFrames

logger = logging.getLogger(__name__)

RETRY_STATUS = {408, 429, 500, 502, 503, 504}
FATAL_STATUS = {
    401: "the API refused the key",
    403: "the API refused access",
    404: "no such model or endpoint",
}


@dataclass
class ApiOptions:
    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4o-mini"
    api_key: str | None = None
    timeout: float = 120.0  # seconds for one request
    max_retries: int = 5
    backoff: float = 2.0  # first wait (s); doubles per retry
    backoff_max: float = 60.0
    requests_per_minute: float = 0.0  # 0: no limit
    max_tokens: int = 300
    temperature: float = 0.2


class OpenAICaptioner:
    """`Captioner` over POST {base_url}/chat/completions."""

    name = "openai"

    def __init__(self, opts: ApiOptions) -> None:
        self.opts = opts
        self.url = opts.base_url.rstrip("/") + "/chat/completions"
        self._next_start = 0.0

    def caption(self, frames: ClipFrames, prompt: str) -> str:
        content: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
        content += [{"type": "image_url", "image_url": {"url": _data_url(image)}} for image in frames.images]
        body = {
            "model": self.opts.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.opts.max_tokens,
            "temperature": self.opts.temperature,
        }
        answer = self._post(json.dumps(body).encode("utf-8"))
        try:
            message = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise CaptionError(f"unexpected answer from {self.url}: {str(answer)[:200]}") from None
        if isinstance(message, list):  # some servers answer with content parts
            message = " ".join(part.get("text", "") for part in message if isinstance(part, dict))
        return message if isinstance(message, str) else ""

    def close(self) -> None:
        return None

    def _post(self, data: bytes) -> dict[str, Any]:
        """One request with retries; the last failure's reason becomes the clip's CaptionError."""
        reason = ""
        for attempt in range(self.opts.max_retries + 1):
            if attempt:
                wait = min(self.opts.backoff * 2 ** (attempt - 1), self.opts.backoff_max)
                wait = max(wait, min(self._server_wait, self.opts.backoff_max))
                logger.info("%s; retry %d of %d in %.1f s", reason, attempt, self.opts.max_retries, wait)
                time.sleep(wait)
            self._server_wait = 0.0
            self._pace()
            try:
                return self._request(data)
            except _RetryableError as exc:
                reason = str(exc)
        raise CaptionError(f"{reason} (gave up after {self.opts.max_retries + 1} tries)")

    _server_wait = 0.0  # what the last Retry-After header asked for, seconds

    def _pace(self) -> None:
        if self.opts.requests_per_minute <= 0:
            return
        now = time.monotonic()
        if now < self._next_start:
            time.sleep(self._next_start - now)
        # from when this request really starts (a sleep can overrun): no two starts closer than the limit
        self._next_start = time.monotonic() + 60.0 / self.opts.requests_per_minute

    def _request(self, data: bytes) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.opts.api_key:
            headers["Authorization"] = f"Bearer {self.opts.api_key}"
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.opts.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            self._http_error(exc)
        except TimeoutError:
            raise _RetryableError(f"no answer within {self.opts.timeout:g} s") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError | socket.timeout):
                raise _RetryableError(f"no answer within {self.opts.timeout:g} s") from None
            raise ConfigError(f"cannot reach {self.url}: {exc.reason}; check --base_url") from None
        try:
            return json.loads(payload)
        except json.JSONDecodeError:
            raise CaptionError(f"the answer is not JSON: {payload[:200]!r}") from None

    def _http_error(self, exc: urllib.error.HTTPError) -> None:
        detail = _error_text(exc)
        if exc.code in FATAL_STATUS:
            raise ConfigError(f"{self.url}: HTTP {exc.code}, {FATAL_STATUS[exc.code]}: {detail}") from None
        if exc.code in RETRY_STATUS:
            self._server_wait = _retry_after(exc.headers.get("Retry-After"))
            raise _RetryableError(f"HTTP {exc.code} ({detail})") from None
        raise CaptionError(f"HTTP {exc.code}: {detail}") from None


class _RetryableError(Exception):
    pass


def _retry_after(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0  # an HTTP date: the backoff decides


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        body = exc.read().decode("utf-8", errors="replace")
        parsed = json.loads(body)
        message = parsed.get("error", {}).get("message") if isinstance(parsed, dict) else None
        return (message or body)[:300]
    except (OSError, json.JSONDecodeError, AttributeError):
        return exc.reason if isinstance(exc.reason, str) else ""


def _data_url(image: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
