"""The shared local-model path (windows -> padded batches -> logits -> spans) and the service predictor."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from app.engine.windows import WindowSpec
from model_export import evaluate
from model_export.__main__ import main
from model_export.data import Example
from model_export.evaluate import ServicePredictor, Span, WindowPredictor, evaluate_predictor

FILLER = ["조선", "시대의", "학자들은", "여러", "책을", "펴냈다."]
START_WORDS = ["세종대왕은", "집현전은"]
END_WORDS = ["1443년에", "1420년에"]


def tiny_tokenizer(texts):
    """A word-level tokenizer with BERT-style specials, built from the test strings."""
    words = sorted({w for t in texts for w in t.split()})
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3} | {w: i + 4 for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    return tok


def make_examples():
    """Contexts of different lengths, each holding one start word and one end word, in changing places."""
    examples = []
    for i in range(7):
        before = " ".join(FILLER[j % len(FILLER)] for j in range(3 * i + 1))
        after = " ".join(FILLER[(j + 2) % len(FILLER)] for j in range(11 - i))
        answer = f"{START_WORDS[i % 2]} {END_WORDS[i % 2]}"
        context = f"{before} {answer} 훈민정음을 {after}"
        examples.append(
            Example(f"q{i}", "t", f"{START_WORDS[i % 2]} 언제 문제 {i}?", context, ((answer, len(before) + 1),))
        )
    return examples


def peak_logits(tokenizer, calls):
    """Fake model: high start logit on START_WORDS tokens, high end logit on END_WORDS tokens."""
    start_ids = [tokenizer.token_to_id(w) for w in START_WORDS]
    end_ids = [tokenizer.token_to_id(w) for w in END_WORDS]

    def run(batch):
        calls.append({k: v.shape for k, v in batch.items()})
        ids = batch["input_ids"]
        rng = np.random.default_rng(0)
        start = rng.normal(0, 0.1, ids.shape).astype(np.float32)
        end = rng.normal(0, 0.1, ids.shape).astype(np.float32)
        start[np.isin(ids, start_ids)] += 10
        end[np.isin(ids, end_ids)] += 10
        # padding gets the highest logits of all: decoding must never see it
        start[batch["attention_mask"] == 0] = 100
        end[batch["attention_mask"] == 0] = 100
        return start, end

    return run


@pytest.fixture
def local():
    examples = make_examples()
    tok = tiny_tokenizer([e.context for e in examples] + [e.question for e in examples])
    calls = []
    # 16 tokens per window forces several windows per context, with the answer in only some of them
    predictor = WindowPredictor(
        tok, peak_logits(tok, calls), WindowSpec(16, 4, 8), pad_id=0, batch_size=3, chunk_examples=4
    )
    return examples, predictor, calls


def test_predictions_are_exact_context_substrings(local):
    examples, predictor, calls = local
    spans = predictor.predict([(e.question, e.context) for e in examples], top_k=5, max_answer_length=4)
    assert len(spans) == len(examples)
    for e, ranked in zip(examples, spans, strict=True):
        text, start = e.answers[0]
        assert ranked[0] == Span(text, ranked[0].score, start, start + len(text))
        for s in ranked:
            assert e.context[s.start : s.end] == s.text
            assert len(s.text.split()) <= 4
        assert [s.score for s in ranked] == sorted((s.score for s in ranked), reverse=True)
    # batched by 3 windows at a time, padded to a multiple of 8
    assert all(shape["input_ids"][0] <= 3 and shape["input_ids"][1] % 8 == 0 for shape in calls)
    assert len(calls) > len(examples) // 3


def test_batches_are_length_sorted(local):
    examples, predictor, calls = local
    predictor.batch_size = 1
    predictor.predict([(e.question, e.context) for e in examples[:4]], top_k=1, max_answer_length=4)
    widths = [shape["input_ids"][1] for shape in calls]
    assert widths == sorted(widths, reverse=True)


def test_evaluate_predictor_writes_the_three_files(local, tmp_path):
    examples, predictor, _ = local
    result = evaluate_predictor(predictor, examples, tmp_path, max_answer_length=4, n_best=3, meta={"variant": "x"})
    assert result["korquad"] == {"exact_match": 100.0, "f1": 100.0}
    assert result["squad"] == {"exact_match": 100.0, "f1": 100.0}
    assert result["n"] == result["answered"] == len(examples)
    assert result["variant"] == "x"
    predictions = json.loads((tmp_path / "predictions.json").read_text(encoding="utf-8"))
    nbest = json.loads((tmp_path / "nbest.json").read_text(encoding="utf-8"))
    assert predictions == {e.id: e.answers[0][0] for e in examples}
    assert set(nbest) == set(predictions)
    assert all(1 <= len(v) <= 3 and set(v[0]) == {"text", "score", "start", "end"} for v in nbest.values())
    assert json.loads((tmp_path / "scores.json").read_text(encoding="utf-8")) == result


def test_manifest_scores(local):
    examples, predictor, _ = local
    result = evaluate_predictor(predictor, examples, meta={"variant": "int8"})
    scores = evaluate.manifest_scores(result, "korquad-1.0-dev", "112:140")
    assert [(s.metric, s.variant, s.n, s.f1) for s in scores] == [
        ("squad", "int8", len(examples), 100.0),
        ("korquad", "int8", len(examples), 100.0),
    ]


class _FakeService(BaseHTTPRequestHandler):
    """Answers each item with the first word of its context."""

    requests: ClassVar[list] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _FakeService.requests.append((self.path, body))
        results = []
        for item in body["items"]:
            word = item["context"].split()[0]
            results.append({"answers": [{"text": word, "score": 0.9, "start": 0, "end": len(word)}]})
        payload = json.dumps({"results": results}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def service_url():
    _FakeService.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeService)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_service_predictor_over_http(service_url):
    predictor = ServicePredictor(service_url, batch_size=2)
    spans = predictor.predict([("q", "세종대왕은 말했다"), ("q", "훈민정음 창제"), ("q", "a b")], 5, 30)
    assert [s[0].text for s in spans] == ["세종대왕은", "훈민정음", "a"]
    assert [p for p, _ in _FakeService.requests] == ["/batch_answer", "/batch_answer"]
    assert _FakeService.requests[0][1]["items"][0] == {"question": "q", "context": "세종대왕은 말했다", "top_k": 5}


def test_service_predictor_rejects_a_short_reply():
    predictor = ServicePredictor("http://svc", post=lambda url, body: {"results": []})
    with pytest.raises(RuntimeError, match="expected 1 results"):
        predictor.predict([("q", "c")], 1, 30)


def test_service_predictor_needs_http():
    with pytest.raises(ValueError, match="http"):
        ServicePredictor("file:///etc/passwd")


def test_evaluate_cli_against_a_service(service_url, tmp_path, capsys):
    data = {
        "data": [
            {
                "title": "a",
                "paragraphs": [
                    {
                        "context": "세종대왕은 훈민정음을 만들었다",
                        "qas": [
                            {"id": "x1", "question": "누가?", "answers": [{"text": "세종대왕", "answer_start": 0}]}
                        ],
                    }
                ],
            },
            {
                "title": "b",
                "paragraphs": [
                    {
                        "context": "훈민정음 창제",
                        "qas": [
                            {"id": "x2", "question": "무엇?", "answers": [{"text": "훈민정음", "answer_start": 0}]}
                        ],
                    }
                ],
            },
        ]
    }
    path = tmp_path / "d.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    argv = ["evaluate", "--model", service_url, "--data", str(path), "--articles", "0:2", "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    # x1: "세종대왕은" vs "세종대왕": EM 0, character F1 2*0.8*1/1.8; x2 exact
    assert printed["korquad"]["exact_match"] == 50.0
    assert printed["korquad"]["f1"] == pytest.approx(100 * (8 / 9 + 1) / 2)
    assert printed["variant"] == "service"
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["nbest.json", "predictions.json", "scores.json"]


def test_open_predictor_rejects_an_unknown_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a service URL"):
        evaluate.open_predictor(str(tmp_path))
