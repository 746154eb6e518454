"""SERAC's mechanism on tiny models: the hard switch sends in-scope prompts to the counterfactual
model (after the nearest edit) and the others to the base model, exactly; the scope rule is
``exp(-||e_edit - e_x||^2 * scale) > 0.5``; the balanced cross-entropy and the objective's pairs;
a session's memory rolls back; training lowers the held-out loss, and its editor is refused for
other weights."""

from __future__ import annotations

import json
import math

import pytest
import torch

from kedit.methods import METHODS
from kedit.methods._hypernet import TrainingExample
from kedit.methods.serac import SERACLM, balanced_bce
from kedit.methods.session import EditSession
from kedit.model.lm import HFLanguageModel
from kedit.types import EditRequest
from tests.conftest import assert_same_state, snapshot, tiny_model, trained_editor
from tests.tiny_configs import tiny_config

TINY = tiny_config("serac")
REQUEST = EditRequest("Tourists visit {}", "the Eiffel Tower", "Rome", "Paris")
OTHER = EditRequest("The capital of {}", "Germany", "Madrid", "Berlin")
FAR = "The quick brown fox jumps over the lazy dog"


def serac(model, env, scale: float | None = None):
    """SERAC with a fresh in-memory editor (no training) whose counterfactual model differs from
    the base model, and a classifier ``scale`` (a large one: only the stored prompt itself is
    in scope)."""
    method = METHODS["serac"].for_model(model, TINY, env)
    torch.manual_seed(0)
    editor = method.build_editor(model)
    with torch.no_grad():
        head = editor.counterfactual.get_output_embeddings().weight
        head.add_(0.5 * torch.randn_like(head))
        if scale is not None:
            editor.classifier.scale.fill_(scale)
    method.use_editor(editor)
    return method, editor


def fact(request: EditRequest) -> str:
    return f"{request.text} {request.target_new}"


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_in_scope_prompts_go_to_the_counterfactual_model_and_the_rest_to_the_base(
    arch, tokenizer, env
):
    model = tiny_model(arch)
    method, editor = serac(model, env, scale=1e4)
    edit = method.edit(model, tokenizer, [REQUEST, OTHER])
    lm = edit.model
    assert isinstance(lm, SERACLM)
    prompts = [OTHER.text, FAR, REQUEST.text]
    targets = ["Paris", "Rome", "Berlin"]
    assert lm.routed(prompts) == [True, False, True]
    # each in-scope prompt reads its own (nearest) edit; the base model sees the prompt alone
    cf = HFLanguageModel(editor.counterfactual, tokenizer)
    base = HFLanguageModel(model, tokenizer)
    read = [f"{fact(OTHER)} {OTHER.text}", f"{fact(REQUEST)} {REQUEST.text}"]
    first, third = cf.score_targets(read, ["Paris", "Berlin"])  # one batch, as the wrapper's
    expected = [first, base.score_targets([FAR], ["Rome"])[0], third]
    assert lm.score_targets(prompts, targets) == expected
    logprobs = lm.next_token_logprobs(prompts)
    assert torch.equal(logprobs[1], base.next_token_logprobs([FAR])[0])
    assert torch.equal(logprobs[[0, 2]], cf.next_token_logprobs(read))
    assert not torch.equal(logprobs[2], base.next_token_logprobs([REQUEST.text])[0])
    assert lm.generate(prompts[:2], 4) == [
        cf.generate([f"{fact(OTHER)} {OTHER.text}"], 4)[0],
        base.generate([FAR], 4)[0],
    ]
    assert edit.info["memory_edits"] == 2


def test_the_scope_rule_is_a_scaled_squared_distance_against_one_half(tokenizer, env):
    model = tiny_model("llama")
    method, editor = serac(model, env)
    query = "Tourists visit the Louvre"
    with torch.no_grad():
        key, found = editor.classifier.embed([REQUEST.text, query], tokenizer)
    dist = float(((key - found) ** 2).sum())
    assert dist > 0
    # sim = exp(-dist * scale) > 0.5  <=>  scale < ln 2 / dist
    for factor, in_scope in [(0.95, True), (1.05, False)]:
        editor.classifier.scale.fill_(math.log(2) / dist * factor)
        edit = method.edit(model, tokenizer, REQUEST)
        (index, sim), _ = edit.model.scope([query, REQUEST.text])
        assert sim == pytest.approx(math.exp(-dist * editor.classifier.scale.item()), rel=1e-4)
        assert (index is not None) == in_scope and edit.model.routed([query]) == [in_scope]
        edit.restore()


