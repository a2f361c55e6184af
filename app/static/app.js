// Demo page: no framework, no build step, no CDN. User text only ever goes into textContent.
"use strict";

const EXAMPLE = {
  question: "캐시 크루즈의 셋째 딸의 이름은?",
  passages: [
    "캐시 크루즈의 셋째 딸 한느와 그녀의 남편 하인즈 알더는 1990년 캐시 크루즈 회사의 경영권을 크리스텐슨에게 넘긴다.",
    "에펠탑은 파리에 있는 철탑이다. 1889년 만국박람회를 위해 완공되었다.",
  ],
};

const $ = (id) => document.getElementById(id);

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

function renumber() {
  const boxes = Array.from(document.querySelectorAll("#passages .passage-input"));
  boxes.forEach((box, i) => {
    box.querySelector("label").textContent = `Passage ${i + 1}`;
    box.querySelector("button.remove").hidden = boxes.length === 1;
  });
}

function addPassage(text = "") {
  const id = `passage-${Date.now()}-${Math.floor(Math.random() * 1e6)}`;
  const area = el("textarea", { id, class: "passage", placeholder: "지문을 붙여 넣으세요 / Paste a passage" });
  area.value = text;
  // grow with the text up to 10 rows; longer passages scroll
  const fit = () => (area.rows = Math.min(10, Math.max(3, area.value.split("\n").length, Math.ceil(area.value.length / 70))));
  area.addEventListener("input", fit);
  fit();
  const remove = el("button", { type: "button", class: "link remove", title: "Remove this passage" }, "remove");
  const box = el("div", { class: "passage-input" }, el("div", { class: "passage-head" }, el("label", { for: id }), remove), area);
  remove.addEventListener("click", () => {
    box.remove();
    renumber();
  });
  $("passages").append(box);
  renumber();
  return area;
}

function setStatus(text, isError = false) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("error", isError);
}

// The server counts offsets in Unicode code points (Python str indices); JS strings are UTF-16, so an
// emoji before the answer would shift UTF-16 indices. Array.from splits a string into code points.
function highlighted(text, answers) {
  const chars = Array.from(text);
  const rankAt = new Array(chars.length).fill(0);
  // worst rank first, so where answers overlap the better one shows
  for (const a of [...answers].sort((x, y) => y.rank - x.rank)) {
    for (let i = a.start; i < a.end && i < chars.length; i++) rankAt[i] = a.rank;
  }
  const out = el("pre", { class: "passage-text" });
  let i = 0;
  while (i < chars.length) {
    let j = i;
    while (j < chars.length && rankAt[j] === rankAt[i]) j++;
    const piece = chars.slice(i, j).join("");
    const rank = rankAt[i];
    if (rank === 0) out.append(piece);
    else out.append(el("mark", { class: `rank-${rank <= 3 ? rank : "more"}`, "data-rank": String(rank), title: `answer #${rank}` }, piece));
    i = j;
  }
  return out;
}

function showResults(passages, indices, body) {
  const answers = body.answers.map((a, k) => ({ ...a, rank: k + 1, passage: indices[a.passage ?? 0] }));
  const tbody = $("answers").querySelector("tbody");
  tbody.replaceChildren();
  for (const a of answers) {
    tbody.append(
      el(
        "tr",
        { class: "answer", "data-passage": String(a.passage) },
        el("td", { class: "num" }, String(a.rank)),
        el("td", { class: "text" }, a.text),
        el("td", { class: "num score" }, a.score.toFixed(4)),
        el("td", { class: "num" }, String(a.passage + 1)),
        el("td", { class: "num" }, `${a.start}–${a.end}`),
      ),
    );
  }
  const na = $("no-answer-score");
  na.replaceChildren();
  if (body.no_answer_score !== null && body.no_answer_score !== undefined) {
    na.append(`No-answer score: ${body.no_answer_score.toFixed(4)}`);
    if (answers.length === 0) na.append(el("strong", { class: "no-answer" }, " — no answer in the passages"));
  } else if (answers.length === 0) {
    na.append("No answer found.");
  }
  const rendered = $("rendered");
  rendered.replaceChildren();
  passages.forEach((text, i) => {
    const mine = answers.filter((a) => a.passage === i);
    const title = `Passage ${i + 1}` + (mine.length ? ` — ${mine.length} answer${mine.length > 1 ? "s" : ""}` : "");
    rendered.append(el("section", { class: "passage-view", "data-passage": String(i) }, el("h3", {}, title), highlighted(text, mine)));
  });
  $("results").hidden = false;
  // long passages scroll inside their box: bring each best answer into view there
  for (const pre of rendered.querySelectorAll(".passage-text")) {
    const first = [...pre.querySelectorAll("mark")].sort((x, y) => x.dataset.rank - y.dataset.rank)[0];
    if (first) pre.scrollTop = Math.max(0, first.offsetTop - pre.offsetTop - pre.clientHeight / 3);
  }
}

