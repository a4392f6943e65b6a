"""
Upgrade safety: folders saved by an earlier xmodal (`tests/fixtures/golden/`) load with today's code, through the Auto
classes and the concrete classes, without `trust_remote_code`, and give the outputs stored beside them.

The fixtures are written by `tests/fixtures/make_golden_checkpoints.py` and never by this test. A failure here means
users' saved folders changed behaviour: fix the code (or convert old folders), do not regenerate the fixtures (see the
script's docstring for the only reasons to).
"""

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoImageProcessor,
    AutoModel,
    AutoModelForPreTraining,
    AutoProcessor,
    AutoTokenizer,
)

import xmodal  # noqa: F401  (registers the Auto classes: what "xmodal installed" means)
from xmodal import (
    FashionBertConfig,
    FashionBertForImageTextRetrieval,
    FashionBertForPreTraining,
    FashionBertImageProcessor,
    FashionBertModel,
    FashionBertProcessor,
    MapIvrConfig,
    MapIvrFeatureExtractor,
    MapIvrModel,
)

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "golden"
FASHIONBERT = GOLDEN / "fashionbert_pretraining"
MAP_IVR = GOLDEN / "map_ivr"
FORMAT_VERSION = "1"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")

# Not exact equality: the reference numbers were computed once, on one machine, with one torch build and one thread;
# other CPUs (AVX2 / AVX-512 kernels), thread counts and torch versions may sum float32 products in another order and
# differ in the last bits. rtol = atol = 1e-5 is about 100 float32 ulps of values of order 1, far below what any real
# change does: a parameter that no longer loads (random init), a changed normalisation or a reordered patch grid moves
# these outputs by 1e-2 or more. Integer and boolean tensors (token ids, masks) must be equal exactly.
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


