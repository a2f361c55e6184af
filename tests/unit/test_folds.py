"""Article specs and folds: the splits out-of-fold calibration trains and scores on."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from model_export.data import article_folds, articles_spec, parse_articles


def test_specs_parse_ranges_unions_and_open_ends():
    assert parse_articles("0:3", 10) == [0, 1, 2]
    assert parse_articles("0:2, 5:7", 10) == [0, 1, 5, 6]
    assert parse_articles("8:", 10) == [8, 9] and parse_articles("4", 10) == [4]
    assert parse_articles(None, 3) == [0, 1, 2]


@pytest.mark.parametrize("spec", ["500:502", "140", "3:3", "0:2,150:"])
def test_a_part_that_selects_no_article_is_refused_by_name(spec: str):
    # slicing would quietly select nothing; every command that reads the data would then fail further on, or
    # (a fold's fit articles) train on less than asked
    with pytest.raises(ValueError, match=r"selects none of the 140 articles"):
        parse_articles(spec, 140)


@given(st.lists(st.integers(0, 200), min_size=1, unique=True).map(sorted))
def test_articles_spec_round_trips_in_one_range_per_run(articles: list[int]):
    spec = articles_spec(articles)
    assert parse_articles(spec, 201) == articles
    gaps = sum(1 for a, b in itertools.pairwise(articles) if b != a + 1)
    assert len(spec.split(",")) == gaps + 1


@given(st.integers(0, 50), st.integers(2, 60), st.integers(2, 12))
def test_every_article_is_held_out_exactly_once_and_never_fitted_on_by_its_fold(lo: int, n: int, k: int):
    spec = f"{lo}:{lo + n}"
    if k > n:
        with pytest.raises(ValueError, match="folds need"):
            article_folds(spec, k, 200)
        return
    folds = article_folds(spec, k, 200)
    held = [parse_articles(h, 200) for _, h in folds]
    assert sorted(a for h in held for a in h) == list(range(lo, lo + n))
    for (fit, _), h in zip(folds, held, strict=True):
        assert h == list(range(h[0], h[-1] + 1))  # one contiguous block
        assert sorted(parse_articles(fit, 200) + h) == list(range(lo, lo + n))
        assert n // k <= len(h) <= -(-n // k)  # balanced
