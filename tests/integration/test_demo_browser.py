"""The demo page in a real browser (headless Chromium) against a real uvicorn process and a real ONNX model."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_service import FILLER
from tests.integration.test_uvicorn import free_port, start, wait_ready
from tests.support.browser import BrowserMissing, chromium_driver
from tests.support.marker_model import MARKER

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(marker_bundle: Path) -> Iterator[str]:
    port = free_port()
    proc = start({"QA_MODEL_DIR": str(marker_bundle), "QA_PORT": str(port), "QA_MODEL_VARIANT": "fp32"})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    try:
        driver = chromium_driver(tmp_path_factory.mktemp("chromium-profile"))
    except BrowserMissing as e:
        pytest.fail(str(e))  # a browser test that skips is a test that never runs
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, condition: Any, timeout: float = 30.0) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def set_value(driver: Any, element: Any, text: str) -> None:
    """Type `text`; ChromeDriver can only type BMP characters, so an emoji (or any astral char) goes in by script."""
    element.clear()
    if all(ord(c) <= 0xFFFF for c in text):
        element.send_keys(text)
    else:
        driver.execute_script(
            "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'))", element, text
        )


def ask(driver: Any, top_k: int = 1, no_answer: bool = False) -> dict[str, Any]:
    from selenium.webdriver.common.by import By

    set_value(driver, driver.find_element(By.ID, "top-k"), str(top_k))
    box = driver.find_element(By.ID, "no-answer")
    if box.is_selected() != no_answer:
        box.click()
    # cleared here, so any text other than the progress note is this request's outcome (two outcomes can
    # read the same, e.g. "1 answer(s) ... 5 ms", so comparing with the previous text could wait forever)
    driver.execute_script("document.getElementById('status').textContent = ''")
    driver.find_element(By.ID, "submit").click()
    wait_for(driver, lambda d: d.find_element(By.ID, "status").text not in ("", "Answering…"))
    return driver.execute_script(
        """
        const rows = [...document.querySelectorAll('#answers tbody tr')].map(
            (tr) => [...tr.querySelectorAll('td')].map((td) => td.textContent));
        const views = [...document.querySelectorAll('#rendered .passage-text')].map((pre) => ({
            text: pre.textContent,
            marks: [...pre.querySelectorAll('mark')].map((m) => [m.dataset.rank, m.textContent]),
            scrollTop: pre.scrollTop,
            scrollable: pre.scrollHeight > pre.clientHeight,
        }));
        return {status: document.getElementById('status').textContent,
                error: document.getElementById('status').classList.contains('error'),
                rows, views, noAnswer: document.getElementById('no-answer-score').textContent,
                images: document.querySelectorAll('#rendered img').length};
        """
    )


def test_demo_page_highlights_the_answer(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(server + "/")
    wait_for(browser, lambda d: "tiny-marker-bert" in d.find_element(By.ID, "model").text)
    assert browser.title == "Extractive QA demo"
    # an emoji (two UTF-16 units, one code point) and a flag before the answer: offsets must not drift
    context = f"😀🇰🇷 대한민국의 수도는 {MARKER}이다. 부산은 항구 도시이다."
    browser.find_element(By.ID, "question").send_keys("대한민국의 수도는?")
    set_value(browser, browser.find_element(By.CSS_SELECTOR, "#passages textarea.passage"), context)

    page = ask(browser, top_k=1)
    assert not page["error"], page["status"]
    assert "POST /answer" in page["status"]
    start = context.index(MARKER)
    assert page["rows"] == [["1", MARKER, page["rows"][0][2], "1", f"{start}\N{EN DASH}{start + len(MARKER)}"]]
    [view] = page["views"]
    assert view["text"] == context and view["marks"] == [["1", MARKER]]
    assert page["noAnswer"] == ""

    # top_k: more rows, the best one still the marker; overlapping spans keep the better rank's highlight
    page = ask(browser, top_k=3)
    assert len(page["rows"]) == 3 and page["rows"][0][1] == MARKER
    assert [r[0] for r in page["rows"]] == ["1", "2", "3"]
    assert ["1", MARKER] in page["views"][0]["marks"]
    scores = [float(r[2]) for r in page["rows"]]
    assert scores == sorted(scores, reverse=True)

    # no-answer: the null answer's score is shown only when asked for
    page = ask(browser, top_k=1, no_answer=True)
    assert page["noAnswer"].startswith("No-answer score: ")
    assert page["rows"][0][1] == MARKER
    page = ask(browser, top_k=1, no_answer=False)
    assert page["noAnswer"] == ""


def test_demo_page_many_passages_long_text_and_no_html(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(server + "/")
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#passages textarea.passage")) == 1)
    browser.find_element(By.ID, "question").send_keys("어디에 있나?")
    first = browser.find_element(By.CSS_SELECTOR, "#passages textarea.passage")
    set_value(browser, first, '<img src="x" onerror="document.title=1">' + FILLER)
    browser.find_element(By.ID, "add-passage").click()
    long = FILLER * 120 + f"마지막 문장에 {MARKER}이 있다."
    set_value(browser, browser.find_elements(By.CSS_SELECTOR, "#passages textarea.passage")[1], long)

    page = ask(browser, top_k=2)
    assert not page["error"], page["status"]
    assert "POST /read" in page["status"] and "2 passage(s)" in page["status"]
    assert page["rows"][0][1] == MARKER and page["rows"][0][3] == "2"
    start = long.index(MARKER)
    assert page["rows"][0][4] == f"{start}\N{EN DASH}{start + len(MARKER)}"
    pasted, scrolled = page["views"]
    assert pasted["text"].startswith('<img src="x"') and page["images"] == 0  # text, never markup
    assert browser.title == "Extractive QA demo"
    assert scrolled["text"] == long and ["1", MARKER] in scrolled["marks"]
    # the long passage scrolls inside its box, to the answer at its end
    assert scrolled["scrollable"] and scrolled["scrollTop"] > 0

    # a request the server refuses shows the server's reason
    page = ask(browser, top_k=50)
    assert page["error"] and "422" in page["status"] and "top_k" in page["status"]


def test_demo_page_asks_for_the_api_key_when_the_server_needs_one(marker_bundle, browser):
    from selenium.webdriver.common.by import By

    port = free_port()
    proc = start({"QA_MODEL_DIR": str(marker_bundle), "QA_PORT": str(port), "QA_API_KEY": "demo-key-123"})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base)
        browser.get(base + "/")
        wait_for(browser, lambda d: "API key" in d.find_element(By.ID, "model").text)
        assert browser.find_element(By.ID, "api-key").is_displayed()
        context = f"대한민국의 수도는 {MARKER}이다."
        browser.find_element(By.ID, "question").send_keys("대한민국의 수도는?")
        set_value(browser, browser.find_element(By.CSS_SELECTOR, "#passages textarea.passage"), context)
        set_value(browser, browser.find_element(By.ID, "api-key"), "wrong")
        page = ask(browser)
        assert page["error"] and "401" in page["status"]
        set_value(browser, browser.find_element(By.ID, "api-key"), "demo-key-123")
        page = ask(browser)
        assert not page["error"], page["status"]
        assert page["rows"][0][1] == MARKER
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def test_api_docs_render_offline_in_a_browser(server, browser):
    """Swagger UI from the package's own files: the OpenAPI 3.1 document must render, with nothing from elsewhere."""
    from selenium.webdriver.common.by import By

    browser.get(server + "/docs")
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= 4)
    paths = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/answer", "/batch_answer", "/read"} <= paths, paths
    assert not browser.find_elements(By.CSS_SELECTOR, ".errors-wrapper")
    hosts = browser.execute_script("return performance.getEntriesByType('resource').map((r) => new URL(r.name).host)")
    assert set(hosts) <= {server.removeprefix("http://")}, hosts
