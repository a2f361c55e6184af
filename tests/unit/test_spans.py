"""Span decoding: exact offsets, ranking, limits, dedup, one score scale across windows, null answer."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from app.engine.spans import (
    PassageLogits,
    ScoreMap,
    decode_passages,
    decode_spans,
    sigmoid,
    span_of,
    window_candidates,
)
from app.engine.windows import encode_pairs, make_windows

from .test_windows import QUESTION, TEXT, _has_tokens


def _logits(rng: np.random.Generator, windows):
    return [rng.normal(0, 3, len(w)).astype(np.float32) for w in windows], [
        rng.normal(0, 3, len(w)).astype(np.float32) for w in windows
    ]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    question=QUESTION,
    context=TEXT,
    seed=st.integers(0, 2**32 - 1),
    top_k=st.integers(1, 10),
    max_len=st.integers(1, 12),
    allow_null=st.booleans(),
    overlap=st.booleans(),
)
def test_decoded_spans_are_exact_ranked_and_distinct(
    tokenizer, question, context, seed, top_k, max_len, allow_null, overlap
):
    if not _has_tokens(tokenizer, question, context):
        return
    [pair] = encode_pairs(tokenizer, [(question, context)])
    windows = make_windows(pair, 40, 6, 8)
    starts, ends = _logits(np.random.default_rng(seed), windows)
    out = decode_spans(
        context,
        windows,
        starts,
        ends,
        top_k=top_k,
        max_answer_length=max_len,
        allow_no_answer=allow_null,
        allow_overlap=overlap,
    )
    assert len(out.answers) <= top_k
    spans = [(a.start, a.end) for a in out.answers]
    assert len(set(spans)) == len(spans), "duplicate spans"
    if not overlap:
        for i, (s1, e1) in enumerate(spans):
            assert all(e1 <= s2 or e2 <= s1 for s2, e2 in spans[i + 1 :]), "overlapping answers"
    scores = [a.score for a in out.answers]
    assert scores == sorted(scores, reverse=True)
    for a in out.answers:
        assert a.text == context[a.start : a.end]
        assert a.text and not a.text[0].isspace() and not a.text[-1].isspace() and a.text[-1] != ","
        assert 0.0 <= a.score <= 1.0
    if allow_null:
        assert out.no_answer_score is not None
        assert all(a.score > out.no_answer_score for a in out.answers)
    else:
        assert out.no_answer_score is None
    total = sum(scores) + (out.no_answer_score or 0.0)
    assert total <= 1.0 + 1e-6


def test_candidates_respect_order_context_and_length(wordpiece):
    [pair] = encode_pairs(wordpiece, [("질문", "하나 둘 셋 넷 다섯 여섯 일곱")])
    [w] = make_windows(pair, 64, 8, 8)
    rng = np.random.default_rng(0)
    s_tok, e_tok, _ = window_candidates(rng.normal(size=len(w)), rng.normal(size=len(w)), w, 20, 3)
    assert len(s_tok) > 0
    assert (e_tok >= s_tok).all() and (e_tok - s_tok + 1 <= 3).all()
    assert (s_tok >= w.context_start).all() and (e_tok < w.context_end).all()


def test_best_span_wins_and_text_matches(wordpiece):
    context = "서울은 대한민국의 수도이다. 부산은 항구 도시이다."
    [pair] = encode_pairs(wordpiece, [("수도는?", context)])
    [w] = make_windows(pair, 64, 8, 8)
    start, end = np.zeros(len(w), np.float32), np.zeros(len(w), np.float32)
    target = context.index("서울")
    tok = next(i for i in range(w.context_start, w.context_end) if w.offsets[i, 0] == target)
    start[tok], end[tok] = 10, 10
    out = decode_spans(context, [w], [start], [end], top_k=3, max_answer_length=10)
    assert out.answers[0].text == context[out.answers[0].start : out.answers[0].end]
    assert out.answers[0].start == target and out.answers[0].score > 0.5


def test_scores_share_one_scale_across_windows(unigram):
    """A short last window must not win just because a per-window softmax would favour it."""
    context = " ".join(f"문장{i}" for i in range(60))
    [pair] = encode_pairs(unigram, [("질문", context)])
    windows = make_windows(pair, 48, 8, 8)
    assert len(windows) >= 3 and len(windows[-1]) < len(windows[0])
    starts = [np.zeros(len(w), np.float32) for w in windows]
    ends = [np.zeros(len(w), np.float32) for w in windows]
    # window 0: a strong span among many strong competitors; last window: a weaker span alone
    s0 = windows[0].context_start
    starts[0][s0 : windows[0].context_end] = 4.0
    ends[0][s0 : windows[0].context_end] = 4.0
    starts[0][s0 + 2] = ends[0][s0 + 2] = 6.0
    last = windows[-1]
    starts[-1][last.context_end - 1] = ends[-1][last.context_end - 1] = 5.0
    out = decode_spans(context, windows, starts, ends, top_k=1, max_answer_length=1)
    best = out.answers[0]
    assert best.logit == 12.0
    assert windows[0].offsets[s0 + 2, 0] <= best.start < windows[0].offsets[s0 + 2, 1]


def test_null_answer_wins_when_cls_is_strongest(wordpiece):
    context = "아무 관련 없는 문장."
    [pair] = encode_pairs(wordpiece, [("질문", context)])
    [w] = make_windows(pair, 64, 8, 8)
    start, end = np.zeros(len(w), np.float32), np.zeros(len(w), np.float32)
    start[0] = end[0] = 9.0
    out = decode_spans(context, [w], [start], [end], top_k=2, max_answer_length=5, allow_no_answer=True)
    assert out.answers == [] and out.no_answer_score is not None and out.no_answer_score > 0.9
    plain = decode_spans(context, [w], [start], [end], top_k=2, max_answer_length=5)
    assert plain.answers and plain.no_answer_score is None


def test_combining_marks_stay_with_their_base(unigram):
    context = "카페 Cafe\u0301 입니다"
    [pair] = encode_pairs(unigram, [("어디?", context)])
    [w] = make_windows(pair, 64, 8, 8)
    start, end = np.zeros(len(w), np.float32), np.zeros(len(w), np.float32)
    i = context.index("Cafe")
    toks = [t for t in range(w.context_start, w.context_end) if i <= w.offsets[t, 1] and w.offsets[t, 0] <= i + 4]
    start[toks[0]], end[toks[-1]] = 10, 10
    out = decode_spans(context, [w], [start], [end], top_k=1, max_answer_length=10)
    assert out.answers[0].text.endswith("e\u0301")


def test_trim_suffixes_cut_particles_but_never_the_whole_answer(unigram):
    context = "경찰이 시위를 막았다. 를"
    [pair] = encode_pairs(unigram, [("무엇을?", context)])
    [w] = make_windows(pair, 64, 8, 8)
    start, end = np.zeros(len(w), np.float32), np.zeros(len(w), np.float32)
    a, b = context.index("시위를"), context.index("시위를") + 3
    toks = [t for t in range(w.context_start, w.context_end) if w.offsets[t, 1] > a and w.offsets[t, 0] < b]
    start[toks[0]], end[toks[-1]] = 10, 10
    plain = decode_spans(context, [w], [start], [end], top_k=1, max_answer_length=10)
    assert plain.answers[0].text == "시위를"
    out = decode_spans(context, [w], [start], [end], top_k=1, max_answer_length=10, trim_suffixes=("를", "을"))
    assert (out.answers[0].text, out.answers[0].start) == ("시위", a)
    lone = context.rindex("를")
    t = next(t for t in range(w.context_start, w.context_end) if w.offsets[t, 1] == lone + 1)
    start[:], end[:] = 0, 0
    start[t], end[t] = 10, 10
    out = decode_spans(context, [w], [start], [end], top_k=1, max_answer_length=10, trim_suffixes=("를",))
    assert out.answers[0].text == "를"  # trimming must leave something


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    question=QUESTION,
    contexts=st.lists(TEXT, min_size=1, max_size=4),
    seed=st.integers(0, 2**32 - 1),
    top_k=st.integers(1, 12),
    allow_null=st.booleans(),
)
def test_passages_decode_like_each_passage_alone_merged_by_logit(
    tokenizer, question, contexts, seed, top_k, allow_null
):
    """Many passages = each passage decoded alone, candidates merged on the raw logit, one softmax."""
    if not all(_has_tokens(tokenizer, question, c) for c in contexts):
        return
    rng = np.random.default_rng(seed)
    passages = []
    for pair, context in zip(encode_pairs(tokenizer, [(question, c) for c in contexts]), contexts, strict=True):
        windows = make_windows(pair, 40, 6, 8)
        passages.append(PassageLogits(context, windows, *_logits(rng, windows)))
    kw = {"max_answer_length": 6, "allow_overlap": True}
    out = decode_passages(passages, top_k=top_k, allow_no_answer=allow_null, **kw)
    alone = [decode_spans(p.context, p.windows, p.start_logits, p.end_logits, top_k=10_000, **kw) for p in passages]
    merged = sorted(
        ((a.logit, i, a.start, a.end) for i, d in enumerate(alone) for a in d.answers),
        key=lambda t: (-t[0], t[1], t[2], t[3]),
    )
    null_logit = min(d.null_logit for d in alone)
    assert out.null_logit == null_logit
    logits = np.array([m[0] for m in merged])
    if not len(logits):  # no window had a span: nothing to answer
        assert out.answers == []
        return
    # one softmax over every candidate of every passage; with the null answer allowed, times P(an answer)
    shares = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    no_answer = float(sigmoid(null_logit - logits[0])) if allow_null else None
    scale = 1 - no_answer if allow_null else 1.0
    want = [(m, float(p * scale)) for m, p in zip(merged[:top_k], shares, strict=False)]
    if allow_null:
        want = [(m, p) for m, p in want if p > no_answer]
        assert out.no_answer_score == pytest.approx(no_answer, rel=1e-6)
    assert [(a.logit, a.passage, a.start, a.end) for a in out.answers] == [m for m, _ in want]
    for a, (_, p) in zip(out.answers, want, strict=True):
        assert a.text == contexts[a.passage][a.start : a.end]
        assert a.score == pytest.approx(p, rel=1e-6)


def test_same_span_in_two_passages_stays_two_answers(wordpiece):
    context = "서울은 대한민국의 수도이다."
    [pair] = encode_pairs(wordpiece, [("수도는?", context)])
    [w] = make_windows(pair, 64, 8, 8)
    start, end = np.zeros(len(w), np.float32), np.zeros(len(w), np.float32)
    tok = next(i for i in range(w.context_start, w.context_end) if w.offsets[i, 0] == 0)
    start[tok] = end[tok] = 10
    one = PassageLogits(context, [w], [start], [end])
    other = PassageLogits(context, [w], [start * 0.5], [end * 0.5])
    out = decode_passages([other, one], top_k=2, max_answer_length=3)
    assert [(a.passage, a.start, a.logit) for a in out.answers] == [(1, 0, 20.0), (0, 0, 10.0)]
    assert out.answers[0].text == out.answers[1].text


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    context=TEXT,
    seed=st.integers(0, 2**32 - 1),
    a=st.floats(0.2, 4),
    b=st.floats(-2, 2),
    c=st.one_of(st.none(), st.floats(-1, 0)),
    threshold=st.floats(-5, 5),
)
def test_calibration_keeps_the_ranking_and_the_threshold_moves_abstention(tokenizer, context, seed, a, b, c, threshold):
    if not _has_tokens(tokenizer, "질문", context):
        return
    [pair] = encode_pairs(tokenizer, [("질문", context)])
    windows = make_windows(pair, 40, 6, 8)
    starts, ends = _logits(np.random.default_rng(seed), windows)
    kw = {"top_k": 5, "max_answer_length": 10}
    raw = decode_spans(context, windows, starts, ends, **kw)
    cal = decode_spans(context, windows, starts, ends, calibration=(a, b) if c is None else (a, b, c), **kw)
    assert [(x.start, x.end, x.logit) for x in raw.answers] == [(x.start, x.end, x.logit) for x in cal.answers]
    assert all(0 <= x.score <= 1 for x in cal.answers)
    assert sum(x.score for x in cal.answers) <= 1 + 1e-9
    # the scores follow the ranking, the null margin's weight included
    assert all(x.score >= y.score - 1e-12 for x, y in zip(cal.answers, cal.answers[1:], strict=False))
    gated = decode_spans(context, windows, starts, ends, allow_no_answer=True, null_threshold=threshold, **kw)
    if raw.answers:
        # a legacy threshold is where no answer becomes as likely as an answer
        margin = gated.null_logit - raw.answers[0].logit
        assert gated.no_answer_score == pytest.approx(float(sigmoid(margin - threshold)))
        top = raw.answers[0].score * (1 - gated.no_answer_score)
        assert (gated.answers == []) == (top <= gated.no_answer_score)


def _one_window(tokenizer, context: str, question: str = "질문?"):
    [pair] = encode_pairs(tokenizer, [(question, context)])
    [w] = make_windows(pair, 96, 8, 8)
    return w, np.zeros(len(w), np.float32), np.zeros(len(w), np.float32)


def _token_at(w, char: int, side: int = 0) -> int:
    """The context token whose span holds character `char` (side 0: the token starting there or covering it)."""
    for t in range(w.context_start, w.context_end):
        if w.offsets[t, 0] <= char < w.offsets[t, 1]:
            return t
    raise AssertionError(f"no token covers {char}")


def test_overlapping_candidates_give_way_to_the_next_distinct_span(unigram):
    context = "캐시 크루즈의 셋째 딸 한느와 그녀의 남편 하인즈 알더는 회사를 크리스텐슨에게 넘긴다."
    w, start, end = _one_window(unigram, context, "셋째 딸은?")
    a = context.index("한느")
    b = context.index("크리스텐슨")
    # the best span, a fragment of it, a longer span around it, then a separate answer
    start[_token_at(w, a)] = 9
    end[_token_at(w, a + 1)] = 9
    end[_token_at(w, context.index("알더") + 1)] = 8
    start[_token_at(w, b)] = 7
    end[_token_at(w, b + 4)] = 7
    kw = {"top_k": 3, "max_answer_length": 30}
    out = decode_spans(context, [w], [start], [end], **kw)
    texts = [x.text for x in out.answers]
    assert texts[0] == "한느" and "크리스텐슨" in texts[1]
    spans = [(x.start, x.end) for x in out.answers]
    assert all(e1 <= s2 or e2 <= s1 for i, (s1, e1) in enumerate(spans) for s2, e2 in spans[i + 1 :])
    fragments = decode_spans(context, [w], [start], [end], allow_overlap=True, **kw)
    assert fragments.answers[0].text == "한느" and fragments.answers[1].text.startswith("한느")
    # the best answer and its score do not depend on the option
    assert fragments.answers[0] == out.answers[0]


def test_the_same_span_in_two_windows_is_one_answer_and_overlap_is_judged_across_windows(unigram):
    context = " ".join(f"단어{i}" for i in range(40))
    [pair] = encode_pairs(unigram, [("질문", context)])
    windows = make_windows(pair, 40, 16, 8)
    assert len(windows) >= 3
    starts = [np.ones(len(w), np.float32) for w in windows]
    ends = [np.ones(len(w), np.float32) for w in windows]
    out = decode_spans(context, windows, starts, ends, top_k=50, max_answer_length=3)
    spans = sorted((a.start, a.end) for a in out.answers)
    assert all(e1 <= s2 for (_, e1), (s2, _) in itertools.pairwise(spans))


def test_align_to_words_widens_to_whole_words(unigram):
    context = "The tower was designed by Gustave Eiffel's company in 1887."
    w, start, end = _one_window(unigram, context, "Who?")
    a = context.index("Gustave")
    b = context.index("Eiffel") + 2  # a span ending inside "Eiffel"
    start[_token_at(w, a)] = 9
    end[_token_at(w, b)] = 9
    plain = decode_spans(context, [w], [start], [end], top_k=1, max_answer_length=30)
    assert plain.answers[0].text != "Gustave Eiffel"
    aligned = decode_spans(context, [w], [start], [end], top_k=1, max_answer_length=30, align_to_words=True)
    assert aligned.answers[0].text == "Gustave Eiffel"
    assert context[aligned.answers[0].start : aligned.answers[0].end] == "Gustave Eiffel"


def test_answers_never_end_in_whitespace_or_a_comma_after_a_particle_is_cut():
    context = "주연은 이보영, 조연은 김민준이다. 《나무》(2003), 50%"
    end = context.index(",") + 2  # "이보영, "
    assert context[slice(*span_of(context, context.index("이보영"), end))] == "이보영"
    # the particle is cut first, then what it leaves is trimmed again
    # whitespace and the comma go first, so the particle before them is found and cut
    assert span_of("시위를, ", 0, 5, trim_suffixes=("를",)) == (0, 2)
    assert span_of("시위 를", 0, 4, trim_suffixes=("를",)) == (0, 2)
    # brackets, quotes and % are part of KorQuAD's gold answers: kept
    i = context.index("《")
    assert context[slice(*span_of(context, i, context.index(")", i) + 1))] == "《나무》(2003)"
    assert context[slice(*span_of(context, context.index("50"), len(context)))] == "50%"


def test_min_score_keeps_answers_at_or_above_it_and_replaces_the_no_answer_rule(unigram):
    context = "서울은 대한민국의 수도이다. 부산은 항구 도시이다."
    w, start, end = _one_window(unigram, context, "수도는?")
    start[0] = end[0] = 9.0  # the null answer is strong
    start[_token_at(w, 0)] = end[_token_at(w, 1)] = 5.0
    kw = {"top_k": 3, "max_answer_length": 10, "allow_no_answer": True}
    gated = decode_spans(context, [w], [start], [end], **kw)
    assert gated.answers == [] and gated.no_answer_score > 0.9
    low = decode_spans(context, [w], [start], [end], min_score=0.0, **kw)
    assert low.answers and low.answers[0].score < low.no_answer_score  # the caller's threshold allows it
    high = decode_spans(context, [w], [start], [end], min_score=0.5, top_k=3, max_answer_length=10)
    assert all(a.score >= 0.5 for a in high.answers)


@settings(max_examples=60, deadline=None)
@given(
    logits=st.lists(st.floats(-30, 30), min_size=1, max_size=40).map(lambda x: np.array(sorted(x, reverse=True))),
    kind=st.sampled_from(["identity", "temperature", "platt"]),
    t=st.floats(0.3, 3),
    a=st.floats(0.2, 3),
    b=st.floats(-3, 3),
    margin=st.floats(-20, 20),
)
@example(logits=np.array([26.0, 0.0]), kind="platt", t=1.0, a=0.25, b=0.0, margin=0.0)  # 1 - share cancelled
def test_score_maps_are_probabilities_that_follow_the_ranking(logits, kind, t, a, b, margin):
    params = {"identity": (), "temperature": (t,), "platt": (a, b)}[kind]
    m = ScoreMap(kind, params, (1.5, -2.0))
    p = m.spans(logits, margin)
    assert p.shape == logits.shape and (p >= 0).all() and p.sum() <= 1 + 1e-9
    assert (np.diff(p) <= 1e-12).all(), "a map reordered the candidates"
    assert 0 <= m.no_answer(margin) <= 1
    if kind != "platt":
        assert p.sum() == pytest.approx(1.0)


def test_legacy_manifest_fields_map_onto_a_score_map():
    assert ScoreMap.legacy((1.0, 0.0), 0.0) == ScoreMap()
    m = ScoreMap.legacy((1.2, 0.3), 6.0)
    assert m.kind == "platt" and m.params == (1.2, 0.3)
    assert m.no_answer(6.0) == pytest.approx(0.5)  # the old threshold: no answer as likely as an answer
