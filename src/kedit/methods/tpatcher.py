"""T-Patcher: one mistake, one neuron, in the last feed-forward layer.

Huang, Shen, Zhang, Zhou, Rong, Xiong. "Transformer-Patcher: One Mistake Worth One Neuron",
ICLR 2023. https://arxiv.org/abs/2301.09785 (code: ZeroYuHuang/Transformer-Patcher)

Per edit (``scripts/T-patch.py`` ``editing``, ``src/models/patch.py``):

1. Teacher-force prompt + target. Each position that predicts a target token other than its
   argmax is a mistake; keep the first ``max_add_neuron_num``. None: no neuron is added.
2. Add one neuron per mistake to a patch around the FFN of block ``layer`` (the last):
   ``out = ffn(x) + act(x K^T + b) V``, key ``h / |h|^2`` and bias 0, ``h`` the FFN's input at
   the mistaken position, so the neuron's first pre-activation there is 1.
3. Train the new neurons only (Adam) on ``L_edit + alc L_act + mlc L_mem``: the label-smoothed
   NLL of the target; the top-k mean of ``exp(act_margin - a_edit)`` (each neuron at its own
   position); the top-k means of ``exp(a_mem - a_edit + margin1)`` and
   ``exp(a_mem - margin2)`` over a memory of FFN inputs from unrelated text.
4. From ``start_check_step``, every ``check_every`` steps: once greedy decoding gives the
   target, record the memory loss; stop when it no longer improves by ``early_threshold``
   (``early_stop_editing``). The neurons are frozen into the patch and the edit's FFN inputs
   join the memory, so that later patches stay silent on them.

Sequential edits extend one patch (the FFN's weights are never rewritten); a batch gives each
request its own neurons, trained jointly. After the last block, the steps run the final norm
and unembedding alone once step 0 shows they give the full pass's logits (``_head``). ``fired``:
a neuron's pre-activation is above 0 at the row's last position. Where: BART-base's last decoder
FFN (``decoder.layers.5.fc1/fc2``) in the reference; ``depth`` 1.0, the last block, here.

Deliberate differences from the reference code:

* ReLU patch activation. The reference's neurons go through BART's GELU, nearly zero below -3
  (the memory margin) but not zero; a Llama MLP's SiLU is -0.14 at -3. With ReLU the patch
  adds exactly nothing where every pre-activation is at most 0, which ``fired`` reports.
* The value is ``v * a``, ``v ~ N(0, 1)`` (seeded; ``value_init="zero"``: zeros) and ``a``
  starting at ``amplify_con``, both trained (the reference's ``amplify_v``).
* No dropout and no ``example_repeat=8`` copies: training runs in eval mode (``frozen``).
* The early-stop check reads the training pass's teacher-forced argmax (the same as greedy
  generation of the target) and the training memory (the reference holds out a validation
  memory).
* Memory: FFN inputs at every token of seeded ``env.stats_corpus`` documents (64 tokens at
  most each), ``memory_size`` of them (default 4,000 to keep CPU runs short; the reference
  takes 40,000 decoder states of its training set), computed once on the unedited model. An
  edit adds its FFN inputs at the positions that predict its target (the reference: its
  decoder positions but the first and last).
* Label smoothing is ``F.cross_entropy``'s, ``eps / V`` (the reference's ``eps / (V - 1)``).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from kedit.config import MethodConfig
from kedit.corpus import Corpus, load_corpus
from kedit.methods._head import HeadPass
from kedit.methods._routing import RoutedLM
from kedit.methods.base import EditMethod
from kedit.methods.edit import Edit
from kedit.model.arch import arch_of, get_module, num_layers
from kedit.model.hooks import Trace, frozen, run_until_stopped
from kedit.model.lm import hf_module, model_device
from kedit.model.tokens import Batch, PromptTarget, encode, encode_prompt_target, pad, pad_id
from kedit.types import EditRequest

log = logging.getLogger(__name__)

_DOC_TOKENS = 64  # tokens read from each memory document
_LR_DECAY, _LR_PATIENCE, _LR_THRESHOLD = 0.5, 1, 0.05  # the reference's ReduceLROnPlateau


@dataclass(kw_only=True)
class TPatcherConfig(MethodConfig):
    """T-Patcher hyperparameters (defaults: the reference's zsRE run, ``src/utils.py`` and
    ``scripts/T-patch.py``).

    Args:
        layer: block whose FFN is patched; None: ``round(depth * (layers - 1))``.
        depth: the patched block as a fraction of the depth; 1.0: the last (the reference's).
        max_add_neuron_num: most neurons one request adds (its first mistaken positions).
        lr, weight_decay: Adam's, for the new neurons.
        max_steps: most training steps per edit (``max_edit_step``).
        start_check_step: first step of the early-stop check (``start_val_epoch``).
        check_every: steps between checks and learning-rate plateau steps (``check_val_...``).
        early_threshold: least improvement of the memory loss that keeps training.
        grad_clip: gradient norm clip (the reference Trainer's ``gradient_clip_val``).
        label_smoothing: of the edit loss (BART's ``eps``).
        alc, mlc: weights of the activation and memory losses (zsRE; src/utils.py has mlc 5).
        act_margin: the edit activation the activation loss pushes above.
        margin1: least gap between the edit's activation and the memory's (non-negative).
        margin2: the memory activation the memory loss pushes below (non-positive).
        act_top_k, memory_top_k: top-k of the activation loss and of each memory-loss term.
        memory_size: FFN inputs of unrelated text in the memory (the reference: 40,000).
        update_memory: add each edit's FFN inputs to the memory of later edits.
        amplify_con: initial value of the trained factor ``a`` of the value ``v * a``.
        value_init: ``random`` (``v ~ N(0, 1)``, the reference) or ``zero``.
    """

    layer: int | None = None
    depth: float = 1.0
    max_add_neuron_num: int = 5
    lr: float = 1e-2
    weight_decay: float = 0.01
    max_steps: int = 2000
    start_check_step: int = 100
    check_every: int = 25
    early_threshold: float = 1e-3
    grad_clip: float = 5.0
    label_smoothing: float = 0.1
    alc: float = 1.0
    mlc: float = 10.0
    act_margin: float = 0.0
    margin1: float = 3.0
    margin2: float = -3.0
    act_top_k: int = 5
    memory_top_k: int = 1000
    memory_size: int = 4000
    update_memory: bool = True
    amplify_con: float = 10.0
    value_init: Literal["random", "zero"] = "random"

    def validate(self) -> None:
        counts = ("max_add_neuron_num", "max_steps", "check_every", "act_top_k", "memory_top_k")
        if any(getattr(self, name) < 1 for name in (*counts, "memory_size")):
            raise ValueError(f"{', '.join(counts)} and memory_size must be at least 1")
        if self.lr <= 0 or self.grad_clip <= 0 or self.amplify_con <= 0:
            raise ValueError("lr, grad_clip and amplify_con must be positive")
        if min(self.weight_decay, self.alc, self.mlc, self.early_threshold) < 0:
            raise ValueError("weight_decay, alc, mlc and early_threshold must be non-negative")
        if self.start_check_step < 0 or not 0 <= self.label_smoothing < 1:
            raise ValueError("start_check_step must be >= 0 and label_smoothing in [0, 1)")
        if self.margin1 < 0 or self.margin2 > 0:
            raise ValueError("margin1 must be non-negative and margin2 non-positive (3, -3)")
        if not 0 <= self.depth <= 1:
            raise ValueError(f"depth is a fraction of the depth in [0, 1], got {self.depth}")

    def block(self, model: nn.Module) -> int:
        """The patched block of ``model``: ``layer``, or the block at ``depth``."""
        if self.layer is not None:
            return self.layer
        return round(self.depth * (num_layers(model) - 1))


class NeuronPatch(nn.Module):
    """An FFN with neurons added, ``ffn(x) + relu(x K^T + b) V``; the ``trained`` ones too."""

    def __init__(self, ffn: nn.Module, d_model: int) -> None:
        super().__init__()
        self.ffn = ffn
        device = next(ffn.parameters()).device
        self.register_buffer("keys", torch.zeros(0, d_model, device=device))  # (n, d)
        self.register_buffer("bias", torch.zeros(0, device=device))  # (n,)
        self.register_buffer("values", torch.zeros(0, d_model, device=device))  # (n, d)
        #: (keys, bias, v, a) of the neurons being trained, their value ``v * a``
        self.trained: tuple[torch.Tensor, ...] | None = None
        #: whether any neuron fired at each row's last position (see ``methods._routing``)
        self.fired: torch.Tensor | None = None

    def neurons(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keys ``(n, d)``, biases ``(n,)`` and values ``(n, d)`` of every neuron."""
        if self.trained is None:
            return self.keys, self.bias, self.values
        keys, bias, v, a = self.trained
        old = (self.keys, self.bias, self.values)
        return tuple(torch.cat([o, t]) for o, t in zip(old, (keys, bias, v * a)))  # type: ignore

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.ffn(x, *args, **kwargs)  # (batch, seq, d)
        keys, bias, values = self.neurons()
        pre = x.float() @ keys.T + bias  # (batch, seq, n)
        self.fired = (pre[:, -1] > 0).any(-1).detach().cpu()  # (batch,)
        return out + (torch.relu(pre) @ values).to(out.dtype)

    def freeze(self) -> None:
        """Make the trained neurons part of the patch."""
        self.keys, self.bias, self.values = (t.detach().clone() for t in self.neurons())
        self.trained = None

    def get_state(self) -> tuple[torch.Tensor, ...]:
        return self.keys.clone(), self.bias.clone(), self.values.clone()

    def set_state(self, state: tuple[torch.Tensor, ...]) -> None:
        self.keys, self.bias, self.values = (t.clone() for t in state)
        self.trained = None


class EditedInputs:
    """FFN inputs of the edits so far, added to the memory of later edits (session state)."""

    def __init__(self) -> None:
        self.rows: list[torch.Tensor] = []  # each (positions, d)

    def get_state(self) -> int:
        return len(self.rows)

    def set_state(self, state: int) -> None:
        del self.rows[state:]


class TPatcher(EditMethod):
    """Neurons added to the last FFN, one per mistaken target token."""

    name = "t-patcher"
    display_name = "T-Patcher"
    paper = "Huang et al. 2023"
    family = "added-parameters"
    config_cls = TPatcherConfig
    supports_batch = True

    def apply(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        requests: list[EditRequest],
        edit: Edit,
    ) -> None:
        model = hf_module(model)
        arch = arch_of(model)
        path = arch.path("mlp", arch.check_layer(model, self.config.block(model)))
        pairs = [encode_prompt_target(tok, r.text, r.target_new) for r in requests]
        batch = pad([p.ids for p in pairs], pad_id(tok), left=False).to(model_device(model))
        memory = self._memory(model, tok, path, edit)  # (M, d)
        labels = _labels(batch, pairs)  # (batch, seq)
        hidden, mistakes = self._mistakes(model, path, batch, labels)

        patch = get_module(model, path)
        if mistakes and not isinstance(patch, NeuronPatch):
            patch = NeuronPatch(patch, hidden.shape[-1])
            edit.swap_module(model, path, patch)
        if mistakes:
            edit.save_state(patch)
            edit.info.update(self._train(model, patch, batch, labels, hidden, mistakes, memory))
            self._remember(edit, path, hidden, pairs)
        else:
            edit.info["skipped"] = "the model already gives the target: no neuron added"
        parts = [patch] if isinstance(patch, NeuronPatch) else []
        total = sum(int(p.keys.shape[0]) for p in parts)
        edit.info.update(layer=path, neurons_added=len(mistakes), neurons=total)
        edit.wrap(RoutedLM(model, tok, parts))

    def _memory(
        self, model: nn.Module, tok: PreTrainedTokenizerBase, path: str, edit: Edit
    ) -> torch.Tensor:
        """FFN inputs of unrelated text (the unedited model's, cached) and of earlier edits."""
        size, seed = self.config.memory_size, self.env.seed
        corpus = load_corpus(self.env.stats_corpus, self.env.data_dir)
        key = ("t-patcher-memory", self.env.fingerprint(model), path, corpus.id, size, seed)
        with edit.unedited():  # what is cached under the unedited model's fingerprint
            base = self.env.memo(key, lambda: memory_states(model, tok, path, corpus, size, seed))
        earlier = edit.state.get(("t-patcher", path), EditedInputs()).rows
        return torch.cat([base, *(r.to(base.device) for r in earlier)])  # (M, d)

    @torch.no_grad()
    def _mistakes(
        self, model: nn.Module, path: str, batch: Batch, labels: torch.Tensor
    ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """The FFN inputs ``(batch, seq, d)`` and (row, position) of each mistaken target token,
        the first ``max_add_neuron_num`` of each row."""
        with Trace(model, path, retain_input=True) as trace:
            logits = model(**batch.model_inputs(), use_cache=False).logits  # (batch, seq, V)
        wrong = (logits.argmax(-1) != labels) & (labels != -100)  # (batch, seq)
        mistakes = []
        for row in range(wrong.shape[0]):
            found = [(row, int(p)) for p in wrong[row].nonzero()[:, 0]]
            mistakes += found[: self.config.max_add_neuron_num]
        return trace.input.float(), mistakes

    def _train(
        self,
        model: nn.Module,
        patch: NeuronPatch,
        batch: Batch,
        labels: torch.Tensor,
        hidden: torch.Tensor,
        mistakes: list[tuple[int, int]],
        memory: torch.Tensor,
    ) -> dict[str, Any]:
        """Adam on the new neurons for ``L_edit + alc L_act + mlc L_mem``, early-stopped as the
        reference does; the neurons are then frozen into the patch."""
        cfg = self.config
        h = torch.stack([hidden[row, col] for row, col in mistakes])  # (n, d)
        keys = (h / h.norm(dim=-1, keepdim=True) ** 2).requires_grad_()  # pre-activation 1
        bias = h.new_zeros(len(mistakes)).requires_grad_()
        v = torch.randn(h.shape, generator=torch.Generator().manual_seed(self.env.seed))
        v = (v if cfg.value_init == "random" else v * 0).to(h.device).requires_grad_()
        a = torch.full_like(h, cfg.amplify_con).requires_grad_()
        params = [keys, bias, v, a]
        optimiser = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        schedule = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimiser, factor=_LR_DECAY, patience=_LR_PATIENCE, threshold=_LR_THRESHOLD
        )
        history: list[float] = []
        head, fast = HeadPass(model, batch), False  # the blocks' outputs without new neurons
        with frozen(model):
            patch.trained = (keys, bias, v, a)
            for step in range(cfg.max_steps):
                added = torch.relu(hidden @ keys.T + bias) @ (v * a)  # (b, seq, d)
                if fast:  # only the final norm and unembedding see the neurons change
                    logits = head.logits(added)
                else:
                    logits = model(**batch.model_inputs(), use_cache=False).logits  # (b, seq, V)
                    fast = step == 0 and head.matches(added, logits)
                edit_loss, right = self._edit_loss(logits, labels)
                act = (h * keys).sum(-1) + bias  # (n,) each neuron at its own position
                act_loss = _top_mean(torch.exp(cfg.act_margin - act), cfg.act_top_k)
                memory_loss = self._memory_loss(memory @ keys.T + bias, act)  # memory: (M, n)
                if step % cfg.check_every == 0 and step > 0:
                    schedule.step(edit_loss.item())
                if right and step >= cfg.start_check_step and step % cfg.check_every == 0:
                    history.append(memory_loss.item())
                    if _stopped(history, cfg.early_threshold):
                        break
                optimiser.zero_grad()
                (edit_loss + cfg.alc * act_loss + cfg.mlc * memory_loss).backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimiser.step()
            patch.freeze()
        if not right:
            log.warning("T-Patcher: the target is not greedy after %d steps", step + 1)
        losses = {"edit_loss": edit_loss, "act_loss": act_loss, "memory_loss": memory_loss}
        info = {"steps": step + 1, "success": right, "head_pass": fast}
        return info | {k: t.item() for k, t in losses.items()}

    def _edit_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Label-smoothed NLL of the target tokens, and whether each is the argmax."""
        scored = labels != -100  # (batch, seq)
        loss = F.cross_entropy(
            logits[scored].float(), labels[scored], label_smoothing=self.config.label_smoothing
        )
        return loss, bool((logits[scored].argmax(-1) == labels[scored]).all())

    def _memory_loss(self, memory_act: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Keep the memory ``margin1`` below the edit's activation and below ``margin2``."""
        cfg = self.config
        below_edit = _top_mean(torch.exp(memory_act - act + cfg.margin1), cfg.memory_top_k)
        return below_edit + _top_mean(torch.exp(memory_act - cfg.margin2), cfg.memory_top_k)

    def _remember(
        self, edit: Edit, path: str, hidden: torch.Tensor, pairs: list[PromptTarget]
    ) -> None:
        """The edit's FFN inputs where it predicts its target join later edits' memory."""
        if not self.config.update_memory:
            return
        inputs = edit.state.setdefault(("t-patcher", path), EditedInputs())
        edit.save_state(inputs)
        for row, pair in enumerate(pairs):
            inputs.rows.append(hidden[row, pair.n_prompt - 1 : len(pair.ids) - 1].detach().clone())


def memory_states(
    model: nn.Module, tok: PreTrainedTokenizerBase, path: str, corpus: Corpus, size: int, seed: int
) -> torch.Tensor:
    """The inputs of the module at ``path`` at every token of seeded corpus documents (at most
    ``_DOC_TOKENS`` of each), ``(size, d)`` float32 (fewer if the corpus runs out)."""
    docs = list(corpus.documents)
    random.Random(seed).shuffle(docs)
    encoded: list[list[int]] = []
    for doc in docs:
        if sum(map(len, encoded)) >= size:
            break
        encoded.append(encode(tok, doc).ids[:_DOC_TOKENS])
    states = []
    with torch.no_grad():
        for start in range(0, len(encoded), 16):
            batch = pad(encoded[start : start + 16], pad_id(tok), False).to(model_device(model))
            with Trace(model, path, retain_input=True, stop=True) as trace:
                run_until_stopped(model, **batch.model_inputs(), use_cache=False)
            states.append(trace.input[batch.attention_mask.bool()].float())  # (tokens, d)
    return torch.cat(states)[:size]


def _labels(batch: Batch, pairs: list[PromptTarget]) -> torch.Tensor:
    """``(batch, seq)`` of a right-padded batch: at each position that predicts a target token,
    that token; elsewhere -100."""
    labels = torch.full_like(batch.input_ids, -100)
    for row, pair in enumerate(pairs):
        n = len(pair.ids)
        labels[row, pair.n_prompt - 1 : n - 1] = batch.input_ids[row, pair.n_prompt : n]
    return labels


def _top_mean(values: torch.Tensor, k: int) -> torch.Tensor:
    flat = values.reshape(-1)
    return flat.topk(min(k, flat.numel())).values.mean()


def _stopped(history: list[float], threshold: float) -> bool:
    """The reference's ``early_stop_editing`` (mode min, patience 1): the latest memory loss
    is no better than the best one by ``threshold``."""
    best = 0
    for step, value in enumerate(history):
        if value < history[best] - threshold:
            best = step
    return best < len(history) - 1
