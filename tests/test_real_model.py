"""Real-model tests on SmolLM2-135M (offline GGUF copy), CPU. Minutes, not seconds."""

from __future__ import annotations

import pytest
import torch

import kedit
from kedit.env import Environment
from kedit.methods import METHODS
from tests.conftest import data_dir

pytestmark = pytest.mark.slow

EIFFEL = kedit.EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome", "Paris")


@pytest.fixture(scope="module")
def smol():
    model, tok = kedit.load_model("smollm2-135m", device="cpu")
    env = Environment(data_dir=data_dir(), progress=False)
    return model, tok, env


def top1(lm, prompt: str, tok) -> str:
    return tok.decode([int(lm.next_token_logprobs([prompt])[0].argmax())])


def test_rome_moves_the_eiffel_tower_to_rome(smol):
    model, tok, env = smol
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with kedit.edit(model, tok, EIFFEL, method="rome", env=env) as edit:
        assert top1(edit.lm, EIFFEL.text, tok) == " Rome"
        assert top1(edit.lm, "The capital of France is", tok) == " Paris"
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_rome_on_20_counterfact_cases(smol):
    """ROME's SmolLM2 preset on real cases: twenty, since ten cannot hold the neighbourhood
    score to 0.1 (measured: the first ten move it 0.70 -> 0.50, the first twenty 0.60 -> 0.55,
    the first fifty 0.70 -> 0.62)."""
    model, tok, env = smol
    report = kedit.evaluate(
        model,
        tok,
        "counterfact",
        "rome",
        limit=20,
        env=env,
        metrics=["efficacy_score", "neighborhood_score"],
        progress=False,
    )
    metrics = report.summary["metrics"]
    assert report.summary["errors"] == 0 and metrics["efficacy_score"]["n"] == 20
    assert metrics["efficacy_score"]["post"] >= 0.9
    ns = metrics["neighborhood_score"]
    assert abs(ns["post"] - ns["pre"]) <= 0.1


def one_update_of_20_cases(smol, name: str, metrics: list[str]) -> dict:
    """The summary of ``name`` editing the first 20 CounterFact cases in one update, after
    checking it was one update and that the model was restored exactly."""
    model, tok, env = smol
    state = {k: v.clone() for k, v in model.state_dict().items()}
    report = kedit.evaluate(
        model,
        tok,
        "counterfact",
        name,
        protocol=kedit.Batch(20),
        limit=20,
        env=env,
        metrics=metrics,
        progress=False,
    )
    assert {row["checkpoint"] for row in report.rows} == {20}  # one update of 20
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    return report.summary["metrics"]


@pytest.mark.parametrize("name", ["memit", "emmet", "alphaedit"])
def test_batch_of_20_counterfact_cases_in_one_call(name, smol):
    """Issue 3's acceptance: 20 CounterFact facts in one update, efficacy score at least 0.9 and
    the neighbourhood score within 0.1 of the unedited model's."""
    metrics = one_update_of_20_cases(smol, name, ["efficacy_score", "neighborhood_score"])
    assert metrics["efficacy_score"]["n"] == 20
    assert metrics["efficacy_score"]["post"] >= 0.9
    ns = metrics["neighborhood_score"]
    assert abs(ns["post"] - ns["pre"]) <= 0.1


def test_ultraedit_on_20_counterfact_cases_in_one_turn(smol):
    """UltraEdit's SmolLM2 preset, 20 facts in one turn (measured: efficacy 0.30 -> 0.80,
    paraphrase 0.30 -> 0.75, neighbourhood 0.60 -> 0.35: it costs locality on this model, see
    the preset); the model restores exactly."""
    metrics = one_update_of_20_cases(
        smol, "ultraedit", ["efficacy_score", "paraphrase_score", "neighborhood_score"]
    )
    assert metrics["efficacy_score"]["pre"] <= 0.4 and metrics["efficacy_score"]["post"] >= 0.7
    assert metrics["paraphrase_score"]["post"] >= 0.7
    ns = metrics["neighborhood_score"]
    assert ns["post"] >= ns["pre"] - 0.3


#: methods known to damage unrelated knowledge (KN, as the survey finds): checked on their own
DAMAGING = {"kn"}
#: UltraEdit standardises keys and gradients over the target tokens it has seen, so a first edit
#: of one one-token target is refused (tests/test_ultraedit.py): it is checked on a batch above
BATCH_ONLY = {"ultraedit"}
#: in-context methods need a model that learns in context; SmolLM2-135M does not (it answers
#: " Paris" even with the new fact stated twice just before the prompt), so IKE is checked for
#: what it does on this model in test_ike_on_the_real_model instead
LEARNS_IN_CONTEXT = False
#: methods that edit with a trained editor (kedit train: about an hour each on these CPUs): their
#: pipeline is tested on tiny models (tests/test_train.py, the contract), their quality on
#: SmolLM2 measured by benchmarks/bench_meta.py
TRAINED = {n for n in METHODS.names() if METHODS[n].needs_training}


