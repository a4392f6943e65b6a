"""What train.py does the same way for every model type: splits, truncation, logged loss terms, the card's common part.

The per-model training modules (`xmodal.training.fashionbert`, `xmodal.training.map_ivr`) use these helpers; train.py
itself only sees the functions those two modules share (see `xmodal.training.MODEL_TRAINING`).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch

__all__ = [
    "DEFAULT_SEED",
    "TRAINING_FUNCTIONS",
    "TrainingRun",
    "card_fields",
    "card_metrics",
    "dataset_arguments",
    "evaluation_split",
    "first_rows",
    "loss_terms",
    "precision_name",
    "process_sum",
    "refuse_flags",
    "training_curve_figures",
    "validation_split",
]

# The functions every per-model training module defines (`xmodal.training.MODEL_TRAINING`), in the order train.py
# calls them; each module also has the constants MODEL_CLASS and SYNTHETIC_DATASET.
TRAINING_FUNCTIONS = (
    "add_arguments", "resolve_arguments", "load_splits", "build_model", "prepare_datasets", "check_before_training",
    "connect_processes", "build_collator", "new_learning_rate_multiplier", "describe", "training_loss", "evaluate", "save_figures",
    "model_card", "summary_lines", "run_title",
)  # fmt: skip
# train.py's --seed, and so the seed of the synthetic test beds it trains on (app.py shows their test splits).
DEFAULT_SEED = 42
# The scalar losses a model output may carry (FashionBERT's tasks, MAP-IVR's terms), logged when present.
LOSS_NAMES = ("mlm_loss", "mpm_loss", "tia_loss", "itc_loss", "orth_loss", "class_loss", "kl_loss", "recon_loss")
TASK_WEIGHT_NAMES = ("mlm", "mpm", "tia", "itc")


@dataclass
class TrainingRun:
    """What a finished training run reports to the card and the summary (`stopped_early`: why it ended before
    --max_train_steps, or None)."""

    dataset_description: str
    steps: int
    train_minutes: float
    history: list[dict[str, float]]
    synthetic: bool
    stopped_early: str | None = None


def refuse_flags(flags: Iterable[str], given: set[str], reason: str) -> None:
    """Raises `ValueError` naming the given `--flags` among `flags`, with `reason` (e.g. "applies only to ...")."""
    named = [f"--{name}" for name in flags if name in given]
    if named:
        raise ValueError(f"{', '.join(named)}: {reason}")


def dataset_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The data-source flags every model type's `load_*_dataset` takes (`--dataset_name`, `--train_file`...)."""
    names = ("dataset_name", "dataset_config_name", "train_file", "validation_file", "on_bad_rows")
    return {name: getattr(args, name) for name in names}


def evaluation_split(raw: datasets.DatasetDict) -> str:
    """The split evaluated after training: "test", else "validation" (the first that has rows)."""
    for name in ("test", "validation"):
        if name in raw and len(raw[name]) > 0:
            return name
    sizes = {name: len(split) for name, split in raw.items()}
    raise ValueError(f"no non-empty evaluation split ('test' or 'validation'): the data has {sizes}; pass --validation_file")


def validation_split(raw: datasets.DatasetDict) -> str | None:
    """
    The split post-training choices are made on (FashionBERT's fusion weight): "validation" when the evaluation split
    is "test" and it has rows, else None; never the split the results are reported on.
    """
    if evaluation_split(raw) == "test" and "validation" in raw and len(raw["validation"]) > 0:
        return "validation"
    return None


def first_rows(dataset: datasets.Dataset | datasets.IterableDataset, limit: int | None) -> datasets.Dataset | datasets.IterableDataset:
    """The first `limit` rows of `dataset` (all of them when `limit` is None or larger); a stream's first `limit`."""
    if limit is None:
        return dataset
    if isinstance(dataset, datasets.IterableDataset):
        return dataset.take(limit)
    return dataset if limit >= len(dataset) else dataset.select(range(limit))


