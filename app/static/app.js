// Demo page: no framework, no build step, no CDN. User text only ever goes into textContent.
"use strict";

const EXAMPLES = {
  en: {
    question: "Who designed the Eiffel Tower?",
    passages: [
      "The Eiffel Tower is a wrought-iron lattice tower in Paris. It was designed by Gustave Eiffel's company and " +
        "completed in 1889 for the World's Fair.",
    ],
  },
  ko: {
    question: "캐시 크루즈의 셋째 딸의 이름은?",
    passages: [
      "캐시 크루즈의 셋째 딸 한느와 그녀의 남편 하인즈 알더는 1990년 캐시 크루즈 회사의 경영권을 크리스텐슨에게 넘긴다.",
      "에펠탑은 파리에 있는 철탑이다. 1889년 만국박람회를 위해 완공되었다.",
    ],
  },
};

// The browser test shortens the timeout; a real request that runs past a minute is better retried than awaited.
const settings = { timeoutMs: 60_000 };
const KEY_STORE = "qa-api-key";

let limits = null; // GET /v1/models' "limits"; null until known (counts then show no limit)
let inFlight = null; // the AbortController of the one request in flight
let editedDuring = false; // the inputs changed while a request ran: its results arrive stale
let passageSeq = 0;

const $ = (id) => document.getElementById(id);
const fmt = (n) => n.toLocaleString("en-US");
const plural = (n, word) => `${fmt(n)} ${word}${n === 1 ? "" : "s"}`;
// The server counts characters as Unicode code points (Python str); JS strings count UTF-16 units.
const chars = (s) => Array.from(s).length;
const pct = (p) => (p < 0.01 ? "<1%" : p > 0.99 ? ">99%" : `${Math.round(p * 100)}%`);
// the service's setting names mean nothing to someone using the page
// the server's parenthesised details name its settings ("(... the limit is 64, QA_MAX_WINDOWS_PER_REQUEST)")
const noSettings = (text) => text.replace(/\s*\([^()]*QA_[A-Z0-9_]+[^()]*\)/g, "");

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c); // strings become text nodes, never HTML
  return node;
}

function passageInputs() {
  return Array.from(document.querySelectorAll("#passages textarea.passage"));
}

// ---- character counts ----

function showCount(node, n, limit, prefix = "") {
  node.textContent = prefix + (limit ? `${fmt(n)} / ${fmt(limit)} characters` : plural(n, "character"));
  node.classList.toggle("over", Boolean(limit) && n > limit);
}

function countQuestion() {
  showCount($("question-count"), chars($("question").value), limits?.max_question_chars);
}

function countPassage(area) {
  area.dataset.chars = String(chars(area.value)); // kept, so the total never recounts 50 long passages
  showCount($(`${area.id}-count`), Number(area.dataset.chars), limits?.max_context_chars);
}

function countTotal() {
  const areas = passageInputs();
  const total = areas.reduce((sum, a) => sum + Number(a.dataset.chars), 0);
  $("total-count").hidden = areas.length < 2;
  showCount($("total-count"), total, limits?.max_total_chars, "Passages together: ");
  $("add-passage").disabled = Boolean(limits) && areas.length >= limits.max_passages;
}

function applyLimits() {
  if (limits) $("top-k").max = String(limits.max_top_k);
  countQuestion();
  passageInputs().forEach(countPassage);
  countTotal();
}

// ---- passages ----

function renumber() {
  const boxes = Array.from(document.querySelectorAll("#passages .passage-input"));
  boxes.forEach((box, i) => {
    box.querySelector("label").textContent = `Passage ${i + 1}`;
    box.querySelector("button.remove").hidden = boxes.length === 1;
  });
  countTotal();
}

function addPassage(text = "") {
  const id = `passage-${++passageSeq}`;
  const area = el("textarea", {
    id,
    class: "passage",
    placeholder: "지문을 붙여 넣으세요 / Paste a passage",
    "aria-describedby": `${id}-count ${id}-error`,
  });
  area.value = text;
  // grow with the text up to 10 rows; longer passages scroll
  const fit = () => (area.rows = Math.min(10, Math.max(3, area.value.split("\n").length, Math.ceil(area.value.length / 70))));
  area.addEventListener("input", fit);
  fit();
  const remove = el("button", { type: "button", class: "link remove", title: "Remove this passage" }, "remove");
  const head = el("div", { class: "field-head" }, el("label", { for: id }), el("span", { class: "count muted", id: `${id}-count` }), remove);
  const box = el("div", { class: "field passage-input" }, head, area, el("p", { class: "field-error", id: `${id}-error`, hidden: "" }));
  remove.addEventListener("click", () => {
    box.remove();
    renumber();
    edited();
  });
  $("passages").append(box);
  countPassage(area);
  renumber();
  return area;
}

