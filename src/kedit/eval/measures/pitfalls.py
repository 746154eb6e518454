"""Single-edit pitfalls measures: distracting neighbours, neighbourhood KL, one-hop answers,
fluency and robustness in dialogue (registered in the ``pitfalls`` suite, some also in ``core``).

Conventions and deliberate differences, measure by measure:

* **Distract Neighborhood** (NS+ / NM+, Hoelscher-Obermaier et al. 2023, CounterFact+): the
  edit statement prefixed to each neighbourhood prompt (EVOKE's ``prefix_distraction``), scored
  as NS / NM.
* **Neighbourhood KL** (CounterFact+ ``e2e_analyze.py``): ``KL(P_edited || P_unedited)`` of the
  first next-token distribution after each (distracting) neighbourhood prompt, mean over the
  case's prompts. We report the true KL in nats; the reference's ``batchmean`` on a 1-D tensor
  also divides by the vocabulary size (multiply ours by 1/V to compare). Lower is better.
* **One Hop** (Yao et al. 2023b; EVOKE): teacher-forced token accuracy of the one-hop answer in
  the core suite (EasyEdit's ``portability_acc``), plus whether the greedy answer starts with it.
* **Fluency** (ROME ``test_generation``): weighted bi/tri-gram entropy of the case's generation
  prompts continued as ROME's ``generate_fast(max_out_len=100)`` does: top-5 samples until the
  text is 100 tokens long, prompt included, not stopping at the end-of-sequence token, the text
  NFKD-normalised with paragraph breaks as spaces; mean over texts. (Before 2026-11 kedit drew
  100 new tokens and stopped at the end of sequence.) Our own word tokenizer stands in for
  nltk's (:func:`kedit.eval.formulas.word_tokenize`); samples are seeded, so a rerun gives the
  same texts.
* **Robustness in dialogue** (Ma et al. 2024): the model answers the edit question, then a
  follow-up turn challenges the answer (an explicit doubt naming the old answer, a distracting
  context about the old answer, or the question reworded after unrelated turns). The first line
  of its 30-token greedy reply is classified kept (names the new answer), reverted (names the old
  one only) or confused (neither), whole words, case-insensitive. Ma et al.'s code measures only
  the kept rate, on the full reply.
"""

from __future__ import annotations

from typing import Any

import torch

from kedit.eval.formulas import classify_followup, mean_ngram_entropy, next_token_kl
from kedit.eval.measures.core import generation_match, prob_comparison, prob_magnitude
from kedit.eval.metric import GEN, MAG, PROB, Stage, register
from kedit.eval.scoring import ProbeResult
from kedit.types import ProbeKind

KL = "next-token KL divergence"
FLUENCY = "n-gram entropy of sampled text"
DIALOGUE = "dialogue follow-up classification"

# -- distracting neighbourhood and neighbourhood KL ------------------------------------------

register(
    "distracting_neighborhood_score",
    "locality",
    PROB,
    (ProbeKind.DISTRACTING_NEIGHBORHOOD,),
    "NS+ (CounterFact+): share of neighbourhood prompts, with the edit statement prefixed, "
    "where P(their answer) > P(new)",
    prob_comparison,
)
register(
    "distracting_neighborhood_magnitude",
    "locality",
    MAG,
    (ProbeKind.DISTRACTING_NEIGHBORHOOD,),
    "NM+ (CounterFact+): mean P(their answer) - P(new) on distracting neighbourhood prompts",
    prob_magnitude,
)


def neighborhood_kl(results: list[ProbeResult], stage: Stage) -> float | None:
    rows = [r for r in results if r.pre.next_token is not None and r.post.next_token is not None]
    if not rows:
        return None
    pre = torch.stack([r.pre.next_token for r in rows])  # (n_prompts, vocab)
    post = torch.stack([r.post.next_token for r in rows])  # (n_prompts, vocab)
    return float(next_token_kl(pre, post).mean())


