import pytest
from transformers import AutoModelForCausalLM, LlamaConfig

from kedit import config
from kedit.config import load_preset, parse_override, preset_path, resolve_config
from kedit.methods import METHODS, EditMethod
from kedit.methods.ft import FTConfig, FTMConfig
from kedit.methods.rome import ROMEConfig
from kedit.model.arch import ARCHS
from kedit.registry import Registry
from tests.conftest import SMALL


def test_defaults_are_the_papers():
    cfg = ROMEConfig()
    assert (cfg.layer, cfg.v_num_grad_steps, cfg.v_lr, cfg.kl_factor) == (17, 20, 0.5, 0.0625)
    assert cfg.mom2_adjustment and cfg.mom2_n_samples == 100_000
    assert cfg.context_template_length_params == [[5, 10], [10, 10]]
    assert FTConfig().norm_constraint == 5e-4 and FTConfig().objective == "prompt_last"
    assert FTMConfig().norm_constraint is None and FTMConfig().objective == "target_new"


def test_unknown_keys_are_rejected_with_a_suggestion():
    with pytest.raises(ValueError, match="did you mean 'v_lr'"):
        ROMEConfig.from_dict({"v_lrr": 0.1})


def test_values_are_type_checked_and_coerced():
    assert ROMEConfig.from_dict({"v_lr": 1}).v_lr == 1.0
    assert ROMEConfig.from_dict({"v_lr": "5e-1"}).v_lr == 0.5
    with pytest.raises(ValueError, match="expects"):
        ROMEConfig.from_dict({"layer": "five"})
    with pytest.raises(ValueError, match="expects"):
        ROMEConfig.from_dict({"mom2_adjustment": 1})
    with pytest.raises(ValueError, match="expects"):
        FTConfig.from_dict({"objective": "nonsense"})
    with pytest.raises(ValueError, match="at least 1"):
        ROMEConfig.from_dict({"v_num_grad_steps": 0})


def test_yaml_round_trip():
    cfg = ROMEConfig(layer=3, context_template_length_params=[[2, 3]])
    assert ROMEConfig.from_yaml(cfg.to_yaml()) == cfg


def test_override_parsing():
    assert parse_override("layer=5") == ("layer", 5)
    assert parse_override("context_template_length_params=[[5, 2]]") == (
        "context_template_length_params",
        [[5, 2]],
    )
    with pytest.raises(ValueError, match="key=value"):
        parse_override("layer")


def test_resolution_order_default_preset_user():
    preset = load_preset("rome", ["llama"], 30, ROMEConfig)
    assert preset, "the bundled llama preset for ROME should exist"
    cfg = resolve_config(ROMEConfig, "rome", ["llama"], 30, {"v_lr": 0.123})
    assert cfg.v_lr == 0.123
    for key, value in preset.items():
        if key != "v_lr":
            assert getattr(cfg, key) == value
    assert resolve_config(ROMEConfig, "rome", ["no_such_type"], None, {}).layer == 17


def test_an_architecture_without_a_preset_uses_its_family_s():
    """Mistral has no ROME preset file of its own: it reads Llama's, as its ArchSpec says."""
    mistral = ARCHS.get("mistral")
    assert mistral.preset_types() == ["mistral", "llama"]
    assert preset_path("rome", "mistral") is None
    assert load_preset("rome", mistral.preset_types(), 30, ROMEConfig) == load_preset(
        "rome", ["llama"], 30, ROMEConfig
    )
    assert ARCHS.get("gpt2").preset_types() == ["gpt2"]


def test_r_rome_reads_rome_s_presets():
    model = AutoModelForCausalLM.from_config(LlamaConfig(**{**SMALL, "num_hidden_layers": 30}))
    rome = METHODS["rome"].for_model(model)
    r_rome = METHODS["r-rome"].for_model(model)
    assert r_rome.config == rome.config and rome.config.v_lr == 1.0  # the 30-layer entry


