"""A tiny random BERT QA model and its bundle, built offline in seconds, for tests."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from model_export.data import load_squad

# ../shared beside the checkout, as on developer machines and in CI
REPO = Path(__file__).resolve().parents[2]
KORQUAD_DEV = Path(os.environ.get("KORQUAD_DEV", REPO.parent / "shared" / "data" / "korquad" / "KorQuAD_v1.0_dev.json"))
TRAIN_ARTICLES = "0:112"  # articles 112-139 are the held-out test split; the tokenizer never sees them
SEED = 1234
VOCAB_SIZE = 4000
MAX_SEQ_LENGTH, DOC_STRIDE, MAX_QUERY_LENGTH = 128, 32, 32
ENGLISH = [
    "The quick brown fox jumps over the lazy dog.",
    "Seoul is the capital and largest city of South Korea.",
    "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
    "Who wrote the novel Pride and Prejudice? Jane Austen published it in 1813.",
    "Water boils at 100 degrees Celsius at sea level.",
    "What is the answer? The answer is forty-two.",
]
TINY_CONFIG = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
}


def corpus_texts(path: Path = KORQUAD_DEV, articles: str = TRAIN_ARTICLES) -> list[str]:
    """Every distinct context and question of the training articles, plus a few English sentences."""

    texts: dict[str, None] = {}
    for e in load_squad(path, articles):
        texts[e.context] = None
        texts[e.question] = None
    return list(texts) + ENGLISH


def train_tokenizer(texts: list[str], vocab_size: int = VOCAB_SIZE) -> object:
    """A BERT-style WordPiece tokenizer; accents kept because stripping them decomposes Hangul."""

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    return tok


def build_tiny_hf_model(out_dir: Path, seed: int = SEED) -> Path:
    """config.json, model.safetensors and tokenizer.json of a randomly initialised BertForQuestionAnswering."""
    import torch  # noqa: PLC0415 - torch and transformers load only when a model is built
    from transformers import BertConfig, BertForQuestionAnswering  # noqa: PLC0415 - torch and transformers load only when a model is built

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(corpus_texts())
    tok.save(str(out_dir / "tokenizer.json"))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tok.get_vocab_size(), pad_token_id=tok.token_to_id("[PAD]"), **TINY_CONFIG)
    model = BertForQuestionAnswering(config)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    # cased, accents kept: transformers would otherwise rebuild the normalizer with its BERT defaults
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizerFast", "do_lower_case": False, "strip_accents": False})
    )
    return out_dir


def build_tiny_bundle(out_dir: Path, hf_dir: Path | None = None) -> Path:
    """Tiny HF model -> the real `bundle` pipeline (export, quantize, validate, bundle) -> `out_dir/bundle`.

    Layout others rely on: out_dir/hf (the checkpoint), out_dir/onnx (export work files), out_dir/bundle.
    """
    from model_export.bundle_checkpoint import BundleOptions, bundle_checkpoint  # noqa: PLC0415 - torch and transformers load only when a model is built

    out_dir = Path(out_dir)
    hf = hf_dir if hf_dir is not None else build_tiny_hf_model(out_dir / "hf")
    options = BundleOptions(
        work_dir=out_dir,
        variants=("fp32", "int8"),
        windows={"max_seq_length": MAX_SEQ_LENGTH, "doc_stride": DOC_STRIDE, "max_query_length": MAX_QUERY_LENGTH},
        # random weights: its logits are near-ties, so argmax agreement says little; values still must match
        tolerances={"int8": {"atol": 0.05, "min_argmax_agreement": 0.0}},
        name="tiny-random-bert",
        languages=["ko", "en"],
        base_model=f"tiny-random-bert (tests/support/tiny_model.py, seed {SEED})",
        local_files_only=True,
        command="tests/support/tiny_model.py build_tiny_bundle",
    )
    return bundle_checkpoint(hf, out_dir / "bundle", options)


if __name__ == "__main__":
    # python -m tests.support.tiny_model hf OUT      -> the tiny HF checkpoint only (for configs/tiny-smoke.toml)
    # python -m tests.support.tiny_model bundle OUT  -> OUT/hf, OUT/onnx, OUT/bundle
    what, out = (sys.argv[1], Path(sys.argv[2])) if len(sys.argv) == 3 else ("", Path())
    if what not in ("hf", "bundle"):
        sys.exit("usage: python -m tests.support.tiny_model {hf|bundle} OUT_DIR")
    print(build_tiny_hf_model(out) if what == "hf" else build_tiny_bundle(out))
