"""The tables of ``docs/architecture.md`` section 2 (the segment's byte layout), generated from ``layout.py``.

The doc holds them between two marker lines (``BEGIN``, ``END``); ``make docs`` rewrites what lies between,
and a test fails the build when the doc differs from what this module generates now. Every number comes
from ``layout``; every formula shown is checked against ``BodyLayout``/``Geometry`` before it is printed.

Usage::

    python -m rockstar_mp.segment.layout_doc                                # print the section
    python -m rockstar_mp.segment.layout_doc --write docs/architecture.md   # rewrite it in place
    python -m rockstar_mp.segment.layout_doc --check docs/architecture.md   # exit 1 if it differs
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import layout
from .layout import (
    BODY_HEADER_SIZE,
    HEADER_SIZE,
    LOG,
    LOG_FIELDS,
    LOG_SLOT,
    PAGE,
    RECORD,
    RECORD_FIELDS,
    RECORD_SLOT,
    SLOT_PAYLOAD,
    SLOT_SEQ,
    TABLE_ENTRY_SIZE,
    Body,
    BodyLayout,
    Field,
    Geometry,
    Header,
    Slot,
    round_up,
    spans,
)

BEGIN = "<!-- BEGIN generated from rockstar_mp/segment/layout.py by `make docs`: edit layout.py, not this -->"
END = "<!-- END generated -->"

# (region, BodyLayout property, offset formula, size formula, content). Formulas: Python over a body's
# sizes and offsets, with {NAME} for a constant of layout.py.
REGIONS = (
    ("header", None, "0", "{BODY_HEADER_SIZE}", "the table above"),
    ("index", "index_offset", "{BODY_HEADER_SIZE}", "max_series * {INDEX_ENTRY.size}",
     "`INDEX_ENTRY = \"{INDEX_ENTRY.format}\"`: key offset in the heap, key length, first value (a cell index "
     "relative to the values region), value count"),
    ("key heap", "heap_offset", "index_offset + max_series * {INDEX_ENTRY.size}", "heap_bytes",
     "the concatenated key bytes"),
    ("values", "values_offset", "round_up(heap_offset + heap_bytes, {CELL_BYTES})", "max_values * {VALUE.size}",
     "float64 cells (`VALUE = \"{VALUE.format}\"`)"),
    ("records", "records_offset", "values_offset + max_values * {VALUE.size}", "record_slots * {RECORD_SLOT}",
     "workload-record slots (`RECORD_SLOT`), below"),
    ("logs", "logs_offset", "records_offset + record_slots * {RECORD_SLOT}", "log_slots * {LOG_SLOT}",
     "log-record slots (`LOG_SLOT`), below"),
    ("body size", "size", "round_up(logs_offset + log_slots * {LOG_SLOT}, {PAGE})", None, "whole pages"),
)

# (Geometry offset, formula): evaluated with w, i bound, over a geometry's sizes and offsets.
OFFSETS = (
    ("table_offset", "{HEADER_SIZE}"),
    ("retired_offset", "round_up(table_offset + n_slabs * {TABLE_ENTRY_SIZE}, {PAGE})"),
    ("retired_copy(w)", "retired_offset + w * retired.size"),
    ("slabs_offset", "retired_copy(2)"),
    ("slab_offset(i)", "slabs_offset + i * slab.size"),
    ("total_size", "slab_offset(n_slabs)"),
)
# What the record fields hold (their offsets and formats come from layout.RECORD_FIELDS / LOG_FIELDS).
RECORD_MEANINGS = {"start": "`time.time()` the request began", "duration": "seconds", "bytes": "response bytes",
                   "pid": "the worker's pid", "status": "status code", "method": "request method",
                   "route": "route template", "request_id": "request id, empty for none", "tenant": "tenant"}
LOG_MEANINGS = {"time": "`time.time()` of the record", "pid": "the worker's pid", "level": "level number",
                "logger": "logger name", "message": "message (with the exception, if any)"}
BODY_NAMES = ("max_series", "heap_bytes", "max_values", "record_slots", "log_slots", "index_offset", "heap_offset",
              "values_offset", "records_offset", "logs_offset", "size")
GEOMETRY_NAMES = ("n_slabs", "slab", "retired", "table_offset", "retired_offset", "retired_copy", "slabs_offset",
                  "slab_offset", "total_size")


def number(n: int) -> str:
    """Byte counts as the doc writes them: thousands separated from 10,000 on."""
    return f"{n:,}" if n >= 10_000 else str(n)


def cell(text: str) -> str:
    """Text safe inside a table cell."""
    return text.replace("|", "\\|")


def table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fields_of(cls: type) -> list[tuple[str, list[Field], bool]]:
    """``(name, fields, indexed)`` of what a class of ``layout`` declares, by offset (indexed: a list of
    fields, one per index)."""
    found = []
    for name, value in vars(cls).items():
        if isinstance(value, Field):
            found.append((name, [value], False))
        elif isinstance(value, list) and value and all(isinstance(f, Field) for f in value):
            found.append((name, value, True))
    return sorted(found, key=lambda item: item[1][0].offset)


def fmt(field: Field) -> str:
    return f"`{field.struct.format.lstrip('<')}`"


def field_rows(cls: type) -> list[tuple[str, str, str, str]]:
    """``(offset, format, field, meaning)`` rows; consecutive fields of one format and meaning share a row."""
    rows: list[list] = []  # offset, format, field, meaning, mergeable
    for name, fields, indexed in fields_of(cls):
        first = fields[0]
        if indexed:
            stride = fields[1].offset - first.offset if len(fields) > 1 else first.struct.size
            rows.append([f"{first.offset} + {stride}·i, i < {len(fields)}", fmt(first), f"{name}[i]", first.doc,
                         False])
        elif rows and rows[-1][4] and rows[-1][1] == fmt(first) and rows[-1][3] == first.doc:
            rows[-1][0] += f", {first.offset}"
            rows[-1][2] += f", {name}"
        else:
            rows.append([str(first.offset), fmt(first), name, first.doc, bool(first.doc)])
    return [tuple(row[:4]) for row in rows]


def unused(extents: list[tuple[int, int]], size: int) -> str:
    """The sentence naming the bytes of ``[0, size)`` no ``(offset, size)`` extent covers."""
    gaps, at = [], 0
    for start, length in sorted(extents):
        if start > at:
            gaps.append(f"{number(at)}–{number(start - 1)}")
        at = max(at, start + length)
    if at < size:
        gaps.append(f"{number(at)}–{number(size - 1)}")
    if not gaps:
        return "Every byte is used."
    listed = gaps[0] if len(gaps) == 1 else ", ".join(gaps[:-1]) + " and " + gaps[-1]
    return f"Bytes {listed} are unused."


def field_extents(cls: type) -> list[tuple[int, int]]:
    return [(f.offset, f.struct.size) for _, fields, _ in fields_of(cls) for f in fields]


def fields_section(title: str, cls: type, size: int, after: str = "") -> str:
    rows = field_rows(cls)
    return (f"{title}\n\n" + table(("Offset", "Format", "Field", "Meaning"), rows) + "\n\n"
            + unused(field_extents(cls), size) + (f" {after}" if after else ""))


def slot_section(title: str, fields: dict[str, str], meanings: dict[str, str], payload, slot_size: int) -> str:
    if meanings.keys() != fields.keys():
        raise AssertionError(f"layout_doc: the meanings of {sorted(meanings)} for the fields {sorted(fields)}")
    rows = [(str(SLOT_SEQ.offset), fmt(SLOT_SEQ), "sequence", SLOT_SEQ.doc)]
    rows += [(str(SLOT_PAYLOAD + at), f"`{fields[name]}`", name, meanings[name])
             for name, (at, _) in spans(fields).items()]
    extents = [(SLOT_SEQ.offset, SLOT_SEQ.struct.size), (SLOT_PAYLOAD, payload.size)]
    return (f"{title}\n\n" + table(("Offset", "Format", "Field", "Meaning"), rows) + "\n\n"
            + unused(extents, slot_size))


def formula(template: str) -> str:
    """A formula with layout's constants filled in (still Python)."""
    return template.format(**vars(layout))


