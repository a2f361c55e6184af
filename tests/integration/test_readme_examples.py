"""Every curl of README.md and docs/api.md against the real server on the shipped model: the status, and the shown
output (same keys, strings and offsets; scores within 0.05). A new model: python -m scripts.readme_examples --write."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.api.schemas import SCORE_RULE
from scripts.readme_examples import REPO, Example, check, parse_files
from tests.support.server import Server, running_server

EXAMPLES = parse_files()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with running_server({"QA_MODEL_DIR": str(REPO / "models" / "default"), "QA_LOG_LEVEL": "warning"}) as s:
        yield s


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.id for e in EXAMPLES])
def test_example(server: Server, example: Example) -> None:
    wrong_status, diffs, _ = check(server.base, example)
    assert wrong_status is None, wrong_status
    assert not diffs, "\n".join([*diffs, "if the model changed: python -m scripts.readme_examples --write"])


def test_openapi_states_the_score_rule(server: Server) -> None:
    status, spec = server.call("/openapi.json")
    assert status == 200
    for model in ("AnswerOut", "ReadAnswerOut"):
        description = " ".join(spec["components"]["schemas"][model]["properties"]["score"]["description"].split())
        assert " ".join(SCORE_RULE.split()) in description, model
