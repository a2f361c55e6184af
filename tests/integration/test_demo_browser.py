"""The demo page in a real browser (headless Chromium) against a real uvicorn process and a real ONNX model.

Each page test runs twice: on a laptop's 1280x900 and on a phone's 390x844 (tests/support/browser.py emulate).
One browser serves the whole session (conftest.py), one server the module (and a second one, with an API key,
for the key test). Where a test needs the network to misbehave (a request held in flight, a reply the marker
model cannot give, a failed connection), a wrapper around the page's fetch does it.
"""

from __future__ import annotations

import re
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from app.api.schemas import SCORE_RULE
from tests.integration.test_service import FILLER
from tests.integration.test_uvicorn import free_port, start, wait_ready
from tests.support.browser import SIZES, emulate
from tests.support.marker_model import MARKER

pytestmark = pytest.mark.slow

MAX_CONTEXT = 4000  # the module's server: a passage over the limit stays quick to build and send
KEY = "demo-key-123"
# the service's meaning of its scores, which the page shows verbatim
MEANING = SCORE_RULE
QUESTION = "대한민국의 수도는?"
CONTEXT = f"대한민국의 수도는 {MARKER}이다. 부산은 항구 도시이다."


def serve(marker_bundle: Path, **env: str) -> Iterator[str]:
    port = free_port()
    # log level warning: no access log, since nobody reads the server's pipe until the module ends
    proc = start(
        {
            "QA_MODEL_DIR": str(marker_bundle),
            "QA_PORT": str(port),
            "QA_MODEL_VARIANT": "fp32",
            "QA_LOG_LEVEL": "warning",
            **env,
        }
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


@pytest.fixture(scope="module")
def server(marker_bundle: Path) -> Iterator[str]:
    yield from serve(marker_bundle, QA_MAX_CONTEXT_CHARS=str(MAX_CONTEXT))


@pytest.fixture(scope="module")
def keyed_server(marker_bundle: Path) -> Iterator[str]:
    yield from serve(marker_bundle, QA_API_KEY=KEY)


@pytest.fixture(params=list(SIZES))
def size(request: pytest.FixtureRequest, browser: Any) -> str:
    emulate(browser, request.param)
    return str(request.param)


def wait_for(driver: Any, condition: Any, timeout: float = 30.0) -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)


# Counts the page's POSTs, and can hold them in flight (window.__hold), answer the next with a canned reply
# (window.__fakes) or fail it as a dropped connection would. Also records CSP violations.
SPY = """
const real = window.fetch.bind(window);
Object.assign(window, {__posts: 0, __hold: false, __held: [], __fakes: [], __csp: []});
document.addEventListener('securitypolicyviolation', (e) => window.__csp.push(e.violatedDirective));
window.fetch = (url, opts = {}) => {
  if (opts.method !== 'POST') return real(url, opts);
  window.__posts += 1;
  const fake = window.__fakes.shift();
  const json = {'content-type': 'application/json'};
  const reply = (f) => new Response(JSON.stringify(f.body), {status: f.status, headers: json});
  const go = () => !fake ? real(url, opts)
    : fake.network ? Promise.reject(new TypeError('Failed to fetch'))
    : Promise.resolve(reply(fake));
  if (!window.__hold) return go();
  return new Promise((resolve, reject) => {
    opts.signal.addEventListener('abort', () => reject(opts.signal.reason));
    window.__held.push(() => go().then(resolve, reject));
  });
};
window.__release = () => { window.__hold = false; window.__held.splice(0).forEach((send) => send()); };
"""

FILL = """
const [question, passages] = arguments;
const fire = (node) => node.dispatchEvent(new Event('input', {bubbles: true}));
const boxes = () => [...document.querySelectorAll('#passages textarea.passage')];
while (boxes().length < passages.length) document.getElementById('add-passage').click();
while (boxes().length > passages.length) boxes().at(-1).closest('.passage-input').querySelector('.remove').click();
const q = document.getElementById('question');
q.value = question;
fire(q);
boxes().forEach((area, i) => { area.value = passages[i]; fire(area); });
"""

