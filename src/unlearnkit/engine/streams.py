"""Per-model minibatch streams.

Model i's batch order depends only on (its seed, the epoch, the stream's tag), never on which other
models train beside it or on where a run was interrupted: a resumed run sees the same batches, and a
model trained alone equals the same model trained inside an ensemble.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch


def derived_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (NumPy's SeedSequence mixes them well)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


class EpochStream:
    """Shuffled minibatches over one index set per model, epoch after epoch, without end.

    `indices` is (n,) when every model sees the same set, or (N, n) when each has its own (e.g. the
    random subsets that datamodels are fitted on). Each yielded batch is an (N, b) index tensor; the
    last batch of an epoch may be smaller (all models share n, so all share b).
    """

    def __init__(self, indices: torch.Tensor, seeds: list[int], batch_size: int, tag: int = 0):
        indices = torch.as_tensor(indices, dtype=torch.long)
        if indices.dim() == 1:
            indices = indices.expand(len(seeds), -1)
        if indices.shape[0] != len(seeds):
            raise ValueError(f"{indices.shape[0]} index rows for {len(seeds)} models")
        if indices.shape[1] == 0:
            raise ValueError("a stream needs at least one example")
        self.indices, self.seeds, self.tag = indices, list(seeds), tag
        self.batch_size = min(batch_size, indices.shape[1])

    def subset(self, models: list[int]) -> EpochStream:
        """The stream of some of the models: each one's batches are the same as in the whole stream."""
        return EpochStream(self.indices[models], [self.seeds[i] for i in models], self.batch_size, self.tag)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.indices.shape[1] / self.batch_size)

    def steps(self, epochs: float) -> int:
        return max(1, round(epochs * self.steps_per_epoch))

    def epoch_order(self, epoch: int) -> torch.Tensor:
        n = self.indices.shape[1]
        perms = [torch.randperm(n, generator=torch.Generator().manual_seed(derived_seed(s, epoch, self.tag)))
                 for s in self.seeds]
        return torch.gather(self.indices, 1, torch.stack(perms))

    def batches(self, start_epoch: int = 0) -> Iterator[torch.Tensor]:
        epoch = start_epoch
        while True:
            order = self.epoch_order(epoch)
            for start in range(0, order.shape[1], self.batch_size):
                yield order[:, start:start + self.batch_size]
            epoch += 1
