"""A real headless browser for the playground page: Debian's Chromium driven by Selenium through Debian's
ChromeDriver, and the few helpers a page test needs. Used by tests/test_playground.py and
benchmarks/playground.py.

    >>> drv = chrome(downloads=tmp_path)           # None, with the reason, where no browser is installed
    >>> drv.get(url); set_value(drv, "doc", text); wait_for("finish", lambda: ...)
"""

from __future__ import annotations

import os
import shutil
import time

INSTALL = ("install Debian's chromium and chromium-driver (`apt-get install chromium chromium-driver`; .ci/run "
           "does)")


def browser_paths() -> tuple[str | None, str | None, str]:
    """(chromium, chromedriver, why not): the binaries, or Nones and the reason."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return None, None, "selenium is missing: `make setup` installs it"
    chromium = os.environ.get("LOCAS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("LOCAS_CHROMEDRIVER") or shutil.which("chromedriver")
    if not chromium or not driver:
        return None, None, f"no headless browser: {INSTALL}"
    return chromium, driver, ""


def chrome(downloads=None, size: str = "1280,1100"):
    """A headless Chromium session (``downloads``: where downloaded files go); raises RuntimeError with the
    reason where it cannot start."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver, why = browser_paths()
    if why:
        raise RuntimeError(why)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={size}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(options=options, service=Service(driver))
    if downloads is not None:
        drv.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    return drv


def wait_for(what: str, condition, timeout: float = 60.0):
    """Poll ``condition()`` until it returns something truthy (the page works asynchronously); its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"the page did not {what} within {timeout} s")


def by_id(drv, element_id: str):
    from selenium.webdriver.common.by import By

    return drv.find_element(By.ID, element_id)


def set_value(drv, element_id: str, value: str) -> None:
    """Fill a field the way a paste does (one input event), far quicker than typing key by key."""
    drv.execute_script("const e = document.getElementById(arguments[0]); e.value = arguments[1];"
                       "e.dispatchEvent(new Event('input'));", element_id, value)


def message(drv) -> str:
    """The page's message line ('' when hidden)."""
    box = by_id(drv, "message")
    return "" if box.get_attribute("hidden") is not None else box.text


def js_errors(drv) -> list[str]:
    return [e["message"] for e in drv.get_log("browser") if e["level"] == "SEVERE"]
