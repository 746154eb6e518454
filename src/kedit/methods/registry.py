"""The method registry: one line per method.

Adding a method: write ``methods/<name>.py`` (its class carries ``name``, ``display_name``,
``family``, ``paper``, ``config_cls`` and ``supports_batch``) and add one ``METHODS.register``
line here, with the method's aliases. The guard tests check that every method file is
registered, that each class is an ``EditMethod`` named as registered, and that the README's
method table matches (``python scripts/sync_readme.py`` rewrites it).
"""

from __future__ import annotations

from typing import Any

from kedit.env import Environment
from kedit.methods.base import EditMethod
from kedit.registry import Registry

METHODS: Registry[type[EditMethod]] = Registry("method", base=EditMethod)
METHODS.register(
    "ft-l",
    "kedit.methods.ft:FTL",
    "fine-tune one module (prompt_last loss; an L-inf bound where set)",
    aliases=("ft",),
)
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
METHODS.register(
    "ultraedit", "kedit.methods.ultraedit:UltraEdit", "lifelong closed-form edits, normalised"
)
METHODS.register("calinet", "kedit.methods.calinet:CaliNET", "FFN calibration slots, many facts")
METHODS.register(
    "t-patcher",
    "kedit.methods.tpatcher:TPatcher",
    "one neuron per mistaken token, in the last FFN",
    aliases=("tpatcher",),
)
METHODS.register("wise", "kedit.methods.wise:WISE", "side memory of one FFN matrix, routed")
METHODS.register("melo", "kedit.methods.melo:MELO", "LoRA rank blocks routed by a key database")
METHODS.register("mello", "kedit.methods.mello:MeLLo", "memory of facts, multi-hop decomposition")
METHODS.register("mend", "kedit.methods.mend:MEND", "trained network turns the edit's gradient")
METHODS.register("ke", "kedit.methods.ke:KE", "fact-conditioned network masks the gradient")
METHODS.register("malmen", "kedit.methods.malmen:MALMEN", "many edits' shifts by least squares")
METHODS.register("serac", "kedit.methods.serac:SERAC", "memory, scope classifier, counterfactual")
METHODS.register("deepedit", "kedit.methods.deepedit:DeepEdit", "constrained DFS over reasoning")


def make_method(
    method: str | EditMethod,
    model: Any,
    overrides: dict[str, Any] | None = None,
    env: Environment | None = None,
) -> EditMethod:
    """The method named ``method`` configured for ``model`` (its architecture's preset, then
    ``overrides``); a method object is returned as it is (it carries its own config)."""
    if isinstance(method, EditMethod):
        if overrides:
            raise ValueError(
                "pass hyperparameter overrides with a method name, not with a method object "
                "(its config is already set)"
            )
        return method
    return METHODS[method].for_model(model, overrides, env)


def display_name(method: str) -> str:
    """The papers' spelling of a method: the registered class's, else the name in capitals
    (for methods kedit does not have, named in the survey's claims)."""
    return METHODS[method].display_name if method in METHODS else method.upper()
