"""Issue 17: the dashboard in a real headless Chromium, on a real gunicorn under load.

One server (require_auth, a reading and an admin token, pprof on, history every second) and one browser
serve every test of this module, in order: the token flow first (401, then a wrong token, then the
admin token), then what the page shows against the JSON endpoints. Screenshots of each section are
saved under ``artifacts/dashboard/`` (printed, and ignored by git).
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.browser import headless_chromium
from tests.helpers import ROOT, Gunicorn, free_port, http_get, limit, poll, raw_get

READ_TOKEN = "dashboard-reader"
ADMIN_TOKEN = "dashboard-admin"
ARTIFACTS = ROOT / "artifacts" / "dashboard"


class Load:
    """Requests from one thread, paced (~60/s) so the machine's two cores stay shared: /, a route
    template with a tenant, and /error (5xx and a WARNING log); or ``paths`` every ``pace`` seconds."""

    def __init__(self, port: int, paths: tuple[str, ...] = ("/", "/users/ada", "/", "/error", "/users/bob"),
                 pace: float = 1 / 60) -> None:
        self.port = port
        self.paths = paths
        self.pace = pace
        self.running = threading.Event()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Load":
        self.running.set()
        self.thread.start()
        return self

    def _run(self) -> None:
        paths = self.paths
        i = 0
        while not self.stopped.is_set():
            if not self.running.wait(0.1):
                continue
            tenant = {"X-Tenant-ID": "acme" if i % 2 else "globex"}
            raw_get(self.port, paths[i % len(paths)], headers=tenant)
            i += 1
            self.stopped.wait(self.pace)  # pacing, not synchronisation

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(5)


class Page:
    """The browser on the dashboard, read through small scripts (no stale elements)."""

    def __init__(self, driver, base: str) -> None:
        self.driver = driver
        self.base = base

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def text(self, element_id: str) -> str:
        return self.js("return document.getElementById(arguments[0]).textContent", element_id)

    def refreshes(self) -> int:
        """The refreshes the page has completed."""
        return int(self.js("return document.getElementById('status').dataset.refreshes || 0"))

    def rows(self, table_id: str) -> int:
        return self.js("return document.querySelectorAll('#' + arguments[0] + ' tbody tr').length", table_id)

    def pids(self) -> list[int]:
        return sorted(self.js("return [...document.querySelectorAll('#workers-table tbody tr')]"
                              ".map(r => Number(r.dataset.pid))"))

    def points(self, chart_id: str) -> int:
        return int(self.js("return document.getElementById(arguments[0]).dataset.points", chart_id))

    def optimization_counts(self) -> dict[int, int]:
        return {int(pid): int(n) for pid, n in self.js(
            "return [...document.querySelectorAll('#optimization-table tbody tr')]"
            ".map(r => [r.dataset.pid, r.querySelector('.optimization_count').textContent])")}

    def use_token(self, token: str) -> None:
        self.js("document.getElementById('token').value = arguments[0];"
                "document.getElementById('token-save').click()", token)

    def select(self, select_id: str, value: str) -> None:
        self.js("const s = document.getElementById(arguments[0]); s.value = arguments[1];"
                "s.dispatchEvent(new Event('change'))", select_id, value)

    def click(self, element_id: str) -> None:
        self.js("document.getElementById(arguments[0]).click()", element_id)

    def screenshot(self, name: str, section: str | None = None) -> Path:
        """The section with id ``section`` (else the window) as ``ARTIFACTS/<name>.png``."""
        from selenium.webdriver.common.by import By

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        if section is None:
            self.driver.save_screenshot(str(path))
        else:
            self.driver.find_element(By.ID, section).screenshot(str(path))
        print(f"screenshot: {path}")
        return path

    def console_errors(self) -> list[dict]:
        return [entry for entry in self.driver.get_log("browser") if entry["level"] == "SEVERE"]


class Dashboard:
    def __init__(self, server: Gunicorn, page: Page, load: Load) -> None:
        self.server = server
        self.page = page
        self.load = load

    def get(self, path: str) -> dict:
        status, _, body = http_get(f"http://127.0.0.1:{self.server.metrics_port}{path}",
                                   {"Authorization": f"Bearer {READ_TOKEN}"})
        assert status == 200, (path, status, body)
        return json.loads(body)


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    server = Gunicorn(tmp_path_factory.mktemp("dashboard"), workers=2, env={
        "ROCKSTAR_REQUIRE_AUTH": "true", "ROCKSTAR_AUTH_TOKEN": READ_TOKEN, "ROCKSTAR_ADMIN_TOKEN": ADMIN_TOKEN,
        "ROCKSTAR_ENABLE_PPROF": "true", "ROCKSTAR_PPROF_PORT": str(free_port()), "ROCKSTAR_HISTORY_INTERVAL": "1"})
    load = None
    try:
        server.start()
        fold_one_worker(server)
        load = Load(server.port).start()
        with headless_chromium() as driver:
            page = Page(driver, f"http://127.0.0.1:{server.metrics_port}")
            print(f"dashboard screenshots in {ARTIFACTS}")
            yield Dashboard(server, page, load)
    finally:
        if load is not None:
            load.stop()
        server.stop()
    log = server.log_text()
    assert "Traceback" not in log, log[log.find("Traceback") - 300:][:4000]


def fold_one_worker(server: Gunicorn) -> None:
    """A worker exits (gunicorn forks another), so the page has a folded worker to show."""
    gone = server.worker_pids()[0]
    os.kill(gone, signal.SIGTERM)
    headers = {"Authorization": f"Bearer {READ_TOKEN}"}

    def replaced() -> bool:
        status, _, body = http_get(f"http://127.0.0.1:{server.metrics_port}/workers", headers)
        answer = json.loads(body)
        return (status == 200 and any(f["pid"] == gone for f in answer["folded"])
                and len(answer["workers"]) == 2)

    poll(replaced, timeout=limit(15), message="the exited worker folded and replaced")


def test_token_flow_401_then_data_and_a_wrong_token_shows_none(dashboard):
    page = dashboard.page
    page.driver.get(page.base + "/")  # redirected to /dashboard
    assert page.js("return location.pathname") == "/dashboard"
    poll(lambda: "401" in page.text("status"), timeout=limit(5), message="the 401 status")
    assert page.rows("workers-table") == 0 and page.text("total-requests") == "–"
    page.screenshot("01-unauthorized")

    page.use_token(ADMIN_TOKEN)
    poll(lambda: page.rows("workers-table") == 2 and page.points("chart-rate") > 0, timeout=limit(5),
         message="data after the token")
    assert page.js("return sessionStorage.getItem('rockstar-mp-token')") == ADMIN_TOKEN
    assert "token" not in page.js("return location.href")

    page.use_token("not-the-token")  # the data shown must go
    poll(lambda: "refused" in page.text("status"), timeout=limit(5), message="the wrong token refused")
    assert page.rows("workers-table") == 0 and page.text("total-requests") == "–"
    assert page.points("chart-rate") == 0 and page.rows("top-table") == 0
    page.screenshot("02-wrong-token")
    refused = page.console_errors()  # the browser logs each 401: expected until the token is right
    assert refused and all("401" in e["message"] for e in refused), refused

    page.use_token(ADMIN_TOKEN)
    poll(lambda: page.rows("workers-table") == 2, timeout=limit(5), message="data after the right token")
    assert page.console_errors() == []


def test_worker_pids_equal_workers_endpoint(dashboard):
    def same() -> bool:
        return page.pids() == sorted(w["pid"] for w in dashboard.get("/workers")["workers"])

    page = dashboard.page
    poll(same, timeout=limit(6), message="the page's pids == /workers")
    folded = page.js("return [...document.querySelectorAll('#folded-table tbody tr')].map(r => r.textContent)")
    assert len(folded) == 1 and "ago" in folded[0]
    long_request = threading.Thread(target=raw_get, args=(dashboard.server.port, "/sleep?ms=4000"))
    long_request.start()
    try:
        poll(lambda: page.js("return document.querySelectorAll('#workers-table tr.long').length"),
             timeout=limit(4), message="a long in-flight request highlighted")
    finally:
        long_request.join()


def test_chart_grows_and_total_equals_metrics_within_one_refresh(dashboard):
    page = dashboard.page
    first, first_at = page.points("chart-rate"), time.monotonic()
    dashboard.load.running.clear()  # a still server, so the page's figure can equal /metrics
    try:
        settled = poll(_settled_total(dashboard), timeout=limit(6), interval=0.5, message="/metrics settled")
        # the refresh under way may have read /metrics before it settled; the next one must show it
        after = page.refreshes() + 2
        poll(lambda: page.refreshes() >= after, timeout=limit(10), message="two more refreshes")
        assert page.text("total-requests") == str(settled) == str(_total(dashboard))
    finally:
        dashboard.load.running.set()
    assert first > 0
    # the acceptance's second read, 3 s or more after the first, finds the chart grown
    poll(lambda: time.monotonic() - first_at >= 3.0 and page.points("chart-rate") > first, timeout=limit(10),
         message="the chart grown, 3 s after its first read")


def _total(dashboard) -> int:
    return dashboard.get("/metrics")["counters"]["http.requests"]


def _settled_total(dashboard):
    """A poll check: the total once two reads half a second apart agree."""
    seen: list[int] = []

    def settled() -> int | None:
        seen.append(_total(dashboard))
        return seen[-1] if len(seen) >= 2 and seen[-1] == seen[-2] else None

    return settled


def test_optimize_now_raises_every_workers_count(dashboard):
    page = dashboard.page
    before = poll(lambda: page.optimization_counts() if len(page.optimization_counts()) == 2 else None,
                  timeout=limit(5), message="the optimization table")
    page.click("optimize-now")
    poll(lambda: "asked 2 worker(s)" in page.text("optimize-result"), timeout=limit(5), message="asked")

    def every_count_raised() -> bool:
        now = page.optimization_counts()
        return set(now) == set(before) and all(now[pid] > before[pid] for pid in before)

    poll(every_count_raised, timeout=limit(10), message=f"every worker's count above {before}")
    assert page.js("return document.getElementById('chart-gc').dataset.points") != "0"


def test_profile_logs_control_and_history(dashboard):
    page = dashboard.page
    page.select("profile-seconds", "1")
    # CPU to sample: the paced load alone may give none in 1 s
    busy = Load(dashboard.server.port, ("/work?ms=100",), pace=0).start()
    try:
        page.click("profile-start")
        poll(lambda: page.rows("profile-table") > 0, timeout=limit(15),
             message=lambda: f"the profile's top functions (status {page.text('profile-status')!r}, "
                             f"error {page.text('profiling-error')!r})")
    finally:
        busy.stop()
    assert int(page.js("return document.getElementById('flame').dataset.nodes")) > 1
    assert page.js("return document.getElementById('profile-download').href").startswith("blob:")

    poll(lambda: page.rows("logs-table") > 0, timeout=limit(3), message="log records")
    page.select("log-level", "error")
    poll(lambda: page.rows("logs-table") == 0, timeout=limit(3), message="warnings filtered out")
    page.select("log-level", "warning")
    poll(lambda: page.rows("logs-table") > 0, timeout=limit(3), message="warnings back")

    poll(lambda: page.rows("control-table") >= 10, timeout=limit(3), message="the switches")
    assert page.js("return document.querySelector('#control-table tr[data-setting=enable_pprof] .value')"
                   ".textContent") == "true"

    page.select("range", "3600")
    poll(lambda: page.js("return document.getElementById('chart-latency').dataset.range") == "3600"
         and page.points("chart-latency") > 0, timeout=limit(5), message="the hour chart from history")
    for section in ("traffic", "workers", "optimization", "logs", "profiling", "control"):
        page.screenshot(section, section)
    page.select("range", "live")
    assert page.console_errors() == []


def test_narrow_screen_has_no_page_wide_scrolling(dashboard):
    page = dashboard.page
    page.driver.set_window_size(400, 2400)
    try:
        poll(lambda: page.js("return window.innerWidth") <= 400, timeout=limit(3), message="a narrow window")
        assert page.js("return document.documentElement.scrollWidth <= window.innerWidth")
        page.screenshot("narrow")
    finally:
        page.driver.set_window_size(1280, 2400)


def test_page_headers_and_weight(dashboard):
    base = dashboard.page.base
    total = 0
    for path in ("/dashboard", "/dashboard/app.js", "/dashboard/app.css"):
        status, headers, body = http_get(base + path)  # no token: the page holds no data
        assert status == 200
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        total += len(body)
        again, _, _ = http_get(base + path, {"If-None-Match": headers["ETag"]})
        assert again == 304
    print(f"dashboard page weight: {total} bytes")
    assert total < 500_000
    assert http_get(base + "/workers")[0] == 401  # the data is not public
    assert http_get(base + "/dashboard/profile")[0] == 401
