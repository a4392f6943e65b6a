"""train.py's `--streaming` loader: endless collated batches of one process's `TrainingStream`, resumable at a row."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from accelerate.utils import send_to_device
from torch.utils.data import DataLoader

from ..data.streaming import TrainingStream

__all__ = ["StreamLoader"]


class StreamLoader:
    """
    Batches of `batch_size` rows of `stream`, epoch after epoch (each reshuffled), collated by `collate` in this
    process (its masks and negatives draw from the global RNG that checkpoints restore) and put on `device`. With
    `num_workers` DataLoader workers the rows are decoded and encoded there, batch `i` by worker `i % num_workers`.

    Resuming: `batches(samples_seen)` starts after the first `samples_seen` rows this process trained on (optimisation
    steps x batch size x accumulation), so a resumed run sees exactly the rows an uninterrupted one would. Past the
    first epoch this needs the epoch's length, counted once by reading this process's part of the stream (no
    decoding). The last incomplete batch of an epoch is dropped, as in the map-style path.
    """

    def __init__(self, stream: TrainingStream, collate: Callable[[list[dict]], dict], batch_size: int, num_workers: int = 0,
                 device: torch.device | str = "cpu"):  # fmt: skip
        self.stream, self.collate, self.batch_size, self.num_workers, self.device = stream, collate, batch_size, num_workers, device

    def position(self, samples_seen: int) -> tuple[int, int]:
        """(epoch, rows to skip in it) after `samples_seen` rows."""
        if samples_seen == 0:
            return 0, 0
        per_epoch = self.stream.rows_per_epoch() // self.batch_size * self.batch_size  # drop_last
        if per_epoch == 0:
            raise ValueError(self._too_short())
        return divmod(samples_seen, per_epoch)

    def batches(self, samples_seen: int = 0) -> Iterator[dict]:
        epoch, skip = self.position(samples_seen)
        while True:
            # Its own generator: a DataLoader draws its workers' base seed from the global RNG otherwise, at a point
            # that differs between a resumed run and an uninterrupted one (the masks would then differ).
            generator = torch.Generator().manual_seed(self.stream.seed + epoch)
            loader = DataLoader(self.stream.batches(epoch, self.batch_size, skip), batch_size=None, num_workers=self.num_workers, generator=generator)
            count = 0
            for rows in loader:
                count += 1
                yield send_to_device(self.collate(rows), self.device)
            if count == 0 and skip == 0:
                raise ValueError(self._too_short())
            epoch, skip = epoch + 1, 0

    def _too_short(self) -> str:
        return (f"--streaming: process {self.stream.shard_index} of {self.stream.num_shards} reads fewer rows than one "
                f"batch of --per_device_train_batch_size {self.batch_size}: lower the batch size or add rows")  # fmt: skip
