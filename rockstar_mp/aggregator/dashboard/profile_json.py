"""A merged CPU profile as JSON the dashboard draws: the top functions and a flame graph tree.

The input is the raw form of ``profiling.proto`` (frames, and samples that index them leaf first), the
same data ``go tool pprof`` gets as profile.proto. The tree is pruned (nodes below ``MIN_SHARE`` of the
total, depth past ``MAX_DEPTH``) so a long profile of a large app stays a small answer.
"""
from __future__ import annotations

MIN_SHARE = 0.002  # flame nodes under this share of the total are left out
MAX_DEPTH = 64
TOP = 30  # functions in the table


def _value_index(raw: dict) -> int:
    """The sample value to chart: the last type, as pprof's default (cpu nanoseconds)."""
    return len(raw["sample_types"]) - 1


def _function(frame: list) -> str:
    return f"{frame[0]} ({frame[1]})" if frame[1] else str(frame[0])


def profile_json(raw: dict, top: int = TOP) -> dict:
    """``{"sample_type", "unit", "total", "top": [{function, flat, cum}], "flame": {n, v, c}}``.

    ``flat``: the samples where the function is the leaf; ``cum``: those where it is anywhere on the
    stack (counted once per sample, recursion included)."""
    index = _value_index(raw)
    names = [_function(f) for f in raw["frames"]]
    flat: dict[str, float] = {}
    cum: dict[str, float] = {}
    root: dict = {"n": "all", "v": 0, "c": {}}
    for ids, values, _labels in raw["samples"]:
        value = values[index]
        if not value:
            continue
        stack = [names[i] for i in ids]  # leaf first
        if stack:
            flat[stack[0]] = flat.get(stack[0], 0) + value
        for name in set(stack):
            cum[name] = cum.get(name, 0) + value
        _add_path(root, reversed(stack[-MAX_DEPTH:]), value)
    total = root["v"]
    sample_type, unit = raw["sample_types"][index]
    ranked = sorted(flat.items(), key=lambda kv: -kv[1])[:top]
    return {"sample_type": sample_type, "unit": unit, "total": total,
            "top": [{"function": name, "flat": value, "cum": cum[name]} for name, value in ranked],
            "flame": _pruned(root, total * MIN_SHARE)}


def _add_path(node: dict, path, value: float) -> None:
    node["v"] += value
    for name in path:
        child = node["c"].get(name)
        if child is None:
            child = node["c"][name] = {"n": name, "v": 0, "c": {}}
        child["v"] += value
        node = child


def _pruned(node: dict, floor: float) -> dict:
    children = [_pruned(c, floor) for c in node["c"].values() if c["v"] >= floor]
    children.sort(key=lambda c: -c["v"])
    return {"n": node["n"], "v": node["v"], "c": children}
