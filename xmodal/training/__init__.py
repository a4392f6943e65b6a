"""What train.py imports: crash-safe checkpoints, optimiser parameter groups, and one training module per model type.

`MODEL_TRAINING` maps `--model_type` to its module (`fashionbert`, `map_ivr`); both define the functions named in
`TRAINING_FUNCTIONS` (`add_arguments`, `resolve_arguments`, `load_splits`, `build_model`, `prepare_datasets`,
`check_before_training`, `connect_processes`, `build_collator`, `new_learning_rate_multiplier`, `describe`, `training_loss`, `evaluate`,
`save_figures`, `model_card`, `summary_lines`, `run_title`) and the constants `MODEL_CLASS`, `SYNTHETIC_DATASET`.
"""

from . import fashionbert, map_ivr
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
from .common import (
    DEFAULT_SEED,
    TRAINING_FUNCTIONS,
    TrainingRun,
    evaluation_split,
    first_rows,
    loss_terms,
    precision_name,
    refuse_flags,
    validation_split,
)
from .fashionbert import FASHIONBERT_RECIPES, FashionBertRecipe, alignment_warmup_loss
from .optimization import ADAM_BETAS, WEIGHT_DECAY, optimizer_parameter_groups
from .precision import bf16_supported, default_mixed_precision, scoring_precision, training_attention, training_device_type
from .streaming import StreamLoader

MODEL_TRAINING = {"fashionbert": fashionbert, "map_ivr": map_ivr}

__all__ = [
    "ADAM_BETAS",
    "DEFAULT_SEED",
    "WEIGHT_DECAY",
    "CHECKPOINT_MANIFEST",
    "CHECKPOINT_PREFIX",
    "FASHIONBERT_RECIPES",
    "FashionBertRecipe",
    "MODEL_TRAINING",
    "StreamLoader",
    "TRAINING_FUNCTIONS",
    "TrainingRun",
    "alignment_warmup_loss",
    "atomic_directory",
    "bf16_supported",
    "checkpoint_problem",
    "checkpoint_step",
    "default_mixed_precision",
    "evaluation_split",
    "first_rows",
    "list_checkpoints",
    "load_checkpoint",
    "loss_terms",
    "optimizer_parameter_groups",
    "precision_name",
    "refuse_flags",
    "resolve_checkpoint",
    "save_checkpoint",
    "scoring_precision",
    "training_attention",
    "training_device_type",
    "validation_split",
]
