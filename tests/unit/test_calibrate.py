"""Calibration: the outcomes it fits on are what the service's ScoreMap sees, the figures follow the service's rule,
the fit becomes manifest fields, and the logits cache is reused only for the same served file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tokenizers import Tokenizer

from app.engine.bundle import Manifest
from app.engine.spans import PassageLogits, ScoreMap, calibrated, decode_passages, sigmoid
from app.engine.windows import WindowSpec, encode_windows
from model_export import calibrate
from model_export.__main__ import main
from model_export.calibrate import (
    HeldOut,
    Outcome,
    answers,
    auroc,
    calibration_questions,
    ece_floor,
    fit_held_out,
    legacy_fields,
    measure,
    outcomes,
    questions,
    read_logits,
    top_probability,
    trained_on,
    write_logits,
)
from model_export.data import Example
from model_export.export import ExportError
from model_export.metrics import Metric
from model_export.score_map import ece
from model_export.stages import calibration_fields
from tests.support.tiny_model import KORQUAD_DEV

MAPS = [
    ScoreMap(),
    ScoreMap("temperature", (1.7,), (0.8, -1.0)),
    ScoreMap("platt", (1.3, -0.4), (0.5, 2.0)),
]
CONTEXT = (
    "서울은 대한민국의 수도이다. 부산은 항구 도시이고, 인천에는 국제공항이 있다. "
    "The Eiffel Tower is in Paris; it was completed in 1889 for the World's Fair."
)


def outcome(share_logit: float, null_margin: float, exact: float, title: str = "t") -> Outcome:
    # two candidates: the top one's share is sigmoid(share_logit)
    logits = np.array([share_logit, 0.0])
    return Outcome(logits, float(logits[0] + null_margin), "x", exact, exact, title)


# ---------------------------------------------------------------- the outcomes are the service's candidates


def random_question(wordpiece: Tokenizer, seed: int) -> tuple[Example, list, list]:
    """A question over CONTEXT in several windows, with random logits full of near-ties and overlapping spans."""
    ex = Example("q", "t", "수도는 어디인가?", CONTEXT, (("서울", 0),))
    [windows] = encode_windows(wordpiece, [(ex.question, ex.context)], WindowSpec(32, 8, 12))
    rng = np.random.default_rng(seed)
    logits = [
        (rng.normal(0, 1.5, len(w)).astype(np.float32), rng.normal(0, 1.5, len(w)).astype(np.float32)) for w in windows
    ]
    return ex, windows, logits


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("m", MAPS, ids=lambda m: m.kind)
def test_an_outcome_predicts_the_service_s_score_and_abstention(wordpiece: Tokenizer, seed: int, m: ScoreMap) -> None:
    """What calibration fits on must be what the service scores: from an outcome's candidate logits the map gives the
    top answer's score of a default request, its no_answer_score with allow_no_answer, and whether it answers."""
    ex, windows, logits = random_question(wordpiece, seed)
    assert len(windows) > 1
    [o] = outcomes([ex], [windows], [logits], ())
    passage = PassageLogits(ex.context, windows, [s for s, _ in logits], [e for _, e in logits])
    served = decode_passages([passage], top_k=1, max_answer_length=30, score_map=m)  # a default request
    assert served.answers[0].logit == o.logits[0] and served.answers[0].text == o.text
    assert served.answers[0].score == pytest.approx(top_probability(m, o), abs=1e-12)
    abstaining = decode_passages([passage], top_k=1, max_answer_length=30, score_map=m, allow_no_answer=True)
    assert abstaining.no_answer_score == pytest.approx(m.no_answer(o.margin), abs=1e-12)
    assert bool(abstaining.answers) == answers(m, o)
    # the distinct answers a request gets are fewer: the map sees every candidate, overlapping ones too
    distinct = decode_passages([passage], top_k=calibrate.ALL_CANDIDATES, max_answer_length=30)
    assert len(distinct.answers) < len(o.logits)
    assert list(o.logits) == sorted(o.logits, reverse=True)


