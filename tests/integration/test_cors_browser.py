"""CORS in a real browser: a page on another origin (another local port) calls POST /answer with fetch, with a
bearer token (so the preflight must pass before auth), and gets the answer only when its origin is allowed."""

from __future__ import annotations

import functools
import http.server
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_uvicorn import free_port, start, wait_ready
from tests.support.marker_model import MARKER

pytestmark = pytest.mark.slow

KEY = "cors-test-key"
FETCH = """
const [api, key, marker, done] = arguments;
fetch(api + "/answer", {
  method: "POST",
  headers: {"content-type": "application/json", "authorization": "Bearer " + key, "x-request-id": "cors-1"},
  body: JSON.stringify({question: "정답은?", context: "정답은 " + marker + "이다."}),
})
  .then((r) => r.json().then((body) => done({status: r.status, body, requestId: r.headers.get("x-request-id")})))
  .catch((e) => done({error: String(e)}));
"""


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """Two static sites on two local ports: two origins, one of them allowed (the first)."""
    root = tmp_path_factory.mktemp("site")
    (root / "index.html").write_text("<!doctype html><title>other origin</title><p>a page on another origin</p>")
    handler = functools.partial(QuietHandler, directory=str(root))
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler) for _ in range(2)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    try:
        yield tuple(f"http://127.0.0.1:{s.server_address[1]}" for s in servers)  # type: ignore[misc]
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def api(marker_bundle: Path, pages: tuple[str, str]) -> Iterator[str]:
    allowed, _ = pages
    port = free_port()
    proc = start(
        {"QA_MODEL_DIR": str(marker_bundle), "QA_PORT": str(port), "QA_CORS_ORIGINS": allowed, "QA_API_KEY": KEY}
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def fetch_from(browser: Any, page: str, api: str) -> dict[str, Any]:
    browser.get(page + "/index.html")
    browser.set_script_timeout(30)
    return browser.execute_async_script(FETCH, api, KEY, MARKER)


def test_an_allowed_origin_gets_the_answer_and_can_read_the_request_id(browser, pages, api):
    allowed, _ = pages
    result = fetch_from(browser, allowed, api)
    assert result.get("status") == 200, result
    assert result["body"]["answers"][0]["text"] == MARKER
    assert result["requestId"] == "cors-1"  # exposed to the page by Access-Control-Expose-Headers


def test_another_origin_is_refused_by_the_browser(browser, pages, api):
    _, other = pages
    result = fetch_from(browser, other, api)
    assert "status" not in result, result
    assert "TypeError" in result["error"]  # "Failed to fetch": the preflight gave it no CORS headers
