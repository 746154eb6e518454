"""The command line, in-process, on a tiny model saved to a folder."""

import json

import pytest

from kedit.cli import main
from tests.conftest import data_dir, tiny_model


@pytest.fixture
def model_dir(tmp_path, tokenizer):
    folder = tmp_path / "tiny-llama"
    tiny_model("llama").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def common(model_dir, tmp_path, corpus_file):
    return [
        "--model",
        str(model_dir),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--stats-corpus",
        str(corpus_file),
        "--quiet",
    ]


def test_edit_shows_predictions_before_and_after(model_dir, tmp_path, corpus_file, capsys):
    code = main(
        [
            "edit",
            *common(model_dir, tmp_path, corpus_file),
            "--method",
            "rome",
            "--set",
            "layer=0",
            "--set",
            "v_num_grad_steps=3",
            "--set",
            "mom2_n_samples=50",
            "--set",
            "context_template_length_params=[[3, 1]]",
            "--prompt",
            "Tourists visit {}",
            "--subject",
            "the Eiffel Tower",
            "--target",
            "Rome",
            "--top-k",
            "3",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    for label in ("edit prompt:", "paraphrase:", "unrelated:"):
        assert label in out
    assert "before" in out and "after" in out and "rome: layer=model.layers.0" in out


def test_eval_prints_a_table_and_writes_jsonl(model_dir, tmp_path, corpus_file, capsys):
    out_dir = tmp_path / "run"
    code = main(
        [
            "eval",
            *common(model_dir, tmp_path, corpus_file),
            "--method",
            "ft-m",
            "--set",
            "layer=1",
            "--set",
            "num_steps=2",
            "--dataset",
            "demo",
            "--limit",
            "2",
            "--out",
            str(out_dir),
        ]
    )
    text = capsys.readouterr().out
    assert code == 0
    assert "efficacy_score" in text and "reliability" in text and "before" in text
    assert len((out_dir / "results.jsonl").read_text().splitlines()) == 2
    code = main(
        [
            "eval",
            *common(model_dir, tmp_path, corpus_file),
            "--method",
            "ft-m",
            "--set",
            "layer=1",
            "--set",
            "num_steps=2",
            "--dataset",
            "demo",
            "--limit",
            "3",
            "--out",
            str(out_dir),
            "--resume",
            "--json",
        ]
    )
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["cases"] == 3


@pytest.mark.parametrize("what", ["methods", "metrics", "datasets", "models", "general"])
def test_ls(what, capsys):
    assert main(["ls", what]) == 0
    out = capsys.readouterr().out
    expected = {
        "methods": "rome",
        "metrics": "efficacy_score",
        "datasets": "counterfact",
        "models": "smollm2-135m",
        "general": "mmlu",
    }[what]
    assert expected in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval", "--method", "romee"], "Did you mean rome"),
        (["eval", "--metrics", "efficacy"], "unknown metric"),
        (["eval", "--resume"], "--resume needs --out"),
        (["edit", "--prompt", "no slot", "--subject", "x", "--target", "y"], "exactly one"),
    ],
)
def test_bad_input_gets_a_clear_error(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_bad_override_is_rejected_before_editing(model_dir, tmp_path, corpus_file, capsys):
    code = main(
        [
            "edit",
            *common(model_dir, tmp_path, corpus_file),
            "--method",
            "rome",
            "--set",
            "layerr=3",
            "--prompt",
            "{} is in",
            "--subject",
            "Paris",
            "--target",
            "Rome",
        ]
    )
    assert code == 2 and "did you mean 'layer'" in capsys.readouterr().err


def test_sequential_eval_prints_the_decay_table(model_dir, tmp_path, corpus_file, capsys):
    code = main(
        [
            "eval",
            *common(model_dir, tmp_path, corpus_file),
            "--method",
            "ft-m",
            "--set",
            "layer=1",
            "--set",
            "num_steps=2",
            "--sequential",
            "3",
            "--checkpoints",
            "1,2",
            "--metrics",
            "efficacy_score,neighborhood_score",
            "--data-dir",
            str(data_dir()),
            "--general",
            "wikitext,rte",
            "--general-limit",
            "2",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "sequential-final: 3 edits" in out and "after N edits" in out
    assert "general ability" in out and "perplexity" in out and "after 3" in out
    assert main(["eval", "--checkpoints", "1,2"]) == 2
    assert "go with --sequential" in capsys.readouterr().err
    assert main(["eval", "--sample", "5"]) == 2
    assert "go with --sequential" in capsys.readouterr().err
    assert main(["eval", "--sequential", "3", "--sample", "none"]) == 2
    assert "--sample takes a number of cases" in capsys.readouterr().err


def test_sample_flags_write_the_protocol():
    import argparse

    from kedit.cli_eval import _protocol

    def protocol(**given):
        base = dict(sequential=2000, checkpoints="1000", batch_size=100, scoring="final")
        base |= dict(sample=None, score_all_final=False, protocol=None)
        return str(_protocol(argparse.Namespace(**(base | given))))

    assert protocol() == "sequential:1000,2000;batch=100"
    assert (
        protocol(sample="50", score_all_final=True)
        == "sequential:1000,2000;batch=100;sample=50;final=all"
    )
    assert protocol(sample="all") == "sequential:1000,2000;batch=100;sample=all"


def test_stats_precomputes_the_methods_layers(model_dir, tmp_path, corpus_file, capsys):
    code = main(
        [
            "stats",
            *common(model_dir, tmp_path, corpus_file),
            "--method",
            "memit",
            "--set",
            "layers=[0, 1]",
            "--set",
            "mom2_n_samples=50",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "2 layer(s)" in out
    assert len(list((tmp_path / "cache" / "stats").rglob("*.safetensors"))) == 2
    assert main(["stats", *common(model_dir, tmp_path, corpus_file), "--method", "ft-m"]) == 2
    assert "uses no key statistics" in capsys.readouterr().err


def test_eval_pitfalls_suite_lists_what_it_skipped(model_dir, tmp_path, corpus_file, capsys):
    args = ["eval", *common(model_dir, tmp_path, corpus_file), "--method", "ft-m"]
    args += [
        "--set",
        "layer=1",
        "--set",
        "num_steps=2",
        "--dataset",
        "demo",
        "--limit",
        "1",
        "--suite",
        "pitfalls",
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "dialogue_kept_rate" in text and "fluency_ngram_entropy" in text
    assert "skipped (the dataset cannot feed them):" in text
    assert "ignore_rate: the dataset has no round_other probes" in text
    assert main([*args[:-2], "--metrics", "ignore_rate"]) == 2
    assert "cannot feed ignore_rate" in capsys.readouterr().err


def test_audit_prints_a_report_card(model_dir, tmp_path, corpus_file, capsys):
    args = ["audit", *common(model_dir, tmp_path, corpus_file), "--method", "ft-m"]
    args += ["--set", "layer=1", "--set", "num_steps=2", "--prompt", "{} is located in the city of"]
    args += ["--subject", "the Eiffel Tower", "--target", "Rome", "--target-true", "Paris"]
    args += ["--neighbor", "The Colosseum is located in the city of=Rome"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert text.startswith("audit of ft-m: the Eiffel Tower is located in the city of 'Paris'")
    for word in ("reliability", "locality", "robustness", "dialogue_challenge:"):
        assert word in text
    assert main([*args[:-2], "--neighbor", "no answer"]) == 2
    assert "PROMPT=ANSWER" in capsys.readouterr().err


def test_a_batch_protocol_from_the_command_line(model_dir, tmp_path, corpus_file, capsys):
    args = ["eval", *common(model_dir, tmp_path, corpus_file), "--method", "memit"]
    args += ["--set", "layers=[0, 1]", "--set", "mom2_n_samples=50", "--set", "v_num_grad_steps=3"]
    args += ["--set", "context_template_length_params=[[3, 1]]", "--dataset", "demo"]
    args += ["--limit", "4", "--protocol", "batch:2", "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["protocol"].startswith("batch:2") and summary["cases"] == 4
    assert summary["metrics"]["efficacy_score"]["n"] == 4
    assert main([*args[:-3], "--protocol", "batch:2", "--sequential", "2"]) == 2
    assert "not both" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("this is not json", "not valid JSON at line 1"),
        ('{"a": 1}', "expected a JSON list of records"),
        ('[{"what": 1}]', "cannot tell the format"),
    ],
)
def test_a_bad_dataset_file_is_named_before_any_model_loads(content, message, tmp_path, capsys):
    bad = tmp_path / "cases.json"
    bad.write_text(content)
    # the model does not exist: the dataset is checked first, so its error is the one shown
    code = main(["eval", "--model", str(tmp_path / "no-model"), "--dataset", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and str(bad) in err and message in err


def test_bad_eval_options_fail_before_any_model_loads(tmp_path, capsys):
    no_model = ["--model", str(tmp_path / "no-model"), "--dataset", "demo"]
    cases = [
        (["--method", "rome", "--protocol", "batch:2"], "one request per update"),
        (["--method", "rome", "--set", "layerr=3"], "did you mean 'layer'"),
        (["--method", "rome", "--sequential", "60"], "the dataset has 52"),
        (["--method", "rome", "--general", "wikitext"], "sequential checkpoints"),
        (["--method", "rome", "--protocol", "sequential:3;batch=2"], "one request at a time"),
    ]
    for options, message in cases:
        assert main(["eval", *no_model, *options]) == 2
        assert message in capsys.readouterr().err


def test_ls_markdown_prints_the_readme_tables(capsys):
    assert main(["ls", "methods", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| method | family |") and "`ft-l` (FT-L; alias `ft`)" in out
    assert main(["ls", "datasets", "--markdown"]) == 2
