"""What produced a run's numbers: the method and its config, the data, the measures, the
protocol, the model (its content fingerprint), the seed and the package versions."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from typing import Any

from kedit._version import __version__
from kedit.env import Environment
from kedit.eval.metric import Metric
from kedit.eval.protocols import Protocol
from kedit.methods import EditMethod
from kedit.model.lm import hf_module, model_device
from kedit.types import EditCase


def run_info(
    model: Any,
    method: EditMethod,
    dataset: str | Sequence[EditCase],
    cases: Sequence[EditCase],
    metrics: list[Metric],
    env: Environment,
    protocol: Protocol,
) -> dict[str, Any]:
    """What produced a run's numbers: method and config, data, measures, protocol, model,
    versions."""
    return {
        "method": method.name,
        "config": method.config.to_dict(),
        "family": method.family,
        "dataset": dataset if isinstance(dataset, str) else "<cases>",
        "n_cases": len(cases),
        **model_info(model, env),
        "metrics": {m.name: {"group": m.group, "protocol": m.protocol} for m in metrics},
        "protocol": str(protocol),
    }


def model_info(model: Any, env: Environment) -> dict[str, Any]:
    """The model (name, type, content fingerprint, device), seed, statistics corpus and the
    package versions."""
    import torch
    import transformers

    hf = hf_module(model)
    return {
        "model": getattr(hf.config, "_name_or_path", "") or hf.config.model_type,
        "model_type": hf.config.model_type,
        "model_fingerprint": env.fingerprint(hf),
        "stats_corpus": env.stats_corpus,
        "seed": env.seed,
        "versions": {
            "kedit": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "device": str(model_device(model)),
    }