def test_a_named_preset_is_picked_by_the_preset_key():
    """FT-L on Llama models: the published setting by default (EasyEdit's layer 21, no bound);
    ROME's constrained variant with our measured radius by name."""
    model = AutoModelForCausalLM.from_config(LlamaConfig(**{**SMALL, "num_hidden_layers": 30}))
    published = METHODS["ft-l"].for_model(model).config
    assert (published.layer, published.norm_constraint) == (21, None)
    constrained = METHODS["ft-l"].for_model(model, {"preset": "constrained"}).config
    assert (constrained.layer, constrained.norm_constraint) == (0, 0.002)
    tighter = METHODS["ft-l"].for_model(model, {"preset": "constrained", "norm_constraint": 1e-3})
    assert tighter.config.norm_constraint == 1e-3  # overrides still come last
    with pytest.raises(ValueError, match="named presets there: constrained"):
        METHODS["ft-l"].for_model(model, {"preset": "loose"})
    assert FTConfig.checked({"preset": "constrained", "lr": "1e-3"}) == {
        "lr": 1e-3,
        "preset": "constrained",
    }
    with pytest.raises(ValueError, match="names a preset file"):
        FTConfig.checked({"preset": 3})


def test_preset_by_num_layers_picks_the_family_member():
    small = resolve_config(ROMEConfig, "rome", ["gpt2"], 12)
    xl = resolve_config(ROMEConfig, "rome", ["gpt2"], 48)
    assert xl.layer == 17 and small.layer != xl.layer


def test_a_preset_with_an_unknown_key_names_its_file(tmp_path, monkeypatch):
    bad = tmp_path / "llama.yaml"
    bad.write_text("layerr: 3  # a typo\n")
    monkeypatch.setattr(config, "preset_path", lambda method, model_type: bad)
    with pytest.raises(ValueError, match=r"llama.yaml.*did you mean 'layer'"):
        load_preset("rome", ["llama"], None, ROMEConfig)


def test_overrides_are_checked_without_a_model():
    assert ROMEConfig.checked({"v_lr": "0.5", "layer": 3}) == {"v_lr": 0.5, "layer": 3}
    with pytest.raises(ValueError, match="did you mean 'layer'"):
        ROMEConfig.checked({"layerr": 3})


def test_registry_lookup_errors_name_the_known_entries():
    reg: Registry[int] = Registry("thing")
    reg.register("alpha", 1, aliases=("a",))
    with pytest.raises(KeyError, match="Did you mean alpha"):
        reg["alpah"]
    with pytest.raises(ValueError, match="lower-case"):
        reg.register("Beta", 2)
    with pytest.raises(ValueError, match="already"):
        reg.register("alpha", 3)
    with pytest.raises(ValueError, match="already"):
        reg.register("beta", 3, aliases=("a",))
    assert reg["a"] == 1 and reg.canonical("a") == "alpha" and "a" in reg
    assert reg.names() == ["alpha"] and reg.aliases() == {"a": "alpha"}


def test_registry_checks_entries_against_its_base_class():
    reg: Registry[int] = Registry("number", base=int)
    with pytest.raises(TypeError, match="not a int"):
        reg.register("x", 1.5)
    reg.register("later", "builtins:str")  # lazy: checked when first used
    with pytest.raises(TypeError, match="not a int"):
        reg["later"]
    named: Registry[type] = Registry("method", base=EditMethod)
    named.register("other-name", "kedit.methods.rome:ROME")
    with pytest.raises(ValueError, match="calls itself 'rome'"):
        named["other-name"]


def test_providers_are_imported_on_first_read(tmp_path, monkeypatch):
    module = tmp_path / "kedit_test_provider.py"
    module.write_text("from tests.test_config import PROVIDED\nPROVIDED.register('late', 7)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "late" not in PROVIDED._targets  # nothing imported yet
    PROVIDED._providers.append("kedit_test_provider")
    assert PROVIDED["late"] == 7 and PROVIDED.names() == ["late"]


PROVIDED: Registry[int] = Registry("provided number")