def test_an_outcome_without_candidates_scores_zero_and_abstains():
    empty = Outcome(np.array([]), 1.0, "", 0.0, 0.0)
    assert empty.margin == np.inf
    for m in MAPS:
        assert top_probability(m, empty) == 0.0 and not answers(m, empty)


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
    assert o.text == "the Eiffel Tower" and o.exact == right and o.title == "t"


def test_calibration_runs_only_answerable_questions(tmp_path: Path) -> None:
    """A SQuAD 2.0 question without an answer would count as a wrong answer, where abstaining is right."""
    qas = [
        {"id": "a", "question": "q1", "answers": [{"text": "x", "answer_start": 0}]},
        {"id": "b", "question": "q2", "answers": [], "is_impossible": True},
    ]
    data = {"data": [{"title": t, "paragraphs": [{"context": "x y", "qas": qas}]} for t in ("t1", "t2")]}
    (tmp_path / "v2.json").write_text(json.dumps(data), encoding="utf-8")
    assert [e.id for e in calibration_questions(str(tmp_path / "v2.json"), "0:2")] == ["a", "a"]


def test_questions_number_articles_by_title() -> None:
    own = [outcome(1.0, -5, 1.0, "b"), outcome(0.0, -5, 0.0, "a"), outcome(2.0, 1, 1.0, "b")]
    assert [(q.article, q.right, q.margin) for q in questions(own)] == [
        (0, True, -5.0),
        (1, False, -5.0),
        (0, True, 1.0),
    ]


# ---------------------------------------------------------------- the figures, under the service's rule


def test_measure_follows_the_rule_of_the_joint_map():
    """With allow_no_answer an answer comes back only when (1 - P0) * its span probability exceeds P0."""
    own = [outcome(2.0, m, 1.0) for m in np.linspace(-10, -2, 40)] + [outcome(-1.0, -8.0, 0.0)] * 10
    cross = [outcome(2.0, m, 0.0) for m in np.linspace(4, 12, 50)]
    sharp_null = ScoreMap(null=(2.0, 0.0))  # P0 = sigmoid(2 * margin): < 0.02 on own, > 0.9997 on cross
    m = measure(own, cross, sharp_null)
    assert m["n_answerable"] == 50 and m["n_cross_article"] == 50
    assert m["answered_share"] == 1.0 and m["cross_article_abstain_share"] == 1.0 and m["auroc_null_margin"] == 1.0
    assert m["em_f1_with_abstention"] == m["em_f1_no_abstention"] == [80.0, 80.0]
    assert m["ece_before"] == m["ece_after"] and m["log_loss_before"] == m["log_loss_after"]  # identity span map
    # a null map that says "no answer" at margin -6: the answerable questions past it abstain, and score 0
    timid = measure(own, cross, ScoreMap(null=(2.0, 12.0)))
    expected = np.mean([answers(ScoreMap(null=(2.0, 12.0)), o) for o in own])
    assert 0 < timid["answered_share"] == expected < 1
    assert timid["em_f1_with_abstention"][0] < timid["em_f1_no_abstention"][0]
    # a span map that sharpens the top score: after differs from before, by the map's own top probabilities
    platt = ScoreMap("platt", (2.0, 0.5), (2.0, 0.0))
    fig = measure(own, cross, platt)
    after = np.array([top_probability(platt, o) for o in own])
    assert fig["ece_after"] == ece(after, np.array([o.exact for o in own])) != fig["ece_before"]
    assert fig["sharpness_after"]["share_above_0.9"] > fig["sharpness_before"]["share_above_0.9"]
    assert fig["score_map"] == {"kind": "platt", "params": [2.0, 0.5], "null": [2.0, 0.0]}