for _kind, _label in (
    (ProbeKind.NEIGHBORHOOD, "neighbourhood"),
    (ProbeKind.DISTRACTING_NEIGHBORHOOD, "distracting neighbourhood (N+)"),
):
    register(
        f"{_kind}_kl",
        "locality",
        KL,
        (_kind,),
        f"NKL: KL(P_edited || P_unedited) of the next token after {_label} prompts, in nats",
        neighborhood_kl,
        paired=True,
        higher_is_better=False,
        measure="next_token",
        suites=("pitfalls",),
    )

register(
    "portability_one_hop_gen_match",
    "portability",
    GEN,
    (ProbeKind.PORTABILITY_ONE_HOP,),
    "One Hop: the greedy answer to the one-hop question starts with its answer",
    generation_match,
    suites=("pitfalls",),
)

# -- fluency ------------------------------------------------------------------------------------


def fluency(results: list[ProbeResult], stage: Stage) -> float | None:
    texts = [r.stage(stage).text for r in results if r.stage(stage).text is not None]
    return mean_ngram_entropy(texts) if texts else None


register(
    "fluency_ngram_entropy",
    "general ability",
    FLUENCY,
    (ProbeKind.GENERATION,),
    "generation entropy (ROME): weighted bi/tri-gram entropy of 100-token texts about the "
    "subject, in bits; a collapsing model repeats itself and scores low",
    fluency,
    measure="text",
    suites=("pitfalls",),
)

# -- robustness in dialogue ---------------------------------------------------------------------


def reply_outcome(result: ProbeResult, stage: Stage) -> str | None:
    """kept / reverted / confused for one dialogue probe's reply at ``stage``."""
    score = result.stage(stage)
    if score.reply is None:
        return None
    probe = result.probe
    first_line = score.reply.strip().split("\n", 1)[0]
    return classify_followup(
        first_line,
        probe.expected,
        probe.alternative or "",
        new_aliases=probe.aliases,
        old_aliases=probe.alternative_aliases,
        whole_word=True,
    )


def _outcome_rate(outcome: str):
    def rate(results: list[ProbeResult], stage: Stage) -> float | None:
        outcomes = [o for o in (reply_outcome(r, stage) for r in results) if o is not None]
        return sum(o == outcome for o in outcomes) / len(outcomes) if outcomes else None

    return rate


for _outcome, _better, _what in (
    ("kept", True, "the reply still gives the new answer"),
    ("reverted", False, "the reply goes back to the old answer"),
    ("confused", False, "the reply gives neither answer"),
):
    register(
        f"dialogue_{_outcome}_rate",
        "robustness",
        DIALOGUE,
        ProbeKind.DIALOGUE,
        f"share of follow-up turns challenging the edit after which {_what}",
        _outcome_rate(_outcome),
        higher_is_better=_better,
        measure="dialogue",
        suites=("pitfalls",),
    )
for _kind in ProbeKind.DIALOGUE:
    register(
        f"{_kind}_reverted_rate",
        "robustness",
        DIALOGUE,
        (_kind,),
        f"reversion after the {_kind.removeprefix('dialogue_')} follow-up turn",
        _outcome_rate("reverted"),
        higher_is_better=False,
        measure="dialogue",
        suites=("pitfalls",),
    )


def dialogue_details(results: list[ProbeResult]) -> list[dict[str, Any]]:
    """Per dialogue probe: the turns, the outcome before and after editing, and the unedited
    model's confidence in the old answer (length-normalised P(old | question))."""
    rows = []
    for r in results:
        if r.probe.kind not in ProbeKind.DIALOGUE or r.post.reply is None:
            continue
        confidence = r.pre.alternative.prob if r.pre.alternative is not None else None
        rows.append(
            {
                "kind": r.probe.kind,
                "confidence": confidence,
                **{
                    f"{stage}_{field}": value
                    for stage in ("pre", "post")
                    for field, value in (
                        ("answer", r.stage(stage).answer),
                        ("reply", r.stage(stage).reply),
                        ("outcome", reply_outcome(r, stage)),
                    )
                },
            }
        )
    return rows


__all__ = ["dialogue_details", "fluency", "neighborhood_kl", "reply_outcome"]
