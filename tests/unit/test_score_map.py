"""Fitting the ScoreMap: each family recovers a known miscalibration, and the rule picks a map only when it helps."""

from __future__ import annotations

import numpy as np
import pytest

from app.engine.spans import ScoreMap
from model_export.score_map import (
    Question,
    choose,
    ece,
    fit,
    fit_null,
    fit_platt,
    fit_temperature,
    log_loss,
    top_probability,
)


def synthetic(n: int, temperature: float, seed: int = 0, articles: int = 8) -> list[Question]:
    """Questions whose best span is right with probability softmax(logits / temperature)[0]: shares computed at
    temperature 1 are then under-confident (T < 1) or over-confident (T > 1) by a known amount."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        logits = np.sort(rng.normal(0, 2.5, 12))[::-1]
        p = ScoreMap("temperature", (temperature,)).spans(logits)[0]
        out.append(Question(logits, bool(rng.random() < p), float(rng.normal(-8, 2)), i % articles))
    return out


def test_temperature_is_recovered():
    qs = synthetic(3000, 0.6)
    assert fit_temperature(qs) == pytest.approx(0.6, rel=0.1)


def test_a_fitted_map_calibrates_what_the_raw_share_does_not():
    qs = synthetic(3000, 0.6, seed=1)
    test = synthetic(3000, 0.6, seed=2)
    right = np.array([q.right for q in test])
    raw = np.array([top_probability(ScoreMap(), q) for q in test])
    for family in ("temperature", "platt"):
        m = fit(family, qs)
        cal = np.array([top_probability(m, q) for q in test])
        assert ece(cal, right) < 0.03 < ece(raw, right)
        assert log_loss(cal, right) < log_loss(raw, right)


def test_platt_keeps_its_slope_positive():
    qs = synthetic(500, 1.0)
    a, _ = fit_platt(qs)
    assert a > 0


def test_the_rule_keeps_the_raw_share_when_it_is_already_calibrated_and_maps_when_it_is_not():
    calibrated = choose(synthetic(800, 1.0, seed=3))
    assert calibrated["chosen"] == "identity"
    off = choose(synthetic(800, 0.5, seed=4))
    assert off["chosen"] in ("temperature", "platt")
    figures = off["out_of_article"]
    assert figures[off["chosen"]]["log_loss"] < figures["identity"]["log_loss"]


def test_null_map_separates_answerable_from_cross_article_pairs():
    rng = np.random.default_rng(0)
    own = rng.normal(-8, 2, 400)
    cross = rng.normal(2, 2, 400)
    alpha, beta = fit_null(own, cross)
    m = ScoreMap(null=(alpha, beta))
    assert alpha > 0
    assert np.mean([m.no_answer(x) for x in own]) < 0.05 and np.mean([m.no_answer(x) for x in cross]) > 0.95
    # a question without any candidate span has an infinite margin: certainly no answer, and the fit stays finite
    a2, b2 = fit_null(own, np.concatenate([cross, [np.inf]]))
    assert np.isfinite([a2, b2]).all()


def test_null_map_stays_a_probability_when_the_classes_barely_overlap():
    """Like the shipped model's dev slice, where plain Newton steps overshot (slope 9e7: no_answer_score became a
    0/1 step): answerable and cross-article margins overlap in a handful of pairs; some cross-article pairs with no
    candidate at all (an infinite margin) are added. The fit must stay finite and graded, with its boundary
    between the two clouds."""
    rng = np.random.default_rng(0)
    own = np.concatenate([rng.normal(-12, 5, 258), [-1.0, 0.5, 3.0]])
    cross = np.concatenate([rng.normal(14, 5, 240), np.full(18, np.inf), [2.0, 4.0, 6.0]])
    alpha, beta = fit_null(own, cross)
    assert 0 < alpha < 5
    m = ScoreMap(null=(alpha, beta))
    assert 0.05 < m.no_answer(0.0) < 0.95  # graded where the clouds meet
    assert m.no_answer(-20.0) < 0.01 and m.no_answer(30.0) > 0.99
    assert -beta / alpha == pytest.approx((own.max() + cross[np.isfinite(cross)].min()) / 2, abs=8)


def test_ece_and_log_loss():
    scores = np.array([0.9, 0.9, 0.1, 0.1])
    right = np.array([1, 1, 0, 0])
    assert ece(scores, right) == pytest.approx(0.1)
    assert log_loss(scores, right) == pytest.approx(-np.log(0.9))
