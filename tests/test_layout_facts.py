"""The segment's byte layout is stated in rockstar_mp/segment/layout.py only.

Every other module that uses the segment asks layout.py for widths, offsets and cell indices; the C request
path gets them from Python through configure() and Slab(). These tests read the sources (code only:
comments and strings are left out) for the numbers those facts were once written as.
"""
from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

from tests.helpers import ROOT

PACKAGE = Path(ROOT) / "rockstar_mp"
LAYOUT_FILES = {PACKAGE / "segment" / "layout.py", PACKAGE / "segment" / "layout_doc.py"}
IMPORTS_THE_SEGMENT = re.compile(r"^\s*from\s+\.+segment(?:\.\w+)?\s+import", re.M)

# (what, pattern over code without comments and strings)
FORBIDDEN = (
    ("a text field's width as a number (ask layout.RECORD_WIDTH / LOG_WIDTH)",
     re.compile(r"\bfit\((?:[^()]|\([^()]*\))*,\s*\d+\s*\)")),
    ("cell arithmetic on byte offsets (ask layout.cell_index, BodyLayout.first_cell / value_offset)",
     re.compile(r"(?://|%)\s*8\b|>>\s*3\b|<<\s*3\b|\*\s*8\b|(?<!bytearray\()\b8\s*\*")),
    ("the ring sequence's size (ask layout.SLOT_PAYLOAD / SLOT_SEQ)", re.compile(r"\+\s*8\b")),
    ("the key heap per series (ask layout.heap_bytes_for)", re.compile(r"\*\s*128\b|\b128\s*\*")),
    ("a ring slot's or a text field's size (ask layout)", re.compile(r"\b(?:192|442|512)\b")),
)

# The numbers _hotpath.c may hold; none is a fact of the segment's layout, which it gets from Python.
C_NUMBERS_ALLOWED = {
    "0", "1", "2", "3", "4", "5", "6", "7",  # tuple positions, counts of its own fields (STATUS_ENTRY_FIELDS)
    "0.0", "1.0", "1e-6", "1e-9",  # arithmetic, sketch.MIN_SECONDS's default until configure()
    "100", "404", "500",  # HTTP: the status class, Not Found, the server's answer to an app that failed
    "0xC0", "0x80",  # UTF-8 continuation bytes
    "1e9", "1000000000",  # nanoseconds a second: the thread sampler's clocks and wait (cpu_wake)
    "10", "31", "131", "64",  # the resolved status entries' table: a status code's digits, its slot hash, its slots
}


def code_of(source: str) -> str:
    """Python source with its comments and string literals (docstrings included) blanked out."""
    lines = source.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    chars = list(source)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in (tokenize.COMMENT, tokenize.STRING):
            begin, end = starts[token.start[0] - 1] + token.start[1], starts[token.end[0] - 1] + token.end[1]
            chars[begin:end] = [c if c == "\n" else " " for c in chars[begin:end]]
    return "".join(chars)


def c_code_of(source: str) -> str:
    """C source without its comments and string and character literals (line breaks kept)."""
    def blank(match: re.Match) -> str:
        return re.sub(r"[^\n]", " ", match.group(0))
    return re.sub(r"/\*.*?\*/|//[^\n]*|\"(?:\\.|[^\"\\])*\"|'(?:\\.|[^'\\])*'", blank, source, flags=re.S)


def modules_using_the_segment() -> list[Path]:
    found = [path for path in sorted(PACKAGE.rglob("*.py"))
             if path not in LAYOUT_FILES and (path.parent.name == "segment"
                                              or IMPORTS_THE_SEGMENT.search(path.read_text(encoding="utf-8")))]
    assert len(found) >= 10, found  # the scope is not empty (workers, master, aggregator, segment)
    return found


def layout_facts_in(path: Path) -> list[str]:
    code = code_of(path.read_text(encoding="utf-8"))
    return [f"{path.relative_to(ROOT)}: {what}: {match.group(0)!r}"
            for what, pattern in FORBIDDEN for match in pattern.finditer(code)]


def test_no_module_but_layout_py_states_a_layout_fact():
    found = [fact for path in modules_using_the_segment() for fact in layout_facts_in(path)]
    assert not found, "\n".join(found)


def test_the_scan_finds_the_facts_as_they_were_written():
    """What the scan looks for is what the modules held before layout.py named it."""
    before = {
        'fit(route, 64), fit(tenant, 32)': 2, 'fit(request_id, 40) if request_id else b""': 1,
        "fit(record.name, 48)": 1, "words[at >> 3] = 0": 1, "self._pack_payload(self._buf, at + 8, *payload)": 1,
        "(self._base + self._layout.values_offset) // 8 + first_value": 1, "bytes(n_values * 8)": 1,
        "slab_heap_bytes=config.slab_max_series * 128": 1, "RECORD_SLOT = 192  # the slot": 1,
    }
    for line, facts in before.items():
        code = code_of(line)
        assert sum(len(pattern.findall(code)) for _, pattern in FORBIDDEN) == facts, line
    assert not any(p.search(code_of('memoryview(bytearray(8 * n)).cast("d")')) for _, p in FORBIDDEN)


def test_the_c_request_path_holds_no_layout_number():
    source = (PACKAGE / "_hotpath.c").read_text(encoding="utf-8")
    code = c_code_of(source)
    numbers = re.finditer(r"(?<![\w.])(0[xX][0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)[uUlLfF]*(?![\w.])", code)
    found = [f"_hotpath.c:{code.count(chr(10), 0, m.start()) + 1}: {m.group(0)}" for m in numbers
             if m.group(1) not in C_NUMBERS_ALLOWED]
    assert not found, ("numbers in _hotpath.c: a layout fact comes from Python through configure() or Slab(); "
                       "another belongs in C_NUMBERS_ALLOWED, with why:\n" + "\n".join(found))
