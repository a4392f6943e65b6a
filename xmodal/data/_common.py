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


def map_to_columns(dataset, function, features, num_proc: int | None, **kwargs):
    """`dataset.map` with `function` on batches, whose output columns (typed by `features`) replace all of the old
    ones. `kwargs` go to `map` as well (batch_size, with_indices, fn_kwargs, desc, new_fingerprint, ...)."""
    return dataset.map(
        function, batched=True, remove_columns=dataset.column_names, features=features, num_proc=num_proc, **kwargs
    )