def held_out(seed: int = 0, n_articles: int = 6, per_article: int = 40) -> HeldOut:
    """Answerable outcomes whose top span is right with probability sigmoid(2 * share logit - 0.5) (the raw share
    is too timid), and cross-article outcomes with larger null margins."""
    rng = np.random.default_rng(seed)
    own, cross = [], []
    for a in range(n_articles):
        for _ in range(per_article):
            z = rng.normal(0.5, 1.5)
            own.append(outcome(z, rng.normal(-6, 2), float(rng.random() < sigmoid(2 * z - 0.5)), f"article {a}"))
            cross.append(outcome(rng.normal(0, 1), rng.normal(3, 2), 0.0, f"article {(a + 1) % n_articles}"))
    served_by = {"file": "model.int8.onnx", "runtime": "openvino", "sha256": "0" * 64}
    return HeldOut(own, cross, "dev.json articles 100:106", served_by)


def test_the_fit_becomes_a_score_map_the_manifest_accepts_with_the_legacy_fields():
    record, spec, m = fit_held_out(held_out(), "korquad")
    assert spec["chosen"] == m.kind != "identity" and set(spec["out_of_article"]) == {
        "identity",
        "temperature",
        "platt",
    }
    assert spec["fitted_on"] == record["fitted_on"] == "dev.json articles 100:106"
    assert (
        spec["held_out"]
        == "articles the shipped model never trained on, run through its served file (model.int8.onnx, openvino)"
    )
    assert "out of article" in spec["rule"] and record["metric"] == "korquad"
    assert (spec["kind"], spec["params"], spec["null"]) == (m.kind, list(m.params), list(m.null))
    assert record["ece_after"] < record["ece_before"] and record["cross_article_abstain_share"] > 0.8
    fields = calibration_fields(record, spec)
    manifest = Manifest.model_validate(
        {
            "name": "m",
            "languages": ["ko"],
            "base_model": "b",
            "max_seq_length": 384,
            "doc_stride": 128,
            "max_query_length": 64,
            "input_names": ["input_ids", "attention_mask"],
            "variants": {},
            "files": {},
        }
        | fields
    )
    assert manifest.score_map is not None and manifest.score_map.kind == m.kind
    assert manifest.score_map.model_extra["chosen"] == m.kind  # type: ignore[index]
    # legacy servers: the identity or Platt's (a, b), and a null answer even at the margin of P0 = 0.5
    alpha, beta = m.null
    assert manifest.null_threshold == pytest.approx(-beta / alpha)
    assert m.no_answer(manifest.null_threshold) == pytest.approx(0.5)
    assert list(manifest.score_calibration) == (list(m.params) if m.kind == "platt" else [1.0, 0.0])


def test_legacy_fields_of_each_family_and_a_null_map_that_runs_backwards():
    platt = legacy_fields(ScoreMap("platt", (1.2, -0.3), (0.5, 1.0)))
    assert platt == {"score_calibration": [1.2, -0.3], "null_threshold": -2.0}
    assert legacy_fields(ScoreMap("temperature", (1.5,), (2.0, 1.0)))["score_calibration"] == [1.0, 0.0]
    # P(no answer) falling with the null margin (a model that cannot abstain) has no such threshold: old servers
    # keep the manifest's default, and the record says why
    backwards = legacy_fields(ScoreMap(null=(-0.5, 1.0)))
    assert backwards["null_threshold"] == 0.0 and backwards["null_threshold_note"].startswith(
        "alpha -0.5 <= 0: P(no answer) does not rise"
    )
    assert calibration_fields(backwards, {"kind": "identity", "null": [-0.5, 1.0]})["null_threshold"] == 0.0
    with pytest.raises(ExportError, match="null_threshold"):  # and a threshold that is not finite is refused
        calibration_fields({"score_calibration": [1.0, 0.0], "null_threshold": float("inf")})


# ---------------------------------------------------------------- the logits cache


