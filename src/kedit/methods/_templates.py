"""Context templates ("random prefixes") for locate-and-edit methods.

ROME and its successors average the subject's key, and optimise the target value, over the edit
prompt preceded by short texts sampled from the model being edited. The texts are seeded, cached
per model fingerprint in the environment and on disk, and never shared between models.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn
from transformers import PreTrainedTokenizerBase

from kedit.env import Environment, private_tmp
from kedit.model.lm import HFLanguageModel
from kedit.model.tokens import encode, encode_prompt_target, token_index_of_span
from kedit.types import SUBJECT_SLOT, EditRequest

log = logging.getLogger(__name__)

#: first words of the sampled prefixes (EasyEdit's choice; works for every tokenizer, unlike
#: ROME's "<|endoftext|>" which only GPT-2 has)
SEED_WORDS = ("The", "Therefore", "Because", "I", "You")

#: ROME's compute_v and MEMIT's compute_z read their KL term on this prompt
KL_PROMPT = "{} is a"


def context_templates(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    env: Environment,
    length_params: Sequence[Sequence[int]],
    top_k: int = 5,
) -> list[list[str]]:
    """Template groups: ``[["{}"], [<sampled text>. {}, ...] per (length, count)]``.

    ``length_params`` lists ``[n_tokens, count]`` pairs, e.g. ROME's ``[[5, 10], [10, 10]]``.
    """
    spec = [tuple(int(x) for x in pair) for pair in length_params]
    key = ("templates", env.fingerprint(model), tuple(spec), top_k, env.seed)

    def compute() -> list[list[str]]:
        lengths = "_".join(f"{n}x{c}" for n, c in spec)
        path = env.cache_dir / "templates" / key[1] / f"{lengths}_top{top_k}_seed{env.seed}.json"
        if path.is_file():
            return json.loads(path.read_text())
        groups = [[SUBJECT_SLOT]] + [
            _sample(model, tok, n_tokens, count, top_k, env.seed + i)
            for i, (n_tokens, count) in enumerate(spec)
        ]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = private_tmp(path)
        tmp.write_text(json.dumps(groups, indent=1))
        tmp.replace(path)
        log.info("sampled %d context templates", sum(map(len, groups)))
        return groups

    return env.memo(key, compute)


def _sample(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    n_tokens: int,
    count: int,
    top_k: int,
    seed: int,
) -> list[str]:
    prompts = [SEED_WORDS[i % len(SEED_WORDS)] for i in range(count)]
    lm = HFLanguageModel(model, tok)
    continuations = lm.generate(prompts, n_tokens, top_k=top_k, seed=seed)
    texts = [(p + c).replace("{", " ").replace("}", " ") for p, c in zip(prompts, continuations)]
    return [" ".join(t.split()) + ". " + SUBJECT_SLOT for t in texts]


def fill(template: str, request: EditRequest) -> tuple[str, tuple[int, int]]:
    """The request's prompt placed in ``template``, and the subject's character span in it."""
    offset = template.index(SUBJECT_SLOT)
    text = template.replace(SUBJECT_SLOT, request.text, 1)
    start, end = request.subject_span
    return text, (offset + start, offset + end)


def flatten(groups: Sequence[Sequence[str]]) -> list[str]:
    """All templates of all groups, in order."""
    return [t for group in groups for t in group]


@dataclass(frozen=True)
class SearchRows:
    """One request's rows: ``template + prompt + target[:-1]`` for each context template, then
    the KL prompt; ``split`` is the subject's last token in each row."""

    ids: list[list[int]]
    split: list[int]
    target_ids: list[int]
    heads: list[int]  # leading tokens that are the template's own (0: none, the KL row's)


def search_rows(
    tok: PreTrainedTokenizerBase, request: EditRequest, templates: Sequence[str]
) -> SearchRows:
    """The rows the v* loss of ``request`` is read on (see :class:`SearchRows`)."""
    target_ids = encode_prompt_target(tok, request.text, request.target_new).target_ids
    ids, split, heads = [], [], []
    for template in templates:
        text, span = fill(template, request)
        prompt_ids = encode_prompt_target(tok, text, request.target_new).prompt_ids
        ids.append(prompt_ids + target_ids[:-1])
        split.append(token_index_of_span(tok, text, span))
        head = template_head(tok, template)
        heads.append(len(head) if head and prompt_ids[: len(head)] == head else 0)
    kl_text, kl_span = kl_prompt(request)
    ids.append(encode(tok, kl_text).ids)
    split.append(token_index_of_span(tok, kl_text, kl_span))
    return SearchRows(ids, split, target_ids, [*heads, 0])


def template_head(tok: PreTrainedTokenizerBase, template: str) -> list[int]:
    """The tokens of a context template's text before the prompt (its trailing space left to
    the prompt's first word, as a joint tokenisation mostly does): what every request's row
    with this template starts with, where the row's tokens show it does."""
    head = template[: template.index(SUBJECT_SLOT)].rstrip()
    return encode(tok, head).ids if head else []


def kl_prompt(request: EditRequest) -> tuple[str, tuple[int, int]]:
    """The KL ("essence") prompt, ``"{subject} is a"`` as ROME's ``compute_v`` and MEMIT's
    ``compute_z`` fill it, and the subject's span in it: the KL term is read at the subject's
    last token, so the prompt must start with the subject, whatever the edit prompt is."""
    return KL_PROMPT.format(request.subject), (0, len(request.subject))
