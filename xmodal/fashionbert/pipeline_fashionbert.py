# Copyright 2025 The xmodal authors. Licensed under the Apache License, Version 2.0.
"""
`fashion-retrieval`: a transformers pipeline that ranks candidate images for a text, or candidate texts for an image,
with a FashionBERT checkpoint's score: the log-odds of "aligned" (`tia_logits[:, 0] - tia_logits[:, 1]`), or, for a
model with dual-encoder heads and a fusion weight in its config, the fused score retrieval ranks by
(`FashionBertModel.fuse_scores`: the first stage's contrastive logit blended with those log-odds).

Saved folders carry this file and a `custom_pipelines` entry in `config.json`, so that without xmodal:

```python
from transformers import pipeline

search = pipeline("fashion-retrieval", model="user/fashionbert-checkpoint", trust_remote_code=True)
search("Red pleated skirt.", candidate_images=[image_a, image_b, image_c], top_k=2)
# [{"score": 3.1, "index": 2, "image": image_c}, {"score": -0.4, "index": 0, "image": image_a}]
search(image_a, candidate_texts=["Red pleated skirt.", "Black wool coat."])
# [{"score": 1.7, "index": 1, "text": "Black wool coat."}, {"score": -2.2, "index": 0, "text": "Red pleated skirt."}]
```

A query is a text when it is a `str`; anything else (a PIL image, a NumPy array or torch tensor, a `pathlib.Path` to
an image file) is an image query. A list of queries gives a list of rankings. Every (query, candidate) pair goes
through the cross-encoder, `pair_batch_size` pairs per forward pass, each image's patch features computed once (and,
with a fusion weight, each text and image embedded once by the dual-encoder heads). `precision="auto"` (the default)
scores under bf16 autocast where the device computes bf16 natively (a CUDA GPU with bf16, a CPU with AVX-512-BF16 or
AMX units), float32 elsewhere; `"bf16"` or `"float32"` forces one.

This file imports only transformers, torch and the standard library: it runs as remote code in a folder on its own.
"""

import os
import sys
from collections.abc import Sequence
from typing import Any

import torch
from transformers import Pipeline


__all__ = ["FashionRetrievalPipeline", "TASK"]

TASK = "fashion-retrieval"
_DEFAULT_PAIR_BATCH_SIZE = 64
# Model classes (in the folder's modeling file) that carry the alignment head, tried in order when the pipeline is
# given the bare encoder (a retrieval folder maps only `AutoModel`, see `_with_alignment_head`).
_HEAD_CLASSES = ("FashionBertForImageTextRetrieval", "FashionBertForPreTraining")
_PRECISIONS = ("auto", "bf16", "float32")