def shown(template: str) -> str:
    return formula(template).replace(" * ", " × ")


def check_regions(body: BodyLayout) -> None:
    """Raise if a formula of ``REGIONS`` does not give what ``BodyLayout`` computes."""
    names = {name: getattr(body, name) for name in BODY_NAMES} | {"round_up": round_up}
    for region, prop, offset, _, _ in REGIONS:
        if prop is not None and eval(formula(offset), {}, names) != getattr(body, prop):  # noqa: S307 (our text)
            raise AssertionError(f"layout_doc.REGIONS: the formula of {region} is not BodyLayout.{prop}")


def check_offsets(geometry: Geometry) -> None:
    """Raise if a formula of ``OFFSETS`` does not give what ``Geometry`` computes."""
    names = {name: getattr(geometry, name) for name in GEOMETRY_NAMES} | {"round_up": round_up}
    for w, i in ((0, 0), (1, geometry.n_slabs - 1)):
        for name, template in OFFSETS:
            bound = names | {"w": w, "i": i}
            if eval(formula(template), {}, bound) != eval(name, {}, bound):  # noqa: S307 (our text)
                raise AssertionError(f"layout_doc.OFFSETS: the formula of {name} is not Geometry's")


def regions_section() -> str:
    for geometry in (Geometry(), Geometry(n_slabs=3, slab_heap_bytes=5, retired_heap_bytes=13, record_slots=3,
                                          log_slots=1)):
        check_regions(geometry.slab)
        check_regions(geometry.retired)
        check_offsets(geometry)
    rows = [(region, shown(offset), shown(size) if size else "", content.format(**vars(layout)))
            for region, _, offset, size, content in REGIONS]
    offsets = [(f"`{name}`", shown(template)) for name, template in OFFSETS]
    return ("**Body regions** (`BodyLayout`, offsets relative to the body)\n\n"
            + table(("Region", "Offset", "Size", "Content"), rows) + "\n\n"
            + "**Region offsets** (`Geometry`)\n\n" + table(("Offset", "Formula"), offsets) + "\n\n"
            + "Every body starts on a page boundary, so every value cell and every ring slot is "
            f"{layout.CELL_BYTES}-byte aligned. A cell's segment-wide index in `segment.doubles` (the map cast "
            "to `\"d\"`) is `BodyLayout.first_cell(body) + first`. Record *i* lives in slot `i % slots`.")


