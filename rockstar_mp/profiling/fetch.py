"""Fetch a profile from a running server's ``/debug/pprof`` tree (``rockstar-mp profile``).

    rockstar-mp profile --seconds 5 --out cpu.pb.gz [--pid N] [--kind heap] [--pprof-url URL]
"""
from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request

from ..errors import ProfileFetchError

DEFAULT_PPROF_URL = "http://127.0.0.1:6060/debug/pprof"
TIMED = ("profile", "wall", "heap", "allocs", "block", "mutex", "trace")


def profile_url(base: str, kind: str = "profile", seconds: float | None = None, pid: int | None = None,
                debug: int = 0) -> str:
    if "://" not in base:
        base = "http://" + base
    params = {}
    if seconds is not None and kind in TIMED:
        params["seconds"] = f"{seconds:g}"
    if pid is not None:
        params["pid"] = str(pid)
    if debug:
        params["debug"] = str(debug)
    query = ("?" + urllib.parse.urlencode(params)) if params else ""
    return f"{base.rstrip('/')}/{kind}{query}"


def fetch_profile(base: str, out: str, kind: str = "profile", seconds: float | None = None,
                  pid: int | None = None, token: str | None = None, debug: int = 0) -> int:
    """Write the profile to ``out``; returns its size. ``ProfileFetchError`` with the server's message."""
    url = profile_url(base, kind, seconds, pid, debug)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = (seconds or 30.0) + 60.0
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as r:
            data = r.read()
    except urllib.error.HTTPError as exc:
        message = exc.read().decode(errors="replace").strip()
        raise ProfileFetchError(f"{url}: HTTP {exc.code}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ProfileFetchError(f"{url}: {reason}") from None
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, out)
    return len(data)