STATE = """
const $ = (id) => document.getElementById(id);
const shown = (node) => node.getClientRects().length > 0;
const alpha = (color) => { const m = /rgba\\(.*, ([\\d.]+)\\)/.exec(color); return m ? Number(m[1]) : 1; };
return {
  status: $('status').textContent,
  error: shown($('error')) ? $('error-text').textContent : null,
  errorDetail: $('error-detail').textContent,
  results: shown($('results')),
  stale: shown($('stale')),
  resultsText: $('results').innerText,
  rows: [...document.querySelectorAll('#answers tbody tr')].map((tr) => [...tr.cells].map((td) => td.textContent)),
  views: [...document.querySelectorAll('#rendered .passage-text')].map((pre) => ({
    text: pre.textContent,
    marks: [...pre.querySelectorAll('mark')].map(
      (m) => [m.dataset.rank, m.textContent, alpha(getComputedStyle(m).backgroundColor)]),
    scrollTop: pre.scrollTop,
    scrollable: pre.scrollHeight > pre.clientHeight,
  })),
  images: document.querySelectorAll('#rendered img').length,
  noAnswer: $('no-answer-score').textContent,
  text: document.body.innerText,
  scrollWidth: document.documentElement.scrollWidth,
  innerWidth,
  innerHeight,
  statusTop: $('status').getBoundingClientRect().top,
  resultsTop: $('results').getBoundingClientRect().top,
  busy: $('ask').getAttribute('aria-busy') === 'true',
  submitDisabled: $('submit').disabled,
  cancel: shown($('cancel')),
  keyField: shown($('api-key')),
  active: document.activeElement.id,
  invalid: [...document.querySelectorAll('[aria-invalid="true"]')].map((n) => n.id),
  boxes: [...document.querySelectorAll('#passages textarea.passage')].map((a) => a.id),
  question: $('question').value,
  passages: [...document.querySelectorAll('#passages textarea.passage')].map((a) => a.value),
  fieldErrors: Object.fromEntries(
    [...document.querySelectorAll('.field-error')].filter(shown).map((p) => [p.id, p.textContent])),
  counts: Object.fromEntries([...document.querySelectorAll('.count')].filter(shown).map(
    (n) => [n.id, [n.textContent, n.classList.contains('over')]])),
  posts: window.__posts,
  csp: window.__csp,
};
"""


def open_page(driver: Any, base: str) -> None:
    driver.get(base + "/")
    wait_for(driver, lambda d: re.search("tiny-marker-bert|API key", d.find_element("id", "model").text))
    driver.execute_script(SPY)


def fill(driver: Any, question: str, passages: list[str]) -> None:
    """Set the question and exactly these passages, as typing would (input events); fast at any length."""
    driver.execute_script(FILL, question, passages)


def state(driver: Any) -> dict[str, Any]:
    return driver.execute_script(STATE)  # type: ignore[no-any-return]


def wait_idle(driver: Any) -> dict[str, Any]:
    wait_for(driver, lambda d: d.execute_script("return document.getElementById('ask').ariaBusy !== 'true'"))
    return state(driver)


def answer(driver: Any, top_k: int = 1, no_answer: bool = False) -> dict[str, Any]:
    """Press Answer with these options and wait for the outcome (results, an error or a status)."""
    driver.execute_script(
        """const [k, na] = arguments;
        const topK = document.getElementById('top-k'), box = document.getElementById('no-answer');
        if (topK.value !== String(k)) {
          topK.value = String(k);
          topK.dispatchEvent(new Event('input', {bubbles: true}));
        }
        if (box.checked !== na) box.click();""",
        top_k,
        no_answer,
    )
    driver.find_element("id", "submit").click()
    return wait_idle(driver)


def fake(driver: Any, status: int = 200, body: dict[str, Any] | None = None, network: bool = False) -> None:
    """The page's next POST gets this reply instead of the server's."""
    driver.execute_script("window.__fakes.push(arguments[0])", {"status": status, "body": body, "network": network})


def answers_counted(base: str) -> float:
    """The server's own count of /answer requests (any outcome), from /metrics."""
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(v) for v in re.findall(r'^qa_requests_total\{endpoint="/answer",[^}]*\} (\S+)$', text, re.M))