def loss_terms(outputs: Any, loss: torch.Tensor, weights: torch.Tensor | None) -> dict[str, float]:
    """The scalar losses of one step (the trained `loss`, each term the output carries) and the task weights."""
    terms = {"loss": float(loss.detach())}
    for name in LOSS_NAMES:
        value = getattr(outputs, name, None)
        if value is not None:
            terms[name] = float(value.detach())
    if weights is not None:
        for task, weight in zip(TASK_WEIGHT_NAMES, weights.detach().tolist()):
            terms[f"weight_{task}"] = weight
    return terms


def process_sum(accelerator) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function summing a tensor over the accelerator's processes (what a model's collective-free code is given)."""

    # A closure, not a bound method or partial: a deep copy of the model that holds it must not copy the accelerator.
    def reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
        return accelerator.reduce(tensor, reduction="sum")

    return reduce_sum


def code_version() -> str:
    """xmodal's version, and the git commit when it runs from a checkout (the card records what trained the model)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        described = f"xmodal {version('xmodal')}"
    except PackageNotFoundError:
        described = "xmodal (not installed)"
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / ".git").exists():
        result = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        if result.returncode == 0:
            described += f", commit {result.stdout.strip()}" + (" with local changes" if dirty.stdout.strip() else "")
    return described


def card_fields(args: argparse.Namespace, run: TrainingRun, extra_hyperparameters: Mapping[str, Any]) -> dict[str, Any]:
    """The model-card fields every model type fills the same way: names, command, data, hyper-parameters, limits."""
    hyperparameters = {
        "optimisation steps": run.steps,
        "examples per step": args.per_device_train_batch_size * args.gradient_accumulation_steps,
        "learning rate": args.learning_rate,
        "Adam betas": (args.adam_beta1, args.adam_beta2),
        "weight decay": args.weight_decay,
        # SchedulerType is a str enum whose str() is its repr: write its value ("linear").
        "schedule": f"{getattr(args.lr_scheduler_type, 'value', args.lr_scheduler_type)} with warmup",
        "seed": args.seed,
        **extra_hyperparameters,
        "training time (minutes)": round(run.train_minutes, 1),
        "code": code_version(),
    }
    limitations = (
        "Trained on xmodal's synthetic test bed (rendered images/videos with controlled factors), for a few minutes "
        "on CPU: it demonstrates the pipeline and the protocol, it is not a model for real product photos or videos."
        if run.synthetic
        else "Evaluated only on the split named above; check it on your own data before relying on it."
    )
    return dict(
        model_name=Path(args.output_dir).name,
        repo_id=args.hub_model_id or Path(args.output_dir).name,
        dataset_name=run.dataset_description,
        dataset_description=run.dataset_description,
        command=shlex.join(["python", "train.py", *sys.argv[1:]]),
        hyperparameters=hyperparameters,
        limitations=limitations,
        precision=precision_name(args.mixed_precision),
        stopped_early=run.stopped_early,
    )


def precision_name(mixed_precision: str | None) -> str:
    """How the card and the summary name accelerate's `mixed_precision` ("no" is float32)."""
    return {"no": "float32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}.get(mixed_precision or "no", str(mixed_precision))


def card_metrics(results: Mapping[str, Any]) -> dict[str, float]:
    """The protocol's numbers the card's model-index holds (ranks, mAP, matching accuracy and AUCs)."""
    return {
        k: v
        for k, v in results.items()
        if isinstance(v, (int, float)) and ("/R@" in k or "/mAP@" in k or k.startswith("tia/") or k.endswith("/auc"))
    }


def training_curve_figures(history: list[dict], folder: Path, caption: str = "each task's loss during training") -> list[dict]:
    """Each task's loss over training, one figure (`losses.png`); none when no loss was logged."""
    from ..visualization import loss_keys, save_loss_curves

    if not loss_keys(history):
        return []
    save_loss_curves(history, folder / "losses.png")
    return [{"file": "losses.png", "path": folder / "losses.png", "caption": caption}]
