"""Windowing: offsets are exact, every context character lands in a window, windows respect their limits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from app.engine.windows import (
    PairEncoding,
    WindowSpec,
    encode_pairs,
    encode_windows,
    label_window,
    make_windows,
    split_encoding,
    widen_zero_width,
)

# Korean, Latin with accents, emoji (with modifiers and ZWJ), combining marks, odd whitespace, CJK
ALPHABET = st.sampled_from(
    list("가나다라마바사아자차카타파하한국어는을를이가에서의")
    + list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    + list("éèüñçøåÆŒßĳ")
    + ["😀", "👍🏽", "👨\u200d👩\u200d👧", "🇰🇷", "e\u0301", "\u0308", "\u200b", "\ufeff"]
    + [" ", "  ", "\t", "\n", "\u00a0", "\u3000", "\r\n"]
    + list(".,?!()「」“”'\"-—…%:;")
    + list("李舜臣漢字")
)
TEXT = st.lists(ALPHABET, min_size=1, max_size=400).map("".join)
QUESTION = st.lists(ALPHABET, min_size=1, max_size=40).map("".join).filter(lambda s: s.strip())


def _has_tokens(tokenizer, q: str, c: str) -> bool:
    e = tokenizer.encode(q, c)
    seq = e.sequence_ids
    return 0 in seq and 1 in seq


def check_windows(pair: PairEncoding, context: str, max_seq: int, stride: int, max_q: int) -> None:
    windows = make_windows(pair, max_seq, stride, max_q)
    n_ctx = len(pair.context)
    covered = np.zeros(n_ctx, dtype=bool)
    prev = None
    for w in windows:
        assert len(w) <= max_seq
        assert len(w.input_ids) == len(w.token_type_ids) == len(w.offsets)
        ctx = w.offsets[w.context_start : w.context_end]
        assert (w.offsets[: w.context_start] == -1).all() and (w.offsets[w.context_end :] == -1).all()
        assert (ctx >= 0).all() and (ctx <= len(context)).all()
        assert (ctx[:, 0] <= ctx[:, 1]).all()
        assert (np.diff(ctx[:, 0]) >= 0).all(), "offsets go backwards"
        covered[w.context_tokens] = True
        np.testing.assert_array_equal(w.input_ids[w.context_start : w.context_end], pair.context[w.context_tokens])
        if prev is not None:  # consecutive windows overlap by exactly doc_stride tokens
            assert prev.context_tokens.stop - w.context_tokens.start == stride
        prev = w
    assert covered.all(), "a context token is in no window"
    # every character between the first and the last context token is inside some window's char range
    offs = pair.context_offsets
    lo, hi = int(offs[0, 0]), int(offs[-1, 1])
    char_covered = np.zeros(len(context) + 1, dtype=bool)
    for w in windows:
        c = w.offsets[w.context_start : w.context_end]
        char_covered[c[0, 0] : c[-1, 1]] = True
    assert char_covered[lo:hi].all(), "a context character is in no window"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    question=QUESTION, context=TEXT, max_seq=st.integers(24, 96), stride=st.integers(0, 10)
)  # room is >= 24 - 4 specials - 8 question
# found by hypothesis: after NFKC the unigram tokenizer reports "\r" and "\n" one character late and zero-width, so
# with stride 0 the window boundary before the "\n" token left the character before it in no window
@example(question="가", context="가나다 가나다 가나다 가나다 \r\n", max_seq=24, stride=0)
def test_windows_cover_everything_with_exact_offsets(tokenizer, question, context, max_seq, stride):
    if not _has_tokens(tokenizer, question, context):
        return
    [pair] = encode_pairs(tokenizer, [(question, context)])
    check_windows(pair, context, max_seq, stride, max_q=8)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(context=TEXT, data=st.data())
def test_answer_labels_point_at_the_answer(tokenizer, context, data):
    """A labelled window's tokens cover the answer characters, and nothing before or after whole tokens."""
    if not _has_tokens(tokenizer, "질문?", context):
        return
    [pair] = encode_pairs(tokenizer, [("질문?", context)])
    offs = pair.context_offsets
    i = data.draw(st.integers(0, len(offs) - 1))
    j = data.draw(st.integers(i, min(len(offs) - 1, i + 5)))
    a_start, a_end = int(offs[i, 0]), int(offs[j, 1])
    # gold answers never start or end in whitespace (and tokenizers give odd offsets to lone tabs)
    while a_start < a_end and context[a_start].isspace():
        a_start += 1
    while a_end > a_start and context[a_end - 1].isspace():
        a_end -= 1
    if a_start >= a_end:
        return
    found = False
    for w in make_windows(pair, 48, 8, 8):
        s, e = label_window(w, a_start, a_end)
        if (s, e) == (0, 0):
            continue
        found = True
        assert w.offsets[s, 0] <= a_start and w.offsets[e, 1] >= a_end
        assert w.context_start <= s <= e < w.context_end
    # answers of <= 6 tokens fit inside the 8-token overlap, so some window holds each one whole
    assert found, "an answer was labelled CLS in every window"


