"""Tiny random QA checkpoints of every supported architecture, with locally trained fast tokenizers (no download).

Each checkpoint is what a user would have after fine-tuning: config.json, model.safetensors and the files
`save_pretrained` writes for its tokenizer. Only the sizes are tiny and the weights random.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from tests.support.tiny_model import corpus_texts

SEED = 4321
ARCHS = ("bert", "mbert", "xlm-roberta", "roberta", "electra", "distilbert", "deberta-v2")
# a larger init spread than the default 0.02 keeps random start/end logits apart, so argmax comparisons mean
# something (with 0.02 most logits tie within float noise)
INIT_RANGE = 0.2
SIZES = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 512,
    "initializer_range": INIT_RANGE,
}
VOCAB = 2000
TEXTS = 1500  # of the training articles' contexts and questions: enough for Korean and English pieces


@functools.cache
def _texts() -> tuple[str, ...]:
    return tuple(corpus_texts()[:TEXTS])


def _wordpiece(lowercase: bool) -> Any:
    """BERT-style WordPiece; cased keeps Hangul whole (stripping accents would decompose it)."""

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=False if not lowercase else None)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(
        _texts(), trainers.WordPieceTrainer(vocab_size=VOCAB, special_tokens=specials, show_progress=False)
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    return tok


def _unigram(specials: list[str], template: str) -> Any:
    """SentencePiece-style Unigram (Metaspace). template: "roberta" (<s> A </s></s> B </s>) or "bert"."""

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(" {2,}", " ")])  # type: ignore[arg-type]
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    unk = "<unk>" if "<unk>" in specials else "[UNK]"
    trainer = trainers.UnigramTrainer(vocab_size=VOCAB, special_tokens=specials, unk_token=unk, show_progress=False)
    tok.train_from_iterator(_texts(), trainer=trainer)
    if template == "roberta":
        tok.post_processor = processors.RobertaProcessing(
            sep=("</s>", tok.token_to_id("</s>")), cls=("<s>", tok.token_to_id("<s>"))
        )
    else:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
        )
    return tok


def _byte_bpe() -> Any:
    """RoBERTa's byte-level BPE with <s> A </s></s> B </s>."""

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_texts(), trainer=trainer)
    tok.post_processor = processors.RobertaProcessing(
        sep=("</s>", tok.token_to_id("</s>")), cls=("<s>", tok.token_to_id("<s>")), trim_offsets=True
    )
    return tok


BERT_SPECIALS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]"}
ROBERTA_SPECIALS = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "sep_token": "</s>",
    "pad_token": "<pad>",
    "cls_token": "<s>",
}


def make_tokenizer(arch: str) -> Any:
    """The transformers fast tokenizer a checkpoint of `arch` ships with, trained here on KorQuAD training text."""
    import transformers as tf  # noqa: PLC0415 - torch and transformers load only when a model is built

    if arch == "bert":
        return tf.BertTokenizerFast(tokenizer_object=_wordpiece(lowercase=True), do_lower_case=True, **BERT_SPECIALS)
    if arch == "mbert":
        return tf.BertTokenizerFast(tokenizer_object=_wordpiece(lowercase=False), do_lower_case=False, **BERT_SPECIALS)
    if arch == "electra":
        return tf.ElectraTokenizerFast(tokenizer_object=_wordpiece(lowercase=False), **BERT_SPECIALS)
    if arch == "distilbert":
        return tf.DistilBertTokenizerFast(tokenizer_object=_wordpiece(lowercase=False), **BERT_SPECIALS)
    if arch == "xlm-roberta":
        tok = _unigram(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], "roberta")
        return tf.XLMRobertaTokenizerFast(tokenizer_object=tok, mask_token="<mask>", **ROBERTA_SPECIALS)
    if arch == "roberta":
        return tf.RobertaTokenizerFast(tokenizer_object=_byte_bpe(), mask_token="<mask>", **ROBERTA_SPECIALS)
    if arch == "deberta-v2":
        tok = _unigram(["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"], "bert")
        return tf.DebertaV2TokenizerFast(tokenizer_object=tok, mask_token="[MASK]", **BERT_SPECIALS)
    raise ValueError(f"unknown architecture {arch!r}; one of {ARCHS}")


def make_config(arch: str, vocab_size: int, pad_id: int) -> Any:
    import transformers as tf  # noqa: PLC0415 - torch and transformers load only when a model is built

    common = {"vocab_size": vocab_size, "pad_token_id": pad_id}
    if arch in ("bert", "mbert"):
        return tf.BertConfig(**SIZES, **common, type_vocab_size=2)
    if arch == "electra":
        return tf.ElectraConfig(**SIZES, **common, embedding_size=16, type_vocab_size=2)
    if arch == "distilbert":
        return tf.DistilBertConfig(
            **common,
            dim=32,
            n_layers=2,
            n_heads=2,
            hidden_dim=64,
            max_position_embeddings=512,
            initializer_range=INIT_RANGE,
        )
    if arch == "xlm-roberta":
        # RoBERTa-family positions start after the padding index: 512 + 2 position rows
        return tf.XLMRobertaConfig(**{**SIZES, "max_position_embeddings": 514}, **common, type_vocab_size=1)
    if arch == "roberta":
        return tf.RobertaConfig(**{**SIZES, "max_position_embeddings": 514}, **common, type_vocab_size=1)
    if arch == "deberta-v2":
        return tf.DebertaV2Config(
            **SIZES,
            **common,
            type_vocab_size=2,
            relative_attention=True,
            position_buckets=32,
            pos_att_type=["p2c", "c2p"],
        )
    raise ValueError(f"unknown architecture {arch!r}; one of {ARCHS}")


def build_checkpoint(arch: str, out_dir: Path, head: bool = True, seed: int = SEED) -> Path:
    """A tiny `arch` checkpoint; head=False saves the bare encoder (AutoModel), as a pre-trained base looks."""
    import torch  # noqa: PLC0415 - torch and transformers load only when a model is built
    from transformers import AutoModel, AutoModelForQuestionAnswering  # noqa: PLC0415 - torch and transformers load only when a model is built

    out_dir = Path(out_dir)
    tokenizer = make_tokenizer(arch)
    config = make_config(arch, len(tokenizer), tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = (AutoModelForQuestionAnswering if head else AutoModel).from_config(config)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


if __name__ == "__main__":
    import sys

    # python -m tests.support.tiny_archs ARCH OUT_DIR  -> a tiny random ARCH QA checkpoint, as save_pretrained writes it
    if len(sys.argv) != 3 or sys.argv[1] not in ARCHS:
        sys.exit(f"usage: python -m tests.support.tiny_archs {{{'|'.join(ARCHS)}}} OUT_DIR")
    print(build_checkpoint(sys.argv[1], Path(sys.argv[2])))
