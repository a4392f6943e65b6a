"""
The `fashion-retrieval` custom pipeline saved with FashionBERT folders (xmodal installed here; the same pipeline
without xmodal is tested in tests/test_remote_code_isolated.py).
"""

import json
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import pipeline

from xmodal import (
    FashionBertModel,
    MapIvrConfig,
    MapIvrFeatureExtractor,
    MapIvrModel,
)
from xmodal.fashionbert import FashionRetrievalPipeline
from xmodal.hub import build_model_card, custom_pipelines, save_model_folder

from tiny_fashionbert import save_tiny_fashionbert_folders

# Exactness tests: rankings compared with float32 brute force (bf16 scoring has its own tests).
pytestmark = pytest.mark.usefixtures("float32_scoring")

TEXTS = ["red silk sleeveless dress", "black wool coat", "red coat, silk sleeve", "wool"]
TASK = "fashion-retrieval"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("pipeline")
    fashionbert = save_tiny_fashionbert_folders(root)
    processor, pretraining, retrieval = fashionbert["processor"], fashionbert["pretraining"], fashionbert["retrieval"]
    rng = np.random.default_rng(3)
    images = [PIL.Image.fromarray(rng.integers(0, 256, size=(16 + 2 * i, 16, 3), dtype=np.uint8)) for i in range(5)]
    return {"root": root, "processor": processor, "pretraining": pretraining, "retrieval": retrieval, "images": images}


def direct_scores(saved: dict, texts: list[str], images: list, text_indices, image_indices) -> torch.Tensor:
    """The model's own scoring of (text, image) pairs: `FashionBertForImageTextRetrieval.score_pairs`."""
    processor, model = saved["processor"], saved["retrieval"]
    encoded = processor(text=texts, return_tensors="pt")
    with torch.no_grad():
        features = model.bert.get_patch_features(processor(images=images, return_tensors="pt")["pixel_values"])
    return model.score_pairs(
        encoded["input_ids"], encoded["attention_mask"], features, torch.as_tensor(text_indices),
        torch.as_tensor(image_indices), token_type_ids=encoded["token_type_ids"],
    )  # fmt: skip


@pytest.fixture(scope="module", params=["fashionbert", "fashionbert_retrieval"])
def pipe(request, saved):
    return pipeline(TASK, model=str(saved["root"] / request.param), trust_remote_code=True, device="cpu")


def test_folders_carry_the_pipeline_file_and_custom_pipelines(saved):
    for name, auto_class in (("fashionbert", "AutoModelForPreTraining"), ("fashionbert_retrieval", "AutoModel")):
        folder = saved["root"] / name
        source = Path(sys.modules[FashionRetrievalPipeline.__module__].__file__)
        assert (folder / "pipeline_fashionbert.py").read_text() == source.read_text()
        config = json.loads((folder / "config.json").read_text())
        assert config["custom_pipelines"] == {
            TASK: {"impl": "pipeline_fashionbert.FashionRetrievalPipeline", "pt": [auto_class], "type": "multimodal"}
        }


def test_map_ivr_folders_have_no_custom_pipeline(tmp_path):
    config = MapIvrConfig(
        image_feature_dim=6, video_feature_dim=8, appearance_dim=4, motion_dim=4, latent_dim=3,
        encoder_hidden_sizes=[5], decoder_hidden_sizes=[7], num_labels=3, proposal_top_k=2, num_samples=4,
    )  # fmt: skip
    model = MapIvrModel(config)
    rng = np.random.default_rng(0)
    extractor = MapIvrFeatureExtractor().fit(rng.normal(size=(10, 6)), rng.normal(size=(10, 3, 8)))
    assert custom_pipelines(model) == {}
    save_model_folder(tmp_path / "map_ivr", model, extractor)
    assert "custom_pipelines" not in json.loads((tmp_path / "map_ivr" / "config.json").read_text())
    assert not (tmp_path / "map_ivr" / "pipeline_fashionbert.py").exists()


