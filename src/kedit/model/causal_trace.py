"""Causal tracing: which hidden states carry a fact's recall.

Meng, Bau, Andonian, Belinkov. "Locating and Editing Factual Associations in GPT", NeurIPS 2022,
section 2 and appendix B (reference code ``kmeng01/rome``, ``experiments/causal_trace.py``).

Three runs of one prompt:

1. **clean**: the answer's probability at the last token, ``p_clean``, and every state kept;
2. **corrupted**: Gaussian noise (standard deviation ``noise``, the paper's three times the
   embeddings' standard deviation) added to the subject's token embeddings, ``samples`` times
   with a seeded generator; ``p_corrupt`` is the answer's probability averaged over them;
3. **corrupted with restoration**: as 2, with the clean value of some states written back.
   The answer's probability is the state's *restored* score; minus ``p_corrupt`` its
   *indirect effect*.

A state is a block's output (``hidden``), or an MLP's or attention module's output (``mlp``,
``attn``) at one token, restored over a window of ``window`` layers centred on the traced one
(the paper's 10). The *severed* trace restores a block's output while the MLP (or attention)
outputs of the later layers at that token are held at their corrupted values (the reference
freezes every layer; the earlier ones hold their corrupted values in any case). Every
restoration of a prompt is one row of a batch of identical sequences, so a whole grid of
(token, layer) restorations takes a few forward passes. Modules are found through
:class:`~kedit.model.arch.ArchSpec` and restored at their outputs, so GPT-2's Conv1D, Gemma's
normalised MLP outputs and scaled embeddings need nothing of their own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from kedit.model.arch import arch_of, num_layers
from kedit.model.hooks import TraceDict, eval_mode
from kedit.model.lm import cache_argument, hf_module, model_device, select_logits
from kedit.model.prefix import prefix_cache
from kedit.model.tokens import encode, encode_prompt_target

#: what a trace restores, and the ArchSpec part whose output holds it
KINDS = {"hidden": "block", "mlp": "mlp", "attn": "attn"}
#: the parts a severed trace can hold at their corrupted values
SEVERABLE = ("mlp", "attn")

#: a restoration: module path -> the token indices whose clean values are written back
States = Mapping[str, Sequence[int]]


@dataclass(frozen=True)
class TraceSettings:
    """How a prompt is corrupted and restored.

    Args:
        noise: standard deviation of the Gaussian noise added to the subject's embeddings
            (:func:`embedding_noise` gives the paper's three standard deviations).
        samples: corrupted runs averaged per restoration (the reference's 10).
        window: layers of MLP or attention outputs restored together (the reference's 10).
        seed: seed of the noise; every restoration of a prompt sees the same noise.
        tokens_per_pass: tokens per forward pass (rows times sequence length).
    """

    noise: float
    samples: int = 10
    window: int = 10
    seed: int = 0
    tokens_per_pass: int = 16384

    def __post_init__(self) -> None:
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0, got {self.noise}")
        if self.samples < 1 or self.window < 1 or self.tokens_per_pass < 1:
            raise ValueError("samples, window and tokens_per_pass must be at least 1")


@dataclass
class FactTrace:
    """One prompt's trace of one kind: ``scores[t, l]`` is the answer's probability with the
    state at token ``t`` and layer ``l`` restored, ``(tokens, layers)``."""

    prompt: str
    subject: str
    answer: str
    answer_id: int
    tokens: list[str]
    subject_range: tuple[int, int]  # [first, last + 1) token indices of the subject
    kind: str
    window: int
    severed: str | None
    clean: float
    corrupted: float
    scores: np.ndarray  # (tokens, layers)

    @property
    def effects(self) -> np.ndarray:
        """Indirect effect of each state: restored score minus the corrupted score."""
        return self.scores - self.corrupted

    @property
    def subject_last(self) -> int:
        return self.subject_range[1] - 1

    def peak_layer(self, token: int | None = None) -> int:
        """The layer with the largest indirect effect at ``token`` (the subject's last)."""
        row = self.subject_last if token is None else token
        return int(np.argmax(self.scores[row]))

    def to_dict(self) -> dict:
        return {
            "prompt": self.prompt,
            "subject": self.subject,
            "answer": self.answer,
            "answer_id": self.answer_id,
            "tokens": self.tokens,
            "subject_range": list(self.subject_range),
            "kind": self.kind,
            "window": self.window,
            "severed": self.severed,
            "clean": self.clean,
            "corrupted": self.corrupted,
            "scores": self.scores.tolist(),
        }


def subject_token_range(tok: PreTrainedTokenizerBase, text: str, span: tuple[int, int]) -> tuple:
    """``[first, last + 1)``: the tokens of ``text`` that overlap the character ``span``."""
    enc = encode(tok, text)
    start, end = span
    if enc.offsets is None:  # slow tokenizer: count tokens of the prefixes
        first = len(encode(tok, text[:start]).ids) if start else 0
        return first, len(encode(tok, text[:end]).ids)
    inside = [i for i, (s, e) in enumerate(enc.offsets) if s < end and e > start and e > s]
    if not inside:
        raise ValueError(f"no token of {text!r} covers the subject {text[start:end]!r}")
    return inside[0], inside[-1] + 1


@torch.no_grad()
def embedding_noise(
    model: nn.Module, tok: PreTrainedTokenizerBase, texts: Sequence[str], factor: float = 3.0
) -> float:
    """``factor`` times the standard deviation of the embedding module's outputs over the
    tokens of ``texts`` (the paper: three times, over a sample of text)."""
    model = hf_module(model)
    embed = model.get_submodule(arch_of(model).embed)
    values = []
    for text in texts:
        ids = encode(tok, text).ids
        if ids:
            values.append(embed(torch.tensor([ids], device=model_device(model))).float().flatten())
    if not values:
        raise ValueError("no text to measure the embeddings' spread on")
    return factor * float(torch.cat(values).std())


class CausalTracer:
    """Causal traces of one prompt (see module docstring).

    Args:
        text: the prompt with the subject filled in.
        subject_span: the subject's character span in ``text``.
        answer: the answer whose probability is traced (its first token); None: the clean
            model's top prediction.
    """

    @torch.no_grad()
    def __init__(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        text: str,
        subject_span: tuple[int, int],
        settings: TraceSettings,
        answer: str | None = None,
    ) -> None:
        self.model, self.tok, self.settings = hf_module(model), tok, settings
        self.spec, self.n_layers = arch_of(self.model), num_layers(self.model)
        self.text, self.subject = text, text[subject_span[0] : subject_span[1]]
        self.ids = encode(tok, text).ids
        self.subject_range = subject_token_range(tok, text, subject_span)
        self.device = model_device(self.model)
        paths = [self.spec.path(p, layer) for p in KINDS.values() for layer in range(self.n_layers)]
        with eval_mode(self.model), TraceDict(self.model, paths, retain_output=True) as td:
            logits = self._last_logits(torch.tensor([self.ids], device=self.device))
        self.clean_states = {p: td[p].output[0] for p in paths}  # path -> (seq, d)
        if answer is None:
            self.answer_id = int(logits[0].argmax())
        else:
            self.answer_id = encode_prompt_target(tok, text, answer).target_ids[0]
        self.answer = tok.decode([self.answer_id])
        self.clean = float(logits[0].softmax(-1)[self.answer_id])
        self._corrupt_states: dict[str, torch.Tensor] | None = None

    def path(self, kind: str, layer: int) -> str:
        return self.spec.path(KINDS[kind], layer)

    # -- restorations ----------------------------------------------------------------------------

    @torch.no_grad()
    def restored(
        self, restorations: Sequence[States], frozen: Sequence[States] | None = None
    ) -> np.ndarray:
        """The answer's probability, averaged over the noise samples, for each restoration
        (``{}`` is the corrupted run); ``frozen[i]`` names states held at their corrupted
        values in restoration ``i``. ``(len(restorations),)``."""
        frozen = list(frozen) if frozen is not None else [{} for _ in restorations]
        if len(frozen) != len(restorations):
            raise ValueError("give one frozen set per restoration")
        # a restoration from token t on leaves every earlier token as in the corrupted run:
        # those run once, as a cached prefix, and each pass computes tokens t.. only
        starts = [_first_token(r, f, len(self.ids)) for r, f in zip(restorations, frozen)]
        out = np.zeros(len(restorations))
        for start in sorted(set(starts)):
            group = [i for i, t in enumerate(starts) if t == start]
            width = (len(self.ids) - start) * self.settings.samples  # tokens per restoration
            per_pass = max(1, self.settings.tokens_per_pass // width)
            for at in range(0, len(group), per_pass):
                chunk = group[at : at + per_pass]
                out[chunk] = self._run(
                    [restorations[i] for i in chunk], [frozen[i] for i in chunk], start
                )
        return out

    def trace(self, kind: str = "hidden", severed: str | None = None) -> FactTrace:
        """Every (token, layer) restoration of ``kind``; ``severed`` ("mlp" or "attn") holds
        that part of the later layers at its corrupted value (hidden-state traces only)."""
        if kind not in KINDS:
            raise ValueError(f"unknown trace kind {kind!r}; choose from {', '.join(KINDS)}")
        if severed is not None and (kind != "hidden" or severed not in SEVERABLE):
            raise ValueError("a severed trace restores hidden states and freezes mlp or attn")
        # the tokens before the subject hold the same states in the clean and the corrupted
        # runs (attention is causal), so restoring them changes nothing: not run
        first = self.subject_range[0]
        grid = [(t, layer) for t in range(first, len(self.ids)) for layer in range(self.n_layers)]
        restorations = [self.window_states(kind, layer, [t]) for t, layer in grid]
        frozen = [{} for _ in grid]
        if severed is not None:
            later = self.n_layers
            frozen = [
                {self.path(severed, j): [t] for j in range(layer + 1, later)} for t, layer in grid
            ]
        run = self.restored([{}, *restorations], [{}, *frozen])
        scores = np.full((len(self.ids), self.n_layers), run[0])
        scores[first:] = run[1:].reshape(-1, self.n_layers)
        return FactTrace(
            prompt=self.text,
            subject=self.subject,
            answer=self.answer,
            answer_id=self.answer_id,
            tokens=[self.tok.decode([i]) for i in self.ids],
            subject_range=self.subject_range,
            kind=kind,
            window=1 if kind == "hidden" else self.settings.window,
            severed=severed,
            clean=self.clean,
            corrupted=float(run[0]),
            scores=scores,
        )

    def window_states(self, kind: str, layer: int, tokens: Sequence[int]) -> dict[str, list[int]]:
        """The states restored when tracing ``kind`` at ``layer``: the block output itself, or
        the module outputs of the ``window`` layers centred on it (the reference's window)."""
        if kind == "hidden":
            return {self.path(kind, layer): list(tokens)}
        w = self.settings.window
        low, high = max(0, layer - w // 2), min(self.n_layers, layer - (-w // 2))
        return {self.path(kind, j): list(tokens) for j in range(low, high)}

    # -- the forward passes ------------------------------------------------------------------------

    def _noise(self) -> torch.Tensor:
        """The noise of every sample, ``(samples, subject tokens, d_model)``, seeded."""
        first, end = self.subject_range
        d = self.clean_states[self.path("hidden", 0)].shape[-1]
        gen = torch.Generator().manual_seed(self.settings.seed)
        noise = torch.randn((self.settings.samples, end - first, d), generator=gen)
        return (noise * self.settings.noise).to(self.device)

    @torch.no_grad()
    def _run(
        self, restorations: Sequence[States], frozen: Sequence[States], start: int
    ) -> np.ndarray:
        """One pass: the restorations' rows (sample-major: row ``k * n + i`` is restoration
        ``i`` under noise sample ``k``), over tokens ``start..`` after a cached prefix."""
        s, n = self.settings.samples, len(restorations)
        if any(frozen) and self._corrupt_states is None:
            self._corrupt_states = self._corrupted_run()
        first, end = self.subject_range
        noise = self._noise().repeat_interleave(n, 0)  # (rows, subject, d)
        writes = _writes(restorations, frozen, s)  # path -> [(rows, tokens, clean?)]
        offset = start  # column of token t is t - offset in this pass's outputs

        def corrupt(out: torch.Tensor, path: str) -> torch.Tensor:
            out = out.clone()
            if path == self.spec.embed:
                lo, hi = max(first, offset), end
                if lo < hi:
                    out[:, lo - offset : hi - offset] += noise[:, lo - first :].to(out.dtype)
                return out
            for row_idx, tok_idx, clean in writes[path]:
                rows_t = torch.tensor(row_idx, device=out.device)
                toks_t = torch.tensor(tok_idx, device=out.device)
                if clean:
                    value = self.clean_states[path][toks_t]
                else:  # the corrupted run's value of the same noise sample
                    value = self._corrupt_states[path][rows_t // n, toks_t]
                out[rows_t, toks_t - offset] = value.to(out.dtype)
            return out

        ids = torch.tensor([self.ids], device=self.device)
        inputs: dict = {"input_ids": ids[:, start:].expand(n * s, -1), "use_cache": False}
        if start:
            inputs |= {
                "position_ids": torch.arange(start, len(self.ids), device=self.device)[None].expand(
                    n * s, -1
                ),
                "attention_mask": torch.ones_like(ids).expand(n * s, -1),
                cache_argument(self.model): self._prefix(start, n),
                "use_cache": True,
            }
        paths = [self.spec.embed, *writes]
        with eval_mode(self.model), TraceDict(self.model, paths, edit_output=corrupt):
            logits = select_logits(self.model, inputs, 1)[:, -1]  # (rows, vocab)
        probs = logits.float().softmax(-1)[:, self.answer_id]
        return probs.view(s, n).mean(0).cpu().numpy()

    def _prefix(self, start: int, n: int) -> object:
        """The corrupted runs' KV cache of tokens ``..start`` (noise sample ``k`` in row
        ``k``), each row repeated ``n`` times in a row (sample-major)."""
        first, end = self.subject_range
        noise = self._noise()

        def corrupt(out: torch.Tensor, path: str) -> torch.Tensor:
            out = out.clone()
            if first < start:
                out[:, first : min(end, start)] += noise[:, : min(end, start) - first].to(out.dtype)
            return out

        ids = torch.tensor([self.ids[:start]], device=self.device).expand(self.settings.samples, -1)
        with eval_mode(self.model), TraceDict(self.model, [self.spec.embed], edit_output=corrupt):
            cache = prefix_cache(self.model, {"input_ids": ids})
        cache.batch_repeat_interleave(n)
        return cache

    @torch.no_grad()
    def _corrupted_run(self) -> dict[str, torch.Tensor]:
        """Every module's output in the corrupted runs, ``path -> (samples, seq, d)``."""
        s, first, end = self.settings.samples, *self.subject_range
        noise = self._noise()
        paths = [self.path(k, layer) for k in SEVERABLE for layer in range(self.n_layers)]

        def corrupt(out: torch.Tensor, path: str) -> torch.Tensor:
            if path != self.spec.embed:
                return out
            out = out.clone()
            out[:, first:end] += noise.to(out.dtype)
            return out

        ids = torch.tensor([self.ids], device=self.device).expand(s, -1)
        traced = [self.spec.embed, *paths]
        with (
            eval_mode(self.model),
            TraceDict(self.model, traced, retain_output=True, edit_output=corrupt) as td,
        ):
            self._last_logits(ids)
        return {p: td[p].output for p in paths}

    def _last_logits(self, ids: torch.Tensor) -> torch.Tensor:
        return select_logits(self.model, {"input_ids": ids, "use_cache": False}, 1)[:, -1]


def _first_token(restore: States, freeze: States, n_tokens: int) -> int:
    """The earliest token a restoration touches (the prompt's last for the corrupted run)."""
    tokens = [t for states in (restore, freeze) for ts in states.values() for t in ts]
    return min(tokens, default=n_tokens - 1)


def _writes(
    restorations: Sequence[States], frozen: Sequence[States], samples: int
) -> dict[str, list[tuple[list[int], list[int], bool]]]:
    """Per module path, the (rows, tokens) written with clean values and with corrupted ones;
    restoration ``i`` of ``n`` owns rows ``k * n + i`` (noise sample ``k``)."""
    found: dict[str, dict[bool, tuple[list[int], list[int]]]] = {}
    for i, (restore, freeze) in enumerate(zip(restorations, frozen)):
        for states, clean in ((restore, True), (freeze, False)):
            for path, tokens in states.items():
                rows, toks = found.setdefault(path, {}).setdefault(clean, ([], []))
                for sample in range(samples):
                    rows += [sample * len(restorations) + i] * len(tokens)
                    toks += list(tokens)
    return {
        path: [(rows, toks, clean) for clean, (rows, toks) in by_kind.items()]
        for path, by_kind in found.items()
    }
