"""The method registry: one line per method.

Adding a method: write ``methods/<name>.py`` (see ``docs/DESIGN.md``), add one line here, add
its tiny test config to ``tests/tiny_configs.py``; the contract tests then cover it.
"""

from __future__ import annotations

from typing import Any

from kedit.env import Environment
from kedit.methods.base import Edit, EditMethod
from kedit.methods.session import EditSession
from kedit.registry import Registry

METHODS: Registry[type[EditMethod]] = Registry("method")
METHODS.register("ft-l", "kedit.methods.ft:FTL", "fine-tune one module under an L-inf bound")
METHODS.register("ft-m", "kedit.methods.ft:FTM", "fine-tune one module, target-only loss")
METHODS.register("rome", "kedit.methods.rome:ROME", "rank-one update of one MLP projection")
METHODS.register("r-rome", "kedit.methods.r_rome:RROME", "ROME with the averaged key throughout")
METHODS.register("memit", "kedit.methods.memit:MEMIT", "batched update spread over MLP layers")
METHODS.register("emmet", "kedit.methods.emmet:EMMET", "equality-constrained batched update")
METHODS.register("alphaedit", "kedit.methods.alphaedit:AlphaEdit", "MEMIT in the null space")
METHODS.register("pmet", "kedit.methods.pmet:PMET", "attention+FFN targets, FFN-only update")
METHODS.register("kn", "kedit.methods.kn:KN", "integrated-gradients neurons, value-slot edit")
METHODS.register("grace", "kedit.methods.grace:GRACE", "codebook adaptor at one layer")
METHODS.register("ike", "kedit.methods.ike:IKE", "in-context editing with demonstrations")

#: short names that resolve to a registered method
ALIASES = {"ft": "ft-l"}


def get_method(name: str) -> type[EditMethod]:
    return METHODS[ALIASES.get(name, name)]


def make_method(
    name: str,
    model: Any,
    overrides: dict[str, Any] | None = None,
    env: Environment | None = None,
) -> EditMethod:
    """The method ``name`` configured for ``model`` (preset for its architecture, then
    ``overrides``)."""
    return get_method(name).for_model(model, overrides, env)


def batch_methods() -> list[str]:
    """Names of the registered methods that edit a batch of requests in one update."""
    return [n for n in METHODS.names() if METHODS[n].supports_batch]


__all__ = [
    "ALIASES",
    "METHODS",
    "Edit",
    "EditMethod",
    "EditSession",
    "batch_methods",
    "get_method",
    "make_method",
]
