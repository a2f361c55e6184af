"""Python client of the extractive QA service: QAClient (sync) and AsyncQAClient (async).

from qa_client import QAClient

with QAClient("http://localhost:8000") as qa:
    print(qa.answer("한국의 수도는?", "한국의 수도는 서울이다.").best)
"""

from qa_client._client import DEFAULT_BASE_URL, AsyncQAClient, QAClient
from qa_client._errors import (
    DeadlineExceeded,
    FieldError,
    InvalidRequest,
    Overloaded,
    QAConnectionError,
    QAError,
    QAHTTPError,
    Unauthorized,
    Unavailable,
)
from qa_client._models import Answer, AnswerItem, AnswerResult, Health, Passage, ReadAnswer, ReadResult, Snippet
from qa_client._version import __version__

__all__ = [
    "DEFAULT_BASE_URL",
    "Answer",
    "AnswerItem",
    "AnswerResult",
    "AsyncQAClient",
    "DeadlineExceeded",
    "FieldError",
    "Health",
    "InvalidRequest",
    "Overloaded",
    "Passage",
    "QAClient",
    "QAConnectionError",
    "QAError",
    "QAHTTPError",
    "ReadAnswer",
    "ReadResult",
    "Snippet",
    "Unauthorized",
    "Unavailable",
    "__version__",
]