def expected(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The stored tensors, and the `golden` metadata (format version, texts, seeds)."""
    path = folder / "expected_outputs.safetensors"
    with safe_open(path, "pt") as f:
        info = json.loads(f.metadata()["golden"])
    return load_file(path), info


def assert_matches(expected_tensors: dict[str, torch.Tensor], actual: dict[str, torch.Tensor], prefix: str) -> None:
    """Every stored `prefix.*` tensor is produced again (same names, dtypes, shapes, values within TOLERANCE)."""
    wanted = {k.removeprefix(prefix): v for k, v in expected_tensors.items() if k.startswith(prefix)}
    assert wanted, f"no stored tensors named {prefix}*"
    actual = {k: v for k, v in actual.items() if v is not None}
    assert set(actual) == set(wanted), f"{prefix}: outputs {sorted(actual)} but stored {sorted(wanted)}"
    for name, value in wanted.items():
        if value.is_floating_point():
            torch.testing.assert_close(actual[name], value, **TOLERANCE, msg=lambda m: f"{prefix}{name}: {m}")
        else:
            assert actual[name].dtype == value.dtype and torch.equal(actual[name], value), f"{prefix}{name} differs"


def test_every_golden_folder_is_checked_and_safetensors_only():
    assert sorted(p.name for p in GOLDEN.iterdir() if p.is_dir()) == ["fashionbert_pretraining", "map_ivr"]
    for folder in (FASHIONBERT, MAP_IVR):
        files = {p.name for p in folder.rglob("*") if p.is_file()}
        assert {"config.json", "model.safetensors", "expected_outputs.safetensors"} <= files
        assert not [name for name in files if name.endswith(PICKLE_SUFFIXES)], f"pickle-format files in {folder}"
        assert expected(folder)[1]["format_version"] == FORMAT_VERSION


# ---------------------------------------------------------------------------------------------------- FashionBERT


def fashionbert_raw_inputs(stored: dict[str, torch.Tensor], info: dict):
    images = [PIL.Image.fromarray(stored[f"raw.image_{i}"].numpy()) for i in range(len(info["texts"]))]
    return images, info["texts"]


@pytest.mark.parametrize("via", ["auto", "concrete"])
def test_fashionbert_golden_processor_gives_the_stored_inputs(via):
    stored, info = expected(FASHIONBERT)
    if via == "auto":
        processor = AutoProcessor.from_pretrained(FASHIONBERT)
        image_processor = AutoImageProcessor.from_pretrained(FASHIONBERT)
        tokenizer = AutoTokenizer.from_pretrained(FASHIONBERT)
    else:
        processor = FashionBertProcessor.from_pretrained(FASHIONBERT)
        image_processor = FashionBertImageProcessor.from_pretrained(FASHIONBERT)
        tokenizer = None
    assert type(processor) is FashionBertProcessor and type(image_processor) is FashionBertImageProcessor
    images, texts = fashionbert_raw_inputs(stored, info)

    inputs = dict(processor(images=images, text=texts, return_tensors="pt"))
    assert_matches(stored, inputs, "input.")
    pixels = image_processor(images, return_tensors="pt")
    torch.testing.assert_close(pixels["pixel_values"], stored["input.pixel_values"], **TOLERANCE)
    if tokenizer is not None:
        # The saved tokenizer alone (a plain BERT WordPiece tokenizer) gives the same ids.
        ids = tokenizer(texts, padding=True, return_tensors="pt")["input_ids"]
        assert torch.equal(ids, stored["input.input_ids"])


@pytest.mark.parametrize("via", ["auto", "concrete"])
def test_fashionbert_golden_models_give_the_stored_outputs(via):
    stored, _ = expected(FASHIONBERT)
    inputs = {k.removeprefix("input."): v for k, v in stored.items() if k.startswith("input.")}
    targets = {k.removeprefix("target."): v for k, v in stored.items() if k.startswith("target.")}
    if via == "auto":  # no trust_remote_code: the classes xmodal registered
        assert type(AutoConfig.from_pretrained(FASHIONBERT)) is FashionBertConfig
        pretraining, pretraining_info = AutoModelForPreTraining.from_pretrained(FASHIONBERT, output_loading_info=True)
        encoder, encoder_info = AutoModel.from_pretrained(FASHIONBERT, output_loading_info=True)
    else:
        pretraining, pretraining_info = FashionBertForPreTraining.from_pretrained(FASHIONBERT, output_loading_info=True)
        encoder, encoder_info = FashionBertModel.from_pretrained(FASHIONBERT, output_loading_info=True)
    # No Auto class exists for image-text retrieval: the concrete class in both cases.
    retrieval, retrieval_info = FashionBertForImageTextRetrieval.from_pretrained(FASHIONBERT, output_loading_info=True)
    assert type(pretraining) is FashionBertForPreTraining and type(encoder) is FashionBertModel
    # Every parameter came from the file (a renamed parameter would be missing and randomly initialised).
    assert pretraining_info["missing_keys"] == set() and pretraining_info["unexpected_keys"] == set()
    assert encoder_info["missing_keys"] == set() and retrieval_info["missing_keys"] == set()

    pretraining.eval(), encoder.eval(), retrieval.eval()
    with torch.no_grad():
        plain = pretraining(**inputs)
        with_targets = pretraining(**inputs, **targets)
        encoded = encoder(**inputs)
        retrieved = retrieval(**inputs, alignment_labels=targets["alignment_labels"])
    assert_matches(stored, dict(plain), "pretraining.")
    assert_matches(stored, dict(with_targets), "pretraining_with_targets.")
    assert_matches(stored, dict(encoded), "model.")
    assert_matches(stored, dict(retrieved), "retrieval.")


# ---------------------------------------------------------------------------------------------------- MAP-IVR


def map_ivr_extractor_inputs(stored: dict[str, torch.Tensor]) -> dict:
    num_bags = sum(1 for k in stored if k.startswith("raw.bag_"))
    return {
        "image_features": stored["raw.images"].numpy(),
        "video_features": [stored[f"raw.bag_{i}"].numpy() for i in range(num_bags)],
        "proposal_scores": [stored[f"raw.scores_{i}"].numpy() for i in range(num_bags)],
    }


@pytest.mark.parametrize("via", ["auto", "concrete"])
def test_map_ivr_golden_folder_gives_the_stored_inputs_outputs_and_scores(via):
    stored, info = expected(MAP_IVR)
    if via == "auto":  # no trust_remote_code: the classes xmodal registered
        assert type(AutoConfig.from_pretrained(MAP_IVR)) is MapIvrConfig
        extractor = AutoFeatureExtractor.from_pretrained(MAP_IVR)
        model, loading = AutoModel.from_pretrained(MAP_IVR, output_loading_info=True)
    else:
        extractor = MapIvrFeatureExtractor.from_pretrained(MAP_IVR)
        model, loading = MapIvrModel.from_pretrained(MAP_IVR, output_loading_info=True)
    assert type(extractor) is MapIvrFeatureExtractor and type(model) is MapIvrModel
    assert loading["missing_keys"] == set() and loading["unexpected_keys"] == set()

    inputs = dict(extractor(**map_ivr_extractor_inputs(stored)))
    assert_matches(stored, inputs, "input.")
    inputs = {k.removeprefix("input."): v for k, v in stored.items() if k.startswith("input.")}
    with torch.no_grad():
        output = model.eval()(**inputs, labels=stored["raw.labels"])
    assert_matches(stored, dict(output), "output.")

    # Scores with seeded motion codes: the codes themselves (drawn from the generator in one call), then the scores.
    seed = info["score_seed"]
    num_queries, num_samples = len(stored["raw.labels"]), model.config.num_samples
    codes = model.sample_motion_codes(num_queries, num_samples, torch.Generator().manual_seed(seed))
    torch.testing.assert_close(codes, stored["score.motion_codes"], **TOLERANCE)
    gallery = {k: inputs[k] for k in ("video_features", "proposal_scores", "proposal_mask")}
    scores = model.score(inputs["image_features"], **gallery, generator=torch.Generator().manual_seed(seed))
    assert_matches(stored, {"motion_codes": codes, **dict(scores)}, "score.")
    # The same scores from the stored codes (independent of the random generator).
    replay = model.score(inputs["image_features"], **gallery, motion_codes=stored["score.motion_codes"])
    for name in ("s_a", "s_v", "s_all"):
        torch.testing.assert_close(replay[name], stored[f"score.{name}"], **TOLERANCE)
    assert np.isfinite(scores.s_all.numpy()).all()