def test_balanced_bce_is_the_mean_loss_of_each_class_added():
    logsims = torch.tensor([-0.1, -2.0, -0.5, -3.0, -0.01])
    positive = torch.tensor([True, True, False, False, False])
    negatives = [-math.log(1 - math.exp(x)) for x in (-0.5, -3.0, -0.01)]
    expected = (0.1 + 2.0) / 2 + sum(negatives) / 3
    assert balanced_bce(logsims, positive).item() == pytest.approx(expected, rel=1e-6)
    # a class without pairs adds nothing (the reference's rule)
    only_negative = balanced_bce(logsims[2:], positive[2:])
    assert only_negative.item() == pytest.approx(sum(negatives) / 3, rel=1e-6)


def test_the_objective_pairs_each_edit_with_its_own_paraphrases_and_unrelated_prompts(
    tokenizer, env
):
    model = tiny_model("llama")
    method, editor = serac(model, env, scale=3.0)
    examples = [
        TrainingExample(
            REQUEST, ("People travel to see the Eiffel Tower",), (("Rome is in", "Italy"),)
        ),
        TrainingExample(OTHER, (), (("Berlin is a", "city"), ("The sky is", "blue"))),
    ]
    with torch.no_grad():
        stats = method.objective(model, tokenizer, examples, editor).stats
        keys = editor.classifier.embed([REQUEST.text, OTHER.text], tokenizer)
        pairs = [(0, "People travel to see the Eiffel Tower"), (0, "Rome is in")]
        pairs += [(1, "Berlin is a"), (1, "The sky is")]
        queries = editor.classifier.embed([q for _, q in pairs], tokenizer)
    logsims = torch.stack([-((keys[i] - q) ** 2).sum() * 3.0 for (i, _), q in zip(pairs, queries)])
    positive = torch.tensor([True, False, False, False])
    assert stats["cls_loss"] == pytest.approx(balanced_bce(logsims, positive).item(), rel=1e-4)
    # the counterfactual NLL: every target token of each prompt and paraphrase, given its edit
    rows = [
        (f"{fact(REQUEST)} {REQUEST.text}", REQUEST.target_new),
        (f"{fact(REQUEST)} People travel to see the Eiffel Tower", REQUEST.target_new),
        (f"{fact(OTHER)} {OTHER.text}", OTHER.target_new),
    ]
    scores = HFLanguageModel(editor.counterfactual, tokenizer).score_targets(*zip(*rows))
    logprobs = [lp for s in scores for lp in s.logprobs]
    assert stats["edit_nll"] == pytest.approx(-sum(logprobs) / len(logprobs), rel=1e-4)
    expected_loss = 0.1 * stats["edit_nll"] + stats["cls_loss"]
    assert stats["loss"] == pytest.approx(expected_loss, rel=1e-5)


def test_a_session_of_two_edits_then_a_rollback_keeps_a_memory_of_one(tokenizer, env):
    model = tiny_model("gpt2")
    before = snapshot(model)
    method, _ = serac(model, env, scale=1e4)
    with EditSession(model, tokenizer, env) as session:
        session.edit(REQUEST, method)
        memory = session.state[("serac", "memory")]
        first_keys = memory.keys.clone()
        session.edit(OTHER, method)
        assert [f.text for f in memory.facts] == [REQUEST.text, OTHER.text]
        assert session.model.routed([REQUEST.text, OTHER.text, FAR]) == [True, True, False]
        session.rollback(1)
        assert memory.facts == [REQUEST] and torch.equal(memory.keys, first_keys)
        assert session.model.facts == (REQUEST,)
        assert session.model.routed([REQUEST.text, OTHER.text, FAR]) == [True, False, False]
        session.edit(OTHER, method)  # the memory grows again from the rolled-back state
        assert memory.facts == [REQUEST, OTHER]
    assert memory.facts == [] and memory.keys is None
    assert_same_state(model, before)


def test_training_lowers_the_held_out_loss_and_the_editor_is_refused_for_other_weights(
    tokenizer, env
):
    folder = trained_editor("serac", "llama")  # the contract's editor: 10 steps, tiny config
    curve = json.loads((folder / "checkpoint.json").read_text())["progress"]["curve"]
    first, last = curve[0]["val"], curve[-1]["val"]
    assert [p["step"] for p in curve] == [1, TINY["max_steps"]]
    assert last["loss"] < first["loss"] - 0.2
    assert last["cls_loss"] < first["cls_loss"] and last["edit_nll"] < first["edit_nll"]
    # the editor loads for the weights it was trained with, and is refused for others
    model = tiny_model("llama")
    editor, meta = (
        METHODS["serac"].for_model(model, {**TINY, "editor": str(folder)}, env).editor_for(model)
    )
    assert meta["steps"] == TINY["max_steps"] and meta["method"] == "serac"
    trained, own = editor.counterfactual.get_output_embeddings(), model.get_output_embeddings()
    assert trained.weight.shape == own.weight.shape and not torch.equal(trained.weight, own.weight)
    other = tiny_model("llama", seed=1)
    method = METHODS["serac"].for_model(other, {**TINY, "editor": str(folder)}, env)
    with pytest.raises(ValueError, match="trained for another model"):
        method.edit(other, tokenizer, REQUEST)
