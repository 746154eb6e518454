"""KN: Knowledge Neurons.

Dai, Dong, Hao, Sui, Chang, Wei. "Knowledge Neurons in Pretrained Transformers", ACL 2022.
https://arxiv.org/abs/2104.08696

An FFN computes ``sum_i a_i v_i``: each intermediate neuron ``i`` has an activation ``a_i`` and a
value slot ``v_i`` (column ``i`` of the down-projection in ``(out, in)`` orientation). KN finds
the neurons that express a fact and rewrites their value slots, as ROME's KN baseline does
(``baselines/kn``, a port of EleutherAI's ``knowledge-neurons`` library):

1. Attribution, per layer, at the last prompt token, by integrated gradients of the answer's
   probability with the layer's whole activation vector ``a`` scaled from 0 to itself (only
   that layer is scaled; the others run normally)::

       Attr_i = a_i * mean_{k=1..steps} dP(y | (k/steps) a) / da_i

   ``y`` is the first token of ``target_true``, or the model's own argmax when the request has
   no ``target_true``. For a multi-token ``target_true`` this is repeated per token, with the
   model's argmax token appended to the prompt after each step (so ``y`` is scored after the
   model's own greedy continuation), and the scores are averaged.
2. Coarse selection: neurons with ``Attr > adaptive_threshold * max Attr`` over all layers. The
   paraphrase-based refinement is not used by the ROME port (``refine=False``, one prompt) and
   is not implemented.
3. Edit ("edit" mode): every selected value slot gets ``-= old_scale * emb(original answer)``
   and ``+= new_scale * sum of emb(target_new tokens)``, with ``emb`` the input embedding and
   the original answer the model's argmax first token after the prompt. The same vector goes to
   every selected slot of a layer, so each layer's change is rank one.

Modifies the down-projections of the layers holding selected neurons; edits one fact per call.
The edit is unbounded (embedding-sized vectors times the neurons' activations) and is known to
damage models easily; KN is weak on CounterFact (ROME paper, Table 4).

Deviations from the ROME port, deliberately:

* the neurons attributed are the input of the down-projection (post-activation; ``act(gate) *
  up`` for gated MLPs), on every architecture: the quantity that multiplies the value slot the
  edit rewrites. The port attributes GPT-2's pre-GELU ``c_fc`` output (EasyEdit's Llama port
  ``gate_proj``'s output).
* the integration points are ``k/steps`` for ``k = 1..steps`` (the paper's Riemann sum); the
  port uses ``linspace(0, 1, steps)`` and still divides by ``steps``. ``steps`` need not be a
  multiple of ``batch_size`` (the last chunk is smaller).
* answers are tokenised as they follow the prompt (``" Paris"``); the port encodes the bare
  string (``"Paris"``), another token for GPT-2's tokenizer.
* for multi-token answers the port never appends the argmax token on GPT-2 (it re-tokenises
  only when ``model_type == "gpt"`` but is given ``"gpt2"``), so there every token is scored
  after the bare prompt; kedit appends it as the original library intends.
* ``new_scale`` is 1: on GPT models the port adds each target token's embedding once (its
  ``x2`` branch is reached only for BERT's single-id targets); ``old_scale`` is its 2.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from kedit.config import MethodConfig
from kedit.methods._weights import low_rank_delta
from kedit.methods.base import EditMethod
from kedit.methods.edit import Edit
from kedit.model.arch import arch_of, get_module, num_layers, weight_out_in
from kedit.model.cached_pass import PrefixCachedPass
from kedit.model.hooks import Trace, TraceDict, frozen
from kedit.model.lm import hf_module, model_device, select_logits
from kedit.model.tokens import encode, encode_prompt_target
from kedit.types import EditRequest

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class KNConfig(MethodConfig):
    """Knowledge Neurons hyperparameters (defaults: ROME's ``hparams/KN/gpt2-xl.json`` and its
    port's edit scales).

    Args:
        steps: integration steps per layer and answer token.
        batch_size: scaled copies per forward/backward pass.
        adaptive_threshold: keep neurons scoring above this fraction of the highest score.
        old_scale: multiple of the original answer's embedding subtracted from each value slot.
        new_scale: multiple of the new target's (summed) token embeddings added to each slot.
        layers: blocks searched for neurons (negative counts from the end); None: all.
    """

    steps: int = 20
    batch_size: int = 20
    adaptive_threshold: float = 0.2
    old_scale: float = 2.0
    new_scale: float = 1.0
    layers: list[int] | None = None

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be at least 1")
        if not 0.0 <= self.adaptive_threshold < 1.0:
            raise ValueError("adaptive_threshold must be in [0, 1)")
        if self.old_scale < 0 or self.new_scale < 0:
            raise ValueError("old_scale and new_scale must be non-negative")
        if self.layers is not None and not self.layers:
            raise ValueError("layers must name at least one block, or be None for all")


class KN(EditMethod):
    """Integrated-gradients neuron attribution, then rewriting the neurons' value slots."""

    name = "kn"
    display_name = "KN"
    paper = "Dai et al. 2022"
    family = "locate-and-edit"
    config_cls = KNConfig
    supports_batch = False

    def apply(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        requests: list[EditRequest],
        edit: Edit,
    ) -> None:
        model = hf_module(model)
        (request,) = requests
        cfg = self.config
        spec = arch_of(model)
        layers = self._layers(model)
        paths = [spec.path("mlp_out", layer) for layer in layers]

        contexts, answers, original = answer_steps(model, tok, request)
        scores = self._scores(model, contexts, answers, paths)  # (n_layers, d_in)
        threshold = cfg.adaptive_threshold * scores.max()
        selected = scores > threshold  # (n_layers, d_in)
        value = self._value_change(model, tok, request, original)  # (d_out,)

        for path, chosen in zip(paths, selected):  # all computed: only now touch weights
            if chosen.any():
                module = get_module(model, path)
                indicator = chosen.to(value.dtype)  # (d_in,)
                edit.add_delta(module.weight, low_rank_delta(module, value, indicator))
        neurons = [[layer, int(i)] for layer, row in zip(layers, selected) for i in row.nonzero()]
        if not neurons:
            log.warning("kn: no neuron scored above the threshold; the model is unchanged")
        log.info("kn: %d neuron(s) selected in layers %s", len(neurons), layers)
        edit.info.update(
            neurons=neurons,
            max_score=float(scores.max()),
            threshold=float(threshold),
            original_token=original,
            delta_norm=float(value.norm()),
        )

    def _layers(self, model: nn.Module) -> list[int]:
        spec = arch_of(model)
        chosen = self.config.layers
        if chosen is None:
            return list(range(num_layers(model)))
        return sorted({spec.check_layer(model, layer) for layer in chosen})

    def _scores(
        self,
        model: nn.Module,
        contexts: list[list[int]],
        answers: list[int],
        paths: list[str],
    ) -> torch.Tensor:
        """Attribution of every neuron of every layer, averaged over the answer's tokens."""
        cfg = self.config
        per_token = []
        for ids, answer in zip(contexts, answers):
            layer_scores = [
                integrated_gradients(model, ids, path, act, answer, cfg.steps, cfg.batch_size)
                for path, act in zip(paths, last_inputs(model, ids, paths))
            ]
            per_token.append(torch.stack(layer_scores))  # (n_layers, d_in)
        scores = torch.stack(per_token).mean(0)  # (n_layers, d_in)
        if scores.max() <= 0:
            log.warning("kn: no neuron has a positive attribution (max %.3g)", scores.max())
        return scores

    @torch.no_grad()
    def _value_change(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        request: EditRequest,
        original: int,
    ) -> torch.Tensor:
        """``new_scale * sum emb(target_new) - old_scale * emb(original)``, fp32, ``(d,)``."""
        cfg = self.config
        spec = arch_of(model)
        embed = spec.module(model, "embed").weight  # (vocab, d)
        d_out = weight_out_in(spec.module(model, "mlp_out", 0)).shape[0]
        if embed.shape[1] != d_out:
            raise ValueError(
                f"the input embedding has width {embed.shape[1]} but the MLP writes {d_out}; "
                "KN adds embeddings to the value slots and needs them equal"
            )
        new_ids = encode_prompt_target(tok, request.text, request.target_new).target_ids
        added = embed[new_ids].float().sum(0)  # (d,)
        return cfg.new_scale * added - cfg.old_scale * embed[original].float()


@torch.no_grad()
def answer_steps(
    model: nn.Module, tok: PreTrainedTokenizerBase, request: EditRequest
) -> tuple[list[list[int]], list[int], int]:
    """The contexts and ground-truth tokens attributed, and the original argmax answer token.

    Step ``j`` scores answer token ``j`` after the prompt followed by the model's greedy
    continuation of ``j`` tokens. Without ``target_true`` the answer is the model's argmax.
    """
    device = model_device(model)
    context = encode(tok, request.text).ids
    if request.target_true is None:
        truth = None
    else:
        truth = encode_prompt_target(tok, request.text, request.target_true).target_ids
    contexts, greedy = [], []
    with frozen(model):
        for _ in range(1 if truth is None else len(truth)):
            contexts.append(context)
            inputs = {"input_ids": torch.tensor([context], device=device), "use_cache": False}
            greedy.append(int(select_logits(model, inputs, 1)[0, -1].argmax()))
            context = [*context, greedy[-1]]
    return contexts, (greedy if truth is None else truth), greedy[0]


@torch.no_grad()
def last_inputs(model: nn.Module, ids: list[int], paths: list[str]) -> list[torch.Tensor]:
    """Each module's input at the last token of ``ids``: one ``(d_in,)`` tensor per path."""
    device = model_device(model)
    with frozen(model), TraceDict(model, paths, retain_input=True) as traces:
        select_logits(model, {"input_ids": torch.tensor([ids], device=device)}, 1)
    return [traces[path].input[0, -1] for path in paths]


def integrated_gradients(
    model: nn.Module,
    ids: list[int],
    path: str,
    activation: torch.Tensor,
    answer: int,
    steps: int,
    batch_size: int,
) -> torch.Tensor:
    """``a * mean_k dP(answer | (k/steps) a) / da`` for the input ``a`` of module ``path`` at
    the last token of ``ids``; the ``steps`` scaled copies run as a batch, ``batch_size`` at a
    time. The tokens before the last one cannot see the scaled input (causal attention), so
    their keys and values are computed once and each pass runs the last token alone
    (:class:`PrefixCachedPass`). Returns ``(d_in,)`` in fp32 (or wider if the model is)."""
    device = model_device(model)
    dtype = torch.promote_types(activation.dtype, torch.float32)
    activation = activation.to(dtype)
    alphas = torch.arange(1, steps + 1, device=device, dtype=dtype) / steps  # (steps,)
    grad_sum = torch.zeros_like(activation)  # (d_in,)
    with frozen(model):
        prompt = PrefixCachedPass(model, [ids], [len(ids) - 1], ids[0])  # pad: never read
        for chunk in alphas.split(batch_size):
            scaled = (chunk[:, None] * activation).requires_grad_(True)  # (chunk, d_in)

            def replace(x: torch.Tensor, scaled: torch.Tensor = scaled) -> torch.Tensor:
                x = x.clone()  # (chunk, 1, d_in): the last token only
                x[:, -1] = scaled.to(x.dtype)
                return x

            copies = prompt.subset([0] * len(chunk))  # the prefix's cache, once per copy
            with Trace(model, path, edit_input=replace):
                logits = copies.logits([0])[:, 0]  # (chunk, vocab)
            prob = torch.softmax(logits.to(dtype), -1)[:, answer]  # (chunk,)
            (grad,) = torch.autograd.grad(prob.sum(), scaled)  # rows are independent
            grad_sum += grad.sum(0)
    return activation * grad_sum / steps
