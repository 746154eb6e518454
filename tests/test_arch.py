import pytest
import torch
from transformers.pytorch_utils import Conv1D

from kedit.methods import METHODS
from kedit.model.arch import (
    ARCHS,
    BLOCK_PARTS,
    ArchRegistry,
    ArchSpec,
    UnknownArchitectureError,
    arch_of,
    is_conv1d,
    num_layers,
    weight_out_in,
)
from kedit.types import EditRequest
from tests.conftest import DEVICE, TINY_CONFIGS, tiny_model

REQUIRED = [
    "gpt2",
    "gptj",
    "gpt_neox",
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma2",
    "gemma3_text",
    "phi3",
]


def test_required_architectures_are_known():
    assert set(REQUIRED) <= set(ARCHS.names())
    assert set(ARCHS.names()) <= set(TINY_CONFIGS), "every spec needs a tiny test model"


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_spec_paths_resolve_on_a_tiny_model(model_type):
    model = tiny_model(model_type)
    spec = arch_of(model)
    assert spec.model_type == model_type
    n = num_layers(model)
    assert n == 2 == len(model.get_submodule(spec.layers))  # the config's depth is the modules'

    for layer in range(n):
        for part in BLOCK_PARTS:
            for path in spec.paths(part, layer):
                assert isinstance(model.get_submodule(path), torch.nn.Module)
        # the MLP's output projection writes the residual stream: its out width is d_model
        out_in = weight_out_in(spec.module(model, "mlp_out", layer))
        assert out_in.shape == (32, 64)
    for part in ("embed", "final_norm", "unembed"):
        assert model.get_submodule(spec.path(part)) is not None
    assert spec.module(model, "unembed") is model.get_output_embeddings()


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_mlp_keys_feed_the_output_projection(model_type):
    """The mlp_out input (the key) has the MLP width on every architecture."""
    model = tiny_model(model_type)
    spec = arch_of(model)
    seen = {}
    module = spec.module(model, "mlp_out", 0)
    handle = module.register_forward_pre_hook(lambda m, a: seen.setdefault("k", a[0]))
    with torch.no_grad():
        model(torch.tensor([[5, 6, 7]], device=DEVICE))
    handle.remove()
    assert seen["k"].shape[-1] == 64


def test_conv1d_is_recognised_by_type_not_shape():
    gpt2 = tiny_model("gpt2")
    c_proj = gpt2.get_submodule("transformer.h.0.mlp.c_proj")
    assert isinstance(c_proj, Conv1D) and is_conv1d(c_proj)
    assert c_proj.weight.shape == (64, 32)  # stored [in, out]
    assert weight_out_in(c_proj).shape == (32, 64)
    # a square Conv1D is still recognised (a shape test could not tell)
    attn_out = gpt2.get_submodule("transformer.h.0.attn.c_proj")
    assert attn_out.weight.shape[0] == attn_out.weight.shape[1] and is_conv1d(attn_out)
    llama = tiny_model("llama")
    assert not is_conv1d(llama.get_submodule("model.layers.0.mlp.down_proj"))


def test_unknown_model_type_error_says_how_to_declare_it():
    model = tiny_model("llama")
    model.config.model_type = "my_new_lm"
    with pytest.raises(UnknownArchitectureError) as info:
        arch_of(model)
    message = str(info.value)
    assert "gpt2" in message and "llama" in message
    assert "register_arch" in message and "--arch" in message


def test_a_new_architecture_is_declared_without_editing_kedit(tokenizer, env):
    registry = ArchRegistry()
    model = tiny_model("llama")
    model.config.model_type = "renamed_llama"
    spec = ArchSpec(
        model_type="renamed_llama",
        layers="model.layers",
        attn="self_attn",
        attn_out="self_attn.o_proj",
        mlp="mlp",
        mlp_in=("mlp.up_proj",),
        mlp_out="mlp.down_proj",
        embed="model.embed_tokens",
        final_norm="model.norm",
        unembed="lm_head",
    )
    registry.register(spec)
    assert registry.get("renamed_llama") is spec
    with pytest.raises(ValueError, match="already known"):
        registry.register(spec)
    ARCHS.register(spec)
    try:
        request = EditRequest("Tourists visit {}", "the Eiffel Tower", "Rome")
        method = METHODS["ft-m"].for_model(model, {"layer": 1, "num_steps": 2}, env)
        method.edit(model, tokenizer, request).restore()
    finally:
        ARCHS._specs.pop("renamed_llama")


def test_arch_spec_from_yaml(tmp_path):
    path = tmp_path / "arch.yaml"
    path.write_text(
        "model_type: x\nlayers: a.b\nattn: at\nattn_out: at.o\nmlp: m\nmlp_in: [m.i]\n"
        "mlp_out: m.o\nembed: e\nfinal_norm: n\nunembed: u\n"
    )
    spec = ArchSpec.from_yaml(path)
    assert spec.path("mlp_out", 3) == "a.b.3.m.o" and spec.mlp_in == ("m.i",)
    path.write_text("model_type: x\nlayers: a\n")
    with pytest.raises(ValueError, match="missing"):
        ArchSpec.from_yaml(path)


def test_layer_range_is_checked():
    model = tiny_model("gpt2")
    spec = arch_of(model)
    assert spec.check_layer(model, -1) == 1
    with pytest.raises(ValueError, match="out of range"):
        spec.check_layer(model, 2)