function loadExample(example) {
  inFlight?.abort("replaced"); // its answer would be to inputs that are gone
  clearResults();
  clearErrors();
  setStatus("");
  $("question").value = example.question;
  countQuestion();
  document.querySelectorAll("#passages .passage-input").forEach((b) => b.remove());
  example.passages.forEach((p) => addPassage(p));
}

// ---- status, errors, stale results ----

function setStatus(text) {
  $("status").textContent = text;
}

function clearErrors() {
  $("error").hidden = true;
  document.querySelectorAll(".field-error").forEach((p) => {
    p.hidden = true;
    p.textContent = "";
  });
  document.querySelectorAll("[aria-invalid]").forEach((n) => n.removeAttribute("aria-invalid"));
}

// mark a control and, where it has one, say why in the line under it
function fieldError(control, text) {
  control.setAttribute("aria-invalid", "true");
  const line = $(`${control.id}-error`);
  if (line) {
    line.textContent = text;
    line.hidden = false;
  }
}

function showError(text, detail = "") {
  clearResults();
  setStatus("");
  $("error-text").textContent = text;
  $("error-detail").textContent = detail;
  $("error").hidden = false;
  $("error").scrollIntoView({ block: "nearest" });
}

function clearResults() {
  $("results").hidden = true;
  $("results").classList.remove("stale");
  $("stale").hidden = true;
  $("answers").querySelector("tbody").replaceChildren();
  $("rendered").replaceChildren();
  $("no-answer-score").replaceChildren();
}

// Results that no longer match the inputs stay readable, greyed, labelled stale and without highlights.
function markStale() {
  if ($("results").hidden) return;
  $("results").classList.add("stale");
  $("stale").hidden = false;
  $("rendered").querySelectorAll("mark").forEach((m) => m.replaceWith(m.textContent));
}

function edited(target) {
  if (inFlight) editedDuring = true;
  markStale();
  if (target?.id) {
    $(`${target.id}-error`)?.setAttribute("hidden", "");
    target.removeAttribute("aria-invalid");
  }
}

// A server error names a field of the request; say it as the form does. "context" is the one passage sent to
// /answer, "passages.N" (or "passages.N.text") the N-th passage sent to /read. Blank boxes are not sent, so N
// counts only the others: `sent` maps it back to the box.
function targetOf(field, question, sent) {
  if (field === "question") return question;
  if (field === "top_k") return { control: $("top-k"), label: "top_k" };
  if (field === "passages") return { label: "The passages together" };
  const m = /^(?:context|passages\.(\d+))(?:\.|$)/.exec(field);
  return (m && sent[Number(m[1] ?? 0)]) || { label: field };
}

function explain(reason, target) {
  // "at most 4000 characters" (the form's limit), or "at most about 9,760 characters of this kind of text" (what
  // the model's windows hold, which depends on the text)
  const tooLong = /at most (about )?([\d,]+) characters/.exec(reason);
  if (tooLong && target.text !== undefined) {
    const limit = fmt(Number(tooLong[2].replaceAll(",", "")));
    const kind = tooLong[1] ? `about ${limit} of this kind of text` : limit;
    return `${target.label} has ${fmt(chars(target.text))} characters (at most ${kind})`;
  }
  const plain = noSettings(reason);
  // the engine names the field in its own words ("context needs 70 windows ..."); use the form's
  const named = plain.replace(/^(?:the )?(?:context|passage(?: \d+)?|question)\b/i, target.label);
  return named === plain ? `${target.label}: ${plain}` : named;
}

function showServerError(r, body, question, sent, keyTyped) {
  const err = body.error || {};
  const detail = `${r.status} ${err.code || r.statusText} · request id ${err.request_id || r.headers.get("x-request-id") || "none"}`;
  if (r.status === 401) {
    sessionStorage.removeItem(KEY_STORE);
    showKeyField();
    showError(
      keyTyped
        ? "The server refused this API key: check it and press Answer again."
        : "This server needs an API key: enter it below and press Answer again.",
      detail,
    );
    $("api-key").focus();
    return;
  }
  const lines = (err.fields || []).map((f) => {
    const target = targetOf(f.field, question, sent);
    const text = explain(f.reason, target);
    if (target.control) fieldError(target.control, text);
    return text;
  });
  showError(lines.length ? lines.join("; ") : noSettings(err.message || `request failed (${r.statusText})`), detail);
}

