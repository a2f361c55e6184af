"""Request and response bodies; limits come from Settings so OpenAPI shows the real ones."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    create_model,
    field_validator,
    model_validator,
)

from app.settings import Settings


def check_text(value: str) -> str:
    """Reject what would break the tokenizer or cannot hold an answer."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        # JSON allows "\ud800"; pydantic passes it, the tokenizer then raises TypeError (a 500)
        raise ValueError(f"contains a lone surrogate at character {e.start}; send valid Unicode") from None
    if not value.strip():
        raise ValueError("must not be empty or whitespace only")
    return value


# The meaning of the numbers, in one sentence: the README, the OpenAPI schema and the demo page state it alike
# (tests/contract/test_readme.py checks that they agree).
SCORE_RULE = (
    "score is the probability that the span is exactly the answer, and no_answer_score the probability that the "
    "passages hold no answer; with allow_no_answer, only answers more probable than no answer (or than min_score, "
    "if you pass it) are returned."
)

KOREAN_EXAMPLE = {
    "question": "캐시 크루즈의 셋째 딸의 이름은?",
    "context": "캐시 크루즈의 셋째 딸 한느와 그녀의 남편 하인즈 알더는 1990년 "
    "캐시 크루즈 회사의 경영권을 크리스텐슨에게 넘긴다.",
    "top_k": 2,
}
ENGLISH_PASSAGES = [
    {
        "id": "doc-7",
        "title": "Eiffel Tower",
        "text": "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris. It is named after "
        "the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889.",
    },
    "The Statue of Liberty was designed by Frédéric Auguste Bartholdi and its metal framework was built by "
    "Gustave Eiffel.",
]


class AnswerOptions(BaseModel):
    """What every question may ask of decoding (the fields common to /answer, its batch items and /read)."""

    # strict: "3" is not a top_k and 1 is not a bool; extra=forbid catches typos such as "topk"
    model_config = ConfigDict(strict=True, extra="forbid")

    top_k: int = Field(1, description="How many answers, best first. They never overlap unless allow_overlap.")
    max_answer_length: int = Field(30, description="Longest answer, in model tokens.")
    allow_no_answer: bool = Field(
        False,
        description="Let the model say that the passages hold no answer: no_answer_score is then the probability "
        "of that, answers are scored jointly with it, and only answers more probable than it come back (an empty "
        "list means no answer).",
    )
    min_score: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Return only answers scoring at least this. With allow_no_answer it replaces the comparison "
        "with no_answer_score.",
    )
    allow_overlap: bool = Field(
        False,
        description="Also return spans that overlap a better one (fragments such as 'Gustave' beside "
        "'Gustave Eiffel'). Off: the top_k answers are distinct spans.",
    )
    align_to_words: bool = Field(
        False,
        description="Widen spans to whole words, for English and other space-separated languages. Korean "
        "particles then stay attached ('시위를'), so leave it off for Korean.",
    )

    @model_validator(mode="before")
    @classmethod
    def _integral_floats(cls, data: Any) -> Any:
        # JSON Schema's "integer" admits 12.0, so the OpenAPI contract does too; "12" and true stay errors.
        # (A field-level BeforeValidator would drop the minimum/maximum from the published schema.)
        if isinstance(data, dict):
            for name in ("top_k", "max_answer_length"):
                value = data.get(name)
                if isinstance(value, float) and value.is_integer():
                    data = {**data, name: int(value)}
            # 0 and 1 are valid probabilities: an integral min_score is a float here
            if isinstance(data.get("min_score"), int) and not isinstance(data.get("min_score"), bool):
                data = {**data, "min_score": float(data["min_score"])}
        return data


class AnswerRequestBase(AnswerOptions):
    question: str = Field(description="The question.")
    context: str = Field(description="The passage to find the answer in.")

    @field_validator("question", "context")
    @classmethod
    def _text(cls, v: str) -> str:
        return check_text(v)


class PassageBase(BaseModel):
    """A retriever's hit: its text, and the id (and title, metadata) that identify it in your store."""

    model_config = ConfigDict(strict=True, extra="forbid")

    text: str = Field(description="The passage.")
    id: str | None = Field(None, max_length=256, description="Your id for it; answers from it echo it.")
    title: str | None = Field(None, max_length=1000, description="Its title, if any; answers from it echo it.")
    meta: dict[str, Any] | None = Field(
        None, description="Anything else your retriever attached; accepted so hits can be sent as they are, not used."
    )

    @model_validator(mode="before")
    @classmethod
    def _plain_string(cls, data: Any) -> Any:
        # a bare string is a passage without id: errors then name passages.N.text for both forms
        if isinstance(data, str):
            return {"text": data}
        if not isinstance(data, dict):
            raise ValueError("must be a string, or an object with text (and optionally id, title, meta)")
        return data

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        return check_text(v)


