"""Reading and changing module inputs and outputs, as context managers that always clean up.

Usage::

    with Trace(model, "model.layers.5.mlp.down_proj", retain_input=True) as tr:
        model(**batch)
    keys = tr.input                      # (batch, seq, d_mlp)

    with Trace(model, path, edit_output=lambda out: out + delta):
        logits = model(**batch).logits   # the module's output was changed

    with TraceDict(model, [p1, p2], retain_output=True, stop=True) as td:
        run_until_stopped(model, **batch)   # the forward pass ends after the last traced module

Hooks are removed in ``__exit__`` whatever happens inside the block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from kedit.model.arch import get_module

OutputEdit = Callable[[torch.Tensor], torch.Tensor]
InputEdit = Callable[[torch.Tensor], torch.Tensor]


class StopForward(Exception):
    """Raised by a hook with ``stop=True`` to end a forward pass early."""


def first_tensor(value: Any) -> torch.Tensor:
    """The hidden-state tensor of a module output or input, whether bare or in a tuple."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    raise TypeError(f"cannot find a tensor in a {type(value).__name__}")


def replace_first_tensor(value: Any, tensor: torch.Tensor) -> Any:
    """``value`` with its hidden-state tensor replaced (decoder layers return a tensor or a
    tuple depending on the transformers version)."""
    if isinstance(value, torch.Tensor):
        return tensor
    return (tensor, *value[1:]) if isinstance(value, tuple) else [tensor, *value[1:]]


class Trace:
    """Hook one module: keep its input and/or output, optionally rewrite them, optionally stop.

    Args:
        model: the root module.
        path: dotted path of the module to hook.
        retain_input: keep the module's first positional input as ``.input``.
        retain_output: keep the module's output hidden state as ``.output``.
        edit_input: function applied to the first input before the module runs.
        edit_output: function applied to the output hidden state.
        stop: raise :class:`StopForward` after the module runs (use :func:`run_until_stopped`).
        detach: detach retained tensors (default); keep the graph with ``detach=False``.
    """

    def __init__(
        self,
        model: nn.Module,
        path: str,
        retain_input: bool = False,
        retain_output: bool = False,
        edit_input: InputEdit | None = None,
        edit_output: OutputEdit | None = None,
        stop: bool = False,
        detach: bool = True,
    ) -> None:
        self.module = get_module(model, path)
        self.path = path
        self.input: torch.Tensor | None = None
        self.output: torch.Tensor | None = None
        self._retain_input, self._retain_output = retain_input, retain_output
        self._edit_input, self._edit_output = edit_input, edit_output
        self._stop, self._detach = stop, detach
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _keep(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach() if self._detach else tensor

    def _pre_hook(self, module: nn.Module, args: tuple) -> tuple | None:
        if not args:
            raise RuntimeError(f"{self.path} was called without positional input; cannot trace it")
        x = args[0]
        if self._edit_input is not None:
            x = self._edit_input(x)
            args = (x, *args[1:])
        if self._retain_input:
            self.input = self._keep(x)
        return args if self._edit_input is not None else None

    def _hook(self, module: nn.Module, args: tuple, output: Any) -> Any:
        result = None
        if self._edit_output is not None:
            hidden = self._edit_output(first_tensor(output))
            result = output = replace_first_tensor(output, hidden)
        if self._retain_output:
            self.output = self._keep(first_tensor(output))
        if self._stop:
            raise StopForward(self.path)
        return result

    def __enter__(self) -> Trace:
        if self._retain_input or self._edit_input is not None:
            self._handles.append(self.module.register_forward_pre_hook(self._pre_hook))
        self._handles.append(self.module.register_forward_hook(self._hook))
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class TraceDict(dict):
    """Several :class:`Trace` s at once, keyed by path. With ``stop=True`` the pass stops after
    the last of them in call order (the deepest layer)."""

    def __init__(
        self,
        model: nn.Module,
        paths: Iterable[str],
        retain_input: bool = False,
        retain_output: bool = False,
        edit_output: Callable[[torch.Tensor, str], torch.Tensor] | None = None,
        stop: bool = False,
        detach: bool = True,
    ) -> None:
        super().__init__()
        paths = list(dict.fromkeys(paths))
        order = {name: i for i, (name, _) in enumerate(model.named_modules())}
        missing = [p for p in paths if p not in order]
        if missing:
            get_module(model, missing[0])  # raises a helpful error
        last = max(paths, key=order.__getitem__) if paths else None
        for path in paths:
            edit = (lambda out, p=path: edit_output(out, p)) if edit_output else None
            self[path] = Trace(
                model,
                path,
                retain_input,
                retain_output,
                edit_output=edit,
                stop=stop and path == last,
                detach=detach,
            )

    def __enter__(self) -> TraceDict:
        entered = []
        try:
            for trace in self.values():
                trace.__enter__()
                entered.append(trace)
        except BaseException:
            for trace in entered:
                trace.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for trace in self.values():
            trace.close()


def run_until_stopped(model: nn.Module, **inputs: Any) -> Any:
    """Run ``model(**inputs)``, treating :class:`StopForward` as a normal early end."""
    try:
        return model(**inputs)
    except StopForward:
        return None


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Temporarily put ``model`` in eval mode (no dropout), restoring its mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Eval mode with ``requires_grad=False`` on every parameter, for optimising activations or
    a few chosen parameters without computing other weight gradients; each flag and the mode
    are restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        with eval_mode(model):
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def hook_count(model: nn.Module) -> int:
    """Number of forward / pre-forward / backward hooks on ``model`` and its submodules."""
    total = 0
    for module in model.modules():
        total += len(module._forward_hooks) + len(module._forward_pre_hooks)
        total += len(module._backward_hooks) + len(getattr(module, "_backward_pre_hooks", {}))
    return total