def test_answer_is_highlighted_with_a_strength_that_follows_its_score(server, browser, size):
    open_page(browser, server)
    assert browser.title == "Extractive QA demo"
    # an emoji (two UTF-16 units, one code point) and a flag before the answer: offsets must not drift
    context = f"😀🇰🇷 {CONTEXT}"
    fill(browser, QUESTION, [context])
    page = answer(browser, top_k=1)
    assert page["error"] is None and "POST /answer" in page["status"], page["status"]
    start = context.index(MARKER)  # a Python index counts code points, as the server does
    assert page["rows"] == [["1", MARKER, ">99%", "1", f"{start}\N{EN DASH}{start + len(MARKER)}"]]
    [view] = page["views"]
    assert view["text"] == context and [m[:2] for m in view["marks"]] == [["1", MARKER]]
    # the results come into view with their summary line (on a phone they start far below the fold)
    assert 0 <= page["statusTop"] and page["resultsTop"] < page["innerHeight"]
    # a one-line legend and the service's meaning of the numbers, near the results
    assert "Highlight:" in page["resultsText"] and MEANING in page["resultsText"]

    # weaker answers are highlighted fainter, never invisible; scores are percentages
    page = answer(browser, top_k=3)
    assert [r[2] for r in page["rows"]] == [">99%", "<1%", "<1%"]
    alphas = {rank: a for rank, _, a in page["views"][0]["marks"]}
    assert alphas["1"] == 1 and set(alphas) > {"1"}, page["views"]
    assert all(0.2 <= a < 0.5 for rank, a in alphas.items() if rank != "1"), alphas

    # the no-answer probability shows only when asked for
    page = answer(browser, top_k=1, no_answer=True)
    assert re.fullmatch(r"no-answer (<1|\d+|>99)%", page["noAnswer"]), page["noAnswer"]
    assert page["rows"][0][1] == MARKER
    assert answer(browser)["noAnswer"] == ""

    # no key configured: nothing about keys shows, nor takes a Tab stop; the shortcut only with a keyboard
    assert "API key" not in page["text"] and not page["keyField"]
    assert ("Ctrl+Enter" in page["text"]) is (size == "desktop")
    assert "API docs" in page["text"]
    assert page["scrollWidth"] <= page["innerWidth"] == SIZES[size][0]
    assert page["csp"] == []  # the highlight strength is set through CSSOM, which the CSP allows


def test_no_answer_says_so_and_highlights_nothing(server, browser, size):
    open_page(browser, server)
    fill(browser, QUESTION, [CONTEXT])
    fake(browser, body={"answers": [], "no_answer_score": 0.96, "model": "tiny-marker-bert", "windows": 1})
    page = answer(browser, no_answer=True)
    assert page["noAnswer"] == "No answer in the passage (no-answer 96%)"
    assert page["rows"] == [] and [v["marks"] for v in page["views"]] == [[]]
    assert "0.96" not in page["resultsText"]

    fill(browser, QUESTION, [CONTEXT, CONTEXT])
    fake(browser, body={"answers": [], "no_answer_score": 0.5, "model": "tiny-marker-bert", "windows": 2})
    assert answer(browser, no_answer=True)["noAnswer"] == "No answer in the passages (no-answer 50%)"