def test_pipeline_loads_the_model_with_its_alignment_head(saved, pipe):
    assert type(pipe).__name__ == "FashionRetrievalPipeline"
    assert type(pipe.model).__name__ in ("FashionBertForPreTraining", "FashionBertForImageTextRetrieval")
    assert type(pipe.model).__name__ == pipe.model.config.architectures[0]
    assert not pipe.model.training
    for name, tensor in saved["retrieval"].state_dict().items():
        assert torch.equal(pipe.model.state_dict()[name], tensor), name


def test_text_query_ranks_images_like_the_model(saved, pipe):
    images = saved["images"]
    ranking = pipe(TEXTS[0], candidate_images=images)
    expected = direct_scores(saved, [TEXTS[0]], images, [0] * len(images), range(len(images)))
    assert [r["index"] for r in ranking] == torch.sort(expected, descending=True, stable=True).indices.tolist()
    assert sorted(r["index"] for r in ranking) == list(range(len(images)))
    for row in ranking:
        assert set(row) == {"score", "index", "image"} and isinstance(row["score"], float)
        assert row["image"] is images[row["index"]]
        assert row["score"] == pytest.approx(float(expected[row["index"]]), abs=1e-5)
    assert [r["score"] for r in ranking] == sorted((r["score"] for r in ranking), reverse=True)
    top = pipe(TEXTS[0], candidate_images=images, top_k=2)
    assert [r["index"] for r in top] == [r["index"] for r in ranking[:2]]


def test_image_query_ranks_texts_like_the_model(saved, pipe):
    image = saved["images"][1]
    ranking = pipe(image, candidate_texts=TEXTS, top_k=3)
    expected = direct_scores(saved, TEXTS, [image], range(len(TEXTS)), [0] * len(TEXTS))
    order = torch.sort(expected, descending=True, stable=True).indices.tolist()
    assert [r["index"] for r in ranking] == order[:3]
    for row in ranking:
        assert set(row) == {"score", "index", "text"} and row["text"] == TEXTS[row["index"]]
        assert row["score"] == pytest.approx(float(expected[row["index"]]), abs=1e-5)
    # NumPy image, one pair per forward pass: the same scores.
    again = pipe(np.asarray(image), candidate_texts=TEXTS, top_k=3, pair_batch_size=1)
    assert [r["index"] for r in again] == order[:3]
    assert [r["score"] for r in again] == pytest.approx([r["score"] for r in ranking], abs=1e-5)


def test_a_list_of_queries_gives_one_ranking_each(saved, pipe):
    images = saved["images"][:3]
    rankings = pipe(TEXTS[:2], candidate_images=images, top_k=2)
    assert len(rankings) == 2
    for text, ranking in zip(TEXTS[:2], rankings):
        assert ranking == pipe(text, candidate_images=images, top_k=2)


def test_image_path_query_and_candidates(saved, pipe, tmp_path):
    paths = []
    for i, image in enumerate(saved["images"][:3]):
        paths.append(tmp_path / f"{i}.png")
        image.save(paths[-1])
    by_path = pipe(TEXTS[1], candidate_images=paths)
    by_image = pipe(TEXTS[1], candidate_images=saved["images"][:3])
    assert [r["index"] for r in by_path] == [r["index"] for r in by_image]
    assert [r["image"] for r in by_path] == [paths[r["index"]] for r in by_path]
    by_path = pipe(paths[0], candidate_texts=TEXTS)
    assert [r["index"] for r in by_path] == [r["index"] for r in pipe(saved["images"][0], candidate_texts=TEXTS)]


