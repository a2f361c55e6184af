"""A tiny BERT whose start and end logits peak on one marker token: a real ONNX model with a known answer."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from tests.support.tiny_model import DOC_STRIDE, MAX_QUERY_LENGTH, MAX_SEQ_LENGTH

MARKER = "서울"


def make_marker_model(tiny_hf_dir: Path, out_dir: Path, marker: str = MARKER) -> Path:
    """Copy the tiny random model and rewire it so that hidden(t) = LayerNorm(embedding(token t)).

    With attention and FFN outputs zeroed, every layer is the identity (LayerNorm of a LayerNorm
    output with unit gain is itself), so the QA head sees each token alone. The head and the
    marker's embedding share one direction, so only the marker scores high, wherever it sits:
    decoding must then return exactly the marker's characters, in whatever window holds it.
    """
    import torch  # noqa: PLC0415 - torch and transformers load only when a model is built
    from transformers import BertForQuestionAnswering  # noqa: PLC0415 - torch and transformers load only when a model is built

    tok = Tokenizer.from_file(str(Path(tiny_hf_dir) / "tokenizer.json"))
    marker_id = tok.token_to_id(marker)
    if marker_id is None:
        raise ValueError(f"{marker!r} is not a single token of the tiny vocabulary")
    model = BertForQuestionAnswering.from_pretrained(tiny_hf_dir).eval()
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.fill_(1.0)
            elif "LayerNorm.bias" in name:
                p.zero_()
        for layer in model.bert.encoder.layer:
            for lin in (layer.attention.output.dense, layer.output.dense):
                lin.weight.zero_()
                lin.bias.zero_()
        emb = model.bert.embeddings
        emb.position_embeddings.weight.zero_()
        emb.token_type_embeddings.weight.zero_()
        hidden = emb.word_embeddings.weight.shape[1]
        d = torch.randn(hidden, generator=gen)
        d -= d.mean()
        d /= d.norm()
        words = emb.word_embeddings.weight
        words -= (words @ d)[:, None] * d  # other tokens carry nothing along d
        words[marker_id] = 5.0 * d
        head = model.qa_outputs
        head.weight.copy_(torch.stack([3.0 * d, 3.0 * d]))
        head.bias.zero_()
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (out_dir / name).write_bytes((Path(tiny_hf_dir) / name).read_bytes())
    return out_dir


def build_marker_bundle(work: Path, tiny_hf_dir: Path, int8_method: str = "dynamic") -> Path:
    """`int8_method` "static" gives a QDQ int8 file that the service runs on OpenVINO."""
    from model_export.bundle_checkpoint import BundleOptions, bundle_checkpoint  # noqa: PLC0415 - torch and transformers load only when a model is built
    from model_export.config import ExportSection  # noqa: PLC0415 - torch and transformers load only when a model is built

    hf = make_marker_model(tiny_hf_dir, work / "marker-hf")
    options = BundleOptions(
        work_dir=work / "marker-work",
        export=ExportSection(int8_method=int8_method),  # type: ignore[arg-type]
        variants=("fp32", "int8"),
        windows={"max_seq_length": MAX_SEQ_LENGTH, "doc_stride": DOC_STRIDE, "max_query_length": MAX_QUERY_LENGTH},
        # non-marker logits are exact ties, so argmax agreement means nothing here; values must still match
        tolerances={"fp32": {"min_argmax_agreement": 0.0}, "int8": {"atol": 5.0, "min_argmax_agreement": 0.0}},
        name="tiny-marker-bert",
        languages=["ko", "en"],
        base_model="tiny random BERT rewired to point at one marker token (tests/support/marker_model.py)",
        local_files_only=True,
        command="tests/support/marker_model.py build_marker_bundle",
    )
    return bundle_checkpoint(hf, work / "marker-bundle", options)
