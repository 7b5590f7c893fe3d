"""Which format the metrics endpoint answers in: ``?format=`` first, then the ``Accept`` header.

Three formats, each one media type::

    json         application/json                           (the default: curl, browsers, no header)
    prometheus   text/plain; version=0.0.4                  (a text/plain range with no version too)
    openmetrics  application/openmetrics-text               (any version: 1.0.0 is what is served)

Prometheus's scraper asks ``application/openmetrics-text;version=1.0.0,application/openmetrics-text;
version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1`` and gets OpenMetrics; a client asking
``text/plain;version=0.0.4;q=0.9,*/*;q=0.1`` gets the Prometheus text format; ``*/*`` gets JSON.
"""
from __future__ import annotations

import re
from functools import lru_cache

FORMATS = ("json", "prometheus", "openmetrics")
DEFAULT = "json"

# (format, type, subtype, versions it serves: None = any)
_OFFERS = (
    ("openmetrics", "application", "openmetrics-text", None),
    ("prometheus", "text", "plain", ("0.0.4",)),
    ("json", "application", "json", None),
)
# Ties in q between formats the client named: the scrape formats first (a client naming several of them
# at one q is a scraper that reads all of them). Ties decided only by wildcards: the default first.
_NAMED_ORDER = ("openmetrics", "prometheus", "json")
_WILDCARD_ORDER = ("json", "prometheus", "openmetrics")

# One element of a comma-separated list, or one ';'-separated part of it: commas and semicolons inside
# a quoted string do not split.
_ELEMENT = re.compile(r'(?:[^,"]|"(?:[^"\\]|\\.)*"?)+')
_PART = re.compile(r'(?:[^;"]|"(?:[^"\\]|\\.)*"?)+')
_QVALUE = re.compile(r"^(?:0(?:\.\d*)?|1(?:\.0*)?)$")  # RFC: 3 decimals at most; longer is let through


def choose_format(accept_header: str | None, format_param: str | None) -> str:
    """``"json"``, ``"prometheus"`` or ``"openmetrics"`` for a request.

    - ``format_param`` (``?format=``), when given, decides alone; a value that is not one of
      ``FORMATS`` raises ``ValueError`` naming the valid ones.
    - Otherwise the ``Accept`` header (RFC 9110 12.5.1): each format takes the q of the most specific
      range that matches it (``type/subtype;version=...`` > ``type/subtype`` > ``type/*`` > ``*/*``;
      the highest q among equally specific ones). A ``version`` the endpoint cannot serve
      (``text/plain;version=1.0.0``) does not match; ``application/openmetrics-text`` matches in any
      version. Parameters after ``q`` are accept-extensions and are ignored, as are malformed ranges.
    - The highest q wins. On a tie, a format the client named (``application/json``) beats one
      reached only through a wildcard; among named formats openmetrics > prometheus > json (the order
      of the header carries no meaning, per the RFC); among wildcard-only ones json > prometheus >
      openmetrics, so ``*/*`` and ``application/*`` give the JSON default and ``text/*`` the
      Prometheus text.
    - No header, an empty one, or one that accepts none of the formats (every q is 0, or only
      ``image/png``): JSON. The endpoint never answers 406.
    """
    if format_param is not None:
        if format_param not in FORMATS:
            raise ValueError(f"format must be one of {list(FORMATS)}, got {format_param!r}")
        return format_param
    if not accept_header or not accept_header.strip():
        return DEFAULT
    return _from_accept(accept_header)


@lru_cache(maxsize=64)  # a scraper sends the same header every time
def _from_accept(header: str) -> str:
    ranges = _parse_accept(header)
    best, best_rank = DEFAULT, None
    for fmt, typ, subtype, versions in _OFFERS:
        specificity, q = -1, 0.0
        for r_type, r_subtype, version, r_q in ranges:
            if r_type == "*":
                s = 0
            elif r_type != typ:
                continue
            elif r_subtype == "*":
                s = 1
            elif r_subtype != subtype:
                continue
            elif version is None:
                s = 2
            elif versions is None or version in versions:
                s = 3
            else:
                continue  # a version this endpoint does not serve
            if s > specificity:
                specificity, q = s, r_q
            elif s == specificity:
                q = max(q, r_q)
        if q <= 0:
            continue
        named = specificity >= 2
        order = _NAMED_ORDER if named else _WILDCARD_ORDER
        rank = (q, named, -order.index(fmt))
        if best_rank is None or rank > best_rank:
            best, best_rank = fmt, rank
    return best


def _parse_accept(header: str) -> list:
    """``[(type, subtype, version or None, q)]`` for each well-formed media range, lower-cased."""
    return [r for r in map(_parse_range, _ELEMENT.findall(header)) if r is not None]


def _parse_range(element: str):
    parts = [p.strip() for p in _PART.findall(element)]
    if not parts:
        return None
    typ, slash, subtype = parts[0].lower().partition("/")
    typ, subtype = typ.strip(), subtype.strip()
    if not slash or not typ or not subtype or (typ == "*" and subtype != "*"):
        return None
    version = None
    for part in parts[1:]:
        name, eq, value = part.partition("=")
        name, value = name.strip().lower(), _unquote(value.strip())
        if name == "q":  # what follows q are accept-extensions
            return (typ, subtype, version, float(value)) if eq and _QVALUE.match(value) else None
        if name == "version" and eq:
            version = value.lower()
    return typ, subtype, version, 1.0


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value
