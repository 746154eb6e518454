"""Routing decisions of added parts, for the audit.

An added-parameter method (GRACE, MELO, WISE, T-Patcher) puts a module into the model that acts
on some inputs only. Such a module records, on each forward pass, which rows it fired on, in a
``fired`` attribute: a ``(batch,)`` bool tensor, decided at each row's last position (where a
left-padded prompt ends and its answer starts). :class:`RoutedLM` runs prompts through the model
and reads those flags; it is the method's :class:`~kedit.model.lm.LanguageModel`, so the audit
reports, per probe, whether the edit's part fired (:class:`~kedit.model.lm.RoutingModel`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from kedit.model.lm import HFLanguageModel, model_device
from kedit.model.tokens import encode, pad


class RoutedLM(HFLanguageModel):
    """The edited model behind the ``LanguageModel`` interface, and the routing decisions of
    its added ``parts`` (modules with a ``fired`` attribute, see the module docstring)."""

    def __init__(
        self, model: nn.Module, tok: PreTrainedTokenizerBase, parts: Sequence[nn.Module]
    ) -> None:
        super().__init__(model, tok)
        self.hf_model = model  # what a session's next edit unwraps (``hf_module``)
        self.parts = list(parts)

    @torch.no_grad()
    def routed(self, prompts: Sequence[str]) -> list[bool]:
        encoded = [encode(self.tokenizer, p).ids for p in prompts]
        fired = [False] * len(prompts)
        for idx in self._batches([len(e) for e in encoded]):
            batch = pad([encoded[i] for i in idx], self._pad, left=True)
            for part in self.parts:
                part.fired = None
            self._last_logits(batch.to(model_device(self.model)), 1)
            for part in self.parts:
                if part.fired is None:
                    continue
                for row, i in enumerate(idx):
                    fired[i] = fired[i] or bool(part.fired[row])
        return fired