@pytest.mark.parametrize(
    "query, kwargs, error, match",
    [
        ("red dress", {}, ValueError, "candidate_images"),
        ("red dress", {"candidate_texts": ["a"]}, ValueError, "candidate_images"),
        ("red dress", {"candidate_images": []}, ValueError, "empty"),
        ("red dress", {"candidate_images": "img.png"}, TypeError, "must be a list"),
        (None, {"candidate_texts": ["a"]}, TypeError, "the query must be"),
        ({"text": "a"}, {"candidate_texts": ["a"]}, TypeError, "the query must be"),
        ("IMAGE", {}, ValueError, "candidate_texts"),
        ("IMAGE", {"candidate_texts": ["a", 3]}, TypeError, r"candidate_texts\[1\] is int"),
        ("IMAGE", {"candidate_texts": ["a"], "candidate_images": ["b"]}, ValueError, "not both"),
        ("IMAGE", {"candidate_texts": ["a"], "top_k": 0}, ValueError, "top_k"),
        ("IMAGE", {"candidate_texts": ["a"], "pair_batch_size": 1.5}, ValueError, "pair_batch_size"),
        ("IMAGE", {"candidate_texts": ["a"], "candidates": ["a"]}, TypeError, "unexpected argument"),
    ],
)
def test_clear_errors(saved, query, kwargs, error, match):
    pipe = FashionRetrievalPipeline(model=saved["retrieval"], processor=saved["processor"], device="cpu")
    if isinstance(query, str) and query == "IMAGE":
        query = saved["images"][0]
    with pytest.raises(error, match=match):
        pipe(query, **kwargs)


def test_in_memory_pipeline_matches_the_saved_one(saved):
    direct = FashionRetrievalPipeline(model=saved["pretraining"], processor=saved["processor"], device="cpu")
    loaded = pipeline(TASK, model=str(saved["root"] / "fashionbert"), trust_remote_code=True, device="cpu")
    assert direct(TEXTS[2], candidate_images=saved["images"]) == loaded(TEXTS[2], candidate_images=saved["images"])


def test_needs_the_alignment_head_the_processor_and_trust(saved):
    encoder = FashionBertModel(saved["retrieval"].config)
    encoder.config.architectures = None
    with pytest.raises(ValueError, match="alignment head"):
        FashionRetrievalPipeline(model=encoder, processor=saved["processor"], device="cpu")
    with pytest.raises(ValueError, match="FashionBertProcessor"):
        FashionRetrievalPipeline(model=saved["retrieval"], device="cpu")
    with pytest.raises(ValueError, match="trust_remote_code"):
        pipeline(TASK, model=str(saved["root"] / "fashionbert"), device="cpu")


def test_model_card_snippet_runs_on_a_saved_folder(saved, tmp_path, monkeypatch):
    card = build_model_card(
        "fashionbert", {}, model_name="tiny", repo_id=str(saved["root"] / "fashionbert"), dataset_name="synthetic",
        dataset_description="synthetic", base_model=None, command="python train.py", hyperparameters={},
        limitations="none", patch_encoder="pixels", task_weighting="adaptive", mpm_kl_direction="forward",
        alignment_pooling="cls",
    )  # fmt: skip
    section = card.content.split("### Search with transformers' pipeline", 1)[1]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert 'pipeline("fashion-retrieval", model=' in snippet and "trust_remote_code=True" in snippet
    monkeypatch.chdir(tmp_path)
    for name, image in zip(("dress.jpg", "coat.jpg", "skirt.jpg"), saved["images"]):
        image.save(name)
    namespace = {}
    snippet = snippet.replace("trust_remote_code=True)", 'trust_remote_code=True, device="cpu")')
    exec(compile(snippet, "model card", "exec"), namespace)
    assert [set(r) for r in namespace["best_images"]] == [{"score", "index", "image"}] * 2
    assert len(namespace["best_texts"]) == 3 and {r["index"] for r in namespace["best_texts"]} == {0, 1, 2}
    template = (Path(__file__).resolve().parents[1] / "xmodal" / "model_cards" / "fashionbert.md").read_text()
    assert 'pipeline("fashion-retrieval", model="{{ repo_id }}", trust_remote_code=True)' in template
