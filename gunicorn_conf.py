"""A ready gunicorn config with rockstar-mp on: ``gunicorn -c gunicorn_conf.py examples.app:app``.

Every monitoring setting can be overridden by a ROCKSTAR_<FIELD> environment variable, and gunicorn's
own by GUNICORN_CMD_ARGS (e.g. GUNICORN_CMD_ARGS="--workers 8 --bind 127.0.0.1:9000").
"""
import os

from rockstar_mp import MonitoringConfig
from rockstar_mp.gunicorn import *  # noqa: F401,F403  (the hooks: on_starting, pre_fork, post_fork, ...)

bind = os.environ.get("BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WORKERS", "4"))

configure(MonitoringConfig(enable_metrics=True, metrics_port=9090))  # noqa: F405
