"""Schemathesis fuzzes the OpenAPI contract in-process: no 5xx, and every response matches the published schema."""

from __future__ import annotations

from collections import Counter

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app.main import create_app
from app.settings import Settings
from tests.support.fake_engine import FakeEngine

# Small limits so that generated data reaches them; the fake engine refuses long contexts as the real one does.
SETTINGS = Settings(max_question_chars=200, max_context_chars=2000, max_batch_items=8, max_body_bytes=1 << 20)
app = create_app(SETTINGS, lambda s, m: FakeEngine(max_context_words=200))
schema = schemathesis.openapi.from_asgi("/openapi.json", app)
STATUSES: Counter[int] = Counter()
EXAMPLES = 500  # per operation; the two QA operations alone make 1,000 cases


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_contract(case: schemathesis.Case) -> None:
    # Schema-valid data may still be refused: text that tokenizes to nothing, or blank after stripping, is
    # a 422 the schema cannot express; so the "positive data is accepted" check does not apply here.
    response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
    STATUSES[response.status_code] += 1
    assert response.status_code < 500, response.text


def test_fuzzing_ran_enough_cases():
    # runs after test_contract (file order): the issue asks for at least 1,000 cases with 0 5xx
    print(f"fuzz statuses: {dict(sorted(STATUSES.items()))}")
    assert sum(STATUSES.values()) >= 1000, STATUSES
    assert not [s for s in STATUSES if s >= 500]
