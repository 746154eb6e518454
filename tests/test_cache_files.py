"""Cache entries written by several processes or threads at once (bench workers, test workers):
each writer has its own temporary file and moves it into place whole."""

from __future__ import annotations

import threading

import torch
from safetensors.torch import load_file

from kedit.env import private_tmp
from kedit.methods._stats import _save


def test_temporary_names_are_private_and_beside_the_entry(tmp_path):
    entry = tmp_path / "stats" / "layer.safetensors"
    names = {private_tmp(entry) for _ in range(100)}
    assert len(names) == 100
    assert all(n.parent == entry.parent and n.name.startswith(".layer.safetensors.") for n in names)


def test_many_writers_of_one_entry_all_succeed_and_leave_a_whole_file(tmp_path):
    """With one shared temporary name a writer could rename away another's half-written file,
    or find its own gone (FileNotFoundError); with private names every write lands whole."""
    entry = tmp_path / "stats" / "model.layers.5.mlp.down_proj" / "wikitext_100_float32.safetensors"
    values = [torch.full((64, 64), float(i)) for i in range(8)]
    errors: list[BaseException] = []

    def write(value: torch.Tensor) -> None:
        try:
            for _ in range(20):
                _save(entry, value, {"corpus": "wikitext"})
        except BaseException as err:  # collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(v,)) for v in values]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    mom2 = load_file(str(entry))["mom2"]
    assert any(torch.equal(mom2, v) for v in values)  # one writer's whole tensor
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]  # no temporary left
