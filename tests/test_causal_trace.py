"""Causal tracing on the tiny models: restorations, windows, severing, shapes and token ranges."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kedit.methods import METHODS
from kedit.methods._trace import subject_mlp_trace
from kedit.model.arch import arch_of
from kedit.model.causal_trace import (
    KINDS,
    CausalTracer,
    TraceSettings,
    embedding_noise,
    subject_token_range,
)
from kedit.types import EditRequest
from tests.conftest import TINY_CONFIGS, tiny_model
from tests.tiny_configs import TINY

TEXT = "The capital city of France is"
SUBJECT = (20, 26)  # "France"
ARCHS = ["gpt2", "llama", "gemma3_text"]


def peaked(model_type: str) -> torch.nn.Module:
    """A tiny model with a sharper output distribution (its unembedding scaled up), so that
    the corruption moves the answer's probability by more than float noise."""
    model = tiny_model(model_type)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8)
    return model


def tracer(model, tok, noise: float = 3.0, **kw) -> CausalTracer:
    settings = TraceSettings(noise=noise, samples=kw.pop("samples", 3), **kw)
    return CausalTracer(model, tok, TEXT, SUBJECT, settings)


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_shapes_token_ranges_and_corruption(model_type: str, tokenizer) -> None:
    tr = tracer(peaked(model_type), tokenizer, window=2)
    first, end = subject_token_range(tokenizer, TEXT, SUBJECT)
    assert tokenizer.decode(tr.ids[first:end]).strip() == "France"
    for kind in ("hidden", "mlp", "attn"):
        trace = tr.trace(kind)
        assert trace.scores.shape == (len(tr.ids), 2)
        assert trace.subject_range == (first, end)
        assert np.all((trace.scores >= 0) & (trace.scores <= 1))
    # tokens before the subject are untouched by the noise: restoring them changes nothing
    # (which is why the trace does not run them)
    hidden = tr.trace("hidden")
    prefix = [
        tr.window_states(k, layer, [t]) for k in KINDS for layer in (0, 1) for t in range(first)
    ]
    assert first > 0 and np.allclose(tr.restored(prefix), hidden.corrupted, atol=1e-6)
    assert np.all(hidden.scores[:first] == hidden.corrupted)
    # the noise does move the answer's probability (else every test below is vacuous)
    assert abs(hidden.corrupted - hidden.clean) > 1e-5


@pytest.mark.parametrize("model_type", ARCHS)
def test_without_noise_every_restoration_recovers_the_clean_probability(
    model_type: str, tokenizer
) -> None:
    tr = tracer(peaked(model_type), tokenizer, noise=0.0)
    for kind in ("hidden", "mlp", "attn"):
        trace = tr.trace(kind)
        assert trace.corrupted == pytest.approx(trace.clean, abs=1e-5)
        assert np.allclose(trace.scores, trace.clean, atol=1e-5)


@pytest.mark.parametrize("model_type", ARCHS)
def test_restoring_every_state_at_once_recovers_the_clean_run_exactly(
    model_type: str, tokenizer
) -> None:
    tr = tracer(peaked(model_type), tokenizer)
    everything = {tr.path("hidden", layer): list(range(len(tr.ids))) for layer in range(2)}
    corrupted, restored = tr.restored([{}, everything])
    assert restored == pytest.approx(tr.clean, abs=1e-6)
    assert abs(corrupted - tr.clean) > 1e-5
    # so does the last token's final hidden state alone: the answer is read there
    (last,) = tr.restored([{tr.path("hidden", 1): [len(tr.ids) - 1]}])
    assert last == pytest.approx(tr.clean, abs=1e-6)


def test_restoring_the_first_layer_from_the_subject_on_removes_the_corruption(tokenizer) -> None:
    """The corruption reaches the tokens after the subject through layer 0's attention: restoring
    layer 0's outputs from the subject's first token to the end removes it exactly, restoring
    the subject's tokens alone does not."""
    tr = tracer(peaked("llama"), tokenizer)
    first, end = tr.subject_range
    layer0 = tr.path("hidden", 0)
    from_subject, subject_only = tr.restored(
        [{layer0: list(range(first, len(tr.ids)))}, {layer0: list(range(first, end))}]
    )
    assert from_subject == pytest.approx(tr.clean, abs=1e-6)
    assert abs(subject_only - tr.clean) > 1e-5


