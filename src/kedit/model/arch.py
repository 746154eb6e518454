"""Architecture facts in one place, keyed by ``config.model_type``.

An :class:`ArchSpec` maps kedit's canonical module names to the real paths of one family of
Hugging Face causal LMs. Shared code asks ``spec.module(model, "mlp_out", layer)`` and never
tests a model's name. A model whose ``model_type`` is not listed is declared without editing
kedit::

    kedit.register_arch(ArchSpec(model_type="my_lm", layers="backbone.blocks", ...))

or from a YAML file with the same fields (``kedit ... --arch my_lm.yaml``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from transformers.pytorch_utils import Conv1D

#: canonical names of modules inside one block, relative to the block
BLOCK_PARTS = ("attn", "attn_out", "mlp", "mlp_in", "mlp_out")


@dataclass(frozen=True)
class ArchSpec:
    """Where the parts of one architecture live.

    Args:
        model_type: ``config.model_type`` this spec applies to.
        layers: path of the ``ModuleList`` of transformer blocks.
        attn: attention module, relative to a block.
        attn_out: attention output projection, relative to a block.
        mlp: the MLP (feed-forward) module, relative to a block.
        mlp_in: the MLP input projection(s) whose output feeds the activation
            (``gate_proj`` and ``up_proj`` for gated MLPs), relative to a block.
        mlp_out: the MLP output (down) projection, relative to a block. Its input is the "key"
            and its output the "value" of locate-and-edit methods.
        embed: token embedding, from the model root.
        final_norm: norm applied before the unembedding, from the model root.
        unembed: output projection to the vocabulary, from the model root.
        preset_family: the ``model_type`` whose method presets this one shares where it has
            none of its own (Mistral, Qwen, Gemma and Phi-3 share Llama's).
        normed_mlp_output: the block normalises the MLP's output before adding it to the
            residual stream (Gemma 2 and 3's ``post_feedforward_layernorm``), so the block's
            output is not linear in a change of the MLP's weights.
    """

    model_type: str
    layers: str
    attn: str
    attn_out: str
    mlp: str
    mlp_in: tuple[str, ...]
    mlp_out: str
    embed: str
    final_norm: str
    unembed: str
    preset_family: str | None = None
    normed_mlp_output: bool = False

    def preset_types(self) -> list[str]:
        """Where this architecture's presets are looked up, in order."""
        return [self.model_type] + ([self.preset_family] if self.preset_family else [])

    def path(self, part: str, layer: int | None = None) -> str:
        """Full module path of a canonical part (``layer`` is required for block parts)."""
        if part == "block":
            return f"{self.layers}.{self._need_layer(part, layer)}"
        if part in BLOCK_PARTS:
            rel = getattr(self, part)
            if isinstance(rel, tuple) and len(rel) == 1:
                rel = rel[0]
            elif isinstance(rel, tuple):
                raise ValueError(
                    f"{part!r} names several modules on {self.model_type} ({', '.join(rel)}); "
                    f"use paths({part!r}, layer), or choose another part"
                )
            return f"{self.layers}.{self._need_layer(part, layer)}.{rel}"
        if part in ("embed", "final_norm", "unembed", "layers"):
            return getattr(self, part)
        raise KeyError(
            f"unknown part {part!r}; known: block, {', '.join(BLOCK_PARTS)}, "
            "embed, final_norm, unembed, layers"
        )

    def paths(self, part: str, layer: int) -> list[str]:
        rel = getattr(self, part)
        rels = rel if isinstance(rel, tuple) else (rel,)
        return [f"{self.layers}.{layer}.{r}" for r in rels]

    def module(self, model: nn.Module, part: str, layer: int | None = None) -> nn.Module:
        return get_module(model, self.path(part, layer))

    def check_layer(self, model: nn.Module, layer: int) -> int:
        """Resolve a negative index and check ``layer`` is in range."""
        n = num_layers(model)
        resolved = layer + n if layer < 0 else layer
        if not 0 <= resolved < n:
            raise ValueError(f"layer {layer} is out of range for a {n}-layer {self.model_type}")
        return resolved

    def _need_layer(self, part: str, layer: int | None) -> int:
        if layer is None:
            raise ValueError(f"{part!r} is inside a block; pass a layer index")
        return layer

    def resolved(self, model: nn.Module) -> ArchSpec:
        """This spec with every ``"a|b"`` alternative replaced by the one ``model`` has (module
        names that differ between transformers versions)."""
        names = {name for name, _ in model.named_modules()}
        first_block = f"{self.layers.split('|')[0]}.0"
        changes = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, str) and "|" in value:
                options = value.split("|")
                inside_block = f.name in BLOCK_PARTS
                found = [
                    o for o in options if (f"{first_block}.{o}" if inside_block else o) in names
                ]
                changes[f.name] = found[0] if found else options[0]
        return dataclasses.replace(self, **changes) if changes else self

    @classmethod
    def from_yaml(cls, path: str | Path) -> ArchSpec:
        data = yaml.safe_load(Path(path).read_text())
        fields = {f.name for f in dataclasses.fields(cls)}
        optional = {f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
        unknown = set(data) - fields
        missing = fields - optional - set(data)
        if unknown or missing:
            raise ValueError(
                f"{path}: ArchSpec fields unknown {sorted(unknown)} / missing {sorted(missing)}; "
                f"required fields: {', '.join(sorted(fields))}"
            )
        data["mlp_in"] = (
            tuple(data["mlp_in"]) if isinstance(data["mlp_in"], list) else (data["mlp_in"],)
        )
        return cls(**data)


#: llama-like types whose blocks normalise the MLP output (``post_feedforward_layernorm``)
NORMED_MLP_OUTPUT = ("gemma2", "gemma3_text")


def _llama_like(model_type: str) -> ArchSpec:
    return ArchSpec(
        preset_family=None if model_type == "llama" else "llama",
        normed_mlp_output=model_type in NORMED_MLP_OUTPUT,
        model_type=model_type,
        layers="model.layers",
        attn="self_attn",
        attn_out="self_attn.o_proj",
        mlp="mlp",
        mlp_in=("mlp.gate_proj", "mlp.up_proj"),
        mlp_out="mlp.down_proj",
        embed="model.embed_tokens",
        final_norm="model.norm",
        unembed="lm_head",
    )


def _builtin_specs() -> dict[str, ArchSpec]:
    specs = [
        ArchSpec(
            model_type="gpt2",
            layers="transformer.h",
            attn="attn",
            attn_out="attn.c_proj",
            mlp="mlp",
            mlp_in=("mlp.c_fc",),
            mlp_out="mlp.c_proj",
            embed="transformer.wte",
            final_norm="transformer.ln_f",
            unembed="lm_head",
        ),
        ArchSpec(
            model_type="gptj",
            layers="transformer.h",
            attn="attn",
            attn_out="attn.out_proj",
            mlp="mlp",
            mlp_in=("mlp.fc_in",),
            mlp_out="mlp.fc_out",
            embed="transformer.wte",
            final_norm="transformer.ln_f",
            unembed="lm_head",
        ),
        ArchSpec(
            model_type="gpt_neox",
            layers="gpt_neox.layers",
            attn="attention",
            attn_out="attention.dense",
            mlp="mlp",
            mlp_in=("mlp.dense_h_to_4h",),
            mlp_out="mlp.dense_4h_to_h",
            embed="gpt_neox.embed_in",
            final_norm="gpt_neox.final_layer_norm",
            unembed="lm_head|embed_out",  # renamed in transformers 5
        ),
        ArchSpec(
            model_type="phi3",
            layers="model.layers",
            attn="self_attn",
            attn_out="self_attn.o_proj",
            mlp="mlp",
            mlp_in=("mlp.gate_up_proj",),
            mlp_out="mlp.down_proj",
            embed="model.embed_tokens",
            final_norm="model.norm",
            unembed="lm_head",
            preset_family="llama",
        ),
    ]
    llama_family = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"]
    specs += [_llama_like(t) for t in llama_family]
    return {s.model_type: s for s in specs}


class ArchRegistry:
    """The table of known architectures; :data:`ARCHS` is the process-wide instance."""

    def __init__(self) -> None:
        self._specs = _builtin_specs()

    def register(self, spec: ArchSpec, replace: bool = False) -> None:
        if spec.model_type in self._specs and not replace:
            raise ValueError(
                f"model_type {spec.model_type!r} is already known; pass replace=True to override"
            )
        self._specs[spec.model_type] = spec

    def names(self) -> list[str]:
        return sorted(self._specs)

    def __contains__(self, model_type: object) -> bool:
        return model_type in self._specs

    def get(self, model_type: str) -> ArchSpec:
        if model_type not in self._specs:
            raise UnknownArchitectureError(model_type, self.names())
        return self._specs[model_type]


class UnknownArchitectureError(KeyError):
    def __init__(self, model_type: str, known: list[str]) -> None:
        self.model_type = model_type
        super().__init__(
            f"kedit does not know model_type {model_type!r}. Known: {', '.join(known)}. "
            "Declare it without editing kedit: kedit.register_arch(kedit.ArchSpec("
            f"model_type={model_type!r}, layers='model.layers', attn='self_attn', "
            "attn_out='self_attn.o_proj', mlp='mlp', mlp_in=('mlp.up_proj',), "
            "mlp_out='mlp.down_proj', embed='model.embed_tokens', final_norm='model.norm', "
            "unembed='lm_head')) with your model's module paths, or pass the same fields in a "
            "YAML file with --arch FILE on the command line."
        )

    def __str__(self) -> str:
        return str(self.args[0])


ARCHS = ArchRegistry()


def register_arch(spec: ArchSpec, replace: bool = False) -> None:
    """Teach kedit a new architecture (or replace a built-in spec with ``replace=True``)."""
    ARCHS.register(spec, replace=replace)


def model_type_of(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    if config is None or not getattr(config, "model_type", None):
        raise ValueError("model has no config.model_type; pass a Hugging Face PreTrainedModel")
    return config.model_type


def text_config(model: nn.Module) -> Any:
    """The config of the language part of ``model`` (itself for text-only models)."""
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def num_layers(model: nn.Module) -> int:
    """The number of transformer blocks: the one place kedit reads a model's depth."""
    config = text_config(model)
    depth = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    if not depth:
        raise ValueError(f"{type(model).__name__}'s config names no number of layers")
    return int(depth)


def arch_of(model: nn.Module) -> ArchSpec:
    """The :class:`ArchSpec` for a Hugging Face model, by ``config.model_type``."""
    return ARCHS.get(model_type_of(model)).resolved(model)


def layer_path(model: nn.Module, part: str, layer: int) -> str:
    """Path of canonical ``part`` in block ``layer`` (negative counts from the end)."""
    spec = arch_of(model)
    return spec.path(part, spec.check_layer(model, layer))


def get_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at a dotted ``path``, with an error naming the missing piece."""
    try:
        return model.get_submodule(path)
    except AttributeError as err:
        raise ValueError(
            f"{type(model).__name__} has no module {path!r} ({err}); if this architecture's "
            "layout differs, declare an ArchSpec for it (see kedit.register_arch)"
        ) from None


def is_conv1d(module: nn.Module) -> bool:
    """True for transformers' ``Conv1D`` (GPT-2), whose weight is stored as ``[in, out]``."""
    return isinstance(module, Conv1D)


def weight_out_in(module: nn.Module) -> torch.Tensor:
    """The module's weight as an ``(out_features, in_features)`` view, whatever its layout."""
    weight = module.weight
    return weight.T if is_conv1d(module) else weight
