"""Fixtures: a tokenizer trained in-process, tiny random models of every known architecture,
and an isolated environment. Nothing is downloaded."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GemmaConfig,
    GPT2Config,
    GPTJConfig,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

from kedit.env import Environment


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (the suite's ``-n auto``) the cores are shared between the workers:
    each worker's torch takes its share of the threads, not all of them."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        torch.set_num_threads(max(1, torch.get_num_threads() // int(workers)))


REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "src" / "kedit" / "data" / "demo_facts.json"


def toy_corpus() -> list[str]:
    """Sentences built from the bundled demo facts plus some filler text."""
    lines = []
    for record in json.loads(DEMO.read_text()):
        subject = record["subject"]
        lines.append(record["prompt"].replace("{}", subject) + " " + record["target_true"] + ".")
        lines += [p + " " + record["target_true"] + "." for p in record["paraphrase_prompts"]]
        lines += [n["prompt"] + " " + n["answer"] + "." for n in record["neighborhood_prompts"]]
        lines += record["generation_prompts"]
    lines += [
        "The quick brown fox jumps over the lazy dog.",
        "Therefore the answer is clear. Because it rained, I stayed home. You know it.",
        "Rome Paris London Berlin Madrid Tokyo Moscow Cairo Lisbon Vienna",
    ] * 3
    return lines


def train_tokenizer(bos: bool, extra: Sequence[str] = ()) -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2 style leading spaces); ``bos=True`` adds ``<s>`` like Llama;
    ``extra`` texts join the training corpus (to learn merges such as ``"\\n\\n"``)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([*toy_corpus(), *extra], trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return train_tokenizer(bos=False)


@pytest.fixture(scope="session")
def bos_tokenizer() -> PreTrainedTokenizerFast:
    return train_tokenizer(bos=True)


V = 700  # vocabulary size of the trained tokenizer
SMALL = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": V,
    "max_position_embeddings": 1024,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}

TINY_CONFIGS = {
    "gpt2": lambda: GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=4,
        n_inner=64,
        vocab_size=V,
        n_positions=1024,
        bos_token_id=1,
        eos_token_id=2,
    ),
    "gptj": lambda: GPTJConfig(
        n_layer=2,
        n_embd=32,
        n_head=4,
        n_inner=64,
        rotary_dim=4,
        vocab_size=V,
        n_positions=1024,
        bos_token_id=1,
        eos_token_id=2,
    ),
    "gpt_neox": lambda: GPTNeoXConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=V,
        max_position_embeddings=1024,
    ),
    "llama": lambda: LlamaConfig(**SMALL),
    "mistral": lambda: MistralConfig(**SMALL, sliding_window=None),
    "qwen2": lambda: Qwen2Config(**SMALL),
    "qwen3": lambda: Qwen3Config(**SMALL, head_dim=8),
    "gemma": lambda: GemmaConfig(**SMALL, head_dim=8),
    "gemma2": lambda: Gemma2Config(**SMALL, head_dim=8),
    "gemma3_text": lambda: Gemma3TextConfig(**SMALL, head_dim=8),
    "phi3": lambda: Phi3Config(**SMALL),
}


#: where tiny models live; KEDIT_TEST_DEVICE=cuda runs the unit tests on a GPU
DEVICE = torch.device(os.environ.get("KEDIT_TEST_DEVICE", "cpu"))


def tiny_model(model_type: str, seed: int = 0, blocks: int | None = None) -> torch.nn.Module:
    """A random tiny model of ``model_type`` (2 blocks unless ``blocks`` says otherwise)."""
    torch.manual_seed(seed)
    config = TINY_CONFIGS[model_type]()
    if blocks is not None:
        settings = {**config.to_dict(), "num_hidden_layers": blocks, "n_layer": blocks}
        settings.pop("layer_types", None)  # derived from the number of blocks
        config = type(config).from_dict(settings)
    config._attn_implementation = "eager"
    return AutoModelForCausalLM.from_config(config).to(DEVICE).eval()


@pytest.fixture
def gpt2():
    return tiny_model("gpt2")


@pytest.fixture
def llama():
    return tiny_model("llama")


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "toy.txt"
    path.write_text("\n".join(toy_corpus()))
    return path


@pytest.fixture
def env(tmp_path: Path, corpus_file: Path) -> Environment:
    return Environment(
        cache_dir=tmp_path / "cache", data_dir=None, stats_corpus=str(corpus_file), progress=False
    )


def data_dir() -> Path:
    """The shared benchmark data (``KEDIT_DATA_DIR``, else ``../shared/data``)."""
    path = Path(os.environ.get("KEDIT_DATA_DIR", REPO.parent / "shared" / "data"))
    if not path.is_dir():
        raise FileNotFoundError(f"benchmark data not found at {path}; set KEDIT_DATA_DIR")
    return path


#: editors of the meta-learning methods trained once per test session, per (method, arch)
_EDITORS: dict[tuple[str, str], Path] = {}


def trained_editor(name: str, arch: str) -> Path:
    """The folder of a briefly trained editor of meta-learning method ``name`` for
    ``tiny_model(arch)`` and the ``tokenizer`` fixture's tokenizer (its ``tiny_configs`` entry:
    a few steps on CounterFact's training split), trained the first time it is asked for."""
    if (name, arch) not in _EDITORS:
        import tempfile

        from kedit.methods import METHODS
        from kedit.train import train_editor, training_data
        from tests.tiny_configs import tiny_config

        model = tiny_model(arch)
        env = Environment(cache_dir=Path(tempfile.mkdtemp(prefix=f"kedit-{name}-")))
        env.progress = False
        method = METHODS[name].for_model(model, tiny_config(name), env)
        cfg = method.config
        data = training_data(
            cfg.train_data, data_dir(), cfg.val_size, cfg.batch_size, env.seed, limit=60
        )
        _EDITORS[name, arch] = train_editor(
            method, model, train_tokenizer(bos=False), data, env, progress_bar=False
        ).folder
    return _EDITORS[name, arch]


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert list(after) == list(before), "the model's modules or parameters changed"
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), f"{name} differs"


# -- the synthetic bench of tests/synthetic_bench.py, built once per module that uses it ------


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.synthetic_bench import build_bench

    root = tmp_path_factory.mktemp("bench")
    build_bench(root)
    return root


@pytest.fixture(scope="module")
def summary(bench: Path):
    from kedit.bench.summary import BenchSummary

    return BenchSummary.load(bench)


@pytest.fixture(scope="module")
def rows(bench: Path) -> dict:
    from tests.synthetic_bench import read_rows

    return read_rows(bench)
