"""Headless Chromium (Debian's chromium + chromium-driver) under selenium, for the demo page's browser test."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

try:  # the dev extra; without it chromium_driver fails with the line that installs it
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
except ImportError as e:
    NO_SELENIUM: ImportError | None = e
else:
    NO_SELENIUM = None

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
INSTALL = "apt-get update && apt-get install -y chromium chromium-driver  (as root; .ci/run does this)"
# no network beyond the page's own origin: nothing may phone home, and the page must not need it either
FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--lang=ko-KR",
)


# the sizes the demo page is checked at: a laptop, and a phone (iPhone 12-15: 390x844 CSS pixels at 3x)
SIZES = {"desktop": (1280, 900), "phone": (390, 844)}


class BrowserMissing(RuntimeError):
    pass


def chromium_driver(user_data_dir: Path, width: int = 1100, height: int = 900) -> Any:
    """A selenium Chrome driver on Debian's binaries; raises BrowserMissing (with the install line) without them."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        raise BrowserMissing(f"{', '.join(missing)} not found; install them with: {INSTALL}")
    if NO_SELENIUM is not None:
        raise BrowserMissing(
            f"selenium is not installed ({NO_SELENIUM}); it is in the dev extra: pip install -e '.[dev]'"
        ) from NO_SELENIUM
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={user_data_dir}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    # explicit driver and browser paths: selenium-manager never runs, so nothing is downloaded
    return webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))


def emulate(driver: Any, size: str) -> None:
    """Make the page's viewport `size` (a key of SIZES); takes effect at once, no restart.

    The phone is DevTools' device mode: a mobile viewport (the page's meta viewport applies, so
    window.innerWidth is 390), 3 device pixels per CSS pixel, and touch input, so `(pointer: fine)` is false.
    """
    width, height = SIZES[size]
    phone = size == "phone"
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 3 if phone else 1, "mobile": phone},
    )
    driver.execute_cdp_cmd(
        "Emulation.setTouchEmulationEnabled", {"enabled": phone, "maxTouchPoints": 5 if phone else 1}
    )
    # no smooth scrolling: a click must not land while the page still glides to the results
    driver.execute_cdp_cmd(
        "Emulation.setEmulatedMedia", {"features": [{"name": "prefers-reduced-motion", "value": "reduce"}]}
    )
