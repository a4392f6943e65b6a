# Copyright 2025 The xmodal authors. Licensed under the Apache License, Version 2.0.
"""What the dataset readers and preprocessing of `xmodal.data` share."""

from __future__ import annotations


def split_files(train_file: str | None, validation_file: str | None, test_file: str | None) -> dict[str, str]:
    """The local files given per split, `{split: path}` in train/validation/test order; a ValueError when none is."""
    files = {"train": train_file, "validation": validation_file, "test": test_file}
    given = {split: path for split, path in files.items() if path is not None}
    if not given:
        raise ValueError("pass dataset_name, or at least one of train_file / validation_file / test_file")
    return given


# `Dataset.map` options that a streamed `IterableDataset.map` does not take (it computes rows as they are read).
_MAP_STYLE_ONLY = ("num_proc", "desc", "new_fingerprint", "load_from_cache_file", "cache_file_name")


def map_rows(dataset, function, **kwargs):
    """`dataset.map(function, **kwargs)` for a `Dataset` or a streamed `IterableDataset` (whose map ignores the
    options of a cached map: workers, progress bar, fingerprint)."""
    import datasets

    if isinstance(dataset, datasets.IterableDataset):
        kwargs = {name: value for name, value in kwargs.items() if name not in _MAP_STYLE_ONLY}
    return dataset.map(function, **kwargs)


def map_to_columns(dataset, function, features, num_proc: int | None, **kwargs):
    """`dataset.map` with `function` on batches, whose output columns (typed by `features`) replace all of the old
    ones. `kwargs` go to `map` as well (batch_size, with_indices, fn_kwargs, desc, new_fingerprint, ...)."""
    return map_rows(
        dataset, function, batched=True, remove_columns=dataset.column_names, features=features, num_proc=num_proc, **kwargs
    )
