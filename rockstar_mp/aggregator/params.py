"""Query parameters of every aggregator endpoint: parsed once, here, with bounds.

A value an endpoint cannot use is a ``400 Bad Request`` (``falcon.HTTPBadRequest``) whose description
says which parameter, what it must be and what came; each app's error serializer renders it (JSON on
the metrics port, Go-style text on the pprof port). Nothing here can raise anything else: numbers are
matched as ASCII text first (``str.isdigit`` accepts ``"²"``, ``int`` refuses it; ``float`` accepts
``"١٢"``, ``"inf"`` and ``"1_0"``), and their length is capped before they are converted.
"""
from __future__ import annotations

import math
import re
from typing import Any, Iterable, Optional, overload

import falcon

MAX_TEXT = 64  # characters of a number; longer is refused, not converted
SHOWN = 40  # characters of a bad value quoted back in the error
INT32_MAX = 2 ** 31 - 1  # pids, log levels, debug: C ints

_INTEGER = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def bad_request(description: str) -> falcon.HTTPBadRequest:
    return falcon.HTTPBadRequest(title="400 Bad Request", description=description)


def shown(raw: str) -> str:
    """``raw`` quoted for an error message, cut to ``SHOWN`` characters."""
    return repr(raw) if len(raw) <= SHOWN else repr(raw[:SHOWN]) + f"... ({len(raw)} characters)"


def only(req, allowed: Iterable[str]) -> None:
    """Refuse a parameter this path does not take, and any parameter given more than once."""
    allowed = tuple(allowed)
    unknown = sorted(set(req.params) - set(allowed))
    if unknown:
        raise bad_request(f"unknown query parameter(s) {', '.join(map(shown, unknown))}; "
                          f"this path takes {list(allowed)}")
    repeated = sorted(name for name, value in req.params.items() if isinstance(value, list))
    if repeated:
        raise bad_request(f"query parameter(s) {repeated} given more than once")


def text(req, name: str) -> Optional[str]:
    """The one value of ``name`` (None when absent); a parameter given twice is refused."""
    value = req.params.get(name)
    if isinstance(value, list):
        raise bad_request(f"{name} given more than once")
    return value


@overload
def integer(req: Any, name: str, default: int, *, minimum: int = 0, maximum: int = INT32_MAX) -> int: ...
@overload
def integer(req: Any, name: str, default: None = None, *, minimum: int = 0,
            maximum: int = INT32_MAX) -> Optional[int]: ...
def integer(req, name: str, default: Optional[int] = None, *, minimum: int = 0,
            maximum: int = INT32_MAX) -> Optional[int]:
    """``name`` as an int in ``minimum..maximum`` (ASCII digits only), or ``default`` when absent."""
    raw = text(req, name)
    if raw is None:
        return default
    value = parse_integer(raw, minimum, maximum)
    if value is None:
        raise bad_request(f"{name} must be an integer {minimum}..{maximum}, got {shown(raw)}")
    return value


def parse_integer(raw: str, minimum: int = 0, maximum: int = INT32_MAX) -> Optional[int]:
    """``raw`` as an int in ``minimum..maximum`` if it is one, written in ASCII digits; else None."""
    if len(raw) > MAX_TEXT or not _INTEGER.fullmatch(raw) or not minimum <= int(raw) <= maximum:
        return None
    return int(raw)


@overload
def number(req: Any, name: str, default: float, *, minimum: float = -math.inf, maximum: float = math.inf,
           above: Optional[float] = None) -> float: ...
@overload
def number(req: Any, name: str, default: None = None, *, minimum: float = -math.inf, maximum: float = math.inf,
           above: Optional[float] = None) -> Optional[float]: ...
def number(req, name: str, default: Optional[float] = None, *, minimum: float = -math.inf,
           maximum: float = math.inf, above: Optional[float] = None) -> Optional[float]:
    """``name`` as a finite float with ``minimum <= value <= maximum`` (and ``value > above`` when
    given), written in ASCII decimal notation (``12``, ``0.5``, ``1e3``), or ``default`` when absent."""
    raw = text(req, name)
    if raw is None:
        return default
    value = float(raw) if len(raw) <= MAX_TEXT and _DECIMAL.fullmatch(raw) else math.nan
    above_ok = above is None or value > above
    if not (math.isfinite(value) and minimum <= value <= maximum and above_ok):
        raise bad_request(f"{name} must be a finite number{_range(minimum, maximum, above)}, got {shown(raw)}")
    return value


def _range(minimum: float, maximum: float, above: Optional[float]) -> str:
    """`` above 0 and at most 20``, for an error message ('' when there are no bounds)."""
    if above is not None:
        low = f"above {above:g}"
    else:
        low = f"at least {minimum:g}" if minimum > -math.inf else ""
    high = f"at most {maximum:g}" if maximum < math.inf else ""
    bounds = [bound for bound in (low, high) if bound]
    return " " + " and ".join(bounds) if bounds else ""
