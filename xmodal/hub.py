"""Hub-ready folders: safetensors weights, the model folder's code for `trust_remote_code`, the processor or
feature extractor, `eval_results.json` and a model card generated from the run's own results; and pushes.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from transformers.dynamic_module_utils import custom_object_save

from .fashionbert.pipeline_fashionbert import TASK as FASHION_RETRIEVAL_TASK
from .fashionbert.pipeline_fashionbert import FashionRetrievalPipeline
from .files import atomic_directory

__all__ = [
    "AUTO_MAPS",
    "build_model_card",
    "create_hub_repo",
    "custom_pipelines",
    "push_folder_to_hub",
    "register_for_remote_code",
    "save_model_folder",
]

_TEMPLATES = Path(__file__).parent / "model_cards"

# Every Auto class a saved folder answers to, per model type: one `auto_map` in the config lists them all, so a
# folder saved from any of the model's classes loads through each of them.
AUTO_MAPS: dict[str, dict[str, str]] = {
    "fashionbert": {
        "AutoConfig": "configuration_fashionbert.FashionBertConfig",
        "AutoModel": "modeling_fashionbert.FashionBertModel",
        "AutoModelForPreTraining": "modeling_fashionbert.FashionBertForPreTraining",
    },
    "map_ivr": {
        "AutoConfig": "configuration_map_ivr.MapIvrConfig",
        "AutoModel": "modeling_map_ivr.MapIvrModel",
    },
}
# transformers has no Auto class for image-text retrieval (ViLT's `ViltForImageAndTextRetrieval` has none either), so
# a retrieval folder maps only AutoConfig and AutoModel (its encoder, `bert.*`) and carries the code. The full class
# loads with `FashionBertForImageTextRetrieval.from_pretrained(folder)` where xmodal is installed, and from the
# folder's own code with `transformers.dynamic_module_utils.get_class_from_dynamic_module(
# "modeling_fashionbert.FashionBertForImageTextRetrieval", folder).from_pretrained(folder)`.
_MODEL_AUTO_CLASS = {
    "FashionBertModel": "AutoModel",
    "FashionBertForPreTraining": "AutoModelForPreTraining",
    "FashionBertForImageTextRetrieval": None,
    "MapIvrModel": "AutoModel",
}
_BASE_AUTO_CLASSES = ("AutoConfig", "AutoModel")
# The custom transformers pipeline a model type's folders carry (its file is copied next to the model's code), so that
# `pipeline(task, model=folder_or_repo, trust_remote_code=True)` works without xmodal.
_PIPELINES = {"fashionbert": (FASHION_RETRIEVAL_TASK, FashionRetrievalPipeline)}
_PROCESSOR_AUTO_CLASS = {
    "FashionBertProcessor": "AutoProcessor",
    "FashionBertImageProcessor": "AutoImageProcessor",
    "MapIvrFeatureExtractor": "AutoFeatureExtractor",
}


def register_for_remote_code(model, processor=None) -> None:
    """
    Mark the model, its config and processor for remote code, and write the full `auto_map` into the config.

    A model without an Auto class of its own (`FashionBertForImageTextRetrieval`) is not registered: its folder's
    `auto_map` lists only `AutoConfig` and `AutoModel` (the base encoder), and `save_model_folder` copies its code.
    A FashionBERT config also gets `custom_pipelines` (the `fashion-retrieval` pipeline, see `custom_pipelines`).
    """
    model_type = model.config.model_type
    if model_type not in AUTO_MAPS or type(model).__name__ not in _MODEL_AUTO_CLASS:
        raise ValueError(f"no Hub auto-class mapping for {type(model).__name__} (model_type {model_type!r})")
    type(model.config).register_for_auto_class("AutoConfig")
    auto_class = _MODEL_AUTO_CLASS[type(model).__name__]
    if auto_class is None:
        model.config.auto_map = {k: v for k, v in AUTO_MAPS[model_type].items() if k in _BASE_AUTO_CLASSES}
    else:
        type(model).register_for_auto_class(auto_class)
        model.config.auto_map = dict(AUTO_MAPS[model_type])
    pipelines = custom_pipelines(model)
    if pipelines:
        model.config.custom_pipelines = pipelines
    if processor is not None:
        type(processor).register_for_auto_class(_PROCESSOR_AUTO_CLASS[type(processor).__name__])
        image_processor = getattr(processor, "image_processor", None)
        if image_processor is not None:
            type(image_processor).register_for_auto_class(_PROCESSOR_AUTO_CLASS[type(image_processor).__name__])


def custom_pipelines(model) -> dict[str, dict]:
    """
    The `custom_pipelines` config entry of `model`'s folder (`{}` for a model type without a pipeline), written as
    transformers' `Pipeline.save_pretrained` writes it for a pipeline registered with
    `PIPELINE_REGISTRY.register_pipeline(task, pipeline_class, pt_model=...)`: `{task: {"impl":
    "<module>.<class>", "pt": [<transformers Auto class names>], "type": ...}}`.

    `pt` names the Auto class `pipeline()` loads the weights with (`getattr(transformers, name)`, remote code from the
    folder's `auto_map`): `AutoModelForPreTraining` for a `FashionBertForPreTraining` folder (train.py's, with the
    alignment head the ranking needs); `AutoModel` for a `FashionBertForImageTextRetrieval` folder, whose `auto_map`
    has no Auto class for the retrieval model, and whose encoder the pipeline reloads as the full class from the
    folder's own modeling file (`architectures` names it).
    """
    model_type = model.config.model_type
    if model_type not in _PIPELINES:
        return {}
    task, pipeline_class = _PIPELINES[model_type]
    auto_class = _MODEL_AUTO_CLASS.get(type(model).__name__) or "AutoModel"
    impl = f"{pipeline_class.__module__.split('.')[-1]}.{pipeline_class.__name__}"
    return {task: {"impl": impl, "pt": [auto_class], "type": "multimodal"}}


def save_model_folder(
    output_dir: str | os.PathLike,
    model,
    processor=None,
    eval_results: Mapping[str, Any] | None = None,
    model_card: ModelCard | None = None,
    figures: Mapping[str, str | os.PathLike] | None = None,
) -> Path:
    """
    Writes a complete Hub-ready folder, atomically (a crash never leaves a half-written `output_dir`).

    Contents: `model.safetensors` (sharded when large) and `config.json` with its `auto_map` (and, for FashionBERT,
    `custom_pipelines`: see `custom_pipelines`), the model folder's code files (FashionBERT's with
    `pipeline_fashionbert.py`), the processor / feature extractor (and tokenizer) files, `eval_results.json` when given,
    `README.md` (the model card) when given, and `figures` (file name in the folder -> source file, e.g. the PNGs
    the card shows).
    """
    register_for_remote_code(model, processor)
    with atomic_directory(output_dir) as folder:
        model.save_pretrained(folder, safe_serialization=True)
        if _MODEL_AUTO_CLASS[type(model).__name__] is None:
            # save_pretrained copies only registered classes' code: add the model's file (and its siblings).
            custom_object_save(model, folder)
        if model.config.model_type in _PIPELINES:
            # The pipeline's file (it imports only transformers and torch), next to the model's code.
            custom_object_save(_PIPELINES[model.config.model_type][1], folder)
        if processor is not None:
            processor.save_pretrained(folder)
        if eval_results is not None:
            (folder / "eval_results.json").write_text(json.dumps(eval_results, indent=2, sort_keys=True) + "\n")
        if model_card is not None:
            model_card.save(folder / "README.md")
        for name, source in (figures or {}).items():
            shutil.copyfile(source, folder / name)
    return Path(output_dir)


# FashionBERT's scores in the card, by key prefix (see `xmodal.evaluation.evaluate_fashion_retrieval`).
_FASHIONBERT_SCORES = (("", "cross-encoder (paper)"), ("first_stage/", "first stage"), ("fused/", "fused (product)"))


def _fashionbert_results(eval_results: Mapping[str, float]) -> tuple[list[dict], list[dict]]:
    """
    The Rank@K rows (one per score and direction measured: the cross-encoder's, and with dual-encoder heads the first
    stage's and the fused score's) and the matching rows (accuracy and AUC of the alignment head, AUC of the others).
    """
    rows = []
    for prefix, score in _FASHIONBERT_SCORES:
        for direction, label in (("image_to_text", "image → text"), ("text_to_image", "text → image")):
            if f"{prefix}{direction}/R@1" in eval_results:
                ranks = {f"r{k}": f"{eval_results[f'{prefix}{direction}/R@{k}']:.2f}" for k in (1, 5, 10)}
                rows.append({"score": score, "direction": label, **ranks})
    matching = [
        {"metric": label, "value": f"{eval_results[key]:{spec}}"}
        for key, label, spec in (
            ("tia/accuracy", "accuracy (%), cross-encoder", ".2f"), ("tia/auc", "ROC AUC, cross-encoder", ".4f"),
            ("first_stage/auc", "ROC AUC, first stage", ".4f"), ("fused/auc", "ROC AUC, fused", ".4f"),
        )
        if key in eval_results
    ]  # fmt: skip
    return rows, matching


def _map_ivr_results(eval_results: Mapping[str, float]) -> list[dict]:
    """One mAP@K row per score measured (S_A, S_V, S_all)."""
    return [
        {"score": label, **{f"k{k}": f"{eval_results[f'{score}/mAP@{k}']:.4f}" for k in (10, 20, 50, 100)}}
        for score, label in (("s_a", "S_A"), ("s_v", "S_V"), ("s_all", "S_all"))
        if f"{score}/mAP@10" in eval_results
    ]


def _card_figures(figures: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """`{"file", "caption"}` per figure (the caption defaults to the file name); other keys are ignored."""
    out = []
    for figure in figures:
        if not figure.get("file"):
            raise ValueError(f"a model card figure needs a 'file' (its name in the model folder), got {dict(figure)!r}")
        out.append({"file": str(figure["file"]), "caption": str(figure.get("caption") or Path(figure["file"]).stem)})
    return out


def build_model_card(
    model_type: str,
    eval_results: Mapping[str, float],
    *,
    model_name: str,
    repo_id: str,
    dataset_name: str,
    dataset_description: str,
    base_model: str | None,
    command: str,
    hyperparameters: Mapping[str, Any],
    limitations: str,
    results_note: str = "",
    license: str = "apache-2.0",
    figures: Sequence[Mapping[str, Any]] = (),
    fusion_weight: float | None = None,
    **template_fields: Any,
) -> ModelCard:
    """
    A model card from `xmodal/model_cards/<model_type>.md`, with `model-index` metadata holding the run's results.

    `eval_results` uses the names train.py reports: `"image_to_text/R@1"`... and the matching metrics
    `"tia/accuracy"` (%) and `"tia/auc"` for FashionBERT, `"s_all/mAP@10"`... for MAP-IVR (percentages for
    FashionBERT's Rank@K, fractions in [0, 1] for mAP). `base_model` (a Hub repo id, or None when the model was not
    initialised from one) is named in the text and as `base_model` metadata (the Hub's model tree). `figures` are
    `{"file": name in the model folder, "caption": ...}` (e.g. the PNGs `save_model_folder` copies), shown in order.
    `fusion_weight` (FashionBERT with dual-encoder heads: `config.fusion_weight`) describes the fused score; None for
    a model ranked by its cross-encoder alone.
    """
    matching: list[dict] = []
    if model_type == "fashionbert":
        task_type, task_name = "text-image-retrieval", "Text-image retrieval (FashionBERT protocol)"
        rows, matching = _fashionbert_results(eval_results)
    elif model_type == "map_ivr":
        task_type, task_name, rows = "image-to-video-retrieval", "Activity image-to-video retrieval", _map_ivr_results(eval_results)
    else:
        raise ValueError(f"unknown model_type {model_type!r}")
    card_data = ModelCardData(
        model_name=model_name,
        license=license,
        library_name="transformers",
        base_model=base_model or None,
        datasets=[dataset_name],
        tags=[model_type, "xmodal", "custom_code"],
        eval_results=[
            EvalResult(
                task_type=task_type,
                task_name=task_name,
                dataset_type=dataset_name,
                dataset_name=dataset_name,
                dataset_split="test",
                metric_type=name,
                metric_name=name,
                metric_value=float(value),
            )
            for name, value in eval_results.items()
        ],
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(_TEMPLATES / f"{model_type}.md"),
        model_name=model_name,
        repo_id=repo_id,
        dataset_description=dataset_description,
        results_table=rows,
        matching_table=matching,
        results_note=results_note,
        base_model=base_model or None,
        command=command,
        hyperparameters=dict(hyperparameters),
        limitations=limitations,
        figures=_card_figures(figures),
        fusion_weight=fusion_weight,
        **template_fields,
    )


def create_hub_repo(repo_id: str, token: str | None = None, private: bool | None = None) -> str:
    """Creates `repo_id` if needed; returns its full `namespace/name` (a bare name goes to the token owner)."""
    return HfApi(token=token).create_repo(repo_id, private=private, exist_ok=True).repo_id


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload model trained with xmodal",
    path_in_repo: str | None = None,
    endpoint: str | None = None,
) -> str:
    """
    Creates `repo_id` if needed and uploads `folder`; returns the commit URL.

    A bare name (no `namespace/`) goes to the token owner's namespace, as with `create_repo`. `endpoint` defaults to
    `HF_ENDPOINT` (read when huggingface_hub is imported), else https://huggingface.co.
    """
    api = HfApi(endpoint=endpoint, token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    info = api.upload_folder(
        folder_path=str(folder), repo_id=repo_id, path_in_repo=path_in_repo, commit_message=commit_message
    )
    return str(info)
