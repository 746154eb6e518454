"""Perplexity as a general-ability task (``wikitext``), a collapse detector (Yang et al. 2024,
"The Butterfly Effect of Model Editing"; ME-PPL / EasyEdit ``compute_ppl``).

Texts are the first ``limit`` paragraphs of WikiText-2's
``test.txt``: lines that, stripped, are non-empty, are not headings (``= Title =``) and hold at
least two words, in file order (``seed`` is not used). Each is cut to ``max_tokens`` tokens of the
model's tokenizer (at the character end of the last token kept). A text's perplexity is
``exp(sum NLL / n)`` over its scored tokens; the headline score is the token-weighted corpus
perplexity, with the mean over texts (ME-PPL's ``mean_perplexity``, which a few short WikiText
lines swamp: SmolLM2-135M's mean is 6106 where its median is 46) and the median beside it.
``score_targets`` needs a prompt, so the text is split at its first whitespace: the first word
is the context and every later token is scored. Deliberate differences from ME-PPL
(``add_start_token=False``, tokens 2..n given token 1): when the first word is several tokens,
its later tokens are not scored; and a tokenizer that prepends BOS (Llama, Gemma) keeps it, as
everywhere in kedit. For GPT-2-style tokenizers and one-token first words (``The``, ``In``, ...)
the two agree exactly.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase

from kedit.eval.formulas.uncertainty import Statistic
from kedit.eval.general.task import GENERAL_TASKS, Result, chunks, data_file
from kedit.model.lm import LanguageModel

logger = logging.getLogger(__name__)


def wikitext_paragraphs(path: Path, limit: int | None) -> list[str]:
    """The first ``limit`` paragraphs of a WikiText file: stripped lines that are non-empty, not
    headings (``= Title =``, ``= = Section = =``) and hold at least two words."""
    texts = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            text = line.strip()
            if text and not text.startswith("=") and len(text.split()) >= 2:
                texts.append(text)
                if limit is not None and len(texts) >= limit:
                    break
    return texts


def truncate(tok: PreTrainedTokenizerBase, text: str, max_tokens: int) -> str:
    """``text`` cut after its ``max_tokens``-th token (no special tokens counted)."""
    if tok.is_fast:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        if len(enc["input_ids"]) <= max_tokens:
            return text
        return text[: enc["offset_mapping"][max_tokens - 1][1]]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else tok.decode(ids[:max_tokens])


def split_first_word(text: str) -> tuple[str, str] | None:
    """``(first word, rest)`` with the rest keeping its leading whitespace, so that
    ``score_targets`` joins them back into ``text`` exactly; None for a single word."""
    stripped = text.strip()
    cut = next((i for i, ch in enumerate(stripped) if ch.isspace()), None)
    if cut is None or not stripped[cut:].strip():
        return None
    return stripped[:cut], stripped[cut:]


def text_nlls(
    lm: LanguageModel, texts: Sequence[str], *, max_tokens: int = 256, batch_size: int = 32
) -> list[tuple[float, int] | None]:
    """``(sum NLL, n scored tokens)`` per text (None for a text of one word), scoring every
    token after the first word given it, ``batch_size`` texts per ``score_targets`` call."""
    if max_tokens < 2:
        raise ValueError(f"max_tokens must be at least 2, got {max_tokens}")
    splits = {
        i: s
        for i, t in enumerate(texts)
        if (s := split_first_word(truncate(lm.tokenizer, t, max_tokens))) is not None
    }
    kept = list(splits)
    out: list[tuple[float, int] | None] = [None] * len(texts)
    for chunk in chunks(len(kept), batch_size):
        idx = [kept[j] for j in chunk]
        scores = lm.score_targets([splits[i][0] for i in idx], [splits[i][1] for i in idx])
        for i, score in zip(idx, scores):
            out[i] = (-sum(score.logprobs), len(score.logprobs))
    return out


def perplexity(
    lm: LanguageModel, texts: Sequence[str], *, max_tokens: int = 256, batch_size: int = 32
) -> Result:
    """The token-weighted corpus perplexity ``exp(sum NLL / sum n)`` (the headline ``score``),
    the mean per-text perplexity (ME-PPL's ``mean_perplexity``), its median, and the counts."""
    nlls = [x for x in text_nlls(lm, texts, max_tokens=max_tokens, batch_size=batch_size) if x]
    if not nlls:
        raise ValueError("no text of at least two words to measure perplexity on")
    if len(nlls) < len(texts):
        logger.warning("perplexity: skipped %d one-word texts", len(texts) - len(nlls))
    per_text = [math.exp(nll / n) for nll, n in nlls]
    n_tokens = sum(n for _, n in nlls)
    corpus = math.exp(sum(nll for nll, _ in nlls) / n_tokens)
    return {
        # the mean over texts is ME-PPL's figure, but a few short WikiText lines (table
        # fragments) reach perplexities in the 1e5s and swamp it: the headline is the
        # token-weighted corpus perplexity, as WikiText perplexity is usually reported
        "score": corpus,
        "metric": "perplexity",
        "mean": statistics.fmean(per_text),
        "median": statistics.median(per_text),
        "corpus": corpus,
        "n": len(nlls),
        "n_tokens": n_tokens,
        "higher_is_better": False,
        "samples": {"nll": [nll for nll, _ in nlls], "tokens": [n for _, n in nlls]},
    }


# -- tasks ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PerplexityTask:
    """Perplexity on the first paragraphs of a plain-text corpus in the data directory."""

    name: str
    relpath: str  # under the data directory
    max_tokens: int = 256
    description: str = ""
    metric: str = "perplexity"
    unit: str = "texts"

    def statistic(self, samples: dict[str, list]) -> tuple[int, Statistic]:
        """The token-weighted corpus perplexity of a resample of the texts."""
        nll = np.asarray(samples["nll"], dtype=np.float64)
        tokens = np.asarray(samples["tokens"], dtype=np.float64)
        return len(nll), lambda rows: np.exp(nll[rows].sum(-1) / tokens[rows].sum(-1))

    def same_examples(self, a: dict[str, list], b: dict[str, list]) -> bool:
        return a["tokens"] == b["tokens"]

    def chance(self, samples: dict[str, list]) -> None:
        return None

    def protocol(self, n: int) -> str:
        return (
            f"{self.name} perplexity: exp(summed NLL / token count) over the first {n} "
            f"paragraphs of {self.relpath} (non-heading, >= 2 words, cut to {self.max_tokens} "
            "tokens; the tokens after the first word, given it), token-weighted; ME-PPL's mean "
            "of per-paragraph perplexities is the 'mean' field"
        )

    def evaluate(
        self,
        lm: LanguageModel,
        data_dir: str | Path | None,
        *,
        limit: int | None,
        seed: int | None = None,
        batch_size: int = 32,
        shots: int = 0,
    ) -> Result:
        """``seed`` and ``shots`` are not used: the selection is the first ``limit``."""
        texts = wikitext_paragraphs(data_file(data_dir, self.relpath), limit)
        result = perplexity(lm, texts, max_tokens=self.max_tokens, batch_size=batch_size)
        return {**result, "protocol": self.protocol(len(texts))}


WIKITEXT = PerplexityTask(
    "wikitext",
    "wikitext-2/test.txt",
    description="perplexity on WikiText-2 test paragraphs (collapse detector)",
)
GENERAL_TASKS.register(WIKITEXT.name, WIKITEXT, WIKITEXT.description)
