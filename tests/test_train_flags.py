"""No flag of train.py is silently ignored: every flag of `--help`, for both model types, is either refused with a
line naming it or used.

"Used" is checked two ways: the flag's value is read by the run after the arguments are resolved (an attribute
read on the namespace `main` works with, in tiny in-process runs that give every flag), or, for the flags that act
only while the arguments are resolved (`--recipe`, `--model_type`), giving it changes other resolved values.
"""

import argparse
import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState, GradientState
from PIL import Image

from test_train import REPO, tiny_bert  # noqa: F401  (fixture)

import train

MODEL_TYPES = ("fashionbert", "map_ivr")
# Act while the arguments are resolved, not later: checked by the change they make to the resolved namespace.
RESOLUTION_ONLY = {"recipe", "model_type"}
# Read by the script's entry point from sys.argv (the one-line error or the traceback), checked by its own test.
ENTRY_POINT_ONLY = {"debug"}


class ReadTracker(argparse.Namespace):
    """A namespace that records which attributes are read."""

    def __getattribute__(self, name):
        if not name.startswith("_"):
            object.__getattribute__(self, "_reads").add(name)
        return object.__getattribute__(self, name)


def every_flag() -> dict[str, str]:
    """dest -> option string of every flag in --help."""
    return {action.dest: action.option_strings[0] for action in train.build_parser()._actions if action.option_strings and action.dest != "help"}


def given_flags(argv: list[str]) -> set[str]:
    options = {option: dest for dest, option in every_flag().items()}
    return {options[token] for token in argv if token in options}


@pytest.fixture
def tracked_main(monkeypatch):
    """Runs train.main(argv) in process; returns the set of flags read after they were resolved."""
    parse_args = train.parse_args
    pushes = []
    monkeypatch.setattr(train, "create_hub_repo", lambda repo_id, **kwargs: f"user/{repo_id}")
    monkeypatch.setattr(train, "push_folder_to_hub", lambda folder, repo_id, **kwargs: pushes.append((folder, repo_id)))

    def run(argv: list[str], expect_error: type[Exception] | None = None) -> set[str]:
        trackers = []

        def tracked_parse_args(arguments):
            args = ReadTracker(**vars(parse_args(arguments)))
            object.__setattr__(args, "_reads", set())
            trackers.append(args)
            return args

        monkeypatch.setattr(train, "parse_args", tracked_parse_args)
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        try:
            if expect_error is None:
                train.main(argv)
            else:
                with pytest.raises(expect_error):
                    train.main(argv)
        finally:
            monkeypatch.setattr(train, "parse_args", parse_args)
            AcceleratorState._reset_state(True)
            GradientState._reset_state()
        return object.__getattribute__(trackers[0], "_reads")

    run.pushes = pushes
    return run


