"""General ability of a (possibly edited) model: WikiText-2 perplexity and downstream tasks.

Usage::

    lm = as_language_model(model, tok)  # or ``edit.lm``, or IKE's in-context wrapper
    general_ability(lm, ["wikitext", "sst2", "mmlu"], data_dir, limit=100)
    # {"wikitext": {"score": 41.2, "metric": "perplexity", "median": ..., "corpus": ..., ...},
    #  "sst2": {"score": 0.61, "metric": "accuracy", "f1_weighted": ..., "mcc": ..., ...}, ...}

Run before editing and after N sequential edits, this is the "general ability" check of the
editing literature: perplexity as a collapse detector (Yang et al. 2024, "The Butterfly Effect of
Model Editing"; ME-PPL / EasyEdit ``compute_ppl``) and downstream tasks scored by the likelihood
of their label words (AlphaEdit, Fang et al. ICLR 2025, ``glue_eval/``; Gu et al. 2024, "Model
Editing Harms General Abilities of Large Language Models").

Everything goes through :meth:`LanguageModel.score_targets`, so a plain model, a weight-edited
model and an in-context editor are measured by the same code, in batched forward passes.

The protocol and registry are in :mod:`kedit.eval.general.task`; perplexity in
:mod:`kedit.eval.general.perplexity`; the downstream tasks in :mod:`kedit.eval.general.downstream`.
"""

from kedit.eval.general.task import GENERAL_TASKS, GeneralTask, general_ability

__all__ = ["GENERAL_TASKS", "GeneralTask", "general_ability"]
