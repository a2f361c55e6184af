"""Real (small, locally trained) tokenizers for the windowing and decoding property tests."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

from tests.support.tiny_model import corpus_texts, train_tokenizer

EXTRA = [
    "Café naïve résumé coöperate — “quotes” and \u2018single\u2019 quotes.",
    "Emoji 😀👍🏽 and flags 🇰🇷 inside text.",
    "Combining e\u0301 and a\u0308, tabs\tand\u00a0nbsp, ideographic\u3000space.",
    "한국어 문장과 English words, 숫자 1,234.5 그리고 (괄호)와 「인용」.",
]


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return corpus_texts() + EXTRA


@pytest.fixture(scope="session")
def wordpiece(corpus: list[str]) -> Tokenizer:
    return train_tokenizer(corpus)  # type: ignore[return-value]


@pytest.fixture(scope="session")
def unigram(corpus: list[str]) -> Tokenizer:
    """XLM-R-shaped: NFKC, Metaspace with a prepended space, unigram pieces, <s> A </s></s> B </s>."""
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(" {2,}", " ")])  # type: ignore[arg-type]
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=3000, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(corpus[:1500], trainer=trainer)
    tok.post_processor = processors.RobertaProcessing(sep=("</s>", 2), cls=("<s>", 0))
    return tok


@pytest.fixture(scope="session", params=["wordpiece", "unigram"])
def tokenizer(request: pytest.FixtureRequest) -> Tokenizer:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]
