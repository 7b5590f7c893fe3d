"""profile.proto (the format ``go tool pprof`` reads), written by hand: a varint encoder and a builder.

The profiles travel between processes in a small JSON-able *raw* form (``RawProfile``): a frame table
and samples that index it. Merging raw profiles is a concatenation with re-indexed frames; ``encode``
turns one into gzip'd profile.proto with one mapping marked symbolized (``has_functions``), so pprof
never tries to symbolize the made-up addresses.

Raw form::

    {"sample_types": [["samples", "count"], ["cpu", "nanoseconds"]],
     "period_type": ["cpu", "nanoseconds"], "period": 10000000,
     "time_nanos": 0, "duration_nanos": 0, "comments": [...],
     "frames": [[function name, filename, line, function start line], ...],
     "samples": [[[frame index, ...leaf first], [value, ...], {"label": "value"}], ...]}

A label whose value is an int is written as a numeric label (``num``), a string as a string label;
``pid`` (``NUMERIC_TOO``) is written both ways.
"""
from __future__ import annotations

import gzip
import re
import time

# Labels written twice, as a string and as a number: ``-tagfocus=pid=123`` (a number, which pprof reads
# as a numeric range) matches the numeric one, ``-tagfocus=pid=12.*`` or ``-tagshow`` the string one.
NUMERIC_TOO = frozenset({"pid"})
_DECIMAL = re.compile(r"[0-9]{1,19}")  # ASCII digits only, and within an int64 label


def _numeric_too(key: str, value) -> int | None:
    """The number a ``NUMERIC_TOO`` label's string value also goes out as, or None."""
    if key in NUMERIC_TOO and isinstance(value, str) and _DECIMAL.fullmatch(value):
        number = int(value)
        return number if number < 1 << 63 else None
    return None


# -- wire format ---------------------------------------------------------------------------------
def _varint(out: bytearray, value: int) -> None:
    if value < 0:
        value &= (1 << 64) - 1  # int64 as two's complement, ten bytes
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _key(out: bytearray, field: int, wire: int) -> None:
    _varint(out, (field << 3) | wire)


def _int(out: bytearray, field: int, value: int) -> None:
    if value:
        _key(out, field, 0)
        _varint(out, value)


def _bool(out: bytearray, field: int, value: bool) -> None:
    if value:
        _key(out, field, 0)
        out.append(1)


def _bytes(out: bytearray, field: int, data: bytes) -> None:
    _key(out, field, 2)
    _varint(out, len(data))
    out += data


def _packed(out: bytearray, field: int, values) -> None:
    if values:
        body = bytearray()
        for v in values:
            _varint(body, v)
        _bytes(out, field, bytes(body))


# -- the raw form ----------------------------------------------------------------------------------
def new_raw(sample_types, period_type=None, period: int = 0, duration_nanos: int = 0,
            comments=()) -> dict:
    return {"sample_types": [list(t) for t in sample_types],
            "period_type": list(period_type) if period_type else None, "period": int(period),
            "time_nanos": time.time_ns() - int(duration_nanos), "duration_nanos": int(duration_nanos),
            "comments": list(comments), "frames": [], "samples": []}


def merge_raw(raws: list[dict]) -> dict:
    """One raw profile holding every sample of ``raws`` (same sample types; the first one's header)."""
    if not raws:
        raise ValueError("nothing to merge")
    first = raws[0]
    out = dict(first, frames=[], samples=[], comments=[])
    index: dict[tuple, int] = {}
    for raw in raws:
        if [list(t) for t in raw["sample_types"]] != [list(t) for t in first["sample_types"]]:
            raise ValueError("cannot merge profiles of different sample types")
        remap = []
        for frame in raw["frames"]:
            key = tuple(frame)
            if key not in index:
                index[key] = len(out["frames"])
                out["frames"].append(list(frame))
            remap.append(index[key])
        for stack, values, labels in raw["samples"]:
            out["samples"].append([[remap[i] for i in stack], values, labels])
        out["comments"].extend(raw.get("comments", ()))
        out["time_nanos"] = min(out["time_nanos"], raw["time_nanos"])
        out["duration_nanos"] = max(out["duration_nanos"], raw["duration_nanos"])
    return out


