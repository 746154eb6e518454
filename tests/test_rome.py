"""ROME's own invariants and the covariance statistics it uses."""

import pytest
import torch

from kedit.env import Environment
from kedit.methods import METHODS
from kedit.methods._keys import SubjectPasses, mean_keys, subject_io, template_passes
from kedit.methods._stats import second_moments, stats_for, token_cap
from kedit.methods._templates import context_templates, fill, flatten
from kedit.methods._value import PrefixCachedPass
from kedit.model.arch import arch_of, weight_out_in
from kedit.model.hooks import Trace
from kedit.model.tokens import encode, pad, token_index_of_span
from kedit.types import EditRequest
from tests.conftest import DEVICE, tiny_model
from tests.tiny_configs import TINY

REQUEST = EditRequest("Tourists visit {}", "the Eiffel Tower", "Rome", "Paris")


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_update_is_rank_one_and_writes_v_star(arch, tokenizer, env):
    model = tiny_model(arch)
    method = METHODS["rome"].for_model(model, TINY["rome"], env)
    path = "transformer.h.0.mlp.c_proj" if arch == "gpt2" else "model.layers.0.mlp.down_proj"
    module = model.get_submodule(path)
    before = weight_out_in(module).detach().clone()
    k, _ = subject_io(model, tokenizer, [(REQUEST.text, REQUEST.subject_span)], path)
    edit = method.edit(model, tokenizer, REQUEST)
    delta = weight_out_in(module).detach() - before  # (out, in)
    singular = torch.linalg.svdvals(delta)
    assert singular[1] < 1e-5 * singular[0]
    # the bare prompt's key now maps to v* = v_start + delta (up to float error)
    _, v_after = subject_io(model, tokenizer, [(REQUEST.text, REQUEST.subject_span)], path)
    assert edit.info["v_steps"] >= 1
    # the update direction is C^-1 k*: the row space of delta is spanned by u
    templates = context_templates(
        model, tokenizer, env, TINY["rome"]["context_template_length_params"]
    )
    k_star = mean_keys(model, tokenizer, [REQUEST], templates, path)[0]
    mom2 = stats_for(model, tokenizer, [path], env, method.config)[path]
    u = torch.linalg.solve(mom2.double(), k_star.double().cpu()).float().to(k_star.device)
    row = delta[delta.norm(dim=1).argmax()]
    cosine = torch.nn.functional.cosine_similarity(row, u, dim=0)
    assert abs(cosine.item()) > 0.999
    # W' k = v*: the change on k equals v* - W k exactly by construction
    assert torch.allclose(delta @ k[0], v_after[0] - (before @ k[0] + _bias(module)), atol=1e-4)
    edit.restore()


def _bias(module):
    return module.bias.detach() if getattr(module, "bias", None) is not None else 0.0


def test_prefix_cached_pass_equals_full_forward(tokenizer):
    for arch in ("gpt2", "llama", "gemma2", "phi3"):
        model = tiny_model(arch)
        rows = [
            encode(tokenizer, t).ids
            for t in [
                "Because it rained. Tourists visit the Eiffel Tower",
                "Tourists visit Paris",
                "I saw the Eiffel Tower",
                "Tower",
            ]
        ]
        split = [len(r) - 2 for r in rows[:3]] + [0]
        passes = PrefixCachedPass(model, rows, split, 0)
        with torch.no_grad():
            cached = passes.logits([0, 1])
            for i, row in enumerate(rows):
                full = model(torch.tensor([row], device=DEVICE)).logits[0]
                for j, col in enumerate([0, 1]):
                    if split[i] + col < len(row):
                        assert torch.allclose(cached[i, j], full[split[i] + col], atol=1e-4), arch
        # a second call starts again from the prefix
        with torch.no_grad():
            assert torch.allclose(passes.logits([0, 1]), cached, atol=1e-6)


