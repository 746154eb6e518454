"""Tracing one fact or a dataset's facts: every kind asked for, timed, with the noise of the
environment's text sample.

Each fact is a prompt with its subject and the answer traced: the request's true answer
(``target_true``, the fact the model is meant to know), else the model's own top prediction.
Facts the model does not know make weak traces (little to recover); ``min_clean`` leaves out
those whose clean answer probability is below it, as the paper traces only known facts, and the
result says how many were left out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn
from transformers import PreTrainedTokenizerBase

from kedit.env import Environment
from kedit.methods._trace import corpus_noise
from kedit.model.causal_trace import CausalTracer, FactTrace, TraceSettings
from kedit.types import EditRequest

log = logging.getLogger(__name__)

#: what ``kedit trace`` computes by default: the paper's three traces
DEFAULT_KINDS = ("hidden", "mlp", "attn")


@dataclass(frozen=True)
class TraceOptions:
    """Which traces of each fact, and how.

    Args:
        kinds: of ``hidden``, ``mlp``, ``attn``.
        severed: parts (``mlp``, ``attn``) held at their corrupted values in extra hidden-state
            traces (the paper's figure 3).
        samples, window, seed: see :class:`~kedit.model.causal_trace.TraceSettings`.
        noise: the noise's standard deviation; None: three standard deviations of the
            embeddings on the statistics corpus.
        min_clean: facts whose clean answer probability is below this are left out.
    """

    kinds: tuple[str, ...] = DEFAULT_KINDS
    severed: tuple[str, ...] = ()
    samples: int = 10
    window: int = 10
    seed: int = 0
    noise: float | None = None
    min_clean: float = 0.0


@dataclass
class TracedFacts:
    """The traces of many facts: ``traces[i][name]`` for the i-th kept fact, where ``name`` is
    a kind or ``hidden-severed-mlp``; the facts left out and the seconds each fact took."""

    noise: float
    options: TraceOptions
    traces: list[dict[str, FactTrace]] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def of(self, name: str) -> list[FactTrace]:
        return [t[name] for t in self.traces]

    @property
    def names(self) -> list[str]:
        return list(self.traces[0]) if self.traces else []


def trace_name(kind: str, severed: str | None) -> str:
    return kind if severed is None else f"{kind}-severed-{severed}"


def trace_facts(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    requests: Sequence[EditRequest],
    env: Environment,
    options: TraceOptions = TraceOptions(),
) -> TracedFacts:
    """Every trace of ``options`` for each request's fact (see module docstring)."""
    noise = options.noise if options.noise is not None else corpus_noise(model, tok, env)
    settings = TraceSettings(noise, options.samples, options.window, options.seed)
    out = TracedFacts(noise, options)
    for i, request in enumerate(requests):
        t0 = time.perf_counter()
        tracer = CausalTracer(
            model, tok, request.text, request.subject_span, settings, request.target_true
        )
        if tracer.clean < options.min_clean:
            out.skipped.append({"prompt": request.text, "clean": tracer.clean})
            continue
        traces = {trace_name(k, None): tracer.trace(k) for k in options.kinds}
        for part in options.severed:
            traces[trace_name("hidden", part)] = tracer.trace("hidden", severed=part)
        out.traces.append(traces)
        out.seconds.append(time.perf_counter() - t0)
        log.info("traced fact %d/%d in %.1f s: %s", i + 1, len(requests), out.seconds[-1], request)
    return out