// ---- results ----

// Highlight strength follows the score, with a floor so that a weak answer can still be found.
const alpha = (score) => Math.min(1, Math.max(0.2, score)).toFixed(2);

// The server counts offsets in Unicode code points (Python str indices); JS strings are UTF-16, so an
// emoji before the answer would shift UTF-16 indices. Array.from splits a string into code points.
function highlighted(text, answers) {
  const points = Array.from(text);
  const best = new Array(points.length).fill(null);
  // worst rank first, so where answers overlap the better one shows
  for (const a of [...answers].sort((x, y) => y.rank - x.rank)) {
    for (let i = a.start; i < a.end && i < points.length; i++) best[i] = a;
  }
  const out = el("pre", { class: "passage-text" });
  let i = 0;
  while (i < points.length) {
    let j = i;
    while (j < points.length && best[j] === best[i]) j++;
    const piece = points.slice(i, j).join("");
    const a = best[i];
    if (a === null) out.append(piece);
    else {
      const title = `answer #${a.rank}, score ${pct(a.score)}`;
      const mark = el("mark", { "data-rank": String(a.rank), title }, piece);
      mark.style.setProperty("--alpha", alpha(a.score)); // CSSOM, which the CSP allows (a style attribute it would not)
      out.append(mark);
    }
    i = j;
  }
  return out;
}

function showResults(sent, body) {
  // `passage` indexes the passages sent; sent[i].n is that passage's number on the page
  const answers = body.answers.map((a, k) => ({ ...a, rank: k + 1, sentIndex: a.passage ?? 0 }));
  const tbody = $("answers").querySelector("tbody");
  tbody.replaceChildren();
  for (const a of answers) {
    // data-label names a cell where a narrow screen stacks the table into cards
    const meta = (label, text, title = "") => el("td", { class: "num meta", "data-label": label, title }, text);
    tbody.append(
      el(
        "tr",
        { class: "answer", "data-passage": String(sent[a.sentIndex].n - 1) },
        el("td", { class: "num" }, String(a.rank)),
        el("td", { class: "text" }, a.text),
        meta("score", pct(a.score), a.score.toFixed(4)),
        meta("passage", String(sent[a.sentIndex].n)),
        meta("characters", `${a.start}–${a.end}`),
      ),
    );
  }
  $("answers").hidden = answers.length === 0;
  const na = $("no-answer-score");
  const where = sent.length === 1 ? "the passage" : "the passages";
  if (answers.length === 0 && body.no_answer_score != null) {
    na.append(el("strong", { class: "no-answer" }, `No answer in ${where}`), ` (no-answer ${pct(body.no_answer_score)})`);
  } else if (answers.length === 0) {
    na.append(el("strong", { class: "no-answer" }, `No answer found in ${where}`));
  } else if (body.no_answer_score != null) {
    na.append(`no-answer ${pct(body.no_answer_score)}`);
  }
  sent.forEach((p, i) => {
    const mine = answers.filter((a) => a.sentIndex === i);
    const title = p.label + (mine.length ? ` — ${plural(mine.length, "answer")}` : "");
    $("rendered").append(
      el("section", { class: "passage-view", "data-passage": String(p.n - 1) }, el("h3", {}, title), highlighted(p.text, mine)),
    );
  });
  $("results").hidden = false;
  // long passages scroll inside their box: bring each best answer into view there
  for (const pre of $("rendered").querySelectorAll(".passage-text")) {
    const first = [...pre.querySelectorAll("mark")].sort((x, y) => x.dataset.rank - y.dataset.rank)[0];
    if (first) pre.scrollTop = Math.max(0, first.offsetTop - pre.offsetTop - pre.clientHeight / 3);
  }
  if (editedDuring) markStale();
  $("status").scrollIntoView({ block: "start" }); // the summary, then the results: far below the fold on a phone
}

// ---- the request ----

// The server may require a bearer token (QA_API_KEY). The key field shows once a call comes back 401;
// the key lives only in this tab's sessionStorage.
function authHeaders() {
  const key = $("api-key").value || sessionStorage.getItem(KEY_STORE) || "";
  return key ? { authorization: `Bearer ${key}` } : {};
}

function showKeyField() {
  $("api-key-row").hidden = false;
}

function setBusy(busy) {
  $("ask").setAttribute("aria-busy", String(busy));
  $("submit").disabled = busy;
  if (!busy && document.activeElement === $("cancel")) $("submit").focus(); // not lost to <body>
  $("cancel").hidden = !busy;
}