@pytest.mark.parametrize("model_type", ARCHS)
def test_a_severed_trace_equals_the_plain_one_when_nothing_is_frozen(
    model_type: str, tokenizer
) -> None:
    tr = tracer(peaked(model_type), tokenizer)
    plain = tr.trace("hidden")
    grid = [(t, layer) for t in range(len(tr.ids)) for layer in range(2)]
    restorations = [tr.window_states("hidden", layer, [t]) for t, layer in grid]
    nothing = tr.restored(restorations, [{} for _ in grid]).reshape(plain.scores.shape)
    assert np.allclose(nothing, plain.scores, atol=1e-6)
    # freezing the MLPs of the later layers does change the restored scores somewhere
    severed = tr.trace("hidden", severed="mlp")
    assert severed.scores.shape == plain.scores.shape
    assert not np.allclose(severed.scores[:, 0], plain.scores[:, 0], atol=1e-6)
    # at the last layer nothing comes later: severed and plain agree
    assert np.allclose(severed.scores[:, -1], plain.scores[:, -1], atol=1e-6)


def test_freezing_a_state_at_its_corrupted_value_equals_the_corrupted_run(tokenizer) -> None:
    tr = tracer(peaked("gpt2"), tokenizer)
    last = len(tr.ids) - 1
    frozen = {tr.path("mlp", 1): [last], tr.path("attn", 1): [last]}
    corrupted, held = tr.restored([{}, {}], [{}, frozen])
    assert held == pytest.approx(corrupted, abs=1e-6)


def test_windows_are_centred_and_clipped(tokenizer) -> None:
    model = peaked("llama")
    tr = tracer(model, tokenizer, window=3)
    spec = arch_of(model)
    assert list(tr.window_states("mlp", 0, [1])) == [spec.path("mlp", 0), spec.path("mlp", 1)]
    assert tr.window_states("hidden", 1, [2]) == {spec.path("block", 1): [2]}


def test_batching_does_not_change_the_scores(tokenizer) -> None:
    model = peaked("gpt2")
    big = tracer(model, tokenizer).trace("mlp")
    small = tracer(model, tokenizer, tokens_per_pass=1).trace("mlp")
    assert np.allclose(big.scores, small.scores, atol=1e-6)


def test_the_noise_is_three_embedding_standard_deviations(tokenizer) -> None:
    model = tiny_model("gpt2")
    scale = embedding_noise(model, tokenizer, [TEXT, "Paris is a city"])
    ids = tokenizer(TEXT)["input_ids"] + tokenizer("Paris is a city")["input_ids"]
    expected = 3 * float(model.transformer.wte.weight[ids].std())
    assert scale == pytest.approx(expected, rel=1e-5)


def test_bad_requests_are_refused(tokenizer) -> None:
    tr = tracer(peaked("gpt2"), tokenizer)
    with pytest.raises(ValueError, match="kind"):
        tr.trace("residual")
    with pytest.raises(ValueError, match="severed"):
        tr.trace("mlp", severed="mlp")
    with pytest.raises(ValueError, match="noise"):
        TraceSettings(noise=-1.0)


@pytest.mark.parametrize("method", ["rome", "r-rome"])
def test_layer_auto_edits_the_peak_of_the_facts_trace(method: str, tokenizer, env) -> None:
    model = peaked("llama")
    request = EditRequest("The capital city of {} is", "France", "Rome", "Paris")
    trace = subject_mlp_trace(model, tokenizer, request, env)
    assert len(trace.scores) == 2 and trace.peak == int(np.argmax(trace.scores))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = {**TINY[method], "layer": "auto"}
    edit = METHODS[method].for_model(model, config, env).edit(model, tokenizer, request)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert changed == [f"model.layers.{trace.peak}.mlp.down_proj.weight"]
    assert edit.info["layer_trace"]["peak"] == trace.peak
    assert edit.info["layer_trace"]["mlp_effect"] == pytest.approx(trace.effects)
    edit.restore()


def test_layer_auto_is_accepted_from_the_command_line_and_nothing_else_is() -> None:
    config = METHODS["rome"].config_cls
    assert config.checked({"layer": "auto"}) == {"layer": "auto"}
    assert config.checked({"layer": "3"}) == {"layer": 3}
    with pytest.raises(ValueError, match="layer"):
        config.checked({"layer": "top"})


@pytest.mark.parametrize("model_type", ARCHS)
def test_the_cached_prefix_gives_the_scores_of_a_whole_pass(model_type: str, tokenizer) -> None:
    """Restorations from token t on run tokens t.. after the corrupted runs' cached prefix; the
    scores equal those of passes over the whole prompt."""
    tr = tracer(peaked(model_type), tokenizer)
    first, end = tr.subject_range
    for start in (first + 1, end, len(tr.ids) - 1):
        restorations = [tr.window_states(k, 1, [start]) for k in KINDS]
        frozen = [{}, {}, {tr.path("attn", 1): [start]}]
        cached = tr._run(restorations, frozen, start)
        whole = tr._run(restorations, frozen, 0)
        assert np.allclose(cached, whole, atol=1e-6)
    assert not np.allclose(cached, tr.clean, atol=1e-6)
