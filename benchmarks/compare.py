"""Figure 13: what rockstar-mp adds to a FastAPI server's CPU per request, side by side with
prometheus-fastapi-instrumentator and starlette-exporter in their documented gunicorn multiprocess setups.

Four servers of the same FastAPI app (``asgi_apps.py``), same worker class (uvicorn's), one worker each
(``COMPARE_WORKERS``, as figure 11's keep-alive classes), all up at once:

- **bare**: plain gunicorn, the app alone;
- **ours**: ``gunicorn -c gunicorn_conf.py`` (rockstar-mp's hooks and aggregator), the app in our ASGI
  ``MetricsMiddleware`` with workload records;
- **instrumentator** / **exporter**: plain gunicorn with ``prom_gunicorn_conf.py`` (prometheus_client's
  ``child_exit`` -> ``multiprocess.mark_process_dead``), ``PROMETHEUS_MULTIPROC_DIR`` a fresh directory
  of its own in the server's environment, the library set up as its README says, ``/metrics`` served
  by the app.

Each round drives all four at once at ``COMPARE_RATE`` each (``cost.paced_round``; the first wrk
started rotates), and reads each whole server's CPU from /proc. A library's added cost is, per round,
its CPU per request minus bare's in the same round; the figure is the median over the rounds, and
ours / theirs is the ratio of those medians. Every round is printed.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
from dataclasses import dataclass, field

from .cost import check_recorded, paced_round, per_request
from .cpu import ROLES
from .servers import Server, http_get
from .settings import (
    COMPARE_RATE,
    COMPARE_ROUNDS,
    COMPARE_TARGET,
    COMPARE_WORKERS,
    COST_WARMUP_SECONDS,
    KEEPALIVE_SECONDS,
    ROOT,
)

FIGURES = ("13",)
WORKER_ARGS = ("-k", "uvicorn.workers.UvicornWorker")
PROM_CONFIG = os.path.join(ROOT, "benchmarks", "prom_gunicorn_conf.py")
THEIRS = ("instrumentator", "exporter")
HEADER = ("figure", "rockstar-mp", "theirs", "ours/theirs", "target", "result")


@dataclass(frozen=True)
class Contender:
    """One server of figure 13: its app factory, whether it runs under rockstar-mp's config ("on") or
    prometheus_client's multiprocess setup, and the counter its ``/metrics`` must show for every
    response to ``GET /`` (prometheus_client ones only: the counter, and its label naming the route)."""

    name: str
    app: str
    monitored: bool = False
    prometheus: bool = False
    requests_metric: str = ""
    route_label: str = ""


CONTENDERS = (
    Contender("bare", "benchmarks.asgi_apps:bare()"),
    Contender("ours", "benchmarks.asgi_apps:ours()", monitored=True),
    Contender("instrumentator", "benchmarks.asgi_apps:instrumentator()", prometheus=True,
              requests_metric="http_requests_total", route_label='handler="/"'),
    Contender("exporter", "benchmarks.asgi_apps:exporter()", prometheus=True,
              requests_metric="starlette_requests_total", route_label='path="/"'),
)


@dataclass
class Comparison:
    """Every round's results by contender, the responses each got in all, and its multiprocess dir."""

    runs: dict[str, list[dict]] = field(default_factory=lambda: {c.name: [] for c in CONTENDERS})
    sent: dict[str, int] = field(default_factory=lambda: {c.name: 0 for c in CONTENDERS})
    prom_dirs: dict[str, str] = field(default_factory=dict)


def start(contender: Contender, tmp: str, number: int, comparison: Comparison) -> Server:
    """``contender``'s gunicorn, up and answering ``/``."""
    same = {"app": contender.app, "worker_args": WORKER_ARGS, "workers": COMPARE_WORKERS}
    if contender.monitored:
        server = Server("on", tmp, number, **same)
    elif contender.prometheus:  # a fresh, empty directory, in the environment before anything imports
        prom_dir = comparison.prom_dirs[contender.name] = tempfile.mkdtemp(prefix=f"prom-{contender.name}-",
                                                                           dir=tmp)
        server = Server("off", tmp, number, config=PROM_CONFIG, env={"PROMETHEUS_MULTIPROC_DIR": prom_dir}, **same)
    else:
        server = Server("off", tmp, number, **same)
    server.wait_ready()
    return server


