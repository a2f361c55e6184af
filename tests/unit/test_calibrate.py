"""Calibration and abstention: the fitting functions on synthetic outcomes whose truth is known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tokenizers import Tokenizer

from app.engine.spans import calibrated, sigmoid
from app.engine.windows import WindowSpec, encode_windows
from model_export import held_out
from model_export.__main__ import main
from model_export.calibrate import (
    Outcome,
    auroc,
    cross_fitted,
    ece,
    ece_floor,
    fit_null_threshold,
    fit_platt,
    log_loss,
    measure,
    outcomes,
    top_score,
    top_share,
)
from model_export.data import Example
from model_export.metrics import Metric
from tests.support.tiny_model import KORQUAD_DEV


def outcome(share_logit: float, null_margin: float, exact: float) -> Outcome:
    # two candidates: the top one's share is sigmoid(share_logit)
    logits = np.array([share_logit, 0.0])
    return Outcome(logits, float(logits[0] + null_margin), "x", exact, 100 * exact)


def test_platt_recovers_a_known_miscalibration():
    rng = np.random.default_rng(0)
    z = rng.normal(0.5, 1.5, 4000)  # log-odds of the raw share
    true_p = 1 / (1 + np.exp(-(2.0 * z - 0.5)))  # the truth is sharper and shifted
    own = [outcome(x, -5, float(rng.random() < p)) for x, p in zip(z, true_p, strict=True)]
    a, b = fit_platt(own)
    assert abs(a - 2.0) < 0.2 and abs(b + 0.5) < 0.2
    raw = np.array([top_share(o) for o in own])
    fixed = np.array([calibrated(s, (a, b)) for s in raw])
    correct = np.array([o.exact for o in own])
    assert ece(fixed, correct) < 0.03 < ece(raw, correct)


@pytest.mark.parametrize("exact", [0.0, 1.0])
def test_platt_stays_finite_when_every_answer_is_wrong_or_every_one_right(exact: float):
    # a barely trained model gets every answer wrong: the unsmoothed fit ran its scores down to exactly 0
    own = [outcome(x, -5, exact) for x in np.linspace(-3, 3, 109)]
    a, b = fit_platt(own)
    scores = np.array([top_score(o, (a, b)) for o in own])
    assert np.isfinite([a, b]).all() and ((scores > 0) & (scores < 1)).all()
    # the smoothed base rate, 1/111 or 110/111, rather than 0 or 1
    assert abs(scores.mean() - (1 / 111 if exact == 0 else 110 / 111)) < 1e-3


def test_cross_fitted_scores_each_part_with_a_map_fitted_on_the_others():
    rng = np.random.default_rng(2)

    def part(shift: float) -> list[Outcome]:
        z = rng.normal(0.5, 1.5, 1000)
        return [outcome(x, -5, float(rng.random() < 1 / (1 + np.exp(-(2 * x - shift))))) for x in z]

    alike = cross_fitted([part(0.5), part(0.5), part(0.5)])
    # parts that disagree: each is scored by the others' map, which the in-sample fit would hide
    unlike = cross_fitted([part(-1.5), part(0.5), part(2.5)])
    assert alike["ece"] < alike["ece_floor"]["p90"] * 1.5 < unlike["ece"]
    assert alike["log_loss"] < unlike["log_loss"]
    pooled = [o for p in ([part(-1.5), part(0.5), part(2.5)]) for o in p]
    pooled_map = fit_platt(pooled)
    in_sample = np.array([top_score(o, pooled_map) for o in pooled])
    assert ece(in_sample, np.array([o.exact for o in pooled])) < unlike["ece"]


def test_log_loss_of_sure_and_of_coin_flip_scores():
    correct = np.array([1.0, 0.0, 1.0, 0.0])
    assert log_loss(np.array([1.0, 0.0, 1.0, 0.0]), correct) < 1e-6
    assert abs(log_loss(np.full(4, 0.5), correct) - np.log(2)) < 1e-12


def test_the_null_margin_weight_is_recovered_and_kept_only_when_it_cannot_reorder():
    rng = np.random.default_rng(3)
    z, margin = rng.normal(0.5, 1.5, 4000), rng.uniform(-12, 4, 4000)

    def fit(c_true: float) -> tuple[float, ...]:
        true_p = 1 / (1 + np.exp(-(1.5 * z - 0.5 + c_true * margin)))
        return fit_platt(
            [outcome(x, m, float(rng.random() < p)) for x, m, p in zip(z, margin, true_p, strict=True)], True
        )

    a, b, c = fit(-0.2)
    assert abs(a - 1.5) < 0.15 and abs(b + 0.5) < 0.3 and abs(c + 0.2) < 0.04
    own = [outcome(1.0, m, 0.0) for m in (-10.0, 0.0)]
    assert top_score(own[0], (a, b, c)) > top_score(own[1], (a, b, c))  # a passage unlikely to hold an answer
    assert len(fit(0.2)) == 2  # a positive weight would let a worse span outscore a better one: plain Platt


def test_an_outcome_without_candidates_scores_near_zero_not_nan():
    # no span, so its null margin is infinite: a map without a margin weight must not turn that into 0 * inf
    empty = Outcome(np.array([]), 1.0, "", 0.0, 0.0)
    assert 0 <= top_score(empty, (1.2, 0.3)) < 1e-9 and top_score(empty, (1.2, 0.3, -0.1)) < 1e-9


@given(st.floats(0, 1), st.floats(0.1, 5), st.floats(-3, 3))
def test_calibration_is_monotone_and_identity_by_default(p: float, a: float, b: float):
    assert calibrated(p, (1.0, 0.0)) == p
    q = min(p + 0.05, 1.0)
    assert calibrated(p, (a, b)) <= calibrated(q, (a, b)) + 1e-12


@given(st.floats(-1e6, 1e6))
def test_sigmoid_is_the_logistic_function_without_overflow(z: float):
    with np.errstate(over="raise", invalid="raise"):  # an overflow in exp raises here instead of warning
        p = float(sigmoid(z))
    assert 0.0 <= p <= 1.0 and p == pytest.approx(1 / (1 + np.exp(-np.clip(z, -700, 700))), rel=1e-12, abs=1e-300)
    assert float(sigmoid(-z)) == pytest.approx(1 - p, abs=1e-15)


def test_platt_on_an_always_wrong_model_scores_near_the_smoothed_base_rate():
    # Newton runs the log-odds to large negative values here; neither the fit nor the map may overflow or NaN
    own = [Outcome(np.array([2.0, 0.0, -1.0]), 0.0, "x", 0.0, 0.0) for _ in range(50)]
    with np.errstate(over="raise", invalid="raise"):
        a, b = fit_platt(own)
        score = top_score(own[0], (a, b))
    assert score == pytest.approx(1 / 52, rel=1e-3)


def test_ece_of_perfect_and_of_overconfident_scores():
    scores = np.array([0.95] * 100 + [0.25] * 100)
    assert ece(scores, np.array([1] * 95 + [0] * 5 + [1] * 25 + [0] * 75)) < 1e-9
    assert abs(ece(np.full(100, 0.9), np.array([1] * 50 + [0] * 50)) - 0.4) < 1e-9


def test_ece_floor_is_what_perfect_scores_show_and_shrinks_with_more_questions():
    rng = np.random.default_rng(1)
    scores = rng.uniform(0.2, 0.95, 4000)
    measured = [ece(scores[:n], (rng.random(n) < scores[:n]).astype(float)) for n in (250, 4000)]
    small, large = ece_floor(scores[:250]), ece_floor(scores)
    assert large["mean"] < small["mean"] / 2 and small["mean"] < small["p90"]
    # perfectly calibrated outcomes land near the floor; 0.1 too confident lands far above it
    assert measured[1] < large["p90"] * 1.5
    assert ece(scores, (rng.random(4000) < scores - 0.1).astype(float)) > 3 * large["p90"]


def test_auroc_bounds_and_ties():
    assert auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 0.0
    assert auroc(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.5


def test_null_threshold_sits_between_separable_sets_and_measures_follow():
    own = [outcome(2.0, m, 1.0) for m in np.linspace(-10, 1, 50)]
    cross = [outcome(2.0, m, 0.0) for m in np.linspace(5, 12, 50)]
    t = fit_null_threshold(own, cross)
    assert 1 < t < 5 and abs(t - 3) < 1e-9  # the middle of the gap
    m = measure(own, cross, (1.0, 0.0), t)
    assert m["answered_share"] == 1.0 and m["cross_article_abstain_share"] == 1.0
    assert m["auroc_null_margin"] == 1.0
    assert m["em_f1_with_abstention"] == m["em_f1_no_abstention"]


def test_dev_logits_appear_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The build reuses a dev_logits.npz it finds; a write cut short must leave none behind."""
    examples = [Example(f"q{i}", f"article {i}", "질문?", f"문단 {i}. 하나.", (("하나", 6),)) for i in range(3)]

    def logits_of(ex: list[Example]) -> list[list[tuple[np.ndarray, np.ndarray]]]:
        return [[(np.zeros(5), np.ones(5))] for _ in ex]

    path = tmp_path / "calibrate" / "dev_logits.npz"
    real_savez = np.savez

    def cut_short(file: Path, **arrays: np.ndarray) -> None:
        if Path(file).name not in ("own.npz", "cross.npz"):  # the write of the whole file
            Path(file).write_bytes(b"PK\x03\x04 half a zip")
            raise KeyboardInterrupt  # what the end of a sitting looks like
        real_savez(file, **arrays)

    monkeypatch.setattr(held_out.np, "savez", cut_short)
    with pytest.raises(KeyboardInterrupt):
        held_out.write_dev_logits(logits_of, examples, path)
    assert not path.exists()

    monkeypatch.setattr(held_out.np, "savez", real_savez)
    assert held_out.write_dev_logits(logits_of, examples, path) == path
    with np.load(path) as z:
        assert [str(i) for i in z["own/ids"]] == ["q0", "q1", "q2"] and len(z["cross/ids"]) == 3
    assert sorted(p.name for p in path.parent.iterdir()) == ["dev_logits.npz"]  # no parts left behind


