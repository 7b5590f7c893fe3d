"""What figures 1-7 measure and their targets: one place, read by the children that measure and by the
parent that reports. Standard library only, so importing it loads nothing of either side."""
from __future__ import annotations

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Micro benchmarks: min over REPEATS runs of NUMBER calls (nothing subtracted: loop overhead included).
REPEATS = 5
NUMBER = 200_000

# Figure 4: merge + render of WORKERS x SERIES counters.
WORKERS = 64
SERIES = 1_000
# Scrape figures are the min over runs, like the micro benchmarks (the machine may be shared), over
# SCRAPE_ROUNDS rounds of (theirs, ours) children.
SCRAPE_ROUNDS = 2
COLD_RUNS = 5  # fresh Merger each time (after the first, reported separately)
STEADY_RUNS = 20  # one Merger reused, as the aggregator does
PROM_SCRAPES = 5  # prometheus_client: every scrape reads every file, there is no warm state

# Figure 5: churn.
CHURN_LIVE = 8  # workers alive throughout
CHURN_SERIES = 100
OUR_RESTARTS = 1_000
PROM_RESTARTS = 200
CHURN_STEADY_RUNS = 50  # our scrapes here take well under a millisecond: min of many
CHURN_COLD_RUNS = 10
CHURN_NOISE = 1.3  # "unchanged": after/before scrape time (min of runs) at most this

PARALLEL = 8  # prometheus_client writer subprocesses run at once

# Figure 6: one request through a minimal Falcon app, direct WSGI calls; min over interleaved repeats,
# in a process pinned to one CPU (a process moved between CPUs mid-run measures the move).
REQUEST_WARMUP = 2_000
REQUEST_REPEATS = 40
REQUEST_NUMBER = 2_000
REQUEST_TARGET = 3e-6  # (b) - (a), seconds per request

# Figure 7: wrk against real gunicorn (sync workers), rockstar-mp on vs off: both servers up at once,
# short wrk runs alternating off/on, medians compared (a slow spell of the machine hits both sides).
SERVER_WORKERS = 2
WRK_THREADS = 2
WRK_CONNECTIONS = 16
WRK_SECONDS = 2
WRK_WARMUP_SECONDS = 1
WRK_ROUNDS = 20  # of each: off, on, off, on, ...
THROUGHPUT_TARGET = 3.0  # loss in %: the median over the rounds of 1 - on/off (each pair 2 s apart)
SERVER_START_TIMEOUT = 30.0
SERVER_STOP_TIMEOUT = 35.0  # gunicorn's graceful_timeout is 30 s; idle sync workers stop at once

TARGETS = {"counter": 1 / 4, "labels": 1 / 3, "histogram": 1 / 3, "scrape": 1 / 10}

PROM_ENV = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")

# Figure 11: CPU seconds per request of the whole server (from /proc), on vs off, at one fixed rate
# (wrk -t1 paced by benchmarks/pace.lua; the client's CPU is not counted); both servers up and driven at
# the same time, round after round.
COST_RATE = 1500  # requests per second to each server: well below what 2 workers serve, off or on
COST_CONNECTIONS = 8
COST_SECONDS = 3.0
COST_WARMUP_SECONDS = 1.0
COST_ROUNDS = 12
COST_PAIRS = 6  # the rounds are spread over this many pairs of servers started afresh (cost.py)
# The keep-alive (ASGI) classes: one worker's CPU per request moves with how its event loop batches, so their
# 3-s rounds spread 3-4 times as wide as sync's (0.87-1.24 against 0.98-1.04). Rounds of 12 s spread some five
# times less (standard deviation 0.010-0.015 of the on/off ratio, against 0.065-0.074 for 3 s, one uvicorn
# pair, the same total time): 16 of them, over 8 pairs.
KEEPALIVE_SECONDS = 12.0
COST_ROUNDS_KEEPALIVE = 16
COST_PAIRS_KEEPALIVE = 8
# One ASGI worker serving FastAPI spends some 450 us of CPU a request here: at COST_RATE each server's
# worker takes 0.7 of a core, and the two servers and their wrks kept both cores nearly busy. Their rounds
# then read 0.975-1.121 (uvicorn, 8 rounds of 12 s), against 1.013-1.055 at 800 req/s (0.37 of a core each):
# a cost measured below saturation, where a server runs.
KEEPALIVE_RATE = 800
COST_SETTLE_SECONDS = 1.0  # after the last response, before the CPU is read: a tick at least (at most 1 s apart)
COST_TARGET = 3.0  # % more CPU per request on than off (WSGI sync)

# Figure 12: an idle "on" server's aggregator, CPU per second.
IDLE_WORKERS = (2, 16, 64)
IDLE_SECONDS = 20.0
IDLE_SETTLE_SECONDS = 3.0  # after every worker is listed: start-up work done before measuring
IDLE_TARGET = 10.0  # ms of CPU per second, at 64 workers

# Figure 13: the same FastAPI app bare, with rockstar-mp, with prometheus-fastapi-instrumentator and with
# starlette-exporter (both in prometheus_client's multiprocess mode), all four up and driven at once,
# round after round, each at COMPARE_RATE (1,200 req/s in all, well under figure 11's 2 x 1,500, so four servers
# and four wrks on a shared 2-core machine can still hold the rate).
COMPARE_RATE = 300
COMPARE_ROUNDS = 12  # of KEEPALIVE_SECONDS each
# one uvicorn worker a server, as figure 11's keep-alive classes: with two, how a round split wrk's connections
# between them moved each server's CPU per request more than the libraries' costs
COMPARE_WORKERS = 1
COMPARE_TARGET = 1 / 3  # our added CPU per request over bare, against each of theirs
