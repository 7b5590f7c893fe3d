"""``rockstar-mp``, the command line: read (and, with the admin token, steer) a running server's aggregator.

``client.py`` is the HTTP client of the aggregator, ``top.py`` the live view, ``commands.py`` the
commands and their arguments (its docstring describes them). The names below are the ones callers use.
"""
from .client import DEFAULT_METRICS_PATH, DEFAULT_URL, Aggregator, FetchError, resolve
from .commands import build_parser, main
from .top import LEAVE, TOP_ROUTES, MiB, Sample, render_top, run_top, take_sample, worker_table

__all__ = ["DEFAULT_METRICS_PATH", "DEFAULT_URL", "Aggregator", "FetchError", "resolve", "build_parser", "main",
           "LEAVE", "TOP_ROUTES", "MiB", "Sample", "render_top", "run_top", "take_sample", "worker_table"]