def _label(sample: bytearray, strings: "_Strings", key: str, value) -> None:
    """One Label message: numeric (``num``) for an int, else a string."""
    lab = bytearray()
    _int(lab, 1, strings(key))
    if isinstance(value, int) and not isinstance(value, bool):
        _key(lab, 3, 0)
        _varint(lab, value)  # written even when 0: a numeric label of value 0 is still a label
    else:
        _int(lab, 2, strings(str(value)))
    _bytes(sample, 3, bytes(lab))


class _Strings:
    def __init__(self) -> None:
        self.table = [""]
        self.index = {"": 0}

    def __call__(self, s: str) -> int:
        i = self.index.get(s)
        if i is None:
            i = self.index[s] = len(self.table)
            self.table.append(s)
        return i


def encode(raw: dict, compress: bool = True) -> bytes:
    """The raw profile as (gzip'd) profile.proto bytes."""
    strings = _Strings()
    out = bytearray()
    for kind, unit in raw["sample_types"]:
        vt = bytearray()
        _int(vt, 1, strings(kind))
        _int(vt, 2, strings(unit))
        _bytes(out, 1, bytes(vt))
    # functions and locations: one location per frame (function + line)
    functions: dict[tuple, int] = {}
    function_msgs = []
    location_msgs = []
    for i, (name, filename, line, start) in enumerate(raw["frames"]):
        fkey = (name, filename, start)
        fid = functions.get(fkey)
        if fid is None:
            fid = functions[fkey] = len(functions) + 1
            fn = bytearray()
            _int(fn, 1, fid)
            _int(fn, 2, strings(name))
            _int(fn, 3, strings(name))
            _int(fn, 4, strings(filename))
            _int(fn, 5, int(start))
            function_msgs.append(bytes(fn))
        loc = bytearray()
        _int(loc, 1, i + 1)
        _int(loc, 2, 1)  # the one mapping
        _int(loc, 3, 0x1000 + 16 * (i + 1))  # a made-up, unique address
        ln = bytearray()
        _int(ln, 1, fid)
        _int(ln, 2, int(line))
        _bytes(loc, 4, bytes(ln))
        location_msgs.append(bytes(loc))
    for stack, values, labels in raw["samples"]:
        s = bytearray()
        _packed(s, 1, [i + 1 for i in stack])
        _packed(s, 2, [int(v) for v in values])
        for key, value in sorted(labels.items()):
            _label(s, strings, key, value)
            number = _numeric_too(key, value)
            if number is not None:
                _label(s, strings, key, number)
        _bytes(out, 2, bytes(s))
    mapping = bytearray()
    _int(mapping, 1, 1)
    _int(mapping, 2, 0x1000)
    _int(mapping, 3, 0x1000 + 16 * (len(raw["frames"]) + 2))
    _int(mapping, 5, strings("python"))
    _bool(mapping, 7, True)  # has_functions: symbolized, pprof must not look for a binary
    _bool(mapping, 8, True)
    _bool(mapping, 9, True)
    _bytes(out, 3, bytes(mapping))
    for msg in location_msgs:
        _bytes(out, 4, msg)
    for msg in function_msgs:
        _bytes(out, 5, msg)
    comment_ids = [strings(c) for c in raw.get("comments", ())]
    period_type = raw.get("period_type")
    if period_type:
        pt = bytearray()
        _int(pt, 1, strings(period_type[0]))
        _int(pt, 2, strings(period_type[1]))
    default = raw.get("default_sample_type")
    default_id = strings(default) if default else 0
    for text in strings.table:
        _bytes(out, 6, text.encode("utf-8", "replace"))
    _int(out, 9, int(raw.get("time_nanos", 0)))
    _int(out, 10, int(raw.get("duration_nanos", 0)))
    if period_type:
        _bytes(out, 11, bytes(pt))
    _int(out, 12, int(raw.get("period", 0)))
    if comment_ids:
        _packed(out, 13, comment_ids)
    _int(out, 14, default_id)
    data = bytes(out)
    return gzip.compress(data, 6) if compress else data
