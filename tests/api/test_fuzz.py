"""Schemathesis fuzzes the OpenAPI contract in-process: no 5xx, and every response matches the published schema."""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app.main import create_app
from app.settings import Settings
from tests.support.fake_engine import FakeEngine

# Small limits so that generated data reaches them; the fake engine refuses long contexts as the real one does.
SETTINGS = Settings(max_question_chars=200, max_context_chars=2000, max_batch_items=8, max_body_bytes=1 << 20)
app = create_app(SETTINGS, lambda s, m: FakeEngine(max_context_words=200))
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


EXAMPLES = 500  # per operation; the three QA operations alone make 1,500 cases


@pytest.mark.slow  # 20 s of fuzzing: the full suite runs it, the edit loop does not
def test_contract() -> None:
    """Every operation fuzzed in one test, so that the count below does not depend on test order (or on which
    worker runs which test)."""
    statuses: Counter[int] = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case: schemathesis.Case) -> None:
            # Schema-valid data may still be refused: text that tokenizes to nothing, or blank after stripping,
            # is a 422 the schema cannot express; so the "positive data is accepted" check does not apply here.
            response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
            statuses[response.status_code] += 1
            assert response.status_code < 500, response.text

        fuzz()
    print(f"fuzz statuses: {dict(sorted(statuses.items()))}")
    # the issue asked for at least 1,000 cases with 0 5xx
    assert sum(statuses.values()) >= 1000, statuses
