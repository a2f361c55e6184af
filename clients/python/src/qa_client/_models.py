"""Request and response types: requests carry only the options the caller set; responses are parsed leniently."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from qa_client._errors import QAError

# Options are sent only when set: the server refuses unknown fields (extra=forbid), so a server older than an
# option still answers every call that leaves it unset.


def options(**given: Any) -> dict[str, Any]:
    return {k: v for k, v in given.items() if v is not None}


@dataclass(frozen=True)
class Passage:
    """One passage for `read`. A Passage with only `text` is sent as a plain string."""

    text: str
    id: str | None = None
    title: str | None = None
    meta: Mapping[str, Any] | None = field(default=None, hash=False)

    def to_json(self) -> str | dict[str, Any]:
        body = options(text=self.text, id=self.id, title=self.title, meta=self.meta)
        # a plain string is what every server version accepts, and it means the same
        return self.text if body.keys() == {"text"} else body


@dataclass(frozen=True)
class AnswerItem:
    """One item of `batch_answer`; the options left None are not sent (the server's defaults apply)."""

    question: str
    context: str
    top_k: int | None = None
    max_answer_length: int | None = None
    allow_no_answer: bool | None = None
    min_score: float | None = None
    allow_overlap: bool | None = None
    align_to_words: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return options(**{f.name: getattr(self, f.name) for f in fields(self)})


def passage_json(p: str | Passage | Mapping[str, Any]) -> str | dict[str, Any]:
    if isinstance(p, str):
        return p
    if isinstance(p, Passage):
        return p.to_json()
    if isinstance(p, Mapping):
        return options(**p)
    raise TypeError(f"a passage is a str, a Passage or a dict, not {type(p).__name__}")


def item_json(item: AnswerItem | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(item, AnswerItem):
        return item.to_json()
    if isinstance(item, Mapping):
        return options(**item)
    raise TypeError(f"a batch item is an AnswerItem or a dict, not {type(item).__name__}")


@dataclass(frozen=True)
class Answer:
    """One answer span: `text == context[start:end]`, offsets in Unicode code points (Python str indices)."""

    text: str
    score: float
    start: int
    end: int


@dataclass(frozen=True)
class Snippet:
    """Text around a /read answer: `text[start:end]` is the answer's text."""

    text: str
    start: int
    end: int


@dataclass(frozen=True)
class ReadAnswer(Answer):
    """A /read answer: `text == passages[passage][start:end]`; `id` and `title` are the passage's (None for a plain
    string); `snippet` is the answer in about 100 characters of its passage (with `return_context`)."""

    passage: int | None = None
    id: str | None = None
    title: str | None = None
    snippet: Snippet | None = None


@dataclass(frozen=True)
class AnswerResult:
    """/answer's response. `raw` is the decoded JSON, for fields newer than this client."""

    answers: tuple[Answer, ...]
    model: str | None = None
    no_answer_score: float | None = None
    windows: int | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def best(self) -> Answer | None:
        """The top answer, or None when there is none (with allow_no_answer, or min_score)."""
        return self.answers[0] if self.answers else None


@dataclass(frozen=True)
class ReadResult:
    """/read's response. `raw` is the decoded JSON, for fields newer than this client."""

    answers: tuple[ReadAnswer, ...]
    model: str | None = None
    no_answer_score: float | None = None
    windows: int | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def best(self) -> ReadAnswer | None:
        """The top answer, or None when there is none (with allow_no_answer, or min_score)."""
        return self.answers[0] if self.answers else None


@dataclass(frozen=True)
class Health:
    """/livez or /readyz: `ok` is the status code's verdict (200), `status` and `detail` the body's words."""

    ok: bool
    status: str
    detail: str = ""

    def __bool__(self) -> bool:
        return self.ok


# Parsing: the four span fields and `answers` are the API's core, so their absence is an error; everything
# else is optional (None when missing) and unknown fields are ignored, so a newer server still parses.


def _bad(what: str, value: Any) -> QAError:
    return QAError(f"unexpected response: {what} is {value!r:.200}")


def _int(d: Mapping[str, Any], key: str) -> int:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or int(v) != v:
        raise _bad(f"answer {key!r}", v)
    return int(v)


def _opt_int(d: Mapping[str, Any], key: str) -> int | None:
    v = d.get(key)
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) and int(v) == v else None


def _opt_float(d: Mapping[str, Any], key: str) -> float | None:
    v = d.get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _opt_str(d: Mapping[str, Any], key: str) -> str | None:
    v = d.get(key)
    return None if v is None else str(v)


def _span(d: Any) -> tuple[str, float, int, int]:
    if not isinstance(d, Mapping):
        raise _bad("an answer", d)
    text, score = d.get("text"), _opt_float(d, "score")
    if not isinstance(text, str):
        raise _bad("answer 'text'", text)
    if score is None:
        raise _bad("answer 'score'", d.get("score"))
    return text, score, _int(d, "start"), _int(d, "end")


def _snippet(d: Any) -> Snippet | None:
    if not isinstance(d, Mapping) or not isinstance(d.get("text"), str):
        return None
    start, end = _opt_int(d, "start"), _opt_int(d, "end")
    return None if start is None or end is None else Snippet(d["text"], start, end)


def _answers(body: Mapping[str, Any]) -> Iterable[Any]:
    answers = body.get("answers")
    if not isinstance(answers, list):
        raise _bad("'answers'", answers)
    return answers


def _body(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise _bad("the body", body)
    return body


def parse_answer_result(body: Any) -> AnswerResult:
    body = _body(body)
    return AnswerResult(
        answers=tuple(Answer(*_span(a)) for a in _answers(body)),
        model=_opt_str(body, "model"),
        no_answer_score=_opt_float(body, "no_answer_score"),
        windows=_opt_int(body, "windows"),
        raw=body,
    )


def parse_read_result(body: Any) -> ReadResult:
    body = _body(body)
    return ReadResult(
        answers=tuple(
            ReadAnswer(
                *_span(a),
                passage=_opt_int(a, "passage"),
                id=_opt_str(a, "id"),
                title=_opt_str(a, "title"),
                snippet=_snippet(a.get("snippet")),
            )
            for a in _answers(body)
        ),
        model=_opt_str(body, "model"),
        no_answer_score=_opt_float(body, "no_answer_score"),
        windows=_opt_int(body, "windows"),
        raw=body,
    )


def parse_batch_results(body: Any) -> list[AnswerResult]:
    results = _body(body).get("results")
    if not isinstance(results, list):
        raise _bad("'results'", results)
    return [parse_answer_result(r) for r in results]


def parse_health(body: Any, ok: bool) -> Health:
    body = body if isinstance(body, Mapping) else {}
    return Health(ok, str(body.get("status", "")), str(body.get("detail", "")))