async function ask(event) {
  event.preventDefault();
  if (inFlight) return; // one request at a time, whatever submitted: the button, Enter, Ctrl/Cmd+Enter
  clearResults();
  clearErrors();
  const question = { control: $("question"), label: "The question", text: $("question").value };
  // blank boxes are not sent; `sent` remembers the box each sent passage came from
  const sent = passageInputs()
    .map((area, i) => ({ control: area, label: `Passage ${i + 1}`, n: i + 1, text: area.value }))
    .filter((p) => p.text.trim() !== "");
  if (!question.text.trim()) {
    fieldError(question.control, "Enter a question.");
    showError("Enter a question.");
    return;
  }
  if (sent.length === 0) {
    fieldError(passageInputs()[0], "Paste a passage.");
    showError("Paste at least one passage.");
    return;
  }
  const topK = Number.parseInt($("top-k").value, 10);
  const common = { question: question.text, top_k: Number.isFinite(topK) ? topK : 1, allow_no_answer: $("no-answer").checked };
  const [url, payload] =
    sent.length === 1 ? ["answer", { ...common, context: sent[0].text }] : ["read", { ...common, passages: sent.map((p) => p.text) }];
  const controller = new AbortController();
  inFlight = controller;
  editedDuring = false;
  const timer = setTimeout(() => controller.abort("timeout"), settings.timeoutMs);
  setBusy(true);
  setStatus("Answering…");
  const t0 = performance.now();
  const keyTyped = $("api-key").value;
  try {
    const headers = { "content-type": "application/json", ...authHeaders() };
    const r = await fetch(url, { method: "POST", headers, body: JSON.stringify(payload), signal: controller.signal });
    const body = await r.json().catch(() => ({}));
    controller.signal.throwIfAborted();
    if (!r.ok) {
      showServerError(r, body, question, sent, Boolean(keyTyped));
      return;
    }
    if (keyTyped) sessionStorage.setItem(KEY_STORE, keyTyped);
    showResults(sent, body);
    const ms = Math.round(performance.now() - t0);
    setStatus(
      `${plural(body.answers.length, "answer")} from ${plural(sent.length, "passage")} · ` +
        `${plural(body.windows, "window")} · ${fmt(ms)} ms · POST /${url}`,
    );
    if (!limits) loadModel(); // a 401 kept the model info and limits from us before the key was given
  } catch (e) {
    const why = controller.signal.aborted ? controller.signal.reason : null;
    if (why === "timeout") {
      showError(`No answer after ${settings.timeoutMs / 1000} s. The server may be busy: try again, or with shorter passages.`);
    } else if (why === "cancel") {
      setStatus("Cancelled.");
    } else if (why === null) {
      showError(`Could not reach the server (${e.message}).`);
    } // "replaced": an example took its place, and already cleared the page
  } finally {
    clearTimeout(timer);
    inFlight = null;
    setBusy(false);
  }
}

async function loadModel() {
  try {
    const ready = await fetch("readyz");
    if (!ready.ok) {
      $("model").textContent = "model loading…";
      setTimeout(loadModel, 1000);
      return;
    }
    const r = await fetch("v1/models", { headers: authHeaders() });
    if (r.status === 401) {
      $("model").textContent = "this server needs an API key";
      sessionStorage.removeItem(KEY_STORE); // a key kept from before that no longer works
      showKeyField();
      return;
    }
    const models = await r.json();
    const info = models.data[0];
    $("model").textContent = `${info.name} · ${info.precision} · ${info.execution_provider} · ${info.languages.join(", ")}`;
    limits = models.limits ?? null;
    applyLimits();
  } catch (e) {
    $("model").textContent = `server unreachable: ${e}`;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  addPassage();
  countQuestion();
  $("add-passage").addEventListener("click", () => {
    addPassage().focus();
    edited();
  });
  $("example-en").addEventListener("click", () => loadExample(EXAMPLES.en));
  $("example-ko").addEventListener("click", () => loadExample(EXAMPLES.ko));
  $("cancel").addEventListener("click", () => inFlight?.abort("cancel"));
  $("ask").addEventListener("submit", ask);
  $("ask").addEventListener("input", (e) => {
    if (e.target === $("api-key")) return; // the key changes no answer
    if (e.target === $("question")) countQuestion();
    if (e.target.classList.contains("passage")) {
      countPassage(e.target);
      countTotal();
    }
    edited(e.target);
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault(); // no newline in the passage
      $("ask").requestSubmit();
    }
  });
  if (/Mac|iPhone|iPad/.test(navigator.platform)) $("hint").textContent = "⌘+Enter";
  loadModel();
});
