"""AdamW parameter groups: no weight decay on biases and norms, a larger learning rate for parameters new to the model."""

from __future__ import annotations

from collections.abc import Collection

from torch import nn

__all__ = ["ADAM_BETAS", "NO_DECAY_NAMES", "WEIGHT_DECAY", "optimizer_parameter_groups"]

# The paper's AdamW settings (FashionBERT sec. 4.1), train.py's defaults for both models.
ADAM_BETAS = (0.95, 0.999)
WEIGHT_DECAY = 1e-4

# Parameters whose name contains one of these get no weight decay (BERT's convention).
NO_DECAY_NAMES = ("bias", "LayerNorm.weight", "layer_norm.weight")


def optimizer_parameter_groups(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    new_parameters: Collection[str] = (),
    new_lr_multiplier: float = 1.0,
) -> list[dict]:
    """
    Trainable parameters of `model` in up to four AdamW groups: (pretrained, new) x (decayed, not decayed).

    Args:
        model: the model (its frozen parameters are left out).
        learning_rate: the peak learning rate of pretrained parameters.
        weight_decay: decay of every parameter except biases and LayerNorm weights (`NO_DECAY_NAMES`).
        new_parameters: names (as in `model.named_parameters()`) of parameters that start from scratch, i.e. that the
            pretrained checkpoint did not have (`from_pretrained(..., output_loading_info=True)["missing_keys"]`);
            buffers and unknown names among them are skipped.
        new_lr_multiplier: their learning rate is `learning_rate * new_lr_multiplier`. A fresh head with a small
            initialisation otherwise grows by about `learning_rate` per Adam step and passes almost no gradient to
            the pretrained encoder until it has grown.

    Returns:
        Parameter groups for `torch.optim.AdamW`; each has `lr`, `weight_decay` and a `name` (for logging). Empty groups
        are left out. A learning-rate scheduler scales every group's `lr` by the same factor.
    """
    if new_lr_multiplier <= 0:
        raise ValueError(f"`new_lr_multiplier` must be positive, got {new_lr_multiplier}.")
    # By identity: a tied parameter has several names, and loading reports buffers among the missing keys too.
    new_ids = set()
    for name in new_parameters:
        try:
            new_ids.add(id(model.get_parameter(name)))
        except AttributeError:
            continue
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        key = (id(parameter) in new_ids, not any(part in name for part in NO_DECAY_NAMES))
        groups.setdefault(key, []).append(parameter)
    return [
        {
            "name": f"{'new' if new else 'pretrained'}{'' if decayed else ', no decay'}",
            "params": params,
            "lr": learning_rate * (new_lr_multiplier if new else 1.0),
            "weight_decay": weight_decay if decayed else 0.0,
        }
        for (new, decayed), params in sorted(groups.items())
    ]