def write_catalogue(folder: Path, products: int = 12) -> Path:
    """A tiny csv catalogue (one image per product, three sub-categories) with non-default column names."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(products):
        Image.new("RGB", (16, 16), (20 * i, 255 - 20 * i, 90)).save(folder / f"p{i}.png")
        rows.append([f"p{i}.png", f"product {i} in colour {i % 4}", f"kind{i % 3}", f"id{i}"])
    path = folder / "catalogue.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["picture", "caption", "kind", "sku"])
        writer.writerows(rows)
    return path


def fashion_scenarios(tiny_bert: Path, tmp: Path) -> list[tuple[list[str], type[Exception] | None]]:
    new_model = [
        "--text_model_name_or_path", str(tiny_bert), "--patch_encoder_type", "pixels", "--image_size", "32", "--patch_grid", "4",
        "--max_text_length", "24", "--alignment_pooling", "text_patch_bilinear", "--contrastive_projection_dim", "8",
        "--task_weighting", "fixed", "--mpm_kl_direction", "code", "--new_modules_lr_multiplier", "2",
        "--alignment_warmup_steps", "1", "--negative_curriculum_steps", "1", "--hard_negatives", "2",
        "--hard_negative_warmup_steps", "1", "--synthetic_num_products", "60",
        "--synthetic_views_per_product", "1", "--preprocessing_num_workers", "1", "--num_eval_queries", "4",
        "--num_eval_negatives", "3", "--num_eval_draws", "2", "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "8", "--learning_rate", "1e-4", "--adam_beta1", "0.9", "--adam_beta2", "0.99",
        "--weight_decay", "0.01", "--max_train_steps", "2", "--max_train_minutes", "5", "--gradient_accumulation_steps", "1",
        "--lr_scheduler_type", "constant_with_warmup", "--num_warmup_steps", "1", "--mixed_precision", "no", "--seed", "3",
        "--gradient_checkpointing", "--checkpointing_steps", "1", "--checkpoints_total_limit", "1", "--logging_steps", "1",
        "--with_tracking", "--report_to", "tensorboard", "--do_eval", "true", "--save_figures", "true",
        "--max_train_samples", "40", "--max_eval_samples", "5", "--push_to_hub", "--hub_model_id", "tiny",
        "--hub_token", "token", "--hub_private_repo", "--push_checkpoints", "--output_dir", str(tmp / "new"),
        "--model_type", "fashionbert",
    ]  # fmt: skip
    steps = new_model.index("--max_train_steps") + 1
    resumed = [*new_model[:steps], "3", *new_model[steps + 1 :], "--resume_from_checkpoint", "latest"]
    loaded = ["--model_name_or_path", str(tmp / "new" / "final"), "--task_weighting", "loss_softmax", "--mpm_kl_direction", "paper",
              "--max_text_length", "20", "--synthetic_num_products", "60", "--synthetic_views_per_product", "1",
              "--max_train_samples", "8", "--per_device_train_batch_size", "4", "--num_train_epochs", "1", "--do_eval", "false",
              "--output_dir", str(tmp / "loaded")]  # fmt: skip
    catalogue = write_catalogue(tmp / "catalogue")
    files = ["--text_model_name_or_path", str(tiny_bert), "--patch_encoder_type", "pixels", "--image_size", "32", "--patch_grid", "4", "--train_file", str(catalogue),
             "--validation_file", str(catalogue), "--image_column", "picture", "--caption_column", "caption",
             "--subcategory_column", "kind", "--product_id_column", "sku", "--on_bad_rows", "skip",
             "--per_device_train_batch_size", "4", "--max_train_steps", "1", "--num_eval_negatives", "3",
             "--output_dir", str(tmp / "files")]  # fmt: skip
    streamed = [*files[: files.index("--output_dir")], "--streaming", "--shuffle_buffer_size", "4", "--dataloader_num_workers", "1",
                "--output_dir", str(tmp / "streamed")]  # fmt: skip
    # Data sources that fail to load here still read their flags first.
    hub_dataset = ["--dataset_name", str(tmp / "missing"), "--dataset_config_name", "default", "--output_dir", str(tmp / "x")]
    fashiongen = ["--fashiongen_h5", str(tmp / "missing.h5"), "--output_dir", str(tmp / "y")]
    return [(new_model, None), (resumed, None), (loaded, None), (files, None), (streamed, None), (hub_dataset, Exception), (fashiongen, Exception)]


def map_ivr_scenarios(tmp: Path) -> list[tuple[list[str], type[Exception] | None]]:
    new_model = [
        "--model_type", "map_ivr", "--num_samples", "2", "--lambda_v", "0.3", "--synthetic_videos_per_class", "4",
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--learning_rate", "1e-3",
        "--adam_beta1", "0.9", "--adam_beta2", "0.99", "--weight_decay", "0.01", "--num_train_epochs", "1",
        "--max_train_minutes", "5", "--gradient_accumulation_steps", "2", "--lr_scheduler_type", "cosine",
        "--num_warmup_steps", "1", "--mixed_precision", "no", "--seed", "3", "--checkpointing_steps", "epoch",
        "--checkpoints_total_limit", "1", "--logging_steps", "1", "--with_tracking", "--report_to", "tensorboard",
        "--do_eval", "true", "--save_figures", "true", "--max_train_samples", "40", "--max_eval_samples", "30",
        "--push_to_hub", "--hub_model_id", "tiny", "--hub_token", "token", "--hub_private_repo", "--push_checkpoints",
        "--output_dir", str(tmp / "new"),
    ]  # fmt: skip
    resumed = ["--model_type", "map_ivr", "--synthetic_videos_per_class", "4", "--per_device_train_batch_size", "8",
               "--max_train_steps", "4", "--do_eval", "false", "--resume_from_checkpoint", "latest", "--output_dir", str(tmp / "new")]  # fmt: skip
    loaded = ["--model_type", "map_ivr", "--model_name_or_path", str(tmp / "new" / "final"), "--num_samples", "3",
              "--lambda_v", "0.6", "--synthetic_videos_per_class", "4", "--per_device_train_batch_size", "8", "--max_train_steps", "1", "--output_dir", str(tmp / "loaded")]  # fmt: skip
    files = ["--model_type", "map_ivr", "--train_file", str(tmp / "missing.parquet"), "--validation_file", str(tmp / "missing.parquet"),
             "--on_bad_rows", "skip", "--output_dir", str(tmp / "x")]  # fmt: skip
    hub_dataset = ["--model_type", "map_ivr", "--dataset_name", str(tmp / "missing"), "--dataset_config_name", "default", "--output_dir", str(tmp / "y")]
    apivr = ["--model_type", "map_ivr", "--apivr_dir", str(tmp / "missing"), "--output_dir", str(tmp / "z")]
    return [(new_model, None), (resumed, None), (loaded, None), (files, Exception), (hub_dataset, Exception), (apivr, Exception)]


def refused(argv: list[str], capsys) -> str | None:
    """The error line when parsing `argv` stops, else None."""
    try:
        train.parse_args(argv)
    except SystemExit as stop:
        assert stop.code == 2
        return capsys.readouterr().err
    return None


@pytest.mark.slow
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_every_flag_is_used_or_refused(model_type, tiny_bert, tmp_path, tracked_main, capsys):  # noqa: F811
    scenarios = fashion_scenarios(tiny_bert, tmp_path) if model_type == "fashionbert" else map_ivr_scenarios(tmp_path)
    used = set()
    for argv, expect_error in scenarios:
        used |= given_flags(argv) & tracked_main(argv, expect_error)
    flags = every_flag()
    unchecked = []
    for dest, option in flags.items():
        if dest in used or dest in RESOLUTION_ONLY | ENTRY_POINT_ONLY:
            continue
        error = refused(["--model_type", model_type, option, *(["1"] if flags_takes_value(option) else [])], capsys)
        if error is None or option not in error:
            unchecked.append(option)
    assert not unchecked, f"neither read by a run that gave them nor refused: {sorted(unchecked)}"
    assert tracked_main.pushes, "--push_to_hub pushed nothing"


def flags_takes_value(option: str) -> bool:
    action = next(a for a in train.build_parser()._actions if option in a.option_strings)
    return action.nargs != 0


def test_resolution_only_flags_change_the_resolved_arguments():
    assert vars(train.parse_args(["--recipe", "paper"])) != vars(train.parse_args([]))
    paper, quick = train.parse_args(["--recipe", "paper"]), train.parse_args(["--recipe", "quick"])
    assert (paper.learning_rate, paper.image_size) != (quick.learning_rate, quick.image_size)
    assert train.parse_args(["--model_type", "map_ivr"]).output_dir != train.parse_args([]).output_dir


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--report_to", "wandb"], "--report_to"),
        (["--hub_model_id", "me/model"], "--hub_model_id"),
        (["--push_checkpoints"], "--push_checkpoints"),
        (["--dataset_config_name", "x"], "--dataset_config_name"),
        (["--validation_file", "v.csv"], "--validation_file"),
        (["--do_eval", "false", "--num_eval_negatives", "5"], "--num_eval_negatives"),
        (["--do_eval", "false", "--per_device_eval_batch_size", "5"], "--per_device_eval_batch_size"),
        (["--num_train_epochs", "2", "--max_train_steps", "5"], "--num_train_epochs"),
        (["--on_bad_rows", "skip"], "--on_bad_rows"),
        (["--image_column", "img"], "--image_column"),
        (["--train_file", "t.csv", "--synthetic_num_products", "200"], "--synthetic_num_products"),
        (["--patch_encoder_type", "pixels", "--patch_feature_mode", "grid"], "--patch_feature_mode"),
        (["--patch_crop_size", "64"], "--patch_crop_size"),
        (["--model_type", "map_ivr", "--train_file", "t.parquet", "--synthetic_videos_per_class", "5"], "--synthetic_videos_per_class"),
        (["--model_type", "map_ivr", "--recipe", "quick"], "--recipe"),
        (["--model_type", "map_ivr", "--num_eval_negatives", "5"], "--num_eval_negatives"),
        (["--max_train_samples", "0"], "--max_train_samples"),
        (["--checkpointing_steps", "often"], "--checkpointing_steps"),
        (["--streaming"], "--streaming"),
        (["--shuffle_buffer_size", "10"], "--shuffle_buffer_size"),
        (["--dataloader_num_workers", "2"], "--dataloader_num_workers"),
        (["--train_file", "t.csv", "--streaming", "--num_train_epochs", "2"], "--num_train_epochs"),
        (["--train_file", "t.csv", "--streaming", "--max_train_steps", "5", "--checkpointing_steps", "epoch"], "--checkpointing_steps"),
        (["--train_file", "t.csv", "--streaming", "--recipe", "paper"], "--max_train_steps"),
        (["--train_file", "t.csv", "--streaming", "--preprocessing_num_workers", "2"], "--preprocessing_num_workers"),
        (["--train_file", "t.csv", "--streaming", "--shuffle_buffer_size", "0"], "--shuffle_buffer_size"),
        (["--model_type", "map_ivr", "--train_file", "t.parquet", "--streaming"], "--streaming"),
    ],
)
def test_flags_that_would_be_ignored_are_refused_in_one_line(argv, flag, capsys):
    error = refused(argv, capsys)
    assert error is not None and flag in error
    assert error.count("\n") == 1 and error.startswith("train.py: error:")


@pytest.mark.parametrize(
    "flag", ["--text_model_name_or_path", "--patch_encoder_type", "--image_size", "--patch_grid", "--alignment_pooling", "--contrastive_projection_dim"]
)
def test_flags_that_define_a_new_model_are_refused_with_a_saved_one(flag, tmp_path, capsys):
    from xmodal import FashionBertConfig

    FashionBertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20,
                      image_size=16, patch_grid=2, patch_encoder_type="pixels").save_pretrained(tmp_path)  # fmt: skip
    value = {"--patch_encoder_type": "pixels", "--alignment_pooling": "cls"}.get(flag, "8")
    error = refused(["--model_name_or_path", str(tmp_path), flag, value], capsys)
    assert error is not None and flag in error and "--model_name_or_path" in error
    args = train.parse_args(["--model_name_or_path", str(tmp_path)])
    assert (args.image_size, args.patch_grid) == (16, 2)  # the saved model's sizes, not the recipe's


def test_a_user_error_is_one_line_without_traceback_unless_debug(tmp_path):
    argv = [sys.executable, str(REPO / "train.py"), "--model_type", "map_ivr", "--train_file", str(tmp_path / "missing.parquet"),
            "--output_dir", str(tmp_path / "out")]  # fmt: skip
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("train.py: error:") and "missing.parquet" in last
    assert "Traceback" not in result.stderr
    result = subprocess.run([*argv, "--debug"], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert result.returncode == 1 and "Traceback" in result.stderr


def test_an_evaluation_set_too_small_for_the_protocol_stops_before_training(tiny_bert, tmp_path):  # noqa: F811
    argv = ["--text_model_name_or_path", str(tiny_bert), "--patch_encoder_type", "pixels", "--image_size", "32", "--patch_grid", "4", "--synthetic_num_products", "60",
            "--synthetic_views_per_product", "1", "--per_device_train_batch_size", "4", "--max_train_steps", "1",
            "--max_eval_samples", "3", "--num_eval_negatives", "3", "--output_dir", str(tmp_path / "out")]  # fmt: skip
    with pytest.raises(ValueError, match=r"evaluation split has 3 products.*--num_eval_negatives \+ 1 = 4"):
        train.main(argv)
    assert not list((tmp_path / "out").glob("step_*")) and not (tmp_path / "out" / "final").exists()


def test_too_few_rows_for_one_batch_per_process_is_refused_before_training(tmp_path):
    argv = ["--model_type", "map_ivr", "--synthetic_videos_per_class", "4", "--max_train_samples", "7",
            "--per_device_train_batch_size", "8", "--output_dir", str(tmp_path / "out")]  # fmt: skip
    with pytest.raises(ValueError, match=r"7 rows, fewer than one batch of --per_device_train_batch_size 8 per process"):
        train.main(argv)
    train.check_batches(64, argparse.Namespace(per_device_train_batch_size=64), num_processes=1)
    with pytest.raises(ValueError, match=r"2 processes need at least 128 rows"):
        train.check_batches(64, argparse.Namespace(per_device_train_batch_size=64), num_processes=2)


@pytest.mark.slow
def test_two_processes_with_one_batch_in_all_stop_with_the_batch_line(tmp_path):
    """64 rows and 64 per device on 2 processes: every process has 0 batches once sharded; stop before training."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    argv = [str(REPO / "train.py"), "--model_type", "map_ivr", "--synthetic_videos_per_class", "8", "--max_train_samples", "64",
            "--output_dir", str(tmp_path / "out")]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*launcher, *argv], capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "train.py: error: the training set has 64 rows" in output and "2 processes need at least 128 rows" in output
    assert "ZeroDivisionError" not in output and not (tmp_path / "out" / "final").exists()