class ReadRequestBase(AnswerOptions):
    question: str = Field(description="The question.")
    passages: list[PassageBase]
    return_context: bool = Field(
        False, description="Give each answer a snippet of about 100 characters of its passage around the span."
    )

    @field_validator("question")
    @classmethod
    def _text(cls, v: str) -> str:
        return check_text(v)


SCORE = f"Probability that this span is exactly the answer. {SCORE_RULE}"
NO_ANSWER_SCORE = (
    "With allow_no_answer: the probability that the passages hold no answer (null otherwise). An empty answers "
    "list with a high no_answer_score means 'not in these passages'."
)


class AnswerOut(BaseModel):
    text: str = Field(description="Exactly context[start:end].")
    score: float = Field(description=SCORE)
    start: int = Field(description="Start offset in characters (Unicode code points) of the context.")
    end: int = Field(description="End offset (exclusive).")


class AnswerResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "answers": [
                        {"text": "한느", "score": 0.62, "start": 13, "end": 15},
                        {"text": "크리스텐슨", "score": 0.04, "start": 58, "end": 63},
                    ],
                    "model": "korquad-e5-small",
                    "no_answer_score": None,
                    "windows": 1,
                }
            ]
        }
    )

    answers: list[AnswerOut] = Field(description="Best first, at most top_k.")
    model: str = Field(description="The bundle's name.")
    no_answer_score: float | None = Field(None, description=NO_ANSWER_SCORE)
    windows: int = Field(description="How many model windows the context needed.")


class BatchAnswerResponse(BaseModel):
    results: list[AnswerResponse] = Field(description="One result per item, in the order of the items.")


class Snippet(BaseModel):
    text: str = Field(description="About 100 characters of the passage around the answer, cut at spaces.")
    start: int = Field(description="Where the answer starts in this snippet: text[start:end] is the answer.")
    end: int = Field(description="Where the answer ends in this snippet (exclusive).")


class ReadAnswerOut(BaseModel):
    text: str = Field(description="Exactly passages[passage].text[start:end].")
    score: float = Field(description=SCORE)
    passage: int = Field(description="Index of the passage in the request's `passages`.")
    id: str | None = Field(None, description="The passage's id, when it was sent with one.")
    title: str | None = Field(None, description="The passage's title, when it was sent with one.")
    start: int = Field(description="Start offset in characters (Unicode code points) of that passage.")
    end: int = Field(description="End offset (exclusive).")
    snippet: Snippet | None = Field(None, description="With return_context: the answer in its surroundings.")


class ReadResponse(BaseModel):
    answers: list[ReadAnswerOut] = Field(description="Best spans across all passages, best first, at most top_k.")
    model: str = Field(description="The bundle's name.")
    no_answer_score: float | None = Field(None, description=NO_ANSWER_SCORE)
    windows: int = Field(description="How many model windows all passages needed together.")


class ErrorField(BaseModel):
    field: str = Field(
        description="Where in the body, as a dotted path: 'context', 'items.2.question', 'passages.1.text'."
    )
    reason: str = Field(description="What is wrong with it.")


class ErrorBody(BaseModel):
    code: str = Field(description="A stable code for the kind of error (docs/api.md lists every one).")
    message: str = Field(description="What happened and what to do, for a person.")
    fields: list[ErrorField] = Field([], description="The inputs at fault, when the error is about the request.")
    request_id: str | None = Field(None, description="The X-Request-ID of the request, also in the server's log.")


class ErrorResponse(BaseModel):
    error: ErrorBody = Field(description="Every error has this shape, whatever the status.")


def _limits(settings: Settings) -> dict[str, Any]:
    """The option fields with this deployment's limits: the same for /answer, its batch items and /read."""
    return {
        "top_k": (
            Annotated[
                int, Field(ge=1, le=settings.max_top_k, description=AnswerOptions.model_fields["top_k"].description)
            ],
            1,
        ),
        "max_answer_length": (
            Annotated[
                int,
                Field(
                    ge=1,
                    le=settings.max_answer_length_limit,
                    description=AnswerOptions.model_fields["max_answer_length"].description,
                ),
            ],
            30,
        ),
    }


def _text_field(limit: int, what: str, example: str | None = None) -> Any:
    extra = {"examples": [example]} if example else {}
    return Annotated[
        str, Field(min_length=1, max_length=limit, description=f"{what} 1 to {limit} characters.", **extra)
    ]