def test_statistics_match_a_direct_computation_and_are_cached(tokenizer, env, corpus_file):
    model = tiny_model("llama")
    path = "model.layers.1.mlp.down_proj"
    mom2 = second_moments(model, tokenizer, [path], env, n_samples=50)[path]
    docs = [line for line in corpus_file.read_text().splitlines() if line.strip()]
    import random

    chosen = random.Random(env.seed).sample(docs, 50)
    keys = []
    for doc in chosen:
        seen: dict = {}
        handle = model.get_submodule(path).register_forward_pre_hook(
            lambda m, a, seen=seen: seen.setdefault("k", a[0])
        )
        with torch.no_grad():
            model(torch.tensor([tokenizer(doc)["input_ids"]], device=DEVICE))
        handle.remove()
        keys.append(seen["k"][0])
    keys = torch.cat(keys).cpu()
    assert torch.allclose(mom2, keys.T @ keys / len(keys), atol=1e-5)

    files = list((env.cache_dir / "stats").rglob("*.safetensors"))
    assert len(files) == 1
    assert env.fingerprint(model) in str(files[0]) and "n50" in files[0].name
    # a fresh environment reads the file instead of recomputing
    fresh = Environment(cache_dir=env.cache_dir, stats_corpus=env.stats_corpus, progress=False)
    stamp = files[0].stat().st_mtime_ns
    again = second_moments(model, tokenizer, [path], fresh, n_samples=50)[path]
    assert torch.equal(again, mom2) and files[0].stat().st_mtime_ns == stamp
    # another sample count, or another model, is another cache entry
    second_moments(model, tokenizer, [path], fresh, n_samples=40)
    second_moments(tiny_model("llama", seed=1), tokenizer, [path], fresh, n_samples=50)
    assert len(list((env.cache_dir / "stats").rglob("*.safetensors"))) == 3


def test_several_layers_in_one_pass(tokenizer, env):
    model = tiny_model("gpt2")
    paths = ["transformer.h.0.mlp.c_proj", "transformer.h.1.mlp.c_proj"]
    both = second_moments(model, tokenizer, paths, env, n_samples=30)
    alone = second_moments(
        model,
        tokenizer,
        paths[1:],
        Environment(cache_dir=env.cache_dir / "x", stats_corpus=env.stats_corpus, progress=False),
        30,
    )
    assert torch.allclose(both[paths[1]], alone[paths[1]], atol=1e-6)
    assert both[paths[0]].shape == (64, 64)


def test_missing_corpus_is_a_clear_error(tokenizer, tmp_path):
    model = tiny_model("llama")
    env = Environment(cache_dir=tmp_path, stats_corpus="wikitext-2", data_dir=None)
    with pytest.raises(FileNotFoundError, match="KEDIT_DATA_DIR"):
        second_moments(model, tokenizer, ["model.layers.0.mlp.down_proj"], env, 10)


def test_context_templates_are_seeded_and_cached(tokenizer, env):
    model = tiny_model("llama")
    groups = context_templates(model, tokenizer, env, [[3, 4]])
    assert groups[0] == ["{}"] and len(groups[1]) == 4
    assert all(t.endswith(". {}") and t.count("{}") == 1 for t in groups[1])
    other = Environment(cache_dir=env.cache_dir / "other", progress=False)
    assert context_templates(model, tokenizer, other, [[3, 4]]) == groups


def test_rome_single_request_only(tokenizer, env):
    model = tiny_model("llama")
    method = METHODS["rome"].for_model(model, TINY["rome"], env)
    with pytest.raises(ValueError, match="one request at a time"):
        method.edit(model, tokenizer, [REQUEST, REQUEST])


def test_input_is_batched_for_templates(tokenizer):
    batch = pad([[1, 2, 3], [4]], 0, left=True)
    assert batch.column(1, 0) == 2 and batch.column(0, -1) == 2


def test_dynamic_multiplier_caps_the_sample(tokenizer, env):
    model = tiny_model("llama")
    path = "model.layers.0.mlp.down_proj"
    assert token_cap(model, path, 10.0) == 640  # 10 x d_k
    assert token_cap(model, path, None) is None
    capped = second_moments(model, tokenizer, [path], env, 1000, max_tokens=200)[path]
    full = second_moments(model, tokenizer, [path], env, 1000)[path]
    assert not torch.allclose(capped, full)
    names = sorted(f.name for f in (env.cache_dir / "stats").rglob("*.safetensors"))
    assert any("tok200" in n for n in names) and any("tokall" in n for n in names)


def test_default_sample_is_the_same_on_every_device(tokenizer, env):
    # the old default ("auto") read 10 x d_k tokens on CPU and the whole corpus elsewhere
    model = tiny_model("llama")
    path = "model.layers.0.mlp.down_proj"
    default = METHODS["rome"].for_model(model, TINY["rome"], env).config.mom2_dynamic_multiplier
    assert default == 10.0
    assert token_cap(model.to("meta"), path, default) == 640
    with pytest.raises(ValueError, match="mom2_dynamic_multiplier expects"):
        METHODS["rome"].for_model(tiny_model("llama"), {"mom2_dynamic_multiplier": "auto"}, env)


OTHER = EditRequest("{} is located in", "the Colosseum", "Paris", "Rome")


