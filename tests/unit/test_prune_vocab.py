"""Vocabulary pruning: training text tokenizes the same, embedding rows follow their pieces, nothing new is unknown."""

from __future__ import annotations

import json

import numpy as np
from safetensors.numpy import load_file, save_file
from tokenizers import Tokenizer

from model_export.prune_vocab import PruneSpec, piece_kind, prune


def test_piece_kinds():
    assert piece_kind("\u2581") == "meta"
    assert piece_kind("\u2581시위를") == "hangul"
    assert piece_kind("\u2581the") == "ascii"
    assert piece_kind("\u2581café") == "latin"
    assert piece_kind("李舜臣") == "other"
    assert piece_kind("漢") == "char"
    assert piece_kind("...") == "symbol"


def test_prune_keeps_training_tokenization(unigram, corpus, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    unigram.save(str(src / "tokenizer.json"))
    vocab = unigram.get_vocab_size()
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(vocab, 8)).astype(np.float32)
    save_file(
        {"bert.embeddings.word_embeddings.weight": emb, "qa_outputs.weight": np.ones((2, 8), np.float32)},
        str(src / "model.safetensors"),
    )
    (src / "config.json").write_text(json.dumps({"vocab_size": vocab, "pad_token_id": 1}))
    train, other = corpus[:300], corpus[300:600]
    report = prune(src, tmp_path / "dst", train, PruneSpec(ascii_top=50, latin_top=5, other_top=0), {"other": other})
    dst = tmp_path / "dst"
    assert report["rows_after"] < vocab
    old, new = Tokenizer.from_file(str(src / "tokenizer.json")), Tokenizer.from_file(str(dst / "tokenizer.json"))
    pruned = load_file(str(dst / "model.safetensors"))["bert.embeddings.word_embeddings.weight"]
    assert pruned.shape == (report["rows_after"], 8)
    assert json.loads((dst / "config.json").read_text())["vocab_size"] == report["rows_after"]
    for text in train:
        a, b = old.encode(text), new.encode(text)
        assert a.tokens == b.tokens and a.offsets == b.offsets
        np.testing.assert_array_equal(emb[a.ids], pruned[b.ids])  # each piece keeps its own row
    for special in ("<s>", "<pad>", "</s>", "<unk>"):
        assert new.token_to_id(special) == old.token_to_id(special)
    stats = report["other"]
    assert stats["after"]["unk_rate"] <= stats["before"]["unk_rate"] + 1e-9  # single characters all stay
