"""Routing decisions of added parts reach the audit: ``RoutedLM.routed`` reads what the added
module decided on each prompt, and ``evaluate`` reports the share of rewrite, paraphrase and
neighbourhood probes on which it fired, per case and in the summary."""

import json

from kedit.eval.evaluate import evaluate
from kedit.methods import METHODS
from kedit.model.lm import RoutingModel, as_language_model
from kedit.types import EditCase, EditRequest, Probe, ProbeKind
from tests.conftest import tiny_model
from tests.tiny_configs import TINY

REQUEST = EditRequest("Tourists visit {}", "the Eiffel Tower", "Rome", "Paris")


def test_grace_says_which_prompts_its_codebook_answered(tokenizer, env):
    model = tiny_model("llama")
    assert not isinstance(as_language_model(model, tokenizer), RoutingModel)
    edit = METHODS["grace"].for_model(model, TINY["grace"], env).edit(model, tokenizer, REQUEST)
    lm = edit.lm
    assert isinstance(lm, RoutingModel)
    far = "Completely different words about cooking pasta at home"
    # in a batch of mixed lengths (left padding) each prompt is judged at its own last token
    assert lm.routed([REQUEST.text, far, REQUEST.text]) == [True, False, True]
    # the codebook's own radius decides: widen it and the unrelated prompt falls inside
    codebook = lm.codebook
    codebook.eps.fill_(1e6)
    assert lm.routed([far]) == [True]
    edit.restore()


def test_evaluate_reports_routing_rates_per_probe_kind(tokenizer, env, tmp_path):
    model = tiny_model("llama")
    probes = (
        Probe(ProbeKind.REWRITE, REQUEST.text, "Rome", "Paris"),
        Probe(ProbeKind.PARAPHRASE, "Completely different words about cooking", "Rome", "Paris"),
        Probe(ProbeKind.NEIGHBORHOOD, "A list of old songs", "Paris", "Rome"),
        Probe(ProbeKind.NEIGHBORHOOD, REQUEST.text, "Paris", "Rome"),
    )
    case = EditCase("c1", (REQUEST,), probes)
    evaluate(
        model,
        tokenizer,
        [case],
        "grace",
        overrides=TINY["grace"],
        out_dir=tmp_path / "run",
        env=env,
        progress=False,
    )
    row = json.loads((tmp_path / "run" / "results.jsonl").read_text().splitlines()[0])
    assert row["details"]["routed"] == {
        "rewrite": [True],
        "paraphrase": [False],
        "neighborhood": [False, True],
    }
    assert row["metrics"]["routed_rewrite"] == {"post": 1.0}
    assert row["metrics"]["routed_neighborhood"] == {"post": 0.5}
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())["metrics"]
    assert summary["routed_paraphrase"]["group"] == "routing"
    assert summary["routed_paraphrase"]["post"] == 0.0


def test_a_method_without_routing_reports_no_routing_rows(tokenizer, env, tmp_path):
    model = tiny_model("llama")
    case = EditCase("c1", (REQUEST,), (Probe(ProbeKind.REWRITE, REQUEST.text, "Rome", "Paris"),))
    evaluate(
        model,
        tokenizer,
        [case],
        "ft-m",
        overrides=TINY["ft-m"],
        out_dir=tmp_path / "run",
        env=env,
        progress=False,
    )
    row = json.loads((tmp_path / "run" / "results.jsonl").read_text().splitlines()[0])
    assert "routed_rewrite" not in row["metrics"] and "routed" not in row["details"]