# Copied from xmodal.precision.bf16_supported (remote code cannot import xmodal; a test checks that they agree).
def _bf16_supported(device: torch.device) -> bool:
    """Whether `device` computes in bfloat16 natively: a CUDA GPU with bf16, or a CPU with AVX-512-BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(probe is not None for probe in probes):
        return any(probe() for probe in probes if probe is not None)
    try:  # an older torch without the probes: the kernel's CPU flags (Linux)
        with open("/proc/cpuinfo") as handle:
            flags = set(handle.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def _has_alignment_head(model) -> bool:
    head = getattr(getattr(model, "cls", None), "seq_relationship", None)
    return isinstance(head, torch.nn.Module)


def _with_alignment_head(model):
    """
    `model` when it has the alignment head (`FashionBertForPreTraining`, `FashionBertForImageTextRetrieval`).

    A bare `FashionBertModel` whose config names a class with the head in `architectures` (what `pipeline()` loads
    from a retrieval folder, whose `auto_map` has no Auto class for that class) is reloaded as that class, taken from
    the same module as the encoder (the folder's own `modeling_fashionbert.py`), from the same checkpoint.
    """
    if _has_alignment_head(model):
        return model
    architectures = list(getattr(model.config, "architectures", None) or [])
    module = sys.modules.get(type(model).__module__)
    source = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None)
    for name in _HEAD_CLASSES:
        model_class = getattr(module, name, None)
        if name in architectures and model_class is not None and source:
            return model_class.from_pretrained(source, dtype=model.dtype).eval()
    raise ValueError(
        f"`fashion-retrieval` needs a FashionBERT model with its alignment head (FashionBertForPreTraining or "
        f"FashionBertForImageTextRetrieval), got {type(model).__name__} (architectures: {architectures})."
    )


class _Candidates:
    """The candidates as given, carried through `forward` untouched (the base class moves lists' tensors)."""

    def __init__(self, items: list):
        self.items = items


def _check_candidates(candidates, name: str) -> list:
    if not isinstance(candidates, (list, tuple)):
        raise TypeError(f"`{name}` must be a list, got {type(candidates).__name__}.")
    if len(candidates) == 0:
        raise ValueError(f"`{name}` is empty: pass at least one candidate to rank.")
    return list(candidates)


def _check_positive_int(value, name: str):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    return value


class FashionRetrievalPipeline(Pipeline):
    """
    Ranks `candidate_images` for a text query, or `candidate_texts` for an image query, best first.

    Call: `pipe(query, candidate_images=None, candidate_texts=None, top_k=None, pair_batch_size=64, precision="auto")`;
    exactly one of
    `candidate_images` (for a `str` query) and `candidate_texts` (for an image query) is given. Returns a list of
    `{"score": float, "index": int, "image": candidate}` (text query) or `{"score": float, "index": int, "text": str}`
    (image query), sorted by score, highest first (ties keep the candidates' order); `index` is the candidate's
    position in the list given, `score` the model's ranking score (higher = better match): the fused score when its
    config has a `fusion_weight`, else the alignment log-odds. `top_k` keeps the best `top_k` (default: all).
    `precision`: "auto" (bf16 autocast where the device computes bf16 natively, else float32), "bf16" or "float32".

    The model needs the alignment head: `FashionBertForPreTraining` (the folders train.py writes, loaded through
    `AutoModelForPreTraining`) or `FashionBertForImageTextRetrieval`; the components come from the checkpoint's
    `FashionBertProcessor`.
    """

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

    def __init__(self, model, *args, **kwargs):
        super().__init__(_with_alignment_head(model), *args, **kwargs)
        if self.processor is None:
            raise ValueError(
                "`fashion-retrieval` needs the checkpoint's FashionBertProcessor: save it with the model, or pass "
                "`processor=`."
            )
        self.model.eval()

    def _sanitize_parameters(
        self, candidate_images=None, candidate_texts=None, top_k=None, pair_batch_size=None, precision=None, **unexpected
    ):
        if unexpected:
            raise TypeError(
                f"unexpected argument(s) {sorted(unexpected)}; `fashion-retrieval` takes candidate_images, "
                "candidate_texts, top_k, pair_batch_size and precision."
            )
        preprocess, forward, postprocess = {}, {}, {}
        if candidate_images is not None:
            preprocess["candidate_images"] = candidate_images
        if candidate_texts is not None:
            preprocess["candidate_texts"] = candidate_texts
        if pair_batch_size is not None:
            forward["pair_batch_size"] = _check_positive_int(pair_batch_size, "pair_batch_size")
        if precision is not None:
            if precision not in _PRECISIONS:
                raise ValueError(f"`precision` must be one of {', '.join(map(repr, _PRECISIONS))}, got {precision!r}.")
            forward["precision"] = precision
        if top_k is not None:
            postprocess["top_k"] = _check_positive_int(top_k, "top_k")
        return preprocess, forward, postprocess

    def preprocess(self, query, candidate_images=None, candidate_texts=None) -> dict[str, Any]:
        if candidate_images is not None and candidate_texts is not None:
            raise ValueError(
                "pass `candidate_images` (for a text query) or `candidate_texts` (for an image query), not both."
            )
        if isinstance(query, str):
            if candidate_images is None:
                raise ValueError("a text query ranks images: pass `candidate_images=[...]`.")
            candidates = _check_candidates(candidate_images, "candidate_images")
            texts, images, direction = [query], candidates, "text_to_image"
        else:
            if query is None or isinstance(query, (dict, bytes, list, tuple)):
                raise TypeError(
                    "the query must be a text (str) or one image (PIL image, NumPy array, torch tensor or "
                    f"pathlib.Path), got {type(query).__name__}."
                )
            if candidate_texts is None:
                raise ValueError("an image query ranks texts: pass `candidate_texts=[...]`.")
            candidates = _check_candidates(candidate_texts, "candidate_texts")
            bad = [i for i, text in enumerate(candidates) if not isinstance(text, str)]
            if bad:
                raise TypeError(f"candidate_texts[{bad[0]}] is {type(candidates[bad[0]]).__name__}, not a str.")
            texts, images, direction = candidates, [query], "image_to_text"
        images = [os.fspath(image) if isinstance(image, os.PathLike) else image for image in images]
        encoded_text = self.processor(text=texts, return_tensors="pt")
        encoded_images = self.processor(images=images, return_tensors="pt")
        count = len(candidates)
        one, each = torch.zeros(count, dtype=torch.long), torch.arange(count)
        inputs = {
            "input_ids": encoded_text["input_ids"],
            "attention_mask": encoded_text["attention_mask"],
            "pixel_values": encoded_images["pixel_values"],
            "patch_mask": encoded_images["patch_mask"],
            "text_index": one if direction == "text_to_image" else each,
            "image_index": each if direction == "text_to_image" else one,
            "direction": direction,
            "candidates": _Candidates(candidates),
        }
        if "token_type_ids" in encoded_text:
            inputs["token_type_ids"] = encoded_text["token_type_ids"]
        return inputs

    def _forward(
        self, inputs: dict[str, Any], pair_batch_size: int = _DEFAULT_PAIR_BATCH_SIZE, precision: str = "auto"
    ) -> dict[str, Any]:
        # The base class runs this under no_grad, with the tensors on the pipeline's device.
        device = self.model.device
        bf16 = precision == "bf16" or (precision == "auto" and _bf16_supported(device))
        device_type = device.type if device.type in ("cpu", "cuda") else "cpu"
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16 and device.type in ("cpu", "cuda")):
            scores = self._scores(inputs, pair_batch_size)
        return {"scores": scores, "direction": inputs["direction"], "candidates": inputs["candidates"]}

    def _scores(self, inputs: dict[str, Any], pair_batch_size: int) -> torch.Tensor:
        features = self.model.base_model.get_patch_features(inputs["pixel_values"])
        input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
        token_type_ids = inputs.get("token_type_ids")
        text_index, image_index = inputs["text_index"], inputs["image_index"]
        scores = []
        for start in range(0, text_index.numel(), pair_batch_size):
            texts = text_index[start : start + pair_batch_size]
            images = image_index[start : start + pair_batch_size]
            mask = attention_mask[texts]
            # Trailing columns that are padding in every row of the batch are dropped (as `score_pairs` does).
            used = mask.bool().any(dim=0).nonzero()
            length = int(used.max()) + 1 if used.numel() else 1
            output = self.model(
                input_ids=input_ids[texts][:, :length],
                attention_mask=mask[:, :length],
                token_type_ids=None if token_type_ids is None else token_type_ids[texts][:, :length],
                patch_features=features[images],
                patch_mask=inputs["patch_mask"][images],
                return_dict=True,
            )
            logits = output.tia_logits
            scores.append((logits[:, 0] - logits[:, 1]).float())
        scores = torch.cat(scores)
        encoder = self.model.base_model
        if encoder.config.fusion_weight is not None:  # the product's score: fused with the first stage's similarity
            text_vectors = encoder.get_text_embeddings(input_ids, attention_mask, token_type_ids)
            image_vectors = encoder.get_image_embeddings(patch_features=features, patch_mask=inputs["patch_mask"])
            similarity = (text_vectors[text_index].float() * image_vectors[image_index].float()).sum(-1)
            scores = encoder.fuse_scores(scores, similarity).float()
        return scores

    def postprocess(self, outputs: dict[str, Any], top_k: int | None = None) -> list[dict[str, Any]]:
        scores = outputs["scores"].cpu()
        order = torch.sort(scores, descending=True, stable=True).indices.tolist()
        if top_k is not None:
            order = order[:top_k]
        key = "image" if outputs["direction"] == "text_to_image" else "text"
        candidates: Sequence = outputs["candidates"].items
        return [{"score": float(scores[i]), "index": int(i), key: candidates[i]} for i in order]
