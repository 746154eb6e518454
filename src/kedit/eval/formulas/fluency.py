"""Fluency: ROME's weighted n-gram entropy of generated text."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

from kedit.eval.formulas._checks import _mean

# Treebank-like word tokenisation without nltk: contractions split off as nltk does
# ("don't" -> "do", "n't"; "John's" -> "John", "'s"), numbers keep inner separators
# ("1,000", "3.14"), an ellipsis and "--" stay whole, every other punctuation mark is a token.
_WORD_RE = re.compile(
    r"""
    \w+?(?=n't\b)                     # "do" of "don't", "ca" of "can't"
    | n't\b
    | '(?:s|m|d|ll|re|ve)\b           # clitics
    | \d+(?:[.,]\d+)+                 # 1,000 and 3.14
    | \w+(?:-\w+)*                    # words, hyphenated compounds
    | \.\.\.|--
    | [^\w\s]                         # any other symbol on its own
    """,
    re.VERBOSE | re.IGNORECASE,
)


def word_tokenize(text: str) -> list[str]:
    """Split ``text`` into words and punctuation, approximating ``nltk.word_tokenize``.

    nltk is not a dependency, so this is our own regex tokenizer. Known differences from nltk's
    Treebank tokenizer: double quotes stay ``"`` (nltk writes `````` and ``''``), periods of
    abbreviations are split off ("Mr." -> "Mr", "."; nltk keeps "Mr." whole), a typographic
    apostrophe ("don’t") is not treated as a contraction, and nltk's special cases ("cannot" ->
    "can not", "gonna") are not applied. On plain generated prose the tokens, and hence the
    entropies, usually agree; pass ``tokenizer=nltk.word_tokenize`` to :func:`ngram_entropy`
    for exact parity.
    """
    return _WORD_RE.findall(text)


def ngram_entropy(
    text: str,
    *,
    ns: Sequence[int] = (2, 3),
    weights: Sequence[float] = (2 / 3, 4 / 3),
    tokenizer: Callable[[str], list[str]] | None = None,
) -> float:
    """ROME's ``compute_n_gram_entropy`` of one text, in bits.

    For each n, ``H_n = −Σ f log2 f`` over the relative frequencies f of the text's word n-grams;
    the result is the arithmetic mean of ``w_n · H_n`` (default ``mean(2/3·H2, 4/3·H3)``).
    A text with fewer than n words has ``H_n = 0``, as ROME's empty frequency table gives.
    ROME scores the whole generated text, prompt included; pass the same string to match.
    """
    if len(ns) == 0 or len(ns) != len(weights):
        raise ValueError(f"ns and weights must be non-empty and equal in length: {ns}, {weights}")
    if any(n < 1 for n in ns):
        raise ValueError(f"n-gram orders must be >= 1, got {ns}")
    tokens = (tokenizer or word_tokenize)(text)
    weighted = []
    for n, w in zip(ns, weights):
        counts = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
        total = sum(counts.values())
        h = -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0
        weighted.append(w * h)
    return _mean(weighted)


def mean_ngram_entropy(
    texts: Iterable[str], *, tokenizer: Callable[[str], list[str]] | None = None
) -> float:
    """Generation entropy (GE) of a case: the arithmetic mean of :func:`ngram_entropy` over its
    generated texts, as ROME's ``n_gram_entropy(gen_texts, agg="arith")``."""
    values = [ngram_entropy(t, tokenizer=tokenizer) for t in texts]
    if not values:
        raise ValueError("texts is empty")
    return _mean(values)