def test_old_results_never_pass_for_new_ones(server, browser, size):
    open_page(browser, server)
    fill(browser, QUESTION, [CONTEXT])

    def answered() -> None:
        page = answer(browser)
        assert page["results"] and MARKER in page["resultsText"] and not page["stale"], page["status"]

    def gone(page: dict[str, Any]) -> None:
        assert not page["results"] and MARKER not in page["resultsText"], page

    # an error from the server, a dropped connection, the wait itself: no old answer stays in sight
    answered()
    fake(browser, 503, {"error": {"code": "overloaded", "message": "queue full", "fields": [], "request_id": "r1"}})
    page = answer(browser)
    gone(page)
    assert page["error"] == "queue full" and page["errorDetail"] == "503 overloaded · request id r1"
    answered()
    fake(browser, network=True)
    page = answer(browser)
    gone(page)
    assert page["error"].startswith("Could not reach the server")
    answered()
    browser.execute_script("window.__hold = true")
    browser.find_element("id", "submit").click()
    page = state(browser)
    gone(page)
    assert page["busy"] and page["status"] == "Answering…"
    browser.execute_script("window.__release()")
    assert wait_idle(browser)["results"]

    # any change to the inputs marks the results stale: greyed, labelled, and no highlight left
    changes = {
        "question": "const q = document.getElementById('question'); q.value += '?';"
        " q.dispatchEvent(new Event('input', {bubbles: true}))",
        "passage": "const a = document.querySelector('textarea.passage'); a.value += '!';"
        " a.dispatchEvent(new Event('input', {bubbles: true}))",
        "top_k": "const k = document.getElementById('top-k'); k.value = '2';"
        " k.dispatchEvent(new Event('input', {bubbles: true}))",
        "no-answer box": "document.getElementById('no-answer').click()",
        "add passage": "document.getElementById('add-passage').click()",
        "remove passage": "document.querySelectorAll('#passages .remove')[1].click()",
    }
    for what, script in changes.items():
        if what == "remove passage":
            fill(browser, QUESTION, [CONTEXT, CONTEXT])
        else:
            fill(browser, QUESTION, [CONTEXT])
        answered()
        browser.execute_script(script)
        page = state(browser)
        assert page["stale"] and "stale" in page["resultsText"], what
        assert all(v["marks"] == [] for v in page["views"]), what

    # a question left empty: the page refuses it, and the stale results go too
    fill(browser, QUESTION, [CONTEXT])
    answered()
    fill(browser, "", [CONTEXT])
    page = answer(browser)
    gone(page)
    assert page["error"] == "Enter a question." and page["invalid"] == ["question"]

    # an example replaces the inputs: nothing of the old results stays
    for example in ("example-ko", "example-en"):
        fill(browser, QUESTION, [CONTEXT])
        answered()
        browser.find_element("id", example).click()
        page = state(browser)
        gone(page)
        assert page["status"] == "" and page["error"] is None


def test_one_request_at_a_time_with_cancel_and_timeout(server, browser, size):
    open_page(browser, server)
    fill(browser, QUESTION, [CONTEXT])
    before = answers_counted(server)
    # held in flight, so that every later submit finds it still running
    browser.execute_script("window.__hold = true")
    browser.find_element("id", "submit").click()
    question = browser.find_element("id", "question")
    question.send_keys(Keys.CONTROL, Keys.ENTER)
    question.send_keys(Keys.CONTROL, Keys.ENTER)
    question.send_keys(Keys.ENTER)  # the form's own Enter-to-submit
    browser.execute_script("document.getElementById('ask').requestSubmit()")
    page = state(browser)
    assert page["posts"] == 1 and page["busy"] and page["submitDisabled"] and page["cancel"]
    browser.execute_script("window.__release()")
    page = wait_idle(browser)
    assert page["rows"][0][1] == MARKER and not page["submitDisabled"] and not page["cancel"]
    assert page["posts"] == 1 and answers_counted(server) - before == 1

    # Cancel: the request is dropped, the page says so and is ready again
    browser.execute_script("window.__hold = true")
    browser.find_element("id", "submit").click()
    browser.find_element("id", "cancel").click()
    page = wait_idle(browser)
    assert page["status"] == "Cancelled." and page["error"] is None and not page["results"]
    assert not page["submitDisabled"] and not page["cancel"] and page["active"] == "submit"

    # the client-side timeout (60 s on the page; shortened here): a clear message, and the page works again
    browser.execute_script("settings.timeoutMs = 300; window.__held = []")
    browser.find_element("id", "submit").click()
    page = wait_idle(browser)
    assert page["error"].startswith("No answer after 0.3 s."), page["error"]
    assert not page["results"] and not page["submitDisabled"]
    browser.execute_script("window.__release()")
    assert answer(browser)["rows"][0][1] == MARKER
    # the held requests never reached the server
    assert answers_counted(server) - before == 2


