"""MELO's vector database of edit keys: clusters (centre, radius, label, points), each point
pointing at the LoRA block trained for its edit batch.

Per key (``BruthYU/MELO`` ``peft_egg/src/peft/tuners/melo.py`` ``VecDB``): a key farther than
``radius + init_radius`` from the nearest centre starts a cluster; one with the same label joins
it (centre: the points' mean, radius: their largest distance to it, at least ``init_radius``);
one with another label (a conflict) starts a cluster of radius ``d/2 + 1e-5`` and shrinks the old
one to ``d/2 - 1e-5``, which forgets its points outside. Search: the nearest centre within its
radius, then its nearest point's block; else :data:`NO_BLOCK`. A tie goes to the newest cluster
(the reference takes the oldest, so a conflicting re-edit of one input routes nowhere).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch

NO_BLOCK = -1  # the reference's NO_LORA
EXACT = "donot_use_mm_for_euclid_dist"  # the reference's cdist mode


@dataclass
class Cluster:
    centre: torch.Tensor  # (d,)
    radius: float
    label: str
    keys: torch.Tensor  # (points, d)
    blocks: list[int]  # the block of each point


def _dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances ``(len(a), len(b))``, without the matmul shortcut's rounding."""
    return torch.cdist(a.float(), b.to(a.device).float(), compute_mode=EXACT)


class VecDB:
    """Clusters of edit keys (on CPU), each point pointing at a LoRA block."""

    def __init__(self, init_radius: float) -> None:
        self.init_radius = init_radius
        self.clusters: list[Cluster] = []
        self.conflicts = self.forgotten = 0

    def copy(self) -> VecDB:
        """A copy to restore later (tensors are replaced, never changed in place)."""
        db = copy.copy(self)
        db.clusters = [replace(c, blocks=list(c.blocks)) for c in self.clusters]
        return db

    def search(self, queries: torch.Tensor) -> torch.Tensor:
        """The block of each query ``(batch, d)``, or NO_BLOCK: ``(batch,)`` long on CPU."""
        blocks = torch.full((len(queries),), NO_BLOCK, dtype=torch.long)
        if not self.clusters:
            return blocks
        dist, nearest = self._nearest(queries)
        for row, (d, i) in enumerate(zip(dist.tolist(), nearest.tolist())):
            if d <= self.clusters[i].radius:
                point = _dist(queries[row : row + 1], self.clusters[i].keys).argmin()
                blocks[row] = self.clusters[i].blocks[int(point)]
        return blocks

    def add(self, key: torch.Tensor, label: str, block: int) -> None:
        """Update with one edit key (the rules in the module docstring)."""
        key = key.detach().float().cpu()
        if not self.clusters:
            return self._new(key, label, block)
        d, i = self._nearest(key[None])
        d, cluster = float(d[0]), self.clusters[int(i[0])]
        if d > cluster.radius + self.init_radius:
            self._new(key, label, block)
        elif label == cluster.label:
            cluster.keys = torch.cat([cluster.keys, key[None]])
            cluster.blocks = [*cluster.blocks, block]
            cluster.centre = cluster.keys.mean(0)
            spread = float(_dist(cluster.keys, cluster.centre[None]).max())
            cluster.radius = max(spread, self.init_radius)
        else:  # a conflict: split the radii, forget the old cluster's points outside its own
            self._new(key, label, block, radius=d / 2 + 1e-5)
            cluster.radius = d / 2 - 1e-5
            inside = _dist(cluster.keys, cluster.centre[None])[:, 0] <= cluster.radius
            self.conflicts += 1
            self.forgotten += int((~inside).sum())
            cluster.blocks = [b for b, keep in zip(cluster.blocks, inside.tolist()) if keep]
            cluster.keys = cluster.keys[inside]
            if not cluster.blocks:  # the reference keeps the centre, pointing at no block
                cluster.keys, cluster.blocks = cluster.centre[None], [NO_BLOCK]

    def _nearest(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Distance to, and index of, each query's nearest centre (the newest on a tie)."""
        dist = _dist(queries, torch.stack([c.centre for c in self.clusters])).flip(-1)
        index = dist.argmin(-1)  # (batch,), newest first
        return dist.gather(-1, index[:, None])[:, 0], len(self.clusters) - 1 - index

    def _new(self, key: torch.Tensor, label: str, block: int, radius: float = 0.0) -> None:
        self.clusters.append(Cluster(key, radius or self.init_radius, label, key[None], [block]))
