"""Model inputs computed once per dataset and cached by `datasets` (fingerprinted on what they depend on)."""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from collections.abc import Callable

import numpy as np
import pyarrow.compute as pc
import torch
from datasets import Array2D, Dataset, Features, Sequence, Value, concatenate_datasets
from datasets.fingerprint import Hasher

from ._common import map_to_columns

__all__ = ["add_fashionbert_inputs", "fashionbert_input_encoder", "map_in_shards", "patch_encoder_fingerprint", "truncated_caption_rows"]

logger = logging.getLogger(__name__)

_KEPT_COLUMNS = ("text", "product_id", "subcategory", "category")


def patch_encoder_fingerprint(model) -> str:
    """
    A hash of everything that determines a FashionBERT model's patch features: the image/patch fields of its
    config and the frozen encoder's weights. A changed encoder, grid or image size gives a new fingerprint, so
    `datasets` recomputes the cached features instead of reusing stale ones.
    """
    config = model.config
    fields = {
        name: getattr(config, name)
        for name in ("image_size", "patch_grid", "patch_encoder_type", "patch_feature_mode", "patch_crop_size")
    }
    if config.patch_encoder_config is not None:
        fields["patch_encoder_config"] = config.patch_encoder_config.to_dict()
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.patch_encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def add_fashionbert_inputs(
    dataset: Dataset,
    processor,
    model,
    max_text_length: int,
    batch_size: int = 32,
    num_proc: int | None = None,
    desc: str = "Tokenising captions and encoding patches",
    num_shards: int = 1,
    shard_index: int = 0,
    wait_for_everyone: Callable[[], None] | None = None,
) -> Dataset:
    """
    Adds `input_ids` (the caption as `[CLS] text [SEP]` WordPiece ids, truncated to `max_text_length`; how many
    captions were truncated, and which, is logged as a warning, see `truncated_caption_rows`) and
    `patch_features` (num_patches, patch_feature_dim) float32, computed once per image by the model's frozen
    patch encoder, to rows with `image` and `text`. Keeps `text`, `product_id`, `subcategory` (and `category`);
    drops the image and the other columns.

    Args:
        dataset: fashion rows (see `xmodal.data.load_fashion_dataset` / `make_fashion_dataset`).
        processor: a `FashionBertProcessor` (its image processor must match the model's `image_size`).
        model: a `FashionBertModel` (or a head model; its `base_model` is used) whose patch encoder makes the features.
        max_text_length: longest caption in tokens, `[CLS]` and `[SEP]` included.
        batch_size: images encoded at a time.
        num_proc: processes for `datasets.map` (the encoder is copied into each).
        num_shards, shard_index, wait_for_everyone: data-parallel extraction (see `map_in_shards`): this process
            encodes shard `shard_index` of `num_shards`, `wait_for_everyone()` is the barrier, and every process returns
            the whole dataset, read back from the `datasets` cache. The rows are the same as with one process.
    """
    base = model.base_model
    kept = [name for name in _KEPT_COLUMNS if name in dataset.column_names]
    encode = fashionbert_input_encoder(processor, model, max_text_length, kept)
    features = Features(
        {
            **{name: dataset.features[name] for name in kept},
            "input_ids": Sequence(Value("int32")),
            "patch_features": Array2D(shape=(base.config.num_patches, base.config.patch_feature_dim), dtype="float32"),
        }
    )
    fingerprint = Hasher.hash(
        [
            dataset._fingerprint,
            patch_encoder_fingerprint(base),
            processor.image_processor.to_dict(),
            processor.tokenizer.get_vocab() if hasattr(processor.tokenizer, "get_vocab") else processor.tokenizer.name_or_path,
            max_text_length,
        ]
    )

    def map_rows(rows: Dataset, rows_fingerprint: str, rows_desc: str) -> Dataset:
        return map_to_columns(rows, encode, features, num_proc, batch_size=batch_size, new_fingerprint=rows_fingerprint, desc=rows_desc)

    encoded = map_in_shards(dataset, map_rows, fingerprint, desc, num_shards, shard_index, wait_for_everyone)
    truncated = truncated_caption_rows(encoded, processor.tokenizer, max_text_length)
    if truncated:  # also when the features came from the cache
        shown = ", ".join(str(row) for row in truncated[:10])
        logger.warning(
            "%d of %d captions are longer than max_text_length=%d tokens ([CLS] and [SEP] included) and were "
            "truncated (rows %s%s); raise max_text_length to keep them whole.",
            len(truncated), len(encoded), max_text_length, shown, ", ..." if len(truncated) > 10 else "",
        )
    return encoded


