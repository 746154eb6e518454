"""kedit: knowledge editing for Hugging Face causal LMs, with an audit of every edit.

Example:
    >>> import kedit
    >>> kedit.EditRequest("{} plays the sport of", "Michael Jordan", "baseball").text
    'Michael Jordan plays the sport of'
"""

from kedit._version import __version__
from kedit.api import (
    BenchPlan,
    EvalReport,
    edit,
    evaluate,
    load_model,
    run_bench,
    trace,
    train,
)
from kedit.data import DATASETS, load_dataset
from kedit.env import Environment
from kedit.eval.audit import audit
from kedit.eval.metric import METRICS
from kedit.eval.protocol_text import parse_protocol
from kedit.eval.protocols import Batch, Protocol, Sequential, Single
from kedit.methods import METHODS, Edit, EditMethod, EditSession
from kedit.model.arch import ArchSpec, arch_of, register_arch
from kedit.model.lm import HFLanguageModel, LanguageModel
from kedit.types import EditCase, EditRequest, Probe, ProbeKind

__all__ = [
    "DATASETS",
    "METHODS",
    "METRICS",
    "ArchSpec",
    "Batch",
    "BenchPlan",
    "Edit",
    "EditCase",
    "EditMethod",
    "EditRequest",
    "EditSession",
    "Environment",
    "EvalReport",
    "HFLanguageModel",
    "LanguageModel",
    "Probe",
    "ProbeKind",
    "Protocol",
    "Sequential",
    "Single",
    "__version__",
    "arch_of",
    "audit",
    "edit",
    "evaluate",
    "load_dataset",
    "load_model",
    "parse_protocol",
    "register_arch",
    "run_bench",
    "trace",
    "train",
]
