"""What train.py's loop imports: crash-safe checkpoints, optimiser parameter groups, FashionBERT's training recipes."""

from .checkpoints import (
    CHECKPOINT_MANIFEST,
    CHECKPOINT_PREFIX,
    atomic_directory,
    checkpoint_problem,
    checkpoint_step,
    list_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from .fashionbert import FASHIONBERT_RECIPES, FashionBertRecipe, alignment_warmup_loss
from .optimization import optimizer_parameter_groups

__all__ = [
    "CHECKPOINT_MANIFEST",
    "CHECKPOINT_PREFIX",
    "FASHIONBERT_RECIPES",
    "FashionBertRecipe",
    "alignment_warmup_loss",
    "atomic_directory",
    "checkpoint_problem",
    "checkpoint_step",
    "list_checkpoints",
    "load_checkpoint",
    "optimizer_parameter_groups",
    "resolve_checkpoint",
    "save_checkpoint",
]