def body_row(label: str, body: BodyLayout, n_slabs: str) -> tuple[str, ...]:
    offsets = " / ".join(number(n) for n in (body.heap_offset, body.values_offset, body.records_offset,
                                              body.logs_offset))
    return (label, n_slabs, number(body.max_series), number(body.heap_bytes), number(body.max_values),
            f"{body.record_slots} / {body.log_slots}", offsets, f"{number(body.size)} ({body.size // PAGE} pages)")


def defaults_section() -> str:
    g = Geometry()
    rows = [body_row("slab", g.slab, str(g.n_slabs)), body_row("retired copy", g.retired, "")]
    return ("**Default sizes.** The master uses `geometry_for(config)` (`master/manager.py`): `n_slabs = "
            "max_workers`, `*_heap_bytes = heap_bytes_for(*_max_series)` = `*_max_series × "
            f"{layout.HEAP_BYTES_PER_SERIES}` (`HEAP_BYTES_PER_SERIES`), and the other sizes from the config. "
            "`Geometry()` has the sizes of `MonitoringConfig()` (a test checks it):\n\n"
            + table(("", "n_slabs", "max_series", "heap_bytes", "max_values", "rec/log slots",
                     "heap / values / records / logs offset", "body size"), rows) + "\n\n"
            + f"Table at {number(g.table_offset)}; retired copy 0 at {number(g.retired_copy(0))}, copy 1 at "
            f"{number(g.retired_copy(1))}; slab 0 at {number(g.slab_offset(0))}. **Total: "
            f"{g.total_size:,} bytes ({g.total_size / 2 ** 20:.1f} MiB)**, `Geometry().total_size`.")


