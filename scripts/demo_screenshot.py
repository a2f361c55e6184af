"""Regenerate docs/demo.png: the demo page on the shipped model, in headless Chromium, with the Korean example.

    python -m scripts.demo_screenshot [--out docs/demo.png]

Needs Debian's chromium and chromium-driver (see .ci/run) and the dev extra (selenium).
"""

from __future__ import annotations

import argparse
import base64
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from selenium.webdriver.support.ui import WebDriverWait

from tests.support.browser import chromium_driver

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "demo.png")
    ap.add_argument("--width", type=int, default=960)
    ap.add_argument("--height", type=int, default=1130)
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "QA_HOST": "127.0.0.1", "QA_PORT": str(port), "QA_WARMUP": "false"}
    server = subprocess.Popen([sys.executable, "-m", "app"], cwd=REPO, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=2):  # noqa: S310 - our own local server
                    break
            except OSError:
                time.sleep(0.1)
        with tempfile.TemporaryDirectory() as profile:
            driver = chromium_driver(Path(profile), args.width, args.height)
            try:
                driver.get(base + "/")
                WebDriverWait(driver, 30).until(lambda d: "korquad" in d.find_element("id", "model").text)
                driver.find_element("id", "example-ko").click()
                driver.find_element("id", "submit").click()
                WebDriverWait(driver, 60).until(lambda d: d.find_element("id", "results").is_displayed())
                # the page scrolls to its results; the picture shows all of it, from the top
                page = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
                clip = {"x": 0, "y": 0, "width": page["width"], "height": page["height"], "scale": 1}
                shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"clip": clip, "captureBeyondViewport": True})
                args.out.write_bytes(base64.b64decode(shot["data"]))
            finally:
                driver.quit()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    print(f"{args.out}: {args.out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
