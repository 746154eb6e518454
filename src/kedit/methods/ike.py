"""IKE: In-Context Knowledge Editing.

Zheng, Li, Dong, Fan, Wu, Xu, Chang. "Can We Edit Factual Knowledge by In-Context Learning?",
EMNLP 2023. https://arxiv.org/abs/2305.12740

No parameter changes. The edited "model" answers every prompt after a context of k
demonstrations, retrieved as the nearest facts of a pool (cosine of sentence embeddings), each
shown as one of three kinds:

* copy:    ``New Fact: {p} {o*}\\nPrompt: {p} {o*}``
* update:  ``New Fact: {p} {o*}\\nPrompt: {paraphrase of p} {o*}``
* retain:  ``New Fact: {p} {o*}\\nPrompt: {neighbour prompt} {neighbour's answer}``

in the paper's proportions (4 copy, 12 update, 16 retain of 32), nearest last. Then the new
fact itself, and the query ``New Fact: {p} {o*}\\nPrompt: {x}``. With several facts (a batch, or
a session of edits) each is stated once and a query names the fact nearest to it.

Costs a longer context at every query (its keys and values are computed once per edit and
reused by every query); the context limits how many facts fit.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from kedit.config import MethodConfig
from kedit.data import load_dataset
from kedit.methods._embed import Embedder, cached_encode, shared_embedder
from kedit.methods.base import EditMethod
from kedit.methods.edit import Edit
from kedit.model.lm import HFLanguageModel, TargetScore, hf_module
from kedit.model.prefix import PrefixCachedLM
from kedit.types import EditCase, EditRequest, ProbeKind


@dataclass(kw_only=True)
class IKEConfig(MethodConfig):
    """IKE hyperparameters (defaults: the paper's CounterFact setting).

    Args:
        pool: dataset the demonstrations come from (a name or a file; see ``kedit ls
            datasets``).
        pool_size: use only the first ``pool_size`` records of the pool (None: all).
        k: number of demonstrations.
        demo_mix: counts of copy, update and retain demonstrations per 32 (scaled to ``k``).
        embedder: ``minilm`` (all-MiniLM-L6-v2, the paper's) or ``lexical``.
    """

    pool: str = "counterfact-train"
    pool_size: int | None = None
    k: int = 32
    demo_mix: list[int] = field(default_factory=lambda: [4, 12, 16])
    embedder: str = "minilm"

    def validate(self) -> None:
        if self.k < 0:
            raise ValueError("k must be non-negative")
        if len(self.demo_mix) != 3 or min(self.demo_mix) < 0 or sum(self.demo_mix) == 0:
            raise ValueError("demo_mix holds three non-negative counts: copy, update, retain")


def fact_line(request: EditRequest) -> str:
    return f"{request.text} {request.target_new}"


class InContextLM:
    """A :class:`LanguageModel` that answers after IKE's demonstrations and the new facts.

    Every query starts with the same context, so its keys and values are computed once per
    wrapper (once per edit) and reused by every query: ``lm`` is ``base`` with that cache
    (:class:`~kedit.model.prefix.PrefixCachedLM`), whose results are ``base``'s up to float
    noise.
    """

    def __init__(
        self,
        base: HFLanguageModel,
        hf_model: Any,
        demos: str,
        facts: Sequence[EditRequest],
        embedder: Embedder,
    ) -> None:
        self.base = base
        self.hf_model = hf_model
        self.tokenizer = base.tokenizer
        self.demos = demos
        self.facts = list(facts)
        self.embedder = embedder
        statements = "".join(
            f"New Fact: {fact_line(f)}\nPrompt: {fact_line(f)}\n\n" for f in self.facts
        )
        self.context = demos + statements
        self.lm = PrefixCachedLM(base, self.context)
        self._fact_vectors = embedder.encode([fact_line(f) for f in self.facts])

    def contextualise(self, prompts: Sequence[str]) -> list[str]:
        """Each prompt preceded by the context and the fact nearest to it."""
        if len(self.facts) == 1:
            nearest = [0] * len(prompts)
        else:
            sims = self.embedder.encode(list(prompts)) @ self._fact_vectors.T  # (n, facts)
            nearest = sims.argmax(-1).tolist()
        return [
            f"{self.context}New Fact: {fact_line(self.facts[i])}\nPrompt: {p}"
            for p, i in zip(prompts, nearest)
        ]

    def score_targets(self, prompts: Sequence[str], targets: Sequence[str]) -> list[TargetScore]:
        return self.lm.score_targets(self.contextualise(prompts), targets)

    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int | Sequence[int],
        top_k: int | None = None,
        seed: int | None = None,
        stop_at_eos: bool = True,
    ) -> list[str]:
        contextualised = self.contextualise(prompts)
        return self.lm.generate(contextualised, max_new_tokens, top_k, seed, stop_at_eos)

    def next_token_logprobs(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.lm.next_token_logprobs(self.contextualise(prompts))


class IKE(EditMethod):
    """In-context editing: the edit is a context of retrieved demonstrations."""

    name = "ike"
    display_name = "IKE"
    paper = "Zheng et al. 2023"
    family = "in-context"
    config_cls = IKEConfig
    supports_batch = True
    reads_context = True

    def apply(
        self,
        model: Any,
        tok: PreTrainedTokenizerBase,
        requests: list[EditRequest],
        edit: Edit,
    ) -> None:
        embedder = self._embedder()
        if isinstance(model, InContextLM):  # a later edit in a session: add the facts
            model.lm.release()  # the earlier context's cache; computed again after a rollback
            wrapper = InContextLM(
                model.base, model.hf_model, model.demos, model.facts + requests, embedder
            )
        else:
            demos = self._demonstrations(requests, embedder)
            base = HFLanguageModel(hf_module(model), tok)
            wrapper = InContextLM(base, hf_module(model), demos, requests, embedder)
        edit.wrap(wrapper)
        edit.info["context_chars"] = len(wrapper.context)

    def _embedder(self) -> Embedder:
        return shared_embedder(self.env, self.config.embedder)

    def _pool(self, embedder: Embedder) -> tuple[list[EditCase], torch.Tensor]:
        cfg = self.config
        key = ("ike-pool", cfg.pool, cfg.pool_size, embedder.name, str(self.env.data_dir))

        def build() -> tuple[list[EditCase], torch.Tensor]:
            cases = load_dataset(cfg.pool, self.env.data_dir, cfg.pool_size)
            texts = [fact_line(c.request) for c in cases]
            vectors = cached_encode(embedder, texts, self.env.cache_dir)
            return cases, vectors

        return self.env.memo(key, build)

    def _demonstrations(self, requests: list[EditRequest], embedder: Embedder) -> str:
        if self.config.k == 0:
            return ""
        cases, vectors = self._pool(embedder)
        own = {r.text for r in requests}
        candidates = [i for i, c in enumerate(cases) if c.request.text not in own]
        if not candidates:
            raise ValueError(f"the IKE pool {self.config.pool!r} has no facts to demonstrate")
        query = embedder.encode([fact_line(r) for r in requests])  # (n_requests, dim)
        sims = (vectors[candidates] @ query.T).max(-1).values  # (candidates,)
        top = sims.topk(min(self.config.k, len(candidates))).indices.tolist()
        chosen = [cases[candidates[i]] for i in reversed(top)]  # nearest last
        kinds = _demo_kinds(self.config.demo_mix, len(chosen), self.env.seed)
        return "".join(_demo(case, kind) for case, kind in zip(chosen, kinds))


def _demo_kinds(mix: list[int], k: int, seed: int) -> list[str]:
    """``k`` demonstration kinds in the proportions of ``mix``, shuffled (seeded)."""
    total = sum(mix)
    counts = [round(k * m / total) for m in mix]
    counts[-1] = k - sum(counts[:-1])
    kinds = ["copy"] * counts[0] + ["update"] * counts[1] + ["retain"] * max(0, counts[2])
    random.Random(seed).shuffle(kinds)
    return kinds[:k]


def _demo(case: EditCase, kind: str) -> str:
    request = case.request
    line = f"New Fact: {fact_line(request)}\nPrompt: "
    paraphrases = case.probes_of(ProbeKind.PARAPHRASE)
    neighbors = case.probes_of(ProbeKind.NEIGHBORHOOD)
    if kind == "update" and paraphrases:
        return f"{line}{paraphrases[0].prompt} {request.target_new}\n\n"
    if kind == "retain" and neighbors:
        return f"{line}{neighbors[0].prompt} {neighbors[0].expected}\n\n"
    return f"{line}{fact_line(request)}\n\n"
