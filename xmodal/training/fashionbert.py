"""FashionBERT's training recipes (named sets of train.py defaults) and the alignment warm-up of its task weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..fashionbert.modeling_fashionbert import TASKS

__all__ = ["FASHIONBERT_RECIPES", "FashionBertRecipe", "alignment_warmup_loss", "alignment_warmup_share"]


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
        alignment_pooling: what the TIA head reads (`--alignment_pooling`, see `FashionBertConfig`).
        contrastive_projection_dim: size of the dual-encoder heads trained with the image-text contrastive task, 0 for
            none (`--contrastive_projection_dim`, see `FashionBertConfig`).
        learning_rate: peak learning rate of the pretrained parameters (`--learning_rate`).
        new_modules_lr_multiplier: learning-rate multiplier of the parameters the text checkpoint does not have
            (patch embeddings, heads, pooler); `--new_modules_lr_multiplier`.
        negative_curriculum_steps: steps over which the TIA negatives go from random other products to the same
            sub-category (`--negative_curriculum_steps`, see `FashionBertPretrainingCollator`; 0 = none).
        alignment_warmup_steps: steps of alignment-only task weights, then as many steps of a linear blend into the
            adaptive weights (`--alignment_warmup_steps`, see `alignment_warmup_share`).
        num_warmup_steps: learning-rate warm-up steps; None = 10 % of training (`--num_warmup_steps`).
        num_train_epochs: epochs when neither `--num_train_epochs` nor `--max_train_steps` is given.
        max_train_steps: optimisation steps when neither `--num_train_epochs` nor `--max_train_steps` is given
            (None = the epochs decide).
        max_train_minutes: stop training after this many minutes (None = no time limit).
    """

    name: str
    description: str
    image_size: int
    max_text_length: int
    alignment_pooling: str
    contrastive_projection_dim: int
    learning_rate: float
    new_modules_lr_multiplier: float
    alignment_warmup_steps: int
    negative_curriculum_steps: int
    num_warmup_steps: int | None
    num_train_epochs: int
    max_train_steps: int | None
    max_train_minutes: float | None

    def to_dict(self) -> dict:
        return asdict(self)


FASHIONBERT_RECIPES: dict[str, FashionBertRecipe] = {
    recipe.name: recipe
    for recipe in (
        FashionBertRecipe(
            name="quick",
            description="minutes on a CPU: 128 px, the bilinear alignment head, new modules at 10x the learning rate, "
            "an alignment warm-up of 60 steps (alignment alone on unmasked pairs, then blended into the adaptive weights), "
            "150 steps (at most 7 minutes)",
            image_size=128,
            max_text_length=64,
            alignment_pooling="text_patch_bilinear",
            contrastive_projection_dim=0,
            learning_rate=1e-4,
            new_modules_lr_multiplier=10.0,
            alignment_warmup_steps=60,
            negative_curriculum_steps=0,
            num_warmup_steps=None,
            num_train_epochs=2,
            max_train_steps=150,
            max_train_minutes=7.0,
        ),
        FashionBertRecipe(
            name="paper",
            description="the paper's setting (8 GPUs x 8 pairs): 256 px, the [CLS] alignment head, lr 2e-5 with 5000 "
            "warm-up steps, 10 epochs, no alignment warm-up",
            image_size=256,
            max_text_length=64,
            alignment_pooling="cls",
            contrastive_projection_dim=0,
            learning_rate=2e-5,
            new_modules_lr_multiplier=1.0,
            alignment_warmup_steps=0,
            negative_curriculum_steps=0,
            num_warmup_steps=5000,
            num_train_epochs=10,
            max_train_steps=None,
            max_train_minutes=None,
        ),
    )
}


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
