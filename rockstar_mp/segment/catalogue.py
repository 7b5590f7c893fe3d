"""The series catalogue inside one body: append-only, one writer, published by writing the count last.

A series is a key (opaque bytes, the same in every worker for the same series) and a run of float64
values. The writer appends the key to the heap, writes the index entry, zeroes the values, and only then
stores the new count, so a reader (or a worker killed between any two stores) never sees a half entry.
"""
from __future__ import annotations

from .errors import CatalogueFull
from .layout import BODY_HEADER_SIZE, INDEX_ENTRY, Body, BodyLayout


class CatalogueWriter:
    """Appends series to the body at ``base``. Only the body's single owner may hold one."""

    def __init__(self, buf: memoryview, layout: BodyLayout, base: int) -> None:
        self._buf = buf
        self._layout = layout
        self._base = base
        self._n = Body.n_series.get(buf, base)
        self._heap_used = Body.heap_used.get(buf, base)
        self._values_used = Body.values_used.get(buf, base)

    @property
    def series_count(self) -> int:
        return self._n

    def value_index(self, first_value: int) -> int:
        """The segment-wide float64 index of a body-relative value index."""
        return self._layout.first_cell(self._base) + first_value

    def append(self, key: bytes, n_values: int) -> int:
        """Add a series; returns the segment-wide float64 index of its first value.

        Raises ``CatalogueFull`` (and counts the refusal in the body) when it does not fit.
        """
        layout, buf, base = self._layout, self._buf, self._base
        if (self._n >= layout.max_series or self._heap_used + len(key) > layout.heap_bytes
                or self._values_used + n_values > layout.max_values):
            Body.catalogue_full.set(buf, Body.catalogue_full.get(buf, base) + 1, base)
            raise CatalogueFull(
                f"catalogue full ({self._n}/{layout.max_series} series, {self._heap_used}/"
                f"{layout.heap_bytes} key bytes, {self._values_used}/{layout.max_values} values); "
                "raise slab_max_series/slab_max_values or use fewer label values")
        heap_at = base + layout.heap_offset + self._heap_used
        buf[heap_at:heap_at + len(key)] = key
        values_at = base + layout.value_offset(self._values_used)
        values_end = base + layout.value_offset(self._values_used + n_values)
        buf[values_at:values_end] = bytes(values_end - values_at)
        INDEX_ENTRY.pack_into(buf, base + layout.entry_offset(self._n),
                              self._heap_used, len(key), self._values_used, n_values)
        first = self._values_used
        self._heap_used += len(key)
        self._values_used += n_values
        Body.heap_used.set(buf, self._heap_used, base)
        Body.values_used.set(buf, self._values_used, base)
        self._n += 1
        Body.n_series.set(buf, self._n, base)  # publish last
        return self.value_index(first)


def reset_body(buf: memoryview, base: int) -> None:
    """Empty a body: its catalogue, ring heads and in-flight fields (its owner must be gone or not
    yet started). Ring slots and values are left: nothing reads them past the zeroed counts."""
    buf[base:base + BODY_HEADER_SIZE] = bytes(BODY_HEADER_SIZE)


def published_count(buf: memoryview, layout: BodyLayout, base: int) -> int:
    return min(Body.n_series.get(buf, base), layout.max_series)


def catalogue_bytes(buf: memoryview, layout: BodyLayout, base: int, n: int) -> bytes:
    """The index entries ``0..n`` and the key heap in use: equal bytes mean equal catalogues."""
    index = base + layout.index_offset
    heap = base + layout.heap_offset
    used = min(Body.heap_used.get(buf, base), layout.heap_bytes)
    return bytes(buf[index:index + n * INDEX_ENTRY.size]) + bytes(buf[heap:heap + used])


def read_entries(buf: memoryview, layout: BodyLayout, base: int, start: int = 0, n: int | None = None):
    """Entries ``start..n`` (default: the published count) as ``(key, first value index (segment-wide),
    n_values)``. Reads the count first, so a concurrent append is either wholly seen or not at all."""
    if n is None:
        n = published_count(buf, layout, base)
    if n <= start:
        return []
    heap = base + layout.heap_offset
    values = layout.first_cell(base)
    index = base + layout.entry_offset(start)
    out = []
    for key_off, key_len, first, n_values in INDEX_ENTRY.iter_unpack(
            buf[index:index + (n - start) * INDEX_ENTRY.size]):
        if key_off + key_len > layout.heap_bytes or first + n_values > layout.max_values:
            break  # never trust a corrupt entry past the bounds of its own body
        out.append((bytes(buf[heap + key_off:heap + key_off + key_len]), values + first, n_values))
    return out
