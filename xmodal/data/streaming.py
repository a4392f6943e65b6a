"""A training split read as a stream (`datasets.IterableDataset`, train.py's `--streaming`): split across processes,
shuffled through a buffer, positioned by the number of rows already trained on, turned into model inputs batch by
batch in the DataLoader's workers.

Why not `datasets`' own DataLoader integration: with several workers it gives each worker its own shards of the
stream, so the order of the batches depends on the number of workers and of shards, and a run cannot be resumed at
an exact row. Here every worker reads the same (cheap, undecoded) rows and encodes only its own batches, `w`, `w + W`,
...; the DataLoader takes one batch from each worker in turn, so batches come in stream order with any number of
workers, and resuming is skipping rows before anything is decoded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import datasets
import numpy as np
import torch
from datasets.distributed import split_dataset_by_node

__all__ = ["EncodedBatches", "TrainingStream"]


@dataclass
class TrainingStream:
    """
    One process's view of a streamed training split.

    Attributes:
        rows: the whole split (an `IterableDataset` whose image column, if any, is left undecoded).
        encode: a batch function `{column: [values]} -> {column: [values]}` giving the model's inputs (images decoded
            first); e.g. `xmodal.data.preprocessing.fashionbert_input_encoder`.
        num_shards, shard_index: the processes and this one (`split_dataset_by_node`: whole files when their number
            divides evenly, else every `num_shards`-th row).
        seed: the shuffle's seed; epoch `e` shuffles with `seed + e` (`IterableDataset.set_epoch`).
        buffer_size: rows in the shuffle buffer; None = stream order (no shuffle).
    """

    rows: datasets.IterableDataset
    encode: Callable[[dict], dict]
    num_shards: int = 1
    shard_index: int = 0
    seed: int = 0
    buffer_size: int | None = 1000

    def epoch_rows(self, epoch: int, skip: int = 0) -> datasets.IterableDataset:
        """This process's rows in epoch `epoch`, in training order, the first `skip` left out (not decoded)."""
        rows = self.rows
        if self.num_shards > 1:
            rows = split_dataset_by_node(rows, rank=self.shard_index, world_size=self.num_shards)
        if self.buffer_size:
            rows = rows.shuffle(seed=self.seed, buffer_size=self.buffer_size)
        if skip:
            rows = rows.skip(skip)
        rows.set_epoch(epoch)  # on the last dataset of the chain: its epoch seeds the shuffle
        return rows

    def rows_per_epoch(self) -> int:
        """How many rows this process reads in an epoch (one pass over one text column, nothing decoded)."""
        column = next(name for name, feature in self.rows.features.items() if not isinstance(feature, datasets.Image))
        return sum(len(batch[column]) for batch in self.epoch_rows(0).select_columns([column]).iter(batch_size=1000))

    def batches(self, epoch: int, batch_size: int, skip: int = 0, drop_last: bool = True) -> "EncodedBatches":
        """Epoch `epoch`'s encoded batches of `batch_size` rows, after the first `skip` rows (see `EncodedBatches`)."""
        return EncodedBatches(self.epoch_rows(epoch, skip), self.encode, batch_size, drop_last)


class EncodedBatches(torch.utils.data.IterableDataset):
    """
    Batches of `batch_size` rows of `rows`, each turned into model inputs by `encode` and returned as a list of rows
    (numpy arrays, as a map-style dataset's `with_format("numpy")` rows). In DataLoader worker `w` of `W` (use
    `batch_size=None`), every batch is read but only batches `w, w + W, ...` are decoded and encoded.
    """

    def __init__(self, rows: datasets.IterableDataset, encode: Callable[[dict], dict], batch_size: int, drop_last: bool = True):
        self.rows, self.encode, self.batch_size, self.drop_last = rows, encode, batch_size, drop_last

    def __iter__(self) -> Iterator[list[dict]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # `iter` reads the whole stream here: unlike `for row in rows`, it does not split it between the workers.
        for index, batch in enumerate(self.rows.iter(batch_size=self.batch_size, drop_last_batch=self.drop_last)):
            if index % workers == worker:
                yield as_rows(self.encode(decoded_images(batch, self.rows.features)))


def decoded_images(batch: dict, features: datasets.Features) -> dict:
    """`batch` with its undecoded image columns (`{"bytes", "path"}`) decoded to PIL images."""
    return {
        name: [datasets.Image().decode_example(value) for value in values] if isinstance(features.get(name), datasets.Image) else values
        for name, values in batch.items()
    }


def as_rows(columns: dict) -> list[dict]:
    """Columns -> rows; lists of ids become numpy arrays (int64, as a cached dataset's `with_format("numpy")` rows)."""
    names = list(columns)
    rows = []
    for values in zip(*(columns[name] for name in names)):
        rows.append({name: _as_array(value) for name, value in zip(names, values)})
    return rows


def _as_array(value):
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, list) and value and isinstance(value[0], (int, np.integer)):
        return np.asarray(value, dtype=np.int64)
    return value