def fashionbert_input_encoder(
    processor, model, max_text_length: int, kept: tuple[str, ...] | list[str] = _KEPT_COLUMNS
) -> Callable[[dict], dict]:
    """
    The batch function behind `add_fashionbert_inputs` (also run on streamed batches): `{image: [PIL images], text,
    ...}` -> `{kept columns, input_ids, patch_features}`, the patch features from `model`'s frozen patch encoder on its
    device. Refuses a processor whose image size is not the model's.
    """
    base = model.base_model
    image_size = processor.image_processor.image_size
    if image_size != base.config.image_size:
        raise ValueError(
            f"the processor resizes images to {image_size} but the model expects image_size={base.config.image_size}"
        )
    parent = os.getpid()

    def encode(batch: dict) -> dict:
        if os.getpid() != parent:
            # A forked worker (`datasets` or DataLoader) inherits torch's OpenMP pool from a parent that has used it;
            # entering a parallel region there hangs for good. One thread per worker runs torch's ops inline.
            torch.set_num_threads(1)
        tokens = processor.tokenizer(batch["text"], truncation=True, max_length=max_text_length)
        pixel_values = processor.image_processor(batch["image"], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            patches = base.get_patch_features(pixel_values.to(base.device, base.dtype))
        return {
            **{name: batch[name] for name in kept if name in batch},
            "input_ids": tokens["input_ids"],
            "patch_features": patches.float().cpu().numpy().astype(np.float32),
        }

    return encode


def map_in_shards(
    dataset: Dataset,
    map_rows: Callable[[Dataset, str, str], Dataset],
    fingerprint: str,
    desc: str,
    num_shards: int = 1,
    shard_index: int = 0,
    wait_for_everyone: Callable[[], None] | None = None,
) -> Dataset:
    """
    `map_rows(dataset, fingerprint, desc)` (a cached `datasets.map`) computed by `num_shards` processes at once: this
    one maps the contiguous shard `shard_index` under the fingerprint `hash(fingerprint, num_shards, index)`, waits
    for the others (`wait_for_everyone`), then maps every shard, which reads each one back from the cache file its
    process wrote, and concatenates them in order: the same rows as `map_rows(dataset, fingerprint, desc)`.

    Why: under `accelerate launch`, one process computing everything while the others wait leaves all but one device
    idle through the most expensive step (the paper's crop mode: 64 ResNet passes per image). A dataset without
    cache files (built in memory, like the synthetic test beds) cannot share shards through the cache: every process
    maps it whole, as with one process. A shard missing from this process's cache (several machines without a shared
    `datasets` cache) is computed here, with a warning.
    """
    if num_shards == 1 or not dataset.cache_files:
        return map_rows(dataset, fingerprint, desc)
    if wait_for_everyone is None:
        raise ValueError("map_in_shards: several shards need wait_for_everyone (the processes' barrier)")
    shards = [dataset.shard(num_shards, index, contiguous=True) for index in range(num_shards)]
    fingerprints = [Hasher.hash([fingerprint, num_shards, index]) for index in range(num_shards)]
    map_rows(shards[shard_index], fingerprints[shard_index], f"{desc} (shard {shard_index + 1}/{num_shards})")
    wait_for_everyone()  # every shard is in the cache now
    cache_folder = os.path.dirname(dataset.cache_files[0]["filename"])
    parts = []
    for index, (shard, shard_fingerprint) in enumerate(zip(shards, fingerprints)):
        if not glob.glob(os.path.join(cache_folder, f"cache-{shard_fingerprint}*.arrow")):
            logger.warning(
                "shard %d/%d, written by process %d, is not in this process's datasets cache (%s): computing it here. "
                "With several machines, put the datasets cache (HF_DATASETS_CACHE) on a file system they share.",
                index + 1, num_shards, index, cache_folder,
            )  # fmt: skip
        parts.append(map_rows(shard, shard_fingerprint, f"{desc} (shard {index + 1}/{num_shards})"))
    return concatenate_datasets(parts)


def truncated_caption_rows(dataset: Dataset, tokenizer, max_text_length: int) -> list[int]:
    """
    Rows of an `add_fashionbert_inputs` dataset whose caption (`text`) did not fit into `max_text_length` tokens.
    Only rows whose `input_ids` fill the budget are tokenised again, untruncated, to tell a caption that fits
    exactly from one that was cut.
    """
    lengths = pc.list_value_length(dataset.with_format("arrow")["input_ids"]).to_numpy(zero_copy_only=False)
    candidates = np.flatnonzero(lengths >= max_text_length).tolist()
    if not candidates:
        return []
    texts = dataset.select(candidates)["text"]
    full = tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]
    return [row for row, ids in zip(candidates, full) if len(ids) > max_text_length]
