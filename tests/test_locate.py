"""Traces of many facts: token categories, the average indirect effect with its intervals, the
files ``kedit trace`` writes, and the command itself."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kedit.cli import main
from kedit.locate.effects import CATEGORIES, average_effect, category_effects, token_categories
from kedit.locate.facts import TraceOptions, trace_facts
from kedit.locate.report import write_traces
from kedit.model.causal_trace import FactTrace
from kedit.types import EditRequest
from tests.conftest import data_dir, tiny_model


def fake_trace(scores: np.ndarray, subject: tuple[int, int], corrupted: float = 0.1) -> FactTrace:
    n = scores.shape[0]
    return FactTrace(
        prompt="p",
        subject="s",
        answer=" a",
        answer_id=5,
        tokens=[f"t{i}" for i in range(n)],
        subject_range=subject,
        kind="mlp",
        window=10,
        severed=None,
        clean=0.9,
        corrupted=corrupted,
        scores=scores,
    )


def test_token_categories_follow_the_paper() -> None:
    # "The Eiffel Tower is in" with a 3-token subject at 0..3 and 5 tokens
    assert token_categories(5, (0, 3)) == [[0], [1], [2], [3], [], [4]]
    # one-token subject in the middle: no first / middle subject token of its own
    assert token_categories(6, (1, 2)) == [[], [], [1], [2], [3, 4], [5]]
    # the subject ends the prompt: its last token is also the prompt's last
    assert token_categories(3, (0, 3)) == [[0], [1], [2], [], [], [2]]


def test_category_effects_average_the_tokens_of_each_category() -> None:
    scores = np.arange(12, dtype=float).reshape(6, 2) / 100 + 0.1  # (tokens, layers)
    effects = category_effects(fake_trace(scores, (1, 2)))
    assert np.isnan(effects[0]).all() and np.isnan(effects[1]).all()
    assert effects[2] == pytest.approx(scores[1] - 0.1)
    assert effects[4] == pytest.approx(scores[3:5].mean(0) - 0.1)
    assert effects[5] == pytest.approx(scores[5] - 0.1)


def test_the_average_effect_skips_facts_without_a_category_and_has_intervals() -> None:
    rng = np.random.default_rng(0)
    traces = [
        fake_trace(0.1 + rng.uniform(0, 0.5, (6, 3)), (1, 2) if i % 2 else (0, 3))
        for i in range(20)
    ]
    avg = average_effect(traces, resamples=500)
    by_hand = np.nanmean(np.stack([category_effects(t) for t in traces]), axis=0)
    assert np.allclose(avg.mean, by_hand)
    assert avg.n.tolist() == [10, 10, 20, 20, 20, 20]
    assert np.all(avg.low <= avg.mean) and np.all(avg.mean <= avg.high)
    assert np.all(avg.high - avg.low > 0)
    assert avg.total_effect == pytest.approx(0.8)
    assert avg.peak() == int(np.argmax(by_hand[CATEGORIES.index("last subject token")]))
    with pytest.raises(ValueError, match="one kind"):
        average_effect([traces[0], FactTrace(**{**traces[1].__dict__, "kind": "attn"})])


def test_traced_facts_are_written_as_json_npz_figures_and_a_page(tokenizer, env, tmp_path):
    pytest.importorskip("matplotlib")
    model = tiny_model("gpt2")
    requests = [
        EditRequest("The capital city of {} is", "France", "Rome", "Paris"),
        EditRequest("{} plays the sport of", "Michael Jordan", "golf", "basketball"),
    ]
    options = TraceOptions(kinds=("hidden", "mlp"), severed=("attn",), samples=2, window=2)
    traced = trace_facts(model, tokenizer, requests, env, options)
    assert traced.names == ["hidden", "mlp", "hidden-severed-attn"]
    assert len(traced.seconds) == 2 and traced.noise > 0
    files = write_traces(traced, tmp_path / "out", {"model": "tiny"})
    record = json.loads(files["json"].read_text())
    first = record["facts"][0]["mlp"]
    assert np.allclose(np.load(files["npz"])["fact0_mlp"], first["scores"])
    assert first["answer"].strip() == "Paris"[: len(first["answer"].strip())]
    average = json.loads(files["average"].read_text())
    assert set(average) == {"hidden", "mlp", "hidden-severed-attn"}
    page = files["html"].read_text()
    assert page.count("<img") == 1 + 2 * 3  # the average and every heatmap
    assert (tmp_path / "out" / "fact1_hidden-severed-attn.png").read_bytes()[:4] == b"\x89PNG"


def test_facts_the_model_does_not_know_can_be_left_out(tokenizer, env) -> None:
    requests = [EditRequest("The capital city of {} is", "France", "Rome", "Paris")]
    traced = trace_facts(tiny_model("llama"), tokenizer, requests, env, TraceOptions(min_clean=0.5))
    assert traced.traces == [] and traced.skipped[0]["clean"] < 0.5


def test_kedit_trace_on_a_prompt_and_on_a_dataset(tokenizer, env, tmp_path, corpus_file, capsys):
    pytest.importorskip("matplotlib")
    folder = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    common = ["--model", str(folder), "--cache-dir", str(tmp_path / "c")]
    common += ["--stats-corpus", str(corpus_file), "--quiet", "--samples", "2", "--window", "2"]
    one = ["trace", *common, "--prompt", "{} is in", "--subject", "Paris", "--out"]
    assert main([*one, str(tmp_path / "one"), "--kinds", "mlp"]) == 0
    out = capsys.readouterr().out
    assert "mlp: p(" in out and "peak is layer" in out
    many = ["trace", *common, "--dataset", "demo", "--limit", "3", "--kinds", "hidden"]
    assert main([*many, "--data-dir", str(data_dir()), "--out", str(tmp_path / "many")]) == 0
    assert "3 facts: average indirect effect" in capsys.readouterr().out
    assert (tmp_path / "many" / "average.png").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--prompt", "{} is in"], "--subject"),
        (["--prompt", "{} is in", "--subject", "x", "--kinds", "residual"], "--kinds"),
        (["--prompt", "{} is in", "--subject", "x", "--severed", "hidden"], "--severed"),
        (["--prompt", "{} is in", "--subject", "x", "--samples", "0"], "--samples"),
    ],
)
def test_bad_trace_options_fail_before_any_model_loads(extra, message, tmp_path, capsys) -> None:
    code = main(["trace", "--model", str(tmp_path / "no-model"), *extra])
    assert code == 2 and message in capsys.readouterr().err
