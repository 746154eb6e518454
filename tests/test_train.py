"""The trainer of the meta-learning editors (``kedit train``), run with MEND on a tiny Llama:
training lowers the held-out loss, the editor raises a held-out target, files round-trip bit for
bit, a killed run resumes to the uninterrupted result, and every misuse gets a clear error."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

import kedit
from kedit.cli import main
from kedit.cli_train import duration_s
from kedit.methods import METHODS
from kedit.model.lm import as_language_model
from kedit.train import loop as train_loop
from kedit.train import train_editor, training_data
from tests.conftest import data_dir, tiny_model, train_tokenizer, trained_editor
from tests.tiny_configs import tiny_config

MEND = tiny_config("mend")


def setup(env, overrides=None, model=None):
    model = model if model is not None else tiny_model("llama")
    method = METHODS["mend"].for_model(model, {**MEND, **(overrides or {})}, env)
    cfg = method.config
    data = training_data(cfg.train_data, data_dir(), cfg.val_size, cfg.batch_size, 0, limit=60)
    return model, method, data


def logprob(model, tok, request) -> float:
    return sum(
        as_language_model(model, tok)
        .score_targets([request.text], [request.target_new])[0]
        .logprobs
    )


def test_training_lowers_the_validation_loss_and_the_editor_moves_a_held_out_fact(tokenizer, env):
    model, method, data = setup(env, {"max_steps": 30, "val_every": 10})
    result = train_editor(method, model, tokenizer, data, env, progress_bar=False)
    first, best = result.curve[0], next(p for p in result.curve if p["step"] == result.best_step)
    assert first["step"] == 1 and [p["step"] for p in result.curve] == [1, 10, 20, 30]
    assert best["val"]["loss"] < first["val"]["loss"] - 0.01
    assert best["val"]["edit_acc"] > first["val"]["edit_acc"] + 0.2
    assert (result.folder / "curve.png").stat().st_size > 1000
    # a fact the editor never trained on, through the ordinary edit path (the cache's editor)
    held_out = data.val[0].request
    before = logprob(model, tokenizer, held_out)
    edit = METHODS["mend"].for_model(model, MEND, env).edit(model, tokenizer, held_out)
    assert edit.info["editor_steps"] == result.best_step
    assert logprob(edit.model, tokenizer, held_out) > before + 0.2
    edit.restore()


def test_the_saved_editor_and_checkpoint_round_trip_bit_for_bit(tokenizer, env):
    model, method, data = setup(env, {"max_steps": 3, "val_every": 3})
    result = train_editor(method, model, tokenizer, data, env, progress_bar=False)
    saved = load_file(str(result.folder / "editor.safetensors"))
    loaded, meta = METHODS["mend"].for_model(model, MEND, env).editor_for(model)
    assert meta["steps"] == 3 and meta["model_fingerprint"] == env.fingerprint(model)
    assert meta["data_sha256"] and meta["n_val"] == MEND["val_size"]
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    assert json.loads((result.folder / "checkpoint.json").read_text())["progress"]["step"] == 3


class Killed(RuntimeError):
    pass


def test_a_killed_training_resumes_to_the_uninterrupted_result(tokenizer, env, tmp_path):
    steps = {"max_steps": 8, "val_every": 3}
    model, method, data = setup(env, steps)
    whole = train_editor(method, model, tokenizer, data, env, tmp_path / "whole", False)

    model, method, data = setup(env, steps)
    real, calls = method.train_step, {"n": 0}

    def dies_at_step_5(*args):  # after the checkpoint of step 3
        calls["n"] += 1
        if calls["n"] == 5:
            raise Killed("the process is killed")
        return real(*args)

    method.train_step = dies_at_step_5
    with pytest.raises(Killed):
        train_editor(method, model, tokenizer, data, env, tmp_path / "resumed", False)
    model, method, data = setup(env, steps)
    resumed = train_editor(method, model, tokenizer, data, env, tmp_path / "resumed", False)
    assert resumed.resumed_from == 3 and resumed.steps == whole.steps == 8
    for name in ("editor", "checkpoint"):
        a = load_file(str(whole.folder / f"{name}.safetensors"))
        b = load_file(str(resumed.folder / f"{name}.safetensors"))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}: {key}"
    drop_wall = [{k: v for k, v in p.items() if k != "wall_s"} for p in whole.curve]
    assert drop_wall == [{k: v for k, v in p.items() if k != "wall_s"} for p in resumed.curve]


def test_a_time_limit_ends_the_run_validated_and_the_same_call_continues_it(
    tokenizer, env, tmp_path, monkeypatch
):
    steps = {"max_steps": 6, "val_every": 3}
    model, method, data = setup(env, steps)
    whole = train_editor(method, model, tokenizer, data, env, tmp_path / "whole", False)

    clock = {"t": 0.0}  # ten seconds pass in every training step, none elsewhere
    monkeypatch.setattr(train_loop, "time", SimpleNamespace(perf_counter=lambda: clock["t"]))
    model, method, data = setup(env, steps)
    real = method.train_step

    def ten_seconds(*args):
        clock["t"] += 10.0
        return real(*args)

    method.train_step = ten_seconds
    first = train_editor(method, model, tokenizer, data, env, tmp_path / "timed", False, 15.0)
    # step 2 passes 15 s: it is validated (off the val_every grid) and checkpointed
    assert first.out_of_time and first.steps == 2
    assert [p["step"] for p in first.curve] == [1, 2]
    saved = json.loads((first.folder / "checkpoint.json").read_text())["progress"]
    assert saved["step"] == 2

    # a validation that ends past the limit ends the run too, without another step
    validate_and_save = train_loop._validate_and_save

    def slow_validation(*args):
        validate_and_save(*args)
        clock["t"] += 100.0

    model, method, data = setup(env, steps)
    method.train_step = ten_seconds
    monkeypatch.setattr(train_loop, "_validate_and_save", slow_validation)
    again = train_editor(method, model, tokenizer, data, env, tmp_path / "timed", False, 50.0)
    assert again.out_of_time and again.steps == 3 and again.resumed_from == 2
    monkeypatch.setattr(train_loop, "_validate_and_save", validate_and_save)

    model, method, data = setup(env, steps)
    rest = train_editor(method, model, tokenizer, data, env, tmp_path / "timed", False)
    assert rest.resumed_from == 3 and rest.steps == 6 and not rest.out_of_time
    a = load_file(str(whole.folder / "checkpoint.safetensors"))
    b = load_file(str(rest.folder / "checkpoint.safetensors"))
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert [p["step"] for p in rest.curve] == [1, 2, 3, 6]


def test_without_a_trained_editor_the_error_gives_the_train_command(tokenizer, env):
    model = tiny_model("llama")
    method = METHODS["mend"].for_model(model, MEND, env)
    command = r"kedit train --method mend .*--dataset counterfact-train"
    with pytest.raises(ValueError, match=command):
        method.edit(model, tokenizer, kedit.EditRequest("Tourists visit {}", "Paris", "Rome"))


def test_an_evaluation_without_a_trained_editor_stops_before_its_first_case(tokenizer, env):
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="needs a trained editor"):
        kedit.evaluate(
            model, tokenizer, "demo", "mend", overrides=MEND, limit=2, env=env, progress=False
        )


def test_an_editor_is_refused_on_another_model_or_config(tokenizer, env):
    model, method, data = setup(env, {"max_steps": 2, "val_every": 2})
    folder = train_editor(method, model, tokenizer, data, env, progress_bar=False).folder
    request = kedit.EditRequest("Tourists visit {}", "Paris", "Rome")
    other = tiny_model("llama", seed=1)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match="trained for another model"):
        METHODS["mend"].for_model(other, {**MEND, "editor": str(folder)}, env).edit(
            other, tokenizer, request
        )
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())
    with pytest.raises(ValueError, match=r"other settings.*rank"):
        METHODS["mend"].for_model(model, {**MEND, "rank": 8, "editor": str(folder)}, env).edit(
            model, tokenizer, request
        )


def test_a_checkpoint_of_another_run_is_not_resumed(tokenizer, env, tmp_path):
    model, method, data = setup(env, {"max_steps": 2, "val_every": 2})
    train_editor(method, model, tokenizer, data, env, tmp_path / "run", False)
    data.sha256 = "0" * 64  # other training data
    with pytest.raises(ValueError, match=r"belongs to another run.*data_sha256"):
        train_editor(method, model, tokenizer, data, env, tmp_path / "run", False)


def test_evaluation_splits_are_never_trained_on():
    with pytest.raises(ValueError, match="evaluation dataset"):
        training_data("counterfact", data_dir(), 8, 1, 0, limit=20)
    edit_file = data_dir() / "counterfact" / "counterfact-edit.json"
    with pytest.raises(ValueError, match="is the evaluation dataset counterfact"):
        training_data(str(edit_file), data_dir(), 8, 1, 0, limit=20)
    with pytest.raises(ValueError, match="too few"):
        training_data("counterfact-train", data_dir(), 20, 1, 0, limit=20)


def test_kedit_train_then_edit_from_the_command_line(tmp_path, capsys):
    folder = tmp_path / "tiny-llama"
    tiny_model("llama").save_pretrained(folder)
    train_tokenizer(bos=False).save_pretrained(folder)
    sets = [f"--set={k}={json.dumps(v)}" for k, v in MEND.items() if k != "max_steps"]
    common = ["--model", str(folder), "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    common += ["--data-dir", str(data_dir()), "--method", "mend", *sets]
    code = main(["train", *common, "--steps", "4", "--val-every", "2", "--limit", "40"])
    out = capsys.readouterr().out
    assert code == 0 and "mend: 4 steps" in out and "best validation at step" in out
    edit_argv = ["edit", *common, "--prompt", "Tourists visit {}", "--subject", "Paris"]
    assert main([*edit_argv, "--target", "Rome"]) == 0
    assert "editor_steps=" in capsys.readouterr().out
    assert main(["train", *common, "--method", "rome"]) == 2
    assert "rome trains nothing" in capsys.readouterr().err
    with pytest.raises(SystemExit) as parse_error:  # argparse's usage error, exit status 2
        main(["train", *common, "--time-limit", "ten minutes"])
    assert parse_error.value.code == 2
    assert "not a duration: 'ten minutes'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "seconds"), [("3600", 3600), ("90s", 90), ("45m", 2700), ("1h30m", 5400), ("2h", 7200)]
)
def test_time_limits_read_as_seconds(text, seconds):
    assert duration_s(text) == seconds


@pytest.mark.parametrize("name", ["mend", "ke", "malmen", "serac"])
def test_every_panel_of_the_training_curve_draws_a_statistic_the_method_validates(name):
    """SERAC validates no locality KL: its curve must not take the meta-learners' panels."""
    folder = trained_editor(name, "llama")
    curve = json.loads((folder / "checkpoint.json").read_text())["progress"]["curve"]
    panels = METHODS[name].curve_panels
    assert curve and len(panels) >= 2
    for title, keys in panels:
        for point in curve:
            assert any(point["val"].get(key) is not None for key, _ in keys), (name, title)
    if name == "serac":
        titles = " ".join(title for title, _ in panels)
        assert "scope classifier" in titles and "KL" not in titles