def request_models(settings: Settings) -> tuple[type[AnswerRequestBase], type[BaseModel], type[ReadRequestBase]]:
    """AnswerRequest, BatchAnswerRequest and ReadRequest with this deployment's limits baked in."""
    limits = _limits(settings)
    question = _text_field(settings.max_question_chars, "The question.", KOREAN_EXAMPLE["question"])  # type: ignore[arg-type]
    answer: type[AnswerRequestBase] = create_model(
        "AnswerRequest",
        __base__=AnswerRequestBase,
        __config__=None,
        question=(question, ...),
        context=(
            _text_field(
                settings.max_context_chars,
                f"The passage to find the answer in; at most {settings.max_windows_per_request} model windows (the "
                "422 says how many characters of such text fit).",
                KOREAN_EXAMPLE["context"],  # type: ignore[arg-type]
            ),
            ...,
        ),
        **limits,
    )
    answer.model_config["json_schema_extra"] = {"examples": [KOREAN_EXAMPLE]}
    batch: type[BaseModel] = create_model(
        "BatchAnswerRequest",
        __config__=ConfigDict(
            strict=True,
            extra="forbid",
            json_schema_extra={
                "examples": [
                    {
                        "items": [
                            KOREAN_EXAMPLE,
                            {"question": "대한민국의 수도는?", "context": "서울은 대한민국의 수도이다."},
                        ]
                    }
                ]
            },
        ),
        items=(
            Annotated[
                list[answer],  # type: ignore[valid-type]
                Field(
                    min_length=1,
                    max_length=settings.max_batch_items,
                    description=f"1 to {settings.max_batch_items} questions, each with its context and options; "
                    f"their contexts hold at most {settings.max_total_chars} characters together.",
                ),
                AfterValidator(_total_chars(settings, lambda items: [i.context for i in items], "contexts")),
            ],
            ...,
        ),
    )
    passage: type[PassageBase] = create_model(
        "Passage",
        __base__=PassageBase,
        text=(_text_field(settings.max_context_chars, "The passage."), ...),
    )
    one_passage = {
        "anyOf": [
            {"type": "string", "minLength": 1, "maxLength": settings.max_context_chars},
            passage.model_json_schema(),
        ]
    }
    read: type[ReadRequestBase] = create_model(
        "ReadRequest",
        __base__=ReadRequestBase,
        question=(question, ...),
        passages=(
            Annotated[
                list[Annotated[passage, WithJsonSchema(one_passage)]],  # type: ignore[valid-type]
                Field(
                    min_length=1,
                    max_length=settings.max_passages,
                    description=f"1 to {settings.max_passages} passages, at most {settings.max_total_chars} "
                    "characters together: each a string, or an object with text and optionally id, title and meta.",
                ),
                AfterValidator(_total_chars(settings, lambda ps: [p.text for p in ps], "passages")),
            ],
            ...,
        ),
        **limits,
    )
    read.model_config["json_schema_extra"] = {
        "examples": [
            {
                "question": "Who designed the Eiffel Tower?",
                "passages": ENGLISH_PASSAGES,
                "top_k": 2,
                "return_context": True,
            }
        ]
    }
    return answer, batch, read


def _total_chars(settings: Settings, texts: Any, what: str) -> Any:
    def check(value: list[Any]) -> list[Any]:
        total = sum(len(t) for t in texts(value))
        if total > settings.max_total_chars:
            raise ValueError(f"{what} hold {total} characters together; at most {settings.max_total_chars}")
        return value

    return check


def answer_response(result: Any, model: str) -> AnswerResponse:
    return AnswerResponse(
        answers=[AnswerOut(text=a.text, score=a.score, start=a.start, end=a.end) for a in result.answers],
        model=model,
        no_answer_score=result.no_answer_score,
        windows=result.windows,
    )


SNIPPET_CHARS = 100  # about this much of the passage around an answer, as Haystack's reader gives
SNIPPET_SLACK = 20  # how far a cut may move to land on a space


def snippet(text: str, start: int, end: int) -> Snippet:
    """About SNIPPET_CHARS characters of `text` around [start, end), cut at spaces where one is near."""
    room = max(0, SNIPPET_CHARS - (end - start)) // 2
    lo, hi = max(0, start - room), min(len(text), end + room)
    if lo > 0:
        space = text.find(" ", lo, min(start, lo + SNIPPET_SLACK))
        lo = space + 1 if space >= 0 else lo
    if hi < len(text):
        space = text.rfind(" ", max(end, hi - SNIPPET_SLACK), hi)
        hi = space if space >= 0 else hi
    return Snippet(text=text[lo:hi], start=start - lo, end=end - lo)


def read_response(result: Any, model: str, passages: list[PassageBase], return_context: bool) -> ReadResponse:
    return ReadResponse(
        answers=[
            ReadAnswerOut(
                text=a.text,
                score=a.score,
                passage=a.passage,
                id=passages[a.passage].id,
                title=passages[a.passage].title,
                start=a.start,
                end=a.end,
                snippet=snippet(passages[a.passage].text, a.start, a.end) if return_context else None,
            )
            for a in result.answers
        ],
        model=model,
        no_answer_score=result.no_answer_score,
        windows=result.windows,
    )