def test_long_context_many_windows(unigram):
    context = " ".join(f"문장{i}은 여기에 있다." for i in range(400))
    [pair] = encode_pairs(unigram, [("마지막 문장은?", context)])
    windows = make_windows(pair, 64, 16, 16)
    assert len(windows) > 20
    check_windows(pair, context, 64, 16, 16)
    last = windows[-1].offsets[windows[-1].context_start : windows[-1].context_end]
    assert last[-1, 1] == len(context.rstrip())


def test_question_is_cut_to_max_query_length(wordpiece):
    [pair] = encode_pairs(wordpiece, [("질문 " * 100, "짧은 문맥")])
    [w] = make_windows(pair, 64, 8, max_query_length=10)
    assert w.context_start == 1 + 10 + 1  # [CLS] 10 question tokens [SEP]


def test_stride_too_large_is_refused(wordpiece):
    [pair] = encode_pairs(wordpiece, [("질문", "문맥 " * 50)])
    with pytest.raises(ValueError, match="doc_stride"):
        make_windows(pair, 16, 12, 4)


def test_split_encoding_templates(wordpiece, unigram):
    [bert] = encode_pairs(wordpiece, [("a", "b")])
    assert (len(bert.prefix), len(bert.middle), len(bert.suffix)) == (1, 1, 1)
    assert bert.type_ids[3] == 1  # BERT marks the context as segment 1
    [xlmr] = encode_pairs(unigram, [("a", "b")])
    assert (len(xlmr.prefix), len(xlmr.middle), len(xlmr.suffix)) == (1, 2, 1)


def test_empty_side_is_refused(wordpiece):
    with pytest.raises(ValueError, match="context produces no tokens"):
        split_encoding(wordpiece.encode("질문", ""))


def test_zero_width_tokens_take_the_gap_before_them():
    offsets = np.array([[0, 1], [0, 1], [2, 2], [3, 3], [3, 4]])
    np.testing.assert_array_equal(widen_zero_width(offsets), [[0, 1], [0, 1], [1, 2], [2, 3], [3, 4]])
    # a zero-width token with nothing before it to take stays as it is
    np.testing.assert_array_equal(widen_zero_width(np.array([[0, 1], [1, 1]])), [[0, 1], [1, 1]])


def test_encode_windows_is_encode_then_make(unigram):
    spec = WindowSpec(max_seq_length=32, doc_stride=4, max_query_length=8)
    pairs = [("질문?", "문장 " * 40), ("두 번째", "짧은 문맥")]
    got = encode_windows(unigram, pairs, spec)
    want = [make_windows(p, 32, 4, 8) for p in encode_pairs(unigram, pairs)]
    assert [len(ws) for ws in got] == [len(ws) for ws in want] and len(got[0]) > 1
    for a, b in zip(got, want, strict=True):
        for wa, wb in zip(a, b, strict=True):
            np.testing.assert_array_equal(wa.input_ids, wb.input_ids)
