"""Request and response bodies; limits come from Settings so OpenAPI shows the real ones."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

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


class AnswerRequestBase(BaseModel):
    # strict: "3" is not a top_k and 1 is not a bool; extra=forbid catches typos such as "topk"
    model_config = ConfigDict(strict=True, extra="forbid")

    question: str
    context: str
    top_k: int = 1
    max_answer_length: int = 30
    allow_no_answer: bool = False

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
        return data

    @field_validator("question", "context")
    @classmethod
    def _text(cls, v: str) -> str:
        return check_text(v)


class AnswerOut(BaseModel):
    text: str = Field(description="Exactly context[start:end].")
    score: float = Field(
        description="Estimated probability that the span is right: its softmax share over the request's candidate "
        "spans, mapped by the bundle's score calibration (the raw share when the bundle has none)."
    )
    start: int = Field(description="Start offset in characters (Unicode code points) of the context.")
    end: int = Field(description="End offset (exclusive).")


class AnswerResponse(BaseModel):
    answers: list[AnswerOut]
    model: str
    no_answer_score: float | None = Field(None, description="Probability of 'no answer'; only with allow_no_answer.")
    windows: int = Field(description="How many model windows the context needed.")


class BatchAnswerResponse(BaseModel):
    results: list[AnswerResponse]


class ReadAnswerOut(BaseModel):
    text: str = Field(description="Exactly passages[passage][start:end].")
    score: float = Field(
        description="Estimated probability that the span is right: its softmax share over the candidate spans of "
        "all passages, mapped by the bundle's score calibration (the raw share when the bundle has none)."
    )
    passage: int = Field(description="Index of the passage in the request's `passages`.")
    start: int = Field(description="Start offset in characters (Unicode code points) of that passage.")
    end: int = Field(description="End offset (exclusive).")


class ReadResponse(BaseModel):
    answers: list[ReadAnswerOut] = Field(description="Best spans across all passages, best first.")
    model: str
    no_answer_score: float | None = Field(
        None, description="Probability that no passage holds the answer; only with allow_no_answer."
    )
    windows: int = Field(description="How many model windows all passages needed together.")


class ReadRequestBase(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    question: str
    passages: list[str]
    top_k: int = 1
    max_answer_length: int = 30
    allow_no_answer: bool = False

    @field_validator("question")
    @classmethod
    def _text(cls, v: str) -> str:
        return check_text(v)


class ErrorField(BaseModel):
    field: str
    reason: str


class ErrorBody(BaseModel):
    code: str
    message: str
    fields: list[ErrorField] = []
    request_id: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


def request_models(settings: Settings) -> tuple[type[AnswerRequestBase], type[BaseModel], type[ReadRequestBase]]:
    """AnswerRequest, BatchAnswerRequest and ReadRequest with this deployment's limits baked in."""
    answer: type[AnswerRequestBase] = create_model(
        "AnswerRequest",
        __base__=AnswerRequestBase,
        question=(Annotated[str, Field(min_length=1, max_length=settings.max_question_chars)], ...),
        context=(Annotated[str, Field(min_length=1, max_length=settings.max_context_chars)], ...),
        top_k=(Annotated[int, Field(ge=1, le=settings.max_top_k)], 1),
        max_answer_length=(
            Annotated[int, Field(ge=1, le=settings.max_answer_length_limit, description="In tokens.")],
            30,
        ),
    )
    batch: type[BaseModel] = create_model(
        "BatchAnswerRequest",
        __config__=ConfigDict(strict=True, extra="forbid"),
        items=(Annotated[list[answer], Field(min_length=1, max_length=settings.max_batch_items)], ...),  # type: ignore[valid-type]
    )
    passage = Annotated[str, Field(min_length=1, max_length=settings.max_context_chars), AfterValidator(check_text)]

    def total_chars(passages: list[str]) -> list[str]:
        total = sum(len(p) for p in passages)
        if total > settings.max_total_chars:
            raise ValueError(f"passages hold {total} characters together; at most {settings.max_total_chars}")
        return passages

    read: type[ReadRequestBase] = create_model(
        "ReadRequest",
        __base__=ReadRequestBase,
        question=(Annotated[str, Field(min_length=1, max_length=settings.max_question_chars)], ...),
        passages=(
            Annotated[
                list[passage],  # type: ignore[valid-type]
                Field(
                    min_length=1,
                    max_length=settings.max_passages,
                    description=f"1..{settings.max_passages} passages, at most {settings.max_total_chars} "
                    "characters together.",
                ),
                AfterValidator(total_chars),
            ],
            ...,
        ),
        top_k=(Annotated[int, Field(ge=1, le=settings.max_top_k)], 1),
        max_answer_length=(
            Annotated[int, Field(ge=1, le=settings.max_answer_length_limit, description="In tokens.")],
            30,
        ),
    )
    return answer, batch, read


def answer_response(result: Any, model: str) -> AnswerResponse:
    return AnswerResponse(
        answers=[AnswerOut(text=a.text, score=a.score, start=a.start, end=a.end) for a in result.answers],
        model=model,
        no_answer_score=result.no_answer_score,
        windows=result.windows,
    )


def read_response(result: Any, model: str) -> ReadResponse:
    return ReadResponse(
        answers=[
            ReadAnswerOut(text=a.text, score=a.score, passage=a.passage, start=a.start, end=a.end)
            for a in result.answers
        ],
        model=model,
        no_answer_score=result.no_answer_score,
        windows=result.windows,
    )
