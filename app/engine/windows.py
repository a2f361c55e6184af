"""Question/context pairs -> overlapping model windows with character offsets (pure; shared with training)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

QUESTION, CONTEXT, SPECIAL = 0, 1, -1


class _Encoding(Protocol):
    ids: list[int]
    type_ids: list[int]
    offsets: list[tuple[int, int]]
    sequence_ids: list[int | None]


class NoTokens(ValueError):
    """One side of the pair tokenizes to nothing (say, only control characters)."""

    def __init__(self, side: str) -> None:
        super().__init__(f"{side} produces no tokens (only characters the tokenizer drops?)")
        self.side = side
        self.index = 0  # which pair of the batch; set by encode_pairs


class PairTokenizer(Protocol):
    """The slice of `tokenizers.Tokenizer` that windowing needs (a fake can stand in)."""

    def encode(self, sequence: str, pair: str, add_special_tokens: bool = True) -> _Encoding: ...

    def encode_batch(self, inputs: Sequence[tuple[str, str]], add_special_tokens: bool = True) -> list[_Encoding]: ...


@dataclass(frozen=True)
class PairEncoding:
    """One question+context pair tokenized once, without truncation, split into its parts."""

    prefix: np.ndarray  # special ids before the question
    question: np.ndarray
    middle: np.ndarray  # special ids between question and context
    context: np.ndarray
    suffix: np.ndarray  # special ids after the context
    context_offsets: np.ndarray  # (n_context, 2) character offsets into the context string
    type_ids: tuple[int, int, int, int, int]  # one token type per part, in the order above

    @property
    def n_special(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)


@dataclass(frozen=True)
class WindowSpec:
    """How a question and its context are cut into model windows: the one window type that training,
    evaluation, calibration and serving share (a bundle's manifest and a build config both hold one)."""

    max_seq_length: int = 384
    doc_stride: int = 128  # context tokens that consecutive windows share
    max_query_length: int = 64  # question tokens kept


@dataclass(frozen=True)
class Window:
    """One model input: [prefix] question [middle] context[lo:hi] [suffix]."""

    input_ids: np.ndarray  # (T,) int64
    token_type_ids: np.ndarray  # (T,) int64
    offsets: np.ndarray  # (T, 2) int64 character offsets into the context; (-1, -1) off-context
    context_start: int  # index in input_ids of the first context token
    context_tokens: slice  # which tokens of PairEncoding.context this window holds

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def context_end(self) -> int:
        return self.context_start + (self.context_tokens.stop - self.context_tokens.start)


def split_encoding(encoding: _Encoding) -> PairEncoding:
    """Cut a pair encoding into prefix/question/middle/context/suffix using its sequence ids."""
    seq = [SPECIAL if s is None else s for s in encoding.sequence_ids]
    ids = np.asarray(encoding.ids, dtype=np.int64)
    types = list(encoding.type_ids)
    q_idx = [i for i, s in enumerate(seq) if s == QUESTION]
    c_idx = [i for i, s in enumerate(seq) if s == CONTEXT]
    if not q_idx or not c_idx:
        raise NoTokens("question" if not q_idx else "context")
    q0, q1 = q_idx[0], q_idx[-1] + 1
    c0, c1 = c_idx[0], c_idx[-1] + 1
    if q1 - q0 != len(q_idx) or c1 - c0 != len(c_idx) or q1 > c0:
        raise ValueError("tokenizer produced interleaved question and context tokens")
    offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
    return PairEncoding(
        prefix=ids[:q0],
        question=ids[q0:q1],
        middle=ids[q1:c0],
        context=ids[c0:c1],
        suffix=ids[c1:],
        context_offsets=widen_zero_width(offsets[c0:c1]),
        type_ids=(
            types[0] if q0 > 0 else types[q0],
            types[q0],
            types[q1] if c0 > q1 else types[c0],
            types[c0],
            types[c1] if c1 < len(types) else types[c0],
        ),
    )


def widen_zero_width(offsets: np.ndarray) -> np.ndarray:
    """Give each zero-width token the characters between the previous token's end and its own end.

    After NFKC a tokenizer can report a kept character with an empty range placed one character late ("가\r\n":
    "\r" at (2, 2), "\n" at (3, 3)), so the character before it belongs to no token; with doc_stride 0 it then
    fell between two windows, where no answer could ever reach it.
    """
    out = offsets.copy()
    if len(out) == 0:
        return out
    ends = out[:, 1]
    before = np.concatenate([[0], np.maximum.accumulate(ends)[:-1]])
    widen = (out[:, 0] == ends) & (before < ends)
    out[widen, 0] = before[widen]
    return out


def encode_pairs(tokenizer: PairTokenizer, pairs: Sequence[tuple[str, str]]) -> list[PairEncoding]:
    """Tokenize (question, context) pairs in one call; truncation happens later, in `make_windows`.

    Tokenizing untruncated and cutting windows ourselves keeps the cost linear in the context length
    (overflowing truncation inside the tokenizer grows much faster) and gives training and serving the
    same windows.
    """
    out = []
    for i, enc in enumerate(tokenizer.encode_batch(list(pairs), add_special_tokens=True)):
        try:
            out.append(split_encoding(enc))
        except NoTokens as e:
            e.index = i
            raise
    return out


def encode_windows(tokenizer: PairTokenizer, pairs: Sequence[tuple[str, str]], spec: WindowSpec) -> list[list[Window]]:
    """Each (question, context) pair's windows: `encode_pairs` then `make_windows`, as training and serving cut them."""
    return [
        make_windows(p, spec.max_seq_length, spec.doc_stride, spec.max_query_length)
        for p in encode_pairs(tokenizer, pairs)
    ]


def window_capacity(n_special: int, question_tokens: int, max_seq_length: int) -> int:
    """How many context tokens fit in one window next to the question."""
    return max_seq_length - n_special - question_tokens


def make_windows(pair: PairEncoding, max_seq_length: int, doc_stride: int, max_query_length: int) -> list[Window]:
    """Slide over the context tokens; consecutive windows share `doc_stride` tokens.

    The question is cut to `max_query_length` tokens (the BERT/SQuAD recipe), so a window always has
    room for more than `doc_stride` context tokens and the slide always advances.
    """
    question = pair.question[:max_query_length]
    room = window_capacity(pair.n_special, len(question), max_seq_length)
    if room <= doc_stride:
        raise ValueError(
            f"max_seq_length={max_seq_length} leaves {room} context tokens per window, "
            f"not more than doc_stride={doc_stride}"
        )
    n_ctx = len(pair.context)
    head = np.concatenate([pair.prefix, question, pair.middle])
    t_pre, t_q, t_mid, t_ctx, t_suf = pair.type_ids
    head_types = np.concatenate(
        [np.full(len(pair.prefix), t_pre), np.full(len(question), t_q), np.full(len(pair.middle), t_mid)]
    ).astype(np.int64)
    windows: list[Window] = []
    lo = 0
    while True:
        hi = min(lo + room, n_ctx)
        ctx = pair.context[lo:hi]
        ids = np.concatenate([head, ctx, pair.suffix]).astype(np.int64)
        types = np.concatenate(
            [head_types, np.full(len(ctx), t_ctx, dtype=np.int64), np.full(len(pair.suffix), t_suf, dtype=np.int64)]
        )
        offsets = np.full((len(ids), 2), -1, dtype=np.int64)
        offsets[len(head) : len(head) + len(ctx)] = pair.context_offsets[lo:hi]
        windows.append(Window(ids, types, offsets, len(head), slice(lo, hi)))
        if hi >= n_ctx:
            return windows
        lo = hi - doc_stride


def label_window(window: Window, answer_start: int, answer_end: int) -> tuple[int, int]:
    """Token indices of the answer chars [answer_start, answer_end); (0, 0), i.e. CLS, unless wholly inside."""
    offs = window.offsets[window.context_start : window.context_end]
    if len(offs) == 0 or answer_start < offs[0, 0] or answer_end > offs[-1, 1]:
        return 0, 0
    # first token that ends after the answer starts; last token that starts before it ends
    start = int(np.searchsorted(offs[:, 1], answer_start, side="right"))
    end = int(np.searchsorted(offs[:, 0], answer_end, side="left")) - 1
    if start >= len(offs) or end < start:
        return 0, 0
    return window.context_start + start, window.context_start + end


def pad_token_id(tokenizer: object) -> int:
    """The tokenizer's padding id (XLM-R `<pad>` or BERT `[PAD]`), 0 when it has neither."""
    for token in ("<pad>", "[PAD]"):
        i = tokenizer.token_to_id(token)  # type: ignore[attr-defined]
        if i is not None:
            return int(i)
    return 0


def padded_width(length: int, multiple: int) -> int:
    """`length` rounded up to a multiple of `multiple`: the width a batch is padded to."""
    return -(-length // multiple) * multiple


def pad_batch(windows: Sequence[Window], pad_id: int, multiple: int = 1) -> dict[str, np.ndarray]:
    """Right-pad to the longest window of the batch rounded up to `multiple`, never to max_seq_length.

    Right padding matters: the fused ONNX graph turns attention_mask into per-row lengths.
    """
    width = padded_width(max(len(w) for w in windows), multiple)
    ids = np.full((len(windows), width), pad_id, dtype=np.int64)
    types = np.zeros((len(windows), width), dtype=np.int64)
    mask = np.zeros((len(windows), width), dtype=np.int64)
    for i, w in enumerate(windows):
        ids[i, : len(w)] = w.input_ids
        types[i, : len(w)] = w.token_type_ids
        mask[i, : len(w)] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
