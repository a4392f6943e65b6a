"""MAP-IVR's side of train.py: its flags, data, model, collator, evaluation and card.

The same functions as `xmodal.training.fashionbert`; train.py picks one through `xmodal.training.MODEL_TRAINING`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import datasets
import torch
from accelerate import Accelerator

from ..data.activity_sources import activity_arrays, load_activity_dataset, load_apivr_features
from ..data.activity_synthetic import make_activity_dataset
from ..data.collators import MapIvrCollator
from ..evaluation.activity_retrieval import evaluate_activity_retrieval
from ..map_ivr import MapIvrConfig, MapIvrFeatureExtractor, MapIvrModel
from .precision import scoring_precision
from .common import TRAINING_FUNCTIONS, TrainingRun, card_fields, card_metrics, dataset_arguments, training_curve_figures

__all__ = [*TRAINING_FUNCTIONS, "new_model"]

SYNTHETIC_DATASET = "xmodal/synthetic-activity"
# The synthetic test bed's size by default (train.py's --synthetic_videos_per_class; app.py's gallery is its test split).
SYNTHETIC_VIDEOS_PER_CLASS = 40
DEFAULT_BATCH_SIZE = 64
DEFAULT_LEARNING_RATE = 1e-3
DEFAULT_EPOCHS = 30
MODEL_CLASS = MapIvrModel
# Scoring settings: applied to a new model's config and to a loaded one's.
RUNTIME_CONFIG_FLAGS = ("num_samples", "lambda_v")


def add_arguments(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """MAP-IVR's own flags, in one argument group; returns them (train.py refuses them for other model types)."""
    group = parser.add_argument_group("MAP-IVR only (--model_type map_ivr)")
    return [
        group.add_argument("--num_samples", type=int, default=None, help="h, motion codes sampled per query for S_V (default: the config's). Applied to a loaded model too."),
        group.add_argument("--lambda_v", type=float, default=None, help="Weight of S_V in S_all (default: the config's). Applied to a loaded model too."),
        group.add_argument("--apivr_dir", default=None, help="A folder with APIVR-layout feature pickles (*_v, *_i, *_label; numpy arrays only)."),
        group.add_argument("--synthetic_videos_per_class", type=int, default=SYNTHETIC_VIDEOS_PER_CLASS, help="Synthetic test bed: training videos per class (and test videos)."),
    ]  # fmt: skip


def resolve_arguments(args: argparse.Namespace, given: set[str]) -> None:
    """Fills MAP-IVR's defaults and refuses flags that would be ignored (`ValueError` naming the flag)."""
    if args.streaming:
        raise ValueError("--streaming: needs a map-style dataset for MAP-IVR, which fits its feature normalisation on the whole training split")
    if args.apivr_dir and (args.dataset_name or args.train_file):
        raise ValueError("--apivr_dir: give one data source, not also --dataset_name / --train_file")
    if (args.apivr_dir or args.dataset_name or args.train_file) and "synthetic_videos_per_class" in given:
        raise ValueError("--synthetic_videos_per_class: applies only to the synthetic test bed (no --dataset_name / --train_file / --apivr_dir)")
    if args.per_device_train_batch_size is None:
        args.per_device_train_batch_size = DEFAULT_BATCH_SIZE
    if args.learning_rate is None:
        args.learning_rate = DEFAULT_LEARNING_RATE
    if args.num_train_epochs is None:
        args.num_train_epochs = DEFAULT_EPOCHS


def load_splits(args: argparse.Namespace) -> tuple[datasets.DatasetDict, str]:
    """Activity rows {image_features, video_features, proposal_scores?, label} and where they come from."""
    if args.apivr_dir:
        return load_apivr_features(args.apivr_dir, on_bad_rows=args.on_bad_rows), "APIVR features"
    if args.dataset_name or args.train_file:
        return load_activity_dataset(**dataset_arguments(args)), args.dataset_name or args.train_file
    return make_activity_dataset(num_videos_per_class=args.synthetic_videos_per_class, seed=args.seed), SYNTHETIC_DATASET


def build_model(args: argparse.Namespace, train_rows: datasets.Dataset) -> tuple[MapIvrModel, MapIvrFeatureExtractor, list[str]]:
    """
    MAP-IVR from a saved folder (with its fitted feature extractor), or a new one sized to the data with a feature
    extractor fitted on `train_rows` (APIVR's normalisation); --num_samples / --lambda_v go into either config. No
    parameter is new in the sense of a pretrained checkpoint, so the list of new parameter names is empty.
    """
    overrides = {name: getattr(args, name) for name in RUNTIME_CONFIG_FLAGS if getattr(args, name) is not None}
    if args.model_name_or_path:
        model = MapIvrModel.from_pretrained(args.model_name_or_path, use_safetensors=True, **overrides)
        return model, MapIvrFeatureExtractor.from_pretrained(args.model_name_or_path), []
    return (*new_model(train_rows, **overrides), [])