def metric_total(text: str, name: str, label: str) -> float:
    """The sum of the samples of counter ``name`` carrying ``label`` (``key="value"``) in a Prometheus
    text exposition (so the ``/metrics`` requests themselves are left out)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and label in line[len(name):line.rindex("}")]:
            total += float(line.rsplit(None, 1)[1])
    return total


def check_counted(contender: Contender, server: Server, comparison: Comparison) -> list[str]:
    """Notes unless the server counted every response wrk got from it (and, for prometheus_client, in
    multiprocess mode: its directory holds the workers' .db files)."""
    sent = comparison.sent[contender.name]
    if contender.monitored:
        return check_recorded(server, sent, "fig 13 ours")
    if not contender.prometheus:
        return []
    notes = []
    files = [f for f in os.listdir(comparison.prom_dirs[contender.name]) if f.endswith(".db")]
    if not files:
        notes.append(f"fig 13 {contender.name}: no .db file in its PROMETHEUS_MULTIPROC_DIR: not multiprocess")
    _, _, body = http_get(server.url + "metrics", timeout=10.0)
    counted = metric_total(body.decode(), contender.requests_metric, contender.route_label)
    if counted < sent:
        notes.append(f"fig 13 {contender.name}: /metrics shows {contender.requests_metric}{{{contender.route_label}}} "
                     f"{counted:.0f}, but wrk got {sent} responses from it")
    return notes


def drive(tmp: str, notes: list[str]) -> Comparison:
    """Start the four servers, warm them up, then ``COMPARE_ROUNDS`` rounds driving all at once."""
    comparison = Comparison()
    servers: dict[str, Server] = {}
    names = [c.name for c in CONTENDERS]
    try:
        for number, contender in enumerate(CONTENDERS):
            servers[contender.name] = start(contender, tmp, 20 + number, comparison)
        for name, result in paced_round(servers, COST_WARMUP_SECONDS, names[0], COMPARE_RATE).items():
            comparison.sent[name] += result["requests"]
        for number in range(COMPARE_ROUNDS):
            results = paced_round(servers, KEEPALIVE_SECONDS, names[number % len(names)], COMPARE_RATE)
            for name, result in results.items():
                if result["errors"] or result["non2xx"]:
                    notes.append(f"fig 13 {name} round {number + 1}: wrk saw {result['errors']} socket errors, "
                                 f"{result['non2xx']} non-2xx responses")
                comparison.runs[name].append(result)
                comparison.sent[name] += result["requests"]
        for contender in CONTENDERS:
            notes.extend(check_counted(contender, servers[contender.name], comparison))
    finally:
        for server in servers.values():
            notes.extend(server.stop())
    return comparison


def added(runs: dict[str, list[dict]], name: str, role: str | None = None) -> list[float]:
    """Per round: ``name``'s CPU seconds per request minus bare's in the same round (of the whole server,
    or of one role)."""
    return [per_request(run, role) - per_request(bare, role)
            for run, bare in zip(runs[name], runs["bare"], strict=True)]


def summarize(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """By contender: the median CPU per request (whole server and by role), and but for bare the median
    of the rounds' added CPU per request (seconds; the whole server's and the workers' alone) and of
    their ratios to bare (%)."""
    out: dict[str, dict] = {}
    for name, rounds in runs.items():
        out[name] = {"cpu": statistics.median(per_request(r) for r in rounds),
                     "roles": {role: statistics.median(per_request(r, role) for r in rounds) for role in ROLES}}
        if name != "bare":
            out[name]["added"] = statistics.median(added(runs, name))
            out[name]["added_workers"] = statistics.median(added(runs, name, "workers"))
            out[name]["percent"] = statistics.median(
                (per_request(r) / per_request(b) - 1) * 100 for r, b in zip(rounds, runs["bare"], strict=True))
    return out


def fmt_added(s: dict) -> str:
    return f"{s['added'] * 1e6:+.1f} us ({s['percent']:+.1f}%)"


def table_rows(s: dict[str, dict]) -> list[tuple]:
    rows = []
    for theirs in THEIRS:
        ratio = s["ours"]["added"] / s[theirs]["added"] if s[theirs]["added"] > 0 else float("nan")
        rows.append((f"13. added CPU/request over bare: ours vs {theirs}", fmt_added(s["ours"]),
                     fmt_added(s[theirs]), f"{ratio:.3f}", f"<= 1/{round(1 / COMPARE_TARGET)}",
                     "PASS" if ratio <= COMPARE_TARGET else "FAIL"))
    ours_workers = s["ours"]["added_workers"]
    theirs_workers = [s[theirs]["added_workers"] for theirs in THEIRS]
    rows.append(("    the workers alone (theirs: instrumentator / exporter)", f"{ours_workers * 1e6:+.1f} us",
                 " / ".join(f"{t * 1e6:+.1f} us" for t in theirs_workers),
                 " / ".join(f"{ours_workers / t:.3f}" if t > 0 else "nan" for t in theirs_workers), "(info)", ""))
    rows.append(("    bare CPU/request (the anchor)", f"{s['bare']['cpu'] * 1e6:.1f} us", "", "", "(info)", ""))
    return rows


def detail_lines(runs: dict[str, list[dict]], s: dict[str, dict]) -> list[str]:
    lines = ["13 by role, medians per request (workers/master/aggregator): "
             + "; ".join(f"{name} " + "/".join(f"{s[name]['roles'][role] * 1e6:.1f}" for role in ROLES) + " us"
                         for name in runs)]
    for name, rounds in runs.items():
        lines.append(f"   {name}, every round in order (us/request; workers/master/aggregator; req/s got): "
                     + " | ".join(f"{per_request(r) * 1e6:.1f} ("
                                  + "/".join(f"{per_request(r, role) * 1e6:.1f}" for role in ROLES)
                                  + f"; {r['rps']:,.0f})" for r in rounds))
    for name in runs:
        if name != "bare":
            lines.append(f"   {name} - bare per round (us): "
                         + " ".join(f"{a * 1e6:+.1f}" for a in added(runs, name)))
    return lines


def run_figures(tmp: str, figs: list[str], notes: list[str]) -> tuple[list[tuple], list[str]]:
    """Figure 13 (if in ``figs``): ``(table rows, detail lines)``; its servers under ``tmp``."""
    if "13" not in figs:
        return [], []
    print(f"[13] FastAPI under {WORKER_ARGS[1]}, {COMPARE_WORKERS} worker(s) each: bare, ours, "
          f"prometheus-fastapi-instrumentator, starlette-exporter, all driven at once at {COMPARE_RATE:,} req/s "
          f"each, {COMPARE_ROUNDS} rounds of {KEEPALIVE_SECONDS:g} s ...", flush=True)
    try:
        comparison = drive(tmp, notes)
    except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as exc:
        notes.append(f"fig 13 failed: {exc}")
        return [], []
    s = summarize(comparison.runs)
    details = detail_lines(comparison.runs, s)
    details.append("   responses wrk got, warm-up included: "
                   + ", ".join(f"{name} {n:,}" for name, n in comparison.sent.items()))
    return table_rows(s), details
