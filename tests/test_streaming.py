"""train.py's --streaming: the training split as a `datasets` stream, split across processes, shuffled through a seeded
buffer, encoded batch by batch (in DataLoader workers or not), resumed at the number of rows trained on."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from test_train import tiny_bert  # noqa: F401  (fixture)
from test_train_flags import write_catalogue
from xmodal import FashionBertConfig, FashionBertForPreTraining, FashionBertImageProcessor, FashionBertProcessor
from xmodal.data.fashion_sources import load_fashion_dataset, load_fashion_streams
from xmodal.data.preprocessing import add_fashionbert_inputs, fashionbert_input_encoder
from xmodal.data.streaming import TrainingStream
from xmodal.training import StreamLoader

import train

COLUMNS = {"image_column": "picture", "caption_column": "caption", "subcategory_column": "kind", "product_id_column": "sku"}
PRODUCTS = 22  # an epoch of 5 batches of 4, 2 rows dropped


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> Path:
    return write_catalogue(tmp_path_factory.mktemp("catalogue"), products=PRODUCTS)


@pytest.fixture(scope="module")
def encoder(tiny_bert):  # noqa: F811
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    config = FashionBertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=20, image_size=16, patch_grid=2, patch_encoder_type="pixels")  # fmt: skip
    processor = FashionBertProcessor(FashionBertImageProcessor(image_size=16, patch_grid=2), tokenizer, max_text_length=12)
    return FashionBertForPreTraining(config), processor


def stream(catalogue, encoder, **options) -> TrainingStream:
    model, processor = encoder
    rows = load_fashion_streams(train_file=str(catalogue), **COLUMNS)["train"]
    return TrainingStream(rows, fashionbert_input_encoder(processor, model, 12), **options)


def row_ids(batches) -> list[str]:
    return [row["product_id"] for batch in batches for row in batch]


def test_a_stream_yields_the_rows_of_the_map_style_path(catalogue, encoder):
    model, processor = encoder
    cached = add_fashionbert_inputs(load_fashion_dataset(train_file=str(catalogue), **COLUMNS)["train"], processor, model, 12)
    streamed = [row for batch in stream(catalogue, encoder, buffer_size=None).batches(0, 4, drop_last=False) for row in batch]
    assert len(streamed) == len(cached) == PRODUCTS
    for a, b in zip(streamed, cached.with_format("numpy")):
        assert set(a) == set(b)
        for name in a:
            assert np.array_equal(a[name], b[name]) and np.asarray(a[name]).dtype == np.asarray(b[name]).dtype, name


def test_the_shuffle_buffer_is_seeded_and_reshuffles_each_epoch(catalogue, encoder):
    shuffled = stream(catalogue, encoder, seed=3, buffer_size=8)
    first, again, second = (row_ids(shuffled.batches(epoch, 4, drop_last=False)) for epoch in (0, 0, 1))
    assert first == again and first != second
    assert sorted(first) == sorted(second) == sorted(f"id{i}" for i in range(PRODUCTS))


def test_processes_read_disjoint_parts_of_the_stream(catalogue, encoder):
    parts = [row_ids(stream(catalogue, encoder, num_shards=2, shard_index=i, buffer_size=8).batches(0, 1)) for i in (0, 1)]
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(f"id{i}" for i in range(PRODUCTS))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resuming_after_n_rows_continues_the_stream_exactly(catalogue, encoder, num_workers):
    """Positions inside the first epoch, at its end and in the second: the same batches as the uninterrupted run,
    whose epochs drop their last incomplete batch; with 2 workers the same batches as with none."""
    loader = lambda workers: StreamLoader(stream(catalogue, encoder, buffer_size=8), list, 4, workers)  # noqa: E731
    uninterrupted = [row_ids([batch]) for batch, _ in zip(loader(0).batches(), range(13))]
    assert uninterrupted[0] != uninterrupted[5]  # epoch 1 (batches 5-9) is another order
    for done in (3, 5, 7):
        resumed = [row_ids([batch]) for batch, _ in zip(loader(num_workers).batches(done * 4), range(13 - done))]
        assert resumed == uninterrupted[done:], done


def test_a_stream_shorter_than_one_batch_stops_with_one_line(catalogue, encoder):
    with pytest.raises(ValueError, match=r"--streaming: process 0 of 1 reads fewer rows than one batch of --per_device_train_batch_size 64"):
        next(StreamLoader(stream(catalogue, encoder), list, 64).batches())


def streaming_args(tiny_bert, catalogue, output_dir, *extra) -> list[str]:  # noqa: F811
    return ["--text_model_name_or_path", str(tiny_bert), "--patch_encoder_type", "pixels", "--image_size", "16", "--patch_grid", "2", "--max_text_length", "12",
            "--train_file", str(catalogue), "--validation_file", str(catalogue), *sum(([f"--{k}", v] for k, v in COLUMNS.items()), []),
            "--streaming", "--shuffle_buffer_size", "8", "--per_device_train_batch_size", "4", "--max_train_steps", "12",
            "--alignment_warmup_steps", "2", "--checkpointing_steps", "4", "--checkpoints_total_limit", "3", "--do_eval", "false",
            "--save_figures", "false", "--logging_steps", "1", "--output_dir", str(output_dir), *extra]  # fmt: skip


@pytest.mark.slow
def test_a_streamed_run_resumed_from_a_checkpoint_ends_bit_identical(tiny_bert, catalogue, tmp_path):  # noqa: F811
    """12 steps of 4 rows over epochs of 5 steps; resumed at step 8 (epoch 1, 3 batches in): the same weights and
    losses, to the bit (masks, negatives and the shuffle included). With 2 DataLoader workers: the same run again."""
    full = train.main(streaming_args(tiny_bert, catalogue, tmp_path / "full"))
    (tmp_path / "resumed").mkdir()
    shutil.copytree(tmp_path / "full" / "step_8", tmp_path / "resumed" / "step_8")
    resumed = train.main(streaming_args(tiny_bert, catalogue, tmp_path / "resumed", "--resume_from_checkpoint", "latest"))
    workers = train.main(streaming_args(tiny_bert, catalogue, tmp_path / "workers", "--dataloader_num_workers", "2"))
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in full["history"][8:]]
    assert [h["loss"] for h in workers["history"]] == [h["loss"] for h in full["history"]]
    weights = load_file(tmp_path / "full" / "final" / "model.safetensors")
    for run in ("resumed", "workers"):
        other = load_file(tmp_path / run / "final" / "model.safetensors")
        assert all(torch.equal(weights[name], other[name]) for name in weights), run
    assert json.loads((tmp_path / "full" / "train_history.json").read_text())[-1]["step"] == 12


@pytest.mark.slow
def test_two_processes_train_on_their_parts_of_the_stream(tiny_bert, catalogue, tmp_path):  # noqa: F811
    """`accelerate launch --multi_gpu --num_processes 2` (gloo): each process streams its part, DDP trains, the task
    weights are reduced across the processes, and the run ends with its checkpoint and folder."""
    from test_train import run_train

    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    args = streaming_args(tiny_bert, catalogue, tmp_path / "two", "--dataloader_num_workers", "1")
    steps = args.index("--max_train_steps") + 1
    args[steps] = "6"  # past each process's epoch of 2 batches of 4 (11 rows each)
    result = run_train(args, launcher=launcher)
    assert "MULTI_CPU" in result.stdout + result.stderr
    history = json.loads((tmp_path / "two" / "train_history.json").read_text())
    assert [h["step"] for h in history] == list(range(1, 7))
    assert (tmp_path / "two" / "final" / "model.safetensors").exists()
