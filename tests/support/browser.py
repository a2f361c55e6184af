"""Headless Chromium (Debian's chromium + chromium-driver) under selenium, for the demo page's browser test."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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


class BrowserMissing(RuntimeError):
    pass


def chromium_driver(user_data_dir: Path, width: int = 1100, height: int = 900) -> Any:
    """A selenium Chrome driver on Debian's binaries; raises BrowserMissing (with the install line) without them."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        raise BrowserMissing(f"{', '.join(missing)} not found; install them with: {INSTALL}")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError as e:
        raise BrowserMissing(f"selenium is not installed ({e}); it is in the dev extra: pip install -e '.[dev]'") from e
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={user_data_dir}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    # explicit driver and browser paths: selenium-manager never runs, so nothing is downloaded
    return webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