def test_calibration_runs_only_answerable_questions(tmp_path: Path) -> None:
    """A SQuAD 2.0 question without an answer would count as a wrong answer, where abstaining is right."""
    qas = [
        {"id": "a", "question": "q1", "answers": [{"text": "x", "answer_start": 0}]},
        {"id": "b", "question": "q2", "answers": [], "is_impossible": True},
    ]
    data = {"data": [{"title": t, "paragraphs": [{"context": "x y", "qas": qas}]} for t in ("t1", "t2")]}
    (tmp_path / "v2.json").write_text(json.dumps(data), encoding="utf-8")
    assert [e.id for e in held_out.calibration_questions(str(tmp_path / "v2.json"), "0:2")] == ["a", "a"]


@pytest.mark.parametrize(("metric", "right"), [("korquad", 0.0), ("squad", 1.0)])
def test_whose_exact_match_judges_the_top_answer(wordpiece: Tokenizer, metric: Metric, right: float) -> None:
    """SQuAD's exact match drops English articles, KorQuAD's keeps them: "the Eiffel Tower" against the gold
    "Eiffel Tower" is right by one and wrong by the other, and calibration fits to whichever the user chose."""
    context = "the Eiffel Tower is in Paris"
    ex = Example("q", "t", "Which tower is in Paris?", context, (("Eiffel Tower", 4),))
    [windows] = encode_windows(wordpiece, [(ex.question, ex.context)], WindowSpec(64, 16, 16))
    [window] = windows
    start, end = np.full(len(window), -10.0, np.float32), np.full(len(window), -10.0, np.float32)
    start[next(i for i, (s, _) in enumerate(window.offsets) if s == 0 and i >= window.context_start)] = 10.0
    end[next(i for i, (_, e) in enumerate(window.offsets) if e == len("the Eiffel Tower"))] = 10.0
    [o] = outcomes([ex], [windows], [[(start, end)]], (), metric=metric)
    assert o.text == "the Eiffel Tower" and o.exact == right


@pytest.mark.parametrize(
    ("data", "articles", "message"),
    [
        ("missing.json", "0:2", "No such file or directory: 'missing.json'"),
        (str(KORQUAD_DEV), "500:502", "'500:502' selects none of the 140 articles"),
        (str(KORQUAD_DEV), "0:2", "no manifest.json; is this a model bundle"),
    ],
)
def test_calibrate_command_reports_bad_input_in_one_line(
    data: str, articles: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["calibrate", "--bundle", str(tmp_path), "--data", data, "--articles", articles, "--out", str(tmp_path)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("calibrate: ") and message in err and "Traceback" not in err, err