def test_character_counts_and_errors_that_name_the_passage(server, browser, size):
    open_page(browser, server)
    # code points, as the server counts them: the emoji is one character (two UTF-16 units)
    fill(browser, QUESTION, [f"😀 {MARKER}"])
    page = state(browser)
    [box] = page["boxes"]
    assert page["counts"] == {
        "question-count": ["10 / 1,000 characters", False],
        f"{box}-count": [f"4 / {MAX_CONTEXT:,} characters", False],
    }

    # one passage over the limit: the server's "context" is Passage 1, named at its box and at the top
    fill(browser, QUESTION, ["가" * (MAX_CONTEXT + 1)])
    assert state(browser)["counts"][f"{box}-count"] == [f"{MAX_CONTEXT + 1:,} / {MAX_CONTEXT:,} characters", True]
    page = answer(browser)
    reason = f"Passage 1 has {MAX_CONTEXT + 1:,} characters (at most {MAX_CONTEXT:,})"
    assert page["error"] == reason and page["fieldErrors"] == {f"{box}-error": reason}
    assert page["invalid"] == [box]
    assert re.fullmatch(r"422 invalid_request · request id [0-9a-f]{32}", page["errorDetail"]), page["errorDetail"]
    assert "context" not in page["text"] and "QA_" not in page["text"]

    # several passages go to /read as "passages.N"; a blank box is not sent, so passages.1 is Passage 3 here
    fill(browser, QUESTION, [MARKER, "", "가" * (MAX_CONTEXT + 1)])
    page = state(browser)
    _, _, third = page["boxes"]
    assert page["counts"]["total-count"][0].startswith(f"Passages together: {MAX_CONTEXT + 3:,} / ")
    page = answer(browser)
    reason = f"Passage 3 has {MAX_CONTEXT + 1:,} characters (at most {MAX_CONTEXT:,})"
    assert page["error"] == reason and page["fieldErrors"] == {f"{third}-error": reason}
    assert page["invalid"] == [third]
    # typing in the marked box takes its mark away; the other boxes never had one
    fill(browser, QUESTION, [MARKER, "", "가"])
    assert state(browser)["invalid"] == []

    # the question, and a field the form has no box for
    fill(browser, "가" * 1001, [MARKER])
    page = answer(browser)
    assert page["error"] == "The question has 1,001 characters (at most 1,000)" and page["invalid"] == ["question"]
    fill(browser, QUESTION, [MARKER])
    page = answer(browser, top_k=50)
    assert page["error"].startswith("top_k: ") and page["invalid"] == ["top-k"]


def test_long_korean_passages_fit_a_phone(server, browser, size):
    open_page(browser, server)
    pasted = '<img src="x" onerror="document.title=1"> ' + FILLER * 8 + "x" * 400 + " " + "대한민국의수도는" * 40
    long = FILLER * 120 + f"마지막 문장에 {MARKER}이 있다."
    fill(browser, QUESTION, [f"{pasted} {MARKER}", long])
    page = answer(browser, top_k=2)
    assert "POST /read" in page["status"] and "from 2 passages" in page["status"], page["status"]
    assert sorted(r[3] for r in page["rows"]) == ["1", "2"] and {r[1] for r in page["rows"]} == {MARKER}
    assert page["scrollWidth"] <= page["innerWidth"] == SIZES[size][0]
    # pasted markup stays text
    assert page["views"][0]["text"].startswith('<img src="x"') and page["images"] == 0
    assert browser.title == "Extractive QA demo"
    # the long passage scrolls inside its box, to the answer at its end
    assert page["views"][1]["scrollable"] and page["views"][1]["scrollTop"] > 0

    # long answers (a made-up reply: the marker model only ever answers the marker) wrap inside the page too
    sentence = "캐시 크루즈의 셋째 딸 한느와 그녀의 남편 하인즈 알더는 1990년 캐시 크루즈 회사의 경영권을 넘긴다"
    word = "x" * 400
    context = f"{sentence} {word}"
    fake(
        browser,
        body={
            "answers": [
                {"text": sentence, "score": 0.6, "start": 0, "end": len(sentence)},
                {"text": word, "score": 0.3, "start": len(sentence) + 1, "end": len(context)},
            ],
            "no_answer_score": None,
            "model": "tiny-marker-bert",
            "windows": 1,
        },
    )
    fill(browser, QUESTION, [context])
    page = answer(browser, top_k=2)
    assert [r[1] for r in page["rows"]] == [sentence, word]
    assert page["scrollWidth"] <= page["innerWidth"]
    # every cell of the answers, the character offsets included, within the screen; no Korean word split
    layout = browser.execute_script(
        """
        const split = [];
        for (const root of [document.querySelector('#answers td.text'), document.querySelector('#rendered pre')]) {
          const texts = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
          for (let text = texts.nextNode(); text; text = texts.nextNode()) {
            for (const m of text.data.matchAll(/[가-힣]+/g)) {
              const range = document.createRange();
              range.setStart(text, m.index);
              range.setEnd(text, m.index + m[0].length);
              if (new Set([...range.getClientRects()].map((r) => Math.round(r.top))).size > 1) split.push(m[0]);
            }
          }
        }
        const cells = [...document.querySelectorAll('#answers td')];
        const right = Math.max(...cells.map((td) => td.getBoundingClientRect().right));
        return {split, right};
        """
    )
    assert layout["split"] == [] and layout["right"] <= page["innerWidth"], layout


