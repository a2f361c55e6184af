"""Official SQuAD v1.1 / KorQuAD 1.0 metrics, and SQuAD 2.0's unanswerable questions: hand-computed cases,
normalization, files and the CLI."""

import json

import pytest

from model_export.__main__ import main
from model_export.metrics import (
    Metric,
    exact_match,
    f1,
    korquad_f1,
    normalize_korquad,
    normalize_squad,
    score,
    score_files,
    squad_f1,
)


def test_squad_token_f1_partial_answer():
    # 1 common token: precision 1/1, recall 1/2 -> 2 * 0.5 / 1.5
    assert round(squad_f1("nervous", "nervous breakdown"), 2) == 0.67
    assert squad_f1("nervous", "nervous breakdown") == pytest.approx(2 / 3)


def test_squad_f1_ignores_articles_and_punctuation():
    assert squad_f1("The nervous breakdown.", "nervous breakdown") == 1.0
    assert squad_f1("a cat", "dog") == 0.0


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("The Cat's  hat!", "cats hat"),
        ("an apple", "apple"),
        ("theater", "theater"),  # "the" only as a whole word
        ("A.B.C.", "abc"),
        ("  Hello,\tworld  ", "hello world"),
    ],
)
def test_normalize_squad(raw, normalized):
    assert normalize_squad(raw) == normalized


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("《훈민정음》", "훈민정음"),
        ("〈동국정운〉", "동국정운"),
        ("'세종'의", "세종 의"),  # quotes become spaces, so they split words
        ('"세종"', "세종"),
        ("\u2018가\u2019", "가"),  # curly single quotes
        ("(주)삼성", "주 삼성"),
        ("<b>A</b>", "b a b"),  # every < and > becomes a space; "/" is punctuation and is dropped
        ("1,000원.", "1000원"),
        ("ABC 대왕", "abc 대왕"),
        ("the cat", "the cat"),  # no article removal in KorQuAD
        ("“가”", "“가”"),  # curly double quotes are not in the official list
        ("조선·고려", "조선·고려"),  # nor is the middle dot
    ],
)
def test_normalize_korquad(raw, normalized):
    assert normalize_korquad(raw) == normalized


def test_korquad_char_f1_hand_computed():
    # pred 세,종 / gold 세,종,대,왕: p = 2/2, r = 2/4 -> 2/3
    assert korquad_f1("세종", "세종대왕") == pytest.approx(2 / 3)
    # pred 조,선,세,종 / gold 세,종,대,왕: 2 common, p = r = 1/2 -> 1/2
    assert korquad_f1("조선 세종", "세종대왕") == pytest.approx(0.5)
    # repeated characters count up to the smaller count: 2 common, p = 2/3, r = 1 -> 0.8
    assert korquad_f1("하하하", "하하") == pytest.approx(0.8)
    assert korquad_f1("고려", "세종대왕") == 0.0


def test_korquad_spaces_do_not_count_for_f1_but_do_for_em():
    assert korquad_f1("세종 대왕", "세종대왕") == 1.0
    assert exact_match("세종 대왕", ["세종대왕"], "korquad") == 0.0
    assert korquad_f1("《세종대왕》", "세종대왕") == 1.0
    assert exact_match("《세종대왕》", ["세종대왕"], "korquad") == 1.0


def test_korquad_f1_is_character_level_where_squad_is_token_level():
    assert f1("세종", ["세종대왕"], "squad") == 0.0
    assert f1("세종", ["세종대왕"], "korquad") == pytest.approx(2 / 3)


def test_best_over_ground_truths():
    assert exact_match("세종", ["세종대왕", "세종"], "korquad") == 1.0
    assert f1("nervous", ["nervous breakdown", "breakdown"], "squad") == pytest.approx(2 / 3)


def test_empty_strings_follow_the_official_scripts():
    # both normalize to "": equal (EM 1) but no common characters (F1 0)
    assert exact_match("!", ["."], "korquad") == 1.0
    assert f1("!", ["."], "korquad") == 0.0


def test_missing_predictions_count_zero():
    questions = [("q1", ["세종대왕"]), ("q2", ["훈민정음"])]
    result = score(questions, {"q1": "세종대왕", "other": "x"}, "korquad")
    assert result == {"exact_match": 50.0, "f1": 50.0}