def test_cached_logits_are_reused_only_for_the_same_served_file_and_questions(tmp_path: Path) -> None:
    own = [Example(f"q{i}", f"t{i}", "질문?", f"문단 {i}.", (("문단", 0),)) for i in range(3)]
    cross = [Example(f"q{i}-cross", f"t{(i + 1) % 3}", "질문?", f"문단 {(i + 1) % 3}.", ()) for i in range(3)]
    rng = np.random.default_rng(0)
    own_logits = [
        [(rng.normal(size=n).astype(np.float32), rng.normal(size=n).astype(np.float32)) for n in (7, 5)] for _ in own
    ]
    cross_logits = [[(np.zeros(4, np.float32), np.ones(4, np.float32))] for _ in cross]
    key = {"file_sha256": "a" * 64, "runtime": "openvino", "tokenizer_sha256": "b" * 64, "windows": [128, 32, 32]}
    path = tmp_path / "calibrate" / "served_logits.npz"
    write_logits(path, key, (own, own_logits), (cross, cross_logits))
    assert sorted(p.name for p in path.parent.iterdir()) == ["served_logits.npz"]  # no temporary file left

    got = read_logits(path, key, own, cross)
    assert got is not None
    for want, have in zip((own_logits, cross_logits), got, strict=True):
        for w, h in zip(want, have, strict=True):
            for (ws, we), (hs, he) in zip(w, h, strict=True):
                np.testing.assert_array_equal(ws, hs)
                np.testing.assert_array_equal(we, he)
    assert read_logits(path, key | {"file_sha256": "c" * 64}, own, cross) is None  # another served file
    assert read_logits(path, key | {"runtime": "onnxruntime"}, own, cross) is None
    assert read_logits(path, key, own[:2], cross[:2]) is None  # other questions
    assert read_logits(tmp_path / "none.npz", key, own, cross) is None


def test_a_cache_write_cut_short_leaves_nothing_a_rerun_would_trust(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = [Example("q", "t", "질문?", "문단.", (("문단", 0),))]
    logits = [[(np.zeros(3, np.float32), np.zeros(3, np.float32))]]

    def cut_short(file: object, **arrays: np.ndarray) -> None:
        file.write(b"PK\x03\x04 half a zip")  # type: ignore[attr-defined]
        raise KeyboardInterrupt  # what the end of a sitting looks like

    monkeypatch.setattr(calibrate.np, "savez", cut_short)
    path = tmp_path / "served_logits.npz"
    with pytest.raises(KeyboardInterrupt):
        write_logits(path, {}, (own, logits), (own, logits))
    assert not path.exists()


# ---------------------------------------------------------------- held out from training


def test_trained_on_names_the_articles_a_training_record_covers():
    record = {"config": {"train_file": "../shared/data/korquad/KorQuAD_v1.0_dev.json", "train_articles": "0:100"}}
    assert trained_on(record, KORQUAD_DEV, "95:105") == "95:100"
    assert trained_on(record, KORQUAD_DEV, "100:112") is None
    assert trained_on({"config": {**record["config"], "train_articles": None}}, KORQUAD_DEV, "120:122") == "120:122"
    assert trained_on({"config": {"train_file": "other.json", "train_articles": "0:100"}}, KORQUAD_DEV, "0:5") is None
    assert trained_on({}, KORQUAD_DEV, "0:5") is None


# ---------------------------------------------------------------- the small statistics


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


# ---------------------------------------------------------------- the verb's errors


@pytest.mark.parametrize(
    ("data", "articles", "fit", "message"),
    [
        ("missing.json", "0:2", False, "No such file or directory: 'missing.json'"),
        (str(KORQUAD_DEV), "500:502", False, "'500:502' selects none of the 140 articles"),
        (str(KORQUAD_DEV), "3:4", False, "cross-article pairs need at least two articles"),
        (str(KORQUAD_DEV), "0:2", False, "no manifest.json; is this a model bundle"),
        (str(KORQUAD_DEV), "0:2", True, "no manifest.json; is this a model bundle"),
    ],
)
def test_calibrate_command_reports_bad_input_in_one_line(
    data: str, articles: str, fit: bool, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["calibrate", "--bundle", str(tmp_path), "--data", data, "--articles", articles, "--out", str(tmp_path)]
    assert main(argv + (["--fit"] if fit else [])) == 1
    err = capsys.readouterr().err
    assert err.startswith("calibrate: ") and message in err and "Traceback" not in err, err
