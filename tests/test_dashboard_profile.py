"""The dashboard's JSON form of a merged CPU profile (``aggregator/dashboard/profile_json.py``)."""
from __future__ import annotations

from rockstar_mp.aggregator.dashboard.profile_json import profile_json
from rockstar_mp.profiling.proto import merge_raw, new_raw


def raw_profile(samples: list[tuple[list[str], int]], pid: str) -> dict:
    """A raw CPU profile whose samples are (stack root first, nanoseconds)."""
    raw = new_raw([("samples", "count"), ("cpu", "nanoseconds")], ("cpu", "nanoseconds"), 10_000_000)
    index: dict[str, int] = {}
    for stack, _ in samples:
        for name in stack:
            if name not in index:
                index[name] = len(raw["frames"])
                raw["frames"].append([name, "app.py", 1, 1])
    for stack, value in samples:
        raw["samples"].append([[index[n] for n in reversed(stack)], [value // 10_000_000, value], {"pid": pid}])
    return raw


def test_top_functions_and_flame_tree_of_two_workers_merged():
    one = raw_profile([(["main", "handle", "parse"], 30_000_000), (["main", "handle"], 10_000_000)], "1")
    two = raw_profile([(["main", "render", "render"], 60_000_000)], "2")  # recursion
    body = profile_json(merge_raw([one, two]))
    assert (body["sample_type"], body["unit"], body["total"]) == ("cpu", "nanoseconds", 100_000_000)
    top = {f["function"]: (f["flat"], f["cum"]) for f in body["top"]}
    assert top == {"render (app.py)": (60_000_000, 60_000_000), "parse (app.py)": (30_000_000, 30_000_000),
                   "handle (app.py)": (10_000_000, 40_000_000)}
    assert [f["function"] for f in body["top"]] == ["render (app.py)", "parse (app.py)", "handle (app.py)"]
    flame = body["flame"]
    assert (flame["n"], flame["v"]) == ("all", 100_000_000)
    (main,) = flame["c"]
    assert main["v"] == 100_000_000
    assert [(c["n"], c["v"]) for c in main["c"]] == [("render (app.py)", 60_000_000), ("handle (app.py)", 40_000_000)]
    assert main["c"][0]["c"][0]["n"] == "render (app.py)"  # the recursive call is a level of its own


def test_tiny_branches_are_pruned_from_the_flame_graph():
    raw = raw_profile([(["main", "hot"], 999_000_000), (["main", "cold"], 1_000_000)], "1")
    body = profile_json(raw)
    (main,) = body["flame"]["c"]
    assert [c["n"] for c in main["c"]] == ["hot (app.py)"]
    assert {f["function"] for f in body["top"]} == {"hot (app.py)", "cold (app.py)"}  # the table keeps it
