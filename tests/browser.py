"""Headless Chromium (Debian's ``chromium`` and ``chromium-driver``) under selenium, for the dashboard's
tests and bench. Nothing is downloaded: the browser and the driver are the system's, and selenium's own
driver manager is kept offline."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Iterator

CHROMIUM = ("chromium", "chromium-browser")
CHROMEDRIVER = "chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage")


def find_browser() -> tuple[str, str]:
    """The paths of chromium and chromedriver, or AssertionError saying what to install."""
    browser = next((p for p in map(shutil.which, CHROMIUM) if p), None)
    driver = shutil.which(CHROMEDRIVER)
    if browser is None or driver is None:
        raise AssertionError("headless Chromium is needed: apt-get install chromium chromium-driver "
                             "(`make system-deps` does it as root)")
    return browser, driver


@contextmanager
def headless_chromium(width: int = 1280, height: int = 2400) -> Iterator:
    """A selenium Chrome driver on a fresh profile directory, removed afterwards; the browser's console
    is readable with ``driver.get_log("browser")``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let selenium fetch a browser or a driver
    browser, driver_path = find_browser()
    profile = tempfile.mkdtemp(prefix="rockstar-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