def new_model(train_rows: datasets.Dataset, **config_overrides) -> tuple[MapIvrModel, MapIvrFeatureExtractor]:
    """A new MAP-IVR sized to `train_rows` (feature sizes, classes) and its feature extractor fitted on them."""
    arrays = activity_arrays(train_rows)
    feature_extractor = MapIvrFeatureExtractor().fit(
        arrays["image_features"], arrays["video_features"], proposal_mask=arrays["proposal_mask"]
    )
    num_labels = getattr(train_rows.features["label"], "num_classes", None) or int(arrays["labels"].max()) + 1
    config = MapIvrConfig(
        image_feature_dim=arrays["image_features"].shape[-1],
        video_feature_dim=arrays["video_features"].shape[-1],
        num_labels=num_labels,
        **config_overrides,
    )
    return MapIvrModel(config), feature_extractor


def prepare_datasets(
    args: argparse.Namespace, model: MapIvrModel, processor: MapIvrFeatureExtractor,
    train_rows: datasets.Dataset, eval_rows: datasets.Dataset, accelerator: Accelerator,
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """The rows as they are: the collator normalises each batch with the feature extractor (nothing to share out)."""
    return train_rows, eval_rows


def connect_processes(model: MapIvrModel, accelerator: Accelerator) -> None:
    """Nothing: MAP-IVR's loss weights are fixed, no statistic needs the other processes."""


def build_collator(
    args: argparse.Namespace, model: MapIvrModel, processor: MapIvrFeatureExtractor, completed_steps: int = 0
) -> MapIvrCollator:
    """Bags padded and normalised by the fitted feature extractor (no schedule: `completed_steps` changes nothing)."""
    return MapIvrCollator(processor)


def check_before_training(args: argparse.Namespace, eval_dataset: datasets.Dataset) -> None:
    """Refuses, before the first step, an evaluation set with no query image."""
    if args.do_eval and "is_query" in eval_dataset.column_names and not any(eval_dataset["is_query"]):
        raise ValueError("the evaluation split has no query row (its 'is_query' column is false everywhere)")


def describe(args: argparse.Namespace, optimizer: torch.optim.Optimizer) -> str:
    """One log line on the optimiser's groups."""
    return f"MAP-IVR: {sum(p.numel() for group in optimizer.param_groups for p in group['params']):,} parameters train"


def new_learning_rate_multiplier(args: argparse.Namespace) -> float:
    """MAP-IVR starts from scratch everywhere: one learning rate."""
    return 1.0


def training_loss(args: argparse.Namespace, outputs, step: int) -> tuple[torch.Tensor, None]:
    """The model's own loss (classification, orthogonality, KL and reconstruction terms); no task weights."""
    return outputs.loss, None


def evaluate(
    args: argparse.Namespace, model: MapIvrModel, processor: MapIvrFeatureExtractor, eval_dataset, validation_rows=None
) -> dict:
    """
    Every test image against the whole test video gallery: mAP@10/20/50/100 for S_A, S_V and S_all (MAP-IVR makes no
    post-training choice, so `validation_rows` is unused).
    """
    return evaluate_activity_retrieval(
        model, eval_dataset, seed=args.seed, feature_extractor=processor, batch_size=args.per_device_eval_batch_size,
        precision=scoring_precision(args.mixed_precision),
    )


def save_figures(
    args: argparse.Namespace, model: MapIvrModel, processor, eval_rows: datasets.Dataset, history: list[dict], folder: Path
) -> list[dict]:
    """The loss curves for the model card."""
    return training_curve_figures(history, folder)


def model_card(args: argparse.Namespace, model: MapIvrModel, results: dict, run: TrainingRun, figures: list[dict]):
    """The model card, filled from this run's configuration and measured results."""
    from ..hub import build_model_card

    return build_model_card(
        "map_ivr",
        card_metrics(results),
        base_model=None,
        results_note=f"h = {results.get('num_samples')}, λ_v = {results.get('lambda_v')}." if results else "",
        feature_description="xmodal's transparent descriptor (colour, layout, gradient and frame-difference statistics)"
        if run.synthetic
        else "as provided by the dataset",
        figures=[{"file": figure["file"], "caption": figure["caption"]} for figure in figures],
        **card_fields(args, run, {}),
    )


def summary_lines(args: argparse.Namespace, results: dict) -> list[str]:
    """The protocol's numbers for the end-of-run summary."""
    lines = []
    for score in ("s_a", "s_v", "s_all"):
        if f"{score}/mAP@10" in results:
            maps = " / ".join(f"{results[f'{score}/mAP@{k}']:.4f}" for k in (10, 20, 50, 100))
            lines.append(f"{score:>6}  mAP@10/20/50/100 = {maps}")
    return lines


def run_title(args: argparse.Namespace) -> str:
    """The summary's title."""
    return "xmodal map_ivr"