def test_score_averages_on_a_0_100_scale():
    questions = [("q1", ["nervous breakdown"]), ("q2", ["Denver Broncos"])]
    result = score(questions, {"q1": "nervous", "q2": "the Denver Broncos"}, "squad")
    assert result["exact_match"] == 50.0
    assert result["f1"] == pytest.approx(100 * (2 / 3 + 1) / 2)


def test_unknown_metric_is_rejected():
    with pytest.raises(ValueError, match="unknown metric"):
        score([("q", ["a"])], {}, "bleu")


def _dataset(tmp_path):
    data = {
        "version": "KorQuAD_v1.0_dev",
        "data": [
            {
                "title": "a0",
                "paragraphs": [
                    {
                        "context": "세종대왕은 훈민정음을 만들었다.",
                        "qas": [
                            {"id": "q1", "question": "누가?", "answers": [{"text": "세종대왕", "answer_start": 0}]},
                            {"id": "q2", "question": "무엇을?", "answers": [{"text": "훈민정음", "answer_start": 6}]},
                        ],
                    }
                ],
            },
            {
                "title": "a1",
                "paragraphs": [
                    {
                        "context": "The nervous breakdown came.",
                        "qas": [
                            {
                                "id": "q3",
                                "question": "What came?",
                                "answers": [{"text": "nervous breakdown", "answer_start": 4}],
                            }
                        ],
                    }
                ],
            },
        ],
    }
    path = tmp_path / "data.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    preds = tmp_path / "preds.json"
    preds.write_text(
        json.dumps({"q1": "세종", "q2": "훈민정음을", "q3": "nervous"}, ensure_ascii=False), encoding="utf-8"
    )
    return path, preds


def test_score_files_all_questions_and_article_range(tmp_path):
    data, preds = _dataset(tmp_path)
    # q1: 2/3; q2: 4 common, p = 4/5, r = 1 -> 8/9; q3: "nervous" vs "nervousbreakdown", 7 common,
    # p = 1, r = 7/16 -> 14/23
    result = score_files(data, preds, "korquad")
    assert result["exact_match"] == 0.0
    assert result["f1"] == pytest.approx(100 * (2 / 3 + 8 / 9 + 14 / 23) / 3)
    assert score_files(data, preds, "squad", articles="1:2") == pytest.approx({"exact_match": 0.0, "f1": 200 / 3})
    assert score_files(data, preds, "korquad", articles="0:1")["f1"] == pytest.approx(100 * (2 / 3 + 8 / 9) / 2)


def test_cli_prints_json(tmp_path, capsys):
    data, preds = _dataset(tmp_path)
    assert main(["score", str(data), str(preds), "--metric", "squad", "--articles", "1:2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"exact_match", "f1"}
    assert printed["f1"] == pytest.approx(200 / 3)


def test_cli_reports_a_missing_file(tmp_path, capsys):
    assert main(["score", str(tmp_path / "nope.json"), str(tmp_path / "p.json"), "--metric", "korquad"]) == 1
    assert "nope.json" in capsys.readouterr().err


def test_cli_warns_when_questions_have_no_prediction(tmp_path, capsys):
    """Predictions for one split scored against the whole file: 0 for the rest, as officially, but said aloud."""
    data, preds = _dataset(tmp_path)
    preds.write_text(json.dumps({"q3": "nervous breakdown"}), encoding="utf-8")
    assert main(["score", str(data), str(preds), "--metric", "squad"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["exact_match"] == pytest.approx(100 / 3)
    assert "2 of 3 questions have no prediction and score 0" in out.err and "--articles" in out.err
    assert main(["score", str(data), str(preds), "--metric", "squad", "--articles", "1:2"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["exact_match"] == 100.0 and out.err == ""


@pytest.mark.parametrize("metric", ["squad", "korquad"])
def test_an_unanswerable_question_is_right_only_when_the_prediction_is_empty(metric: Metric):
    # SQuAD 2.0's official script: no gold answer, so only an abstention (an empty prediction) scores
    assert exact_match("", [], metric) == f1("", [], metric) == 1.0
    assert exact_match("Paris", [], metric) == f1("Paris", [], metric) == 0.0
    result = score([("q1", ["Paris"]), ("q2", [])], {"q1": "Paris", "q2": ""}, metric)
    assert result == {"exact_match": 100.0, "f1": 100.0}