def test_examples_fill_the_form(server, browser, size):
    open_page(browser, server)
    browser.find_element("id", "example-en").click()
    page = state(browser)
    assert page["question"] == "Who designed the Eiffel Tower?"
    [passage] = page["passages"]
    assert "Eiffel" in passage
    page = answer(browser)
    assert "POST /answer" in page["status"] and page["rows"], page["status"]
    [view] = page["views"]
    assert view["text"] == passage and [m[1] for m in view["marks"]] == [page["rows"][0][1]]

    browser.find_element("id", "example-ko").click()
    page = state(browser)
    assert page["question"] == "캐시 크루즈의 셋째 딸의 이름은?" and len(page["passages"]) == 2
    assert page["passages"][0].startswith("캐시 크루즈의 셋째 딸 한느와 그녀의 남편")
    page = answer(browser)
    assert "POST /read" in page["status"] and "from 2 passages" in page["status"], page["status"]


def test_api_key_field_appears_after_a_401(keyed_server, browser, size):
    browser.get(keyed_server + "/")
    browser.execute_script("sessionStorage.clear()")  # the other size's run stored the key
    open_page(browser, keyed_server)
    page = state(browser)
    assert "this server needs an API key" in page["text"] and page["keyField"]
    # /v1/models was refused, so the limits are unknown: counts without them
    assert page["counts"]["question-count"] == ["0 characters", False]

    fill(browser, QUESTION, [CONTEXT])
    key = browser.find_element("id", "api-key")
    key.send_keys("wrong")
    page = answer(browser)
    assert page["error"].startswith("The server refused this API key") and page["errorDetail"].startswith("401 ")
    assert page["active"] == "api-key"
    key.clear()
    key.send_keys(KEY)
    page = answer(browser)
    assert page["error"] is None and page["rows"][0][1] == MARKER
    # with the key, the model info and the limits arrive
    wait_for(browser, lambda d: "/ 1,000 characters" in d.find_element("id", "question-count").text)
    # the key is kept for this tab: a reload needs no key field
    open_page(browser, keyed_server)
    page = state(browser)
    assert "tiny-marker-bert" in page["text"] and "API key" not in page["text"] and not page["keyField"]


def test_api_docs_render_offline_in_a_browser(server, browser):
    """Swagger UI from the package's own files: the OpenAPI 3.1 document must render, with nothing from elsewhere."""
    emulate(browser, "desktop")
    browser.get(server + "/docs")
    wait_for(browser, lambda d: len(d.find_elements("css selector", ".opblock")) >= 4)
    paths = {e.text for e in browser.find_elements("css selector", ".opblock-summary-path")}
    assert {"/answer", "/batch_answer", "/read"} <= paths, paths
    assert not browser.find_elements("css selector", ".errors-wrapper")
    hosts = browser.execute_script("return performance.getEntriesByType('resource').map((r) => new URL(r.name).host)")
    assert set(hosts) <= {server.removeprefix("http://")}, hosts