def markdown() -> str:
    """The generated part of section 2, without the markers."""
    parts = [
        fields_section(f"**File header** (`Header`, base 0, `HEADER_SIZE` = {HEADER_SIZE})", Header, HEADER_SIZE),
        fields_section(f"**Slab-table entry** (`Slot`, `TABLE_ENTRY_SIZE` = {TABLE_ENTRY_SIZE}, entry *i* at "
                       f"`{Geometry().table_entry(0)} + {TABLE_ENTRY_SIZE}·i`)", Slot, TABLE_ENTRY_SIZE),
        fields_section(f"**Body header** (`Body`, `BODY_HEADER_SIZE` = {BODY_HEADER_SIZE})", Body,
                       BODY_HEADER_SIZE, "Slabs and retired copies share one body layout; a retired copy has "
                       "rings of zero slots."),
        regions_section(),
        slot_section(f"**Workload-record slot** (`RECORD_SLOT` = {RECORD_SLOT}): the sequence (`SLOT_SEQ`), then "
                     f"from `SLOT_PAYLOAD` = {SLOT_PAYLOAD} the record, `RECORD = \"{RECORD.format}\"` "
                     f"({RECORD.size} B) of the fields `RECORD_FIELDS`. Texts are UTF-8, NUL-padded, cut on a "
                     "character boundary to their width (`RECORD_WIDTH`).",
                     RECORD_FIELDS, RECORD_MEANINGS, RECORD, RECORD_SLOT),
        slot_section(f"**Log-record slot** (`LOG_SLOT` = {LOG_SLOT}): the sequence, then the record, `LOG = "
                     f"\"{LOG.format}\"` ({LOG.size} B) of the fields `LOG_FIELDS`; texts as in workload records "
                     "(widths `LOG_WIDTH`).", LOG_FIELDS, LOG_MEANINGS, LOG, LOG_SLOT),
        defaults_section(),
    ]
    return "\n\n".join(parts) + "\n"


def _bounds(text: str) -> tuple[int, int]:
    """Where the generated part starts and ends in ``text`` (after the BEGIN line, at the END line)."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"expected one line {BEGIN!r} followed by one line {END!r}")
    return text.index(BEGIN) + len(BEGIN) + 1, text.index(END)


def generated_part(text: str) -> str:
    """What ``text`` holds between the markers."""
    start, end = _bounds(text)
    return text[start:end]


def with_generated(text: str) -> str:
    """``text`` with what lies between the markers replaced by ``markdown()``."""
    start, end = _bounds(text)
    return text[:start] + markdown() + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rockstar_mp.segment.layout_doc",
                                     description=__doc__.split("\n")[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", metavar="DOC", help="rewrite the generated part of DOC in place")
    action.add_argument("--check", metavar="DOC", help="exit 1 if the generated part of DOC is not current")
    args = parser.parse_args(argv)
    if args.write is None and args.check is None:
        sys.stdout.write(markdown())
        return 0
    path = args.write or args.check
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        if args.check is not None:
            current = generated_part(text) == markdown()
            if not current:
                print(f"{path}: section 2 is not what layout.py gives: run `make docs`", file=sys.stderr)
            return 0 if current else 1
        updated = with_generated(text)  # before the file is opened for writing: a doc without markers stays whole
    except ValueError as e:
        print(f"{path}: {e}", file=sys.stderr)
        return 2
    with open(path, "w", encoding="utf-8") as f:
        f.write(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