@pytest.mark.parametrize(
    ("method", "overrides"), [("rome", {"layer": 1}), ("memit", {"layers": [1]})]
)
def test_statistics_in_a_session_come_from_the_unedited_weights(method, overrides, tokenizer, env):
    from kedit.methods.session import EditSession

    model = tiny_model("llama")
    path = "model.layers.1.mlp.down_proj"
    layer0 = model.get_submodule("model.layers.0.mlp.down_proj").weight
    expected_env = Environment(
        cache_dir=env.cache_dir.parent / "fresh",
        data_dir=None,
        stats_corpus=env.stats_corpus,
        progress=False,
    )
    with EditSession(model, tokenizer, env) as session:
        config = session.edit(REQUEST, "ft-l", {**TINY["ft-l"], "layer": 0}).config
        fine_tuned = layer0.detach().clone()
        edit = session.edit(OTHER, method, {**TINY[method], **overrides})
        assert torch.equal(layer0, fine_tuned)  # the first edit is back in place after the second
        cached = stats_for(model, tokenizer, [path], env, edit.config)[path]
    assert config.layer == 0
    unedited = stats_for(model, tokenizer, [path], expected_env, edit.config)[path]
    assert torch.equal(cached, unedited)


def test_a_session_swaps_its_unedited_weights_in_only_to_fill_a_cache(tokenizer, env, monkeypatch):
    """The unedited weights are copied back in only when a statistic or template is computed,
    never on an edit whose caches are warm (a copy of every edited parameter, each edit)."""
    from kedit.methods.session import EditSession

    swaps = []
    swap = EditSession.unedited_weights

    def counting(self):
        swaps.append(len(self._originals))
        return swap(self)

    monkeypatch.setattr(EditSession, "unedited_weights", counting)
    model = tiny_model("llama")
    with EditSession(model, tokenizer, env) as session:
        session.edit(REQUEST, "rome", {**TINY["rome"], "layer": 1})
        cold = len(swaps)
        session.edit(OTHER, "rome", {**TINY["rome"], "layer": 1})
        assert len(swaps) == cold  # templates and statistics were cached: nothing swapped
        session.edit(OTHER, "rome", {**TINY["rome"], "layer": 0})
        assert len(swaps) > cold and swaps[-1] == 1  # layer 0's statistics: on the unedited
    assert cold >= 1


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_subject_io_reads_what_a_pass_of_each_whole_text_gives(arch, tokenizer):
    """Texts of different lengths, the subject first, in the middle and last, two a pass:
    each text's input and output at its subject's last token, in the texts' order."""
    model = tiny_model(arch)
    path = f"{arch_of(model).layers}.1.mlp.{'c_proj' if arch == 'gpt2' else 'down_proj'}"
    texts = ["Because it rained. Tourists visit the Eiffel Tower at night", "Paris is big"]
    texts += ["I said that. People in Brazil speak", "The river of Berlin"]
    subjects = ["the Eiffel Tower", "Paris", "Brazil", "Berlin"]
    pairs = [(t, (t.index(s), t.index(s) + len(s))) for t, s in zip(texts, subjects)]
    keys, values = subject_io(model, tokenizer, pairs, path, rows_per_pass=2)
    for row, (text, span) in enumerate(pairs):
        ids = torch.tensor([encode(tokenizer, text).ids])
        at = token_index_of_span(tokenizer, text, span)
        with torch.no_grad(), Trace(model, path, retain_input=True, retain_output=True) as tr:
            model(input_ids=ids)
        assert torch.allclose(keys[row], tr.input[0, at], atol=1e-5)
        assert torch.allclose(values[row], tr.output[0, at], atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma2"])
def test_template_heads_computed_once_read_the_same_keys(arch, tokenizer):
    """Keys read with each context template's tokens computed once for all prompts (gemma2's
    sliding windows: every text whole) equal keys read from whole texts, in the texts' order;
    so do keys read with a head that only some texts start with (the others run whole)."""
    model = tiny_model(arch, blocks=3)
    path = arch_of(model).path("mlp_out", 2)
    requests = [REQUEST, EditRequest("People in {} speak", "Brazil", "Italian", "Portuguese")]
    templates = [["{}"], ["Because it rained. {}", "I said that. {}"]]
    passes = template_passes(model, tokenizer, requests, templates)
    assert sum(map(len, passes.heads)) > 0 or arch == "gemma2"
    texts = [fill(t, r) for r in requests for t in flatten(templates)]
    wrong = [encode(tokenizer, "Tourists").ids] * len(texts)  # the first request's bare prompt
    for got in (passes, SubjectPasses(model, tokenizer, texts, heads=wrong, rows_per_pass=2)):
        keys, values = got.read(path)
        want_keys, want_values = subject_io(model, tokenizer, texts, path, rows_per_pass=1)
        assert torch.allclose(keys, want_keys, atol=1e-5)
        assert torch.allclose(values, want_values, atol=1e-5)
