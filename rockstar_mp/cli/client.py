"""The HTTP client of the aggregator that every ``rockstar-mp`` command uses: where the aggregator is
(``resolve``), and ``Aggregator.get`` / ``Aggregator.post`` of its JSON views, every failure turned into
a ``FetchError`` with a message for the user."""
from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Optional

DEFAULT_URL = "http://127.0.0.1:9090"
DEFAULT_METRICS_PATH = "/metrics"


class FetchError(Exception):
    """A request to the aggregator failed; ``str()`` is the one-line message shown to the user and
    ``status`` the HTTP status, if an answer came."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def request_json(url: str, token: str | None, timeout: float = 10.0, body: dict | None = None) -> object:
    """GET ``url``, or POST ``body`` as JSON when it is given, and decode the JSON answer."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Accept": "application/json"},
                                     method="POST" if data is not None else "GET")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def _http_error_text(exc: urllib.error.HTTPError) -> str:
    try:
        body = exc.read().decode(errors="replace")
    except (OSError, http.client.HTTPException):
        body = ""
    try:
        detail = json.loads(body).get("description") or body
    except (ValueError, AttributeError):
        detail = body
    detail = " ".join(str(detail).split())[:300]
    return f"HTTP {exc.code} {exc.reason}" + (f": {detail}" if detail else "")


@dataclass
class Aggregator:
    """Where the aggregator is and how to ask it."""

    base: str
    metrics_path: str = DEFAULT_METRICS_PATH
    token: Optional[str] = None
    timeout: float = 10.0

    def url(self, path: str) -> str:
        return self.base + path

    @property
    def metrics_url(self) -> str:
        return self.url(self.metrics_path)

    def get(self, path: str) -> dict:
        """The JSON object ``GET path`` answers; ``FetchError`` with a readable message for every kind of
        failure."""
        return self._request(path, None)

    def post(self, path: str, body: dict) -> dict:
        """``POST path`` with ``body`` as JSON, and the JSON object it answers; ``FetchError`` as ``get``."""
        return self._request(path, body)

    def _request(self, path: str, body: dict | None) -> dict:
        url = self.url(path)
        try:
            data = request_json(url, self.token, self.timeout, body)
        except urllib.error.HTTPError as exc:
            raise FetchError(f"{url}: {_http_error_text(exc)}", exc.code) from None
        except urllib.error.URLError as exc:
            raise FetchError(f"cannot reach {url}: {exc.reason}") from None
        except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, truncated answers
            raise FetchError(f"cannot read {url}: {exc or type(exc).__name__}") from None
        except ValueError as exc:
            raise FetchError(f"{url}: the answer is not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise FetchError(f"{url}: expected a JSON object, got {type(data).__name__}")
        return data


def resolve(url: str, metrics_path: str | None = None) -> tuple[str, str]:
    """``(base, metrics path)`` from ``--url`` and ``--metrics-path`` (see ``rockstar_mp.cli.commands``).

    >>> resolve("http://127.0.0.1:9090")
    ('http://127.0.0.1:9090', '/metrics')
    >>> resolve("127.0.0.1:9191/stats?pid=7")
    ('http://127.0.0.1:9191', '/stats?pid=7')
    """
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--url must look like http://HOST:PORT, got {url!r}")
    base = f"{parts.scheme}://{parts.netloc}"
    if metrics_path is None:
        path = parts.path.rstrip("/")
        if path:
            metrics_path = path + (f"?{parts.query}" if parts.query else "")
        else:
            metrics_path = os.environ.get("ROCKSTAR_METRICS_PATH") or DEFAULT_METRICS_PATH
    if not metrics_path.startswith("/"):
        metrics_path = "/" + metrics_path
    return base, metrics_path
