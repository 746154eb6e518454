"""SERAC's scope classifier, edit memory and edited model (``serac.py`` holds the method).

* :class:`ScopeClassifier`: a sentence encoder and ``logsim = -||a - b||^2 * scale``;
* :class:`EditMemory`: the edits so far with their classifier keys, a session's saved state;
* :class:`SERACLM`: the hard switch: a prompt in an edit's scope goes to the counterfactual
  model after that edit (``"{prompt} {target_new} " + x``), any other to the base model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerBase

from kedit.methods._embed import mean_pool, minilm_folder
from kedit.model.lm import HFLanguageModel, LanguageModel, TargetScore
from kedit.model.tokens import encode, join_target, pad, pad_id
from kedit.types import EditRequest

#: an input is in an edit's scope when ``exp(logsim) > IN_SCOPE`` (``rep.py``)
IN_SCOPE = 0.5
#: tokens of a classifier input (the MiniLM embedder's limit, ``_embed.py``)
MAX_TOKENS = 256
#: the small random BERT of ``classifier="tiny"``
TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}


class ScopeClassifier(nn.Module):
    """A sentence encoder (mean-pooled, L2-normalised) and the fixed ``scale`` of
    ``logsim = -||a - b||^2 * scale``."""

    def __init__(self, kind: str, vocab_size: int) -> None:
        super().__init__()
        self.tokenizer: PreTrainedTokenizerBase | None = None
        if kind == "minilm":
            folder = minilm_folder()
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
            self.encoder = AutoModel.from_pretrained(folder)
            self.encoder.pooler = None  # the reference drops the pooler too
        else:
            config = BertConfig(vocab_size=vocab_size, intermediate_size=64, **TINY_BERT)
            self.encoder = BertModel(config, add_pooling_layer=False)
        self.register_buffer("scale", torch.tensor(1.0))

    def embed(self, texts: Sequence[str], tok: PreTrainedTokenizerBase) -> torch.Tensor:
        """Unit-norm embeddings ``(n, dim)``; ``tok`` (the edited model's) tokenises for the
        tiny encoder, which has no tokenizer of its own."""
        device = self.scale.device
        if self.tokenizer is not None:
            enc = self.tokenizer(
                list(texts),
                padding=True,
                truncation=True,
                max_length=MAX_TOKENS,
                return_tensors="pt",
            )
            ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        else:
            batch = pad([encode(tok, t).ids[:MAX_TOKENS] for t in texts], pad_id(tok), left=False)
            ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state  # (n, seq, d)
        return mean_pool(hidden, mask)

    def pair_logsims(self, keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """``logsim`` of row-aligned pairs ``(n, d), (n, d) -> (n,)``, with the graph."""
        return -((keys - queries) ** 2).sum(-1) * self.scale

    @torch.no_grad()
    def logsim_matrix(self, keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """``logsim`` of every query against every key, ``(queries, keys)``, in float64."""
        k, q = keys.double(), queries.double()
        dists = (q.pow(2).sum(-1)[:, None] + k.pow(2).sum(-1)[None] - 2 * q @ k.T).clamp_min(0)
        return -dists * self.scale.double()


def fact_text(request: EditRequest) -> str:
    """An edit as the counterfactual model reads it: ``"{prompt} {target_new}"``."""
    return join_target(request.text, request.target_new)


class EditMemory:
    """The edits so far and their classifier keys; a session's shared, saved state."""

    def __init__(self) -> None:
        self.facts: list[EditRequest] = []
        self.keys: torch.Tensor | None = None  # (facts, dim)
        self.encoder: ScopeClassifier | None = None  # the classifier the keys came from

    def get_state(self) -> tuple[Any, ...]:
        return list(self.facts), self.keys, self.encoder

    def set_state(self, state: tuple[Any, ...]) -> None:
        facts, self.keys, self.encoder = state
        self.facts = list(facts)

    @torch.no_grad()
    def add(self, requests: Sequence[EditRequest], classifier: ScopeClassifier, tok: Any) -> None:
        """Append ``requests`` with their keys (all keys anew under another classifier)."""
        facts = [*self.facts, *requests]
        if self.encoder is classifier and self.keys is not None:
            new = classifier.embed([r.text for r in requests], tok)
            keys = torch.cat([self.keys, new])
        else:
            keys = classifier.embed([r.text for r in facts], tok)
        self.facts, self.keys, self.encoder = facts, keys, classifier


class SERACLM:
    """The edited model: each prompt in an edit's scope goes to the counterfactual model after
    that edit, any other to the base model (a :class:`~kedit.model.lm.LanguageModel` and
    :class:`~kedit.model.lm.RoutingModel` and :class:`~kedit.model.lm.TracingModel`)."""

    def __init__(
        self,
        base: LanguageModel,
        hf_model: nn.Module,
        classifier: ScopeClassifier,
        counterfactual: nn.Module,
        tok: PreTrainedTokenizerBase,
        facts: Sequence[EditRequest],
        keys: torch.Tensor,
    ) -> None:
        self.base = base
        self.hf_model = hf_model  # what a session's next edit unwraps (``hf_module``)
        self.tokenizer = tok
        self.classifier = classifier
        self.counterfactual = HFLanguageModel(counterfactual, tok)
        self.facts = tuple(facts)
        self.keys = keys
        self._nearest: dict[str, tuple[int, float]] = {}  # prompt -> nearest edit, its sim

    @torch.no_grad()
    def scope(self, prompts: Sequence[str]) -> list[tuple[int | None, float]]:
        """Per prompt: the nearest edit's index when in scope (else None), and its ``sim``."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._nearest))
        if missing:
            queries = self.classifier.embed(missing, self.tokenizer)  # (n, dim)
            sims, nearest = self.classifier.logsim_matrix(self.keys, queries).exp().max(-1)
            for prompt, sim, index in zip(missing, sims.tolist(), nearest.tolist()):
                self._nearest[prompt] = (index, sim)
        found = [self._nearest[p] for p in prompts]
        return [(index if sim > IN_SCOPE else None, sim) for index, sim in found]

    def routed(self, prompts: Sequence[str]) -> list[bool]:
        """Whether the counterfactual model answers each prompt."""
        return [index is not None for index, _ in self.scope(prompts)]

    def trace(self, prompt: str) -> dict[str, Any] | None:
        """Which model answered ``prompt``, and the nearest edit with its scope probability."""
        if prompt not in self._nearest:
            return None
        ((routed, sim),) = self.scope([prompt])
        nearest = self.facts[self._nearest[prompt][0]]
        return {
            "method": "serac",
            "answered_by": "base" if routed is None else "counterfactual",
            "nearest_edit": f"{nearest.text} {nearest.target_new}",
            "scope_probability": round(sim, 4),
            "in_scope_above": IN_SCOPE,
        }

    def _split(self, prompts: Sequence[str]) -> tuple[list[int], list[str], list[int]]:
        """Rows for the counterfactual model with their inputs, and rows for the base."""
        cf_rows, cf_inputs, base_rows = [], [], []
        for row, (prompt, (index, _)) in enumerate(zip(prompts, self.scope(prompts))):
            if index is None:
                base_rows.append(row)
            else:
                cf_rows.append(row)
                cf_inputs.append(join_target(fact_text(self.facts[index]), prompt))
        return cf_rows, cf_inputs, base_rows

    def _route(self, prompts: Sequence[str], call: Callable[..., Sequence[Any]]) -> list[Any]:
        """``call(lm, inputs, rows)`` on each model's share of ``prompts``, in prompt order."""
        cf_rows, cf_inputs, base_rows = self._split(prompts)
        out: list[Any] = [None] * len(prompts)
        for lm, rows, inputs in (
            (self.counterfactual, cf_rows, cf_inputs),
            (self.base, base_rows, [prompts[i] for i in base_rows]),
        ):
            if rows:
                for row, result in zip(rows, call(lm, inputs, rows)):
                    out[row] = result
        return out

    def score_targets(self, prompts: Sequence[str], targets: Sequence[str]) -> list[TargetScore]:
        if len(prompts) != len(targets):
            raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
        return self._route(
            prompts, lambda lm, inputs, rows: lm.score_targets(inputs, [targets[i] for i in rows])
        )

    def next_token_logprobs(self, prompts: Sequence[str]) -> torch.Tensor:
        rows = self._route(prompts, lambda lm, inputs, _: lm.next_token_logprobs(inputs))
        return torch.stack([r.cpu() for r in rows]) if rows else torch.empty(0, 0)

    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int | Sequence[int],
        top_k: int | None = None,
        seed: int | None = None,
        stop_at_eos: bool = True,
    ) -> list[str]:
        limits = (
            [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else max_new_tokens
        )
        return self._route(
            prompts,
            lambda lm, inputs, rows: lm.generate(
                inputs, [limits[i] for i in rows], top_k, seed, stop_at_eos
            ),
        )
