"""Method hyperparameters: dataclass defaults -> preset per model_type -> user overrides.

Every method has a ``@dataclass(kw_only=True)`` subclass of :class:`MethodConfig` whose defaults
are the paper's. Presets in ``kedit/presets/<method>/<model_type>.yaml`` override only what
differs for an architecture; an architecture without a file of its own uses its preset family's
(``ArchSpec.preset_family``: Mistral, Qwen, Gemma and Phi-3 use Llama's). A preset may also hold a
``by_num_layers`` table for sizes of one family (GPT-2 small and XL share ``model_type``). Each
value in a preset file cites its source in a comment. User overrides come last. Unknown keys and
wrongly typed values are rejected with a message naming the valid fields.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

C = TypeVar("C", bound="MethodConfig")

#: the override key that names a preset (``--set preset=constrained``) instead of a field
PRESET_KEY = "preset"


@dataclasses.dataclass(kw_only=True)
class MethodConfig:
    """Base of all method configs; subclasses add fields with the paper's defaults."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` for values out of range. Subclasses extend this."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls: type[C], values: Mapping[str, Any]) -> C:
        """Build a config, rejecting unknown keys and values of the wrong type."""
        return cls(**cls.checked(values))

    @classmethod
    def checked(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """``values`` with known keys and values of the right type (converted where lossless),
        or a ``ValueError`` naming the field: what can be checked before a model is loaded. The
        key ``preset`` names a preset file and is passed through."""
        values = dict(values)
        preset = values.pop(PRESET_KEY, None)
        if preset is not None and not isinstance(preset, str):
            raise ValueError(f"preset names a preset file, e.g. preset=constrained; got {preset!r}")
        check_keys(cls, values)
        hints = typing.get_type_hints(cls)
        checked = {k: _coerce(k, v, hints[k], cls.__name__) for k, v in values.items()}
        return checked | ({PRESET_KEY: preset} if preset is not None else {})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls: type[C], text: str) -> C:
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__} YAML must be a mapping, got {type(data).__name__}")
        return cls.from_dict(data)


def check_keys(cls: type[MethodConfig], values: Mapping[str, Any]) -> None:
    known = cls.field_names()
    unknown = [k for k in values if k not in known]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, known, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(
            f"unknown {cls.__name__} field(s): {', '.join(hints)}. Valid fields: {', '.join(known)}"
        )


def _coerce(key: str, value: Any, hint: Any, owner: str) -> Any:
    """Check ``value`` against a type hint, converting the lossless cases (int -> float, str
    numbers from YAML or ``--set``)."""
    ok, converted = _match(value, hint)
    if not ok:
        raise ValueError(f"{owner}.{key} expects {_hint_name(hint)}, got {value!r}")
    return converted


def _match(value: Any, hint: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            ok, converted = _match(value, arg)
            if ok:
                return True, converted
        return False, value
    if hint is type(None):
        return value is None, value
    if origin is typing.Literal:
        return value in args, value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False, value
        item_hint = args[0] if args else Any
        out = []
        for item in value:
            ok, converted = _match(item, item_hint)
            if not ok:
                return False, value
            out.append(converted)
        return True, list(out) if origin is list else tuple(out)
    if origin is dict:
        return isinstance(value, dict), value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, (int, float)):
            return True, float(value)
        if isinstance(value, str):
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if hint is int:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, int):
            return True, value
        if isinstance(value, str) and value.lstrip("-").isdigit():
            return True, int(value)
        return False, value
    if hint is str:
        return isinstance(value, str), value
    return isinstance(value, hint) if isinstance(hint, type) else True, value


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def parse_override(text: str) -> tuple[str, Any]:
    """Parse a CLI ``key=value`` override; the value is read as YAML (``0.5``, ``[4, 5]``)."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like key=value, e.g. layer=5")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def preset_path(method: str, model_type: str) -> Path | None:
    """The bundled preset file for ``method`` on ``model_type``, if there is one."""
    candidate = resources.files("kedit") / "presets" / method / f"{model_type}.yaml"
    return Path(str(candidate)) if candidate.is_file() else None


def named_presets(method: str, model_types: Sequence[str]) -> list[str]:
    """The names of the named presets of ``method`` for these architectures
    (``presets/<method>/<model_type>.<name>.yaml``)."""
    folder = resources.files("kedit") / "presets" / method
    if not folder.is_dir():
        return []
    stems = [Path(str(f)).stem for f in folder.iterdir() if str(f).endswith(".yaml")]
    named = [s.split(".", 1) for s in stems if "." in s]
    return sorted({rest for base, rest in named if base in model_types})


def load_preset(
    method: str,
    model_types: Sequence[str],
    num_layers: int | None,
    config_cls: type[MethodConfig],
    name: str | None = None,
) -> dict[str, Any]:
    """The overrides of the first of ``model_types`` that has a preset file for ``method`` (an
    architecture's own, else its preset family's), with the ``by_num_layers`` entry for this
    depth applied. ``name`` picks a named preset (``<model_type>.<name>.yaml``) instead of the
    default one; a name that does not exist is an error listing those that do."""
    stems = list(model_types) if name is None else [f"{t}.{name}" for t in model_types]
    path = next((p for t in stems if (p := preset_path(method, t)) is not None), None)
    if path is None and name is not None:
        known = ", ".join(named_presets(method, model_types)) or "none"
        raise ValueError(
            f"no preset {name!r} of {method} for {'/'.join(model_types) or 'this model'}; "
            f"named presets there: {known}"
        )
    if path is None:
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a preset is a mapping of config fields to values")
    by_layers = data.pop("by_num_layers", None) or {}
    if num_layers is not None and num_layers in by_layers:
        data.update(by_layers[num_layers])
    try:
        check_keys(config_cls, data)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return data


def resolve_config(
    config_cls: type[C],
    method: str,
    model_types: Sequence[str] = (),
    num_layers: int | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> C:
    """Dataclass defaults, then the preset (see :func:`load_preset`; ``overrides`` may name one
    with the key ``preset``), then ``overrides``."""
    overrides = dict(overrides or {})
    name = overrides.pop(PRESET_KEY, None)
    values: dict[str, Any] = load_preset(method, model_types, num_layers, config_cls, name)
    values.update(overrides)
    return config_cls.from_dict(values)