@pytest.mark.parametrize(
    "name",
    [
        n
        for n in METHODS.names()
        if n not in {"rome", *DAMAGING, *BATCH_ONLY, *TRAINED}
        and (LEARNS_IN_CONTEXT or not METHODS[n].reads_context)
    ],
)
def test_every_method_edits_the_real_model(name, smol):
    """Each method's preset for SmolLM2 makes the new target the answer, and restores exactly."""
    model, tok, env = smol
    lm = kedit.HFLanguageModel(model, tok)
    before = lm.score_targets([EIFFEL.text], [EIFFEL.target_new])[0].mean_logprob
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with kedit.edit(model, tok, EIFFEL, method=name, env=env) as edit:
        after = edit.lm.score_targets([EIFFEL.text], [EIFFEL.target_new])[0].mean_logprob
        assert after > before + 1.0
        assert top1(edit.lm, EIFFEL.text, tok) == " Rome"
        assert top1(edit.lm, "The capital of France is", tok) == " Paris"
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_kn_edits_the_real_model_and_restores(smol):
    """KN's preset for SmolLM2 rewrites a few neurons' value slots so that " Rome" becomes the
    answer; it is not expected to spare "The capital of France is" (see presets/kn/llama.yaml)."""
    model, tok, env = smol
    lm = kedit.HFLanguageModel(model, tok)
    before = lm.score_targets([EIFFEL.text], [EIFFEL.target_new])[0].mean_logprob
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with kedit.edit(model, tok, EIFFEL, method="kn", env=env) as edit:
        after = edit.lm.score_targets([EIFFEL.text], [EIFFEL.target_new])[0].mean_logprob
        assert after > before + 1.0
        assert top1(edit.lm, EIFFEL.text, tok) == " Rome"
        assert 1 < len(edit.info["neurons"]) < 100
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_ike_on_the_real_model(smol):
    """IKE retrieves related CounterFact facts with MiniLM and answers through the same
    LanguageModel interface: its scores are the base model's on the contextualised prompt (up
    to float noise: the context's keys and values are computed once, in a pass of their own)."""
    model, tok, env = smol
    edit = kedit.edit(model, tok, EIFFEL, method="ike", env=env, overrides={"pool_size": 2000})
    wrapper = edit.model
    demos = wrapper.demos.split("\n\n")[:-1]
    assert len(demos) == 32
    # the nearest demonstrations (last) are about where things are
    assert any(w in demos[-1] for w in ("located", "found in", "city"))
    prompts = [EIFFEL.text, "The capital of France is"]
    base = kedit.HFLanguageModel(model, tok)
    direct = base.score_targets(wrapper.contextualise(prompts), ["Rome", "Paris"])
    scores = edit.lm.score_targets(prompts, ["Rome", "Paris"])
    assert [s.argmax_ids for s in scores] == [d.argmax_ids for d in direct]
    assert [s.logprobs for s in scores] == [pytest.approx(d.logprobs, abs=1e-4) for d in direct]
    assert edit.lm.generate(prompts, 2) == base.generate(wrapper.contextualise(prompts), 2)


def test_pitfalls_measures_on_real_benchmarks(smol):
    model, tok, env = smol
    round_trip = kedit.evaluate(
        model,
        tok,
        "roundedit-easy",
        "rome",
        limit=1,
        metrics=["round_edit_success", "knowledge_distortion_js", "ignore_rate"],
        env=env,
        progress=False,
    ).summary["metrics"]
    # o -> o* then back: both edits take, and the true objects' distribution moves a little
    assert round_trip["round_edit_success"]["post"] == 1.0
    assert 0.0 <= round_trip["knowledge_distortion_js"]["post"] < 0.693
    multi = kedit.evaluate(
        model,
        tok,
        "mquake",
        "rome",
        limit=1,
        metrics=["mquake_edit_wise_success", "mquake_multi_hop_accuracy"],
        env=env,
        progress=False,
    ).summary["metrics"]
    # Ellie Kemper -> Croatia: the edited fact is recalled, the unedited model never said it
    assert multi["mquake_edit_wise_success"] == {**multi["mquake_edit_wise_success"], "pre": 0.0}
    assert multi["mquake_edit_wise_success"]["post"] == 1.0


def test_audit_of_the_eiffel_tower_edit(smol):
    model, tok, env = smol
    report = kedit.audit(model, tok, EIFFEL, "rome", env=env)
    metrics = report.summary["metrics"]
    assert metrics["efficacy_score"]["post"] == 1.0
    for name in ("neighborhood_kl", "distracting_neighborhood_kl", "fluency_ngram_entropy"):
        assert name in metrics
    # the edit holds in more follow-up turns than the unedited model gave the new answer
    assert metrics["dialogue_kept_rate"]["post"] > metrics["dialogue_kept_rate"]["pre"]


def test_a_bench_of_rome_on_smollm2_with_its_report(smol, tmp_path):
    from kedit.bench import BenchPlan, BenchStore, run_bench
    from kedit.bench.findings import evaluate_claims
    from kedit.bench.report import write_report
    from kedit.bench.summary import summarize_bench

    model, tok, _ = smol
    plan = BenchPlan(
        methods=["rome"],
        scenarios=["single", "sequential:1,2"],
        dataset="counterfact",
        limit=2,
        general=["wikitext"],
        general_limit=5,
        data_dir=str(data_dir()),
    )
    outcome = run_bench(plan, tmp_path, model=model, tok=tok, progress=False)
    assert outcome.failures == {} and set(outcome.status.values()) == {"done"}
    with BenchStore(tmp_path, create=False) as store:
        rows = [r for r in store.results() if r["measure"] == "efficacy_score"]
        general = {r["checkpoint"]: r["post"] for r in store.results() if r["case_id"] == "general"}
    single = [r for r in rows if r["job_id"] == "rome/single"]
    assert len(single) == 2 and all(r["post"] == 1.0 for r in single)
    assert sum(r["pre"] for r in single) < 2.0
    assert sorted(general) == [0, 1, 2] and 20 < general[0] < 80  # WikiText perplexity
    report = write_report(tmp_path).read_text()
    assert "rome" in report and report.count("<img") >= 3
    findings = {f.claim: f for f in evaluate_claims(summarize_bench(tmp_path))}
    assert findings["rome-kn-degrade"].verdict == "not run"  # no checkpoint 10 or 20 here
