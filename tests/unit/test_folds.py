"""Article specs: the splits a build trains, calibrates and tests on."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from model_export.data import articles_spec, parse_articles


def test_specs_parse_ranges_unions_and_open_ends():
    assert parse_articles("0:3", 10) == [0, 1, 2]
    assert parse_articles("0:2, 5:7", 10) == [0, 1, 5, 6]
    assert parse_articles("8:", 10) == [8, 9] and parse_articles("4", 10) == [4]
    assert parse_articles(None, 3) == [0, 1, 2]


@pytest.mark.parametrize("spec", ["500:502", "140", "3:3", "0:2,150:"])
def test_a_part_that_selects_no_article_is_refused_by_name(spec: str):
    # slicing would quietly select nothing; every command that reads the data would then fail further on, or
    # (a union's part) train on less than asked
    with pytest.raises(ValueError, match=r"selects none of the 140 articles"):
        parse_articles(spec, 140)


@given(st.lists(st.integers(0, 200), min_size=1, unique=True).map(sorted))
def test_articles_spec_round_trips_in_one_range_per_run(articles: list[int]):
    spec = articles_spec(articles)
    assert parse_articles(spec, 201) == articles
    gaps = sum(1 for a, b in itertools.pairwise(articles) if b != a + 1)
    assert len(spec.split(",")) == gaps + 1
