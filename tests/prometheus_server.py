"""A real Prometheus (Debian's ``/usr/bin/prometheus``) for the tests: a temporary storage directory, a free
port on 127.0.0.1, optionally scraping targets and receiving remote writes; queried over its HTTP API."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from tests.helpers import free_port, http_get, poll


def tool(name: str) -> str:
    """The path of a Prometheus tool: a failure when missing under CI=true, else a skip."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian/Ubuntu: apt-get install prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; it is required when CI=true")
        pytest.skip(message)
    return path


class Prometheus:
    """``prometheus`` on ``127.0.0.1:<port>`` with its storage in ``tmp``. ``targets``: ``host:port``
    scraped at ``/metrics`` every ``scrape_interval``; ``receiver``: accept remote writes."""

    def __init__(self, tmp: Path, targets: tuple = (), receiver: bool = False, scrape_interval: str = "1s") -> None:
        self.tmp = tmp
        self.port = free_port()
        self.storage = tmp / "prometheus-data"
        self.config = tmp / "prometheus.yml"
        self.scrape_interval = scrape_interval
        self._write_config(targets)
        self.receiver = receiver
        self.proc: subprocess.Popen | None = None
        self.log_path = tmp / "prometheus.log"

    def _write_config(self, targets: tuple) -> None:
        interval = self.scrape_interval
        scrape = [{"job_name": "rockstar-mp", "scrape_interval": interval, "scrape_timeout": interval,
                   "static_configs": [{"targets": list(targets)}]}] if targets else []
        self.config.write_text(json.dumps({"global": {"scrape_interval": interval},
                                           "scrape_configs": scrape}))  # YAML is a superset of JSON

    def scrape(self, targets: tuple) -> None:
        """Scrape ``targets`` (``host:port``) from now on, as job ``rockstar-mp`` (a reload, SIGHUP)."""
        self._write_config(targets)
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def write_url(self) -> str:
        return self.url + "/api/v1/write"

    def start(self) -> "Prometheus":
        """Start it (without waiting: see ``wait_ready``)."""
        args = [tool("prometheus"), f"--config.file={self.config}", f"--storage.tsdb.path={self.storage}",
                f"--web.listen-address=127.0.0.1:{self.port}"]
        if self.receiver:
            args.append("--web.enable-remote-write-receiver")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout: float = 30.0) -> "Prometheus":
        poll(lambda: http_get(self.url + "/-/ready", timeout=1)[0] == 200, timeout=timeout, interval=0.1,
             message=f"prometheus ready (log: {self.log_path})")
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def query(self, expr: str, at: float | None = None) -> list:
        """The result of an instant query (``at``: a Unix time), or AssertionError with Prometheus's error."""
        params = {"query": expr, **({"time": repr(at)} if at is not None else {})}
        status, _, body = http_get(f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}")
        answer = json.loads(body)
        assert status == 200 and answer["status"] == "success", f"{expr}: {answer}"
        return answer["data"]["result"]
