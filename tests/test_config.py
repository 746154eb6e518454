import pytest

from kedit.config import load_preset, parse_override, resolve_config
from kedit.methods.ft import FTConfig, FTMConfig
from kedit.methods.rome import ROMEConfig
from kedit.registry import Registry


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


def test_yaml_round_trip_and_replace():
    cfg = ROMEConfig(layer=3, context_template_length_params=[[2, 3]])
    assert ROMEConfig.from_yaml(cfg.to_yaml()) == cfg
    assert cfg.replace(layer=4).layer == 4 and cfg.layer == 3


def test_override_parsing():
    assert parse_override("layer=5") == ("layer", 5)
    assert parse_override("context_template_length_params=[[5, 2]]") == (
        "context_template_length_params",
        [[5, 2]],
    )
    with pytest.raises(ValueError, match="key=value"):
        parse_override("layer")


def test_resolution_order_default_preset_user():
    preset = load_preset("rome", "llama", 30, ROMEConfig)
    assert preset, "the bundled llama preset for ROME should exist"
    cfg = resolve_config(ROMEConfig, "rome", "llama", 30, {"v_lr": 0.123})
    assert cfg.v_lr == 0.123
    for key, value in preset.items():
        if key != "v_lr":
            assert getattr(cfg, key) == value
    assert resolve_config(ROMEConfig, "rome", "no_such_type", None, {}).layer == 17


def test_preset_by_num_layers_picks_the_family_member():
    small = resolve_config(ROMEConfig, "rome", "gpt2", 12)
    xl = resolve_config(ROMEConfig, "rome", "gpt2", 48)
    assert xl.layer == 17 and small.layer != xl.layer


def test_registry_lookup_errors_name_the_known_entries():
    reg: Registry[int] = Registry("thing")
    reg.register("alpha", 1)
    with pytest.raises(KeyError, match="Did you mean alpha"):
        reg["alpah"]
    with pytest.raises(ValueError, match="lower-case"):
        reg.register("Beta", 2)
    with pytest.raises(ValueError, match="already"):
        reg.register("alpha", 3)
