"""Learn which particles to trim from answer ends, on the training split only (Korean particles ride in tokens)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from app.engine.windows import PairTokenizer, WindowSpec, label_window
from model_export.data import Example, iter_windows


@dataclass(frozen=True)
class SuffixRule:
    suffix: str
    fixes: int  # token-aligned answers that become exactly gold once trimmed
    breaks: int  # token-aligned answers that were gold and trimming would spoil


def token_aligned_answers(
    tokenizer: PairTokenizer, examples: list[Example], spec: WindowSpec
) -> list[tuple[str, list[str]]]:
    """(best text a perfect token-level model could return, gold texts) per answerable example."""
    out: list[tuple[str, list[str]]] = []
    for idx, windows in iter_windows(tokenizer, examples, spec):
        ex = examples[idx]
        text, start = ex.answers[0]
        for w in windows:
            s, e = label_window(w, start, start + len(text))
            if s:
                out.append(
                    (ex.context[int(w.offsets[s, 0]) : int(w.offsets[e, 1])].strip(), [t for t, _ in ex.answers])
                )
                break
    return out


def learn_trim_suffixes(
    tokenizer: PairTokenizer, examples: list[Example], spec: WindowSpec, min_count: int = 3
) -> list[SuffixRule]:
    """Suffixes that, trimmed from token-aligned answers, fix more answers than they break; longest first.

    Candidates are the strings by which a token-aligned answer overruns its gold answer, seen at
    least `min_count` times. Pass only training examples: the rules ship in the bundle.
    """
    aligned = token_aligned_answers(tokenizer, examples, spec)
    overrun = Counter(
        pred[len(golds[0]) :] for pred, golds in aligned if pred != golds[0] and pred.startswith(golds[0])
    )
    rules: list[SuffixRule] = []
    for suffix in sorted((s for s, c in overrun.items() if c >= min_count), key=lambda s: (-len(s), s)):
        fixes = breaks = 0
        for pred, golds in aligned:
            if len(pred) > len(suffix) and pred.endswith(suffix):
                if pred[: -len(suffix)] in golds:
                    fixes += 1
                elif pred in golds:
                    breaks += 1
        if fixes > breaks:
            rules.append(SuffixRule(suffix, fixes, breaks))
    return rules