def test_both_training_modules_define_the_whole_interface():
    from xmodal.training import MODEL_TRAINING, TRAINING_FUNCTIONS

    for model_type, training in MODEL_TRAINING.items():
        missing = [name for name in (*TRAINING_FUNCTIONS, "MODEL_CLASS", "SYNTHETIC_DATASET") if not hasattr(training, name)]
        assert not missing, f"{model_type} lacks {missing}"
        assert set(TRAINING_FUNCTIONS) <= set(training.__all__)


def test_a_cnn_patch_encoder_gets_packaged_weights_grid_mode_and_its_image_size():
    from xmodal.pretrained import packaged_patch_encoder

    args = train.parse_args(["--patch_encoder_type", "mobilenet_v2"])
    assert args.patch_encoder_name_or_path == packaged_patch_encoder("mobilenet_v2")
    assert (args.patch_feature_mode, args.image_size) == ("grid", 256)  # 32 x 8: the stride-32 map is the 8x8 grid
    # The family follows a checkpoint given alone; the paper's recipe crops each patch.
    args = train.parse_args(["--patch_encoder_name_or_path", packaged_patch_encoder("mobilenet_v2"), "--recipe", "paper"])
    assert (args.patch_encoder_type, args.patch_feature_mode) == ("mobilenet_v2", "crop")
    assert train.parse_args(["--patch_encoder_type", "mobilenet_v2", "--patch_feature_mode", "crop", "--patch_crop_size", "64"]).patch_crop_size == 64
    with pytest.warns(UserWarning, match="random weights"):
        train.parse_args(["--patch_encoder_type", "convnext"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--patch_encoder_type", "pixels", "--patch_crop_size", "64"], "--patch_crop_size: applies only to a CNN --patch_encoder_type"),
        (["--patch_encoder_type", "pixels", "--patch_feature_mode", "grid"], "--patch_feature_mode: applies only to a CNN"),
        (["--patch_encoder_type", "mobilenet_v2", "--patch_crop_size", "64"], "--patch_crop_size: applies only to --patch_feature_mode crop"),
        (["--patch_encoder_type", "resnet", "--patch_encoder_name_or_path", "PACKAGED"], "--patch_encoder_type is 'resnet' but --patch_encoder_name_or_path .* is a 'mobilenet_v2' checkpoint"),
        (["--patch_encoder_name_or_path", "BERT"], "a 'bert' model, not one of the supported CNNs"),
        (["--patch_encoder_name_or_path", "MISSING"], "--patch_encoder_name_or_path .*: no transformers config could be read there"),
    ],
)
def test_patch_encoder_flags_that_do_not_fit_are_refused_in_one_line(argv, message, tiny_bert, tmp_path, capsys):  # noqa: F811
    from xmodal.pretrained import packaged_patch_encoder

    paths = {"PACKAGED": packaged_patch_encoder("mobilenet_v2"), "BERT": str(tiny_bert), "MISSING": str(tmp_path / "missing")}
    error = refused([paths.get(token, token) for token in argv], capsys)
    assert error is not None and error.count("\n") == 1, error
    assert re.search(message, error), error