// The server may require a bearer token (QA_API_KEY). The key field shows once a call comes back 401;
// the key lives only in this tab's sessionStorage.
function authHeaders() {
  const key = $("api-key").value || sessionStorage.getItem("qa-api-key") || "";
  return key ? { authorization: `Bearer ${key}` } : {};
}

function needKey() {
  $("api-key-label").hidden = false;
  $("api-key").focus();
}

async function ask(event) {
  event.preventDefault();
  const question = $("question").value;
  const all = passageInputs().map((t) => t.value);
  const indices = all.map((_, i) => i).filter((i) => all[i].trim() !== "");
  if (!question.trim() || indices.length === 0) {
    setStatus("Enter a question and at least one passage.", true);
    return;
  }
  const topK = Number.parseInt($("top-k").value, 10);
  const common = { question, top_k: Number.isFinite(topK) ? topK : 1, allow_no_answer: $("no-answer").checked };
  const passages = indices.map((i) => all[i]);
  const [url, payload] =
    passages.length === 1 ? ["answer", { ...common, context: passages[0] }] : ["read", { ...common, passages }];
  $("submit").disabled = true;
  setStatus("Answering…");
  const t0 = performance.now();
  try {
    const headers = { "content-type": "application/json", ...authHeaders() };
    const r = await fetch(url, { method: "POST", headers, body: JSON.stringify(payload) });
    const body = await r.json().catch(() => ({}));
    if (r.status === 401) needKey();
    else if ($("api-key").value) sessionStorage.setItem("qa-api-key", $("api-key").value);
    if (!r.ok) {
      const err = body.error || {};
      setStatus(`${r.status} ${err.code || ""}: ${err.message || r.statusText}`, true);
      return;
    }
    showResults(all, indices, body);
    const ms = Math.round(performance.now() - t0);
    setStatus(`${body.answers.length} answer(s) from ${passages.length} passage(s), ${body.windows} window(s), ${ms} ms (POST /${url})`);
  } catch (e) {
    setStatus(`Request failed: ${e}`, true);
  } finally {
    $("submit").disabled = false;
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
    const models = await fetch("v1/models", { headers: authHeaders() });
    if (models.status === 401) {
      $("model").textContent = "this server needs an API key";
      needKey();
      return;
    }
    const info = (await models.json()).data[0];
    $("model").textContent = `${info.name} · ${info.precision} · ${info.execution_provider} · ${info.languages.join(", ")}`;
  } catch (e) {
    $("model").textContent = `server unreachable: ${e}`;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  addPassage();
  $("add-passage").addEventListener("click", () => addPassage().focus());
  $("example").addEventListener("click", () => {
    $("question").value = EXAMPLE.question;
    document.querySelectorAll("#passages .passage-input").forEach((b) => b.remove());
    EXAMPLE.passages.forEach((p) => addPassage(p));
  });
  $("ask").addEventListener("submit", ask);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("ask").requestSubmit();
  });
  loadModel();
});
