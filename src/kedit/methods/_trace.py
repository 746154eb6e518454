"""Causal tracing for editors: the noise a model's traces use, and the layer a fact's trace
points to (``layer: auto`` of ROME-style methods, the bench's layer sweep).

The noise is three standard deviations of the embedding module's outputs over a seeded sample
of the environment's statistics corpus (the paper measures it on text), computed once per model
and environment. A fact's layer is the one whose MLP outputs, restored around the subject's last
token in the corrupted run, recover most of the answer's probability: the peak of the paper's
MLP trace at that token (window 10, 10 noise samples).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn
from transformers import PreTrainedTokenizerBase

from kedit.corpus import load_corpus
from kedit.env import Environment
from kedit.model.causal_trace import CausalTracer, TraceSettings, embedding_noise
from kedit.types import EditRequest

#: documents of the statistics corpus the embeddings' spread is measured on
NOISE_DOCUMENTS = 200
#: characters of each document read (the spread needs no long texts)
NOISE_CHARS = 2000


def corpus_noise(model: nn.Module, tok: PreTrainedTokenizerBase, env: Environment) -> float:
    """Three standard deviations of ``model``'s embeddings on the statistics corpus, memoised
    under the model's (unedited) fingerprint."""

    def compute() -> float:
        corpus = load_corpus(env.stats_corpus, env.data_dir)
        texts = [d[:NOISE_CHARS] for d in corpus.sample(NOISE_DOCUMENTS, env.seed)]
        return embedding_noise(model, tok, texts)

    return env.memo(("trace-noise", env.fingerprint(model), env.stats_corpus), compute)


@dataclass(frozen=True)
class LayerTrace:
    """A fact's MLP trace at its subject's last token: the restored answer probability per
    layer, the clean and corrupted ones, and the peak."""

    scores: tuple[float, ...]  # (layers,)
    clean: float
    corrupted: float

    @property
    def effects(self) -> list[float]:
        return [s - self.corrupted for s in self.scores]

    @property
    def peak(self) -> int:
        return int(np.argmax(self.scores))

    def to_dict(self) -> dict:
        return {
            "mlp_effect": self.effects,
            "peak": self.peak,
            "clean": self.clean,
            "corrupted": self.corrupted,
        }


def subject_mlp_trace(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    request: EditRequest,
    env: Environment,
    kind: str = "mlp",
) -> LayerTrace:
    """The ``kind`` trace of ``request``'s fact (its prompt and true answer, or the model's own
    prediction when it names none) at the subject's last token, every layer."""
    settings = TraceSettings(noise=corpus_noise(model, tok, env), seed=env.seed)
    tracer = CausalTracer(
        model, tok, request.text, request.subject_span, settings, answer=request.target_true
    )
    last = tracer.subject_range[1] - 1
    layers = range(tracer.n_layers)
    scores = tracer.restored([{}] + [tracer.window_states(kind, layer, [last]) for layer in layers])
    return LayerTrace(tuple(float(s) for s in scores[1:]), tracer.clean, float(scores[0]))
